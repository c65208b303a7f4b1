"""The detector bank on real homes: DAIAD trial A as recorded, then with leaks added to it.

    python -m bench.daiad_detect                                # prints the figures
    python -m bench.daiad_detect --out docs/daiad_detection.md  # and writes them as Markdown
    python -m bench.daiad_detect --json

Simulated fleets are what the detectors are tuned on; real registers have what a simulator leaves
out (reads hours or days apart, drips, homes that fill a pool), so this is where false alarms show.
DAIAD has no labels, so every alert on it counts as false: an upper bound on the false-alarm rate,
and the figure a utility would see if its homes were as leak-free as presumed. Leaks are then added
to the same registers (a constant flow from an onset to the end, whole litres, as a 1 L register
shows it), so recall and delay are measured on real use and real gaps, and the homes left alone
tell the false-alarm rate again.

The recorded homes go through the bank as ``meterwatch detect`` runs it (fleet model on). The
homes with leaks go through it with the fleet model off: no leak rule reads it, the model is most
of the run time, and the run checks that the untouched homes' leak alerts came out identical.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from detectors.alert import Alert, iso, utc
from detectors.bank import Monitor
from detectors.config import FleetSettings
from detectors.registers import GAP_S
from evaluation.episodes import Episode, episodes
from evaluation.matching import LabelOutcome
from evaluation.scores import TypeScore, quantile, score
from meterwatch.detect import observe_recording
from meterwatch.domain import Meter, MeterKind
from simulators.csvsource import DAIAD, CsvReadings, read_csv
from simulators.labels import Label
from simulators.recording import Recording, from_csv

DAIAD_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "daiad" / "swm_trialA.csv.gz"
DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "daiad_detection.md"
TIMEZONE = "Europe/Madrid"
INTERVAL_S = 3600
SEED = 20160301
LEAK_HOMES = 30
RATE_LPH = (5.0, 300.0)
ONSET_AFTER_S = 14 * 86400  # a home's first two weeks teach the bank its normal use
ONSET_BEFORE_END_S = 7 * 86400  # a leak needs days to be seen, whatever the rule
TARGET_LEAK_PER_1000 = 1.0  # false leak episodes per 1,000 meter-days
RATE_BANDS = ((5.0, 20.0), (20.0, 80.0), (80.0, 300.0))
COMMAND = "python -m bench.daiad_detect --out docs/daiad_detection.md"


# -- data -------------------------------------------------------------------------------------
def load_readings(path: Path = DAIAD_PATH) -> CsvReadings:
    return read_csv(path, DAIAD)


def subset(readings: CsvReadings, meter_ids: Sequence[str], days: float) -> CsvReadings:
    """Some homes' first ``days`` days (from the file's first reading), for quick runs."""
    keep = np.isin(readings.meter_id, np.asarray(meter_ids, dtype=np.str_))
    keep &= readings.ts < int(readings.ts.min()) + round(days * 86400)
    return CsvReadings(
        readings.meter_id[keep], readings.ts[keep], readings.register_m3[keep],
        readings.flow_lph[keep], [],
    )  # fmt: skip


def home_meters(meter_ids: Sequence[str]) -> list[Meter]:
    """The registry the file lacks: Spanish homes read about hourly."""
    return [
        Meter(m, kind=MeterKind.RESIDENTIAL, timezone=TIMEZONE, expected_interval_s=INTERVAL_S)
        for m in meter_ids
    ]


def spans(rec: Recording) -> dict[str, tuple[int, int]]:
    """Each meter's first and last reading time (meters without readings are left out)."""
    n = len(rec.meter_ids)
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(first, rec.meter, rec.ts_s)
    np.maximum.at(last, rec.meter, rec.ts_s)
    return {
        rec.meter_ids[i]: (int(first[i]), int(last[i])) for i in range(n) if last[i] >= first[i]
    }


def meter_days(span: dict[str, tuple[int, int]], meter_ids: Sequence[str] | None = None) -> float:
    ids = span if meter_ids is None else meter_ids
    return sum((span[m][1] - span[m][0]) / 86400.0 for m in ids if m in span)


# -- injected leaks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Leak:
    meter_id: str
    onset_s: int
    rate_lph: float

    def label(self) -> Label:
        return Label(
            meter_id=self.meter_id, type="leak", start=iso(utc(self.onset_s)), end=None,
            expect_alert=True, params={"rate_lph": round(self.rate_lph, 1)},
        )  # fmt: skip


