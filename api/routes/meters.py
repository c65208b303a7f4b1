"""Meters: the registry, one meter's readings, and its usage in hour or day buckets.

Time windows are half-open, ``[start, end)``, so consecutive windows neither overlap nor leave
gaps. Left out, ``end`` is just after the meter's newest reading (so that reading is included) and
``start`` is a default span before ``end``: a plain GET shows the latest data, however long ago the
meter last reported.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from psycopg import AsyncConnection

from api.deps import ConnDep
from api.schemas import (
    ErrorPublic,
    Instant,
    MeterPublic,
    Page,
    ReadingPublic,
    ReadingsPublic,
    UsageBucket,
    UsagePublic,
)
from meterwatch.domain import MeterKind
from notify.routing import meter_zone
from storage import queries

LIST_LIMIT = 100
LIST_LIMIT_MAX = 1000
OFFSET_MAX = 10_000_000
READINGS_LIMIT = 10_000
READINGS_LIMIT_MAX = 100_000
READINGS_SPAN = timedelta(hours=24)
USAGE_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
USAGE_SPAN_MAX = {"hour": timedelta(days=366), "day": timedelta(days=3660)}
TICK = timedelta(microseconds=1)  # the resolution of timestamptz
M3_DIGITS = 6  # 1 mL, the resolution of register_m3 on the wire; finer digits are float noise

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such meter"}
}
BAD_WINDOW: dict[int | str, dict[str, Any]] = {
    422: {"description": "invalid parameters, e.g. start not before end"}
}
INSTANT_HELP = (
    "ISO 8601, e.g. 2026-11-21T08:00:00+08:00 (write + as %2B; a space before the offset is read "
    "as +). Without an offset the time is UTC. Epoch seconds also work."
)

MeterId = Annotated[str, Path(max_length=200, pattern=r"^[^\x00]+$")]
Text = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Start = Annotated[Instant | None, Query(description="inclusive; " + INSTANT_HELP)]
End = Annotated[Instant | None, Query(description="exclusive; " + INSTANT_HELP)]

router = APIRouter(prefix="/meters", tags=["meters"])


async def _meter_or_404(conn: AsyncConnection[Any], meter_id: str) -> queries.MeterRow:
    meter = await queries.get_meter(conn, meter_id=meter_id)
    if meter is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"meter {meter_id!r} not found")
    return meter


def _window(
    start: datetime | None, end: datetime | None, *, latest: datetime | None, span: timedelta
) -> tuple[datetime, datetime]:
    """Resolve the defaults described in the module docstring; 422 when start is not before end."""
    if start is not None and end is not None and start >= end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "start must be before end")
    if end is None:
        end = latest + TICK if latest is not None else datetime.now(UTC)
        if start is not None and start > end:
            end = start  # nothing is newer than start: an empty window, not an error
    if start is None:
        try:
            start = end - span
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    return start, end


def _m3(volume: float) -> float:
    return round(volume, M3_DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


@router.get("", response_model=Page[MeterPublic])
async def list_meters(
    conn: ConnDep,
    tenant: Text = None,
    dma: Text = None,
    kind: MeterKind | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> Page[MeterPublic]:
    """Meters ordered by id, with the time of each one's newest reading."""
    k = kind.value if kind is not None else None
    rows = await queries.list_meters(
        conn, tenant=tenant, dma=dma, kind=k, limit=limit, offset=offset
    )
    total = await queries.count_meters(conn, tenant=tenant, dma=dma, kind=k)
    items = [MeterPublic.model_validate(r) for r in rows]
    return Page[MeterPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{meter_id}", response_model=MeterPublic, responses=NOT_FOUND)
async def get_meter(conn: ConnDep, meter_id: MeterId) -> MeterPublic:
    return MeterPublic.model_validate(await _meter_or_404(conn, meter_id))


@router.get(
    "/{meter_id}/readings", response_model=ReadingsPublic, responses={**NOT_FOUND, **BAD_WINDOW}
)
async def meter_readings(
    conn: ConnDep,
    meter_id: MeterId,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=READINGS_LIMIT_MAX)] = READINGS_LIMIT,
) -> ReadingsPublic:
    """Stored readings in ``[start, end)``, oldest first; ``start`` defaults to 24 h before end.

    When the window holds more than ``limit`` readings the oldest ``limit`` are returned and
    ``next_start`` is where the next request should begin.
    """
    meter = await _meter_or_404(conn, meter_id)
    start, end = _window(start, end, latest=meter.last_reading_at, span=READINGS_SPAN)
    rows = await queries.readings(conn, meter_id=meter_id, start=start, end=end, limit=limit + 1)
    truncated = len(rows) > limit
    rows = rows[:limit]
    return ReadingsPublic(
        meter_id=meter_id,
        start=start,
        end=end,
        truncated=truncated,
        next_start=rows[-1].ts + TICK if truncated else None,
        readings=[ReadingPublic.model_validate(r) for r in rows],
    )


@router.get("/{meter_id}/usage", response_model=UsagePublic, responses={**NOT_FOUND, **BAD_WINDOW})
async def meter_usage(
    conn: ConnDep,
    meter_id: MeterId,
    bucket: Literal["hour", "day"] = "hour",
    start: Start = None,
    end: End = None,
) -> UsagePublic:
    """Consumption per bucket whose start lies in ``[start, end)``, with totals.

    Day buckets are the meter's local days; bucket times are shown in the meter's zone. Volumes
    are rounded to 1 mL. Buckets with no data are left out, and ``covered_s`` below the bucket's
    length marks one where the meter's data starts or stops. ``start`` defaults to 24 h (hour) or
    30 days (day) before end. For whole local days give ``start`` and ``end`` with the meter's
    offset: without one they are UTC, and UTC midnight is not the meter's midnight.
    """
    meter = await _meter_or_404(conn, meter_id)
    start, end = _window(start, end, latest=meter.last_reading_at, span=USAGE_SPAN[bucket])
    if end - start > USAGE_SPAN_MAX[bucket]:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"window longer than {USAGE_SPAN_MAX[bucket].days} days for {bucket} buckets",
        )
    meta = await queries.read_meta(conn)
    rows = await queries.usage(
        conn,
        meter_id=meter_id,
        bucket=bucket,
        start=start,
        end=end,
        tz=meter.timezone,
        daily_tz=meta.get("timezone"),
    )
    zone = meter_zone(meter.timezone)
    buckets = [
        UsageBucket(
            start=r.start.astimezone(zone),
            end=r.end.astimezone(zone),
            volume_m3=_m3(r.volume_m3),
            reverse_m3=_m3(r.reverse_m3),
            covered_s=r.covered_s,
        )
        for r in rows
    ]
    return UsagePublic(
        meter_id=meter_id,
        timezone=meter.timezone,
        bucket=bucket,
        start=start,
        end=end,
        total_m3=_m3(math.fsum(r.volume_m3 for r in rows)),
        reverse_m3=_m3(math.fsum(r.reverse_m3 for r in rows)),
        covered_s=math.fsum(r.covered_s for r in rows),
        buckets=buckets,
    )
