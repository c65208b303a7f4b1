"""Rules decided hour by hour: continuous and night-flow leaks, no consumption, baselines.

A meter's hour is closed once a reading at or after its end has arrived; the bank then calls
:func:`hour_step` with, for many meters at once, each one's next closed hour. The local day
closes when a meter's first hour of the next local day arrives (:mod:`detectors.daily`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from detectors.alert import utc
from detectors.daily import close_days
from detectors.emit import enabled, rule_open
from detectors.params import day_types, week_slot
from meterwatch.holidays import DayType

if TYPE_CHECKING:
    from detectors.bank import Context

ZERO_M3 = 0.0005  # half a litre: registers count whole litres
EPS_M3 = 1e-6


def hour_step(
    ctx: Context, idx: NDArray[np.intp], hour: NDArray[np.int64], vol: NDArray[np.float64],
    gap: NDArray[np.bool_], low: NDArray[np.float64],
) -> None:  # fmt: skip
    st, pr = ctx.state, ctx.params
    local = hour * 3600 + pr["off_s"][idx]
    lday = (local // 86400).astype(np.int32)
    lh = (local // 3600) % 24
    day = st["day"][idx]
    change = (day >= 0) & (lday != day)
    if change.any():
        close_days(ctx, idx[change])
    new = day != lday
    if new.any():
        k = idx[new]
        st["day"][k] = lday[new]
        st["day_vol"][k] = 0.0
        st["day_min"][k] = np.inf
        st["day_hours"][k] = 0
        st["day_gaps"][k] = 0
        st["day_norm"][k] = 0.0
    st["ring"][idx, hour % 24] = vol
    st["day_vol"][idx] += vol
    st["day_min"][idx] = np.minimum(st["day_min"][idx], vol)
    st["day_hours"][idx] += 1
    st["day_gaps"][idx] += gap
    dtype = day_types(lday, pr["cn"][idx])
    _hour_of_week(st, idx, lday, lh, dtype, vol)
    _leak(ctx, idx, hour, lday, lh, np.minimum(vol, low), gap)
    _no_consumption(ctx, idx, hour, dtype, vol)


def _hour_of_week(
    st: NDArray[np.void], idx: NDArray[np.intp], lday: NDArray[np.int32], lh: NDArray[np.int64],
    dtype: NDArray[np.int8], vol: NDArray[np.float64],
) -> None:  # fmt: skip
    """Robust running mean per hour of the week; public holidays count as Sundays."""
    slot = week_slot(lday, lh, dtype)
    n = st["how_n"][idx, slot].astype(np.float64)
    old = st["how"][idx, slot].astype(np.float64)
    st["day_norm"][idx] += np.where(n > 0, old, vol)
    x = np.where(n >= 2, np.minimum(vol, 4.0 * old + 0.05), vol)
    st["how"][idx, slot] = old + (x - old) / np.minimum(n + 1.0, 4.0)
    st["how_n"][idx, slot] = np.minimum(n + 1, 255).astype(np.uint8)


def _leak(
    ctx: Context, idx: NDArray[np.intp], hour: NDArray[np.int64], lday: NDArray[np.int32],
    lh: NDArray[np.int64], vol: NDArray[np.float64], gap: NDArray[np.bool_],
) -> None:  # fmt: skip
    """Meters that normally stop (homes): continuous flow and night flow, hour by hour. Meters
    whose normal minimum is learned are judged once a day (:mod:`detectors.daily`). An hour
    filled in from a long gap between readings says nothing about when water flowed: it neither
    extends nor breaks a run."""
    st, pr = ctx.state, ctx.params
    thr = pr["leak_thr"][idx].astype(np.float64)  # above zero: a home's normal minimum is 0
    on = enabled(pr, idx, "leak") & ~pr["leak_learn"][idx]
    above = on & (vol >= thr - EPS_M3)
    # A gap's hours share its volume evenly. If even that share is below the threshold, some hour
    # of the gap was, so the run breaks; otherwise the gap can neither extend nor break it.
    hold = gap & above
    run = np.where(hold, st["leak_run"][idx], np.where(above & ~gap, st["leak_run"][idx] + 1, 0))
    # Learned-baseline meters count days in leak_run (detectors.daily), not hours.
    st["leak_run"][idx] = np.where(pr["leak_learn"][idx], st["leak_run"][idx], run)
    opened = rule_open(st, idx, "leak")
    end = (hour + 1) * 3600
    # Continuous flow: a full window without a quiet hour.
    hit = above & ~gap & (run >= pr["leak_window"][idx])
    if hit.any():
        rows = np.flatnonzero(hit)
        k = idx[rows]
        window = pr["leak_window"][k].astype(np.int64)
        hours = (hour[rows, None] - np.arange(24)[None, :]) % 24
        mins = np.where(
            np.arange(24)[None, :] < window[:, None], st["ring"][k[:, None], hours], np.inf
        )
        rate = mins.min(axis=1)
        sev = np.where(
            (rate >= pr["leak_crit"][k]) | (run[rows] >= pr["leak_crit_h"][k]), 2, 1
        ).astype(np.int8)
        back = st["leak_quiet"][k] >= 0  # the leak returned before its alert closed
        st["leak_quiet"][k] = -1
        fresh = ~opened[rows] | back | (st["leak_day"][k] != lday[rows]) | (sev > st["leak_sev"][k])
        if fresh.any():
            r = rows[fresh]
            kk = idx[r]
            rr = rate[fresh]
            ctx.emit.raise_(
                "leak", kk, (hour[r] - run[r] + 1) * 3600, end[r], sev[fresh],
                lambda j: {
                    "rule": "continuous_flow",
                    "leak_lph": round(float(rr[j]) * 1000.0, 1),
                    "min_flow_lph": round(float(rr[j]) * 1000.0, 1),
                    "normal_min_lph": 0.0,
                    "threshold_lph": round(float(thr[r[j]]) * 1000.0, 1),
                    "window_h": int(run[r[j]]),
                },
                lambda j: round(float(rr[j]) * 24.0, 3),
            )  # fmt: skip
            st["leak_day"][kk] = lday[r]
            st["leak_sev"][kk] = sev[fresh]
            st["leak_rate"][kk] = rr
    # Night flow: the night's quietest hour above the threshold, several nights in a row.
    night = (lh >= pr["night_from"][idx]) & (lh < pr["night_to"][idx]) & ~gap
    st["night_min"][idx] = np.where(
        night, np.minimum(st["night_min"][idx], vol), st["night_min"][idx]
    )
    closing = np.flatnonzero(lh == pr["night_to"][idx] - 1)
    if closing.size:
        k = idx[closing]
        nm = st["night_min"][k].astype(np.float64)
        good = on[closing] & np.isfinite(nm) & (nm >= thr[closing] - EPS_M3)
        nights = np.where(good, st["night_run"][k] + 1, 0)
        st["night_run"][k] = nights
        st["night_min"][k] = np.inf
        hit = good & (nights >= pr["night_n"][k]) & ~rule_open(st, k, "leak")
        if hit.any():
            r = closing[hit]
            kk = idx[r]
            rate = nm[hit]
            nn = nights[hit].astype(np.int64)
            ctx.emit.raise_(
                "leak", kk, (hour[r] + 1) * 3600 - nn * 86400, end[r], 1,
                lambda j: {
                    "rule": "night_flow",
                    "nights": int(nn[j]),
                    "leak_lph": round(float(rate[j]) * 1000.0, 1),
                    "night_min_flow_lph": round(float(nm[hit][j]) * 1000.0, 1),
                    "normal_min_lph": 0.0,
                    "threshold_lph": round(float(thr[r[j]]) * 1000.0, 1),
                },
                lambda j: round(float(rate[j]) * 24.0, 3),
            )  # fmt: skip
            st["leak_day"][kk] = lday[r]
            st["leak_sev"][kk] = 1
            st["leak_rate"][kk] = rate
    # A zero hour ends a leak (hours between zero and the threshold only stop the run): a drip
    # that wavers around the threshold stays one alert instead of reopening every day.
    # The alert closes once no leak has come back for leak_hold hours after that zero hour, so a
    # leak that stops now and then stays one alert.
    quiet = opened & on & ~gap & (vol < ZERO_M3) & (st["leak_quiet"][idx] < 0)
    st["leak_quiet"][idx] = np.where(quiet, end, st["leak_quiet"][idx])
    since = st["leak_quiet"][idx]
    done = np.flatnonzero(on & (since >= 0) & (end >= since + pr["leak_hold_s"][idx]))
    if done.size:
        k = idx[done]
        ctx.emit.clear("leak", k, since[done])
        st["leak_rate"][k] = 0.0
        st["leak_sev"][k] = 0
        st["leak_day"][k] = -1
        st["leak_quiet"][k] = -1


def _no_consumption(
    ctx: Context, idx: NDArray[np.intp], hour: NDArray[np.int64], dtype: NDArray[np.int8],
    vol: NDArray[np.float64],
) -> None:  # fmt: skip
    """The register has not moved; public holidays do not count (homes empty over Spring
    Festival are travelling, not vacant)."""
    st, pr = ctx.state, ctx.params
    zero = vol < ZERO_M3
    moved = np.flatnonzero(~zero & (st["zero_since"][idx] >= 0))
    if moved.size:
        k = idx[moved]
        ctx.emit.clear("no_consumption", k, hour[moved] * 3600)
        st["zero_since"][k] = -1
        st["zero_h"][k] = 0
        st["zero_sev"][k] = 0
    z = np.flatnonzero(zero)
    if z.size == 0:
        return
    k = idx[z]
    st["zero_since"][k] = np.where(st["zero_since"][k] < 0, hour[z] * 3600, st["zero_since"][k])
    st["zero_h"][k] += (dtype[z] < DayType.HOLIDAY).astype(np.int32)
    zh = st["zero_h"][k].astype(np.float64)
    sev = np.where(zh >= pr["nc_alarm_h"][k], 2, np.where(zh >= pr["nc_h"][k], 1, 0)).astype(
        np.int8
    )
    up = np.flatnonzero((sev > st["zero_sev"][k]) & enabled(pr, k, "no_consumption"))
    if up.size:
        kk = k[up]
        ctx.emit.raise_(
            "no_consumption", kk, st["zero_since"][kk], (hour[z[up]] + 1) * 3600, sev[up],
            lambda j: {
                "days_without_use": round(float(zh[up[j]]) / 24.0, 1),
                "since": utc(int(st["zero_since"][kk[j]])).isoformat(),
                "stage": "alarm" if sev[up[j]] == 2 else "flag",
            },
        )  # fmt: skip
        st["zero_sev"][kk] = sev[up]