def plan_leaks(
    rec: Recording, n: int, seed: int, rate_lph: tuple[float, float] = RATE_LPH
) -> list[Leak]:
    """``n`` homes (of those with room for an onset), a log-uniform rate and an onset each."""
    span = spans(rec)
    room = sorted(m for m, (lo, hi) in span.items() if hi - ONSET_BEFORE_END_S > lo + ONSET_AFTER_S)
    if n > len(room):
        raise ValueError(f"{n} leaks asked for, {len(room)} homes have room for one")
    rng = np.random.default_rng(seed)
    homes = sorted(rng.choice(np.asarray(room), size=n, replace=False).tolist())
    rates = np.exp(rng.uniform(math.log(rate_lph[0]), math.log(rate_lph[1]), size=n))
    out = []
    for home, rate in zip(homes, rates.tolist(), strict=True):
        lo, hi = span[home]
        onset = int(rng.integers(lo + ONSET_AFTER_S, hi - ONSET_BEFORE_END_S + 1))
        out.append(Leak(str(home), onset, float(rate)))
    return out


def inject(rec: Recording, leaks: Sequence[Leak]) -> Recording:
    """The recording with each leak's volume added to its home's register from the onset on."""
    register = rec.register_m3.copy()
    index = {m: i for i, m in enumerate(rec.meter_ids)}
    for leak in leaks:
        rows = np.flatnonzero((rec.meter == index[leak.meter_id]) & (rec.ts_s >= leak.onset_s))
        litres = np.floor(leak.rate_lph * (rec.ts_s[rows] - leak.onset_s) / 3600.0)
        register[rows] += litres / 1000.0
    return replace(rec, register_m3=register)


# -- detection --------------------------------------------------------------------------------
@dataclass
class Run:
    alerts: list[Alert]
    seconds: float
    readings: int


def detect(rec: Recording, *, fleet_outliers: bool = True) -> Run:
    """The bank over a recording in send order, as ``meterwatch.detect.run`` feeds it."""
    monitor = Monitor(
        home_meters(rec.meter_ids), fleet=FleetSettings(fleet_outliers=fleet_outliers)
    )
    result, alerts = observe_recording(monitor, rec)
    return Run(alerts, result.seconds, result.readings)


def leak_rule(alert: Alert) -> str:
    """The rule behind a leak alert; a night judged without any reading in it is told apart."""
    rule = str(alert.evidence.get("rule", "meter_flag"))
    if rule == "night_flow" and not math.isfinite(float(alert.evidence.get("leak_lph", 0.0))):
        return "night_flow, no reading that night"
    return rule


def opening_alerts(alerts: Sequence[Alert], eps: Sequence[Episode]) -> list[Alert]:
    """The alert that opened each episode (its first detection)."""
    first: dict[tuple[str, str, datetime], Alert] = {}
    for a in alerts:
        if not a.cleared:
            first.setdefault((a.meter_id, a.type, a.detected_at), a)
    return [first[(e.meter_id, e.type, e.detected_at)] for e in eps]


# -- figures ----------------------------------------------------------------------------------
@dataclass
class RealHomes:
    homes: int
    readings: int
    meter_days: float
    seconds: float
    alerts: Counter[str]
    episodes: Counter[str]
    meters: Counter[str]
    leak_rules: Counter[str]
    bursts_over_gap: int
    leak_below_threshold: list[Alert]  # opened with a leak estimate under the rule's threshold
    leak_homes: Counter[str]
    examples: list[dict[str, Any]]

    def rate(self, alert_type: str) -> float:
        return 1000.0 * self.episodes[alert_type] / self.meter_days

    @property
    def leak_ok(self) -> bool:
        return self.rate("leak") <= TARGET_LEAK_PER_1000


