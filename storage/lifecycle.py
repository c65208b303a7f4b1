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
  alert's start; "not expected" leaves the alert open and tells staff.

Times of changes are the database's ``now()``, the wall clock of the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from notify.config import NotifyConfig
from notify.model import Trigger
from notify.outbox import enqueue_async
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


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    alert_id: int
    at: datetime
    event_time: datetime | None
    kind: str
    actor: str
    detail: Any


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: int
    at: datetime
    duration_ms: float
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One outbox row of the alert (a notification for one channel) and its attempts so far."""

    id: int
    trigger: str
    level: int
    channel: str
    audience: str
    idem_key: str
    title: str | None
    status: str
    attempts: int
    hold_until: datetime | None
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    tries: list[AttemptRow]


SELECT_FOR_UPDATE = sql.SQL("SELECT {cols} FROM alerts WHERE id = %s FOR UPDATE").format(
    cols=ALERT_COLUMNS
)
EVENT = "INSERT INTO alert_events (alert_id, kind, actor, detail) VALUES (%s, %s, %s, %s)"

ACKNOWLEDGE = sql.SQL(
    """UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(),
           acknowledged_by = %(actor)s, updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS)

REPORT_REPAIR = sql.SQL(
    """UPDATE alerts SET status = 'acknowledged', repair_reported_at = now(),
           repair_reported_by = %(actor)s,
           acknowledged_at = coalesce(acknowledged_at, now()),
           acknowledged_by = coalesce(acknowledged_by, %(actor)s), updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS)

# Resolving an alert nobody acknowledged also acknowledges it: a person reacted, and the SLA
# report measures that reaction. The loss runs from the start to the end of the condition (or
# its latest sighting while it lasts), in event time.
CLOSE = sql.SQL(
    """UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = %(actor)s,
           resolution = %(cause)s, resolution_note = %(note)s,
           acknowledged_at = coalesce(acknowledged_at, now()),
           acknowledged_by = coalesce(acknowledged_by, %(actor)s),
           volume_lost_m3 = CASE WHEN estimated_loss_m3_per_day IS NULL THEN volume_lost_m3
               ELSE estimated_loss_m3_per_day * greatest(0, extract(epoch FROM
                   coalesce(cleared_at, last_seen_at) - started_at)::float8 / 86400) END,
           updated_at = now()
       WHERE id = %(id)s RETURNING {cols}"""
).format(cols=ALERT_COLUMNS)

# Never starting in the future: a replay's event times can be ahead of the wall clock.
SUPPRESS = """
INSERT INTO suppressions (meter_id, type, since, until, reason, actor, alert_id)
VALUES (%(meter_id)s, %(type)s, least(%(since)s::timestamptz, now()),
        now() + make_interval(secs => %(days)s * 86400),
        %(reason)s, %(actor)s, %(id)s)
RETURNING since, until
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


async def _suppress(
    conn: AsyncConnection[Any],
    alert: AlertRow,
    *,
    since: datetime,
    days: float,
    reason: str,
    actor: str,
) -> None:
    cur = await conn.execute(
        SUPPRESS,
        {"meter_id": alert.meter_id, "type": alert.type, "since": since, "days": days,
         "reason": reason, "actor": actor, "id": alert.id},
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    await _event(
        conn, alert.id, "suppressed", actor,
        since=row[0].isoformat(), until=row[1].isoformat(), days=days, reason=reason,
    )  # fmt: skip


async def _close(
    conn: AsyncConnection[Any],
    alert: AlertRow,
    *,
    actor: str,
    cause: str,
    note: str,
    config: NotifyConfig,
    secret: str,
) -> AlertRow:
    row = await _update(conn, CLOSE, id=alert.id, actor=actor, cause=cause, note=note or None)
    await _event(
        conn, alert.id, "resolved", actor, cause=cause, note=note, volume_lost_m3=row.volume_lost_m3
    )
    await enqueue_async(conn, [alert.id], Trigger.RESOLVED, config, secret)
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
    """Close the alert with a cause, or, for a repair the data does not show yet, mark it."""
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; expected one of {', '.join(CAUSES)}")
    alert = await _lock(conn, alert_id)
    if alert.status == "resolved":
        raise IllegalTransition(f"alert {alert_id} is already resolved")
    active = alert.cleared_at is None
    if cause in REPAIRS and active:
        row = await _update(conn, REPORT_REPAIR, id=alert_id, actor=actor)
        await _event(conn, alert_id, "repair_reported", actor, cause=cause, note=note)
        return row
    if cause in SUPPRESSING and active:
        # From the latest sighting, not from now: repeats with earlier event times may still be
        # on their way (meters that upload a day of readings at once) and must not reopen it.
        days = float(config.suppress_days_default)
        await _suppress(conn, alert, since=alert.last_seen_at, days=days, reason=cause, actor=actor)
    return await _close(
        conn, alert, actor=actor, cause=cause, note=note, config=config, secret=secret
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

    "expected" suppresses the meter and type from the alert's start until ``days`` from now
    (capped at the configured maximum) and resolves the alert as customer use. "not_expected"
    keeps the alert as it is and notifies staff. An answer about a resolved alert is recorded
    and acted on the same way except that nothing is closed or reopened: a late "expected" still
    suppresses, a late "not expected" still reaches staff, who decide.
    """
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer {answer!r}; expected one of {', '.join(ANSWERS)}")
    if days is not None and not days > 0:
        raise ValueError("days must be positive")
    alert = await _lock(conn, alert_id)
    expected = answer == "expected"
    if expected:
        days = min(float(days or config.suppress_days_default), float(config.suppress_days_max))
    else:
        days = None
    await conn.execute(
        FEEDBACK,
        (alert_id, alert.meter_id, alert.type, answer, days, note, actor, alert.started_at,
         Jsonb(alert.evidence or {})),
    )  # fmt: skip
    await _event(conn, alert_id, "feedback", actor, answer=answer, days=days, note=note)
    if not expected:
        # Each answer is news to staff, a customer answering again days later too; the count
        # gives each its own idempotency key (the outbox drops a repeated key).
        cur = await conn.execute(
            "SELECT count(*) FROM feedback WHERE alert_id = %s AND answer = 'not_expected'",
            (alert_id,),
        )
        row = await cur.fetchone()
        seq = int(row[0]) if row else 1
        await enqueue_async(conn, [alert_id], Trigger.FEEDBACK, config, secret, seq=seq)
        return alert
    assert days is not None
    reason = f"{actor}: expected" + (f" ({note})" if note else "")
    await _suppress(conn, alert, since=alert.started_at, days=days, reason=reason, actor=actor)
    if alert.status == "resolved":
        return alert
    return await _close(
        conn, alert, actor=actor, cause="customer_use", note=note, config=config, secret=secret
    )


async def _exists(conn: AsyncConnection[Any], alert_id: int) -> None:
    cur = await conn.execute("SELECT 1 FROM alerts WHERE id = %s", (alert_id,))
    if await cur.fetchone() is None:
        raise AlertNotFound(alert_id)


async def events(conn: AsyncConnection[Any], alert_id: int) -> list[EventRow]:
    """The alert's audit trail, oldest first."""
    await _exists(conn, alert_id)
    async with conn.cursor(row_factory=class_row(EventRow)) as cur:
        await cur.execute(
            """SELECT id, alert_id, at, event_time, kind, actor, detail FROM alert_events
               WHERE alert_id = %s ORDER BY id""",
            (alert_id,),
        )
        return await cur.fetchall()


async def deliveries(conn: AsyncConnection[Any], alert_id: int) -> list[DeliveryRow]:
    """The alert's notifications, oldest first, each with its delivery attempts.

    The rendered payload stays out: it carries the customer's feedback links, which answer for the
    customer, and the API has no authentication yet.
    """
    await _exists(conn, alert_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT id, trigger, level, channel, audience, idem_key,
                      payload->>'title' AS title, status, attempts, hold_until, next_attempt_at,
                      last_error, created_at, sent_at
               FROM outbox WHERE alert_id = %s ORDER BY id""",
            (alert_id,),
        )
        outbox = await cur.fetchall()
    tries: dict[int, list[AttemptRow]] = {row["id"]: [] for row in outbox}
    if tries:
        cur2 = await conn.execute(
            """SELECT outbox_id, attempt, at, duration_ms, ok, detail FROM deliveries
               WHERE outbox_id = ANY(%s) ORDER BY id""",
            (list(tries),),
        )
        for outbox_id, attempt, at, duration_ms, ok, detail in await cur2.fetchall():
            tries[outbox_id].append(AttemptRow(attempt, at, duration_ms, ok, detail))
    return [DeliveryRow(**row, tries=tries[row["id"]]) for row in outbox]
