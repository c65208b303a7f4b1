"""Chinese public holidays 2016–2030 and the type of each day.

Shared vocabulary: the simulators shape consumption and label holidays with it, and the
detectors build holiday-aware baselines from the same calendar (they must not import the
simulators), so both sides agree on which day is a day off.

The State Council publishes each year's arrangement (国务院办公厅关于 YYYY 年部分节假日安排的通知,
gov.cn) a few weeks before the year starts: the runs of days off around each festival and the
weekend days that are worked instead (调休 make-up workdays, which behave like ordinary workdays).
``_PUBLISHED`` copies those notices for 2016–2026. Later years are not published yet; they are
projected from the festival dates under the 2025 rules (Spring Festival from the eve to the 7th
day, Labour Day 1–5 May, National Day 1–7 October, one-day festivals joined to an adjacent weekend)
with no make-up workdays, which is right in shape but may be off by a day or two.
"""

from __future__ import annotations

from datetime import date, timedelta
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

FIRST_YEAR, LAST_YEAR = 2016, 2030

# Calendar days as dates or as day numbers since 1970-01-01; both index the same table.
Days = NDArray[np.datetime64] | NDArray[np.integer[Any]]


class DayType(IntEnum):
    WORKDAY = 0
    WEEKEND = 1
    HOLIDAY = 2
    SPRING_FESTIVAL = 3


HOLIDAY_NAMES = (
    "New Year",
    "Spring Festival",
    "Qingming",
    "Labour Day",
    "Dragon Boat",
    "Mid-Autumn",
    "National Day",
)
NEW_YEAR, SPRING_FESTIVAL, QINGMING, LABOUR_DAY, DRAGON_BOAT, MID_AUTUMN, NATIONAL_DAY = range(7)