def real_homes(rec: Recording, run: Run) -> RealHomes:
    eps = episodes(run.alerts)
    opening = opening_alerts(run.alerts, eps)
    leak_open = [a for a in opening if a.type == "leak"]
    long = [
        a for a in opening
        if a.type == "burst" and (a.detected_at - a.started_at).total_seconds() > GAP_S
    ]  # fmt: skip
    below = [
        a for a in leak_open
        if float(a.evidence.get("leak_lph", math.inf)) < float(a.evidence.get("threshold_lph", 0.0))
    ]  # fmt: skip
    examples = []
    for rule in ("night_flow, no reading that night", "continuous_flow", "night_flow"):
        examples += [_example(a) for a in leak_open if leak_rule(a) == rule][:1]
    examples += [_example(a) for a in (*below[:1], *long[:1])]
    span = spans(rec)
    return RealHomes(
        homes=len(span), readings=run.readings, meter_days=meter_days(span), seconds=run.seconds,
        alerts=Counter(a.type for a in run.alerts if not a.cleared),
        episodes=Counter(e.type for e in eps),
        meters=Counter(t for t, _ in {(e.type, e.meter_id) for e in eps}),
        leak_rules=Counter(leak_rule(a) for a in leak_open), bursts_over_gap=len(long),
        leak_below_threshold=below, leak_homes=Counter(a.meter_id for a in leak_open),
        examples=examples,
    )  # fmt: skip


def _example(a: Alert) -> dict[str, Any]:
    ev = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
          for k, v in a.evidence.items()}  # fmt: skip
    return {"meter_id": a.meter_id, "type": a.type, "started_at": iso(a.started_at),
            "detected_at": iso(a.detected_at), "evidence": ev}  # fmt: skip


@dataclass
class Injected:
    leaks: list[Leak]
    seconds: float
    leak_score: TypeScore
    outcomes: list[LabelOutcome]
    rules: Counter[str]
    other_homes: int
    other_meter_days: float
    other_false: int
    untouched_identical: bool
    onset_gaps: dict[str, float]  # leak -> hours from its onset to the home's next read, if > 1 day

    @property
    def other_rate(self) -> float:
        return 1000.0 * self.other_false / self.other_meter_days if self.other_meter_days else 0.0


