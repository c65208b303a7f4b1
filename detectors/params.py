"""Per-meter constants the rules read: registry facts and resolved thresholds, one record a meter.

Thresholds are resolved once per meter (kind, tenant and meter overrides) into plain numbers in
the units the rules compute in (m3, m3/h, seconds, hours), so a rule compares whole arrays.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from detectors.config import Thresholds
from detectors.state import TYPE_BIT
from meterwatch.domain import Meter, MeterKind
from meterwatch.holidays import DayType, day_type

BATCH_UPLOAD_S = 6 * 3600  # meters uploading this rarely send many readings per upload
# Zones of mainland China (the State Council's holiday calendar applies there).
CHINA_ZONES = frozenset({"Asia/Shanghai", "Asia/Chongqing", "Asia/Harbin", "Asia/Urumqi", "PRC"})
KIND_CODE = {kind: i for i, kind in enumerate(MeterKind)}

PARAM_DTYPE = np.dtype(
    [
        ("q3", np.float32),  # m3/h
        ("reg_max", np.float64),
        ("kind", np.int8),
        ("dma", np.int32),  # -1: none
        ("inlet", np.bool_),
        ("off_s", np.int32),  # UTC offset of the meter's zone
        ("cn", np.bool_),  # the zone keeps China's public holidays
        ("expected_s", np.int32),
        ("enabled", np.uint16),  # TYPE_BIT of enabled alert types
        ("leak_thr", np.float32),  # m3/h above the normal minimum
        ("leak_learn", np.bool_),
        ("leak_margin", np.float32),
        ("leak_window", np.int16),
        ("night_from", np.int8),
        ("night_to", np.int8),
        ("night_n", np.int16),
        ("leak_crit", np.float32),  # m3/h
        ("leak_crit_h", np.int32),
        ("leak_hold_s", np.int64),
        ("burst_q", np.float32),  # m3/h
        ("burst_s", np.int32),
        ("hi_factor", np.float32),
        ("hi_min", np.float32),
        ("base_least", np.float32),
        ("lo_factor", np.float32),
        ("hi_days", np.int8),
        ("lo_days", np.int8),
        ("warmup", np.int16),
        ("nc_h", np.float32),
        ("nc_alarm_h", np.float32),
        ("rev_m3", np.float32),
        ("rev_n", np.int16),
        ("bat_low", np.float32),
        ("silent_s", np.int64),
        ("fo_days", np.int8),
    ]
)


_OFFSET_AT = datetime(2020, 1, 15, 12, tzinfo=UTC)


@functools.lru_cache(maxsize=256)
def utc_offset_s(timezone: str) -> int:
    """The zone's UTC offset in mid-January, used all year. China has one offset all year; a zone
    with daylight saving keeps its mid-January one (standard time in the northern hemisphere), so
    its local days are an hour off while its clocks are changed."""
    offset = _OFFSET_AT.astimezone(ZoneInfo(timezone)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def record(meter: Meter, t: Thresholds, dma: int, inlet: bool, off_s: int) -> NDArray[np.void]:
    r = np.zeros(1, PARAM_DTYPE)
    enabled = 0
    for name, bit in TYPE_BIT.items():
        if t.enabled(name):
            enabled |= bit
    r["q3"] = meter.q3_m3h
    r["reg_max"] = meter.register_max_m3
    r["kind"] = KIND_CODE[MeterKind(meter.kind)]
    r["dma"] = dma
    r["inlet"] = inlet
    r["off_s"] = off_s
    r["cn"] = meter.timezone in CHINA_ZONES
    r["expected_s"] = meter.expected_interval_s
    r["enabled"] = enabled
    r["leak_thr"] = t.leak_threshold_lph(meter.q3_m3h) / 1000.0
    r["leak_learn"] = t.leak_learn_baseline
    r["leak_margin"] = t.leak_baseline_margin
    r["leak_window"] = t.leak_window_h
    r["night_from"] = t.leak_night_from_h
    r["night_to"] = t.leak_night_to_h
    r["night_n"] = t.leak_night_nights
    r["leak_crit"] = t.leak_critical_lph / 1000.0
    r["leak_crit_h"] = round(t.leak_critical_days * 24)
    r["leak_hold_s"] = round(t.leak_clear_hold_h * 3600)
    r["burst_q"] = t.burst_q3_share * meter.q3_m3h
    r["burst_s"] = round(t.burst_min_min * 60)
    r["hi_factor"] = t.abnormal_high_factor
    r["hi_min"] = t.abnormal_high_min_m3
    r["base_least"] = t.abnormal_min_baseline_m3
    r["lo_factor"] = t.abnormal_low_factor
    r["hi_days"] = t.abnormal_days
    r["lo_days"] = t.abnormal_low_days
    r["warmup"] = t.abnormal_warmup_days
    r["nc_h"] = t.no_consumption_days * 24
    r["nc_alarm_h"] = t.no_consumption_alarm_days * 24
    r["rev_m3"] = t.reverse_min_l / 1000.0
    r["rev_n"] = t.reverse_min_intervals
    r["bat_low"] = t.battery_low_pct
    interval = meter.expected_interval_s
    # Batch uploaders upload at different times of day: half an interval of slack, so one that
    # simply uploads later than the others is not taken for one that missed its upload.
    slack = interval / 2 if interval >= BATCH_UPLOAD_S else 0
    r["silent_s"] = round(max(t.silent_factor * interval + slack, t.silent_min_h * 3600))
    r["fo_days"] = t.fleet_outlier_days
    return r


# Day types of every day the holiday calendar covers, looked up by day number: the hour rules ask
# for thousands of days per batch.
_FIRST_DAY = int(np.datetime64("2015-01-01", "D").astype(np.int64))
_TYPES = day_type(np.arange(_FIRST_DAY, _FIRST_DAY + 17 * 366))


def day_types(day: NDArray[np.integer], cn: NDArray[np.bool_]) -> NDArray[np.int8]:
    """Day types of local day numbers: the Chinese calendar (``meterwatch.holidays``) for meters
    in mainland China, plain workdays and weekends elsewhere (no other calendar is known)."""
    d = np.asarray(day, np.int64)
    pos = d - _FIRST_DAY
    inside = (pos >= 0) & (pos < _TYPES.size)
    if inside.all():
        typed = _TYPES[pos]
    else:
        typed = np.where(inside, _TYPES[np.clip(pos, 0, _TYPES.size - 1)], day_type(d))
    if cn.all():
        return typed
    weekend = ((d + 3) % 7 >= 5).astype(np.int8)  # 1970-01-01 was a Thursday
    out: NDArray[np.int8] = np.where(cn, typed, weekend)
    return out


def week_slot(
    lday: NDArray[np.integer], lh: NDArray[np.integer], dtype: NDArray[np.int8]
) -> NDArray[np.int64]:
    """Hour of the week (Monday 0 h is 0) of local day numbers and hours, with their day types
    (:func:`day_types`): public holidays count as Sundays."""
    weekday = np.where(dtype >= DayType.HOLIDAY, 6, (np.asarray(lday, np.int64) + 3) % 7)
    out: NDArray[np.int64] = weekday * 24 + lh
    return out
