"""Ingest throughput into a real broker and database, against a plain-subscriber baseline.

    python -m bench.ingest_rate                       # this machine's Mosquitto + PostgreSQL
    python -m bench.ingest_rate --embedded            # embedded broker + embedded PostgreSQL
    python -m bench.ingest_rate --per-message 24      # NB-IoT style: a day of hourly values

Publishers run in separate processes (as meters are separate devices) and publish the same
simulated fleet twice: once to a plain paho subscriber that only counts and acknowledges (the
baseline: what the broker and publishers can deliver on this machine), once to ingest, which
validates, writes with COPY, derives consumption and acknowledges after commit. The ratio of the
two, measured in the same run, is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from psycopg import sql

from detectors.config import FleetSettings, ThresholdBook
from ingest.consumer import Ingest, IngestConfig
from ingest.detection import Detection, DetectionConfig
from meterwatch.codec import uplink_filter
from meterwatch.embedded import start_broker, start_postgres
from meterwatch.mqtt import BrokerAddress, connect_properties, make_client
from notify.config import NotifyConfig
from notify.scheduler import Notifier
from simulators.fleet import generate, make_fleet
from simulators.publish import publish_fleet
from storage.db import connect
from storage.migrate import migrate

START = datetime(2026, 10, 1, tzinfo=UTC)


def _publisher(args: tuple[str, str, int, int, int, float, int, int]) -> int:
    url, prefix, meters, part, parts, days, interval, per_message = args
    fleet = make_fleet(meters, seed=1, interval_min=interval)[part::parts]
    series = generate(fleet, start=START, days=days, interval_min=interval, seed=1 + part)
    res = publish_fleet(
        series, fleet, address=BrokerAddress.parse(url), prefix=prefix,
        readings_per_message=per_message, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    return res.readings


def _publish(url: str, prefix: str, opts: argparse.Namespace) -> tuple[int, float]:
    jobs = [
        (url, prefix, opts.meters, i, opts.publishers, opts.days, opts.interval_min,
         opts.per_message)
        for i in range(opts.publishers)
    ]  # fmt: skip
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(opts.publishers) as pool:
        readings = sum(pool.map(_publisher, jobs))
    return readings, t0


def baseline(url: str, opts: argparse.Namespace, expected: int) -> float:
    """Readings/s delivered to a subscriber that does nothing but count and acknowledge."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}/"
    addr = BrokerAddress.parse(url)
    got = {"readings": 0, "last": 0.0}
    subscribed = threading.Event()
    client = make_client(addr, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got["readings"] += msg.payload.count(b'"register_m3"')
        got["last"] = time.perf_counter()

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(uplink_filter(prefix), qos=1)
    client.connect(
        addr.host, addr.port,
        properties=connect_properties(session_expiry_s=0, receive_maximum=20000),
    )  # fmt: skip
    client.loop_start()
    subscribed.wait(10)
    published, t0 = _publish(url, prefix, opts)
    deadline = time.monotonic() + 600
    while got["readings"] < published and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    assert published == expected and got["readings"] == published, (published, got)
    return published / (got["last"] - t0)


def ingest_rate(
    url: str, db_url: str, opts: argparse.Namespace, expected: int, *, detectors: bool = False
) -> float:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/"
    detection = None
    if detectors:
        # As `meterwatch ingest` runs them: with the notifier (default routing, the live stream).
        detection = Detection(
            DetectionConfig(database_url=db_url, thresholds=ThresholdBook(), fleet=FleetSettings()),
            notifier=Notifier(NotifyConfig(), secret=""),
        )
        detection.start()
    ingest = Ingest(
        IngestConfig(database_url=db_url, broker=BrokerAddress.parse(url), prefix=prefix,
                     client_id=f"bench-ingest-{uuid.uuid4().hex[:6]}"),
        detection=detection,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,))
    thread.start()
    ingest.ready.wait(20)
    last = [0.0]
    ingest.on_batch = lambda _res: last.__setitem__(0, time.perf_counter())
    published, t0 = _publish(url, prefix, opts)
    deadline = time.monotonic() + 900
    while ingest.stats.inserted < published and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    with connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    stored = row[0] if row else 0
    assert published == expected and stored == published, (published, stored)
    return published / (last[0] - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--embedded", action="store_true", help="embedded broker and PostgreSQL")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--meters", type=int, default=200)
    p.add_argument("--days", type=float, default=2)
    p.add_argument("--interval-min", type=int, default=15)
    p.add_argument("--per-message", type=int, default=1)
    p.add_argument("--publishers", type=int, default=2)
    opts = p.parse_args()
    expected = int(opts.meters * opts.days * 24 * 60 / opts.interval_min)
    tmp = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    broker = pg = None
    server_url, mqtt_url = opts.database_url, opts.mqtt_url
    if opts.embedded:
        broker = start_broker(tmp / "broker")
        pg = start_postgres(tmp, keep=False)
        server_url, mqtt_url = pg.url, broker.url
    names = [f"mw_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = []
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            urls.append(psycopg.conninfo.make_conninfo(server_url, dbname=name))
    try:
        for db_url in urls:
            with connect(db_url) as conn:
                migrate(conn, timescale="off")
        base = baseline(mqtt_url, opts, expected)
        rate = ingest_rate(mqtt_url, urls[0], opts, expected)
        with_detectors = ingest_rate(mqtt_url, urls[1], opts, expected, detectors=True)
        where = "embedded" if opts.embedded else "local services"
        print(f"ingest rate ({where}: {mqtt_url}, {expected} readings, "
              f"{opts.per_message}/message, {opts.publishers} publisher processes)")  # fmt: skip
        print(f"  baseline (count + ack only): {base:10.0f} readings/s")
        print(f"  ingest (validate, COPY, consumption, ack after commit): {rate:10.0f} readings/s")
        print(
            f"  ingest with detectors (bank, alerts, notifier, state): "
            f"{with_detectors:10.0f} readings/s"
        )
        print(f"  ingest / baseline: {rate / base:.2f}")
        print(f"  with detectors / without: {with_detectors / rate:.2f} (target >= 0.80)")
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))  # fmt: skip
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
