"""Turning rule decisions (arrays of meters) into ``Alert`` objects, and the open/cleared book.

A type can be open because a rule saw it, because the meter flagged it, or both; it is reported
cleared only when neither holds any more. Rules work on arrays and call :meth:`Emitter.raise_`
and :meth:`Emitter.clear` with the meters concerned; only those few rows become Python objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.alert import Alert, Severity, utc
from detectors.state import TYPE_BIT

SEVERITIES = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)
Evidence = Callable[[int], dict[str, Any]]  # row position -> evidence
Loss = Callable[[int], float | None]


class Emitter:
    def __init__(self, state: NDArray[np.void], meter_ids: Sequence[str]) -> None:
        self.state = state
        self.meter_ids = meter_ids
        self.alerts: list[Alert] = []

    def raise_(
        self,
        alert_type: str,
        idx: NDArray[np.intp],
        started: NDArray[np.int64],
        detected: NDArray[np.int64],
        severity: NDArray[np.int8] | int,
        evidence: Evidence,
        loss: Loss | None = None,
        *,
        by_flag: bool = False,
    ) -> None:
        """Open (or repeat) ``alert_type`` on meters ``idx``; one alert per row, in row order."""
        if idx.size == 0:
            return
        bit = TYPE_BIT[alert_type]
        field = "open_flag" if by_flag else "open_rule"
        self.state[field][idx] |= np.uint16(bit)
        sev = np.broadcast_to(np.asarray(severity, np.int8), idx.shape)
        for k in range(idx.size):
            self.alerts.append(
                Alert(
                    meter_id=self.meter_ids[int(idx[k])],
                    type=alert_type,
                    severity=SEVERITIES[int(sev[k])],
                    started_at=utc(int(started[k])),
                    detected_at=utc(int(detected[k])),
                    evidence=evidence(k),
                    estimated_loss_m3_per_day=None if loss is None else loss(k),
                )
            )

    def clear(
        self,
        alert_type: str,
        idx: NDArray[np.intp],
        at: NDArray[np.int64],
        *,
        by_flag: bool = False,
    ) -> None:
        """Drop one source of ``alert_type``; report cleared where no source is left."""
        if idx.size == 0:
            return
        bit = np.uint16(TYPE_BIT[alert_type])
        field, other = ("open_flag", "open_rule") if by_flag else ("open_rule", "open_flag")
        was = (self.state[field][idx] & bit) != 0
        self.state[field][idx] &= ~bit
        done = was & ((self.state[other][idx] & bit) == 0)
        for k in np.flatnonzero(done):
            t = utc(int(at[k]))
            self.alerts.append(
                Alert(
                    meter_id=self.meter_ids[int(idx[k])],
                    type=alert_type,
                    severity=Severity.INFO,
                    started_at=t,
                    detected_at=t,
                    cleared=True,
                )
            )


def is_open(state: NDArray[np.void], idx: NDArray[np.intp], alert_type: str) -> NDArray[np.bool_]:
    bit = np.uint16(TYPE_BIT[alert_type])
    out: NDArray[np.bool_] = ((state["open_rule"][idx] | state["open_flag"][idx]) & bit) != 0
    return out


def rule_open(state: NDArray[np.void], idx: NDArray[np.intp], alert_type: str) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = (state["open_rule"][idx] & np.uint16(TYPE_BIT[alert_type])) != 0
    return out


def enabled(params: NDArray[np.void], idx: NDArray[np.intp], alert_type: str) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = (params["enabled"][idx] & np.uint16(TYPE_BIT[alert_type])) != 0
    return out
