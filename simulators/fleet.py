"""A basic simulated fleet: a registry of meters and their interval readings, vectorised with numpy.

Realism is deliberately basic here: one hand-drawn diurnal profile per meter kind (weekday and
weekend), a per-meter scale, day-to-day and per-interval noise. Nothing is calibrated against real
consumption data, and there are no faults, leaks, holidays or register rollovers; those belong in
later profiles and scenarios, which can build on ``FleetSeries`` without changing the publisher.

Readings are simulated as the volume that passed in the interval ending at each reading, so a
register row is a cumulative sum and the reported flow is exactly what the register saw move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import Meter, MeterKind
from simulators.grid import local_seconds

TIMEZONE = "Asia/Shanghai"
# ISO 4064 permanent flow (q3, m3/h) of common sizes; q4 (overload) is 1.25 x q3.
Q3_BY_DN = {15: 2.5, 20: 4.0, 25: 6.3, 32: 10.0, 40: 16.0, 50: 25.0, 80: 63.0, 100: 100.0}
_INSTALLED_FROM = date(2016, 1, 1)
_INSTALL_SPAN_DAYS = 9 * 365


class _KindModel(NamedTuple):
    weekday: tuple[float, ...]  # relative flow by local hour; weekday mean is about 1
    weekend: tuple[float, ...]
    active: tuple[float, float, float]  # chance a 15-min interval sees use: min(cap, a + b*level)
    noise: float  # sigma of the per-interval log-normal factor
    hours_at_q3: float  # median daily volume, as hours of running at q3
    sizes: tuple[tuple[int, float], ...]  # (dn_mm, share of meters)
    register_max_m3: float
    tariff_cny_per_m3: float


# Residential: morning and evening peaks, nights mostly silent apart from the odd flush.
# Commercial: business hours on weekdays. Industrial: two shifts 06-22 with a dip at the change.
# Bulk (a DMA inlet) is a smoothed aggregate that never drops to zero.
_MODELS: dict[MeterKind, _KindModel] = {
    MeterKind.RESIDENTIAL: _KindModel(
        weekday=(0.15, 0.08, 0.05, 0.05, 0.06, 0.3, 1.6, 2.4, 1.8, 1.0, 0.8, 1.0,
                 1.2, 0.9, 0.7, 0.7, 0.8, 1.3, 1.9, 2.2, 2.0, 1.6, 1.0, 0.5),
        weekend=(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.5, 1.2, 2.0, 2.2, 1.7, 1.4,
                 1.5, 1.1, 0.9, 0.9, 1.0, 1.4, 2.0, 2.2, 2.0, 1.6, 1.1, 0.6),
        active=(0.03, 0.3, 0.9), noise=0.8, hours_at_q3=0.14,
        sizes=((15, 0.9), (20, 0.1)), register_max_m3=100_000.0, tariff_cny_per_m3=3.45,
    ),
    MeterKind.COMMERCIAL: _KindModel(
        weekday=(0.1,) * 6 + (0.3, 0.8, 2.0, 2.2, 2.2, 2.3, 2.5, 2.2, 2.0, 2.0,
                              1.9, 1.6, 1.0, 0.6, 0.5, 0.4, 0.2, 0.1),
        weekend=(0.08,) * 8 + (0.3,) * 10 + (0.15,) * 2 + (0.08,) * 4,
        active=(0.05, 0.45, 0.98), noise=0.4, hours_at_q3=0.8,
        sizes=((20, 0.3), (25, 0.4), (32, 0.2), (40, 0.1)),
        register_max_m3=100_000.0, tariff_cny_per_m3=5.2,
    ),
    MeterKind.INDUSTRIAL: _KindModel(
        weekday=(0.3,) * 6 + (1.4,) * 8 + (1.1,) + (1.4,) * 7 + (0.3,) * 2,
        weekend=(0.25,) * 6 + (0.8,) * 8 + (0.25,) * 10,
        active=(0.6, 0.4, 1.0), noise=0.2, hours_at_q3=2.5,
        sizes=((40, 0.3), (50, 0.4), (80, 0.2), (100, 0.1)),
        register_max_m3=1_000_000.0, tariff_cny_per_m3=4.6,
    ),
    MeterKind.BULK: _KindModel(
        weekday=(0.55, 0.5, 0.45, 0.45, 0.5, 0.7, 1.2, 1.6, 1.5, 1.2, 1.1, 1.1,
                 1.2, 1.1, 1.0, 1.0, 1.0, 1.2, 1.5, 1.6, 1.5, 1.3, 1.0, 0.7),
        weekend=(0.55, 0.5, 0.45, 0.45, 0.5, 0.6, 0.9, 1.3, 1.6, 1.6, 1.4, 1.2,
                 1.2, 1.1, 1.0, 1.0, 1.0, 1.2, 1.5, 1.6, 1.5, 1.3, 1.0, 0.7),
        active=(1.0, 0.0, 1.0), noise=0.1, hours_at_q3=6.0,
        sizes=((100, 1.0),), register_max_m3=1_000_000.0, tariff_cny_per_m3=0.0,
    ),
}  # fmt: skip
_KINDS = tuple(_MODELS)
# Per-kind tables indexed by ``_KINDS.index(kind)``, so generation is array lookups throughout.
_LEVELS = np.array(
    [np.array([m.weekday, m.weekend]) / np.mean(m.weekday) for m in _MODELS.values()]
)  # (kinds, weekday|weekend, hour), normalised to a weekday mean of 1
_ACTIVE = np.array([m.active for m in _MODELS.values()])
_NOISE = np.array([m.noise for m in _MODELS.values()])
_HOURS_AT_Q3 = np.array([m.hours_at_q3 for m in _MODELS.values()])
_SCALE_SIGMA = 0.4  # spread of daily volume between meters of one kind and size
_DAY_SIGMA = 0.15  # day-to-day spread of one meter's use
_FLEET_MIX = ((MeterKind.INDUSTRIAL, 0.04), (MeterKind.COMMERCIAL, 0.11))  # the rest residential


@dataclass(frozen=True, eq=False)
class FleetSeries:
    """Readings of M meters at T common instants; row m belongs to ``meter_ids[m]``."""

    meter_ids: tuple[str, ...]
    ts: NDArray[np.int64]  # (T,) epoch seconds, UTC
    register_m3: NDArray[np.float64]  # (M, T) cumulative, non-decreasing, whole litres
    flow_lph: NDArray[np.float64]  # (M, T) mean flow over the interval ending at the reading
    battery_pct: NDArray[np.int64]  # (M,) reported now and then with the readings
    rssi_dbm: NDArray[np.int64]  # (M,)
    interval_s: int

    @property
    def n_readings(self) -> int:
        return int(self.register_m3.size)


def make_fleet(
    n_meters: int,
    *,
    seed: int,
    tenants: int = 3,
    dmas: int = 4,
    interval_min: int = 15,
    mix: Mapping[MeterKind, float] | None = None,
) -> list[Meter]:
    """A registry of ``n_meters`` meters, mostly residential, the same for the same seed.

    Tenants and DMAs are contiguous blocks of meter ids, like account groups and districts laid
    out street by street; kinds are shuffled across them.
    """
    if n_meters < 0 or tenants < 1 or dmas < 1 or interval_min < 1:
        raise ValueError("n_meters >= 0, tenants >= 1, dmas >= 1 and interval_min >= 1 required")
    rng = np.random.default_rng(seed)
    shares = (
        _FLEET_MIX
        if mix is None
        else tuple((k, v) for k, v in mix.items() if k != MeterKind.RESIDENTIAL)
    )
    if sum(v for _, v in shares) > 1 or any(v < 0 for _, v in shares):
        raise ValueError("fleet mix shares must be >= 0 and sum to at most 1")
    counts = {kind: round(share * n_meters) for kind, share in shares}
    counts[MeterKind.RESIDENTIAL] = n_meters - sum(counts.values())
    kinds = rng.permutation(np.repeat([_KINDS.index(k) for k in counts], list(counts.values())))
    installed = rng.integers(0, _INSTALL_SPAN_DAYS, size=n_meters)
    size_pick = rng.random(n_meters)
    meters = []
    for i in range(n_meters):
        kind = _KINDS[int(kinds[i])]
        model = _MODELS[kind]
        dns, shares = zip(*model.sizes, strict=True)
        dn = dns[min(int(np.searchsorted(np.cumsum(shares), size_pick[i])), len(dns) - 1)]
        meters.append(
            Meter(
                meter_id=f"WH-{i + 1:06d}",
                tenant=f"tenant-{i * tenants // max(n_meters, 1) + 1:02d}",
                dma=f"dma-{i * dmas // max(n_meters, 1) + 1:02d}",
                kind=kind,
                dn_mm=dn,
                q3_m3h=Q3_BY_DN[dn],
                timezone=TIMEZONE,
                install_date=_INSTALLED_FROM + timedelta(days=int(installed[i])),
                register_max_m3=model.register_max_m3,
                tariff_cny_per_m3=model.tariff_cny_per_m3,
                expected_interval_s=interval_min * 60,
            )
        )
    return meters


def _local_times(meters: Sequence[Meter], instants: NDArray[np.int64]) -> NDArray[np.int64]:
    """(M, T) local wall-clock seconds, computed once per distinct timezone (DST included)."""
    if not meters:
        return np.zeros((0, instants.size), dtype=np.int64)
    by_zone = {tz: local_seconds(instants, tz) for tz in {m.timezone for m in meters}}
    return np.stack([by_zone[m.timezone] for m in meters])


def generate(
    meters: Sequence[Meter], *, start: datetime, days: float, interval_min: int, seed: int
) -> FleetSeries:
    """Readings every ``interval_min`` from ``start`` for ``days``, the same for the same seed.

    Reading 0 is at ``start`` and shows each meter's initial register; its flow is the use of the
    interval just before. Initial registers follow the meter's age but stay below half the
    register's range, so no run of a few years rolls over.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if interval_min < 1:
        raise ValueError("interval_min must be at least 1")
    n_steps = round(days * 1440 / interval_min)
    if n_steps < 1:
        raise ValueError("days must cover at least one interval")
    rng = np.random.default_rng(seed)
    dt = interval_min * 60
    ts = int(start.timestamp()) + dt * np.arange(n_steps, dtype=np.int64)
    n = len(meters)
    kind = np.array([_KINDS.index(m.kind) for m in meters], dtype=np.intp)
    q3 = np.array([m.q3_m3h for m in meters], dtype=np.float64)
    reg_max = np.array([m.register_max_m3 for m in meters], dtype=np.float64)

    # Profile lookup at the middle of each interval, in each meter's local time.
    local = _local_times(meters, ts - dt // 2)
    hour = (local // 3600) % 24
    local_day = local // 86400
    weekend = ((local_day + 3) % 7 >= 5).astype(np.intp)  # 1970-01-01 was a Thursday
    level = _LEVELS[kind[:, None], weekend, hour]

    a, b, cap = (_ACTIVE[kind, i][:, None] for i in range(3))
    p = np.minimum(cap, a + b * level)
    p = 1.0 - (1.0 - p) ** (interval_min / 15)  # the chance of any use grows with the interval

    sigma = _NOISE[kind][:, None]
    daily_l = q3 * 1000 * _HOURS_AT_Q3[kind] * rng.lognormal(0.0, _SCALE_SIGMA, n)
    day = local_day - local_day[:, :1]
    n_days = int(day.max()) + 1 if n else 1
    day_factor = np.take_along_axis(
        rng.lognormal(-(_DAY_SIGMA**2) / 2, _DAY_SIGMA, (n, n_days)), day, axis=1
    )
    used = rng.random((n, n_steps)) < p
    noise = rng.lognormal(-(sigma**2) / 2, sigma, (n, n_steps))

    mean_l = daily_l[:, None] / 24 * level * (interval_min / 60)
    volume = np.where(used, mean_l / np.maximum(p, 1e-9) * noise * day_factor, 0.0)
    volume = np.minimum(volume, (1.25 * q3 * 1000 * interval_min / 60)[:, None])  # q4 limit

    litres = np.floor(np.cumsum(volume, axis=1)).astype(np.int64)
    delta = np.diff(litres, axis=1, prepend=0)
    age_days = np.array(
        [max(0, (start.date() - (m.install_date or start.date())).days) for m in meters]
    )
    initial_m3 = age_days * daily_l / 1000 * rng.uniform(0.8, 1.2, n) % (reg_max / 2)
    initial_l = np.floor(initial_m3 * 1000).astype(np.int64)
    register_l = initial_l[:, None] + litres - litres[:, :1]

    battery = np.clip(np.round(100 - age_days / 365 * 7 - rng.uniform(0, 5, n)), 5, 100)
    rssi = np.clip(np.round(rng.normal(-95, 8, n)), -125, -60)
    return FleetSeries(
        meter_ids=tuple(m.meter_id for m in meters),
        ts=ts,
        register_m3=register_l / 1000.0,
        flow_lph=delta * (3600.0 / dt),
        battery_pct=battery.astype(np.int64),
        rssi_dbm=rssi.astype(np.int64),
        interval_s=dt,
    )
