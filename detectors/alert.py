"""What a detector says: an ``Alert`` about one meter (or a DMA's inlet meter), in event time.

Detectors emit an alert when a condition is seen and again while it lasts (the store keeps one open
alert per meter and type and updates it); when the condition is over they emit the same type with
``cleared=True``. Times are UTC-aware datetimes of the readings involved, never the wall clock, so a
replay at any speed yields the same alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from meterwatch.domain import ALERT_TYPES

__all__ = ["ALERT_TYPES", "SEVERITY_RANK", "Alert", "Severity", "iso", "utc"]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Alert:
    """One observation of a condition on a meter.

    ``started_at`` is when the condition began (as well as the data can tell), ``detected_at`` the
    event time of the reading (or watermark) that showed it. ``evidence`` holds JSON-able numbers
    that explain the decision, e.g. ``{"min_flow_lph": 38.0, "window_h": 24}``.
    """

    meter_id: str
    type: str
    severity: Severity
    started_at: datetime
    detected_at: datetime
    evidence: Mapping[str, Any] = field(default_factory=dict)
    estimated_loss_m3_per_day: float | None = None
    cleared: bool = False

    def __post_init__(self) -> None:
        if self.type not in ALERT_TYPES:
            raise ValueError(f"unknown alert type {self.type!r}")
        if self.started_at.tzinfo is None or self.detected_at.tzinfo is None:
            raise ValueError("alert times must be timezone-aware")

    def to_json(self) -> dict[str, Any]:
        """The alert as the JSON object stored, published and scored (times in ISO 8601 UTC)."""
        return {
            "meter_id": self.meter_id,
            "type": self.type,
            "severity": str(self.severity),
            "started_at": iso(self.started_at),
            "detected_at": iso(self.detected_at),
            "evidence": dict(self.evidence),
            "estimated_loss_m3_per_day": self.estimated_loss_m3_per_day,
            "cleared": self.cleared,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Alert:
        return cls(
            meter_id=obj["meter_id"],
            type=obj["type"],
            severity=Severity(obj.get("severity", "warning")),
            started_at=datetime.fromisoformat(obj["started_at"]),
            detected_at=datetime.fromisoformat(obj["detected_at"]),
            evidence=obj.get("evidence") or {},
            estimated_loss_m3_per_day=obj.get("estimated_loss_m3_per_day"),
            cleared=bool(obj.get("cleared", False)),
        )


def utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def iso(t: datetime) -> str:
    """ISO 8601 in UTC with ``Z``, as alerts are written, so reports compare as text too."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
