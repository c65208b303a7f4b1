"""The read API against a real database, with data written through the ingest write path."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

import api.main
from api.main import create_app
from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from meterwatch.domain import Meter, MeterKind
from meterwatch.embedded import free_port
from meterwatch.settings import Settings
from storage import queries
from storage.db import SESSION_OPTIONS
from storage.migrate import render_statements
from storage.registry import upsert_meters
from storage.writer import BatchResult, Message, Writer

PGLITE_DIR = Path(__file__).parent / "pglite"
T0 = datetime(2025, 3, 28, tzinfo=UTC)  # Europe/Madrid moves to summer time on 2025-03-30
Q = 15 * 60  # seconds between readings


def at(*, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def write(
    conn: psycopg.Connection[Any],
    meter_id: str,
    points: list[tuple[datetime, float]],
    *,
    flow_lph: float | None = None,
    battery_pct: float | None = None,
    flags: tuple[str, ...] = (),
) -> BatchResult:
    """One uplink carrying ``points``, decoded and stored exactly as ingest does."""
    payload = encode_uplink(
        meter_id,
        [(ts, reg, flow_lph) for ts, reg in points],
        battery_pct=battery_pct,
        flags=flags,
    )
    topic = uplink_topic(meter_id)
    received = max(ts for ts, _ in points) + timedelta(minutes=5)
    decoded = decode_uplink(topic, payload, received_at=received)
    assert decoded.rejections == []
    result = Writer(conn).write([Message(topic, payload, received, decoded)])
    assert result.inserted == len(points)
    return result


def register(conn: psycopg.Connection[Any], *meters: Meter) -> None:
    upsert_meters(conn, meters)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        yield c


# --- health -----------------------------------------------------------------------------------


def test_healthz_reports_database_and_flavour(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "flavour": "postgres"}


def test_database_down_gives_503_with_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.main, "POOL_TIMEOUT_S", 0.5)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    with TestClient(create_app(Settings(database_url=url))) as c:
        r = c.get("/healthz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "error"
        assert body["database"] == "unavailable"
        r = c.get("/api/v1/meters")
        assert r.status_code == 503
        assert r.json() == {"detail": "database unavailable, try again later"}
        assert r.headers["retry-after"] == "5"


def test_healthz_on_an_unmigrated_database(pg_server_url: str) -> None:
    name = f"mw_test_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = psycopg.conninfo.make_conninfo(pg_server_url, dbname=name)
        with TestClient(create_app(Settings(database_url=url))) as c:
            r = c.get("/healthz")
        assert r.status_code == 503
        assert r.json()["database"] == "not migrated"
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_create_app_needs_a_database_url() -> None:
    with pytest.raises(ValueError, match="database URL"):
        create_app(Settings(database_url=""))


# --- meters -----------------------------------------------------------------------------------


@pytest.fixture
def fleet(db: psycopg.Connection[Any]) -> None:
    register(
        db,
        Meter("C-1", tenant="acme", dma="north", kind=MeterKind.COMMERCIAL, q3_m3h=6.3,
              tariff_cny_per_m3=4.1, dn_mm=25),
        Meter("M-1", tenant="acme", dma="south", timezone="Europe/Madrid"),
        Meter("B-1", tenant="beta", dma="north", kind=MeterKind.BULK, q3_m3h=100.0),
    )  # fmt: skip
    write(db, "C-1", [(at(), 1.0), (at(minutes=15), 1.5)])
    write(db, "A-1", [(at(hours=1), 7.0)])  # auto-registered on first uplink


def ids(body: dict[str, Any]) -> list[str]:
    return [m["meter_id"] for m in body["items"]]


def test_meters_list_filters_and_pages(client: TestClient, fleet: None) -> None:
    r = client.get("/api/v1/meters")
    assert r.status_code == 200
    body = r.json()
    assert ids(body) == ["A-1", "B-1", "C-1", "M-1"]
    assert (body["total"], body["limit"], body["offset"]) == (4, 100, 0)
    by_id = {m["meter_id"]: m for m in body["items"]}
    assert by_id["C-1"] == {
        "meter_id": "C-1", "tenant": "acme", "dma": "north", "kind": "commercial", "dn_mm": 25,
        "q3_m3h": 6.3, "timezone": "Asia/Shanghai", "install_date": None,
        "register_max_m3": 100000.0, "tariff_cny_per_m3": 4.1, "parent_meter_id": None,
        "closed_hours": None, "expected_interval_s": 900, "auto_registered": False,
        "last_reading_at": "2025-03-28T00:15:00Z",
    }  # fmt: skip
    assert by_id["A-1"]["tenant"] == "unassigned"
    assert by_id["A-1"]["auto_registered"] is True
    assert by_id["A-1"]["last_reading_at"] == "2025-03-28T01:00:00Z"
    assert by_id["B-1"]["last_reading_at"] is None

    def page(**params: Any) -> dict[str, Any]:
        r = client.get("/api/v1/meters", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert ids(page(tenant="acme")) == ["C-1", "M-1"]
    assert ids(page(dma="north")) == ["B-1", "C-1"]
    assert ids(page(kind="bulk")) == ["B-1"]
    assert ids(page(tenant="acme", dma="south")) == ["M-1"]
    assert page(tenant="nobody") == {"items": [], "total": 0, "limit": 100, "offset": 0}
    p = page(limit=2, offset=1)
    assert (ids(p), p["total"]) == (["B-1", "C-1"], 4)
    p = page(tenant="acme", limit=1, offset=1)
    assert (ids(p), p["total"]) == (["M-1"], 2)
    assert ids(page(offset=10)) == []


@pytest.mark.parametrize(
    "query",
    ["kind=villa", "limit=0", "limit=1001", "offset=-1", "limit=ten", "tenant=", "tenant=a%00b"],
)
def test_meters_list_rejects_bad_parameters(client: TestClient, query: str) -> None:
    r = client.get(f"/api/v1/meters?{query}")
    assert r.status_code == 422
    assert r.json()["detail"]


def test_one_meter_and_unknown_meter(client: TestClient, fleet: None) -> None:
    r = client.get("/api/v1/meters/M-1")
    assert r.status_code == 200
    m = r.json()
    assert (m["meter_id"], m["timezone"], m["dma"], m["last_reading_at"]) == (
        "M-1", "Europe/Madrid", "south", None
    )  # fmt: skip
    r = client.get("/api/v1/meters/NOPE-1")
    assert r.status_code == 404
    assert r.json() == {"detail": "meter 'NOPE-1' not found"}
    for path in ("readings", "usage"):
        r = client.get(f"/api/v1/meters/NOPE-1/{path}")
        assert r.status_code == 404
        assert r.json() == {"detail": "meter 'NOPE-1' not found"}
    assert client.get("/api/v1/meters/A%00B").status_code == 422


# --- readings ---------------------------------------------------------------------------------


@pytest.fixture
def day_of_readings(db: psycopg.Connection[Any]) -> list[datetime]:
    """R-1: a reading every 15 min for 24 h (97 readings); battery only on the last upload."""
    stamps = [at(minutes=15 * i) for i in range(97)]
    write(db, "R-1", [(ts, 100 + 0.01 * i) for i, ts in enumerate(stamps[:-1])], flow_lph=40.0)
    write(db, "R-1", [(stamps[-1], 100.96)], flow_lph=12.345, battery_pct=87)
    return stamps


def readings(client: TestClient, url: str = "/api/v1/meters/R-1/readings", **params: Any) -> Any:
    r = client.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_readings_default_window_is_the_last_24h(
    client: TestClient, day_of_readings: list[datetime]
) -> None:
    body = readings(client)
    got = [r["ts"] for r in body["readings"]]
    assert got == [iso(ts) for ts in day_of_readings[1:]]  # (end - 24 h, newest], oldest first
    assert body["end"] == "2025-03-29T00:00:00.000001Z"
    assert body["start"] == "2025-03-28T00:00:00.000001Z"
    assert (body["truncated"], body["next_start"]) == (False, None)
    first, last = body["readings"][0], body["readings"][-1]
    assert first == {
        "ts": "2025-03-28T00:15:00Z", "register_m3": 100.01, "flow_lph": 40.0,
        "battery_pct": None, "rssi_dbm": None, "flags": [],
    }  # fmt: skip
    assert last == {
        "ts": "2025-03-29T00:00:00Z", "register_m3": 100.96, "flow_lph": 12.345,
        "battery_pct": 87.0, "rssi_dbm": None, "flags": [],
    }  # fmt: skip


def test_reading_flags_are_returned(client: TestClient, db: psycopg.Connection[Any]) -> None:
    write(db, "F-1", [(at(), 1.0), (at(minutes=15), 1.1)], flags=("tamper", "leak"))
    body = readings(client, "/api/v1/meters/F-1/readings")
    assert [r["flags"] for r in body["readings"]] == [[], ["tamper", "leak"]]


def test_readings_window_offsets_and_naive_times(
    client: TestClient, day_of_readings: list[datetime]
) -> None:
    expected = ["2025-03-28T00:00:00Z", "2025-03-28T00:15:00Z", "2025-03-28T00:30:00Z",
                "2025-03-28T00:45:00Z"]  # fmt: skip
    aware = readings(client, start="2025-03-28T08:00:00+08:00", end="2025-03-28T09:00:00+08:00")
    assert [r["ts"] for r in aware["readings"]] == expected
    assert (aware["start"], aware["end"]) == ("2025-03-28T00:00:00Z", "2025-03-28T01:00:00Z")
    naive = readings(client, start="2025-03-28T00:00:00", end="2025-03-28T01:00:00")
    assert naive == aware
    zulu = readings(client, start="2025-03-28T00:00:00Z", end="2025-03-28T01:00:00Z")
    assert zulu == aware
    # An unescaped "+" reaches the server as a space; it is read as the offset it was meant to be.
    raw = client.get(
        "/api/v1/meters/R-1/readings?start=2025-03-28T08:00:00+08:00&end=2025-03-28T09:00:00+08:00"
    )
    assert raw.status_code == 200
    assert raw.json() == aware
    # Only end: the 24 h before it, end excluded.
    only_end = readings(client, end="2025-03-28T12:00:00Z")
    assert only_end["readings"][0]["ts"] == "2025-03-28T00:00:00Z"
    assert only_end["readings"][-1]["ts"] == "2025-03-28T11:45:00Z"
    assert len(only_end["readings"]) == 48
    # Only start: up to and including the newest reading.
    only_start = readings(client, start="2025-03-28T23:30:00Z")
    assert [r["ts"] for r in only_start["readings"]] == [
        "2025-03-28T23:30:00Z", "2025-03-28T23:45:00Z", "2025-03-29T00:00:00Z"
    ]  # fmt: skip
    later = readings(client, start="2025-03-30T00:00:00Z")
    assert later["readings"] == []


def test_readings_limit_and_continuation(
    client: TestClient, day_of_readings: list[datetime]
) -> None:
    window = {"start": "2025-03-28T00:00:00Z", "end": "2025-03-29T00:00:00Z"}
    first = readings(client, limit=40, **window)
    assert [r["ts"] for r in first["readings"]] == [iso(ts) for ts in day_of_readings[:40]]
    assert first["truncated"] is True
    assert first["next_start"] == iso(day_of_readings[39] + timedelta(microseconds=1))
    seen = [r["ts"] for r in first["readings"]]
    page = first
    while page["truncated"]:
        page = readings(client, limit=40, start=page["next_start"], end=window["end"])
        seen += [r["ts"] for r in page["readings"]]
    assert seen == [iso(ts) for ts in day_of_readings[:96]]
    whole = readings(client, limit=96, **window)
    assert (len(whole["readings"]), whole["truncated"]) == (96, False)


@pytest.mark.parametrize(
    "query",
    [
        "start=2025-03-28T01:00:00Z&end=2025-03-28T01:00:00Z",
        "start=2025-03-28T02:00:00Z&end=2025-03-28T01:00:00Z",
        "start=2025-03-28T09:00:00%2B08:00&end=2025-03-28T01:00:00Z",
        "start=yesterday",
        "end=2025-13-01T00:00:00Z",
        "end=0001-01-01T00:00:00%2B01:00",
        "limit=0",
        "limit=100001",
    ],
)
def test_readings_reject_bad_parameters(
    client: TestClient, day_of_readings: list[datetime], query: str
) -> None:
    r = client.get(f"/api/v1/meters/R-1/readings?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_readings_of_a_meter_without_readings(client: TestClient, fleet: None) -> None:
    body = readings(client, "/api/v1/meters/B-1/readings")
    assert body["readings"] == []
    assert body["truncated"] is False
    early = readings(client, "/api/v1/meters/B-1/readings", end="0001-01-01T12:00:00Z")
    assert early["start"] == "0001-01-01T00:00:00Z"


# --- usage ------------------------------------------------------------------------------------


def usage(client: TestClient, meter_id: str, **params: Any) -> Any:
    r = client.get(f"/api/v1/meters/{meter_id}/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def buckets(body: dict[str, Any]) -> list[tuple[str, str, float, float, float]]:
    return [
        (b["start"], b["end"], b["volume_m3"], b["reverse_m3"], b["covered_s"])
        for b in body["buckets"]
    ]


@pytest.fixture
def gappy(db: psycopg.Connection[Any]) -> None:
    """G-1 (Asia/Shanghai): a 4.5 h gap between 01:00 and 05:30, then a little reverse flow."""
    write(db, "G-1", [(at(), 10.0), (at(minutes=30), 10.5), (at(hours=1), 11.0)])
    write(db, "G-1", [(at(hours=5.5), 20.0), (at(hours=6), 20.2)])
    write(db, "G-1", [(at(hours=6.25), 20.15), (at(hours=6.5), 20.35)])


def test_usage_hourly_splits_a_gap_in_proportion(client: TestClient, gappy: None) -> None:
    body = usage(client, "G-1", start="2025-03-28T00:00:00Z", end="2025-03-28T07:00:00Z")
    assert buckets(body) == [
        ("2025-03-28T08:00:00+08:00", "2025-03-28T09:00:00+08:00", 1.0, 0.0, 3600.0),
        ("2025-03-28T09:00:00+08:00", "2025-03-28T10:00:00+08:00", 2.0, 0.0, 3600.0),
        ("2025-03-28T10:00:00+08:00", "2025-03-28T11:00:00+08:00", 2.0, 0.0, 3600.0),
        ("2025-03-28T11:00:00+08:00", "2025-03-28T12:00:00+08:00", 2.0, 0.0, 3600.0),
        ("2025-03-28T12:00:00+08:00", "2025-03-28T13:00:00+08:00", 2.0, 0.0, 3600.0),
        ("2025-03-28T13:00:00+08:00", "2025-03-28T14:00:00+08:00", 1.2, 0.0, 3600.0),
        ("2025-03-28T14:00:00+08:00", "2025-03-28T15:00:00+08:00", 0.15, 0.05, 1800.0),
    ]
    assert body["meter_id"] == "G-1"
    assert (body["timezone"], body["bucket"]) == ("Asia/Shanghai", "hour")
    assert body["total_m3"] == 10.35  # the register's change, 20.35 - 10.0
    assert body["reverse_m3"] == 0.05
    assert body["covered_s"] == 6.5 * 3600
    assert usage(client, "G-1") == body | {
        "start": "2025-03-27T06:30:00.000001Z",
        "end": "2025-03-28T06:30:00.000001Z",
    }
    inner = usage(client, "G-1", start="2025-03-28T02:00:00Z", end="2025-03-28T04:00:00Z")
    assert [b[2] for b in buckets(inner)] == [2.0, 2.0]
    assert inner["total_m3"] == 4.0
    # Bucket starts inside [start, end): a start in the middle of an hour skips that hour.
    mid = usage(client, "G-1", start="2025-03-28T05:30:00Z", end="2025-03-28T06:30:00Z")
    assert [b[0] for b in buckets(mid)] == ["2025-03-28T14:00:00+08:00"]


DAY_HOURS = 96  # hourly readings from T0 (Friday 2025-03-28 00:00 UTC) to T0 + 4 days


def day_register(ts: datetime) -> float:
    return 1000.0 + 0.1 * (ts - T0).total_seconds() / 3600


@pytest.fixture
def two_zones(db: psycopg.Connection[Any]) -> None:
    """The same hourly readings for a meter in Shanghai and one in Madrid."""
    register(db, Meter("D-SH"), Meter("D-MAD", timezone="Europe/Madrid"))
    points = [(at(hours=h), day_register(at(hours=h))) for h in range(DAY_HOURS + 1)]
    for meter_id in ("D-SH", "D-MAD"):
        write(db, meter_id, points)


def expected_days(starts: list[datetime], end: datetime) -> list[tuple[float, float]]:
    """Volume and coverage per local day: the register's change over the part with readings."""
    first, last = T0, at(hours=DAY_HOURS)
    out = []
    for lo, hi in zip(starts, [*starts[1:], end], strict=True):
        lo, hi = max(lo, first), min(hi, last)
        out.append((round(day_register(hi) - day_register(lo), 6), (hi - lo).total_seconds()))
    return out