def injected(rec: Recording, leaks: Sequence[Leak], run: Run, real: Run | None) -> Injected:
    """Leak figures of a run over ``rec`` with ``leaks`` added; ``real``: the same homes as
    recorded, whose leak alerts on untouched homes must be the same."""
    labels = [leak.label() for leak in leaks]
    eps = [e for e in episodes(run.alerts) if e.type == "leak"]
    span = spans(rec)
    scores = score(eps, labels, meter_days=meter_days(span))
    leak_score = next(s for s in scores.types if s.type == "leak")
    outcomes = scores.matching.outcomes
    found = [o.episode for o in outcomes if o.episode is not None]
    rules = Counter(leak_rule(a) for a in opening_alerts(run.alerts, found))
    with_leak = {leak.meter_id for leak in leaks}
    others = [m for m in span if m not in with_leak]
    other_false = sum(1 for e in eps if e.meter_id not in with_leak)
    identical = True
    if real is not None:

        def untouched(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
            return [a.to_json() for a in alerts if a.type == "leak" and a.meter_id not in with_leak]

        identical = untouched(real.alerts) == untouched(run.alerts)
    gaps = {}
    index = {m: i for i, m in enumerate(rec.meter_ids)}
    for leak in leaks:
        after = rec.ts_s[(rec.meter == index[leak.meter_id]) & (rec.ts_s >= leak.onset_s)]
        wait_h = (int(after.min()) - leak.onset_s) / 3600.0
        if wait_h > 24.0:
            gaps[leak.meter_id] = wait_h
    return Injected(
        list(leaks), run.seconds, leak_score, outcomes, rules, len(others),
        meter_days(span, others), other_false, identical, gaps,
    )  # fmt: skip


def band_rows(outcomes: Sequence[LabelOutcome]) -> list[tuple[str, int, int, float | None]]:
    """(band, leaks, detected, median delay h) per rate band."""
    rows = []
    for lo, hi in RATE_BANDS:
        top = hi == RATE_BANDS[-1][1]  # the top band includes its upper end
        inside = [
            o for o in outcomes
            if lo <= (r := float(o.label.params["rate_lph"])) and (r < hi or (top and r <= hi))
        ]  # fmt: skip
        delays = sorted(o.delay_h for o in inside if o.delay_h is not None)
        rows.append((f"{lo:g}–{hi:g}", len(inside), len(delays), quantile(delays, 0.5)))
    return rows


# -- output -----------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(real: RealHomes, inj: Injected, *, seed: int, load_s: float) -> str:
    same = "identical to" if inj.untouched_identical else "**not** identical to"
    lines = [
        "# Detectors on real homes (DAIAD)",
        "",
        f"Generated by `{COMMAND}` (seed {seed}); do not edit by hand.",
        "",
        f"DAIAD trial A: {real.homes} homes in Alicante, {real.readings:,} register reads about "
        f"hourly, {real.meter_days:,.0f} meter-days (each home's last read minus its first). "
        f"Meters registered as residential, {TIMEZONE}, expected interval {INTERVAL_S} s; "
        "default thresholds, fleet model on. There are no labels: every alert counts as false.",
        "",
        "## Alerts on the homes as recorded",
        "",
        "| type | alerts | episodes | homes | false episodes / 1,000 meter-days |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in sorted(real.episodes, key=lambda t: (-real.episodes[t], t)):
        lines.append(f"| {t} | {real.alerts[t]} | {real.episodes[t]} | {real.meters[t]} "
                     f"| {real.rate(t):.2f} |")  # fmt: skip
    total = sum(real.episodes.values())
    lines += [
        f"| all | {sum(real.alerts.values())} | {total} | - "
        f"| {1000.0 * total / real.meter_days:.2f} |",
        "",
        f"Target: ≤ {TARGET_LEAK_PER_1000:g} false `leak` episode per 1,000 meter-days: "
        f"**{real.rate('leak'):.2f}, {'met' if real.leak_ok else 'NOT met'}**.",
        "",
        "Leak episodes by the rule that opened them:",
        "",
        "| rule | episodes | per 1,000 meter-days |",
        "|---|---:|---:|",
    ]
    for rule, n in sorted(real.leak_rules.items(), key=lambda x: (-x[1], x[0])):
        lines.append(f"| {rule} | {n} | {1000.0 * n / real.meter_days:.2f} |")
    top = real.leak_homes.most_common(5)
    below = ", ".join(
        f"{a.meter_id[:8]} {iso(a.detected_at)} ({a.evidence['leak_lph']} L/h)"
        for a in real.leak_below_threshold
    )
    lines += [
        "",
        f"The {len(top)} homes with the most leak episodes have {sum(n for _, n in top)} of "
        f"{real.episodes['leak']}: " + ", ".join(f"{m[:8]} {n}" for m, n in top) + ".",
        f"Leak episodes opened with a leak estimate below the rule's own threshold (a read gap "
        f"inside the window): {len(real.leak_below_threshold)}" + (f": {below}." if below else "."),
        "",
        f"Burst episodes opened by a single read interval longer than {GAP_S // 3600} h (a gap in "
        f"the reads, not a burst): {real.bursts_over_gap} of {real.episodes['burst']}.",
        "",
        "## Injected leaks",
        "",
        f"{len(inj.leaks)} homes drawn with seed {seed}; each gets a constant leak of r L/h, r "
        f"log-uniform in [{RATE_LPH[0]:g}, {RATE_LPH[1]:g}], from an onset drawn between "
        f"{ONSET_AFTER_S // 86400} days after its first read and {ONSET_BEFORE_END_S // 86400} "
        "days before its last, to the end: ⌊r·(t − onset)⌋ litres added to every read at or "
        "after the onset. Labels: `leak`, start = onset, open end. Fleet model off for this run "
        f"(no leak rule reads it); the untouched homes' leak alerts are {same} the run above.",
        "",
        "| leaks | detected | recall | delay median h | delay p90 h | false leak episodes, "
        "other homes | per 1,000 meter-days | false leak episodes, all homes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {inj.leak_score.n_labels} | {inj.leak_score.detected} | {_f(inj.leak_score.recall, 3)} "
        f"| {_f(inj.leak_score.delay_median_h, 1)} | {_f(inj.leak_score.delay_p90_h, 1)} "
        f"| {inj.other_false} ({inj.other_homes} homes) | {inj.other_rate:.2f} "
        f"| {inj.leak_score.false_alerts} |",
        "",
        "| rate L/h | leaks | detected | delay median h |",
        "|---|---:|---:|---:|",
    ]
    for band, n, det, med in band_rows(inj.outcomes):
        lines.append(f"| {band} | {n} | {det} | {_f(med, 1)} |")
    rules = ", ".join(f"{r} {n}" for r, n in sorted(inj.rules.items(), key=lambda x: (-x[1], x[0])))
    missed = (
        ", ".join(
            f"{o.label.meter_id[:8]} ({o.label.params['rate_lph']} L/h)"
            for o in inj.outcomes
            if not o.detected
        )
        or "none"
    )
    lines += [
        "",
        f"Detections by the rule that made them: {rules or '-'}.",
        f"Missed: {missed}.",
        "Onsets inside a read gap of more than a day (the delay includes the gap): "
        + (
            ", ".join(
                f"{o.label.meter_id[:8]} (next read {inj.onset_gaps[o.label.meter_id]:,.0f} h "
                f"after the onset, detected after {_f(o.delay_h, 0)} h)"
                for o in inj.outcomes
                if o.label.meter_id in inj.onset_gaps
            )
            or "none"
        )
        + ".",
        "",
        f"Run time: load {load_s:.1f} s, recorded homes {real.seconds:.1f} s (fleet model on), "
        f"with leaks {inj.seconds:.1f} s (fleet model off).",
        "",
    ]
    return "\n".join(lines)


def to_json(real: RealHomes, inj: Injected, *, seed: int, load_s: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "command": COMMAND,
        "real": {
            "homes": real.homes,
            "readings": real.readings,
            "meter_days": round(real.meter_days, 1),
            "seconds": round(real.seconds, 1),
            "by_type": {
                t: {
                    "alerts": real.alerts[t],
                    "episodes": real.episodes[t],
                    "homes": real.meters[t],
                    "per_1000_meter_days": round(real.rate(t), 3),
                }
                for t in sorted(real.episodes)
            },
            "leak_rules": dict(sorted(real.leak_rules.items())),
            "leak_target_per_1000": TARGET_LEAK_PER_1000,
            "leak_target_met": real.leak_ok,
            "bursts_over_gap": real.bursts_over_gap,
            "leak_below_threshold": len(real.leak_below_threshold),
            "leak_episodes_by_home": dict(real.leak_homes.most_common()),
            "examples": real.examples,
        },
        "injected": {
            "leaks": [
                {
                    "meter_id": o.label.meter_id,
                    "onset": o.label.start,
                    "rate_lph": o.label.params["rate_lph"],
                    "detected": o.detected,
                    "delay_h": None if o.delay_h is None else round(o.delay_h, 1),
                }
                for o in inj.outcomes
            ],
            "recall": inj.leak_score.recall,
            "delay_median_h": inj.leak_score.delay_median_h,
            "delay_p90_h": inj.leak_score.delay_p90_h,
            "detections_by_rule": dict(sorted(inj.rules.items())),
            "false_leak_episodes_other_homes": inj.other_false,
            "other_homes": inj.other_homes,
            "other_per_1000_meter_days": round(inj.other_rate, 3),
            "false_leak_episodes_all_homes": inj.leak_score.false_alerts,
            "untouched_identical": inj.untouched_identical,
            "onset_gaps_h": {m: round(h, 1) for m, h in sorted(inj.onset_gaps.items())},
            "seconds": round(inj.seconds, 1),
        },
        "load_s": round(load_s, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DAIAD_PATH)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--leaks", type=int, default=LEAK_HOMES, help="homes that get a leak")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--out", type=Path, help="write the Markdown section here")
    opts = p.parse_args(argv)
    if not opts.data.exists():
        print(f"DAIAD data not found at {opts.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rec = from_csv(load_readings(opts.data), meta={"source": "daiad"})
    load_s = time.perf_counter() - t0
    real_run = detect(rec, fleet_outliers=True)
    real = real_homes(rec, real_run)
    leaks = plan_leaks(rec, opts.leaks, opts.seed)
    inj_run = detect(inject(rec, leaks), fleet_outliers=False)
    inj = injected(rec, leaks, inj_run, real_run)
    text = markdown(real, inj, seed=opts.seed, load_s=load_s)
    if opts.out is not None:
        opts.out.write_text(text, encoding="utf-8")
    if opts.json:
        sys.stdout.write(orjson.dumps(to_json(real, inj, seed=opts.seed, load_s=load_s),
                                      option=orjson.OPT_INDENT_2).decode() + "\n")  # fmt: skip
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
