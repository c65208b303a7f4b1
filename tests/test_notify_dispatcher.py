"""The dispatcher on the real database with real local receivers: order per alert and channel,
failures (retryable, not, too old), leases between dispatchers, the delivery log, orphans and
backoff. Wall-clock times come from a fake clock handed in, as the dispatcher allows."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.alert import Alert, Severity
from notify.channels import build_channel
from notify.config import NotifyConfig
from notify.dispatcher import CLAIM, DispatchConfig, Dispatcher, DispatchStats, backoff
from notify.service import build_channels
from storage.db import connect
from tests.helpers import FakeClock, queue_alerts
from tests.receivers import HttpReceiver

SECRET = "disp-secret"
T = datetime(2026, 11, 20, 2, tzinfo=UTC)
W, C = Severity.WARNING, Severity.CRITICAL


class Low(random.Random):
    """Jitter at its lower bound (or upper, with ``high``), to check backoff exactly."""

    def __init__(self, high: bool = False) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.fixture
def good() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


@pytest.fixture
def bad() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


def notify_config(**urls: str) -> NotifyConfig:
    return NotifyConfig.model_validate(
        {
            "channels": {n: {"kind": "webhook", "url": u} for n, u in urls.items()},
            "rules": [{"name": "all", "audience": "staff", "channels": list(urls)}],
        }
    )


def raise_alerts(db_url: str, config: NotifyConfig, *alerts: Alert) -> list[int]:
    return queue_alerts(db_url, config, alerts, secret=SECRET)


def burst(meter: str, sev: Severity = C, hours: float = 0) -> Alert:
    return Alert(meter, "burst", sev, T, T + timedelta(hours=hours), {"flow_lph": 900.0})


def dispatcher(db_url: str, config: NotifyConfig, clock: FakeClock, **kw: Any) -> Dispatcher:
    channels = build_channels(config)
    return Dispatcher(db_url, channels, DispatchConfig(**kw), clock=clock, rng=random.Random(7))


def rows(db_url: str) -> list[tuple[Any, ...]]:
    """(id, alert_id, trigger, channel, status, attempts, last_error) in id order."""
    with connect(db_url) as conn:
        return conn.execute(
            """SELECT id, alert_id, trigger, channel, status, attempts, last_error FROM outbox
               ORDER BY id"""
        ).fetchall()


def deliveries(db_url: str, outbox_id: int) -> list[tuple[Any, ...]]:
    with connect(db_url) as conn:
        return conn.execute(
            "SELECT attempt, channel, at, ok, detail FROM deliveries WHERE outbox_id = %s "
            "ORDER BY id",
            (outbox_id,),
        ).fetchall()


def stats(s: DispatchStats) -> tuple[int, int, int, int]:
    return s.sent, s.failed, s.dead, s.deferred


def now() -> datetime:
    return datetime.now(UTC)


# --- order, retries and the delivery log -------------------------------------------------------


def test_an_older_failing_row_holds_back_the_newer_one_of_its_alert_and_channel(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url)
    (a,) = raise_alerts(db_url, config, burst("WH-1", W))
    raise_alerts(db_url, config, burst("WH-1", C, hours=1))
    (opened, _, t1, *_), (severity, _, t2, *_) = rows(db_url)
    assert (t1, t2) == ("opened", "severity")
    clock = FakeClock(now())
    start = clock.now
    d = dispatcher(db_url, config, clock, backoff_s=10, backoff_max_s=60)
    good.answer(503, {"error": "maintenance"})
    with asyncio.Runner() as loop:
        assert stats(loop.run(d.run_once())) == (0, 1, 0, 0), "the newer one was not claimed"
        delay = backoff(1, 10, 60, random.Random(7))
        with connect(db_url) as conn:
            due = conn.execute(
                "SELECT id, next_attempt_at FROM outbox WHERE status = 'pending' ORDER BY id"
            ).fetchall()
        assert due[0] == (opened, start + timedelta(seconds=delay))
        good.answer()
        clock.advance(seconds=delay - 0.5)
        assert stats(loop.run(d.run_once())) == (0, 0, 0, 0), "neither is due"
        clock.advance(seconds=1)
        sent = 0
        for _ in range(3):
            sent += loop.run(d.run_once()).sent
        loop.run(d.aclose())
    assert sent == 2
    assert good.keys() == [f"mw-{a}-opened-0-0-hook"] * 2 + [f"mw-{a}-severity-0-2-hook"]
    assert [r[4:6] for r in rows(db_url)] == [("sent", 2), ("sent", 1)]
    first, second = deliveries(db_url, opened)
    assert first[:4] == (1, "hook", start, False) and "HTTP 503" in first[4]
    assert "maintenance" in first[4]
    assert second == (2, "hook", start + timedelta(seconds=delay + 0.5), True, "200")
    assert [x[3] for x in deliveries(db_url, severity)] == [True]


def test_a_retryable_failure_puts_the_rest_of_the_claim_back_untried(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url)
    raise_alerts(db_url, config, *(burst(f"WH-{i}") for i in range(3)))
    clock = FakeClock(now())
    d = dispatcher(db_url, config, clock, backoff_s=10, backoff_max_s=60)
    good.answer(502)
    with asyncio.Runner() as loop:
        assert stats(loop.run(d.run_once())) == (0, 1, 0, 2)
        loop.run(d.aclose())
    assert len(good.requests) == 1
    with connect(db_url) as conn:
        got = conn.execute(
            "SELECT attempts, next_attempt_at, lease_until, status FROM outbox ORDER BY id"
        ).fetchall()
    nxt = clock.now + timedelta(seconds=backoff(1, 10, 60, random.Random(7)))
    assert got == [(1, nxt, None, "pending"), (0, nxt, None, "pending"), (0, nxt, None, "pending")]
    assert [len(deliveries(db_url, r[0])) for r in rows(db_url)] == [1, 0, 0]


def test_a_refused_notification_is_dead_at_once_and_delays_nobody(
    db_url: str, good: HttpReceiver, bad: HttpReceiver
) -> None:
    config = notify_config(good=good.url, bad=bad.url)
    ids = raise_alerts(db_url, config, burst("WH-1"), burst("WH-2"))
    bad.answer(400, {"error": "unknown hook"})
    clock = FakeClock(now())
    d = dispatcher(db_url, config, clock)
    with asyncio.Runner() as loop:
        assert stats(loop.run(d.run_once())) == (2, 0, 2, 0)
        assert stats(loop.run(d.run_once())) == (0, 0, 0, 0), "never tried again"
        loop.run(d.aclose())
    assert len(bad.requests) == 2 and len(good.requests) == 2
    got = {(r[1], r[3]): r[4:] for r in rows(db_url)}
    where = f"http://127.0.0.1:{bad.port}: HTTP 400"
    for a in ids:
        assert got[(a, "good")] == ("sent", 1, None)
        status, attempts, error = got[(a, "bad")]
        assert (status, attempts) == ("dead", 1)
        assert error.startswith(where) and "unknown hook" in error
    for r in rows(db_url):
        ((attempt, channel, at, ok, detail),) = deliveries(db_url, r[0])
        assert (attempt, channel, at, ok) == (1, r[3], clock.now, r[3] == "good")
        assert detail == ("200" if ok else r[6])


def test_a_notification_failing_for_longer_than_give_up_h_is_dead(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url)
    raise_alerts(db_url, config, burst("WH-1"))
    clock = FakeClock(now())
    d = dispatcher(db_url, config, clock, give_up_h=1.0, backoff_s=60, backoff_max_s=600)
    good.answer(503)
    with asyncio.Runner() as loop:
        assert stats(loop.run(d.run_once())) == (0, 1, 0, 0)
        clock.advance(minutes=30)
        assert stats(loop.run(d.run_once())) == (0, 1, 0, 0)
        assert rows(db_url)[0][4:6] == ("pending", 2)
        clock.advance(minutes=31)  # created an hour and a minute ago
        assert stats(loop.run(d.run_once())) == (0, 0, 1, 0)
        clock.advance(hours=5)
        assert stats(loop.run(d.run_once())) == (0, 0, 0, 0)
        loop.run(d.aclose())
    (row,) = rows(db_url)
    assert row[4:6] == ("dead", 3) and "HTTP 503" in row[6]
    assert [x[3] for x in deliveries(db_url, row[0])] == [False] * 3
    assert len(good.requests) == 3


# --- leases ------------------------------------------------------------------------------------


def test_a_row_leased_by_another_dispatcher_waits_for_the_lease_to_run_out(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url)
    raise_alerts(db_url, config, burst("WH-1"))
    start = now()
    # Another dispatcher claims the row and dies before sending it.
    with connect(db_url, autocommit=True) as conn:
        params = {"channel": "hook", "now": start, "lease": start + timedelta(seconds=60),
                  "limit": 100}  # fmt: skip
        assert len(conn.execute(CLAIM, params).fetchall()) == 1
        assert conn.execute(CLAIM, params).fetchall() == [], "a leased row is not claimed again"
    clock = FakeClock(start + timedelta(seconds=59))
    d = dispatcher(db_url, config, clock, lease_s=60)
    with asyncio.Runner() as loop:
        assert stats(loop.run(d.run_once())) == (0, 0, 0, 0)
        assert good.requests == []
        clock.advance(seconds=1)
        assert stats(loop.run(d.run_once())) == (1, 0, 0, 0)
        loop.run(d.aclose())
    assert len(good.requests) == 1
    assert rows(db_url)[0][4:6] == ("sent", 1)


def test_two_dispatchers_at_once_send_each_notification_once(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url)
    ids = raise_alerts(db_url, config, *(burst(f"WH-{i}") for i in range(4)))
    good.answer(200, {}, delay_s=0.2)
    clock = FakeClock(now())
    one, two = dispatcher(db_url, config, clock), dispatcher(db_url, config, clock)

    async def both() -> tuple[DispatchStats, DispatchStats]:
        first = asyncio.create_task(one.run_once())
        while not good.requests:  # the first has claimed the batch and is sending it
            await asyncio.sleep(0.01)
        second = await two.run_once()
        out = (await first, second)
        await one.aclose()
        await two.aclose()
        return out

    a, b = asyncio.run(both())
    assert (a.sent, b.sent) == (4, 0), "the second found every row leased"
    keys = good.keys()
    assert sorted(keys) == sorted(f"mw-{i}-opened-0-0-hook" for i in ids)
    assert [r[4:6] for r in rows(db_url)] == [("sent", 1)] * 4


@pytest.mark.parametrize(("late", "status"), [(400, "dead"), (503, "pending")])
def test_a_late_failure_after_the_lease_ran_out_does_not_undo_anothers_delivery(
    db_url: str, good: HttpReceiver, late: int, status: str
) -> None:
    config = notify_config(hook=good.url)
    raise_alerts(db_url, config, burst("WH-1"))
    start = now()
    slow = dispatcher(db_url, config, FakeClock(start), lease_s=5)
    other = dispatcher(db_url, config, FakeClock(start + timedelta(seconds=6)), lease_s=5)
    good.answer(late, {"error": "late"}, delay_s=1.0)

    async def race() -> tuple[DispatchStats, DispatchStats]:
        stuck = asyncio.create_task(slow.run_once())
        while not good.requests:  # the slow send is in flight, its answer decided
            await asyncio.sleep(0.01)
        good.answer()
        ok = await other.run_once()
        out = (await stuck, ok)
        await slow.aclose()
        await other.aclose()
        return out

    _, ok = asyncio.run(race())
    assert ok.sent == 1 and len(good.requests) == 2
    assert rows(db_url)[0][4] == "sent", f"the late {late} made it {status!r}"


# --- orphans and backoff -----------------------------------------------------------------------


def test_pending_rows_of_channels_no_longer_configured_are_marked_dead(
    db_url: str, good: HttpReceiver
) -> None:
    config = notify_config(hook=good.url, gone="http://127.0.0.1:9/gone")
    raise_alerts(db_url, config, burst("WH-1"), burst("WH-2"))
    with connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox SET status = 'sent' WHERE id = (SELECT min(id) FROM outbox "
            "WHERE channel = 'gone')"
        )
    clock = FakeClock(now())
    channels = {"hook": build_channel("hook", config.channels["hook"])}
    d = Dispatcher(db_url, channels, clock=clock)
    with asyncio.Runner() as loop:
        assert loop.run(d.mark_orphans()) == 1
        assert loop.run(d.mark_orphans()) == 0
        loop.run(d.aclose())
    assert [(r[3], r[4], r[6]) for r in rows(db_url)] == [
        ("hook", "pending", None), ("gone", "sent", None),  # sent before it was removed
        ("hook", "pending", None), ("gone", "dead", "channel not configured"),
    ]  # fmt: skip


def test_backoff_doubles_from_base_and_is_capped_with_jitter_within_20_percent() -> None:
    low = [backoff(n, 5.0, 300.0, Low()) for n in range(0, 10)]
    high = [backoff(n, 5.0, 300.0, Low(high=True)) for n in range(0, 10)]
    assert low == [4.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 240.0, 240.0, 240.0]
    assert high == [6.0, 6.0, 12.0, 24.0, 48.0, 96.0, 192.0, 360.0, 360.0, 360.0]
    rng = random.Random(42)
    draws = [backoff(3, 5.0, 300.0, rng) / 20.0 for _ in range(2000)]
    assert all(0.8 <= x <= 1.2 for x in draws)
    assert min(draws) < 0.82 and max(draws) > 1.18, "the jitter spans the band"
    assert len(set(draws)) == len(draws), "rows that failed together do not retry together"
