"""Reads behind the API: the meter registry, raw readings, the usage rollups and alerts.

Every statement here is the same SQL on both storage flavours. ``usage_hourly`` and
``usage_daily`` are tables kept by the writer on plain PostgreSQL and continuous aggregates on
TimescaleDB, with the same columns, so nothing below asks which flavour it runs on. Timestamps come
back in UTC because API connections run their sessions in UTC (see ``storage.db``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

Bucket = Literal["hour", "day"]

# Registry columns as the API shows them; the tariff is numeric in SQL, a float on the wire.
METER_COLUMNS = sql.SQL(
    """m.meter_id, m.tenant, m.dma, m.kind, m.dn_mm, m.q3_m3h, m.timezone, m.install_date,
       m.register_max_m3, m.tariff_cny_per_m3::float8 AS tariff_cny_per_m3, m.parent_meter_id,
       m.closed_hours, m.expected_interval_s, m.auto_registered"""
)

# Unqualified, so they read from ``alerts`` under any alias-free FROM (storage.alerts uses them).
ALERT_COLUMNS = sql.SQL(
    """id, tenant, meter_id, dma, type, severity, status, started_at, detected_at, last_seen_at,
       resolved_at, resolution, evidence, estimated_loss_m3_per_day, estimated_cost_cny_per_day,
       occurrences, message, team, cleared_at, acknowledged_at, acknowledged_by, resolved_by,
       resolution_note, escalation_level, reopened, repair_reported_at, repair_reported_by,
       confirmed_at, volume_lost_m3, volume_saved_m3, sla_from"""
)

# The newest reading of each meter is one backward step on the (meter_id, ts) primary key, so a
# page of meters costs one index probe per meter instead of an aggregate over all readings.
LAST_READING = sql.SQL(
    """LEFT JOIN LATERAL (
           SELECT r.ts FROM readings r WHERE r.meter_id = m.meter_id ORDER BY r.ts DESC LIMIT 1
       ) AS last ON true"""
)

HOURLY = """
SELECT hour AS start, hour + interval '1 hour' AS "end", volume_m3, reverse_m3, covered_s
FROM usage_hourly
WHERE meter_id = %(meter_id)s AND hour >= %(start)s AND hour < %(end)s
ORDER BY hour
"""

# A day ends at the next local midnight: 26 hours on is always inside the next day whatever the
# daylight-saving shift, and truncating there in the meter's zone finds that midnight.
DAILY = """
SELECT day AS start, date_trunc('day', day + interval '26 hours', %(tz)s) AS "end",
       volume_m3, reverse_m3, covered_s
FROM usage_daily
WHERE meter_id = %(meter_id)s AND day >= %(start)s AND day < %(end)s
ORDER BY day
"""

# For a zone other than the rollup's, days are summed from the hours. An hour belongs to a day
# that starts at or before it and ends at most 25 hours later, hence the index range.
DAILY_FROM_HOURLY = """
SELECT d.start, date_trunc('day', d.start + interval '26 hours', %(tz)s) AS "end",
       d.volume_m3, d.reverse_m3, d.covered_s
