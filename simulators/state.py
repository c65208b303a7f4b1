"""The mutable per-meter, per-column arrays that the simulation stages fill in turn.

Profiles write ``use``; faults edit every array in place; the scenario turns ``use`` and
``measured`` into registers; reporting reads registers, ``flags``, ``battery_pct`` and ``silent``.
Keeping the state as plain aligned numpy arrays lets each stage edit whole slices at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from meterwatch.domain import FLAG_BITS, flag_names

__all__ = ["FLAG_BITS", "FleetState", "flag_names", "new_state"]


@dataclass(eq=False)
class FleetState:
    """(M, T) arrays follow the meter list and the grid; (M,) arrays follow the meter list."""

    use: NDArray[np.float64]
    """m3 through the meter in the interval ending at each column; negative = reverse flow."""
    measured: NDArray[np.bool_]
    """False where the register does not count (a stuck register)."""
    initial_register_m3: NDArray[np.float64]
    """Register at column 0 (near ``register_max_m3`` for a meter that rolls over)."""
    replaced_at: NDArray[np.int64]
    """Column where a new meter starts from 0 m3, -1 = never."""
    flags: NDArray[np.uint8]
    """Bit set of ``FLAG_BITS``: the meter's own alarm flags per column."""
    battery_pct: NDArray[np.float32]
    silent: NDArray[np.bool_]
    """True where the meter sends nothing (dead radio or battery)."""
    network_loss: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    """DMA -> (T,) extra m3 per interval flowing into the DMA (a network leak)."""


def new_state(n_meters: int, steps: int) -> FleetState:
    """A state with no consumption, counting registers, full batteries and no events."""
    shape = (n_meters, steps)
    return FleetState(
        use=np.zeros(shape, dtype=np.float64),
        measured=np.ones(shape, dtype=np.bool_),
        initial_register_m3=np.zeros(n_meters, dtype=np.float64),
        replaced_at=np.full(n_meters, -1, dtype=np.int64),
        flags=np.zeros(shape, dtype=np.uint8),
        battery_pct=np.full(shape, 100.0, dtype=np.float32),
        silent=np.zeros(shape, dtype=np.bool_),
        network_loss={},
    )
