"""The outbox: notifications are rendered and written in the transaction that changes the alert.

Whoever changes an alert (ingest storing detector output, the scheduler escalating, the API taking
a customer's answer) calls :func:`enqueue` inside its own transaction. Routing and content are pure
(notify.routing, notify.content); this module loads the facts they need, writes one outbox row per
target, and wakes the dispatchers with a NOTIFY that PostgreSQL delivers only at commit. A process
that dies before the commit leaves no row (and no alert change); one that dies after it leaves a
row the dispatcher sends after any restart.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from detectors.alert import iso
from notify import content
from notify.config import SEVERITY_RANK, NotifyConfig
from notify.links import alert_link, feedback_links
from notify.model import AlertFacts, Audience, Notification, Trigger, idem_key
from notify.routing import deadlines, route
from storage.alerts import jsonb_dumps

WAKE_CHANNEL = "meterwatch_outbox"  # NOTIFY channel that wakes dispatchers when rows commit
LINK_DAYS = 30  # how long a customer's feedback link works

FACTS = """
SELECT a.id, a.tenant, a.meter_id, a.dma, a.type, a.severity, a.status, a.started_at,
       a.detected_at, a.last_seen_at, a.resolved_at, a.resolution, a.evidence,
       a.estimated_loss_m3_per_day, a.estimated_cost_cny_per_day, a.team, a.escalation_level,
       coalesce(m.kind, 'residential'), coalesce(m.timezone, 'Asia/Shanghai'),
       coalesce(t.name, ''), a.volume_lost_m3, a.volume_saved_m3, a.sla_from, a.reopened
FROM alerts a
LEFT JOIN meters m ON m.meter_id = a.meter_id
LEFT JOIN tenants t ON t.tenant = a.tenant
WHERE a.id = ANY(%s::bigint[])
ORDER BY a.id
"""

INSERT = """
INSERT INTO outbox (alert_id, trigger, level, channel, audience, idem_key, payload, hold_until)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::integer[], %s::text[], %s::text[], %s::text[],
                     %s::jsonb[], %s::timestamptz[])
ON CONFLICT (idem_key) DO NOTHING
"""

# Team and message are set where they are first known; the message follows the latest facts.
ANNOTATE = """
UPDATE alerts AS a SET team = coalesce(a.team, x.team), message = x.message
FROM unnest(%s::bigint[], %s::text[], %s::jsonb[]) AS x(id, team, message)
WHERE a.id = x.id
"""


# The event time of a change: one for every alert, or one per alert id.
At = datetime | Mapping[int, datetime] | None
# Alerts that changed the same way: several such groups go to the outbox in one call.
Group = tuple[Sequence[int], Trigger]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    alert_id: int
    trigger: Trigger
    level: int
    channel: str
    audience: str
    key: str
    payload: dict[str, Any]
    hold_until: datetime | None


def facts_from_row(row: Sequence[Any]) -> tuple[AlertFacts, int]:
    """An alert's facts from a :data:`FACTS` row, and how often it was reopened."""
    f = AlertFacts(
        id=row[0], tenant=row[1], meter_id=row[2], dma=row[3], type=row[4], severity=row[5],
        status=row[6], started_at=row[7], detected_at=row[8], last_seen_at=row[9],
        resolved_at=row[10], resolution=row[11], evidence=row[12] or {},
        estimated_loss_m3_per_day=row[13], estimated_cost_cny_per_day=row[14], team=row[15],
        escalation_level=row[16], kind=row[17], timezone=row[18], tenant_name=row[19],
        volume_lost_m3=row[20], volume_saved_m3=row[21], sla_from=row[22],
    )  # fmt: skip
    return f, int(row[23])


def _seq(trigger: Trigger, f: AlertFacts, reopened: int) -> int:
    """Tells apart repeated triggers of one alert so each gets its own idempotency key: a second
    rise in severity, the notifications of a second opening after a reopen."""
    if trigger == Trigger.SEVERITY:
        return reopened * 10 + SEVERITY_RANK.get(f.severity, 0)
    return reopened


def plan(
    facts: Sequence[tuple[AlertFacts, int]],
    trigger: Trigger,
    config: NotifyConfig,
    secret: str,
    *,
    level: int | None = None,
    at: At = None,
    seq: int | None = None,
    link_expires_at: int = 0,
) -> tuple[list[OutboxRow], list[tuple[int, str | None, dict[str, str]]]]:
    """Outbox rows for one trigger on these alerts, and each alert's (id, team, message).

    Pure: the same facts and config give the same rows, so a retried transaction writes the same
    idempotency keys. ``at`` is the event time of the change (one for all, or per alert id);
    never before the alert became known (``sla_from``: a day's upload read at once), since quiet
    hours are about when people hear of it.
    """
    rows: list[OutboxRow] = []
    annotations: list[tuple[int, str | None, dict[str, str]]] = []
    for f, reopened in facts:
        team = f.team or config.team_for(f.tenant, f.dma)
        if team != f.team:
            f = replace(f, team=team)
        message = content.message(f, config.hotline)
        annotations.append((f.id, team, message))
        lvl = f.escalation_level if level is None else level
        if secret:
            links = feedback_links(config.public_url, secret, f.id, link_expires_at)
        else:
            links = {"alert": alert_link(config.public_url, f.id)}
        alert_json = {**f.to_json(), "message": message}
        n_seq = _seq(trigger, f, reopened) if seq is None else seq
        ack_by, resolve_by = deadlines(config, f)
        # The change happened when it was detected (a new alert) or last seen (a rise in
        # severity, a reopening): quiet hours are judged then.
        when = (at.get(f.id) if isinstance(at, Mapping) else at) or (
            f.detected_at if trigger == Trigger.OPENED else f.last_seen_at
        )
        if f.sla_from is not None and f.sla_from > when:
            when = f.sla_from
        for target in route(config, f, trigger, lvl, when):
            shown = links if target.audience == Audience.CUSTOMER else {"alert": links["alert"]}
            title, text = content.render(
                f, target.audience, trigger, target.lang, ack_by, resolve_by,
                message=message, links=shown,
            )  # fmt: skip
            key = idem_key(f.id, trigger, lvl, target.channel, n_seq)
            n = Notification(
                key=key, channel=target.channel, audience=target.audience, trigger=trigger,
                lang=target.lang, title=title, text=text, alert=alert_json, links=shown,
                created_at=iso(when),
            )  # fmt: skip
            rows.append(
                OutboxRow(
                    f.id,
                    trigger,
                    lvl,
                    target.channel,
                    str(target.audience),
                    key,
                    n.to_json(),
                    target.hold_until,
                )
            )
    return rows, annotations


