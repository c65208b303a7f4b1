"""Publish a simulated fleet over MQTT (contract v1), in event-time order, with QoS 1.

Delivery mirrors a well-behaved meter gateway: a persistent MQTT 5 session, a bounded window of
unacknowledged publishes (also kept within the broker's Receive Maximum), and no disconnect until
the broker has acknowledged every message. paho keeps unacknowledged QoS 1 messages, including
those published while the connection is down, and resends them after reconnecting, so a broker
restart mid-run loses nothing; duplicates that may follow are the receiver's to absorb, as the
contract already requires.

Building messages (``_steps``) does no I/O; the waiting lives in ``Window``, ``Pacer`` and
``publisher``, which replay (``simulators.replay``) shares.
"""

from __future__ import annotations

import csv
import io
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from meterwatch.codec import encode_uplink, uplink_topic
from meterwatch.domain import Meter
from meterwatch.mqtt import BrokerAddress, make_client, session_args
from simulators.fleet import FleetSeries

CSV_COLUMNS = (
    "meter_id", "tenant", "dma", "kind", "dn_mm", "q3_m3h", "timezone", "install_date",
    "register_max_m3", "tariff_cny_per_m3", "parent_meter_id", "expected_interval_s",
)  # fmt: skip
SESSION_EXPIRY_S = 3600
CONNECT_TIMEOUT_S = 30.0


class PublishResult(NamedTuple):
    readings: int  # readings in messages the broker acknowledged
    messages: int
    elapsed_s: float
    refused: int = 0  # messages the broker refused in its PUBACK (MQTT 5 reason code >= 0x80)


class Outgoing(NamedTuple):
    topic: str
    payload: bytes
    readings: int


