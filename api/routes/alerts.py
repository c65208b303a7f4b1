"""Alerts: the inbox, filtered and newest first in pages, and one alert by id.

Nothing here is restricted by tenant yet: until the API has authentication every caller sees every
tenant's alerts, and ``tenant`` is a filter, not a boundary.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.deps import ConnDep
from api.routes.meters import INSTANT_HELP, LIST_LIMIT, LIST_LIMIT_MAX, OFFSET_MAX, Text
from api.schemas import AlertPublic, AlertStatus, AlertType, ErrorPublic, Instant, Page
from detectors.alert import Severity
from storage import queries

ID_MAX = 2**63 - 1  # bigint: a larger id cannot exist, and the database would refuse to compare

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such alert"}
}
BAD_FILTERS: dict[int | str, dict[str, Any]] = {
    422: {"description": "invalid parameters, e.g. since not before until"}
}

TypeFilter = Annotated[AlertType | None, Query(alias="type")]
Since = Annotated[Instant | None, Query(description="detected at or after; " + INSTANT_HELP)]
Until = Annotated[Instant | None, Query(description="detected before; " + INSTANT_HELP)]

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=Page[AlertPublic], responses=BAD_FILTERS)
async def list_alerts(
    conn: ConnDep,
    tenant: Text = None,
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
        "meter_id": meter_id,
        "type": alert_type,
        "status": status_,
        "severity": severity.value if severity is not None else None,
        "since": since,
        "until": until,
    }
    rows = await queries.list_alerts(conn, **filters, limit=limit, offset=offset)
    total = await queries.count_alerts(conn, **filters)
    items = [AlertPublic.model_validate(r) for r in rows]
    return Page[AlertPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{alert_id}", response_model=AlertPublic, responses=NOT_FOUND)
async def get_alert(conn: ConnDep, alert_id: Annotated[int, Path(ge=1, le=ID_MAX)]) -> AlertPublic:
    alert = await queries.get_alert(conn, alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"alert {alert_id} not found")
    return AlertPublic.model_validate(alert)
