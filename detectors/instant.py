"""Rules decided reading by reading: the meter's own flags and battery, bursts, reverse flow.

Each works on a whole batch (grouped by meter, arrival order kept) with run-length arithmetic
instead of a loop, and carries its run across batches in the meter's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.emit import Emitter, enabled
from detectors.params import day_types, week_slot
from detectors.registers import GAP_S, REVERSE, Intervals, ffill, group_last, group_starts, runs
from detectors.state import TYPE_BIT
from meterwatch.domain import FLAG_BITS, flag_names

# The meter's flags and the alert type each one raises. Every known flag maps somewhere.
FLAG_TYPES: tuple[tuple[str, int], ...] = (
    ("tamper", FLAG_BITS["tamper"] | FLAG_BITS["magnetic"]),
    ("reverse_flow", FLAG_BITS["reverse"]),
    ("leak", FLAG_BITS["leak"]),
    ("burst", FLAG_BITS["burst"]),
    ("low_battery", FLAG_BITS["low_battery"]),
    ("meter_alarm", FLAG_BITS["dry"]),
)
BATTERY_HYSTERESIS_PCT = 5.0
DAY_LEVEL_HOURS = 3  # closed hours of the day before its level counts


def flags(
    em: Emitter,
    params: NDArray[np.void],
    meter: NDArray[np.int32],
    ts: NDArray[np.int64],
    bits: NDArray[np.uint8],
    battery: NDArray[np.float32],
    span_start: NDArray[np.int64],
) -> None:
    """Status rows only (one per message), grouped by meter in arrival order.

    A flag is on while the meter's messages carry it. The battery alone opens ``low_battery``
    below its threshold and closes it only well above, so a level wobbling around the threshold
    does not flap; a message without a battery value says nothing about it.
    """
    if meter.size == 0:
        return
    m = meter.astype(np.intp)
    first = group_starts(meter)
    has_battery = ~np.isnan(battery)
    low = has_battery & (battery < params["bat_low"][m])
    high = has_battery & (battery >= params["bat_low"][m] + BATTERY_HYSTERESIS_PCT)
    open_flag = em.state["open_flag"][m]
    for alert_type, mask in FLAG_TYPES:
        flagged = (bits & np.uint8(mask)) != 0
        initial = (open_flag & np.uint16(TYPE_BIT[alert_type])) != 0
        if (
            not flagged.any()
            and not initial.any()
            and (alert_type != "low_battery" or not low.any())
        ):
            continue  # nothing on and nothing open: no transition possible
        if alert_type == "low_battery":
            on = flagged | low
            on = ffill(on | high, on, first, initial)
        else:
            on = flagged
        prev = np.empty_like(on)
        prev[1:] = on[:-1]
        prev[first] = initial[first]
        up = np.flatnonzero(on & ~prev & enabled(params, m, alert_type))
        down = np.flatnonzero(~on & prev)
        if up.size:
            em.raise_(
                alert_type, m[up], span_start[up], ts[up], 1,
                _flag_evidence(bits[up], battery[up]),
                by_flag=True,
            )  # fmt: skip
        if down.size:
            em.clear(alert_type, m[down], ts[down], by_flag=True)
    last = group_last(meter[has_battery])
    em.state["battery"][m[has_battery][last]] = battery[has_battery][last]


def _flag_evidence(
    bits: NDArray[np.uint8], battery: NDArray[np.float32]
) -> Callable[[int], dict[str, Any]]:
    def evidence(k: int) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "source": "meter_flag",
            "flags": list(flag_names(int(bits[k]))),
        }
        if not np.isnan(battery[k]):
            ev["battery_pct"] = round(float(battery[k]), 1)
        return ev

    return evidence


def bursts(em: Emitter, params: NDArray[np.void], iv: Intervals) -> None:
    """Flow at burst level for ``burst_s`` seconds in a row (or one long interval holding it)."""
    if iv.meter.size == 0:
        return
    state = em.state
    m = iv.meter.astype(np.intp)
    dt = (iv.t1 - iv.t0).astype(np.float64)
    q = params["burst_q"][m].astype(np.float64)
    need = params["burst_s"][m].astype(np.float64)
    flow = iv.volume / dt * 3600.0
    carry_s = state["burst_s"][m].astype(np.float64)
    # Readings further apart than the burst duration must show burst-level flow on average over
    # the whole interval: 375 L within an hour is a bath and a wash, not necessarily a burst.
    high = flow >= q  # the normal flow only lowers the excess: judge it for these rows alone
    if not high.any() and not (carry_s > 0).any():
        return  # nothing at burst level and no run to carry: every meter's state stays at rest
    cand = np.flatnonzero(high)
    normal = _normal_flow(state, params, m[cand], iv.t1[cand]) * _day_level(state, m[cand])
    normal = np.maximum(normal, _recent_flow(state, iv, cand))
    high[cand] = flow[cand] - normal >= q[cand]
    # Not judged: an interval spanning a gap (when did the water flow?) and a meter's first day
    # (its normal flow is not known yet; a plant's normal flow may exceed 30% of Q3).
    high &= (dt <= GAP_S) & (iv.t1 >= state["first_ts"][m] + 86400)
    high &= enabled(params, m, "burst")
    first = group_starts(iv.meter)
    r = runs(high, first, carry_s, dt)
    vol = runs(high, first, np.where(carry_s > 0, state["burst_m3"][m], 0.0), iv.volume).total
    start_t = np.where(r.carried, state["burst_start"][m], iv.t0[r.start])
    cross = np.flatnonzero(high & (r.total >= need) & (r.before < need))
    if cross.size:
        em.raise_(
            "burst", m[cross], start_t[cross], iv.t1[cross], 2,
            lambda k: {
                "flow_m3h": round(float(flow[cross[k]]), 3),
                "q3_m3h": round(float(params["q3"][m[cross[k]]]), 3),
                "duration_min": round(float(r.total[cross[k]]) / 60.0, 1),
                "volume_m3": round(float(vol[cross[k]]), 3),
            },
        )  # fmt: skip
    prev_high = np.empty_like(high)
    prev_high[1:] = high[:-1]
    prev_high[first] = carry_s[first] > 0
    ended = np.flatnonzero(~high & prev_high)
    em.clear("burst", m[ended], iv.t1[ended])
    last = group_last(iv.meter)
    lm = m[last]
    state["burst_s"][lm] = np.minimum(r.total[last], 2**31 - 1).astype(np.int32)
    state["burst_m3"][lm] = vol[last]
    state["burst_start"][lm] = np.where(high[last], start_t[last], -1)


def _day_level(state: NDArray[np.void], m: NDArray[np.intp]) -> NDArray[np.float64]:
    """How busy the meter's day has been so far against a normal day (1 = normal, up to 8).

    A burst stands out from the day it happens in: a shop three times as busy as usual all day
    (a sale, ``abnormal_high``) has three times the usual flow in every hour, not a burst.
    """
    vol = state["day_vol"][m].astype(np.float64)
    norm = state["day_norm"][m].astype(np.float64)
    known = (state["day_hours"][m] >= DAY_LEVEL_HOURS) & (norm > 1e-6)
    ratio = np.divide(vol, norm, out=np.ones_like(vol), where=known)
    return np.clip(ratio, 1.0, 8.0)


def _recent_flow(
    state: NDArray[np.void], iv: Intervals, rows: NDArray[np.intp]
) -> NDArray[np.float64]:
    """The flow (m3/h) the meter already kept up through both hours before the interval's hour.

    A burst is a sudden rise: water that has flowed at that rate for two hours is the day's use
    (an office working through a holiday, three times as busy as its holiday normal), however far
    above the hour-of-week normal it is. Only hours the meter's state had closed before this batch
    count; a burst that started in the last hour is still below the lower of the two.
    """
    m = iv.meter[rows].astype(np.intp)
    pos = np.arange(iv.meter.size)
    first_t0 = iv.t0[np.maximum.accumulate(np.where(group_starts(iv.meter), pos, 0))][rows]
    closed = first_t0 // 3600  # hours before this one were closed when the batch came in
    hour = (iv.t1[rows] - 1) // 3600
    out = np.full(rows.size, np.inf)
    for back in (1, 2):
        x = hour - back
        known = (x < closed) & (x >= closed - 24)
        vol = state["ring"][m, x % 24].astype(np.float64)
        out = np.minimum(out, np.where(known, vol, 0.0))
    return out


def _normal_flow(
    state: NDArray[np.void], params: NDArray[np.void], m: NDArray[np.intp], t1: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The meter's usual flow (m3/h) in the hour of the week ``t1`` falls in; before that slot
    is learned, the highest hourly normal it has learned (0 for a new meter)."""
    local = t1 - 1 + params["off_s"][m]
    lday = local // 86400
    slot = week_slot(lday, (local // 3600) % 24, day_types(lday, params["cn"][m]))
    how = state["how"][m, slot].astype(np.float64)
    learned = state["how_n"][m, slot] > 0
    todo = np.flatnonzero(~learned)
    if todo.size:
        mt = m[todo]
        how[todo] = np.where(state["how_n"][mt] > 0, state["how"][mt], 0.0).max(axis=1)
    out: NDArray[np.float64] = how
    return out


def reverse(em: Emitter, params: NDArray[np.void], iv: Intervals) -> None:
    """Register decreases in a row that hold real volume; one jitter step back is not flow."""
    if iv.meter.size == 0:
        return
    state = em.state
    m = iv.meter.astype(np.intp)
    back = iv.kind == REVERSE
    carry_n = state["rev_n"][m].astype(np.float64)
    if not back.any() and not (carry_n > 0).any():
        return  # no decrease and no run to carry: every meter's state stays at rest
    back &= enabled(params, m, "reverse_flow")
    first = group_starts(iv.meter)
    n = runs(back, first, carry_n, np.ones(m.size))
    vol = runs(back, first, np.where(carry_n > 0, state["rev_m3"][m], 0.0), iv.reverse).total
    need_n = params["rev_n"][m].astype(np.float64)
    need_v = params["rev_m3"][m].astype(np.float64)
    ok = back & (n.total >= need_n) & (vol >= need_v)
    # Raise once per run: at the first row of the run that meets both conditions.
    ok_before = np.empty_like(ok)
    ok_before[1:] = ok[:-1] & back[1:]
    ok_before[first] = (
        (carry_n[first] >= need_n[first])
        & (state["rev_m3"][m[first]] >= need_v[first])
        & back[first]
    )
    start_t = np.where(n.carried, state["rev_start"][m], iv.t0[n.start])
    cross = np.flatnonzero(ok & ~ok_before)
    if cross.size:
        em.raise_(
            "reverse_flow", m[cross], start_t[cross], iv.t1[cross], 1,
            lambda k: {
                "source": "register",
                "volume_l": round(float(vol[cross[k]]) * 1000.0, 1),
                "intervals": int(n.total[cross[k]]),
            },
        )  # fmt: skip
    prev_back = np.empty_like(back)
    prev_back[1:] = back[:-1]
    prev_back[first] = carry_n[first] > 0
    ended = np.flatnonzero(~back & prev_back)
    em.clear("reverse_flow", m[ended], iv.t1[ended])
    last = group_last(iv.meter)
    lm = m[last]
    state["rev_n"][lm] = np.minimum(n.total[last], 30000).astype(np.int16)
    state["rev_m3"][lm] = vol[last]
    state["rev_start"][lm] = np.where(back[last], start_t[last], -1)
