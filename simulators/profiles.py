"""The PROFILES stage: how much water each customer meter passes in each interval.

Water is used in events (a tap, a flush, a shower, a washing-machine fill), so an interval's volume
is a sum of events and zero intervals arise by themselves, as in real homes. Per meter kind:

- residential: events of four kinds by hour of day, weekday and weekend timetables, a household
  of 1–5 people (so daily volumes are skewed like real ones), hours at home or out (``presence``,
  which leaves many waking hours without use), day-to-day variation, trips away, vacant homes, a
  few homes with a dripping tap, and travel over Spring Festival and Golden Week.
- commercial: offices (weekdays, business hours, closed on holidays) and shops/restaurants (every
  day, lunch and dinner peaks, busier at weekends); many small events.
- industrial: two shifts (06–22, little at weekends and holidays) or round the clock; a near
  continuous process flow, slow to restart after Spring Festival.

Every kind has a seasonal cycle (summer higher) and a per-meter scale. Volumes never exceed q4.
The residential model is calibrated against 92 real homes (``bench/calibration.py``,
``docs/calibration.md``). Everything is drawn from the generator passed in, in a fixed order, so
the same seed gives the same array; the work is numpy over blocks of meters, never per reading.

The compound Poisson trick keeps this fast: the sum of N events whose sizes are Gamma(a, s) is
Gamma(N a, s), so each cell needs one Poisson count per event kind and one gamma draw when busy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Any, NamedTuple, TypeGuard

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import Meter, MeterKind
from meterwatch.holidays import NATIONAL_DAY, SPRING_FESTIVAL, DayType, day_type, holiday_at
from simulators.grid import Grid, local_seconds


@dataclass(frozen=True)
class ProfileConfig:
    """The ``[profiles]`` table of a scenario; every key is optional.

    Residential defaults are the calibrated ones (see ``docs/calibration.md``); household sizes
    follow China's 2020 census (1 to 5+ people). Commercial and industrial daily volumes are
    ``hours_at_q3`` hours of running at the meter's q3, as in ``simulators.fleet``.
    """

    residential_per_capita_l: float = 172.0  # median litres per person per day
    residential_per_capita_sigma: float = 0.4  # log-normal spread between homes
    residential_household_sizes: tuple[float, ...] = (0.25, 0.30, 0.21, 0.13, 0.11)
    residential_household_exponent: float = 0.5  # volume grows as people ** exponent
    residential_day_sigma: float = 0.18  # day-to-day log-normal spread of a home
    residential_presence: float = 0.65  # chance a home is in and active in a given hour
    residential_weekend_factor: float = 1.04  # weekend day volume over a weekday's
    residential_vacant_share: float = 0.08  # homes that are mostly empty
    residential_away_share: float = 0.05  # mean share of days a home is empty (trips)
    residential_trip_days: float = 3.0  # mean length of a trip
    residential_drip_share: float = 0.02  # homes with a continuously dripping tap
    residential_drip_lph: float = 2.0  # median drip, L/h
    residential_spring_festival_away: float = 0.3  # homes away over Spring Festival
    residential_golden_week_away: float = 0.15
    residential_holiday_away: float = 0.05  # other public holidays
    residential_summer_amplitude: float = 0.12
    commercial_office_share: float = 0.55  # the rest are shops and restaurants
    commercial_hours_at_q3: float = 0.8
    commercial_scale_sigma: float = 0.5
    commercial_day_sigma: float = 0.12
    commercial_event_l: float = 6.0
    commercial_summer_amplitude: float = 0.15  # cooling towers, more customers
    industrial_two_shift_share: float = 0.6  # the rest run round the clock
    industrial_hours_at_q3: float = 2.5
    industrial_scale_sigma: float = 0.4
    industrial_day_sigma: float = 0.08
    industrial_summer_amplitude: float = 0.05
    restart_days: int = 10  # days offices and factories take to restart after Spring Festival
    summer_peak_doy: int = 200  # day of year of the seasonal maximum (mid July)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> ProfileConfig:
        """The config from a scenario's ``[profiles]`` table; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown [profiles] keys {unknown}; known: {sorted(known)}")
        return cls(**{key: _coerce(key, getattr(cls, key), raw) for key, raw in table.items()})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_share", "_away", "_presence")) and not 0 <= value <= 1:
                raise ValueError(f"{f.name} must be within [0, 1], not {value}")
            if f.name.endswith("_amplitude") and not 0 <= value < 1:
                raise ValueError(f"{f.name} must be within [0, 1), not {value}")
            if isinstance(value, float) and value < 0:
                raise ValueError(f"{f.name} must not be negative, not {value}")
        sizes = self.residential_household_sizes
        if not sizes or min(sizes) < 0 or sum(sizes) <= 0:
            raise ValueError("residential_household_sizes must be non-negative shares, not all 0")
        positive = ("residential_per_capita_l", "residential_presence", "commercial_event_l")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive")
        if self.residential_trip_days < 1 or self.restart_days < 0:
            raise ValueError("residential_trip_days >= 1 and restart_days >= 0 required")
        if not 1 <= self.summer_peak_doy <= 366:
            raise ValueError("summer_peak_doy must be a day of the year (1..366)")


