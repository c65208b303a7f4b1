"""The demo command end to end, as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import orjson
import pytest

BOUNDED = ["--interval-min", "15", "--speed", "max", "--exit", "--json", "--api-port", "0"]


def run_demo(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "meterwatch", "demo", *args, *BOUNDED],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict)
    return summary


def check(summary: dict, expected: int, alerts: dict[str, int] | None = None) -> None:
    assert summary["readings_published"] == expected
    assert summary["readings_stored"] == expected
    assert summary["dead_letters"] == 0
    # The demo's last meter leaks from a quarter of the way in: a day later it is an alert.
    assert summary["alerts"] == (alerts or {})
    # Each alert was announced once on the dashboard's live stream (the default routing).
    assert summary["notifications"] == ({"sent": sum(alerts.values())} if alerts else {})
    assert summary["api_check"]["healthz"] == "ok"
    assert summary["api_check"]["usage_m3"] == pytest.approx(
        summary["api_check"]["register_delta_m3"], abs=1e-6
    )


def test_demo_with_embedded_services():
    summary = run_demo("--meters", "20", "--days", "2")
    check(summary, 20 * 192, alerts={"leak": 1})
    assert summary["database"] == "embedded"
    assert summary["broker"] == ("mosquitto" if shutil.which("mosquitto") else "amqtt")
    assert summary["elapsed_s"] < 60


def test_demo_falls_back_to_amqtt_without_mosquitto():
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep)
        if not (shutil.which("mosquitto", path=p))
    )  # fmt: skip
    summary = run_demo("--meters", "5", "--days", "0.5", env={"PATH": path})
    check(summary, 5 * 48)
    assert summary["broker"] == "amqtt"


def test_demo_against_external_services(db_url, mqtt_url, topic_prefix):
    summary = run_demo(
        "--meters", "10", "--days", "1", "--readings-per-message", "4",
        "--database-url", db_url, "--mqtt-url", mqtt_url,
        env={"METERWATCH_TOPIC_PREFIX": topic_prefix, "METERWATCH_CLIENT_ID": topic_prefix[:-1]},
    )  # fmt: skip
    check(summary, 10 * 96)
    assert summary["messages_published"] == 10 * 96 // 4
    assert (summary["database"], summary["broker"]) == ("external", "external")
