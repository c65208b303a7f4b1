"""What people do to an alert: acknowledge it, resolve it, answer for it as the customer.

Each function runs in the caller's transaction (the commit is the caller's), locks the alert row
first so two clicks on the same alert serialise, and writes an ``alert_events`` row for every
change, so the audit trail and the alert never disagree. Notifications are written to the outbox
in the same transaction (``notify.outbox``): a rolled-back change notifies nobody.

Rules (docs/alerts.md tells them to people):

- open -> acknowledged by a person; acknowledging again changes nothing; a resolved alert cannot
  be acknowledged.
- A reported repair (``leak_repaired``, ``meter_fault``) of a condition the data still shows does
  not close the alert: staff say the pipe is fixed, the meter says whether it is. The alert is
  marked repair-reported and acknowledged; the scheduler closes it when the data confirms it.
- Any other resolve closes it. ``customer_use`` and ``false_alarm`` of a condition still present
  also suppress that meter and type for a while, or the detector's next repeat would open a new
  alert at once.
- A customer's "expected" is a resolve with cause ``customer_use`` plus a suppression from the
  alert's start; every other unresolved alert of the meter and type detected inside that window
  is resolved the same way (an answer on an old reminder's link covers the episode open now).
  "not expected" leaves the alert open and tells staff, once per ``FEEDBACK_QUIET_H``.
- Only staff acknowledge. A resolve by a person acknowledges an unacknowledged alert too (with
  its own ``acknowledged`` event); the customer's answer does not: it is not a staff reaction.
- Closing an alert cancels its customer reminders still held for quiet hours.

Times of changes are the database's ``now()``, the wall clock of the transaction. Event times
(suppression windows, the moment quiet hours are judged at) come from the event clock, the
detectors' watermark, because that is the time the detector store and the scheduler live in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from notify.config import NotifyConfig
from notify.model import Trigger
from notify.outbox import enqueue_async
from notify.scheduler import EVENT_CLOCK
from storage.alerts import volume_lost
from storage.queries import ALERT_COLUMNS, AlertRow

Cause = Literal["leak_repaired", "customer_use", "meter_fault", "false_alarm", "other"]
Answer = Literal["expected", "not_expected"]
CAUSES: tuple[str, ...] = get_args(Cause)
ANSWERS: tuple[str, ...] = get_args(Answer)
# Causes that claim the condition is gone; while the data still shows it, they wait for proof.
REPAIRS = frozenset({"leak_repaired", "meter_fault"})
# Causes that say the water use is real but fine: the detector would keep raising it.
SUPPRESSING = frozenset({"customer_use", "false_alarm"})
CUSTOMER = "customer"
# A customer who answers "not expected" again within this many hours (a replayed link, a second
# tap) is recorded but staff are not told again: they already were, and are on it.
FEEDBACK_QUIET_H = 6.0
# The shortest suppression: a window of (almost) nothing would drop nothing and break the
# table's ``until > since``.
SUPPRESS_MIN_H = 1.0


class LifecycleError(Exception):
    """Base of what a lifecycle call refuses: ``AlertNotFound`` (404), ``IllegalTransition`` (409).

    Bad arguments (an unknown cause) are ``ValueError``s: they are the caller's bug, not state.
    """


class AlertNotFound(LifecycleError, LookupError):
    def __init__(self, alert_id: int) -> None:
        super().__init__(f"alert {alert_id} not found")
        self.alert_id = alert_id


class IllegalTransition(LifecycleError):
    pass


SELECT_FOR_UPDATE = sql.SQL("SELECT {cols} FROM alerts WHERE id = %s FOR UPDATE").format(
    cols=ALERT_COLUMNS
)
EVENT = "INSERT INTO alert_events (alert_id, kind, actor, detail) VALUES (%s, %s, %s, %s)"

ACKNOWLEDGE = sql.SQL(
    """UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(),
           acknowledged_by = %(actor)s, updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS)

