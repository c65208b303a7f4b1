"""Rules decided when a meter's local day closes: abnormal use against the meter's own baseline,
its normal minimum flow, and the day's contribution to its DMA balance and the fleet model.

Baselines are kept per kind of day (workday, weekend, public holiday, Spring Festival), learn only
from days that did not look abnormal (an alert's own data must not become the new normal), and
clip what they learn, so a single extreme day moves them little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from detectors.emit import Evidence, Loss, enabled, is_open, rule_open
from detectors.params import day_types, week_slot
from meterwatch.holidays import DayType

if TYPE_CHECKING:
    from detectors.bank import Context

FULL_DAY_HOURS = 20  # a day with fewer hours (the meter's first, a clock change) is not judged
LOW_HOURS = 4  # quietest hours of a day that make its "low flow"
LEAK_DEVS = 4.0  # a leak lifts the low flow this many typical deviations above normal
LEAK_LEARN_DAYS = 3
SUSTAINED = 1.25  # each day of an abnormal_high window is at least this times its baseline
WINDOW = 7  # days of use kept for the abnormal_high window (abnormal_days <= 7)
LEAK_EXPLAINED = 2.0  # a leak's day excess is about its rate x 24 h; much more is more use
LEAK_DAYS = 2  # days in a row above normal before a learned meter's leak is called
LEARN_CLIP = 1.5  # a day teaches its baseline at most this times the baseline (or the fallback)
WAKING_FROM_H = 6  # local hours WAKING_FROM_H..23 are the waking hours
WAKING_HOURS = 24 - WAKING_FROM_H
ACTIVE_M3 = 0.0015  # a waking hour that used 2 L or more (above the day's floor) was active
BROAD = 0.6  # more use spreads over this share of the waking hours that are usually idle
ACT_MEMORY = 7  # days the usual active hours remember
LOW_LEARN_DAYS = 4  # days of a kind of day its baseline needs before a low day of it is judged
ACT_LEARN_DAYS = 3  # days of active hours before the breadth of a window can be judged
IDLE_MIN = 2.0  # a meter usually idle in fewer waking hours has none to fill: volume decides
# Where a kind of day has no history yet, compare with the nearest kind that has.
_FALLBACK = {
    DayType.WORKDAY: (DayType.WORKDAY, DayType.WEEKEND),
    DayType.WEEKEND: (DayType.WEEKEND, DayType.HOLIDAY, DayType.WORKDAY),
    DayType.HOLIDAY: (DayType.HOLIDAY, DayType.WEEKEND, DayType.WORKDAY),
    DayType.SPRING_FESTIVAL: (DayType.SPRING_FESTIVAL, DayType.HOLIDAY, DayType.WEEKEND),
}
_MEMORY_DAYS = {
    DayType.WORKDAY: 10,
    DayType.WEEKEND: 4,
    DayType.HOLIDAY: 3,
    DayType.SPRING_FESTIVAL: 3,
}


def _baseline(
    state: NDArray[np.void], idx: NDArray[np.intp], dtype: NDArray[np.int8]
) -> NDArray[np.float64]:
    out = np.full(idx.size, np.nan)
    for kind, chain in _FALLBACK.items():
        rows = np.flatnonzero(dtype == kind)
        for fallback in chain:
            todo = rows[np.isnan(out[rows])]
            if todo.size == 0:
                break
            n = state["day_n"][idx[todo], fallback]
            ok = todo[n >= 2]
            out[ok] = state["day_base"][idx[ok], fallback]
    return out


def close_days(ctx: Context, idx: NDArray[np.intp]) -> None:
    st, pr = ctx.state, ctx.params
    full = st["day_hours"][idx] >= FULL_DAY_HOURS
    idx = idx[full]
    if idx.size == 0:
        return
    lday = st["day"][idx].astype(np.int64)
    vol = st["day_vol"][idx].astype(np.float64)
    dtype = day_types(lday, pr["cn"][idx])
    start = lday * 86400 - pr["off_s"][idx]
    end = start + 86400
    ctx.dma.add_days(pr["dma"][idx], pr["inlet"][idx], lday, vol, st["day_min"][idx], end)
    # A holiday of a kind the meter has not lived through yet (its first Spring Festival) is
    # compared with the nearest kind it knows; breadth (below) keeps that from raising on noise.
    base = _baseline(st, idx, dtype)
    day = _day_hours(st, idx, start)
    learned = pr["leak_learn"][idx]
    # Water a constant flow explains (a leak, known or not yet) is not "more use": homes drop
    # their quietest hour times 24; meters with a learned minimum drop their open leak's rate or
    # how far the day's low flow stands above its learned normal, whichever is more.
    low = np.sort(day, axis=1)[:, :LOW_HOURS].mean(axis=1)
    lifted = np.where(st["base_n"][idx] >= LEAK_LEARN_DAYS, low - st["base_min"][idx], 0.0)
    _leak_daily(ctx, idx, lday, dtype, start, end, vol - np.nan_to_num(base, nan=np.inf), low)
    floor = np.where(
        learned,
        np.maximum(np.where(is_open(st, idx, "leak"), st["leak_rate"][idx], 0.0), lifted),
        st["day_min"][idx],
    )
    floor = np.maximum(floor, 0.0)
    use = np.maximum(vol - floor * 24.0, 0.0)
    active = (day[:, WAKING_FROM_H:] - floor[:, None] >= ACTIVE_M3).sum(axis=1)
    # A home's open leak may be growing: its rise is the leak's, not more use.
    leaking = ~learned & is_open(st, idx, "leak")
    warm = (
        (st["days"][idx] >= pr["warmup"][idx])
        & (np.nan_to_num(base) >= pr["base_least"][idx])
        & ~leaking
    )
    day_high = warm & (use >= pr["hi_factor"][idx] * base + pr["hi_min"][idx])
    high = _window_high(st, pr, idx, use, np.where(warm, base, np.nan), active)
    _abnormal_high(ctx, idx, high, day_high, start, end, use, base, active, day)
    # Low use is judged on ordinary days against a baseline of the same kind of day learned from
    # LOW_LEARN_DAYS days at least: a small home's use swings widely from day to day, and two or
    # three days are no measure of it. A day the meter spent mostly silent has its water spread
    # evenly over the gap's hours, so its quietest hour is no floor. Any other day (a holiday
    # too) ends a run of low days but does not clear an open alert. Nobody used water on a day
    # whose hours all stay within a litre or so of its quietest: a constant flow (a drip below
    # the leak threshold) explains it, the rest is the register stepping in whole litres; that
    # day is empty, not low. A day that looks low teaches its baseline nothing, judged or not.
    idle = day.max(axis=1) - day.min(axis=1) < ACTIVE_M3
    own_n = st["day_n"][idx, np.minimum(dtype, DayType.WEEKEND)]
    ordinary = dtype < DayType.HOLIDAY
    looks_low = warm & ordinary & (use > 0) & (use <= pr["lo_factor"][idx] * base) & ~day_high
    judged = ordinary & (own_n >= LOW_LEARN_DAYS) & (st["day_gaps"][idx] < LOW_HOURS)
    _abnormal_low(ctx, idx, looks_low & judged & ~idle, judged, start, end, use, base, day)
    learn = ~day_high & ~high & ~looks_low & (use > 0) & ~leaking
    learn &= ~is_open(st, idx, "abnormal_high")
    _learn_day(st, idx[learn], dtype[learn], use[learn], base[learn])
    busy = learn & (use >= pr["base_least"][idx])  # an empty flat's day says nothing of breadth
    _learn_active(st, idx[busy], active[busy])
    st["days"][idx] = np.minimum(st["days"][idx] + 1, 30000)
    if ctx.fleet is not None:
        # Public holidays are not compared with ordinary days (a city's Spring Festival day is
        # unlike the weeks the model learned from), nor learned from.
        fo = enabled(pr, idx, "fleet_outlier") & (vol > 0) & (dtype < DayType.HOLIDAY)
        if fo.any():
            k = idx[fo]
            ctx.fleet_days.append((k, lday[fo], day[fo].astype(np.float32), end[fo]))


def _day_hours(
    st: NDArray[np.void], idx: NDArray[np.intp], start: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The closing day's 24 hourly volumes, local midnight first."""
    hours = (start // 3600)[:, None] + np.arange(24)[None, :]
    out: NDArray[np.float64] = st["ring"][idx[:, None], hours % 24].astype(np.float64)
    return out


def _window_high(
    st: NDArray[np.void], pr: NDArray[np.void], idx: NDArray[np.intp], use: NDArray[np.float64],
    base: NDArray[np.float64], active: NDArray[np.int64],
) -> NDArray[np.bool_]:  # fmt: skip
    """The last ``hi_days`` days together used ``hi_factor`` times their baselines, each of them
    well above its own, and the use spread over the day: one noisy day in a small home is common,
    several in a row at that level are not; and a few big uses (a bath, the washing) make a small
    home's day look doubled, where more people or a second shift use water in more hours.

    Breadth: the window's active waking hours reach their usual count plus ``BROAD`` of the
    waking hours that usually stay idle. A meter busy in (nearly) every waking hour (a plant, most
    shops) has no idle hours to fill, so its volume alone decides; its day-to-day use is steady.
    """
    slot = st["days"][idx].astype(np.int64) % WINDOW
    st["use_ring"][idx, slot] = use
    st["base_ring"][idx, slot] = base
    st["act_ring"][idx, slot] = active
    n = np.minimum(pr["hi_days"][idx].astype(np.int64), WINDOW)
    back = np.arange(WINDOW)[None, :]
    cols = (slot[:, None] - back) % WINDOW
    inside = back < n[:, None]
    enough = st["days"][idx] >= n  # the ring holds n days of this meter
    uses = st["use_ring"][idx[:, None], cols].astype(np.float64)
    bases = st["base_ring"][idx[:, None], cols].astype(np.float64)
    acts = st["act_ring"][idx[:, None], cols].astype(np.float64)
    u = np.where(inside, uses, 0.0).sum(axis=1)
    b = np.where(inside, bases, 0.0).sum(axis=1)
    factor = pr["hi_factor"][idx].astype(np.float64)
    least = pr["hi_min"][idx].astype(np.float64)
    # Sustained: each day well above its baseline, not one huge day (a burst, a party).
    each = np.where(inside, uses >= SUSTAINED * bases, True).all(axis=1)
    usual = st["act_base"][idx].astype(np.float64)
    act = np.where(inside, acts, 0.0).sum(axis=1) / np.maximum(n, 1)
    idle = WAKING_HOURS - usual
    broad = (st["act_n"][idx] >= ACT_LEARN_DAYS) & (
        (act >= usual + BROAD * idle - 1e-6) | (idle < IDLE_MIN)
    )
    out: NDArray[np.bool_] = enough & ~np.isnan(b) & each & (u >= factor * b + least * n) & broad
    return out


def _abnormal_high(
    ctx: Context, idx: NDArray[np.intp], high: NDArray[np.bool_], day_high: NDArray[np.bool_],
    start: NDArray[np.int64], end: NDArray[np.int64], use: NDArray[np.float64],
    base: NDArray[np.float64], active: NDArray[np.int64], day: NDArray[np.float64],
) -> None:  # fmt: skip
    """Raise when the window is high, repeat daily while days stay high, clear on a normal day."""
    st, pr = ctx.state, ctx.params
    opened = is_open(st, idx, "abnormal_high")
    n = pr["hi_days"][idx].astype(np.int64)
    raise_ = (high & ~opened) | (opened & day_high)
    raise_ &= enabled(pr, idx, "abnormal_high")
    st["hi_start"][idx] = np.where(high & ~opened, start - (n - 1) * 86400, st["hi_start"][idx])
    st["hi_run"][idx] = np.where(raise_, np.minimum(st["hi_run"][idx] + 1, 100), 0)
    r = np.flatnonzero(raise_)
    if r.size:
        k = idx[r]
        usual = st["act_base"][k]
        evidence, loss = _use_evidence(
            ctx, idx, r, use, base, start, day, st["hi_run"][k].astype(np.int64) + n[r] - 1,
            lambda j: {
                "active_hours": int(active[r[j]]),
                "usual_active_hours": round(float(usual[j]), 1),
            },
        )  # fmt: skip
        ctx.emit.raise_(
            "abnormal_high", k, st["hi_start"][k], end[r],
            np.where(st["hi_run"][k] >= 2 * n[r], 2, 1), evidence, loss,
        )  # fmt: skip
    off = np.flatnonzero(opened & ~day_high & ~high)
    ctx.emit.clear("abnormal_high", idx[off], end[off])


def _abnormal_low(
    ctx: Context, idx: NDArray[np.intp], hit: NDArray[np.bool_], counts: NDArray[np.bool_],
    start: NDArray[np.int64], end: NDArray[np.int64], use: NDArray[np.float64],
    base: NDArray[np.float64], day: NDArray[np.float64],
) -> None:  # fmt: skip
    """``lo_days`` low days in a row raise; a normal day that counts clears. Any other day ends
    the run (without clearing): days on either side of a week of Spring Festival are not days in
    a row."""
    st, pr = ctx.state, ctx.params
    need = pr["lo_days"][idx]
    run = np.where(hit, st["lo_run"][idx].astype(np.int64) + 1, 0)
    st["lo_start"][idx] = np.where(hit & (run == 1), start, st["lo_start"][idx])
    st["lo_run"][idx] = np.minimum(run, 100).astype(np.int8)
    on = hit & (run >= need) & enabled(pr, idx, "abnormal_low")
    if on.any():
        r = np.flatnonzero(on)
        k = idx[r]
        evidence, loss = _use_evidence(ctx, idx, r, use, base, start, day, run[r])
        ctx.emit.raise_(
            "abnormal_low", k, st["lo_start"][k], end[r], np.where(run[r] >= 2 * need[r], 2, 1),
            evidence, loss,
        )  # fmt: skip
    off = np.flatnonzero(~hit & counts & rule_open(st, idx, "abnormal_low"))
    ctx.emit.clear("abnormal_low", idx[off], end[off])


def _use_evidence(
    ctx: Context, idx: NDArray[np.intp], r: NDArray[np.intp], use: NDArray[np.float64],
    base: NDArray[np.float64], start: NDArray[np.int64], day: NDArray[np.float64],
    days: NDArray[np.int64], more: Evidence | None = None,
) -> tuple[Evidence, Loss]:  # fmt: skip
    """Evidence and estimated loss of abnormal use on rows ``r`` of the closing days: the day's
    use against its baseline, ``days`` abnormal so far, ``more`` facts of the rule, and the local
    hours whose use was over twice their hour-of-week baseline."""
    hours = _hours_above(ctx, idx[r], start[r], day[r])

    def evidence(j: int) -> dict[str, Any]:
        i = r[j]
        return {
            "day_m3": round(float(use[i]), 3),
            "baseline_m3": round(float(base[i]), 3),
            "ratio": round(float(use[i] / base[i]), 2) if base[i] > 0 else None,
            "days": int(days[j]),
            **(more(j) if more is not None else {}),
            "hours_above_normal": hours[j],
        }

    def loss(j: int) -> float:
        return round(max(float(use[r[j]] - base[r[j]]), 0.0), 3)

    return evidence, loss


def _hours_above(
    ctx: Context, k: NDArray[np.intp], start: NDArray[np.int64], day: NDArray[np.float64]
) -> list[list[int]]:
    """Local hours of the days starting at ``start`` (their volumes ``day``, as
    :func:`_day_hours` reads them) whose use was over twice the hour-of-week baseline."""
    st, pr = ctx.state, ctx.params
    local = ((start // 3600)[:, None] + np.arange(24)[None, :]) * 3600 + pr["off_s"][k][:, None]
    lday = local // 86400
    lh = (local // 3600) % 24
    slot = week_slot(lday, lh, day_types(lday, pr["cn"][k][:, None]))
    above = day > 2.0 * st["how"][k[:, None], slot] + 0.001
    return [[int(h) for h in lh[j][above[j]]] for j in range(k.size)]


def _learn_day(
    st: NDArray[np.void],
    idx: NDArray[np.intp],
    dtype: NDArray[np.int8],
    use: NDArray[np.float64],
    judged: NDArray[np.float64],
) -> None:
    """Robust running mean per kind of day. A day teaches at most ``LEARN_CLIP`` times what it
    was judged against (its own baseline, or for a young kind the nearest kind's), so a run of
    high days that stayed under the alert threshold cannot carry the baseline up with it."""
    for kind, memory in _MEMORY_DAYS.items():
        rows = np.flatnonzero(dtype == kind)
        if rows.size == 0:
            continue
        k = idx[rows]
        n = st["day_n"][k, kind].astype(np.float64)
        old = st["day_base"][k, kind].astype(np.float64)
        ref = np.where(n >= 2, old, judged[rows])
        x = np.where(np.isnan(ref), use[rows], np.minimum(use[rows], LEARN_CLIP * ref))
        st["day_base"][k, kind] = np.where(n == 0, x, old + (x - old) / np.minimum(n + 1.0, memory))
        st["day_n"][k, kind] = np.minimum(n + 1, 30000).astype(np.int16)


def _learn_active(st: NDArray[np.void], idx: NDArray[np.intp], active: NDArray[np.int64]) -> None:
    """Running mean of a meter's active waking hours on days it was not judged abnormal."""
    n = st["act_n"][idx].astype(np.float64)
    old = st["act_base"][idx].astype(np.float64)
    x = active.astype(np.float64)
    st["act_base"][idx] = np.where(n == 0, x, old + (x - old) / np.minimum(n + 1.0, ACT_MEMORY))
    st["act_n"][idx] = np.minimum(n + 1, 30000).astype(np.int16)


def _leak_daily(
    ctx: Context, idx: NDArray[np.intp], lday: NDArray[np.int64], dtype: NDArray[np.int8],
    start: NDArray[np.int64], end: NDArray[np.int64], excess: NDArray[np.float64],
    low_all: NDArray[np.float64],
) -> None:  # fmt: skip
    """Leaks on meters that never stop: the day's low flow (mean of its 4 quietest hours) against
    the meter's normal low flow, learned from ordinary workdays. A leak adds the same flow to every
    hour, so it lifts the quiet hours by its rate; busy hours only add noise, so they are left out.
    Only workdays are judged (a shop's Sunday nights are not its Tuesday nights), and the day's
    extra volume must look like a constant flow: when every hour grew in proportion, the customer
    is using more (``abnormal_high``), not leaking.
    """
    st, pr = ctx.state, ctx.params
    rows = np.flatnonzero(
        pr["leak_learn"][idx] & (st["day_gaps"][idx] < LOW_HOURS) & (dtype == DayType.WORKDAY)
    )
    if rows.size == 0:
        return
    k = idx[rows]
    low = low_all[rows]
    n = st["base_n"][k].astype(np.float64)
    base = st["base_min"][k].astype(np.float64)
    dev = st["base_dev"][k].astype(np.float64)
    margin = np.maximum.reduce([pr["leak_thr"][k], LEAK_DEVS * dev, pr["leak_margin"][k] * base])
    ready = n >= LEAK_LEARN_DAYS
    opened = rule_open(st, k, "leak")
    constant = excess[rows] <= LEAK_EXPLAINED * np.maximum(low - base, 0.0) * 24.0
    above = ready & (low >= base + margin) & constant & enabled(pr, k, "leak")
    days = np.where(above, st["leak_run"][k] + 1, 0)
    st["leak_run"][k] = days
    hit = above & (days >= LEAK_DAYS)
    if hit.any():
        r = np.flatnonzero(hit)
        kk = k[r]
        rate = low[r] - base[r]
        sev = np.where(rate >= pr["leak_crit"][kk], 2, 1).astype(np.int8)
        began = start[rows][r] - (days[r] - 1) * 86400
        # Raised, or repeated once a day with the new estimate.
        ctx.emit.raise_(
            "leak", kk, began, end[rows][r], sev,
            lambda j: {
                "rule": "low_flow_day",
                "leak_lph": round(float(rate[j]) * 1000.0, 1),
                "low_flow_lph": round(float(low[r[j]]) * 1000.0, 1),
                "normal_low_lph": round(float(base[r[j]]) * 1000.0, 1),
                "threshold_lph": round(float(base[r[j]] + margin[r[j]]) * 1000.0, 1),
                "window_h": int(days[r[j]]) * 24,
            },
            lambda j: round(float(rate[j]) * 24.0, 3),
        )  # fmt: skip
        st["leak_sev"][kk] = sev
        st["leak_rate"][kk] = rate
        st["leak_day"][kk] = lday[rows][r]
    quiet = np.flatnonzero(opened & ~hit & (low < base + 0.5 * margin))
    if quiet.size:
        kk = k[quiet]
        ctx.emit.clear("leak", kk, end[rows][quiet])
        st["leak_rate"][kk] = 0.0
        st["leak_sev"][kk] = 0
    learn = ~above & ~opened
    if learn.any():
        kk, x = k[learn], low[learn]
        nn, b, d = n[learn], base[learn], dev[learn]
        x = np.where(
            nn >= LEAK_LEARN_DAYS, np.minimum(x, b + 2.0 * np.maximum(d, pr["leak_thr"][kk])), x
        )
        w = 1.0 / np.minimum(nn + 1.0, 7.0)
        nb = np.where(nn == 0, x, b + w * (x - b))
        st["base_dev"][kk] = np.where(nn == 0, 0.0, d + w * (np.abs(x - b) - d))
        st["base_min"][kk] = nb
        st["base_n"][kk] = np.minimum(nn + 1, 30000).astype(np.int16)