def test_usage_days_in_the_rollup_zone(client: TestClient, two_zones: None) -> None:
    body = usage(client, "D-SH", bucket="day", start="2025-03-27", end="2025-04-02")
    got = buckets(body)
    assert [b[0] for b in got] == [f"2025-03-{d}T00:00:00+08:00" for d in (28, 29, 30, 31)] + [
        "2025-04-01T00:00:00+08:00"
    ]
    assert [b[1] for b in got] == [f"2025-03-{d}T00:00:00+08:00" for d in (29, 30, 31)] + [
        "2025-04-01T00:00:00+08:00", "2025-04-02T00:00:00+08:00"
    ]  # fmt: skip
    starts = [datetime.fromisoformat(b[0]) for b in got]
    assert [(b[2], b[4]) for b in got] == expected_days(starts, starts[-1] + timedelta(days=1))
    assert [b[2] for b in got] == [1.6, 2.4, 2.4, 2.4, 0.8]
    assert body["total_m3"] == round(0.1 * DAY_HOURS, 6)


def test_usage_days_in_another_zone_follow_its_midnights(
    client: TestClient, two_zones: None
) -> None:
    body = usage(client, "D-MAD", bucket="day", start="2025-03-27", end="2025-04-02")
    assert body["timezone"] == "Europe/Madrid"
    got = buckets(body)
    assert [(b[0], b[1]) for b in got] == [
        ("2025-03-28T00:00:00+01:00", "2025-03-29T00:00:00+01:00"),
        ("2025-03-29T00:00:00+01:00", "2025-03-30T00:00:00+01:00"),
        ("2025-03-30T00:00:00+01:00", "2025-03-31T00:00:00+02:00"),  # a 23 h day
        ("2025-03-31T00:00:00+02:00", "2025-04-01T00:00:00+02:00"),
        ("2025-04-01T00:00:00+02:00", "2025-04-02T00:00:00+02:00"),
    ]
    starts = [datetime.fromisoformat(b[0]) for b in got]
    end = datetime.fromisoformat(got[-1][1])
    assert [(b[2], b[4]) for b in got] == expected_days(starts, end)
    assert [b[2] for b in got] == [2.3, 2.4, 2.3, 2.4, 0.2]
    assert body["total_m3"] == round(0.1 * DAY_HOURS, 6)
    # The window selects days by their start, in the meter's zone.
    two = usage(client, "D-MAD", bucket="day", start="2025-03-29T00:00:00+01:00",
                end="2025-03-31T00:00:00+02:00")  # fmt: skip
    assert [b[2] for b in buckets(two)] == [2.4, 2.3]


