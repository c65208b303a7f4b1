"""Detector bank throughput, state size and checkpoint cost, against a plain numpy pass.

    python -m bench.detectors                        # the ``small`` scenario, simulated first
    python -m bench.detectors --scenario city        # 11,000 meters, 30 days (minutes)
    python -m bench.detectors --scenario rec.parquet # a recording written by ``simulate --out``
    python -m bench.detectors --json

The recording is cut into the batches ``meterwatch detect`` feeds the bank and all of them are
loaded first, so only ``Monitor.observe`` is timed, never Parquet. Everything runs on one core
(CPU affinity and BLAS/OpenMP pools pinned to one thread): ingest runs the bank in one process per
partition, so a core's rate is the figure that scales. The baseline is the least any per-meter
detector must do with a batch (group its rows by meter and difference the registers), so the
ratio says how much the rules cost on top of reading the data, whatever the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from threadpoolctl import threadpool_limits

from detectors.bank import Monitor
from detectors.batch import Batch
from detectors.config import FleetSettings
from meterwatch.detect import batches, meters_beside
from meterwatch.domain import Meter
from simulators.recording import RecordingFile

TARGET_READINGS_PER_S = 500_000
TARGET_STATE_BYTES = 2048
BASELINE_REPEATS = 3  # the baseline takes well under a second; its best of three is steadier


@dataclass
class Workload:
    source: str
    meters: list[Meter]
    meter_ids: tuple[str, ...]
    batches: list[Batch]
    load_s: float

    @property
    def readings(self) -> int:
        return sum(len(b) for b in self.batches)


@contextmanager
def one_core() -> Iterator[str]:
    """Pin the process to one CPU and numeric thread pools to one thread."""
    where = "thread pools limited to 1"
    if hasattr(os, "sched_getaffinity"):
        before = os.sched_getaffinity(0)
        cpu = min(before)
        os.sched_setaffinity(0, {cpu})
        where = f"CPU {cpu}, {where}"
    with threadpool_limits(limits=1):
        try:
            yield where
        finally:
            if hasattr(os, "sched_getaffinity"):
                os.sched_setaffinity(0, before)


def load(scenario: str, workdir: Path) -> Workload:
    """Batches of a recording; a scenario name is simulated into ``workdir`` first."""
    t0 = time.perf_counter()
    path = Path(scenario)
    if path.suffix != ".parquet":
        from simulators.output import write_simulation
        from simulators.scenario import Scenario, simulate

        path = workdir / f"{scenario}.parquet"
        write_simulation(simulate(Scenario.load(scenario)), path)
    rf = RecordingFile.open(path)
    meters = meters_beside(path)
    lut = Monitor(meters, fleet=FleetSettings(fleet_outliers=False)).index(list(rf.meter_ids))
    loaded = [b for chunk in rf.chunks() for b in batches(chunk, lut)]
    return Workload(str(scenario), meters, rf.meter_ids, loaded, time.perf_counter() - t0)


def baseline_pass(work: Sequence[Batch]) -> float:
    """Seconds to group every batch by meter and difference the registers within each meter."""
    t0 = time.perf_counter()
    for b in work:
        order = np.argsort(b.meter, kind="stable")
        meter = b.meter[order]
        step = np.diff(b.register[order])
        step[meter[1:] != meter[:-1]] = 0.0
    return time.perf_counter() - t0


@dataclass
class BankRun:
    name: str
    seconds: float
    alerts: int
    monitor: Monitor


def bank_pass(w: Workload, fleet: FleetSettings, name: str) -> BankRun:
    monitor = Monitor(w.meters, fleet=fleet)
    monitor.index(list(w.meter_ids))  # the same table the batches were indexed with
    alerts = 0
    t0 = time.perf_counter()
    for b in w.batches:
        alerts += len(monitor.observe(b))
    return BankRun(name, time.perf_counter() - t0, alerts, monitor)


def memory(monitor: Monitor) -> dict[str, int]:
    n = len(monitor)
    state, params = int(monitor.state.nbytes), int(monitor.params.nbytes)
    out = {
        "meters": n,
        "state_bytes_per_meter": Monitor.state_size(),
        "state_bytes": state,
        "params_bytes": params,
        "total_bytes": state + params,
        "per_meter_bytes": round((state + params) / n) if n else 0,
    }
    if monitor.fleet is not None:
        out["fleet_model_bytes"] = len(monitor.fleet.to_bytes())
    return out


def checkpoint(monitor: Monitor) -> dict[str, float]:
    t0 = time.perf_counter()
    states = monitor.checkpoint(everything=True)
    seconds = time.perf_counter() - t0
    n = max(len(states), 1)
    return {
        "meters": len(states),
        "seconds": round(seconds, 4),
        "us_per_meter": round(seconds / n * 1e6, 2),
        "bytes": sum(len(v) for v in states.values()),
    }


def run(scenario: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mw-bench-detectors-") as tmp:
        w = load(scenario, Path(tmp))
    n = w.readings
    with one_core() as where:
        base = min(baseline_pass(w.batches) for _ in range(BASELINE_REPEATS))
        streaming = bank_pass(w, FleetSettings(fleet_outliers=False), "streaming rules")
        fleet = bank_pass(w, FleetSettings(), "streaming rules + fleet model")
        cp = checkpoint(fleet.monitor)
    rate = {"baseline": n / base}
    banks = {}
    for r in (streaming, fleet):
        rate[r.name] = n / r.seconds
        banks[r.name] = {
            "seconds": round(r.seconds, 3),
            "readings_per_s": round(n / r.seconds),
            "alerts": r.alerts,
            "bank_over_baseline": round((n / r.seconds) / rate["baseline"], 4),
            "target_met": n / r.seconds >= TARGET_READINGS_PER_S,
        }
    mem = memory(fleet.monitor)
    return {
        "source": w.source,
        "readings": n,
        "meters": len(fleet.monitor),
        "batches": len(w.batches),
        "load_s": round(w.load_s, 2),
        "pinned": where,
        "baseline": {"seconds": round(base, 4), "readings_per_s": round(rate["baseline"])},
        "bank": banks,
        "memory": mem,
        "checkpoint": cp,
        "targets": {
            "readings_per_s": TARGET_READINGS_PER_S,
            "state_bytes_per_meter": TARGET_STATE_BYTES,
            "state_met": mem["state_bytes_per_meter"] <= TARGET_STATE_BYTES,
        },
    }


def text(r: dict[str, Any]) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    base = r["baseline"]
    lines = [
        f"detector bank on {r['source']}: {r['readings']:,} readings, {r['meters']:,} meters, "
        f"{r['batches']} batches preloaded ({r['load_s']:.1f} s to simulate/read), "
        f"one core ({r['pinned']})",
        f"  baseline (argsort by meter + np.diff of registers): {base['readings_per_s']:>12,} "
        f"readings/s ({base['seconds']:.3f} s, best of {BASELINE_REPEATS})",
    ]
    for name, b in r["bank"].items():
        lines.append(
            f"  bank, {name}: {b['readings_per_s']:>12,} readings/s ({b['seconds']:.2f} s, "
            f"{b['alerts']:,} alerts); bank / baseline {b['bank_over_baseline']:.4f} "
            f"(baseline {1 / b['bank_over_baseline']:.0f}x faster); "
            f"target >= {TARGET_READINGS_PER_S:,}/s {met(b['target_met'])}"
        )
    m = r["memory"]
    lines += [
        f"  state per meter: {m['state_bytes_per_meter']:,} B; target <= {TARGET_STATE_BYTES:,} B "
        f"{met(r['targets']['state_met'])}",
        f"  bank memory for {m['meters']:,} meters: state {m['state_bytes']:,} B + params "
        f"{m['params_bytes']:,} B = {m['total_bytes']:,} B ({m['per_meter_bytes']:,} B a meter)"
        + (f"; fleet model {m['fleet_model_bytes']:,} B" if "fleet_model_bytes" in m else ""),
    ]
    cp = r["checkpoint"]
    lines.append(
        f"  checkpoint(everything=True): {cp['meters']:,} meters in {cp['seconds'] * 1000:.1f} ms "
        f"({cp['us_per_meter']:.2f} us a meter, {cp['bytes']:,} B)"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", default="small", help="small, city or a recording .parquet")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args(argv)
    result = run(opts.scenario)
    if opts.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
