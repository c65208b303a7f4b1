"""The MQTT consumer: QoS 1, persistent session, acknowledgement only after the batch commits.

paho-mqtt's network thread only queues what arrives. The caller's thread decodes, batches by size
and time, writes one transaction per batch and then sends the PUBACKs in arrival order. A message
is therefore acknowledged only once its readings (or its dead letter) are durable; if the process
or the broker dies first, the broker redelivers it and the idempotent write stores it once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from ingest.detection import Detection
from meterwatch.codec import STORAGE_ERROR, Decoded, Rejection, decode_uplink, uplink_filter
from meterwatch.mqtt import BrokerAddress, make_client, session_args
from storage.db import connect
from storage.writer import BatchResult, Message, Writer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    database_url: str
    broker: BrokerAddress
    prefix: str = ""
    client_id: str = "meterwatch-ingest"
    shared_group: str = ""
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 20000
    batch_readings: int = 5000
    batch_interval_s: float = 0.25
    max_payload_bytes: int = 256 * 1024
    max_clock_skew_s: float = 86400
    auto_register: bool = True
    default_register_max_m3: float = 100000.0
    default_q3_m3h: float = 2.5
    keepalive_s: int = 30
    retention_days: int = 7300
    maintenance_interval_s: float = 3600.0


@dataclass(slots=True)
class IngestStats(BatchResult):
    batches: int = 0
    db_retries: int = 0
    connects: int = 0

    def add(self, res: BatchResult) -> None:
        self.merge(res)
        self.batches += 1


class _Inbound:
    __slots__ = ("generation", "message", "mid", "qos")

    def __init__(self, generation: int, mid: int, qos: int, message: Message) -> None:
        self.generation = generation
        self.mid = mid
        self.qos = qos
        self.message = message


class Ingest:
    def __init__(
        self,
        config: IngestConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_batch: Callable[[BatchResult], None] | None = None,
        detection: Detection | None = None,
    ) -> None:
        self.config = config
        self.detection = detection
        self.clock = clock
        self.on_batch = on_batch
        self.stats = IngestStats()
        self.ready = threading.Event()  # subscribed: publishing now cannot be missed
        self._inbox: queue.SimpleQueue[_Inbound] = queue.SimpleQueue()
        self._generation = 0
        self._lock = threading.Lock()
        self._client = self._make_client()
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: Writer | None = None
        self._next_maintenance = 0.0
        self._stopping = False

    # -- MQTT side (paho's network thread) ---------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = make_client(c.broker, client_id=c.client_id)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        with self._lock:
            self._generation += 1
        self.stats.connects += 1
        log.info(
            "connected to %s (session present: %s)", self.config.broker.url(), flags.session_present
        )
        topic = uplink_filter(self.config.prefix, self.config.shared_group)
        client.subscribe(topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("subscription refused: %s", codes)
            return
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.ready.clear()
        if self._stopping:
            log.info("disconnected from broker")
        else:
            log.warning("disconnected from broker (%s); reconnecting", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received_at = self.clock()
        payload = bytes(msg.payload)
        decoded = decode_uplink(
            msg.topic,
            payload,
            received_at=received_at,
            prefix=self.config.prefix,
            max_bytes=self.config.max_payload_bytes,
            max_skew_s=self.config.max_clock_skew_s,
        )
        message = Message(msg.topic, payload, received_at, decoded)
        self._inbox.put(_Inbound(self._generation, msg.mid, msg.qos, message))

    # -- database side (the caller's thread) --------------------------------------------------

    def _ensure_writer(self) -> Writer:
        if self._writer is None:
            # Autocommit: each batch is one explicit transaction, and nothing else (maintenance,
            # metadata reads) can leave an implicit one open around the batches.
            self._conn = connect(self.config.database_url, autocommit=True)
            self._writer = Writer(
                self._conn,
                auto_register=self.config.auto_register,
                default_register_max_m3=self.config.default_register_max_m3,
                default_q3_m3h=self.config.default_q3_m3h,
            )
        return self._writer

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._writer = None

    def _commit(self, batch: list[_Inbound], stop: threading.Event) -> bool:
        """Write the batch and acknowledge it; False if given up because of ``stop``.

        While the database is unreachable the batch is retried with backoff (nothing is acked,
        so nothing is lost). A batch the database rejects for its content is split until the
        offending message is alone; that one becomes a ``storage_error`` dead letter.
        """
        delay = 0.5
        res: BatchResult | None = None
        while True:
            try:
                if res is None:
                    res = self._write([b.message for b in batch])
                    if self.detection is not None:
                        self.detection.process([b.message for b in batch])
                if self.detection is not None:
                    self.detection.flush()
                break
            except psycopg.OperationalError as e:
                self.stats.db_retries += 1
                self._drop_connection()
                if stop.is_set():
                    log.warning("database unavailable at shutdown (%s); broker will redeliver", e)
                    return False
                log.warning("database unavailable (%s); retrying in %.1fs", e, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self.stats.add(res)
        if self.on_batch is not None:
            self.on_batch(res)
        generation = self._generation
        for b in batch:
            # A message from an earlier connection is being redelivered by the broker already;
            # its old packet id means nothing on the new connection.
            if b.qos > 0 and b.generation == generation:
                self._client.ack(b.mid, b.qos)
        return True

    def _write(self, messages: list[Message]) -> BatchResult:
        writer = self._ensure_writer()
        try:
            return writer.write(messages)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            if len(messages) > 1:
                half = len(messages) // 2
                first = self._write(messages[:half])
                second = self._write(messages[half:])
                return first.merge(second)
            m = messages[0]
            log.error("storage rejected a message on %s: %s", m.topic, e)
            detail = f"{type(e).__name__}: {e}"[:500]
            bad = Decoded(m.decoded.meter_id, [], [Rejection(STORAGE_ERROR, detail)])
            return writer.write([Message(m.topic, m.payload, m.received_at, bad)])

    def _collect(
        self,
        deadline: float,
        batch: list[_Inbound],
        readings: int,
        stop: threading.Event | None = None,
    ) -> int:
        """Add queued messages to ``batch`` until it is full, ``deadline`` passes or ``stop``."""
        limit = self.config.batch_readings
        while readings < limit:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    break
                try:
                    item = self._inbox.get(timeout=min(remaining, 0.1))
                except queue.Empty:
                    continue
            batch.append(item)
            readings += max(len(item.message.decoded.readings), 1)
        return readings

    def pending(self) -> int:
        """Messages received and not yet committed (approximate)."""
        return self._inbox.qsize()

    def run(self, stop: threading.Event) -> IngestStats:
        c = self.config
        self._client.connect_async(
            c.broker.host,
            c.broker.port,
            keepalive=c.keepalive_s,
            **session_args(
                c.broker, session_expiry_s=c.session_expiry_s, receive_maximum=c.receive_maximum
            ),
        )
        self._client.loop_start()
        try:
            while not stop.is_set():
                self._step(stop)
            # Flush what has arrived so that SIGTERM does not make the broker resend it.
            batch: list[_Inbound] = []
            self._collect(time.monotonic() + min(c.batch_interval_s, 0.2), batch, 0)
            while batch and self._commit(batch, stop):
                batch = []
                self._collect(time.monotonic(), batch, 0)
            self._confirm_sent()
            if self.detection is not None:
                self.detection.stop()
        finally:
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()
            self._drop_connection()
        return self.stats

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.config.maintenance_interval_s
        try:
            created, dropped = self._ensure_writer().maintain(
                self.clock(), self.config.retention_days
            )
        except psycopg.Error as e:
            log.warning("partition maintenance failed (%s); will retry", e)
            self._drop_connection()
            self._next_maintenance = now + 60
            return
        if created or dropped:
            log.info("partitions: %d created, dropped %s", created, dropped or "none")

    def _confirm_sent(self) -> None:
        """Make sure the last PUBACKs left before the socket closes.

        A QoS 1 round trip on the same connection returns only after everything queued before
        it was written, so no acknowledged batch is redelivered after a clean stop.
        """
        topic = f"{self.config.prefix}meterwatch/ingest/{self.config.client_id}/status"
        try:
            info = self._client.publish(topic, b"stopped", qos=1)
            info.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError) as e:
            log.info("could not confirm the last acknowledgements (%s); duplicates may follow", e)

    def _step(self, stop: threading.Event) -> None:
        self._maintain()
        batch: list[_Inbound] = []
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return
        batch.append(first)
        readings = max(len(first.message.decoded.readings), 1)
        self._collect(time.monotonic() + self.config.batch_interval_s, batch, readings, stop)
        self._commit(batch, stop)