# (holiday, first day off, last day off, make-up workdays), as "MM-DD" of the notice's year unless
# a full date is given. Where Mid-Autumn joins National Day the run is listed as National Day.
_Entry = tuple[int, str, str, tuple[str, ...]]
_PUBLISHED: dict[int, tuple[_Entry, ...]] = {
    2016: (
        (NEW_YEAR, "01-01", "01-03", ()),
        (SPRING_FESTIVAL, "02-07", "02-13", ("02-06", "02-14")),
        (QINGMING, "04-02", "04-04", ()),
        (LABOUR_DAY, "04-30", "05-02", ()),
        (DRAGON_BOAT, "06-09", "06-11", ("06-12",)),
        (MID_AUTUMN, "09-15", "09-17", ("09-18",)),
        (NATIONAL_DAY, "10-01", "10-07", ("10-08", "10-09")),
    ),
    2017: (
        (NEW_YEAR, "2016-12-31", "01-02", ()),
        (SPRING_FESTIVAL, "01-27", "02-02", ("01-22", "02-04")),
        (QINGMING, "04-02", "04-04", ("04-01",)),
        (LABOUR_DAY, "04-29", "05-01", ()),
        (DRAGON_BOAT, "05-28", "05-30", ("05-27",)),
        (NATIONAL_DAY, "10-01", "10-08", ("09-30",)),
    ),
    2018: (
        (NEW_YEAR, "2017-12-30", "01-01", ()),
        (SPRING_FESTIVAL, "02-15", "02-21", ("02-11", "02-24")),
        (QINGMING, "04-05", "04-07", ("04-08",)),
        (LABOUR_DAY, "04-29", "05-01", ("04-28",)),
        (DRAGON_BOAT, "06-16", "06-18", ()),
        (MID_AUTUMN, "09-22", "09-24", ()),
        (NATIONAL_DAY, "10-01", "10-07", ("09-29", "09-30")),
    ),
    2019: (
        (NEW_YEAR, "2018-12-30", "01-01", ("2018-12-29",)),
        (SPRING_FESTIVAL, "02-04", "02-10", ("02-02", "02-03")),
        (QINGMING, "04-05", "04-07", ()),
        (LABOUR_DAY, "05-01", "05-04", ("04-28", "05-05")),
        (DRAGON_BOAT, "06-07", "06-09", ()),
        (MID_AUTUMN, "09-13", "09-15", ()),
        (NATIONAL_DAY, "10-01", "10-07", ("09-29", "10-12")),
    ),
    2020: (  # Spring Festival extended to 2 February by the notice of 27 January 2020
        (NEW_YEAR, "01-01", "01-01", ()),
        (SPRING_FESTIVAL, "01-24", "02-02", ("01-19",)),
        (QINGMING, "04-04", "04-06", ()),
        (LABOUR_DAY, "05-01", "05-05", ("04-26", "05-09")),
        (DRAGON_BOAT, "06-25", "06-27", ("06-28",)),
        (NATIONAL_DAY, "10-01", "10-08", ("09-27", "10-10")),
    ),
    2021: (
        (NEW_YEAR, "01-01", "01-03", ()),
        (SPRING_FESTIVAL, "02-11", "02-17", ("02-07", "02-20")),
        (QINGMING, "04-03", "04-05", ()),
        (LABOUR_DAY, "05-01", "05-05", ("04-25", "05-08")),
        (DRAGON_BOAT, "06-12", "06-14", ()),
        (MID_AUTUMN, "09-19", "09-21", ("09-18",)),
        (NATIONAL_DAY, "10-01", "10-07", ("09-26", "10-09")),
    ),
    2022: (
        (NEW_YEAR, "01-01", "01-03", ()),
        (SPRING_FESTIVAL, "01-31", "02-06", ("01-29", "01-30")),
        (QINGMING, "04-03", "04-05", ("04-02",)),
        (LABOUR_DAY, "04-30", "05-04", ("04-24", "05-07")),
        (DRAGON_BOAT, "06-03", "06-05", ()),
        (MID_AUTUMN, "09-10", "09-12", ()),
        (NATIONAL_DAY, "10-01", "10-07", ("10-08", "10-09")),
    ),
    2023: (
        (NEW_YEAR, "2022-12-31", "01-02", ()),
        (SPRING_FESTIVAL, "01-21", "01-27", ("01-28", "01-29")),
        (QINGMING, "04-05", "04-05", ()),
        (LABOUR_DAY, "04-29", "05-03", ("04-23", "05-06")),
        (DRAGON_BOAT, "06-22", "06-24", ("06-25",)),
        (NATIONAL_DAY, "09-29", "10-06", ("10-07", "10-08")),
    ),
    2024: (
        (NEW_YEAR, "2023-12-30", "01-01", ()),
        (SPRING_FESTIVAL, "02-10", "02-17", ("02-04", "02-18")),
        (QINGMING, "04-04", "04-06", ("04-07",)),
        (LABOUR_DAY, "05-01", "05-05", ("04-28", "05-11")),
        (DRAGON_BOAT, "06-08", "06-10", ()),
        (MID_AUTUMN, "09-15", "09-17", ("09-14",)),
        (NATIONAL_DAY, "10-01", "10-07", ("09-29", "10-12")),
    ),
    2025: (
        (NEW_YEAR, "01-01", "01-01", ()),
        (SPRING_FESTIVAL, "01-28", "02-04", ("01-26", "02-08")),
        (QINGMING, "04-04", "04-06", ()),
        (LABOUR_DAY, "05-01", "05-05", ("04-27",)),
        (DRAGON_BOAT, "05-31", "06-02", ()),
        (NATIONAL_DAY, "10-01", "10-08", ("09-28", "10-11")),
    ),
    2026: (
        (NEW_YEAR, "01-01", "01-03", ("01-04",)),
        (SPRING_FESTIVAL, "02-15", "02-23", ("02-14", "02-28")),
        (QINGMING, "04-04", "04-06", ()),
        (LABOUR_DAY, "05-01", "05-05", ("05-09",)),
        (DRAGON_BOAT, "06-19", "06-21", ()),
        (MID_AUTUMN, "09-25", "09-27", ()),
        (NATIONAL_DAY, "10-01", "10-07", ("09-20", "10-10")),
    ),
}
# Festival dates of the years to project: (lunar new year, Qingming, Dragon Boat, Mid-Autumn).
_FESTIVALS = {
    2027: ("02-06", "04-05", "06-09", "09-15"),
    2028: ("01-26", "04-04", "05-28", "10-03"),
    2029: ("02-13", "04-04", "06-16", "09-22"),
    2030: ("02-03", "04-05", "06-05", "09-12"),
}


def _day(year: int, text: str) -> date:
    return date.fromisoformat(text if len(text) == 10 else f"{year}-{text}")


def _joined_to_weekend(day: date) -> tuple[date, date]:
    """A one-day festival with the weekend next to it, as recent notices arrange them."""
    weekday = day.weekday()  # Monday = 0
    if weekday == 4:
        return day, day + timedelta(days=2)
    if weekday in (5, 6, 0):
        saturday = day - timedelta(days=(weekday - 5) % 7)
        return saturday, saturday + timedelta(days=2)
    return day, day