def _coerce(key: str, default: object, raw: object) -> Any:
    """A TOML value as the field's type: ints stay whole, lists of numbers become tuples."""
    if isinstance(default, tuple):
        if not isinstance(raw, list | tuple) or not all(_is_number(x) for x in raw):
            raise ValueError(f"[profiles] {key} must be a list of numbers")
        return tuple(float(x) for x in raw)
    if not _is_number(raw):
        raise ValueError(f"[profiles] {key} must be a number, not {raw!r}")
    if isinstance(default, int):
        if float(raw) != int(raw):
            raise ValueError(f"[profiles] {key} must be a whole number, not {raw!r}")
        return int(raw)
    return float(raw)


def _is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Event(NamedTuple):
    size_l: float  # mean size; for industrial a share of the daily volume (see _Variant)
    shape: float  # gamma shape of the size: 1 is exponential, large is nearly fixed
    share: float  # share of the daily volume
    night: float  # rate factor 00:00–06:00 relative to the day's timetable


class _Variant(NamedTuple):
    kind: MeterKind
    table: tuple[tuple[float, ...], ...]  # relative rate by DayType and local hour
    events: tuple[_Event, ...]
    events_per_day: float  # > 0: sizes scale with the meter's volume (process flow)


def _hours(*spans: tuple[int, int, float], base: float) -> tuple[float, ...]:
    out = [base] * 24
    for first, last, value in spans:
        out[first : last + 1] = [value] * (last - first + 1)
    return tuple(out)


# Residential timetables: Chinese homes rise 6–8, cook at noon, shower in the evening; at weekends
# the morning peak comes later. Holidays follow the weekend timetable.
_HOME_WEEKDAY = (0.9, 0.45, 0.3, 0.24, 0.24, 0.45, 1.5, 2.4, 1.7, 1.0, 0.9, 1.2,
                 1.3, 0.9, 0.7, 0.7, 0.8, 1.2, 1.6, 1.8, 2.1, 2.2, 1.8, 1.3)  # fmt: skip
_HOME_WEEKEND = (1.0, 0.5, 0.34, 0.25, 0.22, 0.22, 0.4, 0.8, 1.4, 1.9, 2.0, 1.8,
                 1.6, 1.1, 0.9, 0.9, 1.0, 1.3, 1.6, 1.8, 2.0, 2.1, 1.8, 1.4)  # fmt: skip
_OFFICE = (0.03,) * 6 + (0.1, 0.5, 1.6, 2.2, 2.2, 2.3, 2.0, 1.8, 2.1, 2.1,
                         2.0, 1.6, 0.8, 0.4, 0.25, 0.15, 0.08, 0.05)  # fmt: skip
