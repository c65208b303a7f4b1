"""Fault injection: every label must describe exactly what was done to the arrays, reproducibly."""

from __future__ import annotations

import copy
import tomllib
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from meterwatch.domain import Meter, MeterKind
from simulators.faults import METER_FAULTS, FaultConfig, inject
from simulators.fleet import make_fleet
from simulators.grid import Grid
from simulators.labels import Label, dumps_labels, read_labels, sort_labels, write_labels
from simulators.state import FLAG_BITS, FleetState, flag_names, new_state

N_CUSTOMERS = 400
RATE = 30.0  # per 1,000 customers: 12 events of each type
GRID = Grid(int(datetime(2026, 3, 2, tzinfo=UTC).timestamp()), 900, 21 * 96 + 1)
DT_H = GRID.interval_s / 3600
CFG = FaultConfig.from_toml({**dict.fromkeys(METER_FAULTS, RATE), "dma_leak_share": 0.5})


def _meters() -> list[Meter]:
    customers = make_fleet(N_CUSTOMERS, seed=3, dmas=4)
    dmas = sorted({m.dma for m in customers if m.dma})
    inlets = [
        Meter(f"{d}-INLET", dma=d, kind=MeterKind.BULK, dn_mm=100, q3_m3h=100.0) for d in dmas
    ]
    return customers + inlets


METERS = _meters()
BULK = np.array([m.kind is MeterKind.BULK for m in METERS])


