"""Alert streams folded into episodes: what an operator sees is one alert per condition, not one
per reading that showed it.

The fold is the alert store's lifecycle, so an offline run's JSON Lines stream and the ``alerts``
table score the same: the first non-cleared alert of a (meter, type) opens an episode, later ones
repeat it (the worst severity and the earliest start win, the first detection stays), a cleared
alert closes it, and an alert after the clear opens a new episode. A clear with nothing open says
nothing and is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from detectors.alert import SEVERITY_RANK, Alert, Severity, iso


@dataclass(frozen=True, slots=True)
class Episode:
    """One condition on one meter from first detection to clear (``cleared_at`` None: still open).

    ``detected_at`` is the first detection, the moment an operator could have acted, which is
    what detection delay is measured to; ``last_seen_at`` is the latest repeat.
    """

    meter_id: str
    type: str
    severity: Severity
    started_at: datetime
    detected_at: datetime
    last_seen_at: datetime
    cleared_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "meter_id": self.meter_id,
            "type": self.type,
            "severity": str(self.severity),
            "started_at": iso(self.started_at),
            "detected_at": iso(self.detected_at),
            "last_seen_at": iso(self.last_seen_at),
            "cleared_at": None if self.cleared_at is None else iso(self.cleared_at),
        }


def _repeat(ep: Episode, alert: Alert) -> Episode:
    worse = SEVERITY_RANK[alert.severity] > SEVERITY_RANK[ep.severity]
    return replace(
        ep,
        severity=alert.severity if worse else ep.severity,
        started_at=min(ep.started_at, alert.started_at),
        last_seen_at=max(ep.last_seen_at, alert.detected_at),
    )


def episodes(alerts: Iterable[Alert]) -> list[Episode]:
    """The episodes of an alert stream taken in its order (the store's arrival order).

    Sorted by first detection, so the same stream always gives the same list.
    """
    open_: dict[tuple[str, str], Episode] = {}
    closed: list[Episode] = []
    for alert in alerts:
        key = (alert.meter_id, alert.type)
        current = open_.get(key)
        if alert.cleared:
            if current is not None:
                closed.append(replace(current, cleared_at=alert.detected_at))
                del open_[key]
        elif current is None:
            open_[key] = Episode(
                alert.meter_id, alert.type, alert.severity, alert.started_at, alert.detected_at,
                alert.detected_at,
            )  # fmt: skip
        else:
            open_[key] = _repeat(current, alert)
    return sorted([*closed, *open_.values()], key=lambda e: (e.detected_at, e.meter_id, e.type))


def read_alert_stream(path: str | Path) -> list[Alert]:
    """The alerts of a JSON Lines file (one ``Alert.to_json()`` a line), in file order."""
    out: list[Alert] = []
    with Path(path).open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Alert.from_json(orjson.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not an alert ({e})") from e
    return out
