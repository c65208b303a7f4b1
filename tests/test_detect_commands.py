"""``meterwatch detect``, ``evaluate`` and ``backtest`` as operators run them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from meterwatch.domain import Meter
from storage.registry import upsert_meters
from storage.writer import Message, Writer
from tests.test_cli import meterwatch

T0 = datetime(2026, 4, 6, tzinfo=UTC)  # a Monday


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small") / "small.parquet"
    proc = meterwatch("simulate", "--scenario", "small", "--out", str(out), "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    return out


def test_detect_then_evaluate_a_scenario(small: Path, tmp_path: Path) -> None:
    stream = tmp_path / "alerts.jsonl"
    proc = meterwatch("detect", str(small), "--out", str(stream), "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)
    assert summary["readings"] > 600_000 and summary["meters"] == 403
    assert summary["raised_by_type"]["leak"] > 0
    labels = small.with_name("small.labels.jsonl")
    report = tmp_path / "report"
    proc = meterwatch(
        "evaluate", "--labels", str(labels), "--alerts", str(stream),
        "--recording", str(small), "--report", str(report), "--json", timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scores = orjson.loads(proc.stdout)
    leak = scores["types"]["leak"]
    assert leak["recall"] >= 0.8 and leak["precision"] >= 0.8
    assert scores["types"]["reverse_flow"]["recall"] == 1.0
    assert (report / "cases.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| leak |" in (report / "report.md").read_text()


def _write(conn: psycopg.Connection[Any], meter_id: str, litres_per_hour: list[float]) -> None:
    """Hourly readings of one meter, one message a day."""
    register, rows = 100.0, []
    for k, litres in enumerate(litres_per_hour):
        rows.append((T0 + timedelta(hours=k), round(register, 3), None))
        register += litres / 1000
    writer = Writer(conn)
    for i in range(0, len(rows), 24):
        topic = uplink_topic(meter_id)
        payload = encode_uplink(meter_id, rows[i : i + 24])
        at = rows[min(i + 23, len(rows) - 1)][0]
        writer.write([Message(topic, payload, at, decode_uplink(topic, payload, received_at=at))])
    conn.commit()


def test_backtest_lists_alerts_that_other_thresholds_would_drop(
    db_url: str, tmp_path: Path
) -> None:
    day = [0.0] * 6 + [30.0, 20.0, 5.0] + [2.0] * 9 + [40.0, 30.0, 10.0] + [0.0] * 3
    with psycopg.connect(db_url) as conn:
        upsert_meters(conn, [Meter("BT-1"), Meter("BT-2")])
        conn.commit()
        _write(conn, "BT-1", [x + (12.0 if k >= 72 else 0.0) for k, x in enumerate(day * 8)])
        _write(conn, "BT-2", day * 8)
    proposed = tmp_path / "proposed.toml"
    proposed.write_text("[defaults]\nleak_min_lph = 20.0\n")
    proc = meterwatch("backtest", "--thresholds", str(proposed), "--database-url", db_url,
                      "--days", "30", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = orjson.loads(proc.stdout)
    assert out["episodes_current"].get("leak") == 1
    assert out["vanish_by_type"] == {"leak": 1} and out["appear_by_type"] == {}
    assert out["vanish"][0]["meter_id"] == "BT-1"
    with psycopg.connect(db_url) as conn:  # live alerts are not touched
        row = conn.execute("SELECT count(*) FROM alerts").fetchone()
    assert row is not None and row[0] == 0
