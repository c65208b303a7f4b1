"""How fast people react to alerts: the SLA report by team and month (and type, if asked).

Targets come from the notification config: a time to acknowledge per alert type and a time to
resolve per severity. They go into the query as two small arrays, so the whole report is one
statement and the percentiles are PostgreSQL's ``percentile_cont`` over every alert, not an
approximation assembled in Python.

An alert counts toward a target once the target is decided: it *met* it when the step happened in
time, it *missed* it when the step happened late or had not happened by the deadline while the
alert was still unresolved. An alert still inside its window is neither, so a report of the
current month does not count alerts that merely have not been handled yet as failures.

Targets run from ``sla_from``, when the alert became known (an alert detected in a day's upload
became known at the upload, not at the reading; a reopened alert became known again at its
reopening), or from ``detected_at`` for rows older than that column. The month and the window
are of that same start, so an alert is judged in the month its clock ran. Only staff
acknowledge: a row acknowledged by ``customer`` (older code took an answer for one) counts as
not acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row

REPORT = """
WITH ack_target AS (
    SELECT * FROM unnest(%(types)s::text[], %(ack_s)s::float8[]) AS t(type, secs)
), resolve_target AS (
    SELECT * FROM unnest(%(severities)s::text[], %(resolve_s)s::float8[]) AS t(severity, secs)
), x AS (
    SELECT a.team,
           to_char(c.since AT TIME ZONE %(tz)s, 'YYYY-MM') AS month,
           CASE WHEN %(by_type)s THEN a.type END AS type,
           c.acknowledged_at, a.resolved_at,
           extract(epoch FROM c.acknowledged_at - c.since)::float8 AS ack_s,
           extract(epoch FROM a.resolved_at - c.since)::float8 AS resolve_s,
           c.since + make_interval(secs => k.secs) AS ack_due,
           c.since + make_interval(secs => r.secs) AS resolve_due
    FROM alerts a
    CROSS JOIN LATERAL (
        SELECT coalesce(a.sla_from, a.detected_at) AS since,
               CASE WHEN a.acknowledged_by IS DISTINCT FROM 'customer'
                    THEN a.acknowledged_at END AS acknowledged_at
    ) c
    LEFT JOIN ack_target k ON k.type = a.type
    LEFT JOIN resolve_target r ON r.severity = a.severity
    WHERE coalesce(a.sla_from, a.detected_at) >= %(since)s
      AND coalesce(a.sla_from, a.detected_at) < %(until)s
      AND (%(team)s::text IS NULL OR a.team = %(team)s::text)
      AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s::text)
)
SELECT team, month, type,
       count(*) AS alerts,
       count(acknowledged_at) AS acknowledged,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ack_s) / 60 AS ack_median_min,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ack_s) / 60 AS ack_p90_min,
       count(*) FILTER (WHERE acknowledged_at <= ack_due) AS ack_met,
       count(*) FILTER (WHERE acknowledged_at > ack_due OR (acknowledged_at IS NULL
           AND ack_due < coalesce(resolved_at, %(now)s::timestamptz))) AS ack_missed,
       count(resolved_at) AS resolved,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolve_s) / 3600 AS resolve_median_h,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY resolve_s) / 3600 AS resolve_p90_h,
       count(*) FILTER (WHERE resolved_at <= resolve_due) AS resolve_met,
       count(*) FILTER (WHERE resolved_at > resolve_due OR (resolved_at IS NULL
           AND resolve_due < %(now)s::timestamptz)) AS resolve_missed
FROM x
GROUP BY team, month, type
ORDER BY team NULLS LAST, month, type
"""


@dataclass(frozen=True, slots=True)
class SlaRow:
    """One group; times to acknowledge in minutes, to resolve in hours (None: no such alert)."""

    team: str | None
    month: str
    type: str | None
    alerts: int
    acknowledged: int
    ack_median_min: float | None
    ack_p90_min: float | None
    ack_met: int
    ack_missed: int
    resolved: int
    resolve_median_h: float | None
    resolve_p90_h: float | None
    resolve_met: int
    resolve_missed: int

    @property
    def ack_within_target(self) -> float | None:
        """Share of decided alerts acknowledged in time; None when none is decided yet."""
        return _share(self.ack_met, self.ack_missed)

    @property
    def resolve_within_target(self) -> float | None:
        return _share(self.resolve_met, self.resolve_missed)


def _share(met: int, missed: int) -> float | None:
    return met / (met + missed) if met + missed else None


async def sla_report(
    conn: AsyncConnection[Any],
    *,
    since: datetime,
    until: datetime,
    ack_targets: Mapping[str, timedelta],
    resolve_targets: Mapping[str, timedelta],
    timezone: str,
    now: datetime,
    team: str | None = None,
    tenant: str | None = None,
    by_type: bool = False,
) -> list[SlaRow]:
    """Alerts whose SLA clock started in ``[since, until)`` (``sla_from``, else ``detected_at``)
    grouped by team and month of that start in ``timezone`` (and type when ``by_type``).

    ``ack_targets`` maps alert types to the time to acknowledge, ``resolve_targets`` severities to
    the time to resolve; an alert whose type or severity has no target counts toward neither.
    ``now`` is when open alerts are judged: the caller's clock, so the report's ``as_of`` is it.
    """
    params = {
        "types": list(ack_targets),
        "ack_s": [t.total_seconds() for t in ack_targets.values()],
        "severities": list(resolve_targets),
        "resolve_s": [t.total_seconds() for t in resolve_targets.values()],
        "tz": timezone,
        "by_type": by_type,
        "since": since,
        "until": until,
        "team": team,
        "tenant": tenant,
        "now": now,
    }
    async with conn.cursor(row_factory=class_row(SlaRow)) as cur:
        await cur.execute(REPORT, params)
        return await cur.fetchall()
