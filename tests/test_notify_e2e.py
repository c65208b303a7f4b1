"""Alerts reach people, end to end: a replayed fleet over the real broker, ingest with detectors
and the notifier, the outbox, the dispatcher, and real local receivers for every channel."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest

from detectors.alert import Alert, Severity
from detectors.config import FleetSettings, ThresholdBook
from ingest.detection import Detection, DetectionConfig
from meterwatch.domain import Meter
from meterwatch.mqtt import BrokerAddress
from notify.channels import ChannelContext
from notify.config import NotifyConfig
from notify.dispatcher import DispatchConfig, Dispatcher
from notify.scheduler import Notifier
from notify.service import build_channels
from simulators.fleet import FleetSeries, generate, make_fleet
from simulators.publish import publish_fleet
from storage.registry import upsert_meters
from tests.helpers import FakeClock, count, queue_alerts, running_ingest, wait_until
from tests.receivers import HttpReceiver, MqttReceiver, SmtpReceiver
from tests.test_ingest_detection import ingest_config

SECRET = "s3cret-robot-key"
T0 = datetime(2026, 10, 13, tzinfo=UTC) - timedelta(hours=8)  # a Tuesday, 00:00 in Shanghai
DAYS = 3
BURST_STEP = (2 * 24 + 10) * 4  # day 3, 10:00 local, in 15-minute steps
BURST_STEPS = 4  # an hour at the burst flow
STAFF_CHANNELS = ("ops-webhook", "duty-wecom", "duty-dingtalk", "duty-feishu", "duty-email",
                  "alert-topic")  # fmt: skip


@dataclasses.dataclass
class Receivers:
    webhook: HttpReceiver
    wecom: HttpReceiver
    dingtalk: HttpReceiver
    feishu: HttpReceiver
    supervisor: HttpReceiver
    smtp: SmtpReceiver
    mqtt: MqttReceiver


@pytest.fixture
def receivers(mqtt_url: str, topic_prefix: str) -> Iterator[Receivers]:
    r = Receivers(
        webhook=HttpReceiver("webhook", secret=SECRET).start(),
        wecom=HttpReceiver("wecom").start(),
        dingtalk=HttpReceiver("dingtalk", secret=SECRET).start(),
        feishu=HttpReceiver("feishu", secret=SECRET).start(),
        supervisor=HttpReceiver("webhook", secret=SECRET).start(),
        smtp=SmtpReceiver().start(),
        mqtt=MqttReceiver(mqtt_url, f"{topic_prefix}alerts/#").start(),
    )
    try:
        yield r
    finally:
        for rcv in (r.webhook, r.wecom, r.dingtalk, r.feishu, r.supervisor, r.smtp, r.mqtt):
            rcv.stop()


def channel_specs(r: Receivers, mqtt_url: str) -> dict[str, dict[str, Any]]:
    return {
        "ops-webhook": {"kind": "webhook", "url": r.webhook.url, "secret": SECRET},
        "duty-wecom": {"kind": "wecom", "url": r.wecom.url},
        "duty-dingtalk": {"kind": "dingtalk", "url": r.dingtalk.url, "secret": SECRET},
        "duty-feishu": {"kind": "feishu", "url": r.feishu.url, "secret": SECRET},
        "duty-email": {
            "kind": "email", "host": r.smtp.host, "port": r.smtp.port,
            "sender": "alerts@water.example", "to": ["duty@water.example"],
        },
        "alert-topic": {"kind": "mqtt", "url": mqtt_url},
        "supervisor": {"kind": "webhook", "url": r.supervisor.url, "secret": SECRET},
    }  # fmt: skip


def notify_config(r: Receivers, mqtt_url: str) -> NotifyConfig:
    return NotifyConfig.model_validate(
        {
            "channels": channel_specs(r, mqtt_url),
            "rules": [
                {"name": "duty", "audience": "staff", "types": ["burst"],
                 "triggers": ["opened", "severity"], "channels": list(STAFF_CHANNELS)},
                {"name": "supervisor", "audience": "staff", "level": 1,
                 "triggers": ["escalated"], "channels": ["supervisor"]},
            ],
        }
    )  # fmt: skip


def dispatcher(
    db_url: str, config: NotifyConfig, mqtt_url: str, prefix: str, **kw: Any
) -> Dispatcher:
    context = ChannelContext(database_url=db_url, mqtt_url=mqtt_url, topic_prefix=prefix)
    channels = build_channels(config, context)
    return Dispatcher(db_url, channels, DispatchConfig(backoff_s=5, backoff_max_s=60), **kw)


# --- the replayed fleet ---------------------------------------------------------------------


def fleet_with_a_burst() -> tuple[list[Meter], FleetSeries]:
    meters = make_fleet(8, seed=5, mix={"residential": 1.0})
    series = generate(meters, start=T0, days=DAYS, interval_min=15, seed=5)
    q3 = meters[0].q3_m3h
    burst = np.zeros(series.ts.size)
    burst[BURST_STEP + 1 : BURST_STEP + 1 + BURST_STEPS] = q3 * 0.25  # m3 per 15 min at Q3
    series.register_m3[0] += np.cumsum(burst)
    series.flow_lph[0, BURST_STEP + 1 : BURST_STEP + 1 + BURST_STEPS] += q3 * 1000.0
    return meters, series


def part(series: FleetSeries, lo: int, hi: int) -> FleetSeries:
    return dataclasses.replace(
        series,
        ts=series.ts[lo:hi],
        register_m3=series.register_m3[:, lo:hi],
        flow_lph=series.flow_lph[:, lo:hi],
    )


def replay(
    ingest: Any, series: FleetSeries, meters: list[Meter], mqtt_url: str, prefix: str
) -> None:
    before = ingest.stats.readings
    published = publish_fleet(
        series, meters, address=BrokerAddress.parse(mqtt_url), prefix=prefix,
        client_id=f"sim-{prefix.replace('/', '-')}"[:60],
    )  # fmt: skip
    assert wait_until(lambda: ingest.stats.readings >= before + published.readings, 60)
    # The batch's alerts and notifier work are committed before its messages are acknowledged.
    assert wait_until(lambda: not ingest.detection.pending, 10)


def detection(db_url: str, config: NotifyConfig) -> Detection:
    return Detection(
        DetectionConfig(db_url, ThresholdBook(), FleetSettings(), checkpoint_interval_s=3600),
        notifier=Notifier(config, secret=SECRET),
    )


def outbox(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT channel, trigger, level, status, attempts FROM outbox ORDER BY id"
        ).fetchall()


# --- must show: a burst reaches every channel once; escalation in event time ------------------


def test_a_replayed_burst_reaches_every_channel_exactly_once_and_escalates_in_event_time(
    db_url: str, mqtt_url: str, topic_prefix: str, receivers: Receivers
) -> None:
    r = receivers
    config = notify_config(r, mqtt_url)
    meters, series = fleet_with_a_burst()
    with psycopg.connect(db_url) as conn:
        upsert_meters(conn, meters)
    icfg = ingest_config(db_url, mqtt_url, topic_prefix)
    with contextlib.ExitStack() as stack:
        ingest = stack.enter_context(running_ingest(icfg, detection(db_url, config)))
        # Up to a quarter of an hour after the burst is seen: the 30-minute SLA is not over.
        replay(ingest, part(series, 0, BURST_STEP + 4), meters, mqtt_url, topic_prefix)
        with psycopg.connect(db_url) as conn:
            (alert_id, detected_at, status), *others = conn.execute(
                "SELECT id, detected_at, status FROM alerts WHERE type = 'burst'"
            ).fetchall()
        assert others == [] and status == "open"
        assert detected_at == datetime.fromtimestamp(int(series.ts[BURST_STEP + 2]), UTC), (
            "two readings (30 min) at the burst flow"
        )
        assert sorted(c for c, *_ in outbox(db_url)) == sorted(STAFF_CHANNELS)

        d = dispatcher(db_url, config, mqtt_url, topic_prefix)
        loop = stack.enter_context(asyncio.Runner())  # channels keep their connections
        stats = loop.run(d.run_once())
        assert (stats.sent, stats.failed, stats.dead) == (6, 0, 0)

        for rcv in (r.webhook, r.wecom, r.dingtalk, r.feishu):
            (req,) = rcv.wait_for(1)
            assert req.signature_valid in (True, None) and req.status == 200
        (hook,) = r.webhook.requests
        assert hook.json["trigger"] == "opened" and hook.json["alert"]["type"] == "burst"
        assert hook.json["alert"]["meter_id"] == meters[0].meter_id
        assert hook.headers["idempotency-key"] == hook.json["key"]
        assert r.webhook.requests[0].signature_valid is True
        assert r.dingtalk.requests[0].signature_valid is True
        assert r.feishu.requests[0].signature_valid is True
        assert r.wecom.requests[0].json["msgtype"] == "markdown"
        assert meters[0].meter_id in r.wecom.requests[0].json["markdown"]["content"]
        assert r.dingtalk.requests[0].json["msgtype"] == "markdown"
        assert r.feishu.requests[0].json["msg_type"] == "post"
        (mail,) = r.smtp.wait_for(1)
        assert meters[0].meter_id in str(mail["Subject"]) + mail.get_body().get_content()
        (msg,) = r.mqtt.wait_for(1)
        tenant = meters[0].tenant
        assert msg.topic == f"{topic_prefix}alerts/{tenant}/{meters[0].meter_id}"
        assert msg.json["type"] == "burst" and msg.json["id"] == alert_id

        # Nothing goes twice, and nobody was escalated to yet.
        again = loop.run(d.run_once())
        assert (again.sent, again.failed) == (0, 0)
        assert r.supervisor.requests == []
        assert [t for _, t, *_ in outbox(db_url)].count("escalated") == 0

        # The rest of the day: the alert is still not acknowledged 30 event-minutes after it was
        # detected, so it escalates to the supervisor, at that event time.
        replay(ingest, part(series, BURST_STEP + 4, series.ts.size), meters, mqtt_url,
               topic_prefix)  # fmt: skip
        stats = loop.run(d.run_once())
        loop.run(d.aclose())
    assert stats.sent == 1
    (esc,) = r.supervisor.wait_for(1)
    assert esc.json["trigger"] == "escalated" and esc.json["alert"]["id"] == alert_id
    with psycopg.connect(db_url) as conn:
        events = conn.execute(
            "SELECT kind, event_time, detail FROM alert_events WHERE alert_id = %s ORDER BY id",
            (alert_id,),
        ).fetchall()
        level = conn.execute("SELECT escalation_level FROM alerts WHERE id = %s", (alert_id,))
        assert level.fetchone() == (1,)
    escalated = [(t, d) for k, t, d in events if k == "escalated"]
    assert escalated == [(detected_at + timedelta(minutes=30), {"level": 1})]
    for rcv in (r.webhook, r.wecom, r.dingtalk, r.feishu):
        assert len(rcv.requests) == 1, "the escalation went to the supervisor only"
    assert len(r.smtp.messages) == 1 and len(r.mqtt.messages) == 1


# --- a receiver down for ten minutes --------------------------------------------------------


def raise_bursts(db_url: str, config: NotifyConfig, meter_ids: list[str]) -> list[int]:
    """Burst alerts stored and their notifications queued, as ingest would in one batch."""
    t = datetime(2026, 11, 20, 2, tzinfo=UTC)
    bursts = [Alert(m, "burst", Severity.CRITICAL, t, t, {"flow_lph": 900.0}) for m in meter_ids]
    return queue_alerts(db_url, config, bursts, secret=SECRET, tenant="acme")


def test_a_receiver_down_for_ten_minutes_gets_everything_once_and_delays_nobody(
    db_url: str, mqtt_url: str, topic_prefix: str, receivers: Receivers
) -> None:
    r = receivers
    config = notify_config(r, mqtt_url)
    ids = raise_bursts(db_url, config, [f"WH-D{i}" for i in range(5)])
    r.webhook.stop()  # connection refused from now on
    clock = FakeClock(datetime.now(UTC))
    start = clock.now
    d = dispatcher(db_url, config, mqtt_url, topic_prefix, clock=clock)

    loop = asyncio.Runner()
    first = loop.run(d.run_once())
    # Every other channel delivered all five at once; the webhook's first try failed and the
    # rest of its rows were put back without a try each.
    assert (first.sent, first.failed, first.deferred) == (5 * 5, 1, 4)
    for rcv in (r.wecom, r.dingtalk, r.feishu):
        assert len(rcv.requests) == 5
    assert len(r.smtp.wait_for(5)) == 5 and len(r.mqtt.wait_for(5)) == 5

    async def run_for(minutes: float, step_s: float = 15.0) -> None:
        end = clock.now + timedelta(minutes=minutes)
        while clock.now < end:
            clock.now += timedelta(seconds=step_s)
            await d.run_once()

    with loop:
        loop.run(run_for(10))
        assert r.webhook.requests == []
        r.webhook.start()  # back on the same port
        loop.run(run_for(6))
        loop.run(d.aclose())

    keys = r.webhook.keys()
    assert len(keys) == 5 and len(set(keys)) == 5, "each notification arrived, none twice"
    assert {req.json["alert"]["id"] for req in r.webhook.requests} == set(ids)
    assert all(req.signature_valid for req in r.webhook.requests)
    with psycopg.connect(db_url) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM outbox GROUP BY 1").fetchall()
        tries = conn.execute(
            """SELECT d.at, d.ok FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
               WHERE o.channel = 'ops-webhook' ORDER BY d.id"""
        ).fetchall()
        others = conn.execute(
            """SELECT max(d.at) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
               WHERE o.channel <> 'ops-webhook'"""
        ).fetchone()
    assert statuses == [("sent", 30)]
    assert others == (start,), "the other channels were not held up by the dead one"
    failures = [at for at, ok in tries if not ok]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(failures)]
    assert len(failures) >= 6 and gaps[:4] == sorted(gaps[:4]), "backoff grows between tries"
    assert all(g <= 60 * 1.2 + 15 for g in gaps), "and is capped"
    delivered = [at for at, ok in tries if ok]
    assert len(delivered) == 5
    assert min(delivered) - start >= timedelta(minutes=10)
    assert max(delivered) - start <= timedelta(minutes=10, seconds=60 * 1.2 + 15)


# --- a notifier killed between commit and send -------------------------------------------------


def _toml(config: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, spec in config["channels"].items():
        lines.append(f'[channels."{name}"]')
        lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in spec.items()]
    for rule in config["rules"]:
        lines.append("[[rules]]")
        lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


def test_a_notification_committed_before_a_crash_goes_out_after_restart(
    db_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    with HttpReceiver("webhook", secret=SECRET) as hook, contextlib.ExitStack() as stack:
        spec = {
            "channels": {"ops-webhook": {"kind": "webhook", "url": hook.url, "secret": SECRET}},
            "rules": [{"name": "duty", "audience": "staff", "channels": ["ops-webhook"]}],
        }
        path = tmp_path / "notify.toml"
        path.write_text(_toml(spec), encoding="utf-8")
        config = NotifyConfig.load(path)
        # The alert and its outbox row are committed; no notifier is running.
        (alert_id,) = raise_bursts(db_url, config, ["WH-K1"])
        assert count(db_url, "SELECT count(*) FROM outbox WHERE status = 'pending'") == 1

        # The receiver hangs, so the notifier is killed in the middle of the send.
        hook.answer(200, {}, delay_s=30)
        env = {
            **os.environ, "METERWATCH_DATABASE_URL": db_url, "METERWATCH_MQTT_URL": mqtt_url,
            "METERWATCH_NOTIFY_CONFIG": str(path), "METERWATCH_NOTIFY_LEASE_S": "2",
        }  # fmt: skip
        main = "import sys; from meterwatch.cli import main; sys.exit(main())"
        cmd = [sys.executable, "-c", main, "notify"]
        log = (tmp_path / "notify.log").open("wb")
        stack.callback(log.close)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            assert wait_until(lambda: len(hook.requests) >= 1 or proc.poll() is not None, 30), (
                "the notifier never tried"
            )
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert count(db_url, "SELECT count(*) FROM outbox WHERE status = 'pending'") == 1

        hook.answer()  # healthy again
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            assert wait_until(
                lambda: count(db_url, "SELECT count(*) FROM outbox WHERE status = 'sent'") == 1,
                30,
            ), (tmp_path / "notify.log").read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        assert proc.returncode == 0
    keys = hook.keys()
    # The killed send reached the receiver but was never recorded as sent, so it went again:
    # at least once, with the same key for the receiver to drop the repeat.
    assert len(keys) == 2 and len(set(keys)) == 1
    assert hook.requests[-1].json["alert"]["id"] == alert_id
