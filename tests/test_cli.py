"""The command line as operators use it: real processes, real services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from meterwatch.codec import encode_uplink, uplink_topic
from tests.helpers import Publisher, count, wait_until


def meterwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "meterwatch", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_help_lists_every_command():
    out = meterwatch("--help").stdout
    for command in ("demo", "ingest", "api", "simulate", "replay", "db", "meters"):
        assert command in out
    for sub in (("db", "migrate"), ("meters", "import"), ("simulate",), ("demo",), ("replay",)):
        proc = meterwatch(*sub, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout


def test_migrate_and_import_with_json_output(db_url, tmp_path: Path):
    proc = meterwatch("db", "migrate", "--database-url", db_url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {"flavour": "postgres", "applied": []}
    csv = tmp_path / "meters.csv"
    csv.write_text("meter_id,tenant,kind,q3_m3h\nACME-1,acme,industrial,40\nbad id,acme,,\n")
    proc = meterwatch("meters", "import", str(csv), "--database-url", db_url, "--json")
    assert proc.returncode == 1  # one row was refused, and said so
    assert orjson.loads(proc.stdout)["meters"] == 1
    assert "line 3" in proc.stderr
    assert count(db_url, "SELECT count(*) FROM meters WHERE kind = 'industrial'") == 1


def test_missing_database_url_is_a_clear_error():
    proc = meterwatch("db", "migrate", env={"METERWATCH_DATABASE_URL": ""})
    assert proc.returncode == 2
    assert "no database URL" in proc.stderr


def test_ingest_flushes_and_exits_cleanly_on_sigterm(db_url, mqtt_url, topic_prefix):
    env = {
        "METERWATCH_DATABASE_URL": db_url,
        "METERWATCH_MQTT_URL": mqtt_url,
        "METERWATCH_TOPIC_PREFIX": topic_prefix,
        "METERWATCH_CLIENT_ID": f"sigterm-{topic_prefix.replace('/', '-')}"[:60],
        # A long batch window: the readings are still waiting in ingest when SIGTERM comes.
        "METERWATCH_BATCH_INTERVAL_S": "30",
        "METERWATCH_BATCH_READINGS": "100000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterwatch", "ingest", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        pub = Publisher(mqtt_url)
        assert wait_until(lambda: pub.client.is_connected(), 10)
        # Ingest subscribes after it connects; wait for its session to exist before publishing.
        assert wait_until(lambda: "connected to" in (proc.stderr.readline() or ""), 20)
        for k in range(50):
            mid = f"SIG-{k % 5}"
            reading = [(t0 + timedelta(minutes=15 * k), 1.0 + k, None)]
            pub.publish(uplink_topic(mid, topic_prefix), encode_uplink(mid, reading))
        pub.flush()
        pub.close()
        assert count(db_url, "SELECT count(*) FROM readings") == 0  # still batching
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    stats = orjson.loads(out.strip().splitlines()[-1])
    assert stats["inserted"] == 50
    assert count(db_url, "SELECT count(*) FROM readings") == 50


def test_simulate_publishes_the_fleet_in_event_time(db_url, mqtt_url, topic_prefix, tmp_path):
    import threading

    import paho.mqtt.client as mqtt

    from meterwatch.codec import decode_uplink
    from meterwatch.mqtt import BrokerAddress, make_client, session_args

    addr = BrokerAddress.parse(mqtt_url)
    seen: list[tuple[str, datetime]] = []
    subscribed = threading.Event()
    sub = make_client(addr, f"sim-sub-{topic_prefix.replace('/', '-')}"[:60])

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        d = decode_uplink(msg.topic, bytes(msg.payload), received_at=datetime.now(UTC),
                          prefix=topic_prefix)  # fmt: skip
        assert d.rejections == []
        seen.extend((r.meter_id, r.ts) for r in d.readings)

    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_connect = lambda c, *_a: c.subscribe(f"{topic_prefix}meters/+/up", qos=1)
    sub.connect(
        addr.host, addr.port, **session_args(addr, session_expiry_s=0, receive_maximum=1000)
    )
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        registry = tmp_path / "fleet.csv"
        proc = meterwatch(
            "simulate", "--meters", "4", "--days", "0.25", "--interval-min", "15",
            "--speed", "max", "--seed", "3", "--start", "2026-11-01T00:00:00+08:00",
            "--mqtt-url", mqtt_url, "--topic-prefix", topic_prefix, "--database-url", db_url,
            "--registry-out", str(registry), "--json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert orjson.loads(proc.stdout)["readings"] == 4 * 24
        assert wait_until(lambda: len(seen) >= 96, 20)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(set(seen)) == 96
    assert min(ts for _, ts in seen) == datetime(2026, 10, 31, 16, tzinfo=UTC)
    assert registry.read_text().count("\n") == 5
    assert count(db_url, "SELECT count(*) FROM meters WHERE NOT auto_registered") == 4
