"""The TimescaleDB flavour, run for real on PGlite (PostgreSQL 17 + TimescaleDB 2.23 in WASM).

TimescaleDB cannot be installed next to this machine's PostgreSQL, and PGlite's socket server cannot
carry TimescaleDB DDL, so each test hands the exact statements ``storage.migrate`` runs, followed by
its own, to ``tests/pglite/run_sql.mjs`` in one Node process on a fresh in-memory database. The
rollups it produces are held to the Python consumption maths and to the plain-PostgreSQL flavour,
which is fed through the real ingest write path.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from meterwatch.consumption import REVERSE, Piece, pieces
from storage.migrate import render_statements
from storage.writer import Message, Writer

PGLITE_DIR = Path(__file__).parent / "pglite"
TIMEZONE = "Asia/Shanghai"
TZ = ZoneInfo(TIMEZONE)
PARAMS = {
    "partition_days": 7,
    "compress_after_days": 30,
    "retention_days": 3650,
    "timezone": TIMEZONE,
}
REGISTER_MAX_M3 = 100000.0  # the Writer's auto-registration defaults, so both flavours agree
Q3_M3H = 2.5
# 14:07 in Shanghai, 45 days ago: the data crosses two local midnights and is old enough for the
# 30-day compression policy to take it.
T0 = datetime.combine(datetime.now(UTC).date() - timedelta(days=45), time(6, 7), UTC)
HOUR = timedelta(hours=1)
SERIES_COLUMNS = """SELECT table_name, column_name, data_type FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name IN ('readings', 'consumption', 'usage_hourly',
    'usage_daily') ORDER BY table_name, ordinal_position"""
HOURLY = "SELECT meter_id, hour, volume_m3, reverse_m3, covered_s FROM usage_hourly ORDER BY 1, 2"
DAILY = "SELECT meter_id, day, volume_m3, reverse_m3, covered_s FROM usage_daily ORDER BY 1, 2"
CONSUMPTION = "SELECT meter_id, ts, ts_end, volume_m3, kind FROM consumption ORDER BY 1, 2"
READINGS = "SELECT meter_id, ts, register_m3, flow_lph FROM readings ORDER BY 1, 2"
REFRESH = (
    "CALL refresh_continuous_aggregate('usage_hourly', NULL, NULL)",
    "CALL refresh_continuous_aggregate('usage_daily', NULL, NULL)",
)
# The Writer's recompute: drop a meter's pieces over a span, then insert the new ones.
DELETE_SPAN = """DELETE FROM consumption c
    USING unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(meter_id, lo, hi)
    WHERE c.meter_id = r.meter_id AND c.ts >= r.lo AND c.ts < r.hi"""

Point = tuple[datetime, float, float | None]  # ts, register_m3, flow_lph
Statement = str | dict[str, Any]
Rows = list[dict[str, Any]]


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, once ``tests/pglite/node_modules`` is installed (``npm ci`` if needed)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the TimescaleDB tests run on PGlite under Node")
    if not (PGLITE_DIR / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("tests/pglite/node_modules is missing and npm is not installed")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=PGLITE_DIR, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"npm ci in tests/pglite failed: {proc.stderr.strip()[-500:]}")
    return node


class Job:
    """Statements for one fresh PGlite, with names for the results a test wants back.

    Each job first runs exactly what a first ``storage.migrate`` runs, in a UTC session as
    ``storage.db.connect`` opens, so timestamps come back in UTC.
    """

    def __init__(self, params: dict[str, object] = PARAMS) -> None:
        self.setup = ["SET TimeZone = 'UTC'", *render_statements("timescale", params)]
        self.statements: list[Statement] = []
        self.names: dict[int, str] = {}

    def do(self, *statements: Statement) -> Job:
        self.statements.extend(statements)
        return self

    def ask(self, name: str, statement: Statement) -> Job:
        self.names[len(self.setup) + len(self.statements)] = name
        return self.do(statement)

    def run(self, node: str) -> dict[str, Rows]:
        job = json.dumps({"statements": [*self.setup, *self.statements]})
        proc = subprocess.run(
            [node, "run_sql.mjs"],
            cwd=PGLITE_DIR, input=job, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"run_sql.mjs exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        if not out["ok"]:
            where = "migration" if out["index"] < len(self.setup) else "test"
            pytest.fail(f"{where} statement failed on PGlite: {out['error']} ({out['code']})\n"
                        f"{out['statement']}")  # fmt: skip
        got = {
            self.names[r["index"]]: r["rows"] for r in out["results"] if r["index"] in self.names
        }
        assert got.keys() == set(self.names.values()), "every named statement returns rows"
        return got


def insert_readings(readings: Iterable[tuple[str, datetime, float, float | None]]) -> Statement:
    """An INSERT like ingest's: known (meter_id, ts) are skipped, the new ones are returned."""
    cols = list(zip(*readings, strict=True))
    return {
        "sql": """INSERT INTO readings (meter_id, ts, register_m3, flow_lph)
                  SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::real[])
                  ON CONFLICT (meter_id, ts) DO NOTHING RETURNING meter_id, ts""",
        "params": [list(cols[0]), [t.isoformat() for t in cols[1]], list(cols[2]), list(cols[3])],
    }


