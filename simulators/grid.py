"""The common time grid of a simulated fleet: every meter is sampled at the same instants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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

    def iso(self, k: int, tz: datetime | None = None) -> str:
        return datetime.fromtimestamp(self.start_s + k * self.interval_s, UTC).isoformat()
