"""Scenarios end to end: files, determinism, ground truth and a replay through ingest."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ingest.consumer import IngestConfig
from meterwatch.domain import MeterKind
from meterwatch.mqtt import BrokerAddress
from simulators.labels import read_labels
from simulators.output import OutputPaths, write_simulation
from simulators.recording import read_recording
from simulators.replay import replay
from simulators.scenario import Scenario, shipped, simulate
from tests.helpers import count, running_ingest, wait_until

SCENARIOS = Path(__file__).parents[1] / "simulators" / "scenarios"


def small(**changes) -> Scenario:
    return dataclasses.replace(Scenario.load("small"), **changes)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(scn: Scenario, folder: Path) -> OutputPaths:
    folder.mkdir()
    return write_simulation(simulate(scn), folder / "s.parquet")


def test_shipped_scenarios_load():
    assert {"small", "city"} <= set(shipped())
    city = Scenario.load("city")
    assert city.customers >= 10_000 and city.days == 30 and city.interval_min == 15
    with pytest.raises(ValueError, match="no scenario"):
        Scenario.load("atlantis")


def test_unknown_keys_are_refused(tmp_path: Path):
    text = (SCENARIOS / "small.toml").read_text()
    cases = (("customers = 400", "customer = 400", "customer"),
             ("\n[faults]\n", "\n[faults]\nleek = 3\n", "leek"))  # fmt: skip
    for good, bad, named in cases:
        path = tmp_path / "bad.toml"
        path.write_text(text.replace(good, bad))
        with pytest.raises(ValueError, match=named):
            Scenario.load(path)


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path):
    scn = small(days=4.0, customers=120)
    a = write(scn, tmp_path / "a")
    b = write(scn, tmp_path / "b")
    for x, y in ((a.recording, b.recording), (a.labels, b.labels), (a.meters, b.meters)):
        assert digest(x) == digest(y)
    c = write(dataclasses.replace(scn, seed=scn.seed + 1), tmp_path / "c")
    assert digest(c.recording) != digest(a.recording)
    assert digest(c.labels) != digest(a.labels)


def test_small_scenario_has_every_fault_and_consistent_inlets():
    sim = simulate(Scenario.load("small"))
    types = Counter(label.type for label in sim.labels)
    for expected in ("leak", "burst", "no_consumption", "reverse_flow", "tamper", "low_battery",
                     "silent", "rollover", "replacement", "busy_day", "holiday",
                     "dma_imbalance", "duplicates", "malformed"):  # fmt: skip
        assert types[expected] > 0, expected
    golden_week = [x for x in sim.labels if x.type == "holiday" and x.start.startswith("2026-10-0")]
    assert golden_week, "National Day falls inside the small scenario"
    kinds = np.array([m.kind for m in sim.meters])
    dmas = np.array([m.dma for m in sim.meters])
    inlets = np.flatnonzero(kinds == MeterKind.BULK)
    assert len(inlets) == len(set(dmas.tolist()))
    hours = sim.grid.interval_s / 3600
    for i in inlets:
        members = (dmas == dmas[i]) & (kinds != MeterKind.BULK)
        customers = sim.state.use[members].sum(axis=0)
        # The inlet sees every customer's water plus losses, never less, within its meter size.
        assert np.all(sim.state.use[i, 1:] > customers[1:])
        assert sim.state.use[i].max() / hours <= sim.meters[i].q3_m3h
    litres = sim.register_m3 * 1000
    assert np.abs(litres - np.round(litres)).max() < 1e-6  # whole litres


def test_small_scenario_replays_end_to_end(db_url, mqtt_url, topic_prefix, tmp_path: Path):
    paths = write(small(days=3.0, customers=60), tmp_path / "out")
    rec = read_recording(paths.recording)
    valid = np.ones(len(rec), dtype=bool)
    valid[list(rec.raw)] = False
    distinct = set(zip(rec.meter[valid].tolist(), rec.ts_s[valid].tolist(), strict=True))
    assert len(distinct) < int(valid.sum()), "the recording repeats some readings"
    config = IngestConfig(
        database_url=db_url, broker=BrokerAddress.parse(mqtt_url), prefix=topic_prefix,
        client_id=f"scn-{topic_prefix.replace('/', '-')}"[:60], batch_interval_s=0.05,
    )  # fmt: skip
    with running_ingest(config) as ingest:
        res = replay(rec, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix)
        assert res.messages == rec.n_messages and res.malformed == len(rec.raw) > 0
        assert wait_until(lambda: ingest.stats.messages >= res.messages, 60)
    assert count(db_url, "SELECT count(*) FROM readings") == len(distinct)
    meters = {m for m, _ in distinct}
    assert count(db_url, "SELECT count(DISTINCT meter_id) FROM readings") == len(meters)
    bad_payloads = {hashlib.sha256(p).digest() for p in rec.raw.values()}
    got = count(db_url, "SELECT count(DISTINCT payload_sha256) FROM dead_letters")
    assert got == len(bad_payloads)
    labels = read_labels(paths.labels)
    assert labels == sorted(labels, key=lambda x: (x.start, x.meter_id, x.type))