def insert_pieces(ps: Sequence[Piece]) -> Statement:
    return {
        "sql": """INSERT INTO consumption (meter_id, ts, ts_end, volume_m3, kind)
                  SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[],
                                       $4::float8[], $5::text[])""",
        "params": [
            [p.meter_id for p in ps],
            [p.ts.isoformat() for p in ps],
            [p.ts_end.isoformat() for p in ps],
            [p.volume_m3 for p in ps],
            [p.kind for p in ps],
        ],
    }


def fleet() -> dict[str, list[Point]]:
    """Two meters over two and a half days, registers rounded as the uplink codec rounds them.

    WH-100001 reads every 15 minutes, goes silent for 5 h 20 min one night and once runs backwards;
    WH-100002 freezes hourly values (NB-IoT style) and its register rolls over at 100000 m3.
    """
    rng = random.Random(20261010)
    a: list[Point] = []
    reg = 1234.5
    for k in range(4 * 60):
        ts = T0 + timedelta(minutes=15 * k)
        if T0 + timedelta(hours=17) < ts < T0 + timedelta(hours=22, minutes=20):
            continue
        reg += -0.004 if k == 30 else rng.uniform(0.0, 0.05)
        a.append((ts, round(reg, 6), round(rng.uniform(0, 200), 3)))
    b: list[Point] = []
    reg = 99998.4
    for k in range(60):
        reg = (reg + rng.uniform(0.02, 0.3)) % REGISTER_MAX_M3
        b.append((T0.replace(minute=0) + timedelta(hours=k + 1), round(reg, 6), None))
    return {"WH-100001": a, "WH-100002": b}


def python_pieces(series: dict[str, list[Point]]) -> list[Piece]:
    return [
        p
        for meter_id, pts in series.items()
        for p in pieces(
            meter_id, [(t, r) for t, r, _ in pts], register_max_m3=REGISTER_MAX_M3, q3_m3h=Q3_M3H
        )
    ]


def flat(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, datetime, str], float]:
    """Rollup rows as {(meter, bucket, column): value}, so pytest.approx compares them by key."""
    out = {}
    for meter_id, bucket, volume, reverse, covered in rows:
        if isinstance(bucket, str):
            bucket = datetime.fromisoformat(bucket)
        for name, value in (("volume_m3", volume), ("reverse_m3", reverse), ("covered_s", covered)):
            out[(meter_id, bucket.astimezone(UTC), name)] = float(value)
    return out


def values(rows: Rows) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in rows]


def oldest_of(rows: Rows) -> tuple[datetime, ...]:
    return tuple(datetime.fromisoformat(v) for v in values(rows)[0])


def uploads(series: dict[str, list[Point]]) -> list[tuple[str, list[Point], int]]:
    """Readings per message: WH-100001 sends four at a time, WH-100002 a day of frozen values."""
    return [(m, pts, 4 if m == "WH-100001" else 24) for m, pts in series.items()]


