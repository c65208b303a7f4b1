"""Which episode answers which label.

An episode's span runs from when the detector says the condition began to when it first said so,
``[started_at, detected_at]``; it answers a label of the same meter and type whose window
``[start, end]`` it overlaps. Using the span rather than the detection alone credits a detector
that saw a fault late but placed its start inside the window, and the span rather than the whole
episode keeps a long-open alert from claiming every later fault on the meter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from evaluation.episodes import Episode
from simulators.labels import Label

FLEET_WIDE = "*"  # a label's meter_id meaning every meter (public holidays)


def parse_time(text: str) -> datetime:
    """A label time; one written without an offset is UTC, as labels are."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A label's time window; ``end`` None is open to the end of the data."""

    start: datetime
    end: datetime | None

    @classmethod
    def of(cls, label: Label) -> Window:
        return cls(parse_time(label.start), None if label.end is None else parse_time(label.end))

    def overlaps(self, lo: datetime, hi: datetime) -> bool:
        return hi >= self.start and (self.end is None or lo <= self.end)

    def overlaps_episode(self, ep: Episode) -> bool:
        return self.overlaps(*span(ep))


def span(ep: Episode) -> tuple[datetime, datetime]:
    """``[started_at, detected_at]``, in order even if a detector put its start after detection."""
    return min(ep.started_at, ep.detected_at), max(ep.started_at, ep.detected_at)


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    """A fault label and its first answering episode (None: missed).

    ``delay_h`` is that episode's first detection minus the label's start, in hours, never
    negative: an episode whose start precedes the label can still overlap it, and detecting a
    fault before it began is no earlier than at once.
    """

    label: Label
    episode: Episode | None
    delay_h: float | None

    @property
    def detected(self) -> bool:
        return self.episode is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "meter_id": self.label.meter_id,
            "type": self.label.type,
            "start": self.label.start,
            "end": self.label.end,
            "detected": self.detected,
            "delay_h": None if self.delay_h is None else round(self.delay_h, 3),
            "episode": None if self.episode is None else self.episode.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Matching:
    """Outcomes of the fault labels (in label order) and, per episode, whether it answers one."""

    outcomes: list[LabelOutcome]
    true_episode: list[bool]


def is_fault(label: Label) -> bool:
    """A label an alert of its type must answer (fleet-wide labels are noise by nature)."""
    return label.expect_alert and label.meter_id != FLEET_WIDE


def match(episodes: Sequence[Episode], labels: Iterable[Label]) -> Matching:
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, ep in enumerate(episodes):
        by_key[(ep.meter_id, ep.type)].append(i)
    true_episode = [False] * len(episodes)
    outcomes = []
    for label in labels:
        if not is_fault(label):
            continue
        window = Window.of(label)
        hits = [
            i for i in by_key.get((label.meter_id, label.type), ())
            if window.overlaps_episode(episodes[i])
        ]  # fmt: skip
        for i in hits:
            true_episode[i] = True
        first = min((episodes[i] for i in hits), key=lambda e: e.detected_at, default=None)
        delay = None
        if first is not None:
            delay = max((first.detected_at - window.start).total_seconds() / 3600.0, 0.0)
        outcomes.append(LabelOutcome(label, first, delay))
    return Matching(outcomes, true_episode)


def label_outcomes(episodes: Sequence[Episode], labels: Iterable[Label]) -> list[LabelOutcome]:
    """Detected or missed, delay and answering episode of every fault label, in label order."""
    return match(episodes, labels).outcomes