_OFFICE_CLOSED = _hours((9, 17, 0.08), base=0.04)
_SHOP = (0.05,) * 7 + (0.2, 0.5, 1.0, 1.4, 2.0, 2.3, 1.8, 1.2, 1.1, 1.2, 1.8,
                       2.4, 2.3, 1.8, 1.2, 0.6, 0.2)  # fmt: skip
_SHIFTS = _hours((6, 6, 0.8), (7, 13, 1.6), (14, 14, 1.3), (15, 21, 1.6), (22, 22, 0.6),
                 base=0.08)  # fmt: skip
_ROUND_CLOCK = _hours((7, 21, 1.05), base=0.93)


def _scaled(table: tuple[float, ...], factor: float) -> tuple[float, ...]:
    return tuple(x * factor for x in table)


_HOME_EVENTS = (
    _Event(size_l=1.5, shape=1.0, share=0.18, night=0.3),  # tap: washing hands, drinking, cooking
    _Event(size_l=7.0, shape=6.0, share=0.27, night=1.0),  # toilet flush (6–9 L) and hand wash
    _Event(size_l=50.0, shape=3.0, share=0.35, night=0.3),  # shower or bath
    _Event(size_l=30.0, shape=1.5, share=0.20, night=0.25),  # washing machine fill, cleaning
)
VARIANTS = ("home", "vacant", "office", "shop", "two_shift", "round_clock", "bulk")
HOME, VACANT, OFFICE, SHOP, TWO_SHIFT, ROUND_CLOCK, BULK = range(len(VARIANTS))


def _variants(cfg: ProfileConfig) -> dict[int, _Variant]:
    """Each variant's timetables by ``DayType`` (workday, weekend, holiday, Spring Festival).

    A table's level is the day's volume relative to a workday's, so a closed office's table is
    low everywhere; homes that stay in over Spring Festival cook and host more.
    """
    weekend = cfg.residential_weekend_factor * sum(_HOME_WEEKDAY) / sum(_HOME_WEEKEND)
    home = (
        _HOME_WEEKDAY,
        _scaled(_HOME_WEEKEND, weekend),
        _scaled(_HOME_WEEKEND, weekend * 1.05),
        _scaled(_HOME_WEEKEND, weekend * 1.1),
    )
    office = (_OFFICE, _OFFICE_CLOSED, _OFFICE_CLOSED, _scaled(_OFFICE_CLOSED, 0.6))
    shop = (_SHOP, _scaled(_SHOP, 1.15), _scaled(_SHOP, 1.1), _scaled(_SHOP, 0.35))
    shifts = (_SHIFTS, _scaled(_SHIFTS, 0.3), _scaled(_SHIFTS, 0.15), _hours(base=0.06))
    clock = tuple(_scaled(_ROUND_CLOCK, f) for f in (1.0, 0.95, 0.9, 0.6))
    # Restrooms, kitchens and cleaning: many small events. Process water: ~2000 batches a day
    # whose size follows the plant's volume, so the flow is nearly continuous.
    small = (_Event(cfg.commercial_event_l, 2.0, 1.0, 1.0),)
    process = (_Event(1.0, 4.0, 1.0, 1.0),)
    return {
        HOME: _Variant(MeterKind.RESIDENTIAL, home, _HOME_EVENTS, 0.0),
        VACANT: _Variant(MeterKind.RESIDENTIAL, home, _HOME_EVENTS, 0.0),
        OFFICE: _Variant(MeterKind.COMMERCIAL, office, small, 0.0),
        SHOP: _Variant(MeterKind.COMMERCIAL, shop, small, 0.0),
        TWO_SHIFT: _Variant(MeterKind.INDUSTRIAL, shifts, process, 2000.0),
        ROUND_CLOCK: _Variant(MeterKind.INDUSTRIAL, clock, process, 2000.0),
    }


