"""Per-meter detector state as one numpy record per meter: small, fixed-size, serialisable.

Keeping every meter's state in a structured array lets a rule update thousands of meters with one
numpy expression, and makes a checkpoint a plain ``bytes`` copy of the meter's record (a few
hundred bytes, well under the 2 KiB budget). ``VERSION`` changes whenever the layout does; a
checkpoint of another version is refused and that meter starts fresh.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from detectors.alert import ALERT_TYPES

VERSION = 2
TYPE_BIT = {name: 1 << i for i, name in enumerate(ALERT_TYPES)}
DAY_TYPES = 4  # meterwatch.holidays.DayType: workday, weekend, holiday, Spring Festival

STATE_DTYPE = np.dtype(
    [
        ("seen", np.bool_),
        ("first_ts", np.int64),  # oldest reading seen: the meter's history starts here
        ("last_ts", np.int64),  # newest accepted reading
        ("last_reg", np.float64),
        ("hour", np.int64),  # epoch hour still open (-1: none)
        ("hour_vol", np.float32),
        ("ring", np.float32, 24),  # closed hours' volumes at [hour % 24]
        ("open_rule", np.uint16),  # alert types raised by a rule (TYPE_BIT)
        ("open_flag", np.uint16),  # alert types raised by the meter's own flags
        ("leak_run", np.int32),  # consecutive hours above the leak threshold
        ("leak_rate", np.float32),  # estimated leak, m3/h, while a leak is open
        ("leak_sev", np.int8),
        ("leak_day", np.int32),  # local day of the last leak update
        ("leak_quiet", np.int64),  # end of the zero hour that may close the leak (-1: none)
        ("night_min", np.float32),
        ("night_run", np.int16),
        ("base_min", np.float32),  # learned normal minimum flow, m3/h
        ("base_n", np.int16),
        ("base_dev", np.float32),  # typical deviation of the daily low flow from base_min
        ("day", np.int32),  # local day being accumulated (-1: none)
        ("day_vol", np.float32),
        ("day_min", np.float32),
        ("day_hours", np.int16),
        ("day_gaps", np.int16),  # hours of the day filled in from a long gap between readings
        ("day_norm", np.float32),  # what the day's closed hours use on a normal day
        ("days", np.int16),  # complete local days seen (capped)
        ("day_base", np.float32, DAY_TYPES),
        ("day_n", np.int16, DAY_TYPES),
        ("how", np.float32, 168),  # hour-of-week baseline, m3
        ("how_n", np.uint8, 168),
        ("use_ring", np.float32, 7),  # recent days' use and baselines (abnormal_high window)
        ("base_ring", np.float32, 7),
        ("act_ring", np.int8, 7),  # and their active waking hours
        ("act_base", np.float32),  # usual active waking hours of a day
        ("act_n", np.int16),
        ("hi_run", np.int8),
        ("hi_start", np.int64),
        ("lo_run", np.int8),
        ("lo_start", np.int64),
        ("zero_since", np.int64),  # start of the current run of zero hours (-1: none)
        ("zero_h", np.int32),  # hours of that run outside public holidays
        ("zero_sev", np.int8),
        ("burst_s", np.int32),  # seconds of burst-level flow in a row
        ("burst_start", np.int64),
        ("burst_m3", np.float32),
        ("rev_n", np.int16),  # register decreases in a row
        ("rev_m3", np.float32),
        ("rev_start", np.int64),
        ("battery", np.float32),
        ("silent_at", np.int64),  # when the open silent alert was raised (-1: none)
        ("fo_run", np.int8),  # fleet-outlier days in a row
        ("fo_start", np.int64),
    ],
    align=False,
)


def new_states(n: int) -> NDArray[np.void]:
    s = np.zeros(n, dtype=STATE_DTYPE)
    for name in (
        "leak_quiet",
        "first_ts",
        "last_ts",
        "hour",
        "day",
        "zero_since",
        "silent_at",
        "leak_day",
    ):
        s[name] = -1
    s["night_min"] = np.inf
    s["day_min"] = np.inf
    s["battery"] = np.nan
    return s


def pack(record: NDArray[np.void]) -> bytes:
    return VERSION.to_bytes(2, "little") + record.tobytes()


def unpack(data: bytes) -> NDArray[np.void] | None:
    """The record of a checkpoint, or None if it was written by another layout version."""
    if len(data) != 2 + STATE_DTYPE.itemsize or int.from_bytes(data[:2], "little") != VERSION:
        return None
    return np.frombuffer(data[2:], dtype=STATE_DTYPE).copy()