FROM (
    SELECT date_trunc('day', hour, %(tz)s) AS start, sum(volume_m3) AS volume_m3,
           sum(reverse_m3) AS reverse_m3, sum(covered_s) AS covered_s
    FROM usage_hourly
    WHERE meter_id = %(meter_id)s AND hour >= %(start)s AND hour < %(end)s + interval '2 days'
    GROUP BY 1
) AS d
WHERE d.start >= %(start)s AND d.start < %(end)s
ORDER BY d.start
"""


@dataclass(frozen=True, slots=True)
class MeterRow:
    meter_id: str
    tenant: str
    dma: str | None
    kind: str
    dn_mm: int
    q3_m3h: float
    timezone: str
    install_date: date | None
    register_max_m3: float
    tariff_cny_per_m3: float
    parent_meter_id: str | None
    closed_hours: Any
    expected_interval_s: int
    auto_registered: bool
    last_reading_at: datetime | None


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: int
    tenant: str
    meter_id: str
    dma: str | None
    type: str
    severity: str
    status: str
    started_at: datetime
    detected_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    resolution: str | None
    evidence: Any
    estimated_loss_m3_per_day: float | None
    estimated_cost_cny_per_day: float | None
    occurrences: int
    message: Any
    # The lifecycle (0004_notify.sql). Defaults keep rows built by hand, as tests do, valid.
    team: str | None = None
    cleared_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_by: str | None = None
    resolution_note: str | None = None
    escalation_level: int = 0
    reopened: int = 0
    repair_reported_at: datetime | None = None
    repair_reported_by: str | None = None
    confirmed_at: datetime | None = None
    volume_lost_m3: float | None = None
    volume_saved_m3: float | None = None
    # When the SLA clock started (event time); None on rows written before the column existed.
    sla_from: datetime | None = None

    @property
    def sla_start(self) -> datetime:
        """Where the SLA deadlines run from: ``sla_from``, else detection (as in the report)."""
        return self.sla_from or self.detected_at


@dataclass(frozen=True, slots=True)
class ReadingRow:
    ts: datetime
    register_m3: float
    flow_lph: float | None
    battery_pct: float | None
    rssi_dbm: float | None
    flags: list[str]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One bucket: ``[start, end)``, net volume (reverse flow counts negative) and coverage."""

    start: datetime
    end: datetime
    volume_m3: float
    reverse_m3: float
    covered_s: float


async def ping(conn: AsyncConnection[Any]) -> None:
    await conn.execute("SELECT 1")


async def read_meta(conn: AsyncConnection[Any]) -> dict[str, str]:
    """``meterwatch_meta``: the storage flavour and the zone ``usage_daily`` is bucketed in."""
    cur = await conn.execute("SELECT key, value FROM meterwatch_meta")
    return {k: v for k, v in await cur.fetchall()}


