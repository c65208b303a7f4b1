"""Evaluation: alert streams into episodes, episodes against labels, the report and the command."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from detectors.alert import Alert, Severity
from evaluation.command import read_episodes
from evaluation.episodes import Episode, episodes, read_alert_stream
from evaluation.matching import label_outcomes
from evaluation.report import pick_cases, write_report
from evaluation.scores import NoiseScore, TypeScore, score
from evaluation.series import RecordingSeries, recording_meter_days, series_from_db
from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from simulators.labels import Label, write_labels
from simulators.recording import Recording, write_recording
from storage.alerts import apply_alerts
from storage.writer import Message, Writer

T0 = datetime(2026, 10, 1, tzinfo=UTC)
W, C = Severity.WARNING, Severity.CRITICAL
PNG = b"\x89PNG\r\n\x1a\n"


def t(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def iso(hours: float) -> str:
    return t(hours).isoformat()


def alert(meter: str, type_: str, start: float, det: float, sev: Severity = W, **kw) -> Alert:
    return Alert(meter, type_, sev, t(start), t(det), **kw)


def ep(meter: str, type_: str, start: float, det: float) -> Episode:
    return Episode(meter, type_, W, t(start), t(det), t(det))


def label(meter: str, type_: str, start: float, end: float | None, expect: bool = True) -> Label:
    return Label(meter, type_, iso(start), None if end is None else iso(end), expect)


# -- episodes


def test_stream_folds_into_episodes_like_the_store():
    stream = [
        alert("A", "leak", 2, 3),
        alert("B", "burst", 4, 4),
        alert("A", "leak", 1, 5, C),  # repeat: earlier start and worse severity win
        alert("A", "leak", 2, 6),  # repeat: severity stays critical
        alert("A", "leak", 2, 7, cleared=True),
        alert("A", "leak", 9, 10),  # after the clear: a new episode
        alert("C", "tamper", 0, 1, cleared=True),  # nothing open: says nothing
    ]
    assert episodes(stream) == [
        Episode("A", "leak", C, t(1), t(3), t(6), t(7)),
        Episode("B", "burst", W, t(4), t(4), t(4), None),
        Episode("A", "leak", W, t(9), t(10), t(10), None),
    ]


def test_alert_stream_round_trips_through_json_lines(tmp_path: Path):
    stream = [alert("A", "leak", 0, 1, evidence={"min_flow_lph": 38.0}), alert("A", "leak", 0, 2)]
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(a.to_json()) for a in stream) + b"\n\n")
    assert read_alert_stream(path) == stream
    path.write_bytes(path.read_bytes() + b'{"meter_id": "A", "type": "flood"}\n')
    with pytest.raises(ValueError, match=r"alerts.jsonl:4: not an alert"):
        read_alert_stream(path)


# -- matching and scores

FAULTS = [
    label("A", "leak", 10, 20),
    label("C", "leak", 30, None),  # open-ended
    label("E", "leak", 0, 5),  # missed
    label("A", "burst", 50, 52),
]
EPISODES = [
    ep("A", "leak", 5, 12),  # starts before the window, overlaps it: true, delay 2 h
    ep("A", "leak", 0, 5),  # before the window: false
    ep("A", "burst", 11, 12),  # the leak's window but the wrong type: false
    ep("B", "leak", 10, 15),  # the leak's window but the wrong meter: false
    ep("C", "leak", 100, 101),  # inside the open window: true, delay 71 h
    ep("A", "burst", 50, 51),  # true, delay 1 h
    ep("A", "leak", 15, 18),  # a second answer to the first leak: true, no new detection
]


def test_matching_outcomes_per_label():
    outcomes = label_outcomes(EPISODES, FAULTS)
    assert [(o.label.meter_id, o.label.type, o.delay_h) for o in outcomes] == [
        ("A", "leak", 2.0),
        ("C", "leak", 71.0),
        ("E", "leak", None),
        ("A", "burst", 1.0),
    ]
    assert outcomes[0].episode == EPISODES[0]  # the first detection, not the later repeat
    assert [o.detected for o in outcomes] == [True, True, False, True]


def test_precision_recall_f1_delay_and_false_rate_exactly():
    s = score(EPISODES, FAULTS, meter_days=500)
    assert s.types == (
        TypeScore("burst", 1, 2, 1, 1, 1, 0.5, 1.0, 0.667, 1.0, 1.0, 2.0),
        TypeScore("leak", 3, 5, 3, 2, 2, 0.6, 0.667, 0.632, 36.5, 64.1, 4.0),
    )
    # all types: 4 of 7 alerts true, 3 of 4 labels found, delays 1, 2 and 71 h
    assert s.overall == TypeScore("all", 4, 7, 4, 3, 3, 0.571, 0.75, 0.649, 2.0, 57.2, 6.0)
    assert s.noise == () and s.fleet_wide == ()


def test_undefined_rates_are_none():
    s = score([ep("F", "fleet_outlier", 0, 1)], [label("G", "tamper", 0, 1)], meter_days=0)
    assert s.types == (
        TypeScore("fleet_outlier", 0, 1, 0, 1, 0, 0.0, None, None, None, None, None),
        TypeScore("tamper", 1, 0, 0, 0, 0, None, 0.0, None, None, None, None),
    )
    assert s.to_json()["types"]["tamper"]["precision"] is None
    assert "| tamper | 1 | 0 | - | 0.000 | - | - | - | - |" in s.table_markdown()


def test_noise_counts_each_overlapping_episode_once_and_which_are_false():
    labels = [
        label("A", "rollover", 100, 101, False),
        label("B", "busy_day", 0, 24, False),
        label("B", "busy_day", 11, 30, False),
        label("C", "busy_day", 48, 72, False),
        label("D", "drip", 0, None, False),
        label("B", "leak", 2, 30),
        Label("*", "holiday", iso(120), iso(144), False, {"name": "National Day"}),
    ]
    eps = [
        ep("A", "abnormal_high", 99, 100.5),  # rollover: false
        ep("B", "leak", 1, 3),  # a real leak during a busy day: true
        ep("B", "abnormal_high", 10, 12),  # both busy days of B: counted once, false
        ep("C", "no_consumption", 130, 140),  # not C's busy day; the holiday: false
        ep("D", "leak", 500, 510),  # a drip is not a leak: false
        ep("E", "fleet_outlier", 125, 126),  # the holiday: false
        ep("E", "leak", 125, 126),  # a leak is not a holiday's kind of alert
        ep("F", "abnormal_low", 0, 1),  # before the holiday
    ]
    s = score(eps, labels, meter_days=100)
    assert s.noise == (
        NoiseScore("busy_day", 3, 2, 2, 1, {"abnormal_high": 1}),
        NoiseScore("drip", 1, 1, 1, 1, {"leak": 1}),
        NoiseScore("rollover", 1, 1, 1, 1, {"abnormal_high": 1}),
    )
    assert s.fleet_wide == (
        NoiseScore("holiday", 1, 1, 2, 2, {"fleet_outlier": 1, "no_consumption": 1}),
    )
    assert s.overall.n_labels == 1  # noise and fleet-wide labels are not faults
    assert "| holiday | fleet | 1 | 1 | 2 | 2 | fleet_outlier 1, no_consumption 1 |" in (
        s.noise_markdown()
    )


def test_scores_json_is_sorted_rounded_and_stable():
    a = score(EPISODES, FAULTS, meter_days=3)
    b = score(list(reversed(EPISODES)), FAULTS, meter_days=3)
    assert orjson.dumps(a.to_json()) == orjson.dumps(b.to_json())
    js = a.to_json()
    assert list(js["types"]) == ["burst", "leak"]
    assert js["overall"]["false_per_1000_meter_days"] == 1000.0
    assert js["types"]["leak"]["false_per_1000_meter_days"] == 666.667


# -- report


def test_cases_prefer_important_types_one_type_at_a_time():
    labels = [label("M", k, h, h + 1) for h, k in enumerate(["tamper", "leak", "leak", "burst"])]
    eps = [ep("M", k, h, h + 0.5) for h, k in enumerate(["tamper", "leak", "leak", "burst"])]
    picked = pick_cases(label_outcomes(eps, labels), detected=True)
    assert [(o.label.type, o.label.start) for o in picked] == [
        ("leak", iso(1)),
        ("burst", iso(3)),
        ("tamper", iso(0)),
    ]
    assert pick_cases(label_outcomes(eps, labels), detected=False) == []


def fake_series(meter_id: str, start: datetime, end: datetime):
    hours = np.arange(
        np.datetime64(start.replace(tzinfo=None), "h"), np.datetime64(end.replace(tzinfo=None), "h")
    ).astype("datetime64[s]")
    return hours, np.linspace(0.0, 1.0, hours.size)


def test_report_files(tmp_path: Path):
    s = score(EPISODES, FAULTS, meter_days=500)
    paths = write_report(s, label_outcomes(EPISODES, FAULTS), tmp_path / "out", fake_series)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "scores.json",
        "report.md",
        "cases.png",
    }
    assert paths["cases"].read_bytes()[:8] == PNG
    assert orjson.loads(paths["scores"].read_bytes()) == s.to_json()
    text = paths["report"].read_text()
    assert s.table_markdown() in text and s.noise_markdown() in text
    assert "leak on E" in text and "missed" in text  # the missed leak is shown
    empty = write_report(score([], [], meter_days=0), [], tmp_path / "empty", fake_series)
    assert empty["cases"].read_bytes()[:8] == PNG


# -- recordings


def recording(rows: list[tuple[int, int, float]], meter_ids: tuple[str, ...]) -> Recording:
    """One reading a message, sent when it is read: (meter index, ts_s, register_m3) rows."""
    n = len(rows)
    meter, ts, reg = (np.array(col) for col in zip(*rows, strict=True))
    nan = np.full(n, np.nan, dtype=np.float32)
    return Recording(
        send_s=np.sort(ts).astype(np.int64), msg_id=np.arange(n, dtype=np.int64),
        meter=meter.astype(np.int32), ts_s=ts.astype(np.int64), register_m3=reg.astype(np.float64),
        flow_lph=nan, battery_pct=nan.copy(), rssi_dbm=nan.copy(), flags=np.zeros(n, np.uint8),
        meter_ids=meter_ids,
    )  # fmt: skip


def test_recording_series_sums_register_increases_into_hours(tmp_path: Path):
    base = int(t(0).timestamp())
    rows = [(0, base + s, r) for s, r in [
        (0, 1.00), (900, 1.01), (1800, 1.03), (1800, 1.03), (3600, 1.10), (2700, 1.06),
        (4500, 0.02), (5400, 0.05),
    ]]  # fmt: skip  # a duplicate, one out of order, then a rollover that is not use
    rows.append((1, base + 900, 5.0))
    rows.append((0, 0, np.nan))  # a malformed message's row
    rec = recording(rows, ("R-1", "R-2"))
    rec.raw[len(rows) - 1] = b"garbage"
    path = tmp_path / "r.parquet"
    write_recording(path, rec)
    series = RecordingSeries(path)
    times, volume = series("R-1", t(-1), t(5))
    assert times.tolist() == [t(0).replace(tzinfo=None), t(1).replace(tzinfo=None)]
    assert volume == pytest.approx([0.10, 0.03])
    assert series("R-1", t(1), t(2))[1] == pytest.approx([0.03])
    assert series("R-2", t(0), t(5))[0].size == 0  # one reading: no interval
    assert series("NOPE", t(0), t(5))[0].size == 0
    assert recording_meter_days(path) == pytest.approx(2 * 5400 / 86400)


def tiny_fleet(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two meters for two days at 15 minutes, a leak label on one and a stream that finds it."""
    base = int(T0.timestamp())
    rows = [
        (m, base + k * 900, 100.0 + k * (0.01 if m == 0 else 0.002))
        for k in range(193)
        for m in (0, 1)
    ]
    path = tmp_path / "tiny.parquet"
    write_recording(path, recording(rows, ("T-1", "T-2")))
    labels = tmp_path / "tiny.labels.jsonl"
    write_labels(labels, [label("T-1", "leak", 6, None), label("T-2", "burst", 30, 31)])
    stream = tmp_path / "alerts.jsonl"
    alerts = [alert("T-1", "leak", 5, 9), alert("T-1", "leak", 5, 12), alert("T-2", "leak", 2, 3)]
    stream.write_bytes(b"".join(orjson.dumps(a.to_json()) + b"\n" for a in alerts))
    return path, labels, stream


