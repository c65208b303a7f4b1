"""Sends what the outbox holds: at least once, in order per alert and channel, retrying with
exponential backoff, one worker per channel so a dead receiver never holds up the others.

A worker claims due rows of its channel with a lease (``FOR UPDATE SKIP LOCKED``, then the lease is
committed), sends them outside any transaction and records each attempt. Several dispatchers can
run at once; a dispatcher that dies mid-send leaves leased rows that another claims when the lease
runs out, so a row can be sent twice: every notification carries its idempotency key for the
receiver to drop the repeat. After a retryable failure the worker puts the rest of its claim back
with the same backoff and claims nothing more for its channel until then: the backoff belongs to
the channel (consecutive failures), so a receiver that is down costs one try per backoff period,
however many notifications queue up meanwhile.

Times here are the wall clock (``clock``, injectable for tests): retries are about when a receiver
comes back, not about event time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from notify.channels.base import Channel, DeliveryError
from notify.model import Notification
from notify.outbox import WAKE_CHANNEL

log = logging.getLogger(__name__)

# Rows of one alert and channel go out in order: a row waits while an older one is pending.
CLAIM = """
WITH due AS (
    SELECT o.id FROM outbox o
    WHERE o.status = 'pending' AND o.hold_until IS NULL AND o.channel = %(channel)s
      AND o.next_attempt_at <= %(now)s
      AND (o.lease_until IS NULL OR o.lease_until <= %(now)s)
      AND NOT EXISTS (
          SELECT 1 FROM outbox p
          WHERE p.alert_id = o.alert_id AND p.channel = o.channel AND p.status = 'pending'
            AND p.id < o.id)
    ORDER BY o.next_attempt_at, o.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET lease_until = %(lease)s FROM due WHERE o.id = due.id
RETURNING o.id, o.attempts, o.payload, o.created_at, o.lease_until
"""

# Outcomes are recorded only under our own lease: a send that outlived its lease may have been
# claimed and finished by another dispatcher since, and must not undo what that one recorded.
SENT = """
UPDATE outbox SET status = 'sent', sent_at = %(now)s, attempts = attempts + 1,
    lease_until = NULL, last_error = NULL
WHERE id = %(id)s AND status = 'pending' AND lease_until = %(lease)s
"""
FAILED = """
UPDATE outbox SET status = %(status)s, attempts = attempts + 1, next_attempt_at = %(next)s,
    lease_until = NULL, last_error = %(error)s
WHERE id = %(id)s AND status = 'pending' AND lease_until = %(lease)s
"""
DEFER = """
UPDATE outbox SET next_attempt_at = %(next)s, lease_until = NULL
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending' AND lease_until = %(lease)s
"""
# Each row's lease is renewed just before its send, so a long claim (slow SMTP, a robot that
# answers in seconds) never outlives its lease while rows wait their turn; a row whose lease
# was lost meanwhile belongs to another dispatcher and is skipped.
RENEW = """
UPDATE outbox SET lease_until = %(new)s
WHERE id = %(id)s AND status = 'pending' AND lease_until = %(old)s
RETURNING lease_until
"""
LOG = """
INSERT INTO deliveries (outbox_id, attempt, channel, at, duration_ms, ok, detail)
VALUES (%(id)s, %(attempt)s, %(channel)s, %(now)s, %(ms)s, %(ok)s, %(detail)s)
"""
ORPHANS = """
UPDATE outbox SET status = 'dead', last_error = 'channel not configured'
WHERE status = 'pending' AND NOT (channel = ANY(%s::text[]))
"""


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    batch: int = 100
    lease_s: float = 60.0
    backoff_s: float = 5.0
    backoff_max_s: float = 60.0  # a receiver back from an outage hears within a minute
    give_up_h: float = 48.0  # a notification still failing after this long is dead
    poll_s: float = 2.0  # how often idle workers look anyway (NOTIFY wakes them sooner)
    send_timeout_s: float = 30.0


@dataclass(slots=True)
class DispatchStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0

    def add(self, other: DispatchStats) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.dead += other.dead
        self.deferred += other.deferred


def backoff(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (1 = first retry): doubling from ``base_s`` up to
    ``max_s``, with +-20 % jitter so rows that failed together do not retry together."""
    raw = min(base_s * 2.0 ** max(attempt - 1, 0), max_s)
    return float(raw * rng.uniform(0.8, 1.2))


class Dispatcher:
    def __init__(
        self,
        database_url: str,
        channels: Mapping[str, Channel],
        config: DispatchConfig | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.database_url = database_url
        self.channels = dict(channels)
        self.config = config or DispatchConfig()
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = DispatchStats()
        self._conns: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._failures: dict[str, int] = dict.fromkeys(self.channels, 0)  # consecutive, per channel
        self._blocked_until: dict[str, datetime] = {}

    async def _conn(self, name: str) -> psycopg.AsyncConnection[Any]:
        conn = self._conns.get(name)
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
            self._conns[name] = conn
        return conn

    async def run_once(self) -> DispatchStats:
        """One pass: every channel sends what is due now, concurrently."""
        stats = DispatchStats()
        for s in await asyncio.gather(*(self.drain(name) for name in self.channels)):
            stats.add(s)
        return stats

    async def drain(self, name: str) -> DispatchStats:
        """Send the due rows of one channel until none is left (or the channel fails)."""
        stats = DispatchStats()
        blocked = self._blocked_until.get(name)
        if blocked is not None and self.clock() < blocked:
            return stats
        while True:
            claimed = await self._claim(name)
            if not claimed:
                break
            # A full claim may have more behind it, a sent row may have released the next of
            # its alert: claim again until nothing is due or the channel fails.
            if await self._send_all(name, claimed, stats):
                break
        self.stats.add(stats)
        return stats

    async def _claim(self, name: str) -> list[tuple[int, int, dict[str, Any], datetime, datetime]]:
        now = self.clock()
        conn = await self._conn(name)
        params = {
            "channel": name,
            "now": now,
            "lease": now + timedelta(seconds=self.config.lease_s),
            "limit": self.config.batch,
        }
        cur = await conn.execute(CLAIM, params)
        return sorted(await cur.fetchall())

    async def _send_all(
        self,
        name: str,
        claimed: list[tuple[int, int, dict[str, Any], datetime, datetime]],
        stats: DispatchStats,
    ) -> bool:
        """Send a claim in order; True when the channel failed and the rest was deferred."""
        channel = self.channels[name]
        conn = await self._conn(name)
        claim_lease = claimed[0][4]
        for i, (row_id, attempts, payload, created_at, old) in enumerate(claimed):
            attempt = attempts + 1
            started = self.clock()
            renewed = await conn.execute(
                RENEW,
                {
                    "id": row_id,
                    "old": old,
                    "new": started + timedelta(seconds=self.config.lease_s),
                },
            )
            row = await renewed.fetchone()
            if row is None:
                continue
            lease = row[0]
            t0 = time.perf_counter()
            try:
                n = Notification.from_json(payload)
                detail = await asyncio.wait_for(channel.send(n), self.config.send_timeout_s)
            except Exception as e:  # any failure of one send is that send's, never the worker's
                ms = (time.perf_counter() - t0) * 1000.0
                retryable = _retryable(e)
                error = _text(_describe(e))
                now = self.clock()
                too_old = now - created_at > timedelta(hours=self.config.give_up_h)
                dead = not retryable or too_old
                if not dead:
                    self._failures[name] = self._failures.get(name, 0) + 1
                tries = max(attempt, self._failures.get(name, 0))
                delay = backoff(tries, self.config.backoff_s, self.config.backoff_max_s, self.rng)
                nxt = now + timedelta(seconds=delay)
                async with conn.transaction():
                    await conn.execute(
                        FAILED,
                        {
                            "id": row_id,
                            "status": "dead" if dead else "pending",
                            "next": nxt,
                            "error": error,
                            "lease": lease,
                        },
                    )
                    await conn.execute(LOG, _log(row_id, attempt, name, started, ms, False, error))
                if dead:
                    stats.dead += 1
                    log.error("%s: giving up on outbox row %d: %s", name, row_id, error)
                    continue
                stats.failed += 1
                self._blocked_until[name] = nxt
                rest = [c[0] for c in claimed[i + 1 :]]
                if rest:
                    await conn.execute(DEFER, {"ids": rest, "next": nxt, "lease": claim_lease})
                    stats.deferred += len(rest)
                log.warning(
                    "%s: %s; retry in %.0f s (%d more deferred)", name, error, delay, len(rest)
                )
                return True
            ms = (time.perf_counter() - t0) * 1000.0
            async with conn.transaction():
                await conn.execute(SENT, {"id": row_id, "now": self.clock(), "lease": lease})
                await conn.execute(
                    LOG, _log(row_id, attempt, name, started, ms, True, _text(detail))
                )
            stats.sent += 1
            self._failures[name] = 0
            self._blocked_until.pop(name, None)
        return False

    async def mark_orphans(self) -> int:
        """Rows for channels that are no longer configured can never go out: mark them dead."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            cur = await conn.execute(ORPHANS, (list(self.channels),))
            return cur.rowcount

    async def run(self, stop: asyncio.Event) -> DispatchStats:
        """Work until ``stop`` is set: a worker per channel, woken by NOTIFY or every poll_s."""
        wakes = {name: asyncio.Event() for name in self.channels}
        listener = asyncio.create_task(self._listen(wakes, stop))
        workers = [asyncio.create_task(self._worker(n, wakes[n], stop)) for n in self.channels]
        try:
            await stop.wait()
        finally:
            for ev in wakes.values():
                ev.set()
            await asyncio.gather(*workers, return_exceptions=True)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.aclose()
        return self.stats

    async def _worker(self, name: str, wake: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wake.clear()
            try:
                await self.drain(name)
            except psycopg.OperationalError as e:
                log.warning("%s: database unavailable (%s); retrying", name, e)
                await self._drop(name)
            except Exception:
                # A worker that died would silently stop its channel for good.
                log.exception("%s: dispatcher worker failed; carrying on", name)
                await self._drop(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.config.poll_s)

    async def _listen(self, wakes: Mapping[str, asyncio.Event], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    async for _ in conn.notifies():
                        for ev in wakes.values():
                            ev.set()
            except psycopg.OperationalError as e:
                log.warning("outbox listener: %s; polling until it reconnects", e)
                await asyncio.sleep(self.config.poll_s)

    async def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            await conn.close()

    async def aclose(self) -> None:
        for name in list(self._conns):
            await self._drop(name)
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.aclose()


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, DeliveryError):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"


def _retryable(e: Exception) -> bool:
    """A channel says so itself; a payload that does not parse never will; anything else (a
    library error no channel expected) gets retries, within give_up_h."""
    if isinstance(e, DeliveryError):
        return e.retryable
    return not isinstance(e, ValueError | KeyError | TypeError)


def _text(detail: str) -> str:
    """Receivers' answers end up in text columns: PostgreSQL text cannot hold NUL."""
    return detail.replace("\x00", "\\0")[:1000]


def _log(
    row_id: int, attempt: int, channel: str, at: datetime, ms: float, ok: bool, detail: str
) -> dict[str, Any]:
    """A ``deliveries`` row; ``detail`` has been through :func:`_text`."""
    return {
        "id": row_id,
        "attempt": attempt,
        "channel": channel,
        "now": at,
        "ms": ms,
        "ok": ok,
        "detail": detail,
    }