def meters_csv(meters: Sequence[Meter]) -> str:
    """The registry in the CSV format of ``meterwatch meters import FILE``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in meters:
        writer.writerow(
            [
                m.meter_id, m.tenant, m.dma or "", m.kind.value, m.dn_mm, m.q3_m3h, m.timezone,
                m.install_date.isoformat() if m.install_date else "", m.register_max_m3,
                m.tariff_cny_per_m3, m.parent_meter_id or "", m.expected_interval_s,
            ]
        )  # fmt: skip
    return out.getvalue()


def _steps(
    series: FleetSeries, meters: Sequence[Meter], prefix: str, per_message: int
) -> Iterator[tuple[int, list[Outgoing]]]:
    """(upload time, every meter's message) per step; a message uploads its last reading's time.

    Battery and signal ride along with the first upload of each local day, as meters that report
    status once a day do.
    """
    n_steps = series.ts.size
    starts = range(0, n_steps, per_message)
    upload_idx = np.minimum(np.arange(0, n_steps, per_message) + per_message, n_steps) - 1
    local_times: dict[str, list[datetime]] = {}
    new_day: dict[str, list[bool]] = {}
    for tz in {m.timezone for m in meters}:
        zone = ZoneInfo(tz)
        local_times[tz] = [datetime.fromtimestamp(int(t), zone) for t in series.ts]
        days = [local_times[tz][i].date() for i in upload_idx]
        new_day[tz] = [j == 0 or days[j] != days[j - 1] for j in range(len(days))]
    topics = [uplink_topic(m.meter_id, prefix) for m in meters]
    battery = series.battery_pct.tolist()
    rssi = series.rssi_dbm.tolist()
    for j, a in enumerate(starts):
        b = min(a + per_message, n_steps)
        registers = series.register_m3[:, a:b].tolist()
        flows = series.flow_lph[:, a:b].tolist()
        messages = []
        for m, meter in enumerate(meters):
            status = new_day[meter.timezone][j]
            payload = encode_uplink(
                meter.meter_id,
                zip(local_times[meter.timezone][a:b], registers[m], flows[m], strict=True),
                battery_pct=battery[m] if status else None,
                rssi_dbm=rssi[m] if status else None,
            )
            messages.append(Outgoing(topics[m], payload, b - a))
        yield int(series.ts[b - 1]), messages


class Window:
    """Unacknowledged publishes, oldest first, so a slow or absent broker slows the publisher
    down instead of growing paho's queue without limit."""

    def __init__(self, client: mqtt.Client, size: int) -> None:
        self.client = client
        self.size = size
        self.readings = 0
        self.messages = 0
        self.refused = 0
        self._pending: deque[tuple[mqtt.MQTTMessageInfo, int]] = deque()
        self._refused_mids: set[int] = set()

    def on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        # Runs in paho's thread before the message's info is marked published, so the verdict is
        # in place by the time wait_for_publish() returns in ours.
        if reason.is_failure:
            self._refused_mids.add(mid)

    def publish(self, message: Outgoing) -> None:
        while len(self._pending) >= self.size:
            self._settle_oldest()
        info = self.client.publish(message.topic, message.payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # Kept by paho and sent after reconnecting; without this wait_for_publish() would
            # raise at once instead of waiting for that PUBACK.
            info.rc = mqtt.MQTT_ERR_SUCCESS
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        self._pending.append((info, message.readings))

    def _settle_oldest(self) -> None:
        info, readings = self._pending[0]
        info.wait_for_publish()
        self._pending.popleft()
        if info.mid in self._refused_mids:
            self._refused_mids.discard(info.mid)
            self.refused += 1
        else:
            self.readings += readings
            self.messages += 1

    def drain(self) -> None:
        while self._pending:
            self._settle_oldest()


def _connect(
    address: BrokerAddress, client_id: str, max_inflight: int
) -> tuple[mqtt.Client, Window]:
    """Connect and wait for CONNACK, so a wrong address or refused login fails fast."""
    client = make_client(address, client_id or f"meterwatch-sim-{uuid.uuid4().hex[:12]}")
    window = Window(client, max_inflight)
    client.max_inflight_messages_set(max_inflight)
    # The window never lets more than max_inflight messages be unacknowledged, so a full queue
    # here would be a bug; paho then reports MQTT_ERR_QUEUE_SIZE and publish() raises.
    client.max_queued_messages_set(max_inflight)
    connected = threading.Event()
    refusal: list[ReasonCode] = []

    def on_connect(
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            refusal.append(reason)
        else:
            # MQTT 5 flow control: never more unacknowledged QoS 1 publishes than the broker
            # says it accepts (Mosquitto advertises 20 by default).
            window.size = min(max_inflight, getattr(props, "ReceiveMaximum", 65535))
        connected.set()

    client.on_connect = on_connect
    client.on_publish = window.on_publish
    client.connect(
        address.host,
        address.port,
        keepalive=30,
        **session_args(address, session_expiry_s=SESSION_EXPIRY_S, receive_maximum=max_inflight),
    )
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S) or refusal:
        client.disconnect()
        client.loop_stop()
        why = refusal[0] if refusal else f"no CONNACK within {CONNECT_TIMEOUT_S:g}s"
        raise ConnectionError(f"MQTT broker at {address.url()} refused the connection: {why}")
    return client, window


class Pacer:
    """Holds a run back so event time passes ``speed`` times faster than wall time, and so that
    at most ``max_rate`` messages a second go out.

    The first event sets the origin; with neither limit it never waits. The schedule is absolute,
    so a late wake-up is made up by the next messages instead of slowing the run, but the rate
    cap lets at most ``RATE_SLACK_S`` of lost time be made up at once, so a pause (a gap in event
    time) is not followed by a burst. Waiting on ``stop`` lets a stop request end a long wait.

    A rate cap matters because MQTT has no back-pressure from subscribers to publishers: a broker
    whose per-client queue is small (Mosquitto's default ``max_queued_messages`` is 1000) drops
    what a slower consumer cannot take.
    """

    RATE_SLACK_S = 0.1

    def __init__(
        self, speed: float | None, stop: threading.Event, max_rate: float | None = None
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        if max_rate is not None and max_rate <= 0:
            raise ValueError("max_rate must be positive (or None for no limit)")
        self.speed = speed
        self.max_rate = max_rate
        self.stop = stop
        self._wall0 = time.monotonic()
        self._event0: float | None = None
        self._free = self._wall0  # when the rate cap next lets a message go

    def wait(self, event_t: float) -> bool:
        """Wait until the next message (of event time ``event_t``) is due; True if it waited."""
        due = self._wall0
        if self.speed is not None:
            if self._event0 is None:
                self._event0 = event_t
            due += (event_t - self._event0) / self.speed
        if self.max_rate is not None:
            due = max(due, self._free)
        now = time.monotonic()
        if due > now:
            self.stop.wait(due - now)
        if self.max_rate is not None:
            self._free = max(due, time.monotonic() - self.RATE_SLACK_S) + 1.0 / self.max_rate
        return due > now


@contextmanager
def publisher(address: BrokerAddress, client_id: str, max_inflight: int) -> Iterator[Window]:
    """A connected QoS 1 publisher; leaving the block waits for every PUBACK, then disconnects.

    On an error the connection is dropped at once: paho's unacknowledged messages are lost with
    it, but the broker keeps the session, so nothing the broker acknowledged is lost.
    """
    if not 1 <= max_inflight <= 65535:
        raise ValueError("1 <= max_inflight <= 65535 required")
    client, window = _connect(address, client_id, max_inflight)
    try:
        yield window
        window.drain()
        # Every message is acknowledged: nothing is left for the broker to keep for us.
        if address.protocol == "5":
            done = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            done.SessionExpiryInterval = 0
            client.disconnect(properties=done)
        else:
            client.disconnect()
    except BaseException:
        client.disconnect()
        raise
    finally:
        client.loop_stop()


def publish_fleet(
    series: FleetSeries,
    meters: Sequence[Meter],
    *,
    address: BrokerAddress,
    prefix: str = "",
    speed: float | None = None,
    readings_per_message: int = 1,
    client_id: str = "",
    max_inflight: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> PublishResult:
    """Publish every reading of ``series``: all meters' step k before anybody's step k+1.

    ``speed=X`` plays event time X times faster than real time (3600: a simulated hour per
    second); ``None`` publishes as fast as the broker acknowledges. ``readings_per_message``
    batches consecutive readings of one meter, as NB-IoT meters upload frozen values. ``progress``
    gets (readings published, total) after each step; setting ``stop`` ends the run early. Either
    way the call returns only once every published message is acknowledged.
    """
    if tuple(m.meter_id for m in meters) != series.meter_ids:
        raise ValueError("meters must be the series' meters, in the same order")
    if readings_per_message < 1 or not 1 <= max_inflight <= 65535:
        raise ValueError("readings_per_message >= 1 and 1 <= max_inflight <= 65535 required")
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (or None for as fast as possible)")

    stop = stop if stop is not None else threading.Event()
    total = series.n_readings
    sent = 0
    with publisher(address, client_id, max_inflight) as window:
        t0 = time.monotonic()
        pacer = Pacer(speed, stop)
        for event_t, messages in _steps(series, meters, prefix, readings_per_message):
            pacer.wait(event_t)
            for message in messages:
                if stop.is_set():
                    break
                window.publish(message)
                sent += message.readings
            if stop.is_set():
                break
            if progress is not None:
                progress(sent, total)
        window.drain()
        elapsed = time.monotonic() - t0
    return PublishResult(window.readings, window.messages, elapsed, window.refused)
