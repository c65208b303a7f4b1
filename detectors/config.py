"""Detector thresholds: documented defaults, overridden per meter kind, tenant and meter.

A utility tunes detection where it knows its customers: a steel plant's night flow is not a leak, a
school's summer is not "no consumption". Overrides come from a TOML file (``METERWATCH_DETECTORS``)
whose tables are applied in order of specificity, later ones winning::

    [defaults]            # every meter
    leak_min_lph = 5.0
    [kind.industrial]     # residential | commercial | industrial | bulk
    leak_learn_baseline = true
    [tenant.acme]
    abnormal_high_factor = 3.0
    [meter."WH-000123"]
    disabled = ["abnormal_low"]

Unknown keys are errors, so a typo cannot silently leave a default in force.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from detectors.alert import ALERT_TYPES
from meterwatch.domain import Meter, MeterKind


@dataclass(frozen=True)
class Thresholds:
    """One meter's detector settings. Volumes in m3 or L as named; durations in hours or days.

    leak (continuous flow): every hour of the last ``leak_window_h`` passed at least
    ``max(leak_min_lph, leak_q3_share * Q3)`` above the meter's normal minimum flow. The normal
    minimum is 0 unless ``leak_learn_baseline`` (meters that never stop, e.g. a 24/7 plant), then it
    is learned from the meter's daily minima and the margin grows by ``leak_baseline_margin`` of
    it. Night flow: the minimum hour in the local night (``leak_night_from_h``..``leak_night_to_h``)
    above the same threshold for ``leak_night_nights`` nights in a row. Severity becomes critical
    at ``leak_critical_lph`` or after ``leak_critical_days``. The condition clears with a zero
    hour; the alert closes when no leak has come back within ``leak_clear_hold_h`` of it (a leak
    that stops now and then stays one alert), dated at that zero hour.

    burst: the flow averaged over readings stays above ``burst_q3_share`` x Q3 for
    ``burst_min_min`` minutes (one reading interval longer than that must hold that much volume).

    abnormal_high / abnormal_low: a local day's use against the meter's own baseline for that kind
    of day (workday, weekend, holiday, Spring Festival) for ``abnormal_days`` /
    ``abnormal_low_days`` days in a row, after ``abnormal_warmup_days`` days of history. High:
    above ``abnormal_high_factor`` x baseline and by at least ``abnormal_high_min_m3`` over the
    window, with the extra use spread over more waking hours than usual (``detectors.daily``).
    Low: below ``abnormal_low_factor`` x baseline but not zero (zero is ``no_consumption``). A
    meter whose baseline is below ``abnormal_min_baseline_m3`` a day (an empty flat) is not
    judged: water there again is occupancy, not abnormal use.

    no_consumption: the register has not moved for ``no_consumption_days`` days not counting public
    holidays (warning), critical at ``no_consumption_alarm_days``.

    reverse_flow: ``reverse_min_intervals`` consecutive register decreases holding at least
    ``reverse_min_l`` litres (single small decreases are register jitter), or the meter's flag.

    low_battery: battery below ``battery_low_pct`` or the meter's flag.

    silent: no upload for ``silent_factor`` x the expected upload interval (at least
    ``silent_min_h``), judged against the fleet's event-time watermark; meters that upload a day
    of values at once (interval of 6 h or more) against the watermark of such meters, with half
    an interval of slack because their upload times differ.

    fleet_outlier: the day's profile is an outlier among meters of the same kind for
    ``fleet_outlier_days`` days in a row.
    """

    leak_min_lph: float = 5.0
    leak_q3_share: float = 0.0
    leak_window_h: int = 24
    leak_learn_baseline: bool = False
    leak_baseline_margin: float = 1.5
    leak_night_from_h: int = 1
    leak_night_to_h: int = 5
    leak_night_nights: int = 3
    leak_critical_lph: float = 230.0
    leak_critical_days: float = 7.0
    leak_clear_hold_h: float = 168.0
    burst_q3_share: float = 0.3
    burst_min_min: float = 30.0
    abnormal_high_factor: float = 2.0
    abnormal_high_min_m3: float = 0.1
    abnormal_min_baseline_m3: float = 0.03
    abnormal_low_factor: float = 0.25
    abnormal_days: int = 3
    abnormal_low_days: int = 3
    abnormal_warmup_days: int = 7
    no_consumption_days: float = 7.0
    no_consumption_alarm_days: float = 28.0
    reverse_min_l: float = 10.0
    reverse_min_intervals: int = 2
    battery_low_pct: float = 10.0
    silent_factor: float = 2.0
    silent_min_h: float = 4.0
    fleet_outlier_days: int = 3
    disabled: frozenset[str] = field(default_factory=frozenset)

    def enabled(self, alert_type: str) -> bool:
        return alert_type not in self.disabled

    def leak_threshold_lph(self, q3_m3h: float) -> float:
        return max(self.leak_min_lph, self.leak_q3_share * q3_m3h * 1000.0)


_FIELDS = {f.name: f for f in fields(Thresholds)}
_BULK_ONLY = frozenset(
    {"reverse_flow", "tamper", "low_battery", "silent", "meter_alarm", "dma_imbalance"}
)
# Kind defaults: offices, shops and plants rarely stop completely, so their normal minimum flow
# is learned; a DMA inlet always flows and is judged by the DMA balance, not as a customer.
KIND_DEFAULTS: dict[MeterKind, dict[str, Any]] = {
    MeterKind.RESIDENTIAL: {},
    MeterKind.COMMERCIAL: {"leak_learn_baseline": True},
    MeterKind.INDUSTRIAL: {"leak_learn_baseline": True},
    MeterKind.BULK: {"disabled": frozenset(set(ALERT_TYPES) - _BULK_ONLY)},
}


def _coerce(where: str, key: str, value: Any) -> Any:
    if key not in _FIELDS:
        raise ValueError(f"unknown detector setting {where}.{key}")
    default = getattr(Thresholds(), key)
    if key == "disabled":
        if not isinstance(value, list | tuple | frozenset | set) or not all(
            v in ALERT_TYPES for v in value
        ):
            raise ValueError(f"{where}.disabled must be a list of alert types")
        return frozenset(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}.{key} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{key} must be a number")
    if value < 0:
        raise ValueError(f"{where}.{key} must be >= 0")
    return type(default)(value)


def _table(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a table")
    return {key: _coerce(where, key, value) for key, value in raw.items()}


@dataclass(frozen=True)
class ThresholdBook:
    """Defaults and overrides; ``resolve(meter)`` gives one meter's ``Thresholds``."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    kinds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tenants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    meters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def resolve(self, meter: Meter) -> Thresholds:
        kind = MeterKind(meter.kind)
        values: dict[str, Any] = dict(KIND_DEFAULTS[kind])
        for layer in (
            self.defaults,
            self.kinds.get(kind.value, {}),
            self.tenants.get(meter.tenant, {}),
            self.meters.get(meter.meter_id, {}),
        ):
            values.update(layer)
        return replace(Thresholds(), **values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ThresholdBook:
        unknown = set(data) - {"defaults", "kind", "tenant", "meter"}
        if unknown:
            raise ValueError(f"unknown detector tables: {sorted(unknown)}")
        kinds = data.get("kind", {})
        for name in kinds:
            if name not in {k.value for k in MeterKind}:
                raise ValueError(f"unknown meter kind in [kind.{name}]")
        return cls(
            defaults=_table("defaults", data.get("defaults", {})),
            kinds={k: _table(f"kind.{k}", v) for k, v in kinds.items()},
            tenants={k: _table(f"tenant.{k}", v) for k, v in data.get("tenant", {}).items()},
            meters={k: _table(f"meter.{k}", v) for k, v in data.get("meter", {}).items()},
        )

    @classmethod
    def load(cls, path: str | Path | None) -> ThresholdBook:
        if path is None:
            return cls()
        with Path(path).open("rb") as f:
            return cls.from_mapping(tomllib.load(f))


@dataclass(frozen=True)
class FleetSettings:
    """Settings of the detectors that look across meters (DMA balance, fleet outliers).

    ``dma_lateness_h``: a DMA's day is balanced this long after it ends, so NB-IoT meters that
    upload the previous day's values in the morning are in. ``dma_excess_share``: an alert needs the
    day's loss to exceed its learned normal by this share of the DMA's mean inflow (and at least
    ``dma_excess_min_m3``), for ``dma_days`` days; ``dma_warmup_days`` days form the normal first.
    """

    dma_lateness_h: float = 42.0
    dma_excess_share: float = 0.015
    dma_excess_min_m3: float = 1.0
    dma_days: int = 1
    dma_warmup_days: int = 2
    fleet_outliers: bool = True
    seed: int = 0
