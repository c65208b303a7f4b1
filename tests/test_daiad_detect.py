"""Leaks added to real DAIAD registers are found, and real homes left alone raise no leak.

A quick cut of ``bench.daiad_detect``: 10 homes (drawn with the benchmark's seed), the file's first
60 days, leaks of 20-300 L/h on half of them. Real reads have gaps of hours to days and homes with
drips, which simulated fleets do not, so this guards the leak rules against both kinds of miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from bench.daiad_detect import (
    DAIAD_PATH,
    SEED,
    Leak,
    Run,
    detect,
    inject,
    load_readings,
    plan_leaks,
    spans,
    subset,
)
from evaluation.episodes import Episode, episodes
from evaluation.matching import LabelOutcome, match
from simulators.recording import Recording, from_csv

pytestmark = pytest.mark.skipif(not DAIAD_PATH.exists(), reason=f"no DAIAD data at {DAIAD_PATH}")

HOMES = 10
DAYS = 60
LEAKS = 5
MIN_LPH = 20.0
MAX_DELAY_H = 72.0  # a day of continuous flow, plus room for read gaps around the onset


@dataclass
class Quick:
    recording: Recording
    leaks: list[Leak]
    run: Run

    @property
    def leak_episodes(self) -> list[Episode]:
        return [e for e in episodes(self.run.alerts) if e.type == "leak"]

    def outcomes(self) -> list[LabelOutcome]:
        return match(self.leak_episodes, [leak.label() for leak in self.leaks]).outcomes


@pytest.fixture(scope="module")
def quick() -> Quick:
    readings = load_readings()
    ids = sorted(set(readings.meter_id.tolist()))
    homes = sorted(np.random.default_rng(SEED).choice(ids, HOMES, replace=False).tolist())
    rec = from_csv(subset(readings, homes, DAYS))
    leaks = plan_leaks(rec, LEAKS, SEED, rate_lph=(MIN_LPH, 300.0))
    return Quick(rec, leaks, detect(inject(rec, leaks)))


def test_the_cut_is_what_it_says(quick: Quick) -> None:
    span = spans(quick.recording)
    assert len(span) == HOMES
    assert max(hi for _, hi in span.values()) - min(lo for lo, _ in span.values()) < DAYS * 86400
    assert all(MIN_LPH <= leak.rate_lph <= 300.0 for leak in quick.leaks)


def test_injected_leaks_are_detected(quick: Quick) -> None:
    outcomes = quick.outcomes()
    assert len(outcomes) == LEAKS
    missed = [(o.label.meter_id, o.label.params) for o in outcomes if not o.detected]
    assert not missed
    slow = [(o.label.meter_id, o.delay_h) for o in outcomes if (o.delay_h or 0.0) > MAX_DELAY_H]
    assert not slow


def test_untouched_homes_raise_no_leak(quick: Quick) -> None:
    with_leak = {leak.meter_id for leak in quick.leaks}
    false = [e.to_json() for e in quick.leak_episodes if e.meter_id not in with_leak]
    assert not false


def test_leak_volume_is_whole_litres_from_the_onset(quick: Quick) -> None:
    leak = quick.leaks[0]
    rec = quick.recording
    added = inject(rec, [leak]).register_m3 - rec.register_m3
    mine = rec.meter == rec.meter_ids.index(leak.meter_id)
    before = mine & (rec.ts_s < leak.onset_s)
    after = mine & (rec.ts_s >= leak.onset_s)
    assert np.all(added[~after] == 0.0)
    assert before.any() and after.any()
    litres = np.floor(leak.rate_lph * (rec.ts_s[after] - leak.onset_s) / 3600.0)
    np.testing.assert_allclose(added[after] * 1000.0, litres, atol=1e-6)
