"""What happened to an alert, for the people who look at it: its audit trail and its notifications,
each with every delivery attempt. Reads only; the changes are storage.lifecycle's and the
notifier's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row

from storage.lifecycle import AlertNotFound


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
