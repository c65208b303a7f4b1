"""Consumption from a cumulative register: the maths every total in meterwatch rests on.

A meter reports its totaliser, not its use, so use is the difference of consecutive readings.
The differences are taken after sorting by time and dropping repeated timestamps, so duplicated,
shuffled or late readings give exactly the totals of clean sorted input. A decrease of the register
is classified, never silently treated as a reset:

- ``rollover``: the register wrapped at ``register_max_m3`` (its modulus, e.g. 100000 for a five
  digit m3 register) and the wrapped difference is a volume the meter could have passed;
- ``reverse``: a decrease small enough to be water flowing backwards through the meter;
- ``replacement``: the register restarted near zero, as a new meter does; use is the new register;
- ``fault``: any other decrease; the signed difference is kept so that totals over a period still
  equal the change of the register.

An increase larger than the meter could pass at its overload flow is kept, marked ``implausible``.
Intervals are then split at hour boundaries in proportion to time, so hourly and daily rollups are a
plain sum of pieces whatever the gaps between readings were.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

FLOW = "flow"
ROLLOVER = "rollover"
REVERSE = "reverse"
REPLACEMENT = "replacement"
FAULT = "fault"
IMPLAUSIBLE = "implausible"
KINDS = (FLOW, ROLLOVER, REVERSE, REPLACEMENT, FAULT, IMPLAUSIBLE)

# Overload flow Q4 is 1.25 x Q3 (ISO 4064 / OIML R49); a meter cannot register more than that.
Q4_OVER_Q3 = 1.25
TOLERANCE_M3 = 0.01
REPLACEMENT_MAX_START_M3 = 5.0  # a new meter's register starts below this
HOUR = timedelta(hours=1)


class Interval(NamedTuple):
    start: datetime
    end: datetime
    volume_m3: float
    kind: str


class Piece(NamedTuple):
    """Part of an interval inside one clock hour; the unit stored in ``consumption``."""

    meter_id: str
    ts: datetime
    ts_end: datetime
    volume_m3: float
    kind: str


def dedupe_sorted(points: Iterable[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    """Sort by time; of readings with the same timestamp keep the smallest register.

    Storage keeps the first arrival for a timestamp; the smallest value is the order-free choice
    for callers that hand in raw, possibly conflicting, duplicates.
    """
    out: list[tuple[datetime, float]] = []
    for ts, reg in sorted(points):
        if out and out[-1][0] == ts:
            continue
        out.append((ts, reg))
    return out


def classify(
    prev: float,
    new: float,
    hours: float,
    *,
    register_max_m3: float,
    q3_m3h: float,
    replacement_max_start_m3: float = REPLACEMENT_MAX_START_M3,
) -> tuple[float, str]:
    """Volume and kind of one interval between two register values ``hours`` apart."""
    capacity = q3_m3h * Q4_OVER_Q3 * max(hours, 0.0) + TOLERANCE_M3
    delta = new - prev
    if delta >= 0:
        return delta, (FLOW if delta <= capacity else IMPLAUSIBLE)
    wrapped = new + register_max_m3 - prev
    if 0 <= wrapped <= capacity:
        return wrapped, ROLLOVER
    if -delta <= capacity:
        return delta, REVERSE
    if new <= replacement_max_start_m3:
        return new, REPLACEMENT
    return delta, FAULT


def intervals(
    points: Iterable[tuple[datetime, float]],
    *,
    register_max_m3: float,
    q3_m3h: float,
) -> list[Interval]:
    pts = dedupe_sorted(points)
    out: list[Interval] = []
    for (t0, r0), (t1, r1) in itertools.pairwise(pts):
        hours = (t1 - t0).total_seconds() / 3600.0
        volume, kind = classify(r0, r1, hours, register_max_m3=register_max_m3, q3_m3h=q3_m3h)
        out.append(Interval(t0, t1, volume, kind))
    return out


def _hour_floor(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def split_hourly(meter_id: str, interval: Interval) -> list[Piece]:
    start, end, volume, kind = interval
    span = (end - start).total_seconds()
    pieces: list[Piece] = []
    t = start
    while t < end:
        nxt = min(_hour_floor(t) + HOUR, end)
        share = (nxt - t).total_seconds() / span
        pieces.append(Piece(meter_id, t, nxt, volume * share, kind))
        t = nxt
    return pieces


def pieces(
    meter_id: str,
    points: Iterable[tuple[datetime, float]],
    *,
    register_max_m3: float,
    q3_m3h: float,
) -> list[Piece]:
    out: list[Piece] = []
    for iv in intervals(points, register_max_m3=register_max_m3, q3_m3h=q3_m3h):
        out.extend(split_hourly(meter_id, iv))
    return out