def test_usage_day_of_25_hours(client: TestClient, db: psycopg.Connection[Any]) -> None:
    """Madrid leaves summer time on 2025-10-26: that local day is 25 hours long."""
    register(db, Meter("D-AUT", timezone="Europe/Madrid"))
    t = datetime(2025, 10, 25, 22, tzinfo=UTC)  # 2025-10-26 00:00 in Madrid
    write(db, "D-AUT", [(t + timedelta(hours=h), 50.0 + 0.1 * h) for h in range(26)])
    body = usage(client, "D-AUT", bucket="day", start="2025-10-25", end="2025-10-28")
    assert buckets(body) == [
        ("2025-10-26T00:00:00+02:00", "2025-10-27T00:00:00+01:00", 2.5, 0.0, 25 * 3600.0),
    ]


def test_both_day_sources_agree(db_url: str, two_zones: None) -> None:
    """usage_daily and days summed from usage_hourly give the same buckets for its zone."""

    async def both() -> tuple[list[queries.UsageRow], list[queries.UsageRow]]:
        conn = await psycopg.AsyncConnection.connect(db_url, options=SESSION_OPTIONS)
        async with conn:
            args: dict[str, Any] = dict(
                meter_id="D-SH", bucket="day", start=at(days=-2), end=at(days=6),
                tz="Asia/Shanghai",
            )  # fmt: skip
            daily = await queries.usage(conn, daily_tz="Asia/Shanghai", **args)
            summed = await queries.usage(conn, daily_tz=None, **args)
        return daily, summed

    daily, summed = asyncio.run(both())
    assert len(daily) == 5
    assert [(r.start, r.end, r.covered_s) for r in daily] == [
        (r.start, r.end, r.covered_s) for r in summed
    ]
    for a, b in zip(daily, summed, strict=True):
        assert math.isclose(a.volume_m3, b.volume_m3, abs_tol=1e-9)