@dataclass(frozen=True, eq=False)
class Profiles:
    """The use array and what was drawn for each meter, for labels and checks."""

    use: NDArray[np.float64]  # (M, T) m3 through the meter in the interval ending at column k
    variant: NDArray[np.int8]  # (M,) index into VARIANTS
    daily_l: NDArray[np.float64]  # (M,) volume of a typical workday, litres
    drip_lph: NDArray[np.float64]  # (M,) continuous background flow, 0 for most meters
    days: NDArray[np.datetime64]  # (D,) local days the grid touches
    away: NDArray[np.bool_]  # (M, D) nobody home: a trip, holiday travel or a vacant home


_NORMAL = NormalDist()
_CHUNK_CELLS = 1 << 21  # cells per block of meters: bounded temporaries, whatever the fleet size
_VACANT_VISITS = (0.02, 0.25)  # range of the daily chance that someone uses a vacant home
_RESTART_FROM = 0.4  # level of offices and factories the first day after Spring Festival


def consumption(
    meters: Sequence[Meter], grid: Grid, rng: np.random.Generator, cfg: ProfileConfig | None = None
) -> NDArray[np.float64]:
    """(M, T) m3 that flowed through each customer meter in the interval ending at column k.

    Column 0 is 0 (no interval ends there) and so are bulk meters' rows.
    """
    return simulate(meters, grid, rng, cfg).use


class _Clock(NamedTuple):
    """Where each interval (columns 1..T-1) falls in one timezone's local time."""

    day: NDArray[np.intp]  # index into the run's day axis
    hour0: NDArray[np.intp]  # hour whose centre is just before the interval's midpoint
    frac: NDArray[np.float64]  # position between that centre and the next
    block: NDArray[np.intp]  # local clock hour, counted from the first interval


