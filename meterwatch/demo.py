"""``meterwatch demo``: the whole pipeline on one machine with nothing but Python.

Embedded PostgreSQL and broker unless URLs are given, then migrate, register a simulated fleet,
run ingest (with the detectors) and the API, publish the fleet over MQTT in event time, and (with
``--exit``) wait until every published reading is stored and print a JSON summary as the last line.
The fleet's last meter springs a 20 L/h leak a quarter of the way in, so a run of a day and a half
or more shows a leak alert end to end (``alerts`` in the summary, ``/api/v1/alerts``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn

from ingest.consumer import Ingest
from ingest.service import ProgressLog, config_from, detection_from
from meterwatch.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    free_port,
    port_open,
    start_broker,
    start_postgres,
)
from meterwatch.mqtt import BrokerAddress
from meterwatch.settings import Settings
from notify.service import dispatcher_from, serve_until
from simulators.fleet import FleetSeries, generate, make_fleet
from simulators.publish import publish_fleet
from storage.alerts import count_by_type
from storage.db import connect
from storage.migrate import migrate
from storage.registry import upsert_meters

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    meters: int = 100
    days: float = 2.0
    interval_min: int = 15
    speed: float | None = 3600.0
    seed: int = 1
    exit: bool = False
    readings_per_message: int = 1
    api_port: int | None = None
    store_timeout_s: float = 120.0


def _stored(database_url: str, ids: list[str], start: datetime, end: datetime) -> tuple[int, int]:
    with connect(database_url) as conn:
        row = conn.execute(
            """SELECT (SELECT count(*) FROM readings
                        WHERE meter_id = ANY(%s) AND ts >= %s AND ts < %s),
                      (SELECT count(*) FROM dead_letters WHERE received_at >= %s)""",
            (ids, start, end, start),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _start_api(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    from api.main import create_app

    config = uvicorn.Config(
        create_app(settings), host=settings.api_host, port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread


def _check_api(api_url: str, meter_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Read back through the HTTP API what the pipeline stored, as a customer would."""
    health = orjson.loads(urllib.request.urlopen(f"{api_url}/healthz", timeout=10).read())
    query = urllib.parse.urlencode(
        {"bucket": "hour", "start": start.isoformat(), "end": end.isoformat()}
    )
    url = f"{api_url}/api/v1/meters/{urllib.parse.quote(meter_id)}/usage?{query}"
    usage = orjson.loads(urllib.request.urlopen(url, timeout=10).read())
    return {"healthz": health.get("status"), "meter_id": meter_id, "usage_m3": usage["total_m3"]}


