"""The detector bank's input: readings as aligned numpy columns, in arrival order.

Message-level status (battery, flags) describes the meter when it sent the message, so it sits on
the message's newest reading only (``status`` True), and ``span_start`` remembers the oldest
reading of that message: a flag in a daily NB-IoT upload says "sometime in this day", not "at the
last hour". Ingest (from decoded messages) and the offline runner (from a recording) both build
batches with :func:`from_messages` semantics, so they feed the bank identical input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import Reading, flag_bits


@dataclass(frozen=True, eq=False)
class Batch:
    meter: NDArray[np.int32]  # index in the bank's meter table
    ts: NDArray[np.int64]  # epoch seconds
    register: NDArray[np.float64]  # m3
    battery: NDArray[np.float32]  # % or NaN
    flags: NDArray[np.uint8]  # FLAG_BITS, on status rows only
    status: NDArray[np.bool_]  # the row carries its message's status
    span_start: NDArray[np.int64]  # oldest reading of the row's message

    def __len__(self) -> int:
        return int(self.ts.size)

    @classmethod
    def empty(cls) -> Batch:
        return cls(
            np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float64),
            np.zeros(0, np.float32), np.zeros(0, np.uint8), np.zeros(0, np.bool_),
            np.zeros(0, np.int64),
        )  # fmt: skip


def from_messages(
    messages: Sequence[Sequence[Reading]], index: Callable[[Sequence[str]], NDArray[np.int32]]
) -> Batch:
    """A batch from decoded messages (each a list of one meter's readings), in arrival order.

    The union of a message's flags and its newest battery value go on its newest reading.
    """
    rows = [r for msg in messages for r in msg]
    n = len(rows)
    if n == 0:
        return Batch.empty()
    ts = np.fromiter((int(r.ts.timestamp()) for r in rows), np.int64, n)
    register = np.fromiter((r.register_m3 for r in rows), np.float64, n)
    battery = np.full(n, np.nan, np.float32)
    flags = np.zeros(n, np.uint8)
    status = np.zeros(n, np.bool_)
    span_start = ts.copy()
    pos = 0
    tl = ts.tolist()
    for msg in messages:
        k = len(msg)
        if k == 0:
            continue
        if k == 1:
            newest = pos
            r = msg[0]
            if r.flags:
                flags[pos] = flag_bits(r.flags)
            if r.battery_pct is not None:
                battery[pos] = r.battery_pct
        else:
            seg = tl[pos : pos + k]
            newest = pos + seg.index(max(seg))
            span_start[newest] = min(seg)
            flags[newest] = flag_bits([f for r in msg for f in r.flags])
            last_battery = [r.battery_pct for r in msg if r.battery_pct is not None]
            if last_battery:
                battery[newest] = last_battery[-1]
        status[newest] = True
        pos += k
    meter = index([r.meter_id for r in rows])
    return Batch(meter, ts, register, battery, flags, status, span_start)
