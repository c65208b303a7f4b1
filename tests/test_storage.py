"""Migrations, partitions, retention and the registry on the real (plain PostgreSQL) server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from storage.migrate import migrate
from storage.partitions import bucket_start, maintain
from storage.registry import import_csv, parse_csv
from storage.writer import Message, Writer

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def message(meter_id: str, readings) -> Message:
    topic = uplink_topic(meter_id)
    payload = encode_uplink(meter_id, readings)
    return Message(topic, payload, NOW, decode_uplink(topic, payload, received_at=NOW))


def partitions(db, table: str) -> list[str]:
    rows = db.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY 1""",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def test_migrate_is_idempotent_and_records_the_flavour(db):
    res = migrate(db, timescale="auto")
    assert res.applied == []
    assert res.flavour == "postgres"  # this server has no timescaledb
    meta = dict(db.execute("SELECT key, value FROM meterwatch_meta").fetchall())
    assert meta["flavour"] == "postgres" and meta["partition_days"] == "7"
    versions = db.execute("SELECT version, flavour FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(1, "postgres"), (2, "postgres"), (3, "postgres"), (4, "postgres")]


def test_timescale_on_fails_clearly_without_the_extension(db_url):
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM meterwatch_meta WHERE key = 'flavour'")
        conn.commit()
        try:
            with pytest.raises(RuntimeError, match="timescaledb"):
                migrate(conn, timescale="on")
        finally:
            conn.execute("INSERT INTO meterwatch_meta VALUES ('flavour', 'postgres')")
            conn.commit()


def test_partitions_are_created_for_old_and_gap_spanning_data(db):
    writer = Writer(db)
    old = datetime(2016, 3, 1, 0, 30, tzinfo=UTC)
    later = old + timedelta(days=20)  # a 20-day gap: consumption spans three partitions
    res = writer.write([message("DAIAD-1", [(old, 68.321, None), (later, 70.0, None)])])
    assert res.inserted == 2
    names = partitions(db, "readings")
    assert f"readings_p{bucket_start(old, 7):%Y%m%d}" in names
    assert f"readings_p{bucket_start(later, 7):%Y%m%d}" in names
    hourly = partitions(db, "usage_hourly")
    assert f"usage_hourly_p{bucket_start(old + timedelta(days=10), 7):%Y%m%d}" in hourly
    total = db.execute("SELECT sum(volume_m3) FROM usage_daily").fetchone()
    assert total is not None and total[0] == pytest.approx(1.679)


def test_maintenance_creates_ahead_and_drops_expired(db):
    Writer(db).write([message("M-1", [(NOW - timedelta(days=400), 1.0, None)])])
    db.commit()
    expired = f"readings_p{bucket_start(NOW - timedelta(days=400), 7):%Y%m%d}"
    assert expired in partitions(db, "readings")
    created, dropped = maintain(db, now=NOW + timedelta(days=30), step_days=7, retention_days=365)
    assert created > 0
    assert expired in dropped and expired not in partitions(db, "readings")
    ahead = f"readings_p{bucket_start(NOW + timedelta(days=44), 7):%Y%m%d}"
    assert ahead in partitions(db, "readings")
    row = db.execute("SELECT count(*) FROM readings").fetchone()
    assert row == (0,)


CSV = """\
meter_id,tenant,dma,kind,dn_mm,q3_m3h,timezone,register_max_m3,tariff_cny_per_m3,parent_meter_id
ACME-MAIN,acme,wuchang-03,commercial,50,25,Asia/Shanghai,1000000,5.2,
ACME-K1,acme,wuchang-03,commercial,20,4,Asia/Shanghai,100000,5.2,ACME-MAIN
bad id,acme,,residential,15,2.5,Asia/Shanghai,,,
X-1,acme,,houseboat,15,2.5,Asia/Shanghai,,,
X-2,acme,,residential,15,2.5,Mars/Olympus,,,
"""


def test_registry_import_reports_bad_rows_and_keeps_good_ones(db):
    meters, errors = parse_csv(CSV)
    assert [m.meter_id for m in meters] == ["ACME-MAIN", "ACME-K1"]
    assert [e.split(":")[0] for e in errors] == ["line 4", "line 5", "line 6"]
    res = import_csv(db, CSV)
    assert res.meters == 2
    row = db.execute(
        """SELECT tenant, kind, q3_m3h, register_max_m3, tariff_cny_per_m3::float, parent_meter_id
           FROM meters WHERE meter_id = 'ACME-K1'"""
    ).fetchone()
    assert row == ("acme", "commercial", 4.0, 100000.0, 5.2, "ACME-MAIN")
    # Re-import updates in place; an auto-registered meter becomes a registered one.
    Writer(db).write([message("ACME-NEW", [(NOW, 1.0, None)])])
    db.commit()
    import_csv(db, "meter_id,tenant,q3_m3h\nACME-NEW,acme,10\n")
    got = db.execute(
        "SELECT tenant, q3_m3h, auto_registered FROM meters WHERE meter_id = 'ACME-NEW'"
    )
    assert got.fetchone() == ("acme", 10.0, False)
