"""An evaluation's files: ``scores.json`` for scripts, ``report.md`` for people, ``cases.png``.

The plots show a few faults that were caught and a few that were missed, each as the meter's hourly
use around the fault with its window shaded and the first detection marked: a missed leak that is
plain to the eye says the detector is wrong, one buried in the noise says the fault was too small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from evaluation.matching import LabelOutcome, Window
from evaluation.scores import Scores
from evaluation.series import (
    Series,
    series_from_db,
    series_from_recording,
    to_datetime64,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Series", "pick_cases", "series_from_db", "series_from_recording", "write_report"]

# The faults that cost most when missed come first in the plots.
PRIORITY = ("leak", "burst", "abnormal_high")
CASES = 3
MARGIN = timedelta(days=1)
OPEN_SHOWN = timedelta(days=2)  # how much of an open-ended window to show after its start


def _rank(type_: str) -> tuple[int, str]:
    return (PRIORITY.index(type_) if type_ in PRIORITY else len(PRIORITY), type_)


def pick_cases(
    outcomes: Sequence[LabelOutcome], *, detected: bool, n: int = CASES
) -> list[LabelOutcome]:
    """Up to ``n`` outcomes, one type at a time in priority order, earliest label first.

    Taking types in turn rather than the first ``n`` of the top type shows more of the detector.
    """
    groups: dict[str, list[LabelOutcome]] = defaultdict(list)
    for o in sorted(outcomes, key=lambda o: o.label.sort_key):
        if o.detected == detected:
            groups[o.label.type].append(o)
    queues = [groups[t] for t in sorted(groups, key=_rank)]
    picked: list[LabelOutcome] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return picked[:n]


def _span(o: LabelOutcome) -> tuple[datetime, datetime, datetime]:
    """Plot range and the shaded window's end (an open window is shaded to the plot's end)."""
    w = Window.of(o.label)
    last = w.end or w.start + OPEN_SHOWN
    if o.episode is not None:
        last = max(last, o.episode.detected_at)
    hi = last + MARGIN
    return w.start - MARGIN, hi, w.end or hi


def _title(o: LabelOutcome) -> str:
    verdict = "missed" if o.delay_h is None else f"detected after {o.delay_h:.1f} h"
    return f"{o.label.type} {o.label.meter_id}\n{verdict}"


def write_cases_png(path: Path, rows: Sequence[Sequence[LabelOutcome]], series: Series) -> None:
    """One row of small plots per group of cases (detected, missed); empty groups are skipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r]
    cols = max((len(r) for r in rows), default=1)
    fig = Figure(figsize=(4.0 * cols, 2.6 * max(len(rows), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    if not rows:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no fault labels", ha="center", va="center")
        ax.set_axis_off()
    for i, row in enumerate(rows):
        for j, case in enumerate(row):
            _plot_case(fig.add_subplot(len(rows), cols, i * cols + j + 1), case, series)
    fig.savefig(path, dpi=100)


def _plot_case(ax: Axes, case: LabelOutcome, series: Series) -> None:
    """Hours from the label's start on x, so window and delay read off the axis directly."""
    lo, hi, shade_end = _span(case)
    start = Window.of(case.label).start
    times, volume = series(case.label.meter_id, lo, hi)
    x = (times - to_datetime64(start)) / np.timedelta64(1, "h")
    ax.plot(x, volume, drawstyle="steps-post", linewidth=0.8, color="tab:blue")
    ax.axvspan(0.0, _hours(shade_end - start), color="tab:orange", alpha=0.2)
    if case.episode is not None:
        ax.axvline(_hours(case.episode.detected_at - start), color="tab:red", linestyle="--")
    ax.set_xlim(_hours(lo - start), _hours(hi - start))
    ax.set_xlabel(f"hours from {start.astimezone(UTC):%Y-%m-%d %H:%M} UTC", fontsize=7)
    ax.set_ylabel("m³ / h", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title(_title(case), fontsize=8)
    if not times.size:
        ax.text(0.5, 0.5, "no readings", ha="center", va="center", transform=ax.transAxes)


def _hours(d: timedelta) -> float:
    return d.total_seconds() / 3600.0


def _case_line(o: LabelOutcome) -> str:
    end = o.label.end or "open"
    verdict = "missed" if o.delay_h is None else f"detected after {o.delay_h:.1f} h"
    return f"- {o.label.type} on {o.label.meter_id}, {o.label.start} to {end}: {verdict}"


def report_markdown(scores: Scores, cases: Sequence[LabelOutcome]) -> str:
    o = scores.overall
    false_noise = sum(s.false_episodes for s in (*scores.noise, *scores.fleet_wide))
    rate = "-" if o.false_per_1000_meter_days is None else f"{o.false_per_1000_meter_days:.3f}"
    parts = [
        "# Detector evaluation",
        "",
        f"{o.n_labels} fault labels, {o.detected} detected; {o.n_alerts} alerts, "
        f"{o.false_alerts} false ({rate} per 1,000 meter-days over {scores.meter_days:g} "
        f"meter-days). An alert is an episode (raise, repeats, clear); it is true when its span "
        f"from start to first detection overlaps a fault label of its meter and type.",
        "",
        "## Per alert type",
        "",
        scores.table_markdown(),
        "",
        "## Noise",
        "",
        f"Noise events must raise no alerts: {false_noise} false alerts overlap one. Fleet-wide "
        f"labels (public holidays) count the volume alerts of every meter.",
        "",
        scores.noise_markdown(),
        "",
        "## Cases",
        "",
        "Hourly use around each label (window shaded, first detection dashed):",
        "",
        *map(_case_line, cases),
        "",
        "![cases](cases.png)",
        "",
    ]
    return "\n".join(parts)


def write_report(
    scores: Scores, outcomes: Sequence[LabelOutcome], out_dir: str | Path, series: Series
) -> dict[str, Path]:
    """Write the three files into ``out_dir`` (created if missing); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"scores": out / "scores.json", "report": out / "report.md", "cases": out / "cases.png"}
    opts = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
    paths["scores"].write_bytes(orjson.dumps(scores.to_json(), option=opts) + b"\n")
    detected = pick_cases(outcomes, detected=True)
    missed = pick_cases(outcomes, detected=False)
    write_cases_png(paths["cases"], [detected, missed], series)
    paths["report"].write_text(report_markdown(scores, [*detected, *missed]), encoding="utf-8")
    return paths