def run_demo(settings: Settings, opts: DemoOptions, data_dir: Path | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    temp_dir: Path | None = None
    if data_dir is None:
        if opts.exit:
            temp_dir = Path(tempfile.mkdtemp(prefix="meterwatch-demo-"))
            data_dir = temp_dir
        else:
            data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    server: uvicorn.Server | None = None
    stop, notify_stop = threading.Event(), threading.Event()  # ingest's, the notifier's
    try:
        if not settings.database_url:
            pg = start_postgres(data_dir, keep=not opts.exit)
            settings = settings.model_copy(update={"database_url": pg.url})
            log.info("embedded PostgreSQL at %s", data_dir / "pgdata")
        if not settings.mqtt_url:
            broker = start_broker(data_dir / "broker")
            settings = settings.model_copy(update={"mqtt_url": broker.url})
            log.info("embedded %s broker at %s", broker.kind, broker.url)
        with connect(settings.database_url) as conn:
            mig = migrate(
                conn,
                timescale=settings.timescale,
                partition_days=settings.partition_days,
                compress_after_days=settings.compress_after_days,
                retention_days=settings.retention_days,
                timezone=settings.timezone,
            )
            fleet = make_fleet(opts.meters, seed=opts.seed, interval_min=opts.interval_min)
            upsert_meters(conn, fleet)
        interval = timedelta(minutes=opts.interval_min)
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        end -= timedelta(minutes=end.minute % opts.interval_min)
        start = end - timedelta(days=opts.days)
        series = generate(
            fleet, start=start, days=opts.days, interval_min=opts.interval_min, seed=opts.seed
        )
        _spring_a_leak(series, meter=len(fleet) - 1)
        ids = [m.meter_id for m in fleet]

        # Built before anything starts, so a bad notify config fails the demo at once.
        dispatcher = dispatcher_from(settings)
        ingest = Ingest(config_from(settings), detection=detection_from(settings))
        ingest.on_batch = ProgressLog(ingest.stats, every_s=5.0)
        ingest_thread = threading.Thread(target=ingest.run, args=(stop,), name="ingest")
        ingest_thread.start()
        notifier = threading.Thread(
            target=serve_until, args=(dispatcher, notify_stop), name="notify", daemon=True
        )
        notifier.start()
        if not ingest.ready.wait(30):
            raise RuntimeError(f"ingest could not subscribe at {settings.mqtt_url}")

        port = settings.api_port if opts.api_port is None else opts.api_port
        if not port or port_open(settings.api_host, port):
            port = free_port()
        server, _ = _start_api(settings, port)
        api_url = f"http://{settings.api_host}:{port}"
        log.info("API at %s (OpenAPI docs at %s/docs)", api_url, api_url)

        published = publish_fleet(
            series,
            fleet,
            address=BrokerAddress.parse(settings.mqtt_url),
            prefix=settings.topic_prefix,
            speed=opts.speed,
            readings_per_message=opts.readings_per_message,
            client_id=f"meterwatch-demo-sim-{opts.seed}",
        )
        log.info("published %d readings in %d messages", published.readings, published.messages)

        stored, dead = _stored(settings.database_url, ids, start, end + interval)
        deadline = time.monotonic() + opts.store_timeout_s
        while stored < published.readings and time.monotonic() < deadline:
            time.sleep(0.2)
            stored, dead = _stored(settings.database_url, ids, start, end + interval)
        hour_start = start.replace(minute=0)
        api_check = _check_api(api_url, ids[0], hour_start, end + interval)
        registers = series.register_m3[0]
        api_check["register_delta_m3"] = round(float(registers[-1] - registers[0]), 3)
        elapsed = time.monotonic() - t0
        summary: dict[str, Any] = {
            "meters": len(fleet),
            "readings_published": published.readings,
            "messages_published": published.messages,
            "readings_stored": stored,
            "dead_letters": dead,
            "alerts": {},
            "publish_s": round(published.elapsed_s, 3),
            "elapsed_s": round(elapsed, 3),
            "storage_flavour": mig.flavour,
            "database": "external" if pg is None else "embedded",
            "broker": "external" if broker is None else broker.kind,
            "api_url": api_url,
            "api_check": api_check,
        }
        if not opts.exit:
            print(f"meterwatch demo running: API {api_url}  (docs {api_url}/docs); Ctrl-C stops")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        stop.set()
        ingest_thread.join(30)
        _drain_outbox(settings.database_url, timeout_s=10.0)
        notify_stop.set()
        notifier.join(30)
        with connect(settings.database_url) as conn:
            summary["alerts"] = count_by_type(conn)
            summary["notifications"] = dict(
                conn.execute("SELECT status, count(*) FROM outbox GROUP BY 1 ORDER BY 1")
            )
        summary["ingest"] = {
            "batches": ingest.stats.batches,
            "duplicates": ingest.stats.duplicates,
            "connects": ingest.stats.connects,
        }
        return summary
    finally:
        stop.set()
        notify_stop.set()
        if server is not None:
            server.should_exit = True
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


DEMO_LEAK_LPH = 20.0


def _drain_outbox(database_url: str, timeout_s: float) -> None:
    """Give the notifier a moment to send what the last batches queued."""
    deadline = time.monotonic() + timeout_s
    with connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM outbox WHERE status = 'pending' AND hold_until IS NULL"
            ).fetchone()
            if not row or row[0] == 0:
                return
            time.sleep(0.2)


def _spring_a_leak(series: FleetSeries, meter: int) -> None:
    """A constant leak on one meter from a quarter of the way in (whole litres on the register)."""
    steps = series.ts.size
    start = steps // 4
    hours = (series.ts[start:] - series.ts[start]) / 3600.0
    series.register_m3[meter, start:] += np.floor(hours * DEMO_LEAK_LPH) / 1000.0