def expected_rollups(ps: Iterable[Piece]) -> tuple[dict[Any, float], dict[Any, float]]:
    """Hourly and daily (Asia/Shanghai days) sums straight from the Python pieces."""
    hourly: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for p in ps:
        acc = hourly[(p.meter_id, p.ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0))]
        acc[0] += p.volume_m3
        acc[1] += -p.volume_m3 if p.kind == REVERSE else 0.0
        acc[2] += (p.ts_end - p.ts).total_seconds()
    daily: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for (meter_id, hour), sums in hourly.items():
        day = hour.astimezone(TZ).replace(hour=0)
        daily[(meter_id, day)] = [x + y for x, y in zip(daily[(meter_id, day)], sums, strict=True)]
    return (
        flat((m, h, *s) for (m, h), s in hourly.items()),
        flat((m, d, *s) for (m, d), s in daily.items()),
    )


def write_plain(
    conn: psycopg.Connection[Any], batches: Sequence[Sequence[tuple[str, list[Point]]]]
) -> None:
    """Feed (meter, readings) messages through the real codec and Writer, one batch at a time."""
    received_at = T0 + timedelta(days=4)
    writer = Writer(conn)
    for batch in batches:
        msgs = []
        for meter_id, pts in batch:
            topic = uplink_topic(meter_id)
            payload = encode_uplink(meter_id, [(t.astimezone(TZ), r, f) for t, r, f in pts])
            decoded = decode_uplink(topic, payload, received_at=received_at)
            msgs.append(Message(topic, payload, received_at, decoded))
        writer.write(msgs)


def approx(expected: dict[Any, float]) -> Any:
    return pytest.approx(expected, rel=0, abs=1e-9)


def run_jobs(proc_name: str) -> str:
    """Run the series tables' policies of one kind now, as the scheduler does when they fall due."""
    return f"""DO $$
        DECLARE j integer;
        BEGIN
            FOR j IN SELECT job_id FROM timescaledb_information.jobs
                     WHERE proc_name = '{proc_name}'
                       AND hypertable_name IN ('readings', 'consumption')
                     ORDER BY job_id LOOP
                CALL run_job(j);
            END LOOP;
        END $$"""


def readings_of(series: dict[str, list[Point]]) -> list[tuple[str, datetime, float, float | None]]:
    return [(m, t, r, f) for m, pts in series.items() for t, r, f in pts]


def late_reading(series: dict[str, list[Point]]) -> tuple[Point, Point, Point]:
    """A reading that arrives late inside WH-100001's silent night, with its stored neighbours."""
    pts = series["WH-100001"]
    i = next(i for i in range(1, len(pts)) if pts[i][0] - pts[i - 1][0] > HOUR)
    prev, nxt = pts[i - 1], pts[i]
    late = (prev[0] + timedelta(hours=2, minutes=11, seconds=30), round(prev[1] + 0.01, 6), 3.5)
    return prev, late, nxt


def recompute(meter_id: str, prev: Point, late: Point, nxt: Point) -> list[Statement]:
    """What ingest does for a late reading: store it, replace the pieces between its neighbours."""
    new = pieces(
        meter_id, [(prev[0], prev[1]), (late[0], late[1]), (nxt[0], nxt[1])],
        register_max_m3=REGISTER_MAX_M3, q3_m3h=Q3_M3H,
    )  # fmt: skip
    return [
        insert_readings([(meter_id, *late)]),
        {"sql": DELETE_SPAN, "params": [[meter_id], [prev[0].isoformat()], [nxt[0].isoformat()]]},
        insert_pieces(new),
    ]


