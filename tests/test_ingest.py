"""Ingest end to end over the real broker into the real database."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from ingest.consumer import IngestConfig
from meterwatch.codec import encode_uplink, uplink_topic
from meterwatch.embedded import start_broker
from meterwatch.mqtt import BrokerAddress
from tests.helpers import Publisher, count, running_ingest, wait_until

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def config(db_url: str, mqtt_url: str, prefix: str, **kw) -> IngestConfig:
    return IngestConfig(
        database_url=db_url,
        broker=BrokerAddress.parse(mqtt_url),
        prefix=prefix,
        client_id=f"ingest-{prefix.replace('/', '-')}"[:60],
        batch_readings=kw.pop("batch_readings", 200),
        batch_interval_s=kw.pop("batch_interval_s", 0.05),
        **kw,
    )


def fleet_messages(prefix: str, meters: int, steps: int, per_message: int = 1):
    """Messages of a small fleet; registers grow by a meter-specific step every 15 min."""
    out = []
    for m in range(meters):
        mid = f"WH-{m:06d}"
        readings = [
            (T0 + timedelta(minutes=15 * k), 100.0 + m + 0.01 * (m + 1) * k, 40.0)
            for k in range(steps)
        ]
        for i in range(0, steps, per_message):
            out.append(
                (uplink_topic(mid, prefix), encode_uplink(mid, readings[i : i + per_message]))
            )
    return out


def test_duplicates_and_a_malformed_message(db_url, mqtt_url, topic_prefix, db):
    msgs = fleet_messages(topic_prefix, meters=5, steps=40)
    batched = fleet_messages(topic_prefix, meters=5, steps=40, per_message=8)
    rng = random.Random(7)
    stream = msgs + rng.sample(msgs, 60) + batched  # every reading at least twice
    rng.shuffle(stream)
    bad_topic = uplink_topic("WH-000001", topic_prefix)
    malformed = b'{"meter_id": "WH-000001", "readings": [{"ts": "2026-11-01T00:00:00+08:00"'
    mixed = orjson.dumps(
        {"meter_id": "WH-000002", "readings": [
            {"ts": (T0 + timedelta(days=5)).isoformat(), "register_m3": 500.0},
            {"ts": "not-a-time", "register_m3": 501.0},
        ]}
    )  # fmt: skip
    stream[100:100] = [(bad_topic, malformed), (uplink_topic("WH-000002", topic_prefix), mixed)]

    with running_ingest(config(db_url, mqtt_url, topic_prefix)) as ingest:
        pub = Publisher(mqtt_url)
        pub.publish_all(stream)
        pub.flush()
        pub.close()
        assert wait_until(lambda: ingest.stats.messages >= len(stream), 60)

    distinct = 5 * 40 + 1
    assert count(db_url, "SELECT count(*) FROM readings") == distinct
    assert ingest.stats.inserted == distinct
    assert ingest.stats.duplicates == ingest.stats.readings - distinct
    rows = db.execute("SELECT reason, reading_index FROM dead_letters ORDER BY reason").fetchall()
    assert rows == [("bad_json", None), ("bad_ts", 1)]
    # The valid neighbour in the same message as a bad reading was kept.
    assert count(db_url, "SELECT count(*) FROM readings WHERE register_m3 = 500") == 1
    # Consumption from shuffled, duplicated input equals the register differences.
    per_meter = db.execute(
        """SELECT meter_id, round(sum(volume_m3)::numeric, 6) FROM usage_daily
           WHERE meter_id <> 'WH-000002' GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    expected = [(f"WH-{m:06d}", round(0.01 * (m + 1) * 39, 6)) for m in (0, 1, 3, 4)]
    assert [(m, float(v)) for m, v in per_meter] == [(m, pytest.approx(v)) for m, v in expected]
    assert count(db_url, "SELECT count(*) FROM meters WHERE auto_registered") == 5


def test_unknown_meters_are_dead_lettered_when_auto_register_is_off(db_url, mqtt_url, topic_prefix):
    msgs = fleet_messages(topic_prefix, meters=1, steps=3)
    with running_ingest(config(db_url, mqtt_url, topic_prefix, auto_register=False)) as ingest:
        pub = Publisher(mqtt_url)
        pub.publish_all(msgs)
        pub.flush()
        pub.close()
        assert wait_until(lambda: ingest.stats.messages >= 3)
    assert count(db_url, "SELECT count(*) FROM readings") == 0
    assert count(db_url, "SELECT count(*) FROM dead_letters WHERE reason = 'unknown_meter'") == 3


def test_broker_restart_mid_run_loses_nothing_and_stores_nothing_twice(
    db_url, topic_prefix, tmp_path: Path
):
    broker = start_broker(tmp_path / "broker", prefer="mosquitto")
    try:
        msgs = fleet_messages(topic_prefix, meters=20, steps=96)  # 1,920 readings
        msgs += msgs[::7]  # and duplicates
        with running_ingest(config(db_url, broker.url, topic_prefix)) as ingest:
            pub = Publisher(broker.url, client_id="restart-publisher")
            half = len(msgs) // 2
            pub.publish_all(msgs[:half])
            time.sleep(0.3)
            broker.restart()
            pub.publish_all(msgs[half:])
            pub.flush(90)
            pub.close()
            assert wait_until(lambda: count(db_url, "SELECT count(*) FROM readings") >= 1920, 90)
            time.sleep(0.5)
            assert ingest.stats.connects >= 2, "ingest never saw the broker go away"
    finally:
        broker.stop()
    assert count(db_url, "SELECT count(*) FROM readings") == 1920
    assert count(db_url, "SELECT count(*) FROM dead_letters") == 0
    assert count(db_url, "SELECT count(DISTINCT (meter_id, ts)) FROM readings") == 1920


def test_database_connection_lost_mid_run(db_url, mqtt_url, topic_prefix):
    msgs = fleet_messages(topic_prefix, meters=4, steps=50)
    with running_ingest(config(db_url, mqtt_url, topic_prefix)) as ingest:
        pub = Publisher(mqtt_url)
        pub.publish_all(msgs[:100])
        assert wait_until(lambda: ingest.stats.messages >= 100)
        dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(db_url, autocommit=True) as admin:
            killed = admin.execute(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = %s AND pid <> pg_backend_pid()""",
                (dbname,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        pub.publish_all(msgs[100:])
        pub.flush()
        pub.close()
        assert wait_until(lambda: count(db_url, "SELECT count(*) FROM readings") >= 200, 60)
        assert ingest.stats.db_retries >= 1
    assert count(db_url, "SELECT count(*) FROM readings") == 200