# %(ack)s: the statement acknowledges the alert too (decided on the locked row, see _acks).
REPORT_REPAIR = sql.SQL(
    """UPDATE alerts SET status = 'acknowledged', repair_reported_at = now(),
           repair_reported_by = %(actor)s,
           acknowledged_at = CASE WHEN %(ack)s THEN now() ELSE acknowledged_at END,
           acknowledged_by = CASE WHEN %(ack)s THEN %(actor)s ELSE acknowledged_by END,
           updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS)

# Resolving an alert nobody acknowledged also acknowledges it when a person resolves it: they
# reacted, and the SLA report measures that reaction. The loss runs from the start to the end of
# the condition (or its latest sighting while it lasts), in event time; without a loss rate it
# stays NULL, as it is on every unresolved row (only resolving sets it, reopening clears it).
CLOSE = sql.SQL(
    """UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = %(actor)s,
           resolution = %(cause)s, resolution_note = %(note)s,
           acknowledged_at = CASE WHEN %(ack)s THEN now() ELSE acknowledged_at END,
           acknowledged_by = CASE WHEN %(ack)s THEN %(actor)s ELSE acknowledged_by END,
           volume_lost_m3 = {lost}, updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS, lost=sql.SQL(volume_lost("coalesce(cleared_at, last_seen_at)")))

# Event time now: the scheduler's clock (ingest's watermark); the wall clock before any data.
CLOCK = "SELECT coalesce((SELECT at FROM event_clock WHERE name = %s), now())"

# The detector store compares suppressions with event times, so the window is on the event
# clock: it starts no later than the clock (a replay's event times can be ahead of it) and lasts
# ``days`` from the clock, at least SUPPRESS_MIN_H.
SUPPRESS = """
WITH w AS (SELECT least(%(since)s::timestamptz, %(clock)s::timestamptz) AS since,
                  %(clock)s::timestamptz AS clock)
INSERT INTO suppressions (meter_id, type, since, until, reason, actor, alert_id)
SELECT %(meter_id)s, %(type)s, w.since,
       greatest(w.since + make_interval(secs => %(min_s)s),
                greatest(w.since, w.clock) + make_interval(secs => %(days)s * 86400)),
       %(reason)s, %(actor)s, %(id)s
FROM w
RETURNING since, until
"""

# Unresolved alerts of a meter and type detected inside a suppression window, locked in id order
# (the detector store's order) so they can be closed.
COVERED = sql.SQL(
    """SELECT {cols} FROM alerts
       WHERE meter_id = %s AND type = %s AND status <> 'resolved' AND id <> %s
         AND detected_at >= %s AND detected_at < %s
       ORDER BY id FOR UPDATE"""
).format(cols=ALERT_COLUMNS)

# A reminder held back through the night about an alert closed in the evening would ask the
# customer about something nobody is looking at any more.
CANCEL_HELD = """
UPDATE outbox SET status = 'cancelled', last_error = 'alert resolved before quiet hours ended'
WHERE alert_id = %s AND status = 'pending' AND hold_until IS NOT NULL AND audience = 'customer'
"""

# Earlier "not expected" answers about the alert: how many in all (each notified answer gets its
# own idempotency key), and whether one falls in the quiet period.
NOT_EXPECTED = """
SELECT count(*), count(*) FILTER (WHERE at > now() - make_interval(secs => %s))
FROM feedback WHERE alert_id = %s AND answer = 'not_expected'
"""

FEEDBACK = """
INSERT INTO feedback (alert_id, meter_id, type, answer, suppress_days, note, actor,
                      alert_started_at, evidence)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


async def _lock(conn: AsyncConnection[Any], alert_id: int) -> AlertRow:
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(SELECT_FOR_UPDATE, (alert_id,))
        row = await cur.fetchone()
    if row is None:
        raise AlertNotFound(alert_id)
    return row


async def _update(conn: AsyncConnection[Any], query: sql.Composed, **params: Any) -> AlertRow:
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(query, params)
        row = await cur.fetchone()
    assert row is not None, "the row is locked: it cannot have gone"
    return row


async def _event(
    conn: AsyncConnection[Any], alert_id: int, kind: str, actor: str, **detail: Any
) -> None:
    await conn.execute(EVENT, (alert_id, kind, actor, Jsonb(detail)))


async def _clock(conn: AsyncConnection[Any]) -> datetime:
    cur = await conn.execute(CLOCK, (EVENT_CLOCK,))
    row = await cur.fetchone()
    assert row is not None
    at: datetime = row[0]
    return at


def _acks(alert: AlertRow, actor: str) -> bool:
    """Whether a change by ``actor`` also acknowledges the alert: a person's first reaction does,
    the customer's answer never (acknowledging is what staff do; the SLA report measures it)."""
    return alert.acknowledged_at is None and actor != CUSTOMER


