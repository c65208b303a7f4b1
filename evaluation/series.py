"""A meter's hourly use for the report's plots, from the database or straight from a recording.

Scoring needs no readings, only the plots do, and only for a handful of meters; so a source is a
callable asked per meter and window, and the recording is read once and cut per meter on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from simulators.recording import RecordingFile

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

Hourly = tuple[NDArray[np.datetime64], NDArray[np.float64]]
# (meter_id, start, end) -> hour starts in [start, end) as UTC datetime64[s], and m3 in each
Series = Callable[[str, datetime, datetime], Hourly]

HOURLY_SQL = """
SELECT hour, volume_m3 FROM usage_hourly
WHERE meter_id = %s AND hour >= %s AND hour < %s
ORDER BY hour
"""


def to_datetime64(t: datetime) -> np.datetime64:
    """UTC as naive datetime64, the form numpy and matplotlib compare without zone surprises."""
    return np.datetime64(t.astimezone(UTC).replace(tzinfo=None), "s")


def _well_formed(table: pa.Table) -> NDArray[np.bool_]:
    """Rows that hold a reading: a malformed message's row has its bytes in ``raw``."""
    raw = table.column("raw").combine_chunks()
    return np.asarray(~raw.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)


def series_from_db(conn: psycopg.Connection[Any]) -> Series:
    """Hourly use as ingest rolled it up (``usage_hourly``), what the API shows an operator."""

    def series(meter_id: str, start: datetime, end: datetime) -> Hourly:
        rows = conn.execute(HOURLY_SQL, (meter_id, start, end)).fetchall()
        times = np.array([to_datetime64(h) for h, _ in rows], dtype="datetime64[s]")
        return times, np.array([float(v) for _, v in rows], dtype=np.float64)

    return series


class RecordingSeries:
    """Hourly use per meter from a recording's registers, as the meter measured it.

    Within a meter the readings are sorted by time and each register increase is summed into the
    hour in which its interval ends; a decrease (rollover, replacement, reverse flow) counts as no
    use, and duplicates add nothing. Malformed rows carry no reading and are left out.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._columns: tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.float64]] | None
        self._columns = None
        self._index: dict[str, int] = {}
        self._cache: dict[str, Hourly] = {}

    def _load(self) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.float64]]:
        if self._columns is None:
            import pyarrow.parquet as pq

            head = RecordingFile.open(self.path)
            self._index = {m: i for i, m in enumerate(head.meter_ids)}
            table = pq.read_table(self.path, columns=["meter", "ts_s", "register_m3", "raw"])
            keep = _well_formed(table)
            self._columns = (
                np.asarray(table.column("meter").to_numpy(), dtype=np.int32)[keep],
                np.asarray(table.column("ts_s").to_numpy(), dtype=np.int64)[keep],
                np.asarray(table.column("register_m3").to_numpy(), dtype=np.float64)[keep],
            )
        return self._columns

    def hourly(self, meter_id: str) -> Hourly:
        """The meter's whole hourly series (hours with readings only), computed once."""
        if meter_id not in self._cache:
            meter, ts_s, register = self._load()
            idx = self._index.get(meter_id)
            sel = np.flatnonzero(meter == idx) if idx is not None else np.zeros(0, np.int64)
            order = sel[np.argsort(ts_s[sel], kind="stable")]
            ts, reg = ts_s[order], register[order]
            ok = np.isfinite(reg)
            ts, reg = ts[ok], reg[ok]
            use = np.clip(np.diff(reg), 0.0, None)
            # An interval ending on the hour belongs to the hour before, as in usage_hourly.
            hours, inverse = np.unique((ts[1:] - 1) // 3600, return_inverse=True)
            volume = np.bincount(inverse.reshape(-1), weights=use, minlength=hours.size)
            times: NDArray[np.datetime64] = (hours * 3600).astype("datetime64[s]")
            self._cache[meter_id] = (times, volume.astype(np.float64))
        return self._cache[meter_id]

    def __call__(self, meter_id: str, start: datetime, end: datetime) -> Hourly:
        times, volume = self.hourly(meter_id)
        lo, hi = np.searchsorted(times, [to_datetime64(start), to_datetime64(end)])
        return times[lo:hi], volume[lo:hi]


def series_from_recording(path: str | Path) -> RecordingSeries:
    return RecordingSeries(path)


def recording_meter_days(path: str | Path) -> float:
    """Meters with readings × the recording's span in days, customers and inlets alike.

    Streams row groups and reads two columns, so it costs little even for a city.
    """
    import pyarrow.parquet as pq

    RecordingFile.open(path)  # refuses a file that is not a recording
    pf = pq.ParquetFile(Path(path))
    seen = np.zeros(0, dtype=bool)
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i, columns=["meter", "ts_s", "raw"])
        keep = _well_formed(table)
        meter = np.asarray(table.column("meter").to_numpy(), dtype=np.int64)[keep]
        ts = np.asarray(table.column("ts_s").to_numpy(), dtype=np.int64)[keep]
        if not ts.size:
            continue
        counts = np.bincount(meter)
        if counts.size > seen.size:
            seen = np.concatenate((seen, np.zeros(counts.size - seen.size, dtype=bool)))
        seen[: counts.size] |= counts > 0
        lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))
    if not seen.any():
        return 0.0
    return float(np.count_nonzero(seen)) * (hi - lo) / 86400.0