def run_on_timescale(statements: list[str]) -> list[list[dict[str, Any]]]:
    """Run statements on a fresh TimescaleDB (PGlite in Node) migrated like storage.migrate."""
    node = shutil.which("node")
    if node is None or not (PGLITE_DIR / "node_modules").is_dir():
        pytest.skip("TimescaleDB runs on PGlite: needs node and tests/pglite/node_modules")
    params = {"partition_days": 7, "compress_after_days": 30, "retention_days": 3650,
              "timezone": "Asia/Shanghai"}  # fmt: skip
    setup = ["SET TimeZone = 'UTC'", *render_statements("timescale", params)]
    proc = subprocess.run(
        [node, "run_sql.mjs"], cwd=PGLITE_DIR, input=json.dumps({"statements": setup + statements}),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"run_sql.mjs exited {proc.returncode}: {proc.stderr[-2000:]}")
    assert out["ok"], out
    rows = {r["index"] - len(setup): r["rows"] for r in out["results"]}
    return [rows.get(i, []) for i in range(len(statements))]


def test_usage_sql_is_the_same_on_timescaledb(db: psycopg.Connection[Any], two_zones: None) -> None:
    """The usage queries, verbatim, over continuous aggregates give the plain flavour's buckets."""
    cur = psycopg.ClientCursor(db)
    pieces = db.execute("SELECT meter_id, ts, ts_end, volume_m3, kind FROM consumption").fetchall()
    load = [
        cur.mogrify("INSERT INTO consumption VALUES (%s, %s, %s, %s, %s)", p) for p in pieces
    ] + [
        f"CALL refresh_continuous_aggregate('{v}', NULL, NULL)"
        for v in ("usage_hourly", "usage_daily")
    ]
    asks = []
    for meter_id, tz in (("D-SH", "Asia/Shanghai"), ("D-MAD", "Europe/Madrid")):
        for query in (queries.HOURLY, queries.DAILY, queries.DAILY_FROM_HOURLY):
            if query is queries.DAILY and meter_id == "D-MAD":
                continue  # usage_daily is in Shanghai days; queries.usage never asks it for Madrid
            params = {"meter_id": meter_id, "start": at(days=-1), "end": at(days=5), "tz": tz}
            asks.append(
                'SELECT start::text, "end"::text, volume_m3, reverse_m3, covered_s FROM ('
                + cur.mogrify(query, params)
                + ") AS q ORDER BY 1"
            )
    cols = ("start", "end", "volume_m3", "reverse_m3", "covered_s")
    plain = [[dict(zip(cols, r, strict=True)) for r in db.execute(q).fetchall()] for q in asks]
    timescale = run_on_timescale(load + asks)[len(load) :]
    assert [len(rows) for rows in plain] == [96, 5, 5, 96, 5]
    for got, want in zip(timescale, plain, strict=True):
        assert [(r["start"], r["end"], r["covered_s"]) for r in got] == [
            (r["start"], r["end"], r["covered_s"]) for r in want
        ]
        for a, b in zip(got, want, strict=True):
            assert math.isclose(a["volume_m3"], b["volume_m3"], abs_tol=1e-9)
            assert math.isclose(a["reverse_m3"], b["reverse_m3"], abs_tol=1e-9)