def test_migration_builds_hypertables_policies_and_continuous_aggregates(node, db):
    got = (
        Job()
        .ask("hypertables", "SELECT hypertable_name, compression_enabled "
             "FROM timescaledb_information.hypertables ORDER BY 1")
        .ask("dimensions", "SELECT hypertable_name, column_name, time_interval::text "
             "FROM timescaledb_information.dimensions WHERE hypertable_schema = 'public' "
             "ORDER BY 1")
        .ask("compression", "SELECT hypertable_name, attname, segmentby_column_index, "
             "orderby_column_index FROM timescaledb_information.compression_settings ORDER BY 1, 2")
        .ask("jobs", "SELECT proc_name, hypertable_name, coalesce(config->>'compress_after', "
             "config->>'drop_after', config->>'end_offset') FROM timescaledb_information.jobs "
             "WHERE hypertable_name IS NOT NULL ORDER BY 1, 2")
        .ask("caggs", "SELECT view_name, hypertable_name, materialization_hypertable_name, "
             "materialized_only FROM timescaledb_information.continuous_aggregates ORDER BY 1")
        .ask("columns", SERIES_COLUMNS)
        .run(node)
    )  # fmt: skip
    assert values(got["hypertables"]) == [("consumption", True), ("readings", True)]
    assert values(got["dimensions"]) == [
        ("consumption", "ts", "7 days"), ("readings", "ts", "7 days"),
    ]  # fmt: skip
    assert values(got["compression"]) == [
        ("consumption", "meter_id", 1, None), ("consumption", "ts", None, 1),
        ("readings", "meter_id", 1, None), ("readings", "ts", None, 1),
    ]  # fmt: skip
    assert values(got["jobs"]) == [
        ("policy_compression", "consumption", "30 days"),
        ("policy_compression", "readings", "30 days"),
        ("policy_refresh_continuous_aggregate", "usage_daily", "1 day"),
        ("policy_refresh_continuous_aggregate", "usage_hourly", "01:00:00"),
        ("policy_retention", "consumption", "3650 days"),
        ("policy_retention", "readings", "3650 days"),
    ]
    daily, hourly = values(got["caggs"])
    assert (daily[0], hourly[0], hourly[1]) == ("usage_daily", "usage_hourly", "consumption")
    assert daily[1] == hourly[2], "usage_daily must be built on usage_hourly's materialization"
    assert daily[3] is False and hourly[3] is False, "real-time aggregation must be on"
    # Readers share their queries across flavours, so the columns and their types must match.
    assert values(got["columns"]) == db.execute(SERIES_COLUMNS).fetchall()


def test_rollups_equal_python_and_plain_postgres_through_late_data(node, db):
    series = fleet()
    assert {"flow", "reverse", "rollover"} <= {p.kind for p in python_pieces(series)}
    prev, late, nxt = late_reading(series)
    full = {**series, "WH-100001": sorted([*series["WH-100001"], late])}
    readings = readings_of(series)
    got = (
        Job()
        .ask("stored", insert_readings(readings + readings[::7]))  # with redelivered ones
        .do(insert_pieces(python_pieces(series)), *REFRESH)
        .ask("hourly", HOURLY).ask("daily", DAILY)
        .do(*recompute("WH-100001", prev, late, nxt))
        .ask("redelivered", insert_readings([("WH-100001", late[0], 999.0, None)]))
        .do(*REFRESH)
        .ask("hourly_late", HOURLY).ask("daily_late", DAILY)
        .ask("consumption", CONSUMPTION).ask("readings", READINGS)
        .run(node)
    )  # fmt: skip
    assert len(got["stored"]) == len(readings)
    assert got["redelivered"] == []
    hourly, daily = expected_rollups(python_pieces(series))
    assert flat(values(got["hourly"])) == approx(hourly)
    assert flat(values(got["daily"])) == approx(daily)
    hourly, daily = expected_rollups(python_pieces(full))
    assert flat(values(got["hourly_late"])) == approx(hourly)
    assert flat(values(got["daily_late"])) == approx(daily)

    # The plain flavour gets the same readings as shuffled, partly duplicated messages in three
    # batches through the real codec and Writer, then the late reading in a batch of its own.
    msgs = [(m, pts[i : i + n]) for m, pts, n in uploads(series) for i in range(0, len(pts), n)]
    msgs += msgs[::5]
    random.Random(7).shuffle(msgs)
    k = len(msgs) // 3
    write_plain(db, [msgs[:k], msgs[k : 2 * k], msgs[2 * k :], [("WH-100001", [late, nxt])]])
    assert flat(values(got["hourly_late"])) == approx(flat(db.execute(HOURLY).fetchall()))
    assert flat(values(got["daily_late"])) == approx(flat(db.execute(DAILY).fetchall()))
    assert [
        (m, datetime.fromisoformat(t), datetime.fromisoformat(e), v, kind)
        for m, t, e, v, kind in values(got["consumption"])
    ] == db.execute(CONSUMPTION).fetchall()
    assert [(m, datetime.fromisoformat(t), r) for m, t, r, _ in values(got["readings"])] == [
        (m, t, r) for m, t, r, _ in db.execute(READINGS).fetchall()
    ]