def _normal_state(seed: int = 0) -> FleetState:
    """Customers with a morning and evening peak (local time UTC+8) and many idle intervals."""
    rng = np.random.default_rng(seed)
    hour = (GRID.ts // 3600 + 8) % 24
    shape = 0.2 + np.exp(-(((hour - 7.5) / 1.5) ** 2)) + np.exp(-(((hour - 19.5) / 2) ** 2))
    q3 = np.array([m.q3_m3h for m in METERS])
    daily_m3 = q3 * 0.14 * rng.lognormal(0, 0.4, len(METERS))
    active = rng.random((len(METERS), GRID.steps)) < 0.4
    use = active * (daily_m3[:, None] / 96 * shape / shape.mean() / 0.4)
    use[:, 0] = 0.0
    use[BULK] = 0.0
    state = new_state(len(METERS), GRID.steps)
    state.use[:] = use
    return state


def _run(seed: int, cfg: FaultConfig = CFG) -> tuple[FleetState, FleetState, list[Label]]:
    before = _normal_state()
    after = copy.deepcopy(before)
    labels = inject(after, METERS, GRID, np.random.default_rng(seed), cfg)
    return before, after, labels


BEFORE, AFTER, LABELS = _run(7)
ROW = {m.meter_id: i for i, m in enumerate(METERS)}


def _col(iso: str | None) -> int:
    if iso is None:
        return GRID.steps - 1
    return (int(datetime.fromisoformat(iso).timestamp()) - GRID.start_s) // GRID.interval_s


def _of(kind: str) -> list[tuple[int, int, int, Label]]:
    """(row, start column, end column, label) of each label of ``kind``."""
    found = [
        (ROW[lb.meter_id], _col(lb.start), _col(lb.end), lb) for lb in LABELS if lb.type == kind
    ]
    assert found, f"no {kind} labels"
    return found


def test_leak_adds_the_labelled_rate_from_its_start() -> None:
    seen = set()
    for m, s, e, lb in _of("leak"):
        added = (AFTER.use[m] - BEFORE.use[m]) * 1000 / DT_H  # L/h
        p = lb.params
        assert np.all(added[: s + 1] == 0) and np.all(added[e + 1 :] == 0)
        assert added[s + 1] == pytest.approx(p["onset_rate_lph"], abs=1e-6)
        assert np.all(np.diff(added[s + 1 : e + 1]) >= -1e-9)  # never shrinks
        ramp_end = s + round(p["ramp_h"] / DT_H) + 1  # a growing leak reaches its rate in time
        assert ramp_end <= e and np.allclose(added[ramp_end : e + 1], p["rate_lph"])
        assert 5 <= p["rate_lph"] <= 300 and p["onset_rate_lph"] <= p["rate_lph"]
        assert p["growing"] == (p["onset_rate_lph"] < p["rate_lph"])
        flagged = AFTER.flags[m] & FLAG_BITS["leak"] > 0
        assert flagged.any() == p["meter_flag"] and not flagged[: s + 1].any()
        seen.add(p["growing"])
    assert seen == {True, False}


def test_burst_is_at_least_30_percent_of_q3_for_30_minutes() -> None:
    for m, s, e, lb in _of("burst"):
        q3 = METERS[m].q3_m3h
        flow = AFTER.use[m, s + 1 : e + 1] / DT_H
        assert (e - s) * DT_H >= 0.5 and lb.params["duration_h"] == (e - s) * DT_H
        assert np.all(flow >= 0.3 * q3) and np.all(flow <= 1.25 * q3 + 1e-9)
        assert np.array_equal(AFTER.use[m, : s + 1], BEFORE.use[m, : s + 1])
        assert np.array_equal(AFTER.use[m, e + 1 :], BEFORE.use[m, e + 1 :])


def test_no_consumption_stuck_or_vacant_for_at_least_seven_days() -> None:
    causes: Counter[str] = Counter()
    for m, s, _, lb in _of("no_consumption"):
        assert lb.end is None and (GRID.steps - 1 - s) * DT_H >= 7 * 24
        causes[lb.params["cause"]] += 1
        if lb.params["cause"] == "stuck":
            assert AFTER.measured[m, : s + 1].all() and not AFTER.measured[m, s + 1 :].any()
            assert np.array_equal(AFTER.use[m], BEFORE.use[m])  # the water still flows
        else:
            assert AFTER.measured[m].all() and np.all(AFTER.use[m, s + 1 :] == 0)
            assert BEFORE.use[m, s + 1 :].sum() > 0
    assert set(causes) == {"stuck", "vacant"}


def test_reverse_flow_is_negative_use_with_the_reverse_flag() -> None:
    for m, s, e, _ in _of("reverse_flow"):
        reverse = AFTER.flags[m] & FLAG_BITS["reverse"] > 0
        assert np.all(AFTER.use[m, s + 1 : e + 1] < 0) and np.all(AFTER.use[m, : s + 1] >= 0)
        assert reverse[s + 1 : e + 1].all() and reverse.sum() == e - s


def test_tamper_sets_its_flag_for_the_stretch() -> None:
    for m, s, e, lb in _of("tamper"):
        bits = AFTER.flags[m] & FLAG_BITS[lb.params["flag"]] > 0
        assert bits[s + 1 : e + 1].all() and bits.sum() == e - s
        assert (~AFTER.measured[m]).sum() == (e - s if lb.params["under_registration"] else 0)


def test_low_battery_flag_once_below_threshold_and_others_stay_healthy() -> None:
    low = np.zeros(len(METERS), dtype=bool)
    for m, f, _, lb in _of("low_battery"):
        low[m] = True
        battery, flag = AFTER.battery_pct[m], AFTER.flags[m] & FLAG_BITS["low_battery"] > 0
        assert (
            np.all(battery[:f] >= lb.params["threshold_pct"])
            and battery[f] < lb.params["threshold_pct"]
        )
        assert flag[f:].all() and not flag[:f].any() and battery[-1] < 10
    others = AFTER.battery_pct[~low]
    assert others.min() > 80 and others.max() <= 100 and abs(others[:, 0].mean() - 95) < 1
    assert others[:, -96:].mean() < others[:, :96].mean() - 0.1  # drifts down
    assert not (AFTER.flags[~low] & FLAG_BITS["low_battery"]).any()


def test_silent_mask_matches_its_labels() -> None:
    expected = np.zeros_like(AFTER.silent)
    for m, s, e, lb in _of("silent"):
        end = e if lb.end else GRID.steps
        expected[m, s + 1 : end] = True
        assert lb.params["recovered"] == (lb.end is not None)
    assert np.array_equal(AFTER.silent, expected)


def test_rollover_wraps_at_the_labelled_reading() -> None:
    for m, w, e, lb in _of("rollover"):
        assert w == e and not lb.expect_alert
        max_l = round(METERS[m].register_max_m3 * 1000)
        counted = np.where(AFTER.measured[m], AFTER.use[m], 0.0)
        initial = AFTER.initial_register_m3[m]
        assert initial == lb.params["initial_register_m3"]
        # Both ways of reading a register in whole litres wrap at the same, labelled, column.
        by_litres = round(initial * 1000) + np.floor(np.cumsum(counted) * 1000)
        by_m3 = np.floor((initial + np.cumsum(counted)) * 1000 + 1e-6)
        for reg in (by_litres, by_m3):
            assert int(np.argmax(reg >= max_l)) == w and reg[w - 1] < max_l


def test_replacement_sets_the_column_and_nothing_else() -> None:
    rows = {m: s for m, s, _, _ in _of("replacement")}
    assert all(AFTER.replaced_at[m] == s and 0 < s < GRID.steps for m, s in rows.items())
    assert (AFTER.replaced_at >= 0).sum() == len(rows)
    assert all(np.array_equal(AFTER.use[m], BEFORE.use[m]) for m in rows)


def test_busy_day_scales_one_local_day() -> None:
    for m, a, b, lb in _of("busy_day"):
        q4 = 1.25 * METERS[m].q3_m3h * DT_H
        assert b - a == 96 and (GRID.ts[a] + 8 * 3600) % 86400 == 0  # local midnight to midnight
        scaled = np.minimum(BEFORE.use[m, a + 1 : b + 1] * lb.params["factor"], q4)
        assert np.allclose(AFTER.use[m, a + 1 : b + 1], scaled) and not lb.expect_alert
        assert AFTER.use[m].sum() > BEFORE.use[m].sum()


def test_abnormal_high_adds_earlier_days_to_a_run_of_whole_local_days_after_a_week() -> None:
    lengths = set()
    for m, a, b, lb in _of("abnormal_high"):
        n, factor = lb.params["days"], lb.params["factor"]
        assert lb.expect_alert and 3 <= n <= 7 and 3 <= factor <= 5
        assert b - a == n * 96 and (GRID.ts[a] + 8 * 3600) % 86400 == 0  # local midnights
        assert GRID.ts[a] >= GRID.start_s + 7 * 86400  # a week of normal history first
        q4 = 1.25 * METERS[m].q3_m3h * DT_H
        before, after = BEFORE.use[m, a + 1 : b + 1], AFTER.use[m, a + 1 : b + 1]
        assert np.all(after >= before - 1e-12) and np.all(after <= q4 + 1e-12)
        # More of the customer's own uses, not bigger ones: no interval beyond the meter's
        # largest before the run (scaling would make a shower four times its size).
        assert after.max() <= max(BEFORE.use[m, : a + 1].max() * (factor - 1) + before.max(), q4)
        assert np.array_equal(AFTER.use[m, : a + 1], BEFORE.use[m, : a + 1])
        assert np.array_equal(AFTER.use[m, b + 1 :], BEFORE.use[m, b + 1 :])
        daily = BEFORE.use[m, a + 1 : b + 1].reshape(n, 96).sum(axis=1)
        assert np.all(daily > 0)  # every day of the run shows the rise
        assert AFTER.use[m, a + 1 : b + 1].sum() > 2.5 * daily.sum()
        lengths.add(n)
    assert len(lengths) > 1


def test_abnormal_high_fits_the_history_and_the_days_left() -> None:
    def only_abnormal_high(history_days: float) -> FaultConfig:
        table = {"per_1000": 100.0, "min_history_days": history_days}
        return FaultConfig.from_toml({**dict.fromkeys(METER_FAULTS, 0.0), "abnormal_high": table})

    late = only_abnormal_high(14)
    _, after, labels = _run(7, late)
    # 14 days in, the first local midnight is 14 d 16 h in and 6 whole local days are left.
    runs = [lb for lb in labels if lb.type == "abnormal_high"]
    assert len(runs) == 40
    for lb in runs:
        assert _col(lb.start) >= 14 * 96 and 3 <= lb.params["days"] <= 6
        assert _col(lb.end) <= GRID.steps - 1
    assert any(lb.params["days"] == 6 for lb in runs)  # 7-day draws shortened to what is left
    again = _run(7, late)
    assert dumps_labels(again[2]) == dumps_labels(labels)
    assert np.array_equal(again[1].use, after.use)
    assert not [lb for lb in _run(7, only_abnormal_high(18))[2] if lb.type == "abnormal_high"]


def test_abnormal_high_only_lands_on_days_with_use() -> None:
    cfg = FaultConfig.from_toml(dict.fromkeys(METER_FAULTS, 0.0) | {"abnormal_high": 100.0})
    empty = new_state(len(METERS), GRID.steps)
    labels = inject(empty, METERS, GRID, np.random.default_rng(7), cfg)
    assert not [lb for lb in labels if lb.type == "abnormal_high"] and not empty.use.any()
    # Every fourth local day away from home: only 3-day runs fit between the empty days.
    state = _normal_state()
    day = np.concatenate(([0], (GRID.ts[:-1] + 8 * 3600) // 86400))  # local day of each interval
    state.use[:, day % 4 == 0] = 0.0
    labels = inject(state, METERS, GRID, np.random.default_rng(7), cfg)
    runs = [lb for lb in labels if lb.type == "abnormal_high"]
    assert runs and all(lb.params["days"] == 3 for lb in runs)
    for lb in runs:
        a, b = _col(lb.start), _col(lb.end)
        assert np.all(state.use[ROW[lb.meter_id], a + 1 : b + 1].reshape(3, 96).sum(axis=1) > 0)


def test_abnormal_high_leaves_the_other_types_meters_alone() -> None:
    without = FaultConfig.from_toml(
        {**dict.fromkeys(METER_FAULTS, RATE), "abnormal_high": 0.0, "dma_leak_share": 0.5}
    )
    _, _, labels = _run(7, without)
    others = set(METER_FAULTS) - {"abnormal_high"}
    assert [lb for lb in labels if lb.type in others] == [lb for lb in LABELS if lb.type in others]


def test_dma_network_leak_goes_to_network_loss_only() -> None:
    assert sorted(AFTER.network_loss) == ["dma-01", "dma-02", "dma-03", "dma-04"]
    leaking = set()
    for m, s, _, lb in _of("dma_imbalance"):
        p = lb.params
        dma = p["dma"]
        leaking.add(dma)
        assert METERS[m].kind is MeterKind.BULK and METERS[m].dma == dma
        loss = AFTER.network_loss[dma] / DT_H
        assert np.all(loss[: s + 1] == 0) and loss[s + 1] == pytest.approx(p["onset_rate_m3h"])
        ramp_end = s + round(p["ramp_h"] / DT_H) + 1
        assert np.allclose(loss[ramp_end:], p["rate_m3h"]) and np.all(np.diff(loss) >= -1e-12)
        # The rate is a share of the customers' true use, leaks and busy days included.
        inflow = AFTER.use[[x.dma == dma for x in METERS], 1:].sum(axis=0).mean() / DT_H
        assert p["rate_m3h"] == pytest.approx(inflow * p["share_of_inflow"], 1e-3)
    assert len(leaking) == 2
    assert all(not AFTER.network_loss[d].any() for d in set(AFTER.network_loss) - leaking)
    assert not AFTER.use[BULK].any()


def test_each_meter_gets_one_event_and_untouched_meters_stay_normal() -> None:
    per_meter = Counter(lb.meter_id for lb in LABELS)
    assert max(per_meter.values()) == 1
    quiet = np.array([m.meter_id not in per_meter for m in METERS])
    assert np.array_equal(AFTER.use[quiet], BEFORE.use[quiet])
    assert AFTER.measured[quiet].all() and not AFTER.silent[quiet].any()
    assert not AFTER.flags[quiet].any() and not AFTER.initial_register_m3[quiet].any()


def test_counts_follow_the_configured_rates() -> None:
    counts = Counter(lb.type for lb in LABELS)
    for kind in METER_FAULTS:
        assert abs(counts[kind] - RATE * N_CUSTOMERS / 1000) <= 1, kind
    _, _, few = _run(7, FaultConfig.from_toml({**dict.fromkeys(METER_FAULTS, 0.0), "leak": 5}))
    assert (
        Counter(lb.type for lb in few)["leak"] == 2 and len(few) == 2 + 1
    )  # + a quarter of 4 DMAs


def test_same_seed_same_bytes_other_seed_differs() -> None:
    _, again, labels = _run(7)
    for name in ("use", "measured", "flags", "battery_pct", "silent", "replaced_at"):
        assert np.array_equal(getattr(again, name), getattr(AFTER, name)), name
    assert np.array_equal(again.initial_register_m3, AFTER.initial_register_m3)
    assert dumps_labels(labels) == dumps_labels(LABELS)
    _, other, other_labels = _run(8)
    assert dumps_labels(other_labels) != dumps_labels(LABELS)
    assert not np.array_equal(other.use, AFTER.use)


def test_short_periods_get_no_unalertable_windows() -> None:
    short = Grid(GRID.start_s, GRID.interval_s, 9 * 96 + 1)
    state = new_state(len(METERS), short.steps)
    state.use[:] = _normal_state().use[:, : short.steps]
    labels = inject(state, METERS, short, np.random.default_rng(1), CFG)
    kinds = Counter(lb.type for lb in labels)
    assert kinds["no_consumption"] == 0 and kinds["abnormal_high"] == 0 and kinds["leak"] > 0
    with pytest.raises(ValueError, match="meters x steps"):
        inject(new_state(3, 5), METERS, GRID, np.random.default_rng(1), CFG)


def test_labels_jsonl_round_trip_in_sorted_order(tmp_path) -> None:
    path = tmp_path / "labels.jsonl"
    write_labels(path, reversed(LABELS))
    back = read_labels(path)
    assert back == LABELS == sort_labels(back)
    assert [lb.sort_key for lb in back] == sorted(lb.sort_key for lb in back)
    assert path.read_bytes() == dumps_labels(back) and path.read_bytes().count(b"\n") == len(back)
    assert Label.from_json(LABELS[0].to_json()) == LABELS[0]
    with pytest.raises(ValueError, match="unknown label type"):
        Label("WH-1", "leek", "2026-03-02T00:00:00+00:00", None, True, {})


def test_flag_names_follow_flag_bits() -> None:
    assert flag_names(FLAG_BITS["tamper"] | FLAG_BITS["low_battery"]) == ("tamper", "low_battery")
    assert flag_names(0) == ()


def test_config_from_toml_and_its_errors() -> None:
    table = tomllib.loads(
        """
        burst = 2.5
        warmup_days = 1
        [leak]
        per_1000 = 12
        rate_lph = [10, 100]
        [battery]
        noise_pct = 0.1
        """
    )
    cfg = FaultConfig.from_toml(table)
    assert cfg.rate("leak") == 12 and cfg.rate("burst") == 2.5 and cfg.rate("silent") == 5
    assert cfg.span("leak", "rate_lph") == (10, 100) and cfg.num("leak", "growing_share") == 0.3
    assert cfg.warmup_days == 1 and cfg.num("battery", "noise_pct") == 0.1
    bad = {
        "leek": 1.0,
        "leak": {"rate_lhp": [1, 2]},
        "burst": {"duration_h": [3, 1]},
        "silent": {"recover_share": 1.5},
        "tamper": True,
        "battery": 3.0,
        "abnormal_high": {"duration_days": [3.2, 3.8]},
    }
    for key, value in bad.items():
        with pytest.raises(ValueError, match=key):
            FaultConfig.from_toml({key: value})
    with pytest.raises(ValueError, match="more than 1,000"):
        FaultConfig.from_toml(dict.fromkeys(METER_FAULTS, 200.0))