@pytest.mark.parametrize(
    "query",
    [
        "bucket=week",
        "bucket=hour&start=2025-01-01T00:00:00Z&end=2026-03-01T00:00:00Z",
        "bucket=day&start=2000-01-01T00:00:00Z&end=2025-03-01T00:00:00Z",
        "start=2025-03-28T02:00:00Z&end=2025-03-28T02:00:00Z",
        "start=not-a-time",
    ],
)
def test_usage_rejects_bad_parameters(client: TestClient, gappy: None, query: str) -> None:
    r = client.get(f"/api/v1/meters/G-1/usage?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


ODD = (
    "", " ", "%00", "9" * 400, "-1", "0", "1e309", "nan", "inf", "null", "%F0%9F%92%A7",
    "0001-01-01T00:00:00%2B14:00", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z", "2025-02-30", "2025-03-28T00:00:00%2B25:00", "99999999999999",
)  # fmt: skip


def test_odd_input_never_gives_a_server_error(db_url: str, gappy: None) -> None:
    with TestClient(create_app(Settings(database_url=db_url)), raise_server_exceptions=False) as c:
        for value in ODD:
            for url in (
                *(
                    f"/api/v1/meters?{p}={value}"
                    for p in ("tenant", "dma", "kind", "limit", "offset")
                ),
                f"/api/v1/meters/{value}",
                f"/api/v1/meters/G-1{value}/usage",
                *(f"/api/v1/meters/G-1/readings?{p}={value}" for p in ("start", "end", "limit")),
                *(f"/api/v1/meters/G-1/usage?{p}={value}" for p in ("bucket", "start", "end")),
                f"/api/v1/meters/G-1/usage?bucket=day&start={value}&end=2025-03-29T00:00:00Z",
            ):
                r = c.get(url)
                assert r.status_code in (200, 404, 405, 422), (url, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json", url
                r.json()


def test_openapi_lists_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/healthz",
        "/api/v1/meters",
        "/api/v1/meters/{meter_id}",
        "/api/v1/meters/{meter_id}/readings",
        "/api/v1/meters/{meter_id}/usage",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}",
        "/api/v1/alerts/{alert_id}/acknowledge",
        "/api/v1/alerts/{alert_id}/resolve",
        "/api/v1/alerts/{alert_id}/feedback",
        "/api/v1/alerts/{alert_id}/events",
        "/api/v1/alerts/{alert_id}/deliveries",
        "/api/v1/alerts/stream",
        "/api/v1/feedback/{token}",
        "/api/v1/sla",
    }
