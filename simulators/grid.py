"""The common time grid of a simulated fleet: every meter is sampled at the same instants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Grid:
    """``steps`` instants from ``start_s`` (epoch seconds, UTC), ``interval_s`` apart.

    Array columns follow the grid: column k is the instant ``start_s + k * interval_s``, and a
    per-interval quantity in column k is the one of the interval ending at that instant (column 0
    has none and holds 0).
    """

    start_s: int
    interval_s: int
    steps: int

    @property
    def ts(self) -> NDArray[np.int64]:
        return self.start_s + np.arange(self.steps, dtype=np.int64) * self.interval_s

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.start_s, UTC)

    @property
    def end_s(self) -> int:
        """The last instant of the grid."""
        return self.start_s + (self.steps - 1) * self.interval_s

    def step_at(self, epoch_s: int | float) -> int:
        """Index of the first grid instant at or after ``epoch_s``, clipped to the grid."""
        k = -(-(int(epoch_s) - self.start_s) // self.interval_s)
        return min(max(k, 0), self.steps - 1)

    def iso(self, k: int) -> str:
        return datetime.fromtimestamp(self.start_s + k * self.interval_s, UTC).isoformat()


def local_seconds(instants: NDArray[np.int64], timezone: str) -> NDArray[np.int64]:
    """Epoch instants shifted to local wall-clock seconds in ``timezone`` (DST included).

    The offset is looked up once per distinct UTC hour, which is exact wherever offsets change
    on the hour and keeps a month of 15-minute columns to a few hundred lookups.
    """
    zone = ZoneInfo(timezone)
    hours, inverse = np.unique(instants // 3600, return_inverse=True)
    offsets = [datetime.fromtimestamp(int(h) * 3600, zone).utcoffset() for h in hours]
    table = np.array([0 if o is None else int(o.total_seconds()) for o in offsets], np.int64)
    local: NDArray[np.int64] = instants + table[inverse]
    return local