def meterwatch(*args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "meterwatch", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "METERWATCH_DATABASE_URL": "", **(env or {})},
    )  # fmt: skip


def test_cli_scores_a_stream_against_a_recording(tmp_path: Path):
    rec, labels, stream = tiny_fleet(tmp_path)
    out = tmp_path / "report"
    args = ("evaluate", "--labels", str(labels), "--alerts", str(stream), "--recording", str(rec))
    proc = meterwatch(*args, "--report", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    js = orjson.loads(proc.stdout)
    assert js["meter_days"] == 4.0
    expected = {
        "n_labels": 1, "n_alerts": 2, "true_alerts": 1, "detected": 1, "precision": 0.5,
        "recall": 1.0, "delay_median_h": 3.0, "false_per_1000_meter_days": 250.0,
    }  # fmt: skip
    assert {k: js["types"]["leak"][k] for k in expected} == expected
    assert js["types"]["burst"]["recall"] == 0.0
    assert (out / "cases.png").read_bytes()[:8] == PNG
    assert orjson.loads((out / "scores.json").read_bytes()) == js

    proc = meterwatch(*args, "--meter-days", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "| leak | 1 | 2 | 0.500 | 1.000 | 0.667 | 3.000 | 3.000 | 1.000 |" in proc.stdout


def test_cli_without_a_database_says_so(tmp_path: Path):
    _, labels, _ = tiny_fleet(tmp_path)
    proc = meterwatch("evaluate", "--labels", str(labels))
    assert proc.returncode == 2
    assert "no database URL" in proc.stderr


# -- the database path


def message(meter_id: str, readings) -> Message:
    topic = uplink_topic(meter_id)
    payload = encode_uplink(meter_id, readings)
    return Message(topic, payload, T0, decode_uplink(topic, payload, received_at=T0))


def test_the_store_folds_a_stream_into_the_same_episodes(db):
    stream = [
        alert("A", "leak", 2, 3),
        alert("A", "leak", 1, 5, C),
        alert("B", "burst", 4, 4),
        alert("A", "leak", 2, 7, cleared=True),
        alert("A", "leak", 9, 10),
        alert("A", "leak", 9, 11, Severity.INFO),
    ]
    apply_alerts(db, stream)
    db.commit()
    # The stream ends A's leak at 7 and starts another at 10; the store keeps one alert because
    # the condition came back before the alert was resolved (the scheduler resolves it only after
    # the condition has stayed away), so the store's episodes are the stream's without the clear.
    assert episodes(stream)[0].cleared_at == t(7)
    assert read_episodes(db) == episodes([a for a in stream if not a.cleared])


def test_cli_scores_the_alert_store_with_its_usage(db_url, db, tmp_path: Path):
    readings = [(t(h), 10.0 + 0.05 * h, None) for h in range(0, 49)]
    batch: list[Message] = [message("D-1", readings), message("D-2", readings[:10])]
    Writer(db).write(batch)
    stream = [
        alert("D-1", "leak", 3, 8, C),
        alert("D-1", "leak", 3, 20),
        alert("D-1", "leak", 3, 30, cleared=True),
        alert("D-2", "burst", 1, 2),
    ]
    apply_alerts(db, stream)
    db.commit()
    meter_days = db.execute("SELECT count(*) FROM usage_daily").fetchone()[0]
    assert meter_days >= 3  # D-1 spans two days at least, D-2 one

    times, volume = series_from_db(db)("D-1", t(0), t(5))
    assert times.tolist() == [t(h).replace(tzinfo=None) for h in range(5)]
    assert volume == pytest.approx([0.05] * 5)

    labels = tmp_path / "labels.jsonl"
    write_labels(labels, [label("D-1", "leak", 4, 40)])
    out = tmp_path / "report"
    proc = meterwatch(
        "evaluate", "--labels", str(labels), "--database-url", db_url, "--report", str(out),
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    js = orjson.loads(proc.stdout)
    assert js["meter_days"] == meter_days
    assert js["types"]["leak"]["delay_median_h"] == 4.0
    assert js["types"]["burst"]["false_alerts"] == 1
    assert (out / "cases.png").read_bytes()[:8] == PNG
    assert "| leak | 1 | 1 | 1.000 | 1.000 | 1.000 | 4.000 | 4.000 |" in (
        (out / "report.md").read_text()
    )


def test_episode_json_names_the_store_columns():
    e = replace(ep("A", "leak", 0, 1), cleared_at=t(2))
    assert e.to_json() == {
        "meter_id": "A", "type": "leak", "severity": "warning",
        "started_at": "2026-10-01T00:00:00Z", "detected_at": "2026-10-01T01:00:00Z",
        "last_seen_at": "2026-10-01T01:00:00Z", "cleared_at": "2026-10-01T02:00:00Z",
    }  # fmt: skip