def _meter_filters(
    tenant: str | None, dma: str | None, kind: str | None
) -> tuple[sql.Composable, dict[str, str]]:
    """WHERE clause with only the filters given (so each can use its index) and its parameters."""
    params = {
        col: value
        for col, value in (("tenant", tenant), ("dma", dma), ("kind", kind))
        if value is not None
    }
    conds = [sql.SQL("m.{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in params]
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    return where, params


async def list_meters(
    conn: AsyncConnection[Any],
    *,
    tenant: str | None = None,
    dma: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[MeterRow]:
    where, params = _meter_filters(tenant, dma, kind)
    query = sql.SQL(
        """SELECT {cols}, last.ts AS last_reading_at FROM meters m {last} {where}
           ORDER BY m.meter_id LIMIT %(limit)s OFFSET %(offset)s"""
    ).format(cols=METER_COLUMNS, last=LAST_READING, where=where)
    async with conn.cursor(row_factory=class_row(MeterRow)) as cur:
        await cur.execute(query, {**params, "limit": limit, "offset": offset})
        return await cur.fetchall()


async def count_meters(
    conn: AsyncConnection[Any],
    *,
    tenant: str | None = None,
    dma: str | None = None,
    kind: str | None = None,
) -> int:
    where, params = _meter_filters(tenant, dma, kind)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM meters m {}").format(where), params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def get_meter(conn: AsyncConnection[Any], *, meter_id: str) -> MeterRow | None:
    query = sql.SQL(
        "SELECT {cols}, last.ts AS last_reading_at FROM meters m {last} WHERE m.meter_id = %s"
    ).format(cols=METER_COLUMNS, last=LAST_READING)
    async with conn.cursor(row_factory=class_row(MeterRow)) as cur:
        await cur.execute(query, (meter_id,))
        return await cur.fetchone()


async def readings(
    conn: AsyncConnection[Any], *, meter_id: str, start: datetime, end: datetime, limit: int
) -> list[ReadingRow]:
    """Readings with ``start <= ts < end``, oldest first, at most ``limit`` of them."""
    async with conn.cursor(row_factory=class_row(ReadingRow)) as cur:
        await cur.execute(
            """SELECT ts, register_m3, flow_lph, battery_pct, rssi_dbm, flags FROM readings
               WHERE meter_id = %s AND ts >= %s AND ts < %s ORDER BY ts LIMIT %s""",
            (meter_id, start, end, limit),
        )
        return await cur.fetchall()


async def usage(
    conn: AsyncConnection[Any],
    *,
    meter_id: str,
    bucket: Bucket,
    start: datetime,
    end: datetime,
    tz: str,
    daily_tz: str | None,
) -> list[UsageRow]:
    """Usage buckets whose start lies in ``[start, end)``, oldest first.

    Day buckets are local days of ``tz`` (the meter's zone). ``usage_daily`` is bucketed in
    ``daily_tz`` (the deployment's zone; None if unknown), so it answers only when the two agree;
    otherwise the days are summed from ``usage_hourly``. Hours are UTC hours and each counts toward
    the local day its start falls in, which matters only in zones with a fractional-hour offset.
    """
    if bucket == "hour":
        query = HOURLY
    elif bucket == "day":
        query = DAILY if tz == daily_tz else DAILY_FROM_HOURLY
    else:
        raise ValueError(f"unknown bucket {bucket!r}")
    params = {"meter_id": meter_id, "start": start, "end": end, "tz": tz}
    async with conn.cursor(row_factory=class_row(UsageRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


def _alert_filters(
    *,
    tenant: str | None,
    team: str | None,
    meter_id: str | None,
    type: str | None,
    status: str | None,
    severity: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[sql.Composable, dict[str, object]]:
    """WHERE clause with only the filters given (so the inbox index serves the common ones)."""
    equal = {
        col: value
        for col, value in (
            ("tenant", tenant),
            ("team", team),
            ("meter_id", meter_id),
            ("type", type),
            ("status", status),
            ("severity", severity),
        )
        if value is not None
    }
    conds: list[sql.Composable] = [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in equal
    ]
    params: dict[str, object] = dict(equal)
    if since is not None:
        conds.append(sql.SQL("detected_at >= %(since)s"))
        params["since"] = since
    if until is not None:
        conds.append(sql.SQL("detected_at < %(until)s"))
        params["until"] = until
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    return where, params


async def list_alerts(
    conn: AsyncConnection[Any],
    *,
    tenant: str | None = None,
    team: str | None = None,
    meter_id: str | None = None,
    type: str | None = None,
    status: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AlertRow]:
    """Alerts detected in ``[since, until)``, newest first (id breaks ties, so pages are stable)."""
    where, params = _alert_filters(
        tenant=tenant, team=team, meter_id=meter_id, type=type, status=status,
        severity=severity, since=since, until=until,
    )  # fmt: skip
    query = sql.SQL(
        """SELECT {cols} FROM alerts {where}
           ORDER BY detected_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s"""
    ).format(cols=ALERT_COLUMNS, where=where)
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(query, {**params, "limit": limit, "offset": offset})
        return await cur.fetchall()


async def count_alerts(
    conn: AsyncConnection[Any],
    *,
    tenant: str | None = None,
    team: str | None = None,
    meter_id: str | None = None,
    type: str | None = None,
    status: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    where, params = _alert_filters(
        tenant=tenant, team=team, meter_id=meter_id, type=type, status=status,
        severity=severity, since=since, until=until,
    )  # fmt: skip
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM alerts {}").format(where), params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def meter_timezone(conn: AsyncConnection[Any], meter_id: str) -> str | None:
    """The meter's zone as registered; None for a meter the registry does not know."""
    cur = await conn.execute("SELECT timezone FROM meters WHERE meter_id = %s", (meter_id,))
    row = await cur.fetchone()
    return str(row[0]) if row and row[0] else None


async def get_alert(conn: AsyncConnection[Any], alert_id: int) -> AlertRow | None:
    query = sql.SQL("SELECT {cols} FROM alerts WHERE id = %s").format(cols=ALERT_COLUMNS)
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(query, (alert_id,))
        return await cur.fetchone()
