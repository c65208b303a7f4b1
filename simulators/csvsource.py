"""Readings from foreign CSV files: a column mapping, units and a time format.

Utilities export meter reads in every shape; a ``CsvMapping`` says which column is which, what
unit the register is in and how times are written, so one reader serves them all. ``DAIAD`` is
the mapping of the DAIAD trial files (litres, ``dd/mm/yyyy HH:MM:SS`` Alicante time, ``;``).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

UNITS_TO_M3 = {"m3": 1.0, "l": 0.001, "litre": 0.001, "liter": 0.001, "gal": 0.003785411784}


@dataclass(frozen=True, slots=True)
class CsvMapping:
    meter: str
    ts: str
    register: str
    unit: str = "m3"
    ts_format: str = "iso"  # "iso", "epoch" or a strptime format
    timezone: str = "UTC"  # for times written without an offset
    delimiter: str = ","
    flow: str | None = None  # optional column of flow in L/h
    meter_prefix: str = ""  # prepended to ids, e.g. to tell a data set's meters apart

    @property
    def to_m3(self) -> float:
        try:
            return UNITS_TO_M3[self.unit.lower()]
        except KeyError:
            raise ValueError(f"unknown unit {self.unit!r}; one of {sorted(UNITS_TO_M3)}") from None


DAIAD = CsvMapping(
    meter="user key", ts="datetime", register="meter reading", unit="l",
    ts_format="%d/%m/%Y %H:%M:%S", timezone="Europe/Madrid", delimiter=";",
)  # fmt: skip
PRESETS = {"daiad": DAIAD}


@dataclass(frozen=True, eq=False)
class CsvReadings:
    """Readings in file order, as columns; ``bad_rows`` lists (line number, reason)."""

    meter_id: NDArray[np.str_]
    ts: NDArray[np.int64]  # epoch seconds, UTC
    register_m3: NDArray[np.float64]
    flow_lph: NDArray[np.float64]  # NaN where absent
    bad_rows: list[tuple[int, str]]

    def __len__(self) -> int:
        return int(self.ts.size)


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _parser(mapping: CsvMapping) -> Callable[[str], int]:
    tz = ZoneInfo(mapping.timezone)
    fmt = mapping.ts_format
    if fmt.endswith(" %H:%M:%S") and fmt != "iso":
        return _fast_local_parser(fmt.removesuffix(" %H:%M:%S"), tz)

    def parse(text: str) -> int:
        if fmt == "epoch":
            return int(float(text))
        dt = datetime.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)  # fold=0: an ambiguous autumn hour reads as the first
        return int(dt.astimezone(UTC).timestamp())

    return parse


def _fast_local_parser(date_fmt: str, tz: ZoneInfo) -> Callable[[str], int]:
    """``<date> HH:MM:SS`` in local time, with the date and the UTC offset of each hour cached.

    Meter exports repeat few dates and hours but many seconds, so this is ~10x strptime.
    """
    days: dict[str, datetime] = {}
    offsets: dict[tuple[str, int], int] = {}

    def parse(text: str) -> int:
        date_part, _, clock = text.rpartition(" ")
        hh, mm, ss = clock.split(":")
        hour = int(hh)
        key = (date_part, hour)
        base = offsets.get(key)
        if base is None:
            day = days.get(date_part)
            if day is None:
                day = days[date_part] = datetime.strptime(date_part, date_fmt)
            local = day.replace(hour=hour, tzinfo=tz)  # fold=0 for an ambiguous autumn hour
            base = offsets[key] = int(local.astimezone(UTC).timestamp())
        return base + int(mm) * 60 + int(ss)

    return parse


def read_csv(path: str | Path, mapping: CsvMapping) -> CsvReadings:
    path = Path(path)
    scale = mapping.to_m3
    parse_ts = _parser(mapping)
    ids: list[str] = []
    ts: list[int] = []
    reg: list[float] = []
    flow: list[float] = []
    bad: list[tuple[int, str]] = []
    with _open(path) as fh:
        reader = csv.DictReader(fh, delimiter=mapping.delimiter)
        wanted = [mapping.meter, mapping.ts, mapping.register] + (
            [mapping.flow] if mapping.flow else []
        )
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: columns {missing} not in header {reader.fieldnames}")
        for row in reader:
            try:
                t = parse_ts(row[mapping.ts].strip())
                r = float(row[mapping.register]) * scale
                f = float(row[mapping.flow]) if mapping.flow and row[mapping.flow] else np.nan
            except (ValueError, TypeError) as e:
                bad.append((reader.line_num, str(e)[:200]))
                continue
            ids.append(mapping.meter_prefix + row[mapping.meter].strip())
            ts.append(t)
            reg.append(r)
            flow.append(f)
    return CsvReadings(
        meter_id=np.array(ids, dtype=np.str_),
        ts=np.array(ts, dtype=np.int64),
        register_m3=np.array(reg, dtype=np.float64),
        flow_lph=np.array(flow, dtype=np.float64),
        bad_rows=bad,
    )


def by_meter(readings: CsvReadings) -> Iterator[tuple[str, NDArray[np.int64], NDArray[np.float64]]]:
    """Each meter's readings sorted by time (duplicates kept), meters in sorted order."""
    order = np.lexsort((readings.ts, readings.meter_id))
    ids = readings.meter_id[order]
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, ids.size], strict=True):
        sel = order[lo:hi]
        yield str(ids[lo]), readings.ts[sel], readings.register_m3[sel]
