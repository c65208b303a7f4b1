"""Ground truth of a simulated scenario: one ``Label`` per injected event, stored as JSON Lines.

Labels are what an evaluation scores alerts against, so a labels file must be exactly reproducible:
keys are sorted, labels are sorted by ``(start, meter_id, type)`` and times are ISO 8601 in UTC
(which makes their text order their time order). The same seed therefore gives the same bytes.

``expect_alert`` separates faults that must raise an alert of the same ``type`` from noise events
(rollover, replacement, a busy day, ...) that a good detector must stay quiet about.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from meterwatch.domain import ALERT_TYPES as DOMAIN_ALERT_TYPES

# Alert types a scenario labels: all but those no simulated fault stands behind (an outlier
# among peers and an unmapped meter flag have no injected ground truth).
ALERT_TYPES = frozenset(DOMAIN_ALERT_TYPES) - {"fleet_outlier", "meter_alarm"}
NOISE_TYPES = frozenset(
    {
        "rollover",
        "replacement",
        "duplicates",
        "out_of_order",
        "malformed",
        "busy_day",
        "holiday",
        "late_upload",
        "clock_skew",
        "drip",
    }
)
_FIELDS = ("meter_id", "type", "start", "end", "expect_alert", "params")


@dataclass(frozen=True)
class Label:
    """One injected event on one meter (or on a DMA, then ``meter_id`` is its bulk inlet meter).

    ``start`` is when the condition began and ``end`` when it stopped (``None``: it lasts to the end
    of the scenario). ``params`` holds the event's JSON-able parameters, e.g. a leak's ``rate_lph``.
    """

    meter_id: str
    type: str
    start: str
    end: str | None
    expect_alert: bool
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in ALERT_TYPES | NOISE_TYPES:
            raise ValueError(f"unknown label type {self.type!r}")

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return (self.start, self.meter_id, self.type)

    def to_json(self) -> bytes:
        """One compact JSON object with sorted keys, so equal labels are equal bytes."""
        return orjson.dumps(
            {name: getattr(self, name) for name in _FIELDS}, option=orjson.OPT_SORT_KEYS
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Label:
        obj = orjson.loads(data)
        if not isinstance(obj, Mapping):
            raise ValueError("a label must be a JSON object")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Label:
        missing = [k for k in ("meter_id", "type", "start") if k not in obj]
        unknown = sorted(set(obj) - set(_FIELDS))
        if missing or unknown:
            raise ValueError(f"bad label: missing {missing}, unknown {unknown}")
        return cls(
            meter_id=str(obj["meter_id"]),
            type=str(obj["type"]),
            start=str(obj["start"]),
            end=None if obj.get("end") is None else str(obj["end"]),
            expect_alert=bool(obj.get("expect_alert", obj["type"] in ALERT_TYPES)),
            params=dict(obj.get("params") or {}),
        )


def sort_labels(labels: Iterable[Label]) -> list[Label]:
    """Labels in file order: by start, then meter, then type (ties keep their given order)."""
    return sorted(labels, key=lambda label: label.sort_key)


def dumps_labels(labels: Iterable[Label]) -> bytes:
    """The JSON Lines text of ``labels`` in file order, one label a line, newline-terminated."""
    return b"".join(label.to_json() + b"\n" for label in sort_labels(labels))


def write_labels(path: str | Path, labels: Iterable[Label]) -> None:
    Path(path).write_bytes(dumps_labels(labels))


def read_labels(path: str | Path) -> list[Label]:
    """Labels of a JSON Lines file, in file order; blank lines are skipped."""
    with Path(path).open("rb") as f:
        return [Label.from_json(line) for line in f if line.strip()]
