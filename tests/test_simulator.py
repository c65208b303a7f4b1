"""The basic simulator: deterministic, well-formed series, lossless publishing to a real broker."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from meterwatch.codec import decode_uplink, uplink_filter
from meterwatch.domain import MeterKind
from meterwatch.embedded import start_broker
from meterwatch.mqtt import BrokerAddress, connect_properties, make_client
from simulators.fleet import FleetSeries, generate, make_fleet
from simulators.publish import meters_csv, publish_fleet
from storage.registry import parse_csv

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday; 08:00 in Shanghai


def _series(n: int = 100, days: float = 2, interval_min: int = 15, seed: int = 7) -> FleetSeries:
    fleet = make_fleet(n, seed=seed, interval_min=interval_min)
    return generate(fleet, start=START, days=days, interval_min=interval_min, seed=seed)


def test_same_seed_same_arrays_and_different_seed_different():
    a, b, c = _series(seed=1), _series(seed=1), _series(seed=2)
    assert make_fleet(50, seed=1) == make_fleet(50, seed=1)
    assert make_fleet(50, seed=1) != make_fleet(50, seed=2)
    for name in ("ts", "register_m3", "flow_lph", "battery_pct", "rssi_dbm"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.register_m3, c.register_m3)
    assert not np.array_equal(a.flow_lph, c.flow_lph)


def test_shape_and_timestamps():
    s = _series(n=100, days=2, interval_min=15)
    assert s.register_m3.shape == s.flow_lph.shape == (100, 192)
    assert s.n_readings == 100 * 2 * 24 * 60 // 15 == 19_200
    assert s.ts[0] == START.timestamp()
    assert set(np.diff(s.ts).tolist()) == {900}
    assert s.interval_s == 900
    assert s.meter_ids[0] == "WH-000001" and len(set(s.meter_ids)) == 100


def test_registers_cumulative_quantised_and_consistent_with_flow():
    fleet = make_fleet(200, seed=3)
    s = generate(fleet, start=START, days=3, interval_min=15, seed=3)
    litres = s.register_m3 * 1000
    assert np.allclose(litres, np.round(litres), rtol=0, atol=1e-6)
    assert (np.diff(s.register_m3, axis=1) >= 0).all()
    assert len({round(float(r), 3) for r in s.register_m3[:, 0]}) > 150  # varied initial registers
    moved = np.round(np.diff(litres, axis=1))
    assert np.array_equal(moved * 4, s.flow_lph[:, 1:])  # L per 15 min x 4 = L/h
    reg_max = np.array([m.register_max_m3 for m in fleet])
    assert (s.register_m3[:, -1] < reg_max).all()
    q4_lph = np.array([m.q3_m3h for m in fleet]) * 1250
    assert (s.flow_lph <= q4_lph[:, None] + 4).all()  # whole-litre rounding may add 4 L/h


def test_make_fleet_registry_and_csv_round_trip():
    fleet = make_fleet(300, seed=5, tenants=3, dmas=6, interval_min=60)
    kinds = Counter(m.kind for m in fleet)
    assert kinds[MeterKind.RESIDENTIAL] > kinds[MeterKind.COMMERCIAL] > kinds[MeterKind.INDUSTRIAL]
    assert kinds[MeterKind.INDUSTRIAL] > 0
    assert {m.tenant for m in fleet} == {"tenant-01", "tenant-02", "tenant-03"}
    assert len({m.dma for m in fleet}) == 6
    assert {m.timezone for m in fleet} == {"Asia/Shanghai"}
    assert {m.expected_interval_s for m in fleet} == {3600}
    tariffs = {m.kind: m.tariff_cny_per_m3 for m in fleet}
    assert tariffs == {
        MeterKind.RESIDENTIAL: 3.45, MeterKind.COMMERCIAL: 5.2, MeterKind.INDUSTRIAL: 4.6,
    }  # fmt: skip
    assert all(m.q3_m3h >= 2.5 and m.register_max_m3 >= 100_000 for m in fleet)
    text = meters_csv(fleet)
    assert text.splitlines()[0] == (
        "meter_id,tenant,dma,kind,dn_mm,q3_m3h,timezone,install_date,register_max_m3,"
        "tariff_cny_per_m3,parent_meter_id,expected_interval_s"
    )
    parsed, errors = parse_csv(text)
    assert errors == [] and parsed == fleet


def test_residential_nights_are_quiet_and_commercial_weekends_slow():
    fleet = make_fleet(400, seed=11)
    s = generate(fleet, start=START, days=7, interval_min=15, seed=11)
    local_hour = ((s.ts + 8 * 3600 - 450) // 3600) % 24  # the middle of each interval
    local_weekday = ((s.ts + 8 * 3600 - 450) // 86400 + 3) % 7
    kind = np.array([m.kind for m in fleet])
    res = s.flow_lph[kind == MeterKind.RESIDENTIAL]
    night = res[:, (local_hour >= 1) & (local_hour < 5)]
    peaks = res[:, np.isin(local_hour, [7, 8, 18, 19, 20])]
    assert (night == 0).mean() > 0.8
    assert peaks.mean() > 10 * night.mean() > 0
    com = s.flow_lph[kind == MeterKind.COMMERCIAL]
    office = (local_hour >= 9) & (local_hour < 17)
    assert (
        com[:, office & (local_weekday < 5)].mean()
        > 3 * com[:, office & (local_weekday >= 5)].mean()
    )


class _Subscriber:
    """A plain paho MQTT 5 subscriber that records every message it gets, QoS 1."""

    def __init__(self, url: str, topic: str, client_id: str, session_expiry_s: int = 0) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self._topic = topic
        addr = BrokerAddress.parse(url)
        self.client = make_client(addr, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(  # no clean start: Mosquitto 2.0 would not save the session
            addr.host, addr.port, clean_start=False,
            properties=connect_properties(session_expiry_s=session_expiry_s, receive_maximum=1000),
        )  # fmt: skip
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)  # again after a reconnect: harmless, and safe

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def _subscribed(url: str, prefix: str, session_expiry_s: int = 0) -> Iterator[_Subscriber]:
    sub = _Subscriber(url, uplink_filter(prefix), f"sub-{uuid.uuid4().hex[:10]}", session_expiry_s)
    try:
        yield sub
    finally:
        sub.close()


def _received(sub: _Subscriber, prefix: str) -> Counter[tuple[str, int, float, float | None]]:
    got: Counter[tuple[str, int, float, float | None]] = Counter()
    now = datetime.now(UTC)
    for topic, payload in list(sub.messages):
        decoded = decode_uplink(topic, payload, received_at=now, prefix=prefix)
        assert decoded.rejections == []
        for r in decoded.readings:
            got[(r.meter_id, int(r.ts.timestamp()), r.register_m3, r.flow_lph)] += 1
    return got


def _expected(s: FleetSeries) -> Counter[tuple[str, int, float, float | None]]:
    return Counter(
        (mid, int(t), float(reg), float(flow))
        for m, mid in enumerate(s.meter_ids)
        for t, reg, flow in zip(s.ts, s.register_m3[m], s.flow_lph[m], strict=True)
    )


def _wait_for(
    sub: _Subscriber, prefix: str, readings: int, timeout: float = 15.0, settle_s: float = 0.2
) -> None:
    """Wait for ``readings`` readings, then ``settle_s`` more for any duplicate to show up."""
    deadline = time.monotonic() + timeout
    while sum(_received(sub, prefix).values()) < readings and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)


@pytest.mark.parametrize("per_message", [1, 6])
def test_publish_delivers_every_reading_exactly_once(mqtt_url, topic_prefix, per_message):
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    fleet = make_fleet(5, seed=21, interval_min=60)
    s = generate(fleet, start=start, days=1, interval_min=60, seed=21)
    seen: list[tuple[int, int]] = []
    with _subscribed(mqtt_url, topic_prefix) as sub:
        res = publish_fleet(
            s, fleet, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix,
            readings_per_message=per_message, progress=lambda *p: seen.append(p),
        )  # fmt: skip
        _wait_for(sub, topic_prefix, 5 * 24)
    assert res.readings == 5 * 24 and res.refused == 0
    assert res.messages == 5 * 24 // per_message == len(sub.messages)
    assert _received(sub, topic_prefix) == _expected(s)
    assert seen[-1] == (120, 120) and len(seen) == 24 // per_message
    first = decode_uplink(*sub.messages[0], received_at=datetime.now(UTC), prefix=topic_prefix)
    assert first.readings[-1].battery_pct is not None and first.readings[-1].rssi_dbm is not None


def test_speed_paces_event_time(mqtt_url, topic_prefix):
    fleet = make_fleet(3, seed=4)
    s = generate(fleet, start=START, days=2 / 24, interval_min=15, seed=4)  # 8 steps, 105 min
    t0 = time.monotonic()
    res = publish_fleet(
        s, fleet, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix, speed=7200
    )
    wall = time.monotonic() - t0
    assert res.readings == 24
    assert 0.7 <= res.elapsed_s <= wall <= 3.0


def test_stop_ends_the_run_with_exact_counts(mqtt_url, topic_prefix):
    fleet = make_fleet(4, seed=9)
    s = generate(fleet, start=START, days=1, interval_min=15, seed=9)
    stop = threading.Event()
    res = publish_fleet(
        s, fleet, address=BrokerAddress.parse(mqtt_url), prefix=topic_prefix, speed=36000,
        progress=lambda done, total: stop.set() if done >= 3 * 4 else None, stop=stop,
    )  # fmt: skip
    assert res.readings == res.messages == 3 * 4


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs a mosquitto binary")
def test_broker_outage_mid_run_loses_nothing(tmp_path: Path, topic_prefix):
    broker = start_broker(tmp_path / "broker", prefer="mosquitto")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    fleet = make_fleet(20, seed=13)
    s = generate(fleet, start=start, days=1, interval_min=15, seed=13)  # 1,920 readings
    stopped = threading.Event()

    with _subscribed(broker.url, topic_prefix, session_expiry_s=300) as sub:

        def outage_halfway(done: int, total: int) -> None:
            if done >= total // 2 and not stopped.is_set():
                broker.stop()  # with publishes in flight; publishing goes on while it is down
                stopped.set()
                threading.Timer(0.5, broker.start).start()

        try:
            res = publish_fleet(
                s, fleet, address=BrokerAddress.parse(broker.url), prefix=topic_prefix,
                client_id=f"sim-{uuid.uuid4().hex[:8]}", progress=outage_halfway,
            )  # fmt: skip
            _wait_for(sub, topic_prefix, 1920)
        finally:
            broker.stop()
    assert stopped.is_set()
    assert res.readings == 1920 and res.messages == 1920
    got = _received(sub, topic_prefix)
    assert set(got) == set(_expected(s))  # at least once: a message resent on reconnect may repeat
