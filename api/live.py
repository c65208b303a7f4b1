"""One LISTEN connection per API process, fanned out to the live streams' subscribers.

The notifier's ``stream`` channel sends every alert change with ``pg_notify`` on
``notify.model.LIVE_CHANNEL``. A backend that LISTENs must keep reading: PostgreSQL keeps each
notification in one shared queue until every listener has consumed it, and when that queue is
full every ``pg_notify`` in the cluster (the outbox wake-up inside ingest's transactions among
them) fails at commit. So the reading never waits for a client: one task reads ``notifies()`` and
puts each payload into the subscribers' bounded queues without blocking. A subscriber whose
queue is full is dropped: its stream ends and the client reconnects (and reloads ``/alerts``),
since a stream that silently skips changes would show a wrong picture. For the same reason every
subscription ends when the LISTEN connection is lost; while it is down, :meth:`Hub.subscribe`
refuses, and the hub reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import psycopg
from psycopg import sql

from notify.model import LIVE_CHANNEL

APPLICATION_NAME = "meterwatch-api-stream"  # how the listening backend shows in pg_stat_activity
STREAMS_MAX = 1000  # subscribers per process; each costs a queue and a socket, not a backend
QUEUE_MAX = 100  # notifications a subscriber may fall behind before it is dropped
CONNECT_TIMEOUT_S = 5
BACKOFF_S = (0.5, 30.0)  # first and longest wait before reconnecting

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The hub is not listening (the database is away), or it has no room for a subscriber."""


def tenant_of(payload: str) -> str | None:
    try:
        tenant = json.loads(payload)["alert"]["tenant"]
    except (ValueError, TypeError, KeyError):
        return None
    return tenant if isinstance(tenant, str) else None


class Subscription:
    """A client's view of the hub: payloads in order, then ``None`` once the stream must end."""

    def __init__(self, tenant: str | None, maxsize: int) -> None:
        self.tenant = tenant
        self.maxsize = maxsize
        # Unbounded on its own, bounded by :meth:`offer`: the end marker always fits.
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.ended = False

    def offer(self, payload: str) -> bool:
        """Queue ``payload`` without waiting; False when the subscriber is too far behind."""
        if self._queue.qsize() >= self.maxsize:
            return False
        self._queue.put_nowait(payload)
        return True

    def end(self, *, discard: bool) -> None:
        """No more payloads. ``discard`` drops what is queued: the client has to reload anyway."""
        if self.ended:
            return
        self.ended = True
        while discard and not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> str | None:
        return await self._queue.get()


class Hub:
    """Started in the app's lifespan with :meth:`start`, stopped with :meth:`close`."""

    def __init__(
        self, url: str, *, streams_max: int = STREAMS_MAX, queue_max: int = QUEUE_MAX
    ) -> None:
        self._url = url
        self.streams_max = streams_max
        self.queue_max = queue_max
        self._subs: set[Subscription] = set()
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0
        self.dropped = 0

    @property
    def listening(self) -> bool:
        return self._up.is_set()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="meterwatch-live-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._end_all()

    async def wait_listening(self, timeout: float) -> bool:
        """Give a reconnect in progress (or the first connect after start) a moment."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.listening

    def subscribe(self, tenant: str | None = None) -> Subscription:
        """A new subscriber, which hears every notification from now on (LISTEN is active)."""
        if not self.listening:
            raise Unavailable("live stream unavailable: not connected to the database")
        if len(self._subs) >= self.streams_max:
            raise Unavailable(f"too many live streams open ({self.streams_max}); try again later")
        sub = Subscription(tenant, self.queue_max)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.end(discard=True)

    def publish(self, payload: str) -> None:
        """Hand ``payload`` to every interested subscriber; never waits."""
        tenant = tenant_of(payload)
        for sub in list(self._subs):
            if sub.tenant is not None and sub.tenant != tenant:
                continue
            if not sub.offer(payload):
                self.dropped += 1
                log.warning("live stream: a client fell %d behind, dropped", sub.maxsize)
                self.unsubscribe(sub)

    def _end_all(self) -> None:
        subs, self._subs = self._subs, set()
        for sub in subs:
            sub.end(discard=False)

    async def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            connects = self.connects
            try:
                await self._listen()
            except psycopg.Error as e:
                log.warning("live stream: LISTEN connection lost or refused: %s", e)
            except Exception:  # a bug must not leave the process without a live stream
                log.exception("live stream: hub failed")
            if self.connects != connects:  # it was up: the first retry comes quickly
                delay = BACKOFF_S[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=APPLICATION_NAME,
            connect_timeout=CONNECT_TIMEOUT_S,
            # A server that vanished without a word (a network cut) is noticed within about a
            # minute, not after TCP's quarter of an hour.
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
        )  # fmt: skip
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(LIVE_CHANNEL)))
            self.connects += 1
            self._up.set()
            log.info("live stream: listening on %s", LIVE_CHANNEL)
            async for n in conn.notifies():
                self.publish(n.payload)
        finally:
            # Whatever was sent while nobody listened is lost: end the streams so clients
            # reconnect and reload rather than show a picture with a hole in it.
            self._up.clear()
            self._end_all()
            await conn.close()