def _insert_params(rows: Sequence[OutboxRow]) -> tuple[list[Any], ...]:
    return (
        [r.alert_id for r in rows],
        [str(r.trigger) for r in rows],
        [r.level for r in rows],
        [r.channel for r in rows],
        [r.audience for r in rows],
        [r.key for r in rows],
        [Jsonb(r.payload, jsonb_dumps) for r in rows],
        [r.hold_until for r in rows],
    )


def _annotate_params(notes: Sequence[tuple[int, str | None, Mapping[str, str]]]) -> tuple[Any, ...]:
    return (
        [n[0] for n in notes],
        [n[1] for n in notes],
        [Jsonb(dict(n[2]), jsonb_dumps) for n in notes],
    )


def _writes(
    facts: Sequence[tuple[AlertFacts, int]],
    groups: Sequence[Group],
    config: NotifyConfig,
    secret: str,
    *,
    level: int | None,
    at: At,
    seq: int | None,
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that store the notifications of these groups (each of them a subset of
    ``facts``), for either kind of connection: one ANNOTATE, one NOTIFY, one INSERT."""
    expires = int(time.time()) + LINK_DAYS * 86400
    rows: list[OutboxRow] = []
    notes: dict[int, tuple[int, str | None, dict[str, str]]] = {}
    for ids, trigger in groups:
        wanted = set(ids)
        group_rows, group_notes = plan(
            [x for x in facts if x[0].id in wanted], trigger, config, secret,
            level=level, at=at, seq=seq, link_expires_at=expires,
        )  # fmt: skip
        rows += group_rows
        # An alert's team and message follow from its facts alone, whatever the trigger.
        notes.update((note[0], note) for note in group_notes)
    writes: list[tuple[str, tuple[Any, ...]]] = []
    if notes:
        writes.append((ANNOTATE, _annotate_params(list(notes.values()))))
    if rows:
        writes.append(("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,)))
        writes.append((INSERT, _insert_params(rows)))
    return writes


def enqueue_many(
    conn: psycopg.Connection[Any],
    groups: Sequence[Group],
    config: NotifyConfig,
    secret: str,
    *,
    level: int | None = None,
    at: At = None,
    seq: int | None = None,
) -> int:
    """Write the notifications of several (alert ids, trigger) groups at once (caller's
    transaction): the alerts' facts are loaded once, the rows go out in one statement. The
    number of new outbox rows."""
    alert_ids = sorted({i for ids, _ in groups for i in ids})
    if not alert_ids:
        return 0
    facts = [facts_from_row(r) for r in conn.execute(FACTS, (alert_ids,))]
    added = 0
    for query, params in _writes(facts, groups, config, secret, level=level, at=at, seq=seq):
        n = conn.execute(query, params).rowcount
        added = n if query is INSERT else added
    return added


def enqueue(
    conn: psycopg.Connection[Any],
    alert_ids: Sequence[int],
    trigger: Trigger,
    config: NotifyConfig,
    secret: str,
    *,
    level: int | None = None,
    at: At = None,
    seq: int | None = None,
) -> int:
    """Write the notifications of ``trigger`` on these alerts (caller's transaction); the number
    of new outbox rows."""
    return enqueue_many(conn, [(alert_ids, trigger)], config, secret, level=level, at=at, seq=seq)


async def enqueue_async(
    conn: psycopg.AsyncConnection[Any],
    alert_ids: Sequence[int],
    trigger: Trigger,
    config: NotifyConfig,
    secret: str,
    *,
    level: int | None = None,
    at: At = None,
    seq: int | None = None,
) -> int:
    """:func:`enqueue` for the API's async connections."""
    if not alert_ids:
        return 0
    cur = await conn.execute(FACTS, (list(alert_ids),))
    facts = [facts_from_row(r) for r in await cur.fetchall()]
    added = 0
    groups = [(alert_ids, trigger)]
    for query, params in _writes(facts, groups, config, secret, level=level, at=at, seq=seq):
        n = (await conn.execute(query, params)).rowcount
        added = n if query is INSERT else added
    return added
