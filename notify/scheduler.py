"""Everything about alerts that happens because time passed, on the event clock.

Ingest owns the event clock (the detectors' watermark) and calls :class:`Notifier` in the
transaction that stores a batch's alerts: :meth:`Notifier.after_alerts` writes the notifications
of what the batch changed, :meth:`Notifier.tick` does what the new event time makes due — release
customer reminders held through quiet hours, escalate alerts nobody acknowledged within the SLA,
confirm reported repairs from the data, resolve alerts whose condition has stayed away. Because
the clock is event time, a replay at 10,000x escalates at the same event times as real time would,
and an alert is never escalated before its deadline however fast the data arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from meterwatch.domain import ALERT_TYPES
from notify.config import NotifyConfig
from notify.model import Trigger
from notify.outbox import enqueue, enqueue_many
from notify.routing import ack_due, auto_resolve_after, escalation_due
from storage.alerts import RANK, AlertChanges, Event, volume_lost, write_events

log = logging.getLogger(__name__)

EVENT_CLOCK = "ingest"  # the event clock's row: ingest's watermark, which the scheduler runs on

SET_CLOCK = """
INSERT INTO event_clock (name, at) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET at = greatest(event_clock.at, EXCLUDED.at), updated_at = now()
RETURNING at
"""

RELEASE = """
UPDATE outbox SET hold_until = NULL
WHERE status = 'pending' AND hold_until IS NOT NULL AND hold_until <= %s
"""

# New alerts, and open ones that became more severe than what people were last told.
TO_ANNOUNCE = f"""
SELECT id, notified_severity IS NULL FROM alerts
WHERE id = ANY(%s::bigint[]) AND status <> 'resolved'
  AND (notified_severity IS NULL OR
       {RANK.format("severity")} > {RANK.format("notified_severity")})
"""
MARK_ANNOUNCED = """
UPDATE alerts SET notified_severity = severity WHERE id = ANY(%s::bigint[])
"""

# An alert's acknowledge clock runs from when it became known (sla_from), or its detection.
ESCALATION_CANDIDATES = """
SELECT id, type, coalesce(sla_from, detected_at), escalation_level FROM alerts
WHERE status = 'open' AND escalation_level < %s AND coalesce(sla_from, detected_at) <= %s
"""
# Only alerts still open and below the rung: one acknowledged meanwhile is not escalated.
ESCALATE = """
UPDATE alerts SET escalation_level = %s, updated_at = now()
WHERE id = ANY(%s::bigint[]) AND status = 'open' AND escalation_level < %s
RETURNING id
"""

# The SLA clock of new and reopened alerts starts when they became known: at detection, or, for a
# meter that uploads a day at once, with the upload that carried the reading.
SLA_FROM = """
UPDATE alerts AS a
SET sla_from = greatest(
    coalesce(a.reopened_at, a.detected_at),
    (SELECT k.at FROM unnest(%s::text[], %s::timestamptz[]) AS k(meter_id, at)
     WHERE k.meter_id = a.meter_id))
WHERE a.id = ANY(%s::bigint[]) AND a.sla_from IS NULL
"""

# One ingest worker at a time runs the scheduler; the others skip it for that batch. Several
# workers updating the event clock row would otherwise serialise every batch commit on it.
TICK_LOCK = 0x6D777469  # "mwti"

# A reported repair is confirmed when the detector has seen the condition end, or, for a leak,
# when the meter shows an hour without flow after the leak was last seen.
CONFIRMABLE = """
SELECT a.id, coalesce(a.cleared_at, z.hour) AS confirmed_at,
       coalesce((SELECT e.detail->>'cause' FROM alert_events e
                 WHERE e.alert_id = a.id AND e.kind = 'repair_reported'
                 ORDER BY e.id DESC LIMIT 1), 'leak_repaired') AS cause
FROM alerts a
LEFT JOIN LATERAL (
    SELECT h.hour FROM usage_hourly h
    WHERE a.type = 'leak' AND h.meter_id = a.meter_id AND h.hour >= a.last_seen_at
      AND h.hour + interval '1 hour' <= %(now)s AND h.volume_m3 < %(zero)s
      AND h.covered_s >= 3000
    ORDER BY h.hour LIMIT 1
) z ON true
WHERE a.status <> 'resolved' AND a.repair_reported_at IS NOT NULL
  AND (a.cleared_at IS NOT NULL OR z.hour IS NOT NULL)
"""
CONFIRM = f"""
UPDATE alerts AS a
SET status = 'resolved', resolved_at = c.at, confirmed_at = c.at, resolution = c.cause,
    resolved_by = a.repair_reported_by, volume_lost_m3 = {volume_lost("c.at")},
    volume_saved_m3 = a.estimated_loss_m3_per_day * %s, updated_at = now()
FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[]) AS c(id, at, cause)
WHERE a.id = c.id AND a.status <> 'resolved'
RETURNING a.id, c.at
"""

# Conditions that ended long enough ago (per type) resolve their alert, unless a repair report is
# waiting for its own confirmation.
AUTO_RESOLVE = f"""
UPDATE alerts AS a
SET status = 'resolved', resolved_at = a.cleared_at, resolution = 'cleared',
    resolved_by = 'system', volume_lost_m3 = {volume_lost("cleared_at")}, updated_at = now()
FROM unnest(%s::text[], %s::float8[]) AS r(type, hours)
WHERE a.type = r.type AND a.status <> 'resolved' AND a.cleared_at IS NOT NULL
  AND a.repair_reported_at IS NULL
  AND a.cleared_at + make_interval(secs => r.hours * 3600) <= %s
