"""Fleet generation rate: ``python -m bench.generate [--scenario city] [--out FILE]``.

Times each stage of a scenario (fleet, profiles, faults, inlets and registers, reporting) and the
Parquet write, and prints readings per second. The baseline in the same run is numpy summing an
array of the same shape (a floor no generator beats), so the ratio travels between machines.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from simulators import faults, profiles, reporting
from simulators.output import write_simulation
from simulators.scenario import (
    FAULTS,
    PROFILES,
    REPORTING,
    Scenario,
    Simulation,
    _fill_inlets,
    _initial_registers,
    _rng,
    build_fleet,
    registers,
)  # fmt: skip
from simulators.state import new_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenario", default="city")
    p.add_argument("--out", help="also write the outputs here (default: a temp dir)")
    args = p.parse_args()
    scn = Scenario.load(args.scenario)
    times: dict[str, float] = {}

    def stage(name: str, t0: float) -> float:
        now = time.perf_counter()
        times[name] = now - t0
        return now

    t = t_all = time.perf_counter()
    meters, modes = build_fleet(scn)
    grid = scn.grid
    state = new_state(len(meters), grid.steps)
    t = stage("fleet", t)
    state.use[:] = profiles.consumption(meters, grid, _rng(scn, PROFILES), scn.profiles)
    state.initial_register_m3[:] = _initial_registers(meters, state.use, scn)
    t = stage("profiles", t)
    labels = faults.inject(state, meters, grid, _rng(scn, FAULTS), scn.faults)
    t = stage("faults", t)
    meters = _fill_inlets(meters, state, grid, scn)
    reg, counted = registers(meters, state)
    flow = counted * (1000.0 * 3600.0 / grid.interval_s)
    t = stage("inlets+registers", t)
    rec, noise = reporting.messages(
        [m.meter_id for m in meters], modes, grid, reg, flow, state, _rng(scn, REPORTING),
        scn.reporting,
    )  # fmt: skip
    t = stage("reporting", t)
    total = time.perf_counter() - t_all
    sim = Simulation(scn, meters, modes, grid, state, reg, rec, labels + noise)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / f"{scn.name}.parquet"
    t = time.perf_counter()
    paths = write_simulation(sim, out)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    baseline = float(np.cumsum(state.use, axis=1).sum())
    base_s = time.perf_counter() - t
    n = int(rec.ts_s.size)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"scenario {scn.name}: {len(meters)} meters x {grid.steps} steps, {n:,} readings, "
          f"{len(sim.labels)} labels")  # fmt: skip
    for name, secs in times.items():
        print(f"  {name:18s} {secs:7.2f} s")
    print(f"  {'generate (total)':18s} {total:7.2f} s  = {n / total:12,.0f} readings/s")
    print(f"  {'write parquet':18s} {write_s:7.2f} s  = {n / write_s:12,.0f} readings/s "
          f"({paths.recording.stat().st_size / 1e6:.0f} MB)")  # fmt: skip
    print(f"  baseline: numpy cumsum over the same (M, T) array {base_s:.2f} s "
          f"(generate / baseline = {total / base_s:.0f}x; checksum {baseline:.0f})")  # fmt: skip
    print(f"  peak memory {peak_gb:.1f} GB")


if __name__ == "__main__":
    main()
