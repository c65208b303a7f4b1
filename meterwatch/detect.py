"""Run the detector bank over a recording, without broker or database.

The bank sees exactly what ingest would hand it: the well-formed messages in send order (malformed
ones are dead letters), message status on each message's newest reading. Scoring a city's month
this way takes a minute instead of an hour of replay, and the alerts are the same because the
detectors depend on event time and arrival order only (tests compare both paths).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from detectors.alert import Alert
from detectors.bank import Monitor
from detectors.batch import Batch
from detectors.config import FleetSettings, ThresholdBook
from meterwatch.domain import Meter
from simulators.recording import Recording, RecordingFile
from storage.registry import parse_csv

BLOCK_ROWS = 20_000


def batches(rec: Recording, lut: np.ndarray, block: int = BLOCK_ROWS) -> Iterator[Batch]:
    """A recording chunk as bank batches of about ``block`` rows, cut at message boundaries."""
    if len(rec) == 0:
        return
    keep = np.ones(len(rec), np.bool_)
    if rec.raw:
        keep[list(rec.raw)] = False
    msg = rec.msg_id[keep]
    if msg.size == 0:
        return
    ts = rec.ts_s[keep]
    starts = np.flatnonzero(np.r_[True, msg[1:] != msg[:-1]])
    ends = np.r_[starts[1:], msg.size] - 1
    status = np.zeros(msg.size, np.bool_)
    status[ends] = True
    span = ts.copy()
    span[ends] = np.minimum.reduceat(ts, starts)
    meter = lut[rec.meter[keep]]
    flags = np.where(status, rec.flags[keep], 0).astype(np.uint8)
    battery = np.where(status, rec.battery_pct[keep], np.nan).astype(np.float32)
    register = rec.register_m3[keep]
    cuts = starts[:: max(1, block // max(1, int(msg.size // starts.size)))]
    bounds = np.r_[cuts, msg.size]
    for lo, hi in itertools.pairwise(bounds):
        s = slice(int(lo), int(hi))
        yield Batch(meter[s], ts[s], register[s], battery[s], flags[s], status[s], span[s])


def meters_beside(recording: Path) -> list[Meter]:
    """The registry written next to a recording (``NAME.meters.csv``), if any."""
    path = recording.with_name(recording.name.removesuffix(".parquet") + ".meters.csv")
    if not path.exists():
        return []
    meters, errors = parse_csv(path.read_text(encoding="utf-8"))
    if errors:
        raise ValueError(f"{path}: {errors[0]}")
    return meters


@dataclass
class DetectResult:
    readings: int = 0
    alerts: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    meters: int = 0

    def to_json(self) -> dict[str, object]:
        rate = self.readings / self.seconds if self.seconds > 0 else None
        return {
            "readings": self.readings,
            "meters": self.meters,
            "alerts": self.alerts,
            "raised_by_type": dict(sorted(self.by_type.items())),
            "seconds": round(self.seconds, 2),
            "readings_per_s": round(rate) if rate else None,
        }


def observe_recording(
    monitor: Monitor, rec: Recording | RecordingFile, block: int = BLOCK_ROWS
) -> tuple[DetectResult, list[Alert]]:
    """Feed ``monitor`` a recording (in memory, or on disk chunk by chunk) in send order; its
    alerts (raised, repeated and cleared, in order). The recording's meters the monitor does not
    know are registered with default facts."""
    lut = monitor.index(list(rec.meter_ids))
    chunks = rec.chunks() if isinstance(rec, RecordingFile) else [rec]
    result = DetectResult()
    alerts: list[Alert] = []
    t0 = time.perf_counter()
    for chunk in chunks:
        for b in batches(chunk, lut, block):
            result.readings += len(b)
            alerts.extend(monitor.observe(b))
    result.seconds = time.perf_counter() - t0
    result.meters = len(monitor)
    result.alerts = len(alerts)
    result.by_type = Counter(a.type for a in alerts if not a.cleared)
    return result, alerts


def run(
    recording: Path,
    *,
    meters: Sequence[Meter] | None = None,
    thresholds: ThresholdBook | None = None,
    fleet: FleetSettings | None = None,
    out: Path | None = None,
    block: int = BLOCK_ROWS,
) -> tuple[DetectResult, list[Alert]]:
    """Alerts of the whole recording file (raised, repeated and cleared, in order)."""
    rf = RecordingFile.open(recording)
    monitor = Monitor(meters if meters is not None else meters_beside(recording),
                      thresholds=thresholds, fleet=fleet)  # fmt: skip
    result, alerts = observe_recording(monitor, rf, block)
    if out is not None:
        write_alerts(out, alerts)
    return result, alerts


def write_alerts(path: Path, alerts: Sequence[Alert]) -> None:
    with path.open("wb") as f:
        for a in alerts:
            f.write(orjson.dumps(a.to_json()) + b"\n")
