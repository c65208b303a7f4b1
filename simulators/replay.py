"""Replay: publish a recording, or a foreign CSV of readings, over MQTT at a chosen speed.

Messages go out in send order, each at its recorded event time scaled by ``speed`` (or as fast as
the broker acknowledges), with QoS 1 and a bounded window of unacknowledged publishes, through
the same publisher as the basic simulator. Malformed messages go out byte for byte, so a replay
tests ingest's dead-lettering as much as its storage.

A CSV becomes a recording in which each reading is its own message sent at its own time; its
readings go out as they are, decreasing registers, gaps and repeated times included, and ingest
decides what they mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from meterwatch.codec import METER_ID_RE, uplink_topic
from meterwatch.mqtt import BrokerAddress
from meterwatch.settings import Settings
from meterwatch.signals import stop_on_signals
from simulators.csvsource import PRESETS, UNITS_TO_M3, CsvMapping, read_csv
from simulators.publish import Outgoing, Pacer, publisher
from simulators.recording import Recording, RecordingFile, from_csv, messages

PROGRESS_EVERY = 500  # messages between progress callbacks


class Source(Protocol):
    """A recording in memory or on disk: its meters, its size and its rows chunk by chunk."""

    @property
    def meter_ids(self) -> tuple[str, ...]: ...

    @property
    def n_readings(self) -> int: ...

    @property
    def n_messages(self) -> int: ...

    def chunks(self) -> Iterator[Recording]: ...


class ReplayResult(NamedTuple):
    readings: int  # readings in messages the broker acknowledged
    messages: int  # acknowledged messages, malformed ones included
    elapsed_s: float
    refused: int = 0  # messages the broker refused (MQTT 5 PUBACK reason code >= 0x80)
    malformed: int = 0  # malformed messages published as recorded
    complete: bool = True  # False when stopped before the end


def replay(
    source: Source,
    *,
    address: BrokerAddress,
    prefix: str = "",
    speed: float | None = None,
    client_id: str = "",
    max_inflight: int = 1000,
    max_rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Publish every message of ``source`` in send order; return once all are acknowledged.

    ``speed=X`` plays event time X times faster than real time; ``None`` publishes as fast as
    the broker takes it. ``max_rate`` caps messages a second, so a consumer behind a broker with
    a small per-client queue keeps up instead of losing messages. ``progress`` gets (readings
    published, total) every few hundred messages and at the end; setting ``stop`` ends the run
    early, still waiting for PUBACKs.
    """
    stop = stop if stop is not None else threading.Event()
    topics = {meter_id: uplink_topic(meter_id, prefix) for meter_id in source.meter_ids}
    total = source.n_readings
    sent = malformed = count = 0
    with publisher(address, client_id, max_inflight) as window:
        t0 = time.monotonic()
        pacer = Pacer(speed, stop, max_rate)
        for chunk in source.chunks():
            for msg in messages(chunk):
                waited = pacer.wait(msg.send_s)
                if stop.is_set():
                    break
                window.publish(Outgoing(topics[msg.meter_id], msg.payload, msg.readings))
                sent += msg.readings
                malformed += msg.readings == 0
                count += 1
                # A paced run reports whenever it has waited, so a slow replay still moves.
                if progress is not None and (waited or count % PROGRESS_EVERY == 0):
                    progress(sent, total)
            if stop.is_set():
                break
        window.drain()
        elapsed = time.monotonic() - t0
    if progress is not None:
        progress(sent, total)
    return ReplayResult(
        window.readings, window.messages, elapsed, window.refused, malformed,
        complete=not stop.is_set() and count == source.n_messages,
    )  # fmt: skip


