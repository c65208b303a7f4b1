"""Writing a simulation to files: the recording, its labels and the meter registry."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulators.labels import write_labels
from simulators.publish import meters_csv
from simulators.recording import write_recording
from simulators.scenario import Simulation


@dataclass(frozen=True)
class OutputPaths:
    recording: Path
    labels: Path
    meters: Path

    @classmethod
    def beside(cls, recording: Path) -> OutputPaths:
        stem = recording.name.removesuffix(".parquet")
        return cls(
            recording=recording,
            labels=recording.with_name(f"{stem}.labels.jsonl"),
            meters=recording.with_name(f"{stem}.meters.csv"),
        )


def write_simulation(sim: Simulation, recording: Path) -> OutputPaths:
    paths = OutputPaths.beside(recording)
    recording.parent.mkdir(parents=True, exist_ok=True)
    write_recording(paths.recording, sim.recording)
    write_labels(paths.labels, sim.labels)
    paths.meters.write_text(meters_csv(sim.meters), encoding="utf-8")
    return paths


def summary(sim: Simulation) -> dict[str, object]:
    rec = sim.recording
    return {
        "scenario": sim.scenario.name,
        "seed": sim.scenario.seed,
        "meters": len(sim.meters),
        "readings": int(rec.ts_s.size),
        "messages": int(np.count_nonzero(np.diff(rec.msg_id)) + 1) if rec.ts_s.size else 0,
        "labels": dict(sorted(Counter(label.type for label in sim.labels).items())),
    }