RETURNING a.id, a.cleared_at
"""

ZERO_M3 = 0.0005  # below half a litre an hour is no flow (the register's resolution)


@dataclass(slots=True)
class TickResult:
    clock: datetime | None = None
    released: int = 0
    escalated: int = 0
    confirmed: int = 0
    resolved: int = 0
    queued: int = 0
    events: list[Event] = field(default_factory=list)


class Notifier:
    """The alert side of ingest: notifications for changes, and the event-time scheduler."""

    def __init__(self, config: NotifyConfig, secret: str) -> None:
        self.config = config
        self.secret = secret

    def after_alerts(
        self,
        conn: psycopg.Connection[Any],
        changes: AlertChanges,
        known_at: Mapping[str, datetime] | None = None,
    ) -> int:
        """Queue the notifications of one :func:`storage.alerts.apply_alerts` result.

        ``known_at`` is, for meters that upload many readings at once, when their latest upload
        was read (``Monitor.known_at``): their alerts' SLA clocks and quiet hours start there.
        """
        if changes.ids:
            known = known_at or {}
            conn.execute(SLA_FROM, (list(known), list(known.values()), changes.ids))
        reopened = set(changes.reopened_ids)
        rows = conn.execute(TO_ANNOUNCE, (changes.ids,)).fetchall() if changes.ids else []
        opened = [i for i, new in rows if new and i not in reopened]
        rose = [i for i, new in rows if not new and i not in reopened]
        groups = [
            (sorted(reopened), Trigger.REOPENED),
            (opened, Trigger.OPENED),
            (rose, Trigger.SEVERITY),
        ]
        queued = enqueue_many(conn, groups, self.config, self.secret)
        announced = [r[0] for r in rows] + sorted(reopened)
        if announced:
            conn.execute(MARK_ANNOUNCED, (announced,))
        return queued

    def tick(self, conn: psycopg.Connection[Any], now: datetime) -> TickResult:
        """Advance the event clock to ``now`` and do what has become due (caller's transaction)."""
        res = TickResult()
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (TICK_LOCK,)).fetchone()
        if not locked or not locked[0]:
            return res
        row = conn.execute(SET_CLOCK, (EVENT_CLOCK, now)).fetchone()
        now = res.clock = row[0] if row else now
        res.released = conn.execute(RELEASE, (now,)).rowcount
        self._escalate(conn, now, res)
        self._confirm(conn, now, res)
        self._auto_resolve(conn, now, res)
        write_events(conn, res.events)
        return res

    def _escalate(self, conn: psycopg.Connection[Any], now: datetime, res: TickResult) -> None:
        top = self.config.max_level
        if top <= 0:
            return
        shortest = min(ack_due(self.config, t) for t in ALERT_TYPES)
        rows = conn.execute(ESCALATION_CANDIDATES, (top, now - shortest)).fetchall()
        # Rung by rung, all alerts at once: a replay jump (or an upgrade) may move thousands.
        due_at: dict[int, dict[int, datetime]] = {}
        for alert_id, alert_type, start, level in rows:
            reached = min(top, int((now - start) / ack_due(self.config, alert_type)))
            for lvl in range(level + 1, reached + 1):
                at = start + escalation_due(self.config, alert_type, lvl)
                due_at.setdefault(lvl, {})[alert_id] = at
        moved: set[int] = set()
        for lvl in sorted(due_at):
            ats = due_at[lvl]
            done = [r[0] for r in conn.execute(ESCALATE, (lvl, sorted(ats), lvl))]
            for alert_id in done:
                res.events.append((alert_id, ats[alert_id], "escalated", {"level": lvl}))
            # Each rung hears its own level: the alert row says lvl while it is queued.
            res.queued += enqueue(
                conn, done, Trigger.ESCALATED, self.config, self.secret, level=lvl,
                at={i: ats[i] for i in done},
            )  # fmt: skip
            moved.update(done)
        res.escalated += len(moved)

    def _confirm(self, conn: psycopg.Connection[Any], now: datetime, res: TickResult) -> None:
        found = conn.execute(CONFIRMABLE, {"now": now, "zero": ZERO_M3}).fetchall()
        if not found:
            return
        done = conn.execute(
            CONFIRM,
            (
                self.config.saved_horizon_days,
                [r[0] for r in found],
                [r[1] for r in found],
                [r[2] for r in found],
            ),
        ).fetchall()
        for alert_id, at in done:
            res.events.append((alert_id, at, "confirmed", {}))
            res.events.append((alert_id, at, "resolved", {"cause": "repair confirmed by data"}))
        res.confirmed += len(done)
        res.queued += enqueue(
            conn, [d[0] for d in done], Trigger.RESOLVED, self.config, self.secret, at=now
        )

    def _auto_resolve(self, conn: psycopg.Connection[Any], now: datetime, res: TickResult) -> None:
        types = list(ALERT_TYPES)
        hours = [auto_resolve_after(self.config, t).total_seconds() / 3600.0 for t in types]
        done = conn.execute(AUTO_RESOLVE, (types, hours, now)).fetchall()
        for alert_id, at in done:
            res.events.append((alert_id, at, "resolved", {"cause": "cleared"}))
        res.resolved += len(done)
        res.queued += enqueue(
            conn, [d[0] for d in done], Trigger.RESOLVED, self.config, self.secret, at=now
        )
