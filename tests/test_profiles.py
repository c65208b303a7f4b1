"""The PROFILES stage: calibration against DAIAD, and the behaviour of each meter kind."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.typing import NDArray

from bench.calibration import (
    CHECKS,
    DAIAD_PATH,
    SIM_SEED,
    SIM_TIMEZONE,
    Check,
    Figures,
    daiad_series,
    figures,
    simulated_series,
)
from meterwatch.domain import Meter, MeterKind
from meterwatch.holidays import DayType, day_type, holidays_in
from simulators.csvsource import DAIAD
from simulators.fleet import Q3_BY_DN, make_fleet
from simulators.grid import Grid
from simulators.profiles import (
    HOME,
    OFFICE,
    ROUND_CLOCK,
    SHOP,
    TWO_SHIFT,
    VACANT,
    ProfileConfig,
    Profiles,
    consumption,
    simulate,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
_DN = {MeterKind.RESIDENTIAL: 15, MeterKind.COMMERCIAL: 25, MeterKind.INDUSTRIAL: 50}


def _meters(**counts: int) -> list[Meter]:
    out = []
    for kind_name, n in counts.items():
        kind = MeterKind(kind_name)
        dn = _DN.get(kind, 100)
        out += [
            Meter(meter_id=f"{kind_name[:3]}-{i}", kind=kind, dn_mm=dn, q3_m3h=Q3_BY_DN[dn])
            for i in range(n)
        ]
    return out


def _grid(first: date, days: int, interval_s: int = 900) -> Grid:
    start = int(datetime(first.year, first.month, first.day, tzinfo=SHANGHAI).timestamp())
    return Grid(start_s=start, interval_s=interval_s, steps=days * 86400 // interval_s + 1)


def _daily(p: Profiles, grid: Grid) -> NDArray[np.float64]:
    """(M, D) litres per local day; the grids here start at local midnight."""
    per_day = 86400 // grid.interval_s
    litres: NDArray[np.float64] = p.use[:, 1:].reshape(p.use.shape[0], -1, per_day).sum(axis=2)
    return litres * 1000.0


def _hourly_shape(p: Profiles, grid: Grid, rows: NDArray[np.bool_]) -> NDArray[np.float64]:
    per_hour = 3600 // grid.interval_s
    hours: NDArray[np.float64] = (
        p.use[rows, 1:].reshape(int(rows.sum()), -1, 24, per_hour).sum(axis=(0, 1, 3))
    )
    share: NDArray[np.float64] = hours / hours.sum()
    return share


# --- calibration against DAIAD -------------------------------------------------------------


@pytest.fixture(scope="module")
def daiad() -> Figures:
    if not DAIAD_PATH.exists():
        pytest.skip(f"DAIAD data not found at {DAIAD_PATH}")
    return figures(daiad_series(), DAIAD.timezone)


@pytest.fixture(scope="module")
def simulated(daiad: Figures) -> Figures:
    return figures(simulated_series(daiad.meters, seed=SIM_SEED), SIM_TIMEZONE)


@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_residential_profile_matches_daiad(
    daiad: Figures, simulated: Figures, check: Check
) -> None:
    real, sim = check.values(daiad, simulated)
    assert check.passes(real, sim), f"DAIAD {real:.3g}, simulated {sim:.3g}, allowed {check.stated}"


def test_figures_of_a_known_series() -> None:
    """A meter that uses 6 L in every hour but 02:00–03:00 (Shanghai), read hourly for 10 days."""
    start = int(datetime(2026, 3, 2, tzinfo=SHANGHAI).timestamp())  # a Monday
    ts = start + 3600 * np.arange(10 * 24 + 1, dtype=np.int64)
    litres = np.where((ts[:-1] - start) // 3600 % 24 == 2, 0.0, 6.0)
    register = np.concatenate([[100.0], 100.0 + np.cumsum(litres) / 1000.0])
    f = figures([(ts, register)], "Asia/Shanghai")
    assert f.daily_by_meter == pytest.approx((138.0,) * 5)
    assert f.zero_hour_share == pytest.approx(1 / 24)
    assert f.night_lph == pytest.approx(3.0)
    assert f.night_use_share == 1.0
    assert f.weekend_ratio == pytest.approx(1.0)
    assert f.weekday_shape[2] == 0.0 and f.weekday_shape[3] == pytest.approx(1 / 23)


# --- behaviour of the stage ----------------------------------------------------------------


def test_same_seed_same_array_other_seed_other_array() -> None:
    meters = make_fleet(80, seed=3)
    grid = _grid(date(2026, 2, 10), 3)
    a = consumption(meters, grid, np.random.default_rng(7), ProfileConfig())
    b = consumption(meters, grid, np.random.default_rng(7), ProfileConfig())
    c = consumption(meters, grid, np.random.default_rng(8), ProfileConfig())
    assert a.shape == (80, grid.steps) and a.dtype == np.float64
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bulk_rows_and_column_zero_are_zero() -> None:
    meters = _meters(residential=20, bulk=2, commercial=3)
    use = consumption(meters, _grid(date(2026, 5, 11), 2), np.random.default_rng(1))
    assert not use[20:22].any()
    assert not use[:, 0].any()
    assert use[:20].sum() > 0 and use[22:].sum() > 0


def test_flow_never_exceeds_q4() -> None:
    tiny = [m._replace(q3_m3h=0.02) for m in _meters(residential=30, commercial=5, industrial=5)]
    grid = _grid(date(2026, 6, 1), 3)
    use = consumption(tiny, grid, np.random.default_rng(2))
    q4_per_interval = 1.25 * 0.02 * grid.interval_s / 3600
    assert use.max() <= q4_per_interval * (1 + 1e-12)
    assert (use >= q4_per_interval * (1 - 1e-9)).any(), "the cap should have bitten here"


def test_residential_use_comes_in_events_with_many_zero_intervals() -> None:
    grid = _grid(date(2026, 3, 2), 14)
    p = simulate(_meters(residential=300), grid, np.random.default_rng(4))
    homes = p.use[p.variant == HOME, 1:]
    dripping = p.drip_lph > 0
    assert 0.5 < np.mean(homes[~dripping[p.variant == HOME]] == 0) < 0.9
    assert dripping.any() and (p.use[dripping, 1:] > 0).all()
    assert np.mean(p.use[p.variant == VACANT, 1:] == 0) > 0.85
    shape = _hourly_shape(p, grid, p.variant == HOME)
    assert shape[2:5].sum() < 0.03  # the small hours are quiet
    assert shape[7] > 2 * shape[3] and shape[20] > 2 * shape[3]  # morning and evening peaks


def test_offices_work_weekday_business_hours_and_shops_open_every_day() -> None:
    grid = _grid(date(2026, 3, 2), 28)  # four plain weeks, Monday to Sunday
    p = simulate(_meters(commercial=200), grid, np.random.default_rng(5))
    daily = _daily(p, grid)
    weekend = day_type(p.days[: daily.shape[1]]) == DayType.WEEKEND
    office, shop = p.variant == OFFICE, p.variant == SHOP
    assert office.sum() > 60 and shop.sum() > 60
    assert daily[office][:, weekend].mean() < 0.12 * daily[office][:, ~weekend].mean()
    assert daily[shop][:, weekend].mean() > daily[shop][:, ~weekend].mean()
    shape = _hourly_shape(p, grid, office)
    assert shape[8:18].sum() > 0.8
    assert shape[0:6].sum() < 0.03


def test_industrial_two_shift_and_round_the_clock() -> None:
    grid = _grid(date(2026, 3, 2), 14)
    p = simulate(_meters(industrial=100), grid, np.random.default_rng(6))
    shifts = _hourly_shape(p, grid, p.variant == TWO_SHIFT)
    clock = _hourly_shape(p, grid, p.variant == ROUND_CLOCK)
    assert shifts[0:5].mean() < 0.1 * shifts[8:20].mean()
    assert 0.8 < clock[0:5].mean() / clock[8:20].mean() < 1.0
    assert (p.use[p.variant == ROUND_CLOCK, 1:] > 0).all()


def test_spring_festival_dip() -> None:
    grid = _grid(date(2026, 1, 19), 42)  # three weeks before 15–23 Feb 2026, and the week after
    p = simulate(
        _meters(residential=300, commercial=100, industrial=60), grid, np.random.default_rng(9)
    )
    daily = _daily(p, grid)
    kinds = day_type(p.days[: daily.shape[1]])
    festival = kinds == DayType.SPRING_FESTIVAL
    before = np.arange(daily.shape[1]) < 21

    def ratio(rows: NDArray[np.bool_]) -> float:
        return float(daily[rows][:, festival].mean() / daily[rows][:, before].mean())

    assert festival.sum() == 9
    assert ratio(p.variant == HOME) < 0.9  # a third of homes travel
    assert ratio((p.variant == OFFICE) | (p.variant == SHOP)) < 0.4
    assert ratio((p.variant == TWO_SHIFT) | (p.variant == ROUND_CLOCK)) < 0.5
    away_on_new_year = p.away[p.variant == HOME, int(np.flatnonzero(festival)[2])].mean()
    assert 0.2 < away_on_new_year < 0.5


def test_summer_above_winter() -> None:
    meters = _meters(residential=60, commercial=20, industrial=20)
    grid = _grid(date(2026, 1, 1), 365, interval_s=3600)
    p = simulate(meters, grid, np.random.default_rng(3))
    daily = _daily(p, grid)
    month = p.days[: daily.shape[1]].astype("datetime64[M]").astype(np.int64) % 12
    for kind in (MeterKind.RESIDENTIAL, MeterKind.COMMERCIAL, MeterKind.INDUSTRIAL):
        rows = np.array([m.kind == kind for m in meters])
        july, january = daily[rows][:, month == 6].mean(), daily[rows][:, month == 0].mean()
        assert july > 1.05 * january, kind


def test_config_from_toml() -> None:
    cfg = ProfileConfig.from_toml(
        {"residential_household_sizes": [0.5, 0.5], "restart_days": 7, "residential_drip_share": 0}
    )
    assert cfg.residential_household_sizes == (0.5, 0.5)
    assert cfg.restart_days == 7 and cfg.residential_drip_share == 0.0
    assert ProfileConfig.from_toml({}) == ProfileConfig()
    for bad in (
        {"residential_showers": 2},
        {"restart_days": 2.5},
        {"residential_vacant_share": 1.5},
        {"residential_per_capita_l": "many"},
        {"residential_household_sizes": 3},
    ):
        with pytest.raises(ValueError):
            ProfileConfig.from_toml(bad)


def test_interval_longer_than_an_hour_is_refused() -> None:
    with pytest.raises(ValueError, match="at most one hour"):
        consumption(
            _meters(residential=2), _grid(date(2026, 1, 5), 2, 7200), np.random.default_rng(1)
        )


# --- holidays --------------------------------------------------------------------------------


def test_day_types_follow_the_state_council_notices() -> None:
    cases = {
        "2026-02-16": DayType.SPRING_FESTIVAL,
        "2026-02-14": DayType.WORKDAY,  # Saturday worked before the festival
        "2026-02-28": DayType.WORKDAY,
        "2026-03-07": DayType.WEEKEND,
        "2026-03-09": DayType.WORKDAY,
        "2026-10-01": DayType.HOLIDAY,
        "2026-10-10": DayType.WORKDAY,
        "2020-02-02": DayType.SPRING_FESTIVAL,  # the 2020 extension
        "2025-05-05": DayType.HOLIDAY,
        "2027-02-06": DayType.SPRING_FESTIVAL,  # projected
        "2035-01-01": DayType.WORKDAY,  # outside the table: a plain Monday
    }
    days = np.array(list(cases), dtype="datetime64[D]")
    assert [DayType(int(k)) for k in day_type(days)] == list(cases.values())


def test_holidays_in_names_each_day_off() -> None:
    got = holidays_in(date(2026, 9, 24), date(2026, 10, 2))
    assert got == [
        (date(2026, 9, 25), "Mid-Autumn"),
        (date(2026, 9, 26), "Mid-Autumn"),
        (date(2026, 9, 27), "Mid-Autumn"),
        (date(2026, 10, 1), "National Day"),
        (date(2026, 10, 2), "National Day"),
    ]
    assert holidays_in(date(2026, 3, 2), date(2026, 3, 20)) == []
