"""The recording: every message a fleet sends, when it sends it, one row per reading.

A recording is the boundary between generating a fleet and publishing it: the reporting stage
writes one, replay publishes one, and a foreign CSV becomes one, so every source goes out through
the same code. Rows are sorted by ``(send_s, msg_id, position)``; the rows of one message are
consecutive and hold its readings in the order the meter sends them. Message-level status
(``battery_pct``, ``rssi_dbm``, ``flags``) sits on the message's last row, NaN/0 elsewhere. A
malformed message is one row whose ``raw`` holds the exact bytes sent; its other columns only
say who sent it and which reading it replaced.

On disk it is Parquet (zstd), with the meter ids and scenario facts in the file's key-value
metadata. Row groups of about a million rows end on message boundaries, so a reader can stream
row group by row group and never split a message. Nothing variable (no write time) goes into the
file, so the same content gives the same bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
from numpy.typing import NDArray

from meterwatch.codec import encode_uplink
from meterwatch.domain import flag_names
from simulators.csvsource import CsvReadings

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1
METADATA_KEY = b"meterwatch.recording"
ROW_GROUP_ROWS = 1 << 20
COLUMNS = (
    "send_s", "msg_id", "meter", "ts_s", "register_m3", "flow_lph", "battery_pct", "rssi_dbm",
    "flags",
)  # fmt: skip
_DTYPES = {
    "send_s": np.int64, "msg_id": np.int64, "meter": np.int32, "ts_s": np.int64,
    "register_m3": np.float64, "flow_lph": np.float32, "battery_pct": np.float32,
    "rssi_dbm": np.float32, "flags": np.uint8,
}  # fmt: skip
# Every flag set a uint8 can hold, as the names the codec sends.
_FLAG_NAMES = tuple(flag_names(bits) for bits in range(256))


@dataclass(eq=False)
class Recording:
    """Columns of equal length, one entry per row; see the module docstring for the layout."""

    send_s: NDArray[np.int64]  # when the message is published, epoch s (event time)
    msg_id: NDArray[np.int64]  # unique per message, increasing in send order
    meter: NDArray[np.int32]  # index into meter_ids
    ts_s: NDArray[np.int64]  # the reading's time as the meter reports it (skew included)
    register_m3: NDArray[np.float64]
    flow_lph: NDArray[np.float32]  # NaN = not sent
    battery_pct: NDArray[np.float32]  # NaN = not sent; on a message's last row only
    rssi_dbm: NDArray[np.float32]  # NaN = not sent; on a message's last row only
    flags: NDArray[np.uint8]  # FLAG_BITS; on a message's last row only
    meter_ids: tuple[str, ...]
    raw: dict[int, bytes] = field(default_factory=dict)  # row -> payload of a malformed message
    meta: dict[str, str] = field(default_factory=dict)  # scenario, seed, interval_s, ...

    def __post_init__(self) -> None:
        n = self.send_s.size
        for name in COLUMNS:
            col = getattr(self, name)
            if col.dtype != _DTYPES[name] or col.shape != (n,):
                raise ValueError(f"column {name} must be {np.dtype(_DTYPES[name])} of length {n}")
        if any(not 0 <= row < n for row in self.raw):
            raise ValueError("raw payload on a row outside the recording")

    def __len__(self) -> int:
        return int(self.send_s.size)

    @property
    def n_messages(self) -> int:
        return int(np.count_nonzero(np.diff(self.msg_id))) + 1 if len(self) else 0

    @property
    def n_readings(self) -> int:
        """Readings in well-formed messages (a malformed message's row is not a reading)."""
        return len(self) - len(self.raw)

    def message_starts(self) -> NDArray[np.int64]:
        """The first row of each message, plus ``len(self)`` at the end."""
        cuts = np.flatnonzero(np.diff(self.msg_id)) + 1
        return np.concatenate(([0], cuts, [len(self)])).astype(np.int64)

    def chunks(self) -> Iterator[Recording]:
        """The recording as one chunk; a ``RecordingFile`` yields one per row group."""
        yield self


def empty(meter_ids: Sequence[str] = (), meta: dict[str, str] | None = None) -> Recording:
    def z(dtype: type[np.generic]) -> NDArray[Any]:
        return np.zeros(0, dtype=dtype)

    return Recording(
        z(np.int64), z(np.int64), z(np.int32), z(np.int64), z(np.float64), z(np.float32),
        z(np.float32), z(np.float32), z(np.uint8), tuple(meter_ids), meta=dict(meta or {}),
    )  # fmt: skip


class Message(NamedTuple):
    send_s: int
    meter_id: str
    payload: bytes
    readings: int  # 0 for a malformed message


def messages(rec: Recording, block: int = 50_000) -> Iterator[Message]:
    """Each message's v1 payload, in send order; a malformed message's exact bytes.

    Readings go out as ISO 8601 UTC times through the codec's own encoder, so replayed payloads
    are the ones ingest is built for. Encoding costs ~3 us a reading, far below what one MQTT
    publisher takes per message, so there is nothing to win by a hand-written encoder. Columns
    become Python objects ``block`` messages at a time, so a city-sized recording does not turn
    into gigabytes of floats and datetimes at once.
    """
    starts = rec.message_starts() if len(rec) else np.zeros(1, dtype=np.int64)
    for i in range(0, starts.size - 1, block):
        yield from _encode(rec, starts[i : i + block + 1])


def _encode(rec: Recording, starts: NDArray[np.int64]) -> Iterator[Message]:
    """The messages starting at ``starts[:-1]`` (``starts[-1]`` ends the last one)."""
    lo, hi = int(starts[0]), int(starts[-1])
    ts = [datetime.fromtimestamp(t, UTC) for t in rec.ts_s[lo:hi].tolist()]
    register = rec.register_m3[lo:hi].tolist()
    flow = [None if f != f else f for f in rec.flow_lph[lo:hi].astype(np.float64).tolist()]
    last = starts[1:] - 1
    # Status is sent with one decimal: float32 noise would otherwise show in the JSON.
    battery = np.round(rec.battery_pct[last].astype(np.float64), 1).tolist()
    rssi = np.round(rec.rssi_dbm[last].astype(np.float64), 1).tolist()
    flags = rec.flags[last].tolist()
    send = rec.send_s[starts[:-1]].tolist()
    meter = rec.meter[starts[:-1]].tolist()
    ids = rec.meter_ids
    raw = rec.raw
    bounds = (starts - lo).tolist()
    for j, (a, b) in enumerate(itertools.pairwise(bounds)):
        payload = raw.get(a + lo)
        if payload is not None:
            yield Message(send[j], ids[meter[j]], payload, 0)
            continue
        bat, sig = battery[j], rssi[j]
        body = encode_uplink(
            ids[meter[j]],
            zip(ts[a:b], register[a:b], flow[a:b], strict=True),
            battery_pct=None if bat != bat else bat,
            rssi_dbm=None if sig != sig else sig,
            flags=_FLAG_NAMES[flags[j]],
        )
        yield Message(send[j], ids[meter[j]], body, b - a)


def from_csv(readings: CsvReadings, meta: dict[str, str] | None = None) -> Recording:
    """Foreign readings as a recording: each reading its own message, sent at its own time.

    Readings at the same time keep their file order, so a file's duplicates replay as they are.
    """
    ids, meter = np.unique(readings.meter_id, return_inverse=True)
    order = np.argsort(readings.ts, kind="stable")
    n = order.size
    nan = np.full(n, np.nan, dtype=np.float32)
    return Recording(
        send_s=readings.ts[order].astype(np.int64),
        msg_id=np.arange(n, dtype=np.int64),
        meter=meter.reshape(-1)[order].astype(np.int32),
        ts_s=readings.ts[order].astype(np.int64),
        register_m3=readings.register_m3[order].astype(np.float64),
        flow_lph=readings.flow_lph[order].astype(np.float32),
        battery_pct=nan,
        rssi_dbm=nan.copy(),
        flags=np.zeros(n, dtype=np.uint8),
        meter_ids=tuple(str(m) for m in ids.tolist()),
        meta=dict(meta or {}),
    )


def _schema(rec: Recording) -> pa.Schema:
    import pyarrow as pa

    head = {
        "version": FORMAT_VERSION,
        "meter_ids": list(rec.meter_ids),
        "meta": rec.meta,
        "rows": len(rec),
        "readings": rec.n_readings,
        "messages": rec.n_messages,
    }
    fields = [pa.field(name, pa.from_numpy_dtype(_DTYPES[name]), False) for name in COLUMNS]
    fields.append(pa.field("raw", pa.binary()))
    return pa.schema(
        fields, metadata={METADATA_KEY: orjson.dumps(head, option=orjson.OPT_SORT_KEYS)}
    )


def _raw_array(rec: Recording, lo: int, hi: int) -> pa.Array:
    """The ``raw`` column of rows [lo, hi) built from buffers: a list of 1M Nones is slow."""
    import pyarrow as pa

    n = hi - lo
    rows = sorted(r for r in rec.raw if lo <= r < hi)
    lengths = np.zeros(n, dtype=np.int32)
    valid = np.zeros(n, dtype=np.bool_)
    for r in rows:
        lengths[r - lo] = len(rec.raw[r])
        valid[r - lo] = True
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    data = b"".join(rec.raw[r] for r in rows)
    bitmap = np.packbits(valid, bitorder="little")
    return pa.Array.from_buffers(
        pa.binary(), n, [pa.py_buffer(bitmap), pa.py_buffer(offsets), pa.py_buffer(data)],
        null_count=n - len(rows),
    )  # fmt: skip


def _cuts(rec: Recording, rows_per_group: int) -> list[int]:
    """Row group boundaries: the first message start at or after each multiple of the size."""
    starts = rec.message_starts()
    targets = np.arange(rows_per_group, len(rec), rows_per_group)
    cuts = np.unique(starts[np.searchsorted(starts, targets)])
    return [0, *(int(c) for c in cuts if 0 < c < len(rec)), len(rec)]


def write_recording(
    path: str | Path, rec: Recording, *, rows_per_group: int = ROW_GROUP_ROWS
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(rec)
    with pq.ParquetWriter(
        Path(path), schema, compression="zstd", use_dictionary=["meter"], write_statistics=True,
        column_encoding={c: "DELTA_BINARY_PACKED" for c in ("send_s", "msg_id", "ts_s")},
    ) as writer:  # fmt: skip
        cuts = _cuts(rec, rows_per_group)
        for lo, hi in itertools.pairwise(cuts):
            cols = [pa.array(getattr(rec, name)[lo:hi]) for name in COLUMNS]
            table = pa.Table.from_arrays([*cols, _raw_array(rec, lo, hi)], schema=schema)
            writer.write_table(table, row_group_size=hi - lo)


@dataclass(frozen=True)
class RecordingFile:
    """A recording on disk, read row group by row group so memory stays bounded."""

    path: Path
    meter_ids: tuple[str, ...]
    meta: dict[str, str]
    rows: int
    n_readings: int
    n_messages: int

    @classmethod
    def open(cls, path: str | Path) -> RecordingFile:
        import pyarrow.parquet as pq

        path = Path(path)
        schema = pq.read_schema(path)
        raw_head = (schema.metadata or {}).get(METADATA_KEY)
        if raw_head is None:
            raise ValueError(f"{path} is not a meterwatch recording (no {METADATA_KEY.decode()})")
        head = orjson.loads(raw_head)
        if head.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: recording format {head.get('version')} is not supported")
        return cls(
            path, tuple(head["meter_ids"]), dict(head["meta"]), int(head["rows"]),
            int(head["readings"]), int(head["messages"]),
        )  # fmt: skip

    def chunks(self) -> Iterator[Recording]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        for i in range(pf.num_row_groups):
            yield _from_table(pf.read_row_group(i), self.meter_ids, self.meta)

    def read(self) -> Recording:
        import pyarrow.parquet as pq

        return _from_table(pq.read_table(self.path), self.meter_ids, self.meta)


def _from_table(table: pa.Table, meter_ids: tuple[str, ...], meta: dict[str, str]) -> Recording:
    cols = {
        name: np.ascontiguousarray(table.column(name).to_numpy(), dtype=_DTYPES[name])
        for name in COLUMNS
    }
    raw_col = table.column("raw").combine_chunks()
    valid = raw_col.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid).tolist()
    payloads = raw_col.filter(raw_col.is_valid()).to_pylist()
    return Recording(
        **cols, meter_ids=meter_ids, raw=dict(zip(rows, payloads, strict=True)), meta=dict(meta)
    )


def read_recording(path: str | Path) -> Recording:
    """The whole recording in memory (~50 bytes a row); ``RecordingFile.chunks`` streams it."""
    return RecordingFile.open(path).read()
