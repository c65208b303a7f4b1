"""Detector scores on a shipped scenario, written into the docs by the commands themselves.

    python -m bench.detection [--scenario city] [--recording F.parquet] [--docs docs/scores]

Runs the three public commands a reader can run by hand: ``meterwatch simulate --scenario X
--out``, ``meterwatch detect`` over the recording, and ``meterwatch evaluate --report``; the
report (table, plots, JSON) lands in ``docs/scores/X/``. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(*args: str) -> str:
    cmd = [sys.executable, "-m", "meterwatch", *args]
    print("$ meterwatch " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="city", help="shipped scenario name (default city)")
    p.add_argument("--recording", help="use this recording instead of simulating")
    p.add_argument("--docs", default="docs/scores", help="where the report folder goes")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mw-scores-") as tmp:
        if args.recording:
            recording = Path(args.recording)
        else:
            recording = Path(tmp) / f"{args.scenario}.parquet"
            _run("simulate", "--scenario", args.scenario, "--out", str(recording), "--json")
        labels = recording.with_name(recording.name.removesuffix(".parquet") + ".labels.jsonl")
        stream = Path(tmp) / "alerts.jsonl"
        t0 = time.perf_counter()
        detect = json.loads(_run("detect", str(recording), "--out", str(stream), "--json"))
        detect_s = time.perf_counter() - t0
        report = Path(args.docs) / args.scenario
        out = _run(
            "evaluate", "--labels", str(labels), "--alerts", str(stream),
            "--recording", str(recording), "--report", str(report),
        )  # fmt: skip
    print(out)
    print(
        f"detect: {detect['readings']} readings, {detect['meters']} meters, "
        f"{detect['seconds']} s in the bank ({detect_s:.1f} s with reading the file); "
        f"report in {report}/"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