def test_real_time_aggregation_shows_rows_after_the_last_refresh(node):
    series = fleet()
    cut = datetime.combine(T0.date() + timedelta(days=2), time(0), TZ)  # a Shanghai midnight
    before = {m: [p for p in pts if p[0] < cut] for m, pts in series.items()}
    after = {m: [p for p in pts if p[0] >= cut] for m, pts in series.items()}
    got = (
        Job()
        .do(insert_readings(readings_of(before)), insert_pieces(python_pieces(before)), *REFRESH)
        .do(insert_readings(readings_of(after)), insert_pieces(python_pieces(after)))
        .ask("hourly", HOURLY).ask("daily", DAILY)
        .do("ALTER MATERIALIZED VIEW usage_hourly SET (timescaledb.materialized_only = true)")
        .ask("materialized", HOURLY)
        .run(node)
    )  # fmt: skip
    hourly, daily = expected_rollups(python_pieces(before) + python_pieces(after))
    assert flat(values(got["hourly"])) == approx(hourly)
    assert flat(values(got["daily"])) == approx(daily)
    assert flat(values(got["materialized"])) == approx(expected_rollups(python_pieces(before))[0])


def test_compressed_chunks_read_back_and_take_late_data(node):
    series = fleet()
    prev, late, nxt = late_reading(series)
    full = {**series, "WH-100001": sorted([*series["WH-100001"], late])}
    readings = readings_of(series)
    got = (
        Job()
        .do(insert_readings(readings), insert_pieces(python_pieces(series)))
        .ask("readings", READINGS).ask("consumption", CONSUMPTION)
        .ask("compressed", "SELECT compress_chunk(c)::text FROM show_chunks('readings') c")
        .do(run_jobs("policy_compression"))
        .ask("chunks", "SELECT hypertable_name, bool_and(is_compressed) "
             "FROM timescaledb_information.chunks GROUP BY 1 ORDER BY 1")
        .ask("readings_c", READINGS).ask("consumption_c", CONSUMPTION)
        .ask("redelivered", insert_readings([(m, t, r + 1, f) for m, t, r, f in readings]))
        .ask("readings_r", READINGS)
        .do(*recompute("WH-100001", prev, late, nxt), *REFRESH)
        .ask("hourly", HOURLY).ask("daily", DAILY)
        .run(node)
    )  # fmt: skip
    assert got["compressed"], "readings has chunks to compress"
    assert values(got["chunks"]) == [("consumption", True), ("readings", True)]
    assert got["readings_c"] == got["readings"]
    assert got["consumption_c"] == got["consumption"]
    assert got["redelivered"] == [], "redelivery must not touch compressed rows"
    assert got["readings_r"] == got["readings"]
    hourly, daily = expected_rollups(python_pieces(full))
    assert flat(values(got["hourly"])) == approx(hourly)
    assert flat(values(got["daily"])) == approx(daily)


def test_retention_drops_old_chunks(node):
    now = datetime.now(UTC).replace(microsecond=0)
    ts = {d: now - timedelta(days=d) for d in (400, 399, 100, 99, 3, 2)}
    readings = [("WH-100001", t, 1000.0 - d, None) for d, t in ts.items()]
    ps = [  # consumption within each pair of days only, so every age has its own chunks
        p
        for i in range(0, len(readings), 2)
        for p in pieces(
            "WH-100001", [(t, r) for _, t, r, _ in readings[i : i + 2]],
            register_max_m3=REGISTER_MAX_M3, q3_m3h=Q3_M3H,
        )
    ]  # fmt: skip
    oldest = "SELECT (SELECT min(ts) FROM readings) AS r, (SELECT min(ts) FROM consumption) AS c"
    got = (
        Job({**PARAMS, "retention_days": 365})
        .do(insert_readings(readings), insert_pieces(ps), run_jobs("policy_retention"))
        .ask("after_policy", oldest)
        .ask("dropped", "SELECT drop_chunks('readings', older_than => INTERVAL '30 days')::text")
        .ask("after_drop", oldest)
        .run(node)
    )  # fmt: skip
    assert got["dropped"]
    assert oldest_of(got["after_policy"]) == (ts[100], ts[100])
    assert oldest_of(got["after_drop"]) == (ts[3], ts[100])
