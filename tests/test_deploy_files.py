"""The production deployment files, checked without Docker.

docker-compose.yml is parsed and interpolated the way Compose does it, then its service graph,
healthchecks and secrets are checked. deploy/mosquitto/mosquitto.conf is checked for the limits
ingest relies on and then served by a real Mosquitto with only its port and paths changed: a
persistent MQTT 5 session like ingest's must keep many unacknowledged messages in flight, keep
more than the default 1000 queued while it is offline, and keep them across a broker restart.
The compose healthcheck commands are run for real against that broker, a stand-in HTTP server
and real TCP connections (meterwatch/healthcheck.py, the ingest and notify checks).
"""

from __future__ import annotations

import getpass
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from meterwatch.codec import uplink_filter
from meterwatch.embedded import free_port, wait_for_port
from meterwatch.healthcheck import port_of
from meterwatch.mqtt import BrokerAddress, connect_properties, make_client
from meterwatch.settings import Settings
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
APP_SERVICES = ("migrate", "ingest", "notify", "api", "simulator")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b", re.IGNORECASE)
# $$, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, or a bare $.
VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|)")
DEFAULTS = Settings.model_fields
# A typical single-reading uplink (about 150 bytes), so byte limits are exercised realistically.
UPLINK = (
    b'{"meter_id": "WH-000001", "readings": [{"ts": %d, "register_m3": %.3f, '
    b'"flow_lph": 12.5}], "battery_pct": 87, "rssi_dbm": -95, "flags": []}'
)


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of every string in ``value``; unbraced ``$NAME`` is refused."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        escaped, name, op, arg = m.groups()
        if escaped:
            return "$"
        if name is None:
            raise ValueError(f"unescaped $ in {value!r}: write $$ for a literal dollar")
        have = env.get(name)
        unset = have is None or (op is not None and op.startswith(":") and have == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        if have is None:
            raise MissingVariable(f"{name} has no default and is not set")
        return have

    return VAR.sub(one, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    secrets = {"METERWATCH_DB_PASSWORD": "not-a-real-secret", "METERWATCH_SECRET_KEY": "k"}
    data: dict[str, Any] = interpolate(raw, secrets)
    return data


def mosquitto_options(text: str) -> list[tuple[str, str]]:
    """(option, value) pairs in file order; mosquitto.conf has whole-line comments only."""
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            pairs.append((name, value.strip()))
    return pairs


def option(name: str) -> str:
    values = [v for k, v in mosquitto_options(MOSQUITTO_CONF.read_text()) if k == name]
    assert len(values) == 1, f"{name} must be set exactly once in mosquitto.conf"
    return values[0]


def seconds(duration: str) -> int:
    """A Compose duration such as "1m30s"."""
    units = {"s": 1, "m": 60, "h": 3600}
    assert re.fullmatch(r"(\d+[smh])+", duration), f"unreadable duration {duration!r}"
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def expiration_seconds(value: str) -> int:
    """Mosquitto's persistent_client_expiration: a number and h, d, w, m (month) or y."""
    m = re.fullmatch(r"(\d+)([hdwmy])", value)
    assert m, f"unreadable expiration {value!r}"
    days = {"d": 1, "w": 7, "m": 30, "y": 365}
    return int(m[1]) * (3600 if m[2] == "h" else 86400 * days[m[2]])


# -- docker-compose.yml ------------------------------------------------------------------------


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {
        "timescaledb", "mosquitto", "migrate", "ingest", "notify", "api", "simulator"
    }  # fmt: skip
    assert services["simulator"]["profiles"] == ["sim"]
    assert [n for n, s in services.items() if "profiles" in s] == ["simulator"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:2.")
    assert services["timescaledb"]["image"].endswith("-pg17"), "not -oss: policies need TSL"
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")


def test_depends_on_always_has_a_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must be the long form with conditions"
        for dep, spec in deps.items():
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck"
            else:
                assert cond == "service_completed_successfully", f"{name} -> {dep}: {cond}"
                assert services[dep]["restart"] == "no", f"{dep} must be one-shot"
    for name in ("ingest", "api"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["ingest"]["depends_on"]["mosquitto"] == {"condition": "service_healthy"}


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("timescaledb", "mosquitto", "api", "ingest", "notify"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert services["timescaledb"]["healthcheck"]["test"][1] == "pg_isready"
    assert "$SYS/broker/uptime" in services["mosquitto"]["healthcheck"]["test"]
    assert "/healthz" in services["api"]["healthcheck"]["test"][-1]
    for name, variable in (
        ("ingest", "METERWATCH_MQTT_URL"),
        ("notify", "METERWATCH_DATABASE_URL"),
    ):
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "python", "-m", "meterwatch.healthcheck", variable], name


def test_migrate_is_one_shot(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["db", "migrate"]
    assert migrate["restart"] == "no"
    runs_migrate = [
        n for n, s in compose["services"].items() if s.get("command") == migrate["command"]
    ]
    assert runs_migrate == ["migrate"]


def test_long_running_services_restart_and_stop_gracefully(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("timescaledb", "mosquitto", "ingest", "notify", "api"):
        assert services[name]["restart"] == "unless-stopped", name
    for name in APP_SERVICES:
        assert services[name]["init"] is True, f"{name}: SIGTERM must reach meterwatch"
    assert seconds(services["ingest"]["stop_grace_period"]) >= 20
    assert seconds(services["notify"]["stop_grace_period"]) >= 20
    assert seconds(services["mosquitto"]["stop_grace_period"]) >= 30


def test_app_services_share_the_env_anchor(compose: dict[str, Any]) -> None:
    common = compose["x-meterwatch-env"]
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert {k: env.get(k) for k in common} == common, name
    text = COMPOSE.read_text(encoding="utf-8")
    assert text.count("*meterwatch-env") >= len(APP_SERVICES)
    assert common["METERWATCH_DATABASE_URL"].startswith("postgresql://meterwatch@timescaledb:")
    assert common["METERWATCH_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert set(common) <= {f"METERWATCH_{f.upper()}" for f in DEFAULTS} | {"PGPASSWORD"}


def test_ingest_replicas_have_distinct_client_ids(compose: dict[str, Any]) -> None:
    replicas = [s for s in compose["services"].values() if s.get("command") == ["ingest"]]
    ids = [s["environment"]["METERWATCH_CLIENT_ID"] for s in replicas]
    assert ids and len(set(ids)) == len(ids)
    for svc in replicas:
        assert svc["environment"]["METERWATCH_SHARED_GROUP"]
        assert svc.get("deploy", {}).get("replicas", 1) == 1, "replicas would share a client id"
        expiry = int(svc["environment"]["METERWATCH_SESSION_EXPIRY_S"])
        assert expiry == expiration_seconds(option("persistent_client_expiration"))


def test_no_secret_has_a_default(raw: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name, op in re.findall(r"\$\{(\w+)(:?[-?])?", text):
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} must be required (:?), not defaulted"

    def walk(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k), v
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for key, value in walk(raw):
        if SECRET_NAME.search(key) and isinstance(value, str):
            assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{key} is not a required variable"
        if isinstance(value, str):
            assert not re.search(r"://[^/\s@]+:[^/\s@]+@", value), f"credentials in URL {key}"


def test_missing_secrets_are_refused(raw: dict[str, Any]) -> None:
    for env in ({}, {"METERWATCH_DB_PASSWORD": "", "METERWATCH_SECRET_KEY": "k"}):
        with pytest.raises(MissingVariable, match="METERWATCH_DB_PASSWORD"):
            interpolate(raw, env)
    for env in (
        {"METERWATCH_DB_PASSWORD": "p"},
        {"METERWATCH_DB_PASSWORD": "p", "METERWATCH_SECRET_KEY": ""},
    ):
        with pytest.raises(MissingVariable, match="METERWATCH_SECRET_KEY"):
            interpolate(raw, env)


def test_interpolation(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"] == "not-a-real-secret"
    assert services["api"]["environment"]["PGPASSWORD"] == "not-a-real-secret"
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["api"]["environment"]["METERWATCH_API_HOST"] == "0.0.0.0"
    assert services["ingest"]["environment"]["METERWATCH_TIMESCALE"] == "on"
    assert "$$" not in yaml.safe_dump(compose)


def test_only_the_api_is_published(compose: dict[str, Any]) -> None:
    published = [n for n, s in compose["services"].items() if s.get("ports")]
    assert published == ["api"]


def test_broker_config_and_data_are_mounted(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["mosquitto"]["volumes"]
    conf = next(v for v in volumes if v.endswith("/mosquitto/config/mosquitto.conf:ro"))
    assert (ROOT / conf.split(":")[0]).resolve() == MOSQUITTO_CONF
    data = next(v for v in volumes if v.startswith("mosquitto-data:"))
    assert option("persistence_location").startswith(data.split(":")[1])
    pgdata = compose["services"]["timescaledb"]["volumes"]
    assert pgdata == ["timescaledb-data:/var/lib/postgresql/data"]
    assert set(compose["volumes"]) == {"timescaledb-data", "mosquitto-data"}


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^RUN pip install \. ", text, re.M), "non-editable, no extras"
    assert "[dev]" not in text and "pip install -e" not in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert '\nENTRYPOINT ["meterwatch"]\n' in text
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", ".meterwatch", "tests", ".env", "**/__pycache__"} <= ignored


# -- deploy/mosquitto/mosquitto.conf -----------------------------------------------------------


def test_mosquitto_limits_fit_ingest() -> None:
    receive_maximum = DEFAULTS["receive_maximum"].default
    inflight = int(option("max_inflight_messages"))
    assert inflight == 0 or inflight >= receive_maximum
    queued = int(option("max_queued_messages"))
    assert queued == 0 or queued >= 1_000_000
    queued_bytes = int(option("max_queued_bytes"))
    assert queued_bytes == 0 or queued_bytes >= 512 * 1024 * 1024
    assert option("persistence") == "true"
    assert 1 <= int(option("autosave_interval")) <= 300
    assert expiration_seconds(option("persistent_client_expiration")) >= 86400
    assert option("queue_qos0_messages") == "false"
    size_limit = int(option("message_size_limit"))
    assert size_limit == 0 or size_limit > DEFAULTS["max_payload_bytes"].default
    assert int(option("sys_interval")) > 0, "the compose healthcheck reads $SYS"


def test_mosquitto_anonymous_only_on_the_internal_listener() -> None:
    opts = mosquitto_options(MOSQUITTO_CONF.read_text())
    assert ("per_listener_settings", "true") in opts
    listeners = [i for i, (k, _) in enumerate(opts) if k == "listener"]
    assert [opts[i][1] for i in listeners] == ["1883"]
    anonymous = [i for i, (k, v) in enumerate(opts) if k == "allow_anonymous" and v == "true"]
    assert anonymous and all(i > listeners[0] for i in anonymous)


# -- the config served by a real Mosquitto -----------------------------------------------------


class Broker:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        data = tmp / "data"
        data.mkdir()
        original = MOSQUITTO_CONF.read_text().splitlines()
        lines = []
        for line in original:
            if line.startswith("listener "):
                line = f"listener {self.port} 127.0.0.1"
            elif line.startswith("persistence_location "):
                line = f"persistence_location {data}/"
            lines.append(line)
        assert sum(a != b for a, b in zip(original, lines, strict=True)) == 2
        # As root, mosquitto would switch to user "mosquitto", who cannot write the temp dir.
        lines.insert(0, f"user {getpass.getuser()}")
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = tmp / "mosquitto.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for_port("127.0.0.1", self.port, timeout=10)
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Ingestlike:
    """A subscriber with ingest's session: fixed id, clean start off, manual acks."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.client = make_client(BrokerAddress("127.0.0.1", port), client_id)
        self.client.manual_ack_set(True)
        self.received: list[mqtt.MQTTMessage] = []
        self.session_present: bool | None = None
        self.subscribed = threading.Event()
        self.topic = topic
        self.client_id = client_id
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg)
        props = connect_properties(session_expiry_s=600, receive_maximum=20000)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.session_present = flags.session_present
        client.subscribe(self.topic, qos=1)

    def stamps(self) -> set[int]:
        return {json.loads(m.payload)["readings"][0]["ts"] for m in self.received}

    def ack_all(self) -> None:
        for msg in self.received:
            self.client.ack(msg.mid, msg.qos)
        # The broker handles one connection's packets in order: once it acknowledges this
        # publish, it has processed every PUBACK above.
        sync = self.client.publish(f"deploytest/sync/{self.client_id}", b"", qos=1)
        sync.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, topic: str, stamps: range) -> None:
    client = make_client(BrokerAddress("127.0.0.1", port))
    client.max_inflight_messages_set(500)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, UPLINK % (i, i / 1000), qos=1) for i in stamps]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def run_healthcheck(test: list[str], env: dict[str, str] | None = None) -> int:
    assert test[0] == "CMD"
    argv = [sys.executable, *test[2:]] if test[1] == "python" else test[1:]
    return subprocess.run(argv, env={**os.environ, **(env or {})}, timeout=20).returncode


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_real_mosquitto_keeps_an_ingest_backlog(tmp_path: Path, compose: dict[str, Any]) -> None:
    broker = Broker(tmp_path)
    broker.start()
    prefix = f"deploytest/{uuid.uuid4().hex[:8]}/"
    topic, shared = f"{prefix}meters/WH-000001/up", uplink_filter(prefix, "ingest")
    client_id = f"meterwatch-ingest-{uuid.uuid4().hex[:8]}"
    opened: list[Ingestlike] = []

    def reconnect() -> Ingestlike:
        opened.append(Ingestlike(broker.port, client_id, shared))
        return opened[-1]

    try:
        sub = reconnect()
        assert sub.subscribed.wait(10)
        # Ingest's Receive Maximum, not a broker cap, bounds what is in flight unacknowledged.
        publish(broker.port, topic, range(300))
        assert wait_until(lambda: len(sub.received) == 300, 10), len(sub.received)

        # Offline: the unacknowledged 300 are redelivered and 2500 more (more than the default
        # queue of 1000) were queued.
        sub.close()
        publish(broker.port, topic, range(300, 2800))
        sub = reconnect()
        assert wait_until(lambda: len(sub.received) == 2800, 20), len(sub.received)
        assert sub.session_present is True
        assert sub.stamps() == set(range(2800))
        sub.ack_all()

        # A broker restart keeps the session and what is queued for it, and only that.
        sub.close()
        publish(broker.port, topic, range(2800, 2900))
        broker.stop()
        broker.start()
        sub = reconnect()
        assert wait_until(lambda: len(sub.received) == 100, 20), len(sub.received)
        assert sub.session_present is True
        assert sub.stamps() == set(range(2800, 2900))
        sub.ack_all()
        log = broker.log.read_bytes()
        assert b"Error" not in log and b"dropped" not in log, log.decode(errors="replace")

        # The compose healthchecks, run for real against this broker.
        mosq = compose["services"]["mosquitto"]["healthcheck"]["test"]
        mosq = [str(broker.port) if arg == "1883" else arg for arg in mosq]
        assert run_healthcheck(mosq) == 0
        ingest = compose["services"]["ingest"]["healthcheck"]["test"]
        up = {"METERWATCH_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}"}
        assert run_healthcheck(ingest, up) == 0
        down = {"METERWATCH_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
        assert run_healthcheck(ingest, down) == 1
    finally:
        for client in opened:
            client.close()
        broker.stop()


def test_api_healthcheck_follows_healthz(compose: dict[str, Any]) -> None:
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        test = compose["services"]["api"]["healthcheck"]["test"]
        env = {"METERWATCH_API_PORT": str(server.server_address[1])}
        assert run_healthcheck(test, env) == 0
        status["code"] = 503
        assert run_healthcheck(test, env) != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- meterwatch/healthcheck.py: the ingest and notify healthchecks ------------------------------


def test_healthcheck_port_of_the_url() -> None:
    assert port_of("mqtt://mosquitto") == 1883
    assert port_of("tcp://mosquitto") == 1883
    assert port_of("mqtts://broker.example.com") == 8883
    assert port_of("ssl://broker.example.com") == 8883
    assert port_of("postgresql://meterwatch@timescaledb/meterwatch") == 5432
    assert port_of("postgres://meterwatch@timescaledb/meterwatch") == 5432
    assert port_of("mqtt://user:pass@mosquitto:1884") == 1884
    assert port_of("postgresql://meterwatch@timescaledb:6432/meterwatch") == 6432
    with pytest.raises(ValueError, match="no default port"):
        port_of("http://example.com")


def _loopbacks() -> list[tuple[socket.AddressFamily, str]]:
    """IPv4 loopback, and IPv6 loopback where it exists (its connections are in /proc/net/tcp6)."""
    found = [(socket.AF_INET, "127.0.0.1")]
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            found.append((socket.AF_INET6, "::1"))
    except OSError:
        pass
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
@pytest.mark.parametrize(
    ("service", "variable", "scheme"),
    [
        ("ingest", "METERWATCH_MQTT_URL", "mqtt"),
        ("notify", "METERWATCH_DATABASE_URL", "postgresql"),
    ],
)
def test_connection_healthcheck_follows_a_real_connection(
    compose: dict[str, Any], service: str, variable: str, scheme: str
) -> None:
    test = compose["services"][service]["healthcheck"]["test"]
    for family, host in _loopbacks():
        with socket.create_server((host, 0), family=family) as server:
            port = server.getsockname()[1]
            netloc = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            env = {variable: f"{scheme}://meterwatch@{netloc}/meterwatch"}
            assert run_healthcheck(test, env) == 1, "listening, but nobody is connected"
            with socket.create_connection((host, port)) as client:
                accepted, _ = server.accept()
                with accepted:
                    assert run_healthcheck(test, env) == 0, host
                    client.shutdown(socket.SHUT_RDWR)
            assert run_healthcheck(test, env) == 1, "the connection is closed"
    for missing in ({variable: ""}, {variable: "http://example.com"}):
        assert run_healthcheck(test, missing) == 1
