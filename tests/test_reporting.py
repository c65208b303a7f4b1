"""The reporting stage and the recording format: pure, on small synthetic registers."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from meterwatch.codec import Decoded, decode_uplink, uplink_topic
from simulators.csvsource import CsvReadings
from simulators.grid import Grid
from simulators.labels import Label, dumps_labels
from simulators.recording import (
    Message,
    Recording,
    RecordingFile,
    from_csv,
    messages,
    read_recording,
    write_recording,
)
from simulators.reporting import LORA, MALFORMED_KINDS, NBIOT, ReportingConfig
from simulators.reporting import messages as report
from simulators.state import FLAG_BITS, FleetState, new_state

LOCAL_MIDNIGHT = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp()) - 8 * 3600  # Shanghai
QUIET = ReportingConfig(
    drop_rate=0, duplicate_rate=0, out_of_order_rate=0, malformed_rate=0, skew_share=0
)
NOISY = ReportingConfig(
    drop_rate=0.03, resend_share=0.5, duplicate_rate=0.02, out_of_order_rate=0.02,
    out_of_order_delay_intervals=(1.5, 3.0), malformed_rate=0.01, skew_share=0.1,
)  # fmt: skip


def fleet(
    n: int, days: float, modes: list[str] | None = None, interval_s: int = 900
) -> tuple[list[str], list[str], Grid, np.ndarray, np.ndarray, FleetState]:
    grid = Grid(LOCAL_MIDNIGHT, interval_s, int(days * 86400 // interval_s) + 1)
    rng = np.random.default_rng(0)
    litres = rng.integers(0, 30, (n, grid.steps)).astype(np.float64)
    litres[:, 0] = 0
    register = 100.0 + np.cumsum(litres, axis=1) / 1000.0
    flow = litres * 3600.0 / interval_s
    ids = [f"WH-{m:04d}" for m in range(n)]
    return ids, modes or [LORA] * n, grid, register, flow, new_state(n, grid.steps)


def run(
    n: int,
    days: float,
    cfg: ReportingConfig,
    modes: list[str] | None = None,
    seed: int = 1,
    state_edit: Callable[[FleetState], None] | None = None,
) -> tuple[Recording, list[Label], Grid, np.ndarray]:
    ids, modes, grid, register, flow, state = fleet(n, days, modes)
    if state_edit is not None:
        state_edit(state)
    rec, labels = report(ids, modes, grid, register, flow, state, np.random.default_rng(seed), cfg)
    return rec, labels, grid, register


def decoded(rec: Recording) -> Iterator[tuple[Message, Decoded]]:
    now = datetime.now(UTC)
    for msg in messages(rec):
        yield msg, decode_uplink(uplink_topic(msg.meter_id), msg.payload, received_at=now)


def test_lora_sends_each_reading_alone_in_send_order():
    def flag(state):
        state.flags[1, 10:12] = FLAG_BITS["leak"]

    rec, labels, grid, register = run(3, 1, QUIET, state_edit=flag)
    assert labels == []
    assert len(rec) == rec.n_messages == 3 * grid.steps
    assert (np.diff(rec.send_s) >= 0).all() and (np.diff(rec.msg_id) > 0).all()
    delay = rec.send_s - rec.ts_s
    assert delay.min() >= 0 and delay.max() <= QUIET.lora_delay_max_s
    col = (rec.ts_s - grid.start_s) // grid.interval_s
    assert np.array_equal(rec.register_m3, register[rec.meter, col])
    # Battery and signal once a local day (the grid spans two local midnights).
    assert np.count_nonzero(~np.isnan(rec.battery_pct)) == 3 * 2
    got = {}
    for _, d in decoded(rec):
        assert d.rejections == [] and len(d.readings) == 1
        r = d.readings[0]
        got[(r.meter_id, int(r.ts.timestamp()))] = r
    assert len(got) == 3 * grid.steps
    leak = [k for k, r in got.items() if r.flags]
    assert sorted(leak) == [("WH-0001", grid.start_s + k * 900) for k in (10, 11)]
    assert got[("WH-0000", grid.start_s)].battery_pct == 100.0


def test_nbiot_sends_the_previous_days_hourly_values_next_morning():
    rec, labels, _, _ = run(2, 3, QUIET, modes=[NBIOT, NBIOT])
    assert labels == []
    starts = rec.message_starts()
    sizes = np.diff(starts)
    # Three whole local days, then the last grid column (midnight) alone the morning after.
    assert sorted(sizes.tolist()) == [1, 1] + [24] * 6
    assert (rec.ts_s % 3600 == 0).all() and np.isnan(rec.flow_lph).all()
    for a, b in itertools.pairwise(starts):
        day_end = (rec.ts_s[a] + 8 * 3600) // 86400 * 86400 - 8 * 3600 + 86400
        assert (rec.ts_s[a:b] < day_end).all() and (np.diff(rec.ts_s[a:b]) == 3600).all()
        lo, hi = QUIET.nbiot_window_h
        assert day_end + lo * 3600 <= rec.send_s[a] <= day_end + hi * 3600 + QUIET.nbiot_jitter_s
        assert not np.isnan(rec.battery_pct[b - 1]) and np.isnan(rec.battery_pct[a : b - 1]).all()
    for _, d in decoded(rec):
        assert d.rejections == []
        assert d.readings[-1].battery_pct == 100.0 and d.readings[-1].rssi_dbm is not None


def test_silent_meters_send_nothing_while_silent():
    def silence(state):
        state.silent[0, 20:60] = True  # LoRa: 40 readings never sent
        state.silent[1, 96 + 8 : 96 + 13] = True  # NB-IoT: asleep 02:00-03:00, its upload time

    cfg = ReportingConfig(
        drop_rate=0, duplicate_rate=0, out_of_order_rate=0, malformed_rate=0, skew_share=0,
        nbiot_window_h=(2.0, 3.0), nbiot_jitter_s=0,
    )  # fmt: skip
    rec, _, grid, _ = run(2, 2, cfg, modes=[LORA, NBIOT], state_edit=silence)
    lora_ts = rec.ts_s[rec.meter == 0]
    gone = grid.start_s + np.arange(20, 60) * 900
    assert lora_ts.size == grid.steps - 40 and not np.isin(gone, lora_ts).any()
    nb_ts = rec.ts_s[rec.meter == 1]
    # Day 1's message (due on day 2 between 02:00 and 03:00) was lost to the silence; day 2's
    # message lacks the two hours the meter was silent; the final midnight value still goes out.
    assert nb_ts.size == 24 - 2 + 1
    assert (nb_ts >= grid.start_s + 86400).all()


def test_noise_rates_counts_and_labels():
    n, days = 120, 2
    rec, labels, grid, _ = run(n, days, NOISY)
    base = n * grid.steps
    by_type: Counter[str] = Counter()
    for label in labels:
        assert not label.expect_alert and label.start <= (label.end or label.start)
        by_type[label.type] += label.params.get("count", 1)
    kinds = Counter(label.type for label in labels)
    assert max(Counter((lb.meter_id, lb.type) for lb in labels).values()) == 1  # one per kind

    skews = {lb.meter_id: lb.params["offset_s"] for lb in labels if lb.type == "clock_skew"}
    skew = np.array([skews.get(f"WH-{m:04d}", 0) for m in range(n)])
    assert 3 <= len(skews) <= 25 and all(30 <= abs(s) <= 600 for s in skews.values())
    true_ts = rec.ts_s - skew[rec.meter]
    assert ((true_ts - grid.start_s) % grid.interval_s == 0).all()

    valid = np.ones(len(rec), dtype=bool)
    valid[list(rec.raw)] = False
    keys = np.unique(np.stack([rec.meter[valid], true_ts[valid]]), axis=1, return_counts=True)[1]
    duplicates = int((keys - 1).sum())
    late = true_ts + 3600 <= rec.send_s  # re-sends come 1-12 h late; nothing else does
    held = (true_ts + 1.5 * 900 <= rec.send_s) & ~late
    delivered = keys.size + len(rec.raw)
    lost = base - delivered

    def near(got: int, rate: float) -> bool:
        expect = rate * base
        return bool(abs(got - expect) <= 5 * np.sqrt(expect) + 2)

    assert near(len(rec.raw), NOISY.malformed_rate)
    assert near(duplicates, NOISY.duplicate_rate)
    assert near(int(late.sum()), NOISY.drop_rate * NOISY.resend_share)
    assert near(lost, NOISY.drop_rate * (1 - NOISY.resend_share))
    assert near(int(held.sum()), NOISY.out_of_order_rate)
    assert by_type["malformed"] == len(rec.raw)
    assert by_type["duplicates"] == duplicates
    # One draw puts a message in one category: re-sent and held-back ones are never duplicated.
    assert by_type["late_upload"] == int(late.sum())
    assert by_type["out_of_order"] == int(held.sum())
    assert kinds["clock_skew"] == len(skews)
    # Held-back messages really arrive after a later reading of the same meter.
    order = np.lexsort((rec.msg_id, rec.meter))
    m, t = rec.meter[order], true_ts[order]
    overtaken = (m[1:] == m[:-1]) & (t[1:] < t[:-1])
    assert overtaken.sum() >= held.sum() > 0


def test_valid_messages_decode_cleanly_and_garbage_is_rejected_as_intended():
    rec, labels, _, _ = run(120, 2, NOISY, modes=[LORA, NBIOT] * 60)
    expected: Counter[tuple[str, str]] = Counter()
    for label in labels:
        if label.type == "malformed":
            for kind, c in label.params["kinds"].items():
                expected[(label.meter_id, MALFORMED_KINDS[kind])] += c
    got: Counter[tuple[str, str]] = Counter()
    readings = 0
    for msg, d in decoded(rec):
        if msg.readings:
            assert d.rejections == [], msg.payload
            readings += len(d.readings)
        else:
            assert d.readings == [] and len(d.rejections) == 1, msg.payload
            got[(msg.meter_id, d.rejections[0].reason)] += 1
    assert readings == rec.n_readings
    assert got == expected and len(set(r for _, r in got)) == 4  # all four reasons occur


def test_same_seed_same_bytes(tmp_path: Path):
    paths, texts = [], []
    for i, seed in enumerate((3, 3, 4)):
        rec, labels, _, _ = run(30, 1, NOISY, modes=[LORA, NBIOT] * 15, seed=seed)
        rec.meta.update({"scenario": "t", "seed": str(seed)})
        paths.append(tmp_path / f"r{i}.parquet")
        write_recording(paths[-1], rec)
        texts.append(dumps_labels(labels))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digest[0] == digest[1] != digest[2]
    assert texts[0] == texts[1] != texts[2]


def test_recording_round_trip_and_chunks_on_message_boundaries(tmp_path: Path):
    rec, _, _, _ = run(20, 1, NOISY, modes=[NBIOT, LORA] * 10)
    assert rec.raw
    path = tmp_path / "rec.parquet"
    write_recording(path, rec, rows_per_group=100)
    back = read_recording(path)
    for name in ("send_s", "msg_id", "meter", "ts_s", "register_m3", "flow_lph",
                 "battery_pct", "rssi_dbm", "flags"):  # fmt: skip
        a, b = getattr(rec, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert back.raw == rec.raw and back.meter_ids == rec.meter_ids and back.meta == rec.meta
    f = RecordingFile.open(path)
    assert (f.n_readings, f.n_messages) == (rec.n_readings, rec.n_messages)
    chunks = list(f.chunks())
    assert len(chunks) > 3
    assert [m for c in chunks for m in messages(c)] == list(messages(rec))
    assert list(messages(rec, block=7)) == list(messages(rec))  # encoded a block at a time
    assert sum(c.n_messages for c in chunks) == rec.n_messages  # no message split in two


def test_from_csv_sends_each_reading_at_its_time():
    csv = CsvReadings(
        meter_id=np.array(["b", "a", "b", "a"]), ts=np.array([200, 100, 100, 100]),
        register_m3=np.array([2.0, 1.0, 1.5, 1.0]), flow_lph=np.full(4, np.nan), bad_rows=[],
    )  # fmt: skip
    rec = from_csv(csv)
    assert rec.meter_ids == ("a", "b")
    assert rec.send_s.tolist() == rec.ts_s.tolist() == [100, 100, 100, 200]
    assert [rec.meter_ids[m] for m in rec.meter] == ["a", "b", "a", "b"]  # file order kept
    assert rec.n_messages == rec.n_readings == 4
    payloads = [m.payload for m in messages(rec)]
    assert payloads[0] == payloads[2]  # the file's duplicate replays as it is


def test_config_from_toml():
    cfg = ReportingConfig.from_toml({"drop_rate": 0.1, "nbiot_window_h": [1, 4], "skew_s": [5, 9]})
    assert cfg.drop_rate == 0.1 and cfg.nbiot_window_h == (1.0, 4.0)
    assert ReportingConfig.from_toml({}) == ReportingConfig()
    bad_tables = (
        {"drop_rte": 0.1}, {"drop_rate": "x"}, {"drop_rate": 2.0}, {"lora_delay_max_s": 1.5},
        {"resend_delay_h": [3, 1]}, {"timezone": "Mars/Base"}, {"skew_s": 5},
    )  # fmt: skip
    for bad in bad_tables:
        with pytest.raises(ValueError):
            ReportingConfig.from_toml(bad)


def test_unknown_mode_and_misaligned_arrays_are_refused():
    ids, modes, grid, register, flow, state = fleet(2, 1)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="modes"):
        report(ids, ["lora", "wifi"], grid, register, flow, state, rng, QUIET)
    with pytest.raises(ValueError):
        report(ids[:1], modes, grid, register, flow, state, rng, QUIET)