def load_source(path: str | Path, mapping: CsvMapping | None = None) -> tuple[Source, int]:
    """A recording (``.parquet``) or a CSV (``.csv``, ``.csv.gz``, read with ``mapping``).

    Returns the source and the number of CSV rows skipped as unreadable. Meter ids that could
    not be MQTT topic levels are refused here rather than dead-lettered one by one.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return RecordingFile.open(path), 0
    if not name.endswith((".csv", ".csv.gz")):
        raise ValueError(f"{path}: expected a .parquet recording or a .csv / .csv.gz file")
    if mapping is None:
        raise ValueError(
            f"{path}: a CSV needs a column mapping (--csv-preset, or --csv-meter-col, "
            "--csv-ts-col and --csv-register-col)"
        )
    readings = read_csv(path, mapping)
    rec = from_csv(readings, meta={"source": path.name})
    bad = [m for m in rec.meter_ids if not METER_ID_RE.match(m)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} meter ids are not valid ids, e.g. {bad[:3]}")
    return rec, len(readings.bad_rows)


class ProgressBar:
    """A one-line progress report on a terminal, redrawn in place with a carriage return."""

    def __init__(
        self, stream: TextIO = sys.stderr, label: str = "replay", every_s: float = 0.25
    ) -> None:
        self.stream = stream
        self.label = label
        self.every_s = every_s
        self._t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s and done < total:
            return
        self._last = now
        self.stream.write("\r" + progress_line(self.label, done, total, now - self._t0))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def progress_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    """``replay  12,345/67,890 readings  18.2%  7,012/s  ETA 0:07`` (width-stable)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    pct = 100.0 * done / total if total else 100.0
    eta = _clock((total - done) / rate) if rate > 0 else "--:--"
    return f"{label}  {done:,}/{total:,} readings  {pct:5.1f}%  {rate:,.0f}/s  ETA {eta}   "


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def parse_speed(value: str) -> float | None:
    """``--speed``: a positive factor on event time, or ``max`` (as fast as the broker takes)."""
    if value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("speed is a positive number or 'max'") from None
    if speed <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0")
    return speed


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``meterwatch replay`` (the broker flags and ``--json`` come from the CLI)."""
    parser.add_argument("file", help="a recording (.parquet) or readings as .csv / .csv.gz")
    parser.add_argument(
        "--speed", type=parse_speed, default=None, metavar="X|max",
        help="event time X times faster than real time, or 'max' (default) for as fast as "
        "the broker acknowledges",
    )  # fmt: skip
    parser.add_argument(
        "--max-rate", type=float, default=None, metavar="N",
        help="at most N messages a second (a stock Mosquitto drops what a slower ingest cannot "
        "take once 1000 messages are queued for it)",
    )  # fmt: skip
    parser.add_argument("--client-id", default="", help="MQTT client id (default: random)")
    parser.add_argument(
        "--max-inflight", type=int, default=1000, help="unacknowledged publishes at most"
    )
    csv = parser.add_argument_group("CSV input (column mapping, units, time format)")
    csv.add_argument("--csv-preset", choices=sorted(PRESETS), help="a known file layout")
    csv.add_argument("--csv-meter-col", help="column of the meter id")
    csv.add_argument("--csv-ts-col", help="column of the reading time")
    csv.add_argument("--csv-register-col", help="column of the cumulative register")
    csv.add_argument("--csv-flow-col", help="optional column of flow in L/h")
    csv.add_argument("--csv-unit", choices=sorted(UNITS_TO_M3), help="register unit (default m3)")
    csv.add_argument(
        "--csv-ts-format",
        help="'iso', 'epoch' or a strptime format such as '%%d/%%m/%%Y %%H:%%M:%%S'",
    )
    csv.add_argument("--csv-timezone", help="zone of times without an offset (default UTC)")
    csv.add_argument("--csv-delimiter", help="field separator (default ',')")
    csv.add_argument("--meter-prefix", help="prepended to every meter id of the CSV")


_CSV_FLAGS = {
    "csv_meter_col": "meter", "csv_ts_col": "ts", "csv_register_col": "register",
    "csv_flow_col": "flow", "csv_unit": "unit", "csv_ts_format": "ts_format",
    "csv_timezone": "timezone", "csv_delimiter": "delimiter", "meter_prefix": "meter_prefix",
}  # fmt: skip


def csv_mapping(args: argparse.Namespace) -> CsvMapping | None:
    """The preset (if any) with every given ``--csv-*`` flag applied on top."""
    given = {
        field: getattr(args, flag)
        for flag, field in _CSV_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    preset = PRESETS[args.csv_preset] if getattr(args, "csv_preset", None) else None
    if preset is not None:
        return dataclasses.replace(preset, **given)
    if not given:
        return None
    missing = [f"--csv-{c}-col" for c in ("meter", "ts", "register") if c not in given]
    if missing:
        raise ValueError(f"without --csv-preset a CSV needs {', '.join(missing)}")
    return CsvMapping(**given)


def run_replay(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``meterwatch replay``: load, publish with a progress bar on a terminal, summarise."""
    mapping = csv_mapping(args)
    t0 = time.monotonic()
    source, bad_rows = load_source(args.file, mapping)
    load_s = time.monotonic() - t0
    bar = ProgressBar() if sys.stderr.isatty() else None
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            res = replay(
                source, address=BrokerAddress.parse(settings.mqtt_url),
                prefix=settings.topic_prefix, speed=args.speed, client_id=args.client_id,
                max_inflight=args.max_inflight, max_rate=args.max_rate, progress=bar, stop=stop,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
    rate = res.readings / res.elapsed_s if res.elapsed_s > 0 else 0.0
    return {
        "file": str(args.file), "meters": len(source.meter_ids),
        "readings": res.readings, "messages": res.messages, "malformed": res.malformed,
        "refused": res.refused, "csv_bad_rows": bad_rows, "load_s": round(load_s, 3),
        "speed": args.speed, "max_rate": args.max_rate,
        "elapsed_s": round(res.elapsed_s, 3), "readings_per_s": round(rate, 1),
        "messages_per_s": round(res.messages / res.elapsed_s, 1) if res.elapsed_s > 0 else 0.0,
        "complete": res.complete and res.refused == 0,
    }  # fmt: skip


def replay_text(summary: dict[str, Any]) -> str:
    return (
        f"replayed {summary['readings']:,} readings in {summary['messages']:,} messages from "
        f"{summary['meters']} meters in {summary['elapsed_s']:.1f}s "
        f"({summary['readings_per_s']:,.0f} readings/s)"
        + (f"; {summary['refused']} refused by the broker" if summary["refused"] else "")
        + (f"; {summary['csv_bad_rows']} unreadable CSV rows" if summary["csv_bad_rows"] else "")
    )