async def _suppress(
    conn: AsyncConnection[Any],
    alert: AlertRow,
    *,
    since: datetime,
    days: float,
    reason: str,
    actor: str,
    clock: datetime,
) -> tuple[datetime, datetime]:
    """Suppress the alert's meter and type; the window as stored."""
    cur = await conn.execute(
        SUPPRESS,
        {"meter_id": alert.meter_id, "type": alert.type, "since": since, "days": days,
         "clock": clock, "min_s": SUPPRESS_MIN_H * 3600, "reason": reason, "actor": actor,
         "id": alert.id},
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    await _event(
        conn, alert.id, "suppressed", actor,
        since=row[0].isoformat(), until=row[1].isoformat(), days=days, reason=reason,
    )  # fmt: skip
    return row[0], row[1]


async def _close(
    conn: AsyncConnection[Any],
    alert: AlertRow,
    *,
    actor: str,
    cause: str,
    note: str,
    clock: datetime,
    config: NotifyConfig,
    secret: str,
) -> AlertRow:
    ack = _acks(alert, actor)
    row = await _update(
        conn, CLOSE, id=alert.id, actor=actor, cause=cause, note=note or None, ack=ack
    )
    if ack:
        await _event(conn, alert.id, "acknowledged", actor, note="", implied_by="resolved")
    await _event(
        conn, alert.id, "resolved", actor, cause=cause, note=note, volume_lost_m3=row.volume_lost_m3
    )
    # Before the RESOLVED notification is written: that one may be held itself, and must stay.
    await conn.execute(CANCEL_HELD, (alert.id,))
    await enqueue_async(conn, [alert.id], Trigger.RESOLVED, config, secret, at=clock)
    return row


async def acknowledge(
    conn: AsyncConnection[Any], alert_id: int, *, actor: str, note: str = ""
) -> AlertRow:
    """Someone has seen the alert and takes it on; again on an acknowledged alert is a no-op."""
    alert = await _lock(conn, alert_id)
    if alert.status == "resolved":
        raise IllegalTransition(f"alert {alert_id} is resolved; it cannot be acknowledged")
    if alert.status == "acknowledged":
        return alert
    row = await _update(conn, ACKNOWLEDGE, id=alert_id, actor=actor)
    await _event(conn, alert_id, "acknowledged", actor, note=note)
    return row


async def resolve(
    conn: AsyncConnection[Any],
    alert_id: int,
    *,
    actor: str,
    cause: str,
    note: str = "",
    config: NotifyConfig,
    secret: str,
) -> AlertRow:
    """Close the alert with a cause, or, for a repair the data does not show yet, mark it.

    A repair reported again while the first report waits for the data changes nothing: the
    first report (and its reporter) stands, as the first acknowledgement does.
    """
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; expected one of {', '.join(CAUSES)}")
    alert = await _lock(conn, alert_id)
    if alert.status == "resolved":
        raise IllegalTransition(f"alert {alert_id} is already resolved")
    active = alert.cleared_at is None
    if cause in REPAIRS and active:
        if alert.repair_reported_at is not None:
            return alert
        ack = _acks(alert, actor)
        row = await _update(conn, REPORT_REPAIR, id=alert_id, actor=actor, ack=ack)
        if ack:
            await _event(conn, alert_id, "acknowledged", actor, note="", implied_by=cause)
        await _event(conn, alert_id, "repair_reported", actor, cause=cause, note=note)
        return row
    clock = await _clock(conn)
    if cause in SUPPRESSING and active:
        # From the latest sighting, not from now: repeats with earlier event times may still be
        # on their way (meters that upload a day of readings at once) and must not reopen it.
        days = float(config.suppress_days_default)
        await _suppress(
            conn, alert, since=alert.last_seen_at, days=days, reason=cause, actor=actor,
            clock=clock,
        )  # fmt: skip
    return await _close(
        conn, alert, actor=actor, cause=cause, note=note, clock=clock, config=config, secret=secret
    )


async def feedback(
    conn: AsyncConnection[Any],
    alert_id: int,
    *,
    answer: str,
    days: float | None = None,
    note: str = "",
    actor: str = CUSTOMER,
    config: NotifyConfig,
    secret: str,
) -> AlertRow:
    """Record a customer's answer to "is this use expected?" and act on it.

    "expected" suppresses the meter and type from the alert's start until ``days`` from the
    event clock (capped at the configured maximum) and resolves the alert as customer use, and
    with it every other unresolved alert of the meter and type detected inside the suppression:
    an answer on an old reminder's link is about the use going on now too, and the suppression
    would starve that alert of repeats. "not_expected" keeps the alert as it is and notifies
    staff, unless an earlier "not expected" about it already did within ``FEEDBACK_QUIET_H``.
    An answer about a resolved alert is recorded and acted on the same way except that it is not
    closed or reopened: a late "expected" still suppresses, a late "not expected" still reaches
    staff, who decide.
    """
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer {answer!r}; expected one of {', '.join(ANSWERS)}")
    if days is not None and not days > 0:
        raise ValueError("days must be positive")
    alert = await _lock(conn, alert_id)
    clock = await _clock(conn)
    if answer == "not_expected":
        cur = await conn.execute(NOT_EXPECTED, (FEEDBACK_QUIET_H * 3600, alert_id))
        counts = await cur.fetchone()
        earlier, recent = (int(counts[0]), int(counts[1])) if counts else (0, 0)
        await _record(conn, alert, answer=answer, days=None, note=note, actor=actor)
        await _event(
            conn, alert_id, "feedback", actor, answer=answer, days=None, note=note,
            staff_notified=not recent,
        )  # fmt: skip
        if not recent:
            # A customer answering again days later is news to staff again; the count gives
            # each notified answer its own idempotency key (the outbox drops a repeated key).
            await enqueue_async(
                conn, [alert_id], Trigger.FEEDBACK, config, secret, seq=earlier + 1, at=clock
            )
        return alert
    days = min(float(days or config.suppress_days_default), float(config.suppress_days_max))
    await _record(conn, alert, answer=answer, days=days, note=note, actor=actor)
    await _event(conn, alert_id, "feedback", actor, answer=answer, days=days, note=note)
    reason = f"{actor}: expected" + (f" ({note})" if note else "")
    since, until = await _suppress(
        conn, alert, since=alert.started_at, days=days, reason=reason, actor=actor, clock=clock
    )
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(COVERED, (alert.meter_id, alert.type, alert_id, since, until))
        covered = await cur.fetchall()
    for other in covered:
        await _event(
            conn, other.id, "feedback", actor, answer=answer, days=days, note=note,
            answered_alert=alert_id,
        )  # fmt: skip
        await _close(
            conn, other, actor=actor, cause="customer_use", note=note, clock=clock,
            config=config, secret=secret,
        )  # fmt: skip
    if alert.status == "resolved":
        return alert
    return await _close(
        conn, alert, actor=actor, cause="customer_use", note=note, clock=clock, config=config,
        secret=secret,
    )  # fmt: skip


async def _record(
    conn: AsyncConnection[Any],
    alert: AlertRow,
    *,
    answer: str,
    days: float | None,
    note: str,
    actor: str,
) -> None:
    """The answer as a labelled case: the alert as it was when answered."""
    await conn.execute(
        FEEDBACK,
        (alert.id, alert.meter_id, alert.type, answer, days, note, actor, alert.started_at,
         Jsonb(alert.evidence or {})),
    )  # fmt: skip
