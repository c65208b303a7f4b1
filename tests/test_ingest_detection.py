"""Detectors at the ingest edge: readings over the real broker become stored alerts and a
checkpoint that a new detection worker resumes from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.main import create_app
from detectors.config import FleetSettings, ThresholdBook
from ingest.consumer import IngestConfig
from ingest.detection import Detection, DetectionConfig
from ingest.service import notifier_from
from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from meterwatch.domain import Meter
from meterwatch.mqtt import BrokerAddress
from meterwatch.settings import MIN_SECRET, Settings
from notify.config import NotifyConfig
from notify.scheduler import Notifier
from storage.alerts import load_meta, load_states, read_alerts
from storage.registry import upsert_meters
from storage.writer import Message
from tests.helpers import Publisher, count, running_ingest, wait_until

T0 = datetime(2026, 11, 1, tzinfo=UTC)
METERS = [Meter("WD-REV"), Meter("WD-TAMP"), Meter("WD-OK")]
STEPS = 12  # 15-minute readings per meter
REVERSE_AT = range(4, 7)  # readings of WD-REV flagged "reverse"
TAMPER_AT = STEPS - 1  # WD-TAMP's last reading is flagged "tamper"


def ts(k: int) -> datetime:
    return T0 + timedelta(minutes=15 * k)


def uplink(prefix: str, meter_id: str, k: int, flags: tuple[str, ...] = ()) -> tuple[str, bytes]:
    payload = encode_uplink(meter_id, [(ts(k), 100.0 + 0.005 * k, None)], flags=flags)
    return uplink_topic(meter_id, prefix), payload


def messages(prefix: str) -> list[tuple[str, bytes]]:
    out = []
    for k in range(STEPS):
        out.append(uplink(prefix, "WD-REV", k, ("reverse",) if k in REVERSE_AT else ()))
        out.append(uplink(prefix, "WD-TAMP", k, ("tamper",) if k == TAMPER_AT else ()))
        out.append(uplink(prefix, "WD-OK", k))
    return out


def ingest_config(db_url: str, mqtt_url: str, prefix: str) -> IngestConfig:
    return IngestConfig(
        database_url=db_url,
        broker=BrokerAddress.parse(mqtt_url),
        prefix=prefix,
        client_id=f"ingest-{prefix.replace('/', '-')}"[:60],
        batch_readings=200,
        batch_interval_s=0.05,
    )


def detection(db_url: str) -> Detection:
    # No checkpoint falls due while the test runs: the one found afterwards was written at stop.
    # The notifier resolves these two types as soon as their condition clears.
    notify = NotifyConfig.model_validate({"auto_resolve_h": {"reverse_flow": 0, "tamper": 0}})
    return Detection(
        DetectionConfig(db_url, ThresholdBook(), FleetSettings(), checkpoint_interval_s=3600),
        notifier=Notifier(notify, secret=""),
    )


def test_ingest_stores_alerts_checkpoints_at_stop_and_a_new_worker_resumes(
    db_url: str, mqtt_url: str, topic_prefix: str, db: psycopg.Connection[Any]
) -> None:
    upsert_meters(db, METERS)
    db.commit()
    msgs = messages(topic_prefix)
    first = detection(db_url)
    with running_ingest(ingest_config(db_url, mqtt_url, topic_prefix), first) as ingest:
        pub = Publisher(mqtt_url)
        pub.publish_all(msgs)
        pub.flush()
        pub.close()
        assert wait_until(lambda: ingest.stats.messages >= len(msgs))
        assert count(db_url, "SELECT count(*) FROM detector_state") == 0

    alerts = {(a.meter_id, a.type): a for a in read_alerts(db)}
    assert set(alerts) == {("WD-REV", "reverse_flow"), ("WD-TAMP", "tamper")}
    rev, tamper = alerts["WD-REV", "reverse_flow"], alerts["WD-TAMP", "tamper"]
    assert (rev.status, rev.resolution) == ("resolved", "cleared")
    assert (rev.started_at, rev.resolved_at) == (ts(REVERSE_AT.start), ts(REVERSE_AT.stop))
    assert rev.evidence["source"] == "meter_flag"
    assert (tamper.status, tamper.detected_at) == ("open", ts(TAMPER_AT))

    with TestClient(create_app(Settings(database_url=db_url))) as client:
        r = client.get("/api/v1/alerts")
    assert r.status_code == 200
    body = r.json()
    assert [(a["meter_id"], a["type"], a["status"]) for a in body["items"]] == [
        ("WD-TAMP", "tamper", "open"),
        ("WD-REV", "reverse_flow", "resolved"),
    ]

    assert set(load_states(db)) == {m.meter_id for m in METERS}
    assert load_meta(db, "watermark") == str(first.monitor.watermark).encode()
    assert first.monitor.watermark == int(ts(STEPS - 1).timestamp())

    second = detection(db_url)
    try:
        second.start()
        assert second.monitor.watermark == first.monitor.watermark
        assert second.monitor.checkpoint(everything=True) == first.monitor.checkpoint(
            everything=True
        )
        # It knows the tamper is open, so the next plain reading closes it.
        topic, payload = uplink(topic_prefix, "WD-TAMP", STEPS)
        now = datetime.now(UTC)
        decoded = decode_uplink(topic, payload, received_at=now, prefix=topic_prefix)
        second.process([Message(topic, payload, now, decoded)])
        second.flush()
    finally:
        second.close()
    (tamper,) = read_alerts(db, types=["tamper"])
    assert (tamper.status, tamper.resolved_at) == ("resolved", ts(STEPS))


def test_a_worker_without_a_checkpoint_trains_the_fleet_model_from_stored_days(
    db_url: str,
) -> None:
    from storage.writer import Writer
    from tests.test_fleet import _write_meter

    start = datetime(2026, 3, 2, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        writer = Writer(conn)
        for i in range(3):
            _write_meter(writer, f"F-{i}", start, start + timedelta(days=4))
        conn.commit()
    det = detection(db_url)
    det.start()
    assert det.monitor.fleet is not None
    # Three whole local days; the three meters' days are identical, and the sample keeps a
    # meter-day by its content, so each day counts once.
    assert det.monitor.fleet.stored_rows() == 3
    det.close()


def test_flush_with_nothing_to_write_does_not_touch_the_database() -> None:
    # No pending alerts, no tick, no checkpoint: no transaction, so not even a connection.
    idle = Detection(
        DetectionConfig("postgresql://nobody@127.0.0.1:1/none", ThresholdBook(), FleetSettings())
    )
    idle.flush(checkpoint=False)
    assert idle._conn is None


def test_the_notifier_signs_with_the_settings_signing_key() -> None:
    short = Settings(secret_key="x" * (MIN_SECRET - 1))
    assert notifier_from(short).secret == "" == short.signing_key
    key = "k" * MIN_SECRET
    assert (
        notifier_from(Settings(secret_key=key)).secret
        == key
        == Settings(secret_key=key).signing_key
    )
