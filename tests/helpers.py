"""Small real-broker and real-database helpers shared by integration tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt

from detectors.alert import Alert
from ingest.consumer import Ingest, IngestConfig
from ingest.detection import Detection
from meterwatch.domain import Meter
from meterwatch.mqtt import BrokerAddress, make_client, session_args
from notify.config import NotifyConfig
from notify.scheduler import Notifier
from storage.alerts import apply_alerts
from storage.db import connect
from storage.registry import upsert_meters


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


class FakeClock:
    """A wall clock a test moves by hand (the dispatcher's retries and leases run on it)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def queue_alerts(
    db_url: str,
    config: NotifyConfig,
    alerts: Sequence[Alert],
    *,
    secret: str,
    tenant: str = "unassigned",
) -> list[int]:
    """Store alerts and queue their notifications in one committed transaction, as ingest does;
    the alerts' meters are registered to ``tenant`` first. The ids of the alert rows."""
    with connect(db_url) as conn:
        upsert_meters(conn, [Meter(m, tenant=tenant) for m in sorted({a.meter_id for a in alerts})])
        changes = apply_alerts(conn, list(alerts))
        Notifier(config, secret).after_alerts(conn, changes)
    return changes.ids


def count(db_url: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with connect(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


class Publisher:
    """A QoS 1 publisher with a persistent session, so a broker restart loses nothing."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.client = make_client(
            BrokerAddress.parse(url), client_id or f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.max_inflight_messages_set(200)
        addr = BrokerAddress.parse(url)
        self.client.connect(
            addr.host, addr.port,
            **session_args(addr, session_expiry_s=600, receive_maximum=1000),
        )  # fmt: skip
        self.mids: list[int] = []
        self.acked: set[int] = set()
        self.client.on_publish = self._on_publish
        self.client.loop_start()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
        self.acked.add(mid)

    def publish(self, topic: str, payload: bytes) -> None:
        # While the broker is away paho keeps QoS 1 messages and resends them on reconnect,
        # so the return code is not a verdict; the broker's PUBACK (on_publish) is.
        self.mids.append(self.client.publish(topic, payload, qos=1).mid)

    def publish_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        for topic, payload in items:
            self.publish(topic, payload)

    def flush(self, timeout: float = 60.0) -> None:
        assert wait_until(lambda: self.acked.issuperset(self.mids), timeout), (
            f"{len(set(self.mids) - self.acked)} publishes never acknowledged"
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def running_ingest(config: IngestConfig, detection: Detection | None = None) -> Iterator[Ingest]:
    if detection is not None:
        detection.start()
    ingest = Ingest(config, detection=detection)
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert ingest.ready.wait(20), "ingest did not subscribe"
        yield ingest
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "ingest did not stop"
