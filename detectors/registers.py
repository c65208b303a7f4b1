"""Register readings to intervals and hourly volumes, for many meters at once.

The rules are those of :mod:`meterwatch.consumption` (rollover, reverse, replacement, fault,
implausible), applied with numpy to a batch grouped by meter. Readings are taken in arrival
order: a reading not newer than the meter's newest is late and adds nothing to the intervals
(the interval that spans it already holds its water), so the result of a stream does not depend
on how it was cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from meterwatch.consumption import Q4_OVER_Q3, REPLACEMENT_MAX_START_M3, TOLERANCE_M3

FLOW, ROLLOVER, REVERSE, REPLACEMENT, FAULT, IMPLAUSIBLE = range(6)
_SHIFT = np.int64(1) << np.int64(34)  # ts < 2**34 s (year 2514), so meter * 2**34 + ts sorts


def group_starts(meter: NDArray[np.int32]) -> NDArray[np.bool_]:
    first = np.ones(meter.size, np.bool_)
    if meter.size:
        first[1:] = meter[1:] != meter[:-1]
    return first


def accepted(
    meter: NDArray[np.int32], ts: NDArray[np.int64], last_ts: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Rows newer than every earlier row of their meter (and the meter's state); grouped input."""
    if meter.size == 0:
        return np.zeros(0, np.bool_)
    key = meter.astype(np.int64) * _SHIFT + ts
    before = np.empty_like(key)
    before[0] = -1
    np.maximum.accumulate(key[:-1], out=before[1:])
    prior_state = np.where(
        last_ts[meter] >= 0, meter.astype(np.int64) * _SHIFT + last_ts[meter], -1
    )
    first = group_starts(meter)
    before[first] = -1
    return key > np.maximum(before, prior_state)


@dataclass(frozen=True, eq=False)
class Intervals:
    """Intervals between consecutive accepted readings, grouped by meter, in time order."""

    meter: NDArray[np.int32]
    t0: NDArray[np.int64]
    t1: NDArray[np.int64]
    volume: NDArray[np.float64]  # m3 through the meter forwards (0 for reverse/fault)
    reverse: NDArray[np.float64]  # m3 backwards
    kind: NDArray[np.int8]


def intervals(
    meter: NDArray[np.int32],
    ts: NDArray[np.int64],
    register: NDArray[np.float64],
    ok: NDArray[np.bool_],
    last_ts: NDArray[np.int64],
    last_reg: NDArray[np.float64],
    q3_m3h: NDArray[np.float32],
    register_max_m3: NDArray[np.float64],
) -> Intervals:
    rows = np.flatnonzero(ok)
    m, t1, r1 = meter[rows], ts[rows], register[rows]
    first = group_starts(m)
    t0 = np.empty_like(t1)
    r0 = np.empty_like(r1)
    t0[1:], r0[1:] = t1[:-1], r1[:-1]
    t0[first], r0[first] = last_ts[m[first]], last_reg[m[first]]
    has_prev = t0 >= 0
    m, t0, t1 = m[has_prev], t0[has_prev], t1[has_prev]
    r0, r1 = r0[has_prev], r1[has_prev]
    hours = (t1 - t0) / 3600.0
    capacity = q3_m3h[m] * Q4_OVER_Q3 * hours + TOLERANCE_M3
    delta = r1 - r0
    wrapped = r1 + register_max_m3[m] - r0
    kind = np.full(m.size, FAULT, np.int8)
    kind[(-delta <= capacity) & (delta < 0)] = REVERSE
    kind[(delta < 0) & (-delta > capacity) & (r1 <= REPLACEMENT_MAX_START_M3)] = REPLACEMENT
    kind[(delta < 0) & (wrapped >= 0) & (wrapped <= capacity)] = ROLLOVER
    kind[delta >= 0] = np.where(delta[delta >= 0] <= capacity[delta >= 0], FLOW, IMPLAUSIBLE)
    volume = np.select(
        [kind == FLOW, kind == ROLLOVER, kind == REPLACEMENT], [delta, wrapped, r1], 0.0
    )
    reverse = np.where(kind == REVERSE, -delta, 0.0)
    return Intervals(m, t0, t1, volume, reverse, kind)


@dataclass(frozen=True, eq=False)
class Hours:
    """Volumes per (meter, clock hour), grouped by meter, hours ascending within a meter."""

    meter: NDArray[np.int32]
    hour: NDArray[np.int64]  # epoch hour
    volume: NDArray[np.float64]
    gap: NDArray[np.bool_]  # some of the hour's volume is spread over a long gap
    low: NDArray[np.float64]  # lowest flow (m3/h) of the hour-long readings it overlaps, else inf