_Run = tuple[int, date, date, tuple[date, ...]]  # holiday, first and last day off, make-up days


def _projected(year: int) -> list[_Run]:
    new_year, qingming, dragon, autumn = (_day(year, d) for d in _FESTIVALS[year])
    runs: list[_Run] = [
        (NEW_YEAR, *_joined_to_weekend(date(year, 1, 1)), ()),
        (SPRING_FESTIVAL, new_year - timedelta(days=1), new_year + timedelta(days=6), ()),
        (QINGMING, *_joined_to_weekend(qingming), ()),
        (LABOUR_DAY, date(year, 5, 1), date(year, 5, 5), ()),
        (DRAGON_BOAT, *_joined_to_weekend(dragon), ()),
    ]
    national_end = date(year, 10, 7)
    if date(year, 9, 30) <= autumn <= date(year, 10, 8):
        national_end = date(year, 10, 8)
    else:
        runs.append((MID_AUTUMN, *_joined_to_weekend(autumn), ()))
    runs.append((NATIONAL_DAY, date(year, 10, 1), national_end, ()))
    return runs


def _table() -> tuple[NDArray[np.datetime64], NDArray[np.int8], NDArray[np.datetime64]]:
    """Every day off (sorted) with its holiday index, and every make-up workday."""
    days: dict[date, int] = {}
    workdays: list[date] = []
    for year in range(FIRST_YEAR, LAST_YEAR + 1):
        if year in _PUBLISHED:
            runs: list[_Run] = [
                (h, _day(year, a), _day(year, b), tuple(_day(year, w) for w in work))
                for h, a, b, work in _PUBLISHED[year]
            ]
        else:
            runs = _projected(year)
        for holiday, first, last, work in runs:
            for k in range((last - first).days + 1):
                days[first + timedelta(days=k)] = holiday
            workdays.extend(work)
    ordered = sorted(days)
    return (
        np.array(ordered, dtype="datetime64[D]"),
        np.array([days[d] for d in ordered], dtype=np.int8),
        np.array(sorted(workdays), dtype="datetime64[D]"),
    )


_DAYS_OFF, _HOLIDAY_OF, _MAKEUP = _table()


def holiday_at(dates: Days) -> NDArray[np.int8]:
    """Index into ``HOLIDAY_NAMES`` of the holiday each day belongs to, -1 for none."""
    days = np.asarray(dates, dtype="datetime64[D]")
    pos = np.clip(np.searchsorted(_DAYS_OFF, days), 0, _DAYS_OFF.size - 1)
    return np.where(_DAYS_OFF[pos] == days, _HOLIDAY_OF[pos], np.int8(-1)).astype(np.int8)


def day_type(dates: Days) -> NDArray[np.int8]:
    """``DayType`` of each day: official days off first, then make-up workdays, then the weekday.

    Takes dates or integer day numbers since 1970-01-01 (local seconds // 86400), any shape, so a
    detector can type a whole window of day numbers at once; returns int8 of the same shape. Days
    are calendar days where the meter is: a finer ``datetime64`` is cut to its date, so pass local
    times, not UTC instants, or a reading just after local midnight in China (UTC+8) gets the
    previous day's type. Days outside 2016–2030 get plain weekday/weekend types.
    """
    days = np.asarray(dates, dtype="datetime64[D]")
    weekend = (days.astype(np.int64) + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    kind = np.where(weekend, DayType.WEEKEND, DayType.WORKDAY).astype(np.int8)
    kind[np.isin(days, _MAKEUP)] = DayType.WORKDAY
    holiday = holiday_at(days)
    kind[holiday >= 0] = DayType.HOLIDAY
    kind[holiday == SPRING_FESTIVAL] = DayType.SPRING_FESTIVAL
    return kind


def holidays_in(start: date, end: date) -> list[tuple[date, str]]:
    """Each official day off from ``start`` to ``end`` (both included) with its holiday's name."""
    lo = int(np.searchsorted(_DAYS_OFF, np.datetime64(start, "D"), side="left"))
    hi = int(np.searchsorted(_DAYS_OFF, np.datetime64(end, "D"), side="right"))
    return [
        (d.astype(date), HOLIDAY_NAMES[int(h)])
        for d, h in zip(_DAYS_OFF[lo:hi], _HOLIDAY_OF[lo:hi], strict=True)
    ]