def _clocks(meters: Sequence[Meter], grid: Grid) -> tuple[dict[str, _Clock], NDArray[Any]]:
    mid = grid.ts[1:] - grid.interval_s // 2
    local = {tz: local_seconds(mid, tz) for tz in sorted({m.timezone for m in meters})}
    first = min((int(s[0]) // 86400 for s in local.values()), default=0)
    last = max((int(s[-1]) // 86400 for s in local.values()), default=0)
    clocks = {}
    for tz, seconds in local.items():
        x = (seconds % 86400) / 3600.0 - 0.5
        below = np.floor(x)
        clocks[tz] = _Clock(
            day=(seconds // 86400 - first).astype(np.intp),
            hour0=(below.astype(np.intp) % 24),
            frac=x - below,
            block=(seconds // 3600 - seconds[0] // 3600).astype(np.intp),
        )
    return clocks, np.arange(first, last + 1).astype("datetime64[D]")


def _stratified(kind: NDArray[Any], rng: np.random.Generator, columns: int) -> NDArray[np.float64]:
    """Uniforms, one stratum per meter within each kind, so shares hold even in small fleets.

    A fleet of 100 homes with 6 % vacant then has 6 vacant homes, not 2 or 11, and quantiles of
    household size and scale are as stated; each column is stratified on its own.
    """
    u = rng.random((kind.size, columns))
    for k in MeterKind:
        idx = np.flatnonzero(kind == k)
        for c in range(columns):
            u[idx, c] = (rng.permutation(idx.size) + u[idx, c]) / max(idx.size, 1)
    return u


def _traits(
    meters: Sequence[Meter], rng: np.random.Generator, cfg: ProfileConfig
) -> tuple[NDArray[np.int8], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Variant, typical workday litres, drip (L/h) and away-share quantile of each meter."""
    n = len(meters)
    kind = np.array([m.kind for m in meters], dtype=object)
    u = _stratified(kind, rng, 4)
    z = np.array([_NORMAL.inv_cdf(min(max(x, 1e-9), 1 - 1e-9)) for x in u[:, 2]])
    drip_u = rng.random(n)
    drip_z = rng.standard_normal(n)
    q3_l = np.array([m.q3_m3h for m in meters], dtype=np.float64) * 1000.0
    res = kind == MeterKind.RESIDENTIAL
    com = kind == MeterKind.COMMERCIAL
    ind = kind == MeterKind.INDUSTRIAL
    variant = np.full(n, BULK, dtype=np.int8)
    variant[res] = np.where(u[res, 0] < cfg.residential_vacant_share, VACANT, HOME)
    variant[com] = np.where(u[com, 0] < cfg.commercial_office_share, OFFICE, SHOP)
    variant[ind] = np.where(u[ind, 0] < cfg.industrial_two_shift_share, TWO_SHIFT, ROUND_CLOCK)

    sizes = np.cumsum(cfg.residential_household_sizes)
    people = np.searchsorted(sizes / sizes[-1], u[:, 1], side="right") + 1.0
    daily = np.zeros(n)
    daily[res] = (
        cfg.residential_per_capita_l
        * people[res] ** cfg.residential_household_exponent
        * np.exp(cfg.residential_per_capita_sigma * z[res])
    )
    scale = np.exp(z * np.where(com, cfg.commercial_scale_sigma, cfg.industrial_scale_sigma))
    hours = np.where(com, cfg.commercial_hours_at_q3, cfg.industrial_hours_at_q3)
    daily[com | ind] = (q3_l * hours * scale)[com | ind]
    drip_lph = np.minimum(cfg.residential_drip_lph * np.exp(0.7 * drip_z), 10.0)
    drip = np.where(res & (drip_u < cfg.residential_drip_share), drip_lph, 0.0)
    return variant, daily, drip, u[:, 3]


def _holiday_runs(days: NDArray[Any]) -> list[tuple[int, int, int]]:
    """(holiday, first, last) day indices of each run of days off touching ``days``.

    Runs may start before or end after ``days``, so travel around them is still drawn whole.
    """
    pad = 10
    padded = np.arange(days[0] - pad, days[-1] + pad + 1)
    holiday = holiday_at(padded)
    edges = np.flatnonzero(np.diff(holiday, prepend=-1, append=-1) != 0)
    runs = []
    for lo, hi in itertools.pairwise(edges):
        if holiday[lo] >= 0 and hi - 1 - pad >= 0 and lo - pad < days.size:
            runs.append((int(holiday[lo]), int(lo) - pad, int(hi) - 1 - pad))
    return runs


def _away_shares(u: NDArray[np.float64], mean: float) -> NDArray[np.float64]:
    """Share of days each home is away: Kumaraswamy(0.5, b) with the given mean, at quantiles u.

    Shaped like Beta(0.5, b) (most homes a few days a year, a few such as second homes or people
    working elsewhere a third of the time or more) but with a closed-form quantile function, so
    the stratified uniforms carry over.
    """
    if mean <= 0:
        return np.zeros_like(u)
    a = 0.5

    def mean_of(b: float) -> float:
        return b * math.exp(math.lgamma(1 + 1 / a) + math.lgamma(b) - math.lgamma(1 + 1 / a + b))

    lo, hi = 1e-3, 1e4  # mean_of falls as b grows
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if mean_of(mid) > mean else (lo, mid)
    return (1.0 - (1.0 - u) ** (1.0 / lo)) ** (1.0 / a)


def _away(
    u_away: NDArray[np.float64],
    vacant: NDArray[np.bool_],
    days: NDArray[Any],
    rng: np.random.Generator,
    cfg: ProfileConfig,
) -> NDArray[np.bool_]:
    """(n, D) days a home is empty: its own trips, holiday travel, and a vacant home's idle days."""
    n, d = u_away.size, days.size
    share = np.minimum(_away_shares(u_away, cfg.residential_away_share), 0.9)
    rate = share / (cfg.residential_trip_days * (1.0 - share))
    starts = rng.random((n, d)) < rate[:, None]
    length = rng.geometric(1.0 / cfg.residential_trip_days, (n, d))
    reach = np.maximum.accumulate(np.where(starts, np.arange(d) + length, 0), axis=1)
    away = reach > np.arange(d)
    visit = rng.uniform(*_VACANT_VISITS, n)
    away |= vacant[:, None] & (rng.random((n, d)) >= visit[:, None])
    for holiday, first, last in _holiday_runs(days):
        travel = {
            SPRING_FESTIVAL: cfg.residential_spring_festival_away,
            NATIONAL_DAY: cfg.residential_golden_week_away,
        }.get(holiday, cfg.residential_holiday_away)
        goes = rng.random(n) < travel
        # Spring Festival travellers leave a few days early and come back late.
        extra = rng.integers(0, 4, (2, n)) if holiday == SPRING_FESTIVAL else np.zeros((2, n))
        lo = np.maximum(first - extra[0], 0)
        hi = np.minimum(last + extra[1], d - 1)
        idx = np.arange(d)
        away |= goes[:, None] & (idx >= lo[:, None]) & (idx <= hi[:, None])
    return away


def _calendar_factors(
    days: NDArray[Any], cfg: ProfileConfig
) -> tuple[NDArray[np.int8], dict[MeterKind, NDArray[np.float64]], NDArray[np.float64]]:
    """Day types, seasonal factor per kind and the post-Spring-Festival restart factor per day."""
    kinds = day_type(days)
    doy = (days - days.astype("datetime64[Y]")).astype(np.int64)
    wave = np.cos(2 * np.pi * (doy - cfg.summer_peak_doy) / 365.25)
    season = {
        MeterKind.RESIDENTIAL: 1 + cfg.residential_summer_amplitude * wave,
        MeterKind.COMMERCIAL: 1 + cfg.commercial_summer_amplitude * wave,
        MeterKind.INDUSTRIAL: 1 + cfg.industrial_summer_amplitude * wave,
    }
    lead = 60
    padded = np.arange(days[0] - lead, days[-1] + 1)
    idx = np.arange(padded.size)
    last_sf = np.maximum.accumulate(
        np.where(day_type(padded) == DayType.SPRING_FESTIVAL, idx, -(10**6))
    )
    since = (idx - last_sf)[lead:]
    restart = np.ones(days.size)
    if cfg.restart_days > 0:
        ramp = (since >= 1) & (since <= cfg.restart_days)
        restart[ramp] = _RESTART_FROM + (1 - _RESTART_FROM) * (since[ramp] - 1) / cfg.restart_days
    return kinds, season, restart


def _rates(
    variant: _Variant, kinds: NDArray[np.int8], clock: _Clock, interval_h: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """When events happen: the expected share of a workday's events in each interval.

    Returns ``total`` (T-1,), all kinds together, each weighted by its share of the events (a
    day's taps far outnumber its showers), and ``cond`` (K, T-1): the chance that an event in the
    interval is of kind k given it is not of a kind before k, to split counts with binomials.
    Timetables are read at the interval's midpoint, interpolated between hour centres.
    """
    base = np.array(variant.table, dtype=np.float64)
    night = np.arange(24) < 6
    col_kind = kinds[clock.day]
    weights = np.array([e.share / e.size_l for e in variant.events])
    weights /= weights.sum()
    parts = []
    for event, w in zip(variant.events, weights, strict=True):
        table = base * np.where(night, event.night, 1.0)
        table /= table[DayType.WORKDAY].mean()
        at = table[col_kind, clock.hour0] * (1 - clock.frac)
        at += table[col_kind, (clock.hour0 + 1) % 24] * clock.frac
        parts.append(w * at * interval_h / 24.0)
    share = np.array(parts)
    total = share.sum(axis=0)
    left = total - np.cumsum(share, axis=0) + share  # mass of kinds >= k
    return total, np.divide(share, left, out=np.ones_like(share), where=left > 0)


def simulate(
    meters: Sequence[Meter], grid: Grid, rng: np.random.Generator, cfg: ProfileConfig | None = None
) -> Profiles:
    """``consumption`` with the per-meter draws behind it (variant, scale, drip, days away)."""
    cfg = cfg or ProfileConfig()
    if not 0 < grid.interval_s <= 3600:
        raise ValueError("profiles need an interval of at most one hour")
    n, steps = len(meters), grid.steps
    use = np.zeros((n, steps))
    variant, daily, drip, u_away = _traits(meters, rng, cfg)
    clocks, days = _clocks(meters, grid)
    away = np.zeros((n, days.size), dtype=bool)
    if steps < 2 or n == 0:
        return Profiles(use, variant, daily, drip, days, away)
    kinds, season, restart = _calendar_factors(days, cfg)
    interval_h = grid.interval_s / 3600.0
    q4_l = np.array([m.q3_m3h for m in meters]) * 1250.0 * interval_h
    tz = np.array([m.timezone for m in meters])
    models = _variants(cfg)
    sigma = {
        MeterKind.RESIDENTIAL: cfg.residential_day_sigma,
        MeterKind.COMMERCIAL: cfg.commercial_day_sigma,
        MeterKind.INDUSTRIAL: cfg.industrial_day_sigma,
    }
    res = (variant == HOME) | (variant == VACANT)
    away[res] = _away(u_away[res], variant[res] == VACANT, days, rng, cfg)
    for code, model in models.items():
        for zone, clock in clocks.items():
            rows = np.flatnonzero((variant == code) & (tz == zone))
            if rows.size == 0:
                continue
            s = sigma[model.kind]
            level = np.exp(s * rng.standard_normal((rows.size, days.size)) - s * s / 2)
            level *= season[model.kind] * np.where(away[rows], 0.0, 1.0)
            if code in (OFFICE, TWO_SHIFT):
                level *= restart
            total, cond = _rates(model, kinds, clock, interval_h)
            events = _events_per_day(model, daily[rows])
            presence = cfg.residential_presence if model.kind == MeterKind.RESIDENTIAL else 1.0
            block = max(1, _CHUNK_CELLS // steps)
            for lo in range(0, rows.size, block):
                part = slice(lo, lo + block)
                litres = _interval_litres(
                    model, events[part], level[part], daily[rows[part]], total, cond, clock,
                    presence, rng,
                )  # fmt: skip
                litres += drip[rows[part], None] * interval_h
                np.minimum(litres, q4_l[rows[part], None], out=litres)
                use[rows[part], 1:] = litres / 1000.0
    return Profiles(use, variant, daily, drip, days, away)


def _events_per_day(model: _Variant, daily_l: NDArray[np.float64]) -> NDArray[np.float64]:
    if model.events_per_day > 0:
        return np.full(daily_l.size, model.events_per_day)
    return daily_l * sum(e.share / e.size_l for e in model.events)


def _interval_litres(
    model: _Variant,
    events: NDArray[np.float64],
    level: NDArray[np.float64],
    daily_l: NDArray[np.float64],
    total: NDArray[np.float64],
    cond: NDArray[np.float64],
    clock: _Clock,
    presence: float,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Litres in each interval of a block of meters: Poisson counts, split by kind, gamma sizes."""
    n, t = level.shape[0], total.size
    lam = events[:, None] * level[:, clock.day] * total[None, :]
    if presence < 1.0:
        hours = int(clock.block[-1]) + 1
        home = rng.random((n, hours)) < presence
        lam *= home[:, clock.block] * (1.0 / presence)
    count = rng.poisson(lam).ravel()
    busy = np.flatnonzero(count)
    left = count[busy]
    col = busy % t
    row = busy // t
    litres = np.zeros(n * t)
    for k, event in enumerate(model.events):
        last = k == len(model.events) - 1
        got = left if last else rng.binomial(left, cond[k, col])
        left = left - got
        sel = np.flatnonzero(got)
        mean = np.full(sel.size, event.size_l)
        if model.events_per_day > 0:
            mean = event.size_l * daily_l[row[sel]] / model.events_per_day
        litres[busy[sel]] += rng.gamma(got[sel] * event.shape, mean / event.shape)
    return litres.reshape(n, t)
