"""``GET /sla``: how fast alerts were acknowledged and resolved, against the configured targets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import ConnDep, NotifyDep, SettingsDep
from api.routes.meters import INSTANT_HELP, Text
from api.schemas import Instant, SlaReportPublic, SlaRowPublic, SlaTargets
from meterwatch.domain import ALERT_TYPES
from notify.config import SEVERITIES
from notify.routing import ack_due, meter_zone, resolve_due
from storage.sla import sla_report

DEFAULT_MONTHS = 3
SPAN_MAX = timedelta(days=3660)

Since = Annotated[
    Instant | None,
    Query(
        description="SLA clock started (sla_from, else detected_at) at or after; default: the "
        "start of the month two months before until's, so three calendar months; " + INSTANT_HELP
    ),
]
Until = Annotated[
    Instant | None,
    Query(description="SLA clock started before; default now; " + INSTANT_HELP),
]

router = APIRouter(tags=["sla"])


def _month_start(t: datetime, zone: ZoneInfo, back: int) -> datetime:
    """Local midnight on the first of the month ``back`` months before ``t``'s month."""
    local = t.astimezone(zone)
    index = local.year * 12 + local.month - 1 - back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=zone).astimezone(UTC)


@router.get(
    "/sla",
    response_model=SlaReportPublic,
    responses={422: {"description": "invalid parameters, e.g. since not before until"}},
)
async def sla(
    conn: ConnDep,
    config: NotifyDep,
    settings: SettingsDep,
    since: Since = None,
    until: Until = None,
    team: Text = None,
    tenant: Text = None,
    by: Literal["type"] | None = None,
) -> SlaReportPublic:
    """Per team and month (of when the SLA clock started, ``sla_from`` or else detection, in the
    deployment's zone), and per type with ``by=type``: alert counts, median and 90th percentile
    time to acknowledge (minutes) and to resolve (hours) from that start, and the share within
    target. An alert missed its target when the step came late, or had not come by the deadline
    while the alert was still unresolved; alerts still inside their window count toward neither
    side. Only staff acknowledge: a customer's answer does not count as an acknowledgement."""
    zone = meter_zone(settings.timezone)  # an unknown name falls back to UTC, as for meters
    now = datetime.now(UTC)
    until = until or now
    since = since or _month_start(until, zone, DEFAULT_MONTHS - 1)
    if since >= until:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
    if until - since > SPAN_MAX:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"window longer than {SPAN_MAX.days} days"
        )
    ack = {t: ack_due(config, t) for t in ALERT_TYPES}
    res = {s: resolve_due(config, s) for s in SEVERITIES}
    rows = await sla_report(
        conn, since=since, until=until, ack_targets=ack, resolve_targets=res,
        timezone=zone.key, team=team, tenant=tenant, by_type=by == "type", now=now,
    )  # fmt: skip
    return SlaReportPublic(
        since=since,
        until=until,
        as_of=now,
        timezone=zone.key,
        by=by,
        targets=SlaTargets(
            ack_min={t: d.total_seconds() / 60 for t, d in ack.items()},
            resolve_h={s: d.total_seconds() / 3600 for s, d in res.items()},
        ),
        rows=[SlaRowPublic.model_validate(r) for r in rows],
    )
