"""Fault injection with ground truth: edits a ``FleetState`` in place, one label per event.

Every event is drawn from the stage's own generator, so the same seed gives the same arrays and the
same labels. Each fault type gets its own meters (a leak on a stuck or silent meter would make the
ground truth ambiguous), drawn from one shuffle of the customer meters; bulk inlet meters only ever
get the DMA-level network leak, through ``state.network_loss``.

Time convention: an event that starts at grid column ``s`` and ends at column ``e`` changes the
intervals between those instants, i.e. columns ``s+1 .. e`` of the per-interval arrays (``use``,
``measured``, ``flags``); its label says ``start = iso(s)`` and ``end = iso(e)`` (``None`` when it
lasts to the end of the scenario). States seen only at readings take the first reading that shows
them: a low-battery label starts at the first reading with the flag, a rollover label at the first
reading past the wrap. Point events (rollover, replacement) have ``end == start``.

Events start after ``warmup_days`` (detectors need some normal history first) and only where the
rest of the period is long enough to make them alertable: e.g. no consumption needs 7 days before
a detector may call it, so such an onset leaves at least ``no_consumption.min_days`` to the end.
An abnormally high run waits longer, ``abnormal_high.min_history_days``: a detector can only call
use abnormal against a baseline of the customer's normal days.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import Meter, MeterKind
from simulators.grid import Grid, local_seconds
from simulators.labels import ALERT_TYPES, Label, sort_labels
from simulators.state import FLAG_BITS, FleetState

Span = tuple[float, float]
Param = float | Span

# Meter-level types in the order their meters are taken from the shuffled customers.
METER_FAULTS = (
    "leak",
    "burst",
    "no_consumption",
    "reverse_flow",
    "tamper",
    "low_battery",
    "silent",
    "busy_day",
    "replacement",
    "rollover",
    "abnormal_high",  # new types go last, so the meters drawn for the earlier ones stay the same
)
_RATES: dict[str, float] = {
    "leak": 20.0,
    "burst": 5.0,
    "no_consumption": 10.0,
    "reverse_flow": 3.0,
    "tamper": 3.0,
    "low_battery": 5.0,
    "silent": 5.0,
    "busy_day": 20.0,
    "replacement": 3.0,
    "rollover": 3.0,
    "abnormal_high": 10.0,
}
_PARAMS: dict[str, dict[str, Param]] = {
    "leak": {
        "rate_lph": (5.0, 300.0),
        "growing_share": 0.3,
        "onset_share": (0.05, 0.3),
        "ramp_h": (6.0, 72.0),
        "repair_share": 0.2,
        "duration_days": (2.0, 10.0),
        "min_days": 2.0,
        "flag_share": 0.5,
        "flag_after_h": 24.0,
    },
    "burst": {"flow_q3": (0.3, 1.25), "duration_h": (0.5, 3.0), "flag_share": 0.5},
    "no_consumption": {"stuck_share": 0.5, "min_days": 8.0},
    "reverse_flow": {"rate_lph": (20.0, 500.0), "duration_h": (0.5, 6.0)},
    "tamper": {"magnetic_share": 0.5, "duration_h": (0.25, 48.0), "under_registration_share": 0.3},
    "low_battery": {
        "threshold_pct": (10.0, 20.0),
        "final_pct": (1.0, 8.0),
        "decline_days": (1.0, 7.0),
        "min_days": 1.0,
    },
    "silent": {"recover_share": 0.3, "duration_days": (2.0, 7.0), "min_days": 2.0},
    "busy_day": {"factor": (2.0, 3.0)},
    "abnormal_high": {"factor": (3.0, 5.0), "duration_days": (3.0, 7.0), "min_history_days": 7.0},
    "replacement": {"at_share": (0.1, 0.9)},
    "rollover": {"at_share": (0.1, 0.9)},
    "dma_imbalance": {
        "rate_share": (0.03, 0.10),
        "growing_share": 0.3,
        "onset_share": (0.05, 0.3),
        "ramp_h": (6.0, 72.0),
        "min_days": 2.0,
    },
    "battery": {"start_pct": (90.0, 100.0), "drift_pct_per_30d": (0.2, 1.5), "noise_pct": 0.3},
}
WAKING_FROM_H = 6
SHIFT_H = 3.0
_SCALARS: dict[str, float] = {"warmup_days": 2.0, "dma_leak_share": 0.25}


@dataclass(frozen=True)
class FaultConfig:
    """How many events of each type, and how they look. Built from the scenario's ``[faults]``.

    Counts are rates per 1,000 customer meters over the whole scenario period (fractions are
    rounded at random, so 2.5 events gives 2 or 3). Defaults: leak 20, burst 5, no_consumption 10,
    reverse_flow 3, tamper 3, low_battery 5, silent 5, busy_day 20, replacement 3, rollover 3,
    abnormal_high 10. Each event gets its own meter, so the rates may sum to at most 1,000.

    Top-level keys: the rates (``leak = 20.0``), ``warmup_days = 2.0`` (no event starts earlier)
    and ``dma_leak_share = 0.25`` (share of DMAs with a bulk meter that get a network leak).
    Per-type tables (``[x, y]`` is a range drawn uniformly, log-uniformly for leak rates); a
    table may hold ``per_1000`` for the rate, since TOML cannot have both ``leak = 20.0`` and
    ``[faults.leak]``:

    - leak: rate_lph [5, 300] (below ~5 L/h a 1 L register at 15 min shows nothing),
      growing_share 0.3, onset_share [0.05, 0.3] (a growing leak's first rate / final rate),
      ramp_h [6, 72], repair_share 0.2, duration_days [2, 10] (until repair), min_days 2,
      flag_share 0.5 (meters that raise their own ``leak`` flag), flag_after_h 24
    - burst: flow_q3 [0.3, 1.25] (added flow / q3; the total is capped at q4 = 1.25 q3),
      duration_h [0.5, 3] (at least 30 min), flag_share 0.5
    - no_consumption: stuck_share 0.5 (the rest are vacancies), min_days 8
    - reverse_flow: rate_lph [20, 500], duration_h [0.5, 6]
    - tamper: magnetic_share 0.5, duration_h [0.25, 48], under_registration_share 0.3
    - low_battery: threshold_pct [10, 20] (where the meter sets its flag), final_pct [1, 8],
      decline_days [1, 7], min_days 1 (left after the flag)
    - silent: recover_share 0.3, duration_days [2, 7], min_days 2
    - busy_day: factor [2, 3] (one local day's use times this; normal variation, no alert)
    - abnormal_high: factor [3, 5] (use times this, capped at q4, over a run of whole local days),
      duration_days [3, 7] (whole days; shortened to what is left, but at least the low end),
      min_history_days 7 (the run starts no earlier, so detectors have a baseline first). Only
      runs where the customer used water every day qualify (an empty home times 4 is still empty)
    - replacement, rollover: at_share [0.1, 0.9] (where in the period)
    - dma_imbalance: rate_share [0.03, 0.10] (of the DMA's mean customer inflow),
      growing_share 0.3, onset_share [0.05, 0.3], ramp_h [6, 72], min_days 2
    - battery (everyone's normal drift): start_pct [90, 100], drift_pct_per_30d [0.2, 1.5],
      noise_pct 0.3
    """

    rates: Mapping[str, float] = field(default_factory=lambda: dict(_RATES))
    params: Mapping[str, Mapping[str, Param]] = field(
        default_factory=lambda: {k: dict(v) for k, v in _PARAMS.items()}
    )
    warmup_days: float = _SCALARS["warmup_days"]
    dma_leak_share: float = _SCALARS["dma_leak_share"]

    def rate(self, kind: str) -> float:
        return float(self.rates.get(kind, 0.0))

    def num(self, kind: str, key: str) -> float:
        value = self.params.get(kind, {}).get(key, _PARAMS[kind][key])
        if isinstance(value, tuple):
            raise TypeError(f"faults.{kind}.{key} is a range")
        return float(value)

    def span(self, kind: str, key: str) -> Span:
        value = self.params.get(kind, {}).get(key, _PARAMS[kind][key])
        if not isinstance(value, tuple):
            raise TypeError(f"faults.{kind}.{key} is not a range")
        return value

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> FaultConfig:
        """The config of a ``[faults]`` table; unknown keys and bad values raise ValueError."""
        rates = dict(_RATES)
        params = {k: dict(v) for k, v in _PARAMS.items()}
        scalars = dict(_SCALARS)
        for key, value in table.items():
            where = f"faults.{key}"
            if key in scalars:
                scalars[key] = _number(where, value)
            elif key in rates and not isinstance(value, Mapping):
                rates[key] = _number(where, value)
            elif key in params and isinstance(value, Mapping):
                for pkey, pvalue in value.items():
                    pwhere = f"{where}.{pkey}"
                    if pkey == "per_1000" and key in rates:
                        rates[key] = _number(pwhere, pvalue)
                    elif pkey in params[key]:
                        params[key][pkey] = _param(pwhere, pvalue, params[key][pkey])
                    else:
                        raise ValueError(f"unknown key {pwhere}")
            elif key in params:
                raise ValueError(f"{where} must be a table")
            else:
                raise ValueError(f"unknown key {where}")
        if scalars["dma_leak_share"] > 1:
            raise ValueError("faults.dma_leak_share must be at most 1")
        if sum(rates.values()) > 1000:
            raise ValueError("fault rates sum to more than 1,000 per 1,000 meters")
        cfg = cls(rates, params, scalars["warmup_days"], scalars["dma_leak_share"])
        for kind in ("leak", "reverse_flow"):
            if cfg.span(kind, "rate_lph")[0] <= 0:
                raise ValueError(f"faults.{kind}.rate_lph must be above 0 (drawn log-uniformly)")
        if cfg.span("low_battery", "final_pct")[1] >= cfg.span("low_battery", "threshold_pct")[0]:
            raise ValueError("faults.low_battery.final_pct must stay below threshold_pct")
        lo, hi = _whole_days(cfg)
        if lo < 1 or lo > hi:
            raise ValueError("faults.abnormal_high.duration_days must span a whole day, at least 1")
        return cfg


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{where} must be >= 0")
    return float(value)


def _param(where: str, value: Any, default: Param) -> Param:
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"{where} must be a range [low, high]")
        lo, hi = _number(where, value[0]), _number(where, value[1])
        if lo > hi:
            raise ValueError(f"{where} must have low <= high")
        return (lo, hi)
    number = _number(where, value)
    if where.endswith("_share") and number > 1:
        raise ValueError(f"{where} must be at most 1")
    return number


def _whole_days(cfg: FaultConfig) -> tuple[int, int]:
    """The whole-day durations inside ``abnormal_high.duration_days``: a run is local days."""
    lo, hi = cfg.span("abnormal_high", "duration_days")
    return math.ceil(lo), math.floor(hi)


def _r(x: float, digits: int = 3) -> float:
    """Labelled values are rounded, and the rounded value is what gets injected."""
    return round(float(x), digits)


@dataclass
class _Ctx:
    state: FleetState
    meters: Sequence[Meter]
    grid: Grid
    rng: np.random.Generator
    cfg: FaultConfig
    _days: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return self.grid.steps - 1

    @property
    def dt_h(self) -> float:
        return self.grid.interval_s / 3600

    def cols(self, hours: float) -> int:
        return max(1, round(hours * 3600 / self.grid.interval_s))

    @property
    def warmup(self) -> int:
        return round(self.cfg.warmup_days * 86400 / self.grid.interval_s)

    def onset(self, tail: int) -> int | None:
        """A start column after the warm-up that leaves ``tail`` columns to the end, if any."""
        lo, hi = self.warmup, self.last - tail
        return None if hi < lo else int(self.rng.integers(lo, hi + 1))

    def uniform(self, kind: str, key: str) -> float:
        lo, hi = self.cfg.span(kind, key)
        return float(self.rng.uniform(lo, hi))

    def loguniform(self, kind: str, key: str) -> float:
        lo, hi = self.cfg.span(kind, key)
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))

    def chance(self, kind: str, key: str) -> bool:
        return bool(self.rng.random() < self.cfg.num(kind, key))

    def iso(self, k: int) -> str:
        return self.grid.iso(k)

    def end_iso(self, e: int) -> str | None:
        return None if e >= self.last else self.grid.iso(e)

    def local_days(self, tz: str) -> list[tuple[int, int]]:
        """(first, last) columns of whole local days in ``tz`` after the warm-up."""
        if tz not in self._days:
            zone, grid = ZoneInfo(tz), self.grid
            day = datetime.fromtimestamp(grid.start_s, zone).date()
            days = []
            while (end := datetime.combine(day + timedelta(days=1), time(), zone)).timestamp() <= (
                grid.end_s
            ):
                begin = datetime.combine(day, time(), zone).timestamp()
                if begin >= grid.start_s + self.warmup * grid.interval_s:
                    days.append((grid.step_at(begin), grid.step_at(end.timestamp())))
                day += timedelta(days=1)
            self._days[tz] = days
        return self._days[tz]


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    whole = math.floor(x)
    return whole + int(rng.random() < x - whole)


def _ramp(first: float, final: float, ramp_cols: int, n: int) -> NDArray[np.float64]:
    """Per-interval rates of a flow that grows linearly from ``first`` to ``final``."""
    return first + (final - first) * np.minimum(1.0, np.arange(n) / ramp_cols)


def _label(c: _Ctx, m: int, kind: str, s: int, end: str | None, **params: Any) -> Label:
    return Label(c.meters[m].meter_id, kind, c.iso(s), end, kind in ALERT_TYPES, params)


def _leak(c: _Ctx, m: int) -> Label | None:
    s = c.onset(c.cols(24 * c.cfg.num("leak", "min_days")))
    if s is None:
        return None
    rate = _r(c.loguniform("leak", "rate_lph"))
    growing = c.chance("leak", "growing_share")
    first = _r(rate * c.uniform("leak", "onset_share")) if growing else rate
    ramp = c.cols(c.uniform("leak", "ramp_h")) if growing else 1
    e = c.last
    if c.chance("leak", "repair_share"):
        e = min(e, s + c.cols(24 * c.uniform("leak", "duration_days")))
    ramp = max(1, min(ramp, e - s - 1))  # the labelled rate is reached before the leak ends
    c.state.use[m, s + 1 : e + 1] += _ramp(first, rate, ramp, e - s) * (c.dt_h / 1000)
    flag_from = s + c.cols(c.cfg.num("leak", "flag_after_h"))  # meters flag a long steady flow
    flagged = c.chance("leak", "flag_share") and flag_from <= e
    if flagged:
        c.state.flags[m, flag_from : e + 1] |= FLAG_BITS["leak"]
    ramp_h = _r(ramp * c.dt_h) if growing else 0.0
    return _label(
        c,
        m,
        "leak",
        s,
        c.end_iso(e),
        rate_lph=rate,
        growing=growing,
        onset_rate_lph=first,
        ramp_h=ramp_h,
        meter_flag=flagged,
    )


def _burst(c: _Ctx, m: int) -> Label | None:
    q3 = c.meters[m].q3_m3h
    n = max(c.cols(c.uniform("burst", "duration_h")), math.ceil(1800 / c.grid.interval_s))
    s = c.onset(n)
    if s is None:
        return None
    flow = _r(q3 * c.uniform("burst", "flow_q3"))
    seg = c.state.use[m, s + 1 : s + n + 1]
    seg += flow * c.dt_h
    np.minimum(seg, 1.25 * q3 * c.dt_h, out=seg)
    flagged = c.chance("burst", "flag_share")
    if flagged:
        c.state.flags[m, s + 1 : s + n + 1] |= FLAG_BITS["burst"]
    return _label(
        c,
        m,
        "burst",
        s,
        c.iso(s + n),
        flow_m3h=flow,
        q3_m3h=q3,
        duration_h=_r(n * c.dt_h),
        meter_flag=flagged,
    )


def _no_consumption(c: _Ctx, m: int) -> Label | None:
    s = c.onset(c.cols(24 * c.cfg.num("no_consumption", "min_days")))
    if s is None:
        return None
    stuck = c.chance("no_consumption", "stuck_share")
    if stuck:
        c.state.measured[m, s + 1 :] = False
    else:
        c.state.use[m, s + 1 :] = 0.0
    return _label(c, m, "no_consumption", s, None, cause="stuck" if stuck else "vacant")


def _reverse_flow(c: _Ctx, m: int) -> Label | None:
    n = c.cols(c.uniform("reverse_flow", "duration_h"))
    s = c.onset(n)
    if s is None:
        return None
    rate = _r(c.loguniform("reverse_flow", "rate_lph"))
    c.state.use[m, s + 1 : s + n + 1] = -rate * c.dt_h / 1000
    c.state.flags[m, s + 1 : s + n + 1] |= FLAG_BITS["reverse"]
    return _label(c, m, "reverse_flow", s, c.iso(s + n), rate_lph=rate, duration_h=_r(n * c.dt_h))


def _tamper(c: _Ctx, m: int) -> Label | None:
    n = c.cols(c.uniform("tamper", "duration_h"))
    s = c.onset(n)
    if s is None:
        return None
    flag = "magnetic" if c.chance("tamper", "magnetic_share") else "tamper"
    c.state.flags[m, s + 1 : s + n + 1] |= FLAG_BITS[flag]
    under = c.chance("tamper", "under_registration_share")
    if under:
        c.state.measured[m, s + 1 : s + n + 1] = False
    return _label(
        c,
        m,
        "tamper",
        s,
        c.iso(s + n),
        flag=flag,
        under_registration=under,
        duration_h=_r(n * c.dt_h),
    )


def _low_battery(c: _Ctx, m: int) -> Label | None:
    threshold = _r(c.uniform("low_battery", "threshold_pct"))
    final = _r(c.uniform("low_battery", "final_pct"))
    n = c.cols(24 * c.uniform("low_battery", "decline_days"))
    tail = c.cols(24 * c.cfg.num("low_battery", "min_days"))
    n = min(n, c.last - tail - c.warmup)  # a short period gets a faster decline
    s = c.onset(tail + n) if n >= 1 else None
    if s is None:
        return None
    battery = c.state.battery_pct[m]
    level0 = float(battery[s])
    k = np.arange(1, c.last - s + 1)
    level = level0 + (final - level0) * np.minimum(1.0, k / n)
    noise = c.rng.standard_normal(k.size) * c.cfg.num("battery", "noise_pct")
    battery[s + 1 :] = np.clip(level + noise, 0.0, 100.0)
    below = np.flatnonzero(battery[s + 1 :] < threshold)
    if below.size == 0:
        return None
    f = s + 1 + int(below[0])
    c.state.flags[m, f:] |= FLAG_BITS["low_battery"]
    return _label(
        c,
        m,
        "low_battery",
        f,
        None,
        threshold_pct=threshold,
        final_pct=final,
        decline_start=c.iso(s),
    )


def _silent(c: _Ctx, m: int) -> Label | None:
    s = c.onset(c.cols(24 * c.cfg.num("silent", "min_days")))
    if s is None:
        return None
    e = c.grid.steps  # the first reading sent again; steps = never
    if c.chance("silent", "recover_share"):
        e = s + 1 + c.cols(24 * c.uniform("silent", "duration_days"))
        e = c.grid.steps if e > c.last else e
    c.state.silent[m, s + 1 : e] = True
    end = None if e > c.last else c.iso(e)
    return _label(c, m, "silent", s, end, recovered=end is not None)


def _busy_day(c: _Ctx, m: int) -> Label | None:
    meter = c.meters[m]
    days = c.local_days(meter.timezone)
    if not days:
        return None
    a, b = days[int(c.rng.integers(len(days)))]
    factor = _r(c.uniform("busy_day", "factor"))
    seg = c.state.use[m, a + 1 : b + 1]
    seg *= factor
    np.minimum(seg, 1.25 * meter.q3_m3h * c.dt_h, out=seg)
    return _label(c, m, "busy_day", a, c.iso(b), factor=factor)


def _abnormal_high(c: _Ctx, m: int) -> Label | None:
    """A run of whole local days at ``factor`` times the customer's own use.

    The extra water is more of the customer's own activities (a second shift, guests, a tenant,
    a production run): each day of the run gets ``factor - 1`` copies of the waking hours
    (06:00-24:00) of earlier days of the same meter added, each moved by up to 3 hours, so the
    day's volume rises by about the factor while single uses keep their size (scaling every
    interval would turn a shower into a 200 L burst, and copied nights would look like a leak).
    Runs with a day of no use are skipped: a label for a rise the data never shows would score a
    detector for missing nothing.
    """
    meter = c.meters[m]
    history = round(c.cfg.num("abnormal_high", "min_history_days") * 86400 / c.grid.interval_s)
    days = [d for d in c.local_days(meter.timezone) if d[0] >= history]
    shortest, longest = _whole_days(c.cfg)
    n = min(int(c.rng.integers(shortest, longest + 1)), len(days))
    if n < shortest:
        return None
    used = np.array([c.state.use[m, a + 1 : b + 1].sum() > 0 for a, b in days])
    starts = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(used, n).all(axis=1))
    if starts.size == 0:
        return None
    first = int(starts[c.rng.integers(starts.size)])
    a, b = days[first][0], days[first + n - 1][1]
    use = c.state.use[m]
    run = days[first : first + n]
    earlier = [
        (x, y) for x, y in c.local_days(meter.timezone)
        if y <= a and (y - x) == (run[0][1] - run[0][0]) and use[x + 1 : y + 1].sum() > 0
    ]  # fmt: skip
    if not earlier:
        return None
    factor = _r(c.uniform("abnormal_high", "factor"))
    whole, part = divmod(factor - 1.0, 1.0)
    for da, db in run:
        if db - da != run[0][1] - run[0][0]:
            continue  # a day of another length (a clock change) keeps its own use
        picks = c.rng.integers(len(earlier), size=int(whole) + 1)
        extra = np.zeros(db - da)
        for j, p in enumerate(picks):
            x, y = earlier[int(p)]
            # The same activities, not at the same minute: each copy moves up to 3 hours.
            shift = int(c.rng.integers(-c.cols(SHIFT_H), c.cols(SHIFT_H) + 1))
            copy = np.roll(use[x + 1 : y + 1], shift)
            extra += copy * (part if j == int(whole) else 1.0)
        # Intervals ending 06:15..24:00 local: the extra activities happen while people are up.
        local_hour = local_seconds(c.grid.ts[da:db], meter.timezone) % 86400 // 3600
        extra[local_hour < WAKING_FROM_H] = 0.0
        seg = use[da + 1 : db + 1]
        seg += extra
        np.minimum(seg, 1.25 * meter.q3_m3h * c.dt_h, out=seg)
    return _label(c, m, "abnormal_high", a, c.iso(b), factor=factor, days=n)


def _replacement(c: _Ctx, m: int) -> Label | None:
    r = min(max(1, round(c.uniform("replacement", "at_share") * c.last)), c.last)
    c.state.replaced_at[m] = r
    return _label(c, m, "replacement", r, c.iso(r))


def _rollover(c: _Ctx, m: int) -> Label | None:
    """Set the initial register so that the register wraps at a column with clear use.

    Assumes registers are ``initial_l + floor(cumsum(use where measured) * 1000)`` litres, wrapped
    modulo ``register_max_m3``; the wrap is put where the litre count moves by several litres, so
    rounding differences of a litre either way still wrap at the labelled column.
    """
    meter = c.meters[m]
    counted = np.where(c.state.measured[m], c.state.use[m], 0.0)
    litres = np.floor(np.cumsum(counted) * 1000.0)
    steps = np.diff(litres)  # steps[k - 1]: litres counted in the interval ending at column k
    lo_share, hi_share = c.cfg.span("rollover", "at_share")
    lo = max(1, round(lo_share * c.last))
    hi = max(lo, round(hi_share * c.last))
    for need in (4.0, 1.0):
        candidates = np.flatnonzero(steps[lo - 1 : hi] >= need)
        if candidates.size:
            break
    else:
        return None
    w = lo + int(candidates[c.rng.integers(candidates.size)])
    below_max = max(1, int(steps[w - 1]) // 2)
    initial_l = round(meter.register_max_m3 * 1000) - int(litres[w - 1]) - below_max
    c.state.initial_register_m3[m] = initial_l / 1000
    return _label(
        c,
        m,
        "rollover",
        w,
        c.iso(w),
        register_max_m3=meter.register_max_m3,
        initial_register_m3=initial_l / 1000,
    )


_INJECT: dict[str, Callable[[_Ctx, int], Label | None]] = {
    "leak": _leak,
    "burst": _burst,
    "no_consumption": _no_consumption,
    "reverse_flow": _reverse_flow,
    "tamper": _tamper,
    "low_battery": _low_battery,
    "silent": _silent,
    "busy_day": _busy_day,
    "replacement": _replacement,
    "rollover": _rollover,
    "abnormal_high": _abnormal_high,
}


def _baseline_battery(c: _Ctx) -> None:
    """Everyone's battery: a slow, slightly noisy decline from near full, never near low."""
    n = len(c.meters)
    start = c.rng.uniform(*c.cfg.span("battery", "start_pct"), n).astype(np.float32)
    per_day = c.rng.uniform(*c.cfg.span("battery", "drift_pct_per_30d"), n) / 30
    days = np.arange(c.grid.steps, dtype=np.float32) * np.float32(c.grid.interval_s / 86400)
    battery = c.state.battery_pct
    np.multiply.outer(-per_day.astype(np.float32), days, out=battery)
    battery += start[:, None]
    noise = c.rng.standard_normal(battery.shape, dtype=np.float32)
    noise *= np.float32(c.cfg.num("battery", "noise_pct"))
    battery += noise
    np.clip(battery, 0.0, 100.0, out=battery)


def _dma_leaks(c: _Ctx, customers: NDArray[np.intp]) -> list[Label]:
    """Network leaks into some DMAs: extra inflow that no customer meter sees."""
    steps = c.grid.steps
    for dma in sorted({m.dma for m in c.meters if m.dma is not None}):
        c.state.network_loss.setdefault(dma, np.zeros(steps, dtype=np.float64))
    inlet = {m.dma: m.meter_id for m in c.meters if m.kind is MeterKind.BULK and m.dma is not None}
    dmas = sorted(inlet)
    n = min(_stochastic_round(c.cfg.dma_leak_share * len(dmas), c.rng), len(dmas))
    customer_dma = np.array([c.meters[i].dma for i in customers], dtype=object)
    labels = []
    for i in sorted(int(i) for i in c.rng.choice(len(dmas), size=n, replace=False)):
        dma = dmas[i]
        rows = customers[customer_dma == dma]
        inflow = float(c.state.use[rows].sum()) / max(1, steps - 1) / c.dt_h
        s = c.onset(c.cols(24 * c.cfg.num("dma_imbalance", "min_days")))
        if inflow <= 0 or s is None:
            continue
        share = _r(c.uniform("dma_imbalance", "rate_share"), 4)
        rate = _r(inflow * share, 4)
        growing = c.chance("dma_imbalance", "growing_share")
        first = _r(rate * c.uniform("dma_imbalance", "onset_share"), 4) if growing else rate
        ramp = c.cols(c.uniform("dma_imbalance", "ramp_h")) if growing else 1
        ramp = max(1, min(ramp, c.last - s - 1))
        c.state.network_loss[dma][s + 1 :] += _ramp(first, rate, ramp, c.last - s) * c.dt_h
        params = {
            "dma": dma,
            "rate_m3h": rate,
            "share_of_inflow": share,
            "growing": growing,
            "onset_rate_m3h": first,
            "ramp_h": _r(ramp * c.dt_h) if growing else 0.0,
        }
        labels.append(Label(inlet[dma], "dma_imbalance", c.iso(s), None, True, params))
    return labels


def inject(
    state: FleetState,
    meters: Sequence[Meter],
    grid: Grid,
    rng: np.random.Generator,
    cfg: FaultConfig,
) -> list[Label]:
    """Inject the configured faults and noise events into ``state``; return their labels, sorted.

    ``state.use`` must already hold normal consumption (zero rows for bulk meters). Sets everyone's
    battery; sets ``initial_register_m3`` only for rollover meters (others keep theirs); adds a
    zero ``network_loss`` series for every DMA that has none.
    """
    if state.use.shape != (len(meters), grid.steps):
        raise ValueError(
            f"state is {state.use.shape}, not meters x steps {(len(meters), grid.steps)}"
        )
    c = _Ctx(state, meters, grid, rng, cfg)
    _baseline_battery(c)
    customers = np.array(
        [i for i, m in enumerate(meters) if m.kind is not MeterKind.BULK], dtype=np.intp
    )
    pool = rng.permutation(customers)
    labels: list[Label] = []
    taken = 0
    for kind in METER_FAULTS:
        n = min(_stochastic_round(cfg.rate(kind) * customers.size / 1000, rng), pool.size - taken)
        for m in pool[taken : taken + n]:
            label = _INJECT[kind](c, int(m))
            if label is not None:
                labels.append(label)
        taken += n
    labels.extend(_dma_leaks(c, customers))
    return sort_labels(labels)