GAP_S = 7200
# Readings about an hour apart that do not fall on the hour (real meters drift) split each
# interval over two clock hours; their own flows tell more about a quiet spell than the hours do.
HOURLY_S = 2700  # an interval longer than this says how much, not when: its hours are "gap" hours


def hourly(iv: Intervals) -> Hours:
    """Split intervals at hour boundaries in proportion to time and sum per (meter, hour)."""
    if iv.t0.size == 0:
        z = np.zeros(0, np.int64)
        f = z.astype(np.float64)
        return Hours(z.astype(np.int32), z, f, z.astype(np.bool_), f)
    h0 = iv.t0 // 3600
    h1 = (iv.t1 - 1) // 3600
    n = h1 - h0 + 1
    dt = iv.t1 - iv.t0
    long = dt > GAP_S
    rate = np.where(dt >= HOURLY_S, iv.volume / dt * 3600.0, np.inf)
    if int(n.max()) == 1:
        meter, hour, vol, gap, low = iv.meter, h0, iv.volume, long, rate
    else:
        idx = np.repeat(np.arange(n.size), n)
        step = np.arange(idx.size) - np.repeat(np.cumsum(n) - n, n)
        hour = h0[idx] + step
        lo = np.maximum(iv.t0[idx], hour * 3600)
        hi = np.minimum(iv.t1[idx], (hour + 1) * 3600)
        vol = iv.volume[idx] * (hi - lo) / (iv.t1[idx] - iv.t0[idx])
        meter = iv.meter[idx]
        gap = long[idx]
        low = rate[idx]
    new = np.ones(hour.size, np.bool_)
    new[1:] = (meter[1:] != meter[:-1]) | (hour[1:] != hour[:-1])
    starts = np.flatnonzero(new)
    gaps = np.add.reduceat(gap.astype(np.int32), starts) > 0
    lows = np.minimum.reduceat(low, starts)
    return Hours(meter[starts], hour[starts], np.add.reduceat(vol, starts), gaps, lows)


@dataclass(frozen=True, eq=False)
class Runs:
    """Runs of consecutive flagged rows within each group (see :func:`runs`)."""

    total: NDArray[np.float64]  # running sum including the row (0 where not flagged)
    before: NDArray[np.float64]  # running sum before the row
    start: NDArray[np.int64]  # row where the row's run starts in this batch
    carried: NDArray[np.bool_]  # the run continues one carried over from an earlier batch


def runs(
    flag: NDArray[np.bool_], first: NDArray[np.bool_], carry: NDArray[np.float64],
    value: NDArray[np.float64],
) -> Runs:  # fmt: skip
    """Running sums of ``value`` over consecutive ``flag`` rows of each group.

    ``carry`` is, per row, its group's running sum from earlier batches; it continues a group's
    leading run only (a run that starts the batch and whose carry is positive).
    """
    starts = first.copy()
    starts[1:] |= ~(flag[1:] & flag[:-1])
    seg = np.cumsum(starts) - 1
    start_rows = np.flatnonzero(starts)
    v = np.where(flag, value, 0.0)
    csum = np.cumsum(v)
    total = csum - (csum[start_rows] - v[start_rows])[seg]
    carried = flag & first[start_rows][seg] & (carry > 0)
    total = total + np.where(carried, carry, 0.0)
    return Runs(total, total - v, start_rows[seg].astype(np.int64), carried)


def ffill(
    known: NDArray[np.bool_], value: NDArray[np.bool_], first: NDArray[np.bool_],
    initial: NDArray[np.bool_],
) -> NDArray[np.bool_]:  # fmt: skip
    """``value`` where ``known``, else the last known value of the group (``initial`` before it)."""
    pos = np.arange(known.size)
    last = np.maximum.accumulate(np.where(known, pos, -1))
    group_first = np.maximum.accumulate(np.where(first, pos, 0))
    inside = last >= group_first
    return np.where(inside, value[np.maximum(last, 0)], initial)


def group_last(meter: NDArray[np.int32]) -> NDArray[np.intp]:
    """Row of each group's last row (grouped input)."""
    if meter.size == 0:
        return np.zeros(0, np.intp)
    return np.flatnonzero(np.r_[meter[1:] != meter[:-1], True])
