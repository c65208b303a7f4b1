"""Replay end to end: recordings and the real DAIAD file through the broker into the database."""

from __future__ import annotations

import argparse
import gzip
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from ingest.consumer import IngestConfig
from meterwatch.mqtt import BrokerAddress
from simulators.csvsource import DAIAD, read_csv
from simulators.grid import Grid
from simulators.labels import Label
from simulators.recording import Recording
from simulators.replay import ProgressBar, add_replay_arguments, csv_mapping, progress_line, replay
from simulators.reporting import LORA, MALFORMED_KINDS, NBIOT, ReportingConfig, messages
from simulators.state import new_state
from tests.helpers import count, running_ingest, wait_until

DAIAD_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "daiad" / "swm_trialA.csv.gz"


def ingest_config(db_url: str, mqtt_url: str, prefix: str) -> IngestConfig:
    return IngestConfig(
        database_url=db_url, broker=BrokerAddress.parse(mqtt_url), prefix=prefix,
        client_id=f"ingest-{prefix.replace('/', '-')}"[:60], batch_readings=500,
        batch_interval_s=0.05,
    )  # fmt: skip


def small_recording(meters: int = 12) -> tuple[Recording, list[Label]]:
    """A day of a small fleet, half LoRa and half NB-IoT, with plenty of noise, in the past."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    grid = Grid(int((today - timedelta(days=3)).timestamp()) - 8 * 3600, 900, 97)
    rng = np.random.default_rng(11)
    litres = rng.integers(0, 20, (meters, grid.steps)).astype(np.float64)
    register = 50.0 + np.cumsum(litres, axis=1) / 1000.0
    cfg = ReportingConfig(
        drop_rate=0.02, duplicate_rate=0.05, out_of_order_rate=0.03, malformed_rate=0.03,
        skew_share=0.2,
    )  # fmt: skip
    return messages(
        [f"RP-{m:03d}" for m in range(meters)], [LORA, NBIOT] * (meters // 2), grid, register,
        litres * 4.0, new_state(meters, grid.steps), np.random.default_rng(5), cfg,
    )  # fmt: skip


def test_recording_replays_to_exactly_the_distinct_valid_readings(
    db_url, mqtt_url, topic_prefix, db
):
    rec, labels = small_recording()
    valid = np.ones(len(rec), dtype=bool)
    valid[list(rec.raw)] = False
    distinct = {
        (rec.meter_ids[m], t) for m, t in zip(rec.meter[valid], rec.ts_s[valid], strict=True)
    }
    assert len(distinct) < rec.n_readings  # there are duplicates to absorb
    reasons: Counter[str] = Counter()
    for label in labels:
        if label.type == "malformed":
            for kind, n in label.params["kinds"].items():
                reasons[MALFORMED_KINDS[kind]] += n
    assert sum(reasons.values()) == len(rec.raw) > 0

    with running_ingest(ingest_config(db_url, mqtt_url, topic_prefix)) as ingest:
        res = replay(rec, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix)
        assert wait_until(lambda: ingest.stats.messages >= rec.n_messages, 30)
    assert res.complete and res.refused == 0
    assert (res.messages, res.readings, res.malformed) == (
        rec.n_messages, rec.n_readings, len(rec.raw),
    )  # fmt: skip
    stored = db.execute("SELECT meter_id, extract(epoch FROM ts)::bigint FROM readings").fetchall()
    assert len(stored) == len(distinct) and set(stored) == distinct
    dead = db.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall()
    assert dict(dead) == dict(reasons)


def daiad_slice(path: Path, meters: int = 3, days: int = 14) -> int:
    """The first ``days`` of the first ``meters`` meters of the real file, as a small gzip CSV.

    Under 1,000 rows: a stock Mosquitto queues at most 1,000 messages for a subscriber, so even
    at full speed none can be dropped for a slow ingest.
    """
    keep: list[str] = []
    first: dict[str, datetime] = {}
    with gzip.open(DAIAD_FILE, "rt", encoding="utf-8-sig") as fh:
        header = fh.readline()
        for line in fh:
            key, when = line.split(";", 2)[:2]
            if key not in first:
                if len(first) == meters:
                    continue
                first[key] = datetime.strptime(when[:10], "%d/%m/%Y")
            if datetime.strptime(when[:10], "%d/%m/%Y") < first[key] + timedelta(days=days):
                keep.append(line)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(header + "".join(keep))
    return len(keep)


@pytest.mark.skipif(not DAIAD_FILE.exists(), reason="needs ../shared/data/daiad")
def test_daiad_slice_replays_with_one_command(db_url, mqtt_url, topic_prefix, tmp_path):
    path = tmp_path / "daiad_slice.csv.gz"
    rows = daiad_slice(path)
    readings = read_csv(path, DAIAD)
    assert 500 < len(readings) == rows < 1000 and not readings.bad_rows
    distinct = set(zip(readings.meter_id.tolist(), readings.ts.tolist(), strict=True))

    with running_ingest(ingest_config(db_url, mqtt_url, topic_prefix)) as ingest:
        proc = subprocess.run(
            [sys.executable, "-m", "meterwatch", "replay", str(path), "--csv-preset", "daiad",
             "--speed", "max", "--mqtt-url", mqtt_url, "--topic-prefix", topic_prefix, "--json"],
            capture_output=True, text=True, timeout=60, env=os.environ.copy(),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = orjson.loads(proc.stdout)
        assert wait_until(lambda: ingest.stats.messages >= rows, 30)
    assert summary["readings"] == summary["messages"] == rows and summary["meters"] == 3
    assert summary["complete"] and summary["readings_per_s"] > 0
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    assert count(db_url, "SELECT count(*) FROM readings") == len(distinct)
    assert count(db_url, "SELECT count(DISTINCT meter_id) FROM readings") == 3
    assert count(db_url, "SELECT count(*) FROM dead_letters") == 0


def test_sigterm_ends_a_paced_cli_replay_cleanly(mqtt_url, topic_prefix, tmp_path):
    csv = tmp_path / "three.csv"
    csv.write_text(
        "id,t,litres\nM-1,2024-01-01T00:00:00+00:00,5\nM-1,2024-01-01T01:00:00+00:00,7\n"
    )
    flags = "--csv-meter-col id --csv-ts-col t --csv-register-col litres --csv-unit l --speed 1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterwatch", "replay", str(csv), *flags.split(),
         "--mqtt-url", mqtt_url, "--topic-prefix", topic_prefix, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    time.sleep(2.0)  # the first reading goes out at once, the second is due in an hour
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, err
    summary = orjson.loads(out)
    assert (summary["readings"], summary["complete"]) == (1, False)


def paced(minutes: list[int]) -> Recording:
    t0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    n = len(minutes)
    send = t0 + 60 * np.array(minutes, dtype=np.int64)
    nan = np.full(n, np.nan, dtype=np.float32)
    return Recording(
        send_s=send, msg_id=np.arange(n, dtype=np.int64), meter=np.zeros(n, dtype=np.int32),
        ts_s=send.copy(), register_m3=np.arange(n, dtype=np.float64), flow_lph=nan,
        battery_pct=nan.copy(), rssi_dbm=nan.copy(), flags=np.zeros(n, dtype=np.uint8),
        meter_ids=("PACE-1",),
    )  # fmt: skip


def test_speed_and_rate_pace_the_run_and_stop_ends_it_early(mqtt_url, topic_prefix):
    rec = paced([0, 15, 30, 60, 90, 120])  # two hours of event time
    t0 = time.monotonic()
    res = replay(rec, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix, speed=7200)
    wall = time.monotonic() - t0
    assert res.readings == 6 and res.complete
    assert 0.9 <= res.elapsed_s <= wall <= 3.0

    t0 = time.monotonic()
    res = replay(
        paced(list(range(0, 2000, 100))), address=BrokerAddress.parse(mqtt_url),
        prefix=topic_prefix, max_rate=40,
    )  # fmt: skip
    assert res.readings == 20 and 19 / 40 <= time.monotonic() - t0 <= 2.0

    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    threading.Timer(0.4, stop.set).start()  # after the 2nd message (0.1 s), long before the 3rd
    res = replay(
        paced([0, 1, 600]), address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix,
        speed=600, stop=stop, progress=lambda *p: seen.append(p),
    )  # fmt: skip
    assert res.readings == 2 and not res.complete and seen[-1] == (2, 3)


def test_cli_arguments_build_the_csv_mapping():
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    args = parser.parse_args(["f.csv.gz", "--csv-preset", "daiad", "--meter-prefix", "es-"])
    mapping = csv_mapping(args)
    assert mapping is not None and mapping.delimiter == ";" and mapping.unit == "l"
    assert mapping.meter_prefix == "es-" and args.speed is None
    flags = "--csv-meter-col id --csv-ts-col t --csv-register-col r --csv-unit gal --speed 60"
    args = parser.parse_args(["f.csv", *flags.split()])
    mapping = csv_mapping(args)
    assert mapping is not None and (mapping.meter, mapping.unit) == ("id", "gal")
    assert args.speed == 60.0
    assert csv_mapping(parser.parse_args(["f.parquet"])) is None
    with pytest.raises(ValueError, match="--csv-ts-col"):
        csv_mapping(parser.parse_args(["f.csv", "--csv-meter-col", "id"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["f.csv", "--speed", "0"])


def test_progress_line_and_bar():
    assert progress_line("replay", 250, 1000, 10.0) == (
        "replay  250/1,000 readings   25.0%  25/s  ETA 0:30   "
    )
    assert "ETA 1:00:00" in progress_line("replay", 1, 3601, 1.0)
    out = io.StringIO()
    bar = ProgressBar(out, every_s=0)
    bar(1, 2)
    bar(2, 2)
    bar.close()
    assert out.getvalue().count("\r") == 2 and "100.0%" in out.getvalue()
    assert out.getvalue().endswith("\n")
