"""Scores of a detector run against ground truth: pure counting, no I/O.

Per alert type: precision over episodes (an alert that answers no fault is a false alert, an
operator's wasted call-out), recall over fault labels, their F1, and how long a fault ran before
its first detection. False alerts are also given per 1,000 meter-days, the rate a utility can
staff for whatever the fleet's size. Noise events (rollover, a busy day, a holiday, ...) must
raise nothing, so every episode overlapping one is counted, and how many of those are false.

Numbers are rounded to 3 decimals and everything is sorted, so the same inputs give the same
bytes of JSON and markdown.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.episodes import Episode
from evaluation.matching import FLEET_WIDE, LabelOutcome, Matching, Window, match
from simulators.labels import Label

# What a whole fleet does differently on a public holiday; other types are not about volume.
FLEET_WIDE_TYPES = frozenset({"abnormal_low", "abnormal_high", "no_consumption", "fleet_outlier"})
OVERALL = "all"


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def quantile(sorted_xs: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None for no values."""
    if not sorted_xs:
        return None
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class TypeScore:
    """One alert type's counts and rates; a rate is None where it is undefined (0 / 0)."""

    type: str
    n_labels: int
    n_alerts: int
    true_alerts: int
    false_alerts: int
    detected: int
    precision: float | None
    recall: float | None
    f1: float | None
    delay_median_h: float | None
    delay_p90_h: float | None
    false_per_1000_meter_days: float | None

    @classmethod
    def count(
        cls, type_: str, outcomes: Sequence[LabelOutcome], n_alerts: int, true_alerts: int,
        meter_days: float,
    ) -> TypeScore:  # fmt: skip
        detected = sum(o.detected for o in outcomes)
        precision = true_alerts / n_alerts if n_alerts else None
        recall = detected / len(outcomes) if outcomes else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        delays = sorted(o.delay_h for o in outcomes if o.delay_h is not None)
        false = n_alerts - true_alerts
        return cls(
            type_, len(outcomes), n_alerts, true_alerts, false, detected, _r(precision),
            _r(recall), _r(f1), _r(quantile(delays, 0.5)), _r(quantile(delays, 0.9)),
            _r(1000.0 * false / meter_days) if meter_days > 0 else None,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class NoiseScore:
    """Episodes of any type overlapping the noise labels of one type (each episode once).

    ``false_episodes`` are those that answer no fault label: a leak found during a busy day is
    still right, an abnormal_high raised by it is the noise getting through.
    """

    type: str
    n_labels: int
    labels_alerted: int
    episodes: int
    false_episodes: int
    false_by_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scores:
    """The scores, and the matching of episodes to labels they were counted from (for reports)."""

    meter_days: float
    types: tuple[TypeScore, ...]
    overall: TypeScore
    noise: tuple[NoiseScore, ...]
    fleet_wide: tuple[NoiseScore, ...]
    matching: Matching = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        def rows(items: Iterable[TypeScore | NoiseScore]) -> dict[str, Any]:
            return {s.type: {k: v for k, v in asdict(s).items() if k != "type"} for s in items}

        return {
            "meter_days": _r(self.meter_days),
            "types": rows(self.types),
            "overall": rows([self.overall])[OVERALL],
            "noise": rows(self.noise),
            "fleet_wide": rows(self.fleet_wide),
        }

    def table_markdown(self) -> str:
        """One row per alert type and a last row for all of them together."""
        head = (
            "| type | labels | alerts | precision | recall | F1 | delay median h | delay p90 h "
            "| false / 1,000 meter-days |"
        )
        lines = [head, "|---|" + "---:|" * 8]
        for s in (*self.types, self.overall):
            cells = (s.n_labels, s.n_alerts, s.precision, s.recall, s.f1, s.delay_median_h,
                     s.delay_p90_h, s.false_per_1000_meter_days)  # fmt: skip
            lines.append(f"| {s.type} | " + " | ".join(map(_cell, cells)) + " |")
        return "\n".join(lines)

    def noise_markdown(self) -> str:
        """Noise and fleet-wide labels, and the episodes that overlap them."""
        lines = [
            "| noise | scope | labels | labels with alerts | alerts | false alerts "
            "| false by type |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for scope, items in (("meter", self.noise), ("fleet", self.fleet_wide)):
            for s in items:
                by_type = ", ".join(f"{k} {v}" for k, v in s.false_by_type.items()) or "-"
                lines.append(
                    f"| {s.type} | {scope} | {s.n_labels} | {s.labels_alerted} | {s.episodes} "
                    f"| {s.false_episodes} | {by_type} |"
                )
        return "\n".join(lines)


def _cell(x: float | int | None) -> str:
    if x is None:
        return "-"
    return str(x) if isinstance(x, int) else f"{x:.3f}"


def _noise(
    labels: Iterable[Label], episodes: Sequence[Episode], true_episode: Sequence[bool],
    by_meter: dict[str, list[int]] | None,
) -> tuple[NoiseScore, ...]:  # fmt: skip
    """Per label type; ``by_meter`` None means each label covers every meter (fleet-wide)."""
    grouped: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        grouped[label.type].append(label)
    out = []
    for type_, group in sorted(grouped.items()):
        hit: set[int] = set()
        alerted = 0
        for label in group:
            window = Window.of(label)
            if by_meter is None:
                pool: Iterable[int] = (
                    i for i, ep in enumerate(episodes) if ep.type in FLEET_WIDE_TYPES
                )
            else:
                pool = by_meter.get(label.meter_id, ())
            found = {i for i in pool if window.overlaps_episode(episodes[i])}
            alerted += bool(found)
            hit |= found
        false = sorted(i for i in hit if not true_episode[i])
        by_type = dict(sorted(Counter(episodes[i].type for i in false).items()))
        out.append(NoiseScore(type_, len(group), alerted, len(hit), len(false), by_type))
    return tuple(out)


def score(episodes: Sequence[Episode], labels: Iterable[Label], *, meter_days: float) -> Scores:
    """Scores of ``episodes`` against ``labels`` over a fleet observed for ``meter_days``."""
    labels = list(labels)
    m = match(episodes, labels)
    outcomes_by_type: dict[str, list[LabelOutcome]] = defaultdict(list)
    for o in m.outcomes:
        outcomes_by_type[o.label.type].append(o)
    alerts = Counter(ep.type for ep in episodes)
    true = Counter(ep.type for ep, t in zip(episodes, m.true_episode, strict=True) if t)
    types = tuple(
        TypeScore.count(t, outcomes_by_type.get(t, []), alerts[t], true[t], meter_days)
        for t in sorted(set(outcomes_by_type) | set(alerts))
    )
    overall = TypeScore.count(OVERALL, m.outcomes, len(episodes), sum(m.true_episode), meter_days)
    by_meter: dict[str, list[int]] = defaultdict(list)
    for i, ep in enumerate(episodes):
        by_meter[ep.meter_id].append(i)
    noise = [x for x in labels if not x.expect_alert and x.meter_id != FLEET_WIDE]
    fleet = [x for x in labels if x.meter_id == FLEET_WIDE]
    return Scores(
        meter_days=meter_days, types=types, overall=overall,
        noise=_noise(noise, episodes, m.true_episode, by_meter),
        fleet_wide=_noise(fleet, episodes, m.true_episode, None), matching=m,
    )  # fmt: skip
