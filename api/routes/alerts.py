"""Alerts: the inbox, one alert, and what people do with it (acknowledge, resolve, answer).

Nothing here is restricted by tenant yet: until the API has authentication every caller sees every
tenant's alerts, and ``tenant`` is a filter, not a boundary. For the same reason the changes take
the person making them as ``actor`` in the body; with authentication it will come from the login.
The rules of the lifecycle live in ``storage.lifecycle``; each change runs in one transaction with
its audit event and its notifications.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.deps import ConnDep, NotifyDep, SigningKeyDep
from api.routes.meters import INSTANT_HELP, LIST_LIMIT, LIST_LIMIT_MAX, OFFSET_MAX, Text
from api.schemas import (
    AcknowledgeIn,
    AlertPublic,
    AlertStatus,
    AlertType,
    DeliveryPublic,
    ErrorPublic,
    EventPublic,
    FeedbackIn,
    Instant,
    Page,
    ResolveIn,
)
from detectors.alert import Severity
from notify.config import NotifyConfig
from notify.routing import ack_due, resolve_due
from storage import alert_log, lifecycle, queries

ID_MAX = 2**63 - 1  # bigint: a larger id cannot exist, and the database would refuse to compare

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such alert"}
}
CHANGE: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"model": ErrorPublic, "description": "the alert's state does not allow this change"},
}
BAD_FILTERS: dict[int | str, dict[str, Any]] = {
    422: {"description": "invalid parameters, e.g. since not before until"}
}

TypeFilter = Annotated[AlertType | None, Query(alias="type")]
Since = Annotated[Instant | None, Query(description="detected at or after; " + INSTANT_HELP)]
Until = Annotated[Instant | None, Query(description="detected before; " + INSTANT_HELP)]
AlertId = Annotated[int, Path(ge=1, le=ID_MAX)]

router = APIRouter(prefix="/alerts", tags=["alerts"])


def public(row: queries.AlertRow, config: NotifyConfig) -> AlertPublic:
    """The alert with its deadlines, which follow the config and so are not stored. They run from
    when the SLA clock started (``AlertRow.sla_start``), as in the report."""
    alert = AlertPublic.model_validate(row)
    alert.ack_due_at = row.sla_start + ack_due(config, row.type)
    alert.resolve_due_at = row.sla_start + resolve_due(config, row.severity)
    return alert


@router.get("", response_model=Page[AlertPublic], responses=BAD_FILTERS)
async def list_alerts(
    conn: ConnDep,
    config: NotifyDep,
    tenant: Text = None,
    team: Text = None,
    meter_id: Text = None,
    alert_type: TypeFilter = None,
    status_: Annotated[AlertStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> Page[AlertPublic]:
    """Alerts detected in ``[since, until)`` that match every filter given, newest first."""
    if since is not None and until is not None and since >= until:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
    filters: dict[str, Any] = {
        "tenant": tenant,
        "team": team,
        "meter_id": meter_id,
        "type": alert_type,
        "status": status_,
        "severity": severity.value if severity is not None else None,
        "since": since,
        "until": until,
    }
    rows = await queries.list_alerts(conn, **filters, limit=limit, offset=offset)
    total = await queries.count_alerts(conn, **filters)
    items = [public(r, config) for r in rows]
    return Page[AlertPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{alert_id}", response_model=AlertPublic, responses=NOT_FOUND)
async def get_alert(conn: ConnDep, config: NotifyDep, alert_id: AlertId) -> AlertPublic:
    alert = await queries.get_alert(conn, alert_id)
    if alert is None:
        raise lifecycle.AlertNotFound(alert_id)
    return public(alert, config)


@router.post("/{alert_id}/acknowledge", response_model=AlertPublic, responses=CHANGE)
async def acknowledge(
    conn: ConnDep, config: NotifyDep, alert_id: AlertId, body: AcknowledgeIn
) -> AlertPublic:
    """Take the alert on: open becomes acknowledged. Again on an acknowledged alert changes
    nothing; a resolved alert answers 409."""
    async with conn.transaction():
        row = await lifecycle.acknowledge(conn, alert_id, actor=body.actor, note=body.note)
    return public(row, config)


@router.post("/{alert_id}/resolve", response_model=AlertPublic, responses=CHANGE)
async def resolve(
    conn: ConnDep, config: NotifyDep, key: SigningKeyDep, alert_id: AlertId, body: ResolveIn
) -> AlertPublic:
    """Close the alert with a cause; a resolved alert answers 409.

    ``leak_repaired`` and ``meter_fault`` while the condition lasts do not close it: the alert
    becomes acknowledged with ``repair_reported_at`` set and closes when the data confirms the
    repair. ``customer_use`` and ``false_alarm`` while it lasts also suppress the meter and type
    for the configured default number of days.
    """
    async with conn.transaction():
        row = await lifecycle.resolve(
            conn, alert_id, actor=body.actor, cause=body.cause, note=body.note,
            config=config, secret=key,
        )  # fmt: skip
    return public(row, config)


@router.post("/{alert_id}/feedback", response_model=AlertPublic, responses=NOT_FOUND)
async def feedback(
    conn: ConnDep, config: NotifyDep, key: SigningKeyDep, alert_id: AlertId, body: FeedbackIn
) -> AlertPublic:
    """The customer's answer to "is this use expected?", e.g. taken on the phone by staff.

    ``expected`` suppresses the meter and type from the alert's start until ``days`` from the
    event clock and resolves the alert as customer use, together with any other unresolved alert
    of the meter and type detected inside that suppression. ``not_expected`` keeps it open and
    notifies staff, unless an earlier ``not_expected`` about it did in the last 6 hours. An answer
    about a resolved alert is recorded and still suppresses or notifies, but neither closes nor
    reopens it. With ``actor`` left as ``customer`` nothing is acknowledged: only staff are.
    """
    async with conn.transaction():
        row = await lifecycle.feedback(
            conn, alert_id, answer=body.answer, days=body.days, note=body.note,
            actor=body.actor, config=config, secret=key,
        )  # fmt: skip
    return public(row, config)


@router.get("/{alert_id}/events", response_model=list[EventPublic], responses=NOT_FOUND)
async def alert_events(conn: ConnDep, alert_id: AlertId) -> list[EventPublic]:
    """The audit trail: every change of the alert, who made it and why, oldest first."""
    return [EventPublic.model_validate(e) for e in await alert_log.events(conn, alert_id)]


@router.get("/{alert_id}/deliveries", response_model=list[DeliveryPublic], responses=NOT_FOUND)
async def alert_deliveries(conn: ConnDep, alert_id: AlertId) -> list[DeliveryPublic]:
    """The alert's notifications per channel, oldest first, with every delivery attempt."""
    return [DeliveryPublic.model_validate(d) for d in await alert_log.deliveries(conn, alert_id)]
