"""What goes wrong when things happen at once, or late: concurrent writers of one alert, slow and
failing channels under several dispatchers, readings that arrive a day after they were taken."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.alert import Alert, Severity
from detectors.bank import Monitor
from meterwatch.domain import Meter, Reading
from notify.channels.base import Channel
from notify.config import NotifyConfig
from notify.dispatcher import DispatchConfig, Dispatcher
from notify.model import Notification
from notify.scheduler import Notifier
from storage.alerts import apply_alerts
from storage.db import connect
from storage.registry import upsert_meters
from tests.helpers import FakeClock, queue_alerts

SECRET = "races-secret"
T = datetime(2026, 11, 20, 2, tzinfo=UTC)
H = timedelta(hours=1)
DAY = timedelta(hours=24)


def leak(meter_id: str, seen: datetime, cleared: bool = False) -> Alert:
    return Alert(meter_id, "leak", Severity.WARNING, T, seen, {"min_flow_lph": 20.0}, 0.5, cleared)


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


# --- concurrent writers of one alert --------------------------------------------------------


def test_a_repeat_waiting_on_a_resolution_with_a_suppression_is_suppressed(db_url: str) -> None:
    """Staff resolve a leak as customer use (a suppression) while ingest stores its repeat."""
    with connect(db_url) as conn:
        apply_alerts(conn, [leak("WH-R1", T)])
        conn.commit()
    staff = connect(db_url)
    try:
        (alert_id,) = staff.execute("SELECT id FROM alerts FOR UPDATE").fetchone() or ()
        staff.execute(
            """INSERT INTO suppressions (meter_id, type, since, until, actor)
               VALUES ('WH-R1', 'leak', %s, %s, 'ops')""",
            (T, T + 7 * DAY),
        )
        staff.execute("UPDATE alerts SET status = 'resolved', resolved_at = %s", (T + H,))

        def repeat() -> Any:
            with connect(db_url) as conn:
                return apply_alerts(conn, [leak("WH-R1", T + 2 * H)], reopen_within=DAY)

        thread, out = in_thread(repeat)
        time.sleep(0.5)
        assert thread.is_alive(), "the repeat waits for the person's transaction"
        staff.commit()
        thread.join(10)
    finally:
        staff.close()
    (changes,) = out
    assert (changes.opened, changes.reopened, changes.suppressed) == (0, 0, 1)
    with connect(db_url) as conn:
        rows = conn.execute("SELECT id, status FROM alerts").fetchall()
    assert rows == [(alert_id, "resolved")]


def test_two_workers_raising_a_returning_condition_reopen_it_once(db_url: str) -> None:
    with connect(db_url) as conn:
        apply_alerts(conn, [leak("WH-R2", T), leak("WH-R2", T + H, cleared=True)])
        conn.execute("UPDATE alerts SET status = 'resolved', resolved_at = %s", (T + H,))
        conn.commit()
    first = connect(db_url)
    try:
        one = apply_alerts(first, [leak("WH-R2", T + 5 * H)], reopen_within=DAY)

        def second() -> Any:
            with connect(db_url) as conn:
                return apply_alerts(conn, [leak("WH-R2", T + 6 * H)], reopen_within=DAY)

        thread, out = in_thread(second)
        time.sleep(0.5)
        first.commit()
        thread.join(10)
    finally:
        first.close()
    (two,) = out
    assert (one.reopened, two.reopened, two.updated) == (1, 0, 1)
    with connect(db_url) as conn:
        assert conn.execute("SELECT status, reopened, occurrences FROM alerts").fetchall() == [
            ("open", 1, 3)
        ]
        kinds = [k for (k,) in conn.execute("SELECT kind FROM alert_events ORDER BY id")]
    assert kinds.count("reopened") == 1


def test_a_resolution_by_a_person_reopens_by_event_time_not_the_click(db_url: str) -> None:
    """Resolved at the wall clock (now, years after these readings): a repeat within a day of
    the condition's last sighting still reopens the alert."""
    with connect(db_url) as conn:
        apply_alerts(conn, [leak("WH-R3", T + H)])
        conn.execute("UPDATE alerts SET status = 'resolved', resolved_at = now()")
        ch = apply_alerts(conn, [leak("WH-R3", T + 20 * H)], reopen_within=DAY)
        assert (ch.reopened, ch.opened) == (1, 0)
        conn.execute("UPDATE alerts SET status = 'resolved', resolved_at = now()")
        ch = apply_alerts(conn, [leak("WH-R3", T + 45 * H)], reopen_within=DAY)
        assert (ch.reopened, ch.opened) == (0, 1), "more than a day after it was last seen"


# --- channels that misbehave ----------------------------------------------------------------


class Flaky(Channel):
    """Fails the way no channel expects (a library bug), with a NUL byte in its message."""

    kind = "flaky"

    def __init__(self, name: str, fail: int) -> None:
        super().__init__(name, {})
        self.fail = fail
        self.sent: list[str] = []

    async def send(self, n: Notification) -> str:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("decoder said \x00 nope")
        self.sent.append(n.key)
        return "ok"


class Slow(Channel):
    kind = "slow"

    def __init__(self, name: str, delay_s: float) -> None:
        super().__init__(name, {})
        self.delay_s = delay_s
        self.sent: list[str] = []

    async def send(self, n: Notification) -> str:
        await asyncio.sleep(self.delay_s)
        self.sent.append(n.key)
        return "ok"


def queue(db_url: str, n: int, channel: str) -> None:
    config = NotifyConfig.model_validate(
        {
            "channels": {channel: {"kind": "webhook", "url": "http://127.0.0.1:9/x"}},
            "rules": [{"name": "duty", "audience": "staff", "channels": [channel]}],
        }
    )
    queue_alerts(db_url, config, [leak(f"WH-Q{i:03d}", T) for i in range(n)], secret=SECRET)


def test_an_unexpected_channel_error_costs_one_attempt_not_the_worker(db_url: str) -> None:
    queue(db_url, 3, "duty")
    channel = Flaky("duty", fail=1)
    clock = FakeClock(datetime.now(UTC))
    d = Dispatcher(db_url, {"duty": channel}, DispatchConfig(backoff_s=5), clock=clock)
    with asyncio.Runner() as loop:
        first = loop.run(d.run_once())
        assert (first.sent, first.failed, first.deferred) == (0, 1, 2)
        clock.advance(seconds=10)
        again = loop.run(d.run_once())
        loop.run(d.aclose())
    assert again.sent == 3 and len(channel.sent) == 3
    with connect(db_url) as conn:
        (detail,) = conn.execute("SELECT detail FROM deliveries WHERE NOT ok").fetchone() or ()
    assert detail == "RuntimeError: decoder said \\0 nope"


def test_the_worker_loop_survives_what_a_pass_raises(db_url: str) -> None:
    queue(db_url, 2, "duty")
    d = Dispatcher(db_url, {"duty": Slow("duty", 0)}, DispatchConfig(poll_s=0.05))
    calls = [0]
    real = d.drain

    async def drain(name: str) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug in one pass")
        return await real(name)

    d.drain = drain  # type: ignore[method-assign]

    async def main() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if d.stats.sent == 2:
                break
        stop.set()
        await task
        return d.stats.sent

    assert asyncio.run(main()) == 2 and calls[0] >= 2


def test_two_dispatchers_with_long_claims_send_each_notification_once(db_url: str) -> None:
    """A claim of ten 0.3 s sends outlives a 1 s lease; each row's lease is renewed at its turn,
    so the other dispatcher never takes a row that is still waiting in the first one's claim."""
    queue(db_url, 10, "duty")
    cfg = DispatchConfig(batch=10, lease_s=1.0, poll_s=0.05)
    a, b = Slow("duty", 0.3), Slow("duty", 0.3)
    first = Dispatcher(db_url, {"duty": a}, cfg)
    second = Dispatcher(db_url, {"duty": b}, cfg)

    async def main() -> None:
        async def later() -> None:
            for _ in range(12):
                await asyncio.sleep(0.25)
                await second.run_once()

        await asyncio.gather(first.run_once(), later())
        await first.aclose()
        await second.aclose()

    asyncio.run(main())
    keys = a.sent + b.sent
    assert len(keys) == 10 and len(set(keys)) == 10
    with connect(db_url) as conn:
        assert conn.execute("SELECT status, count(*) FROM outbox GROUP BY 1").fetchall() == [
            ("sent", 10)
        ]


# --- readings that arrive a day late ----------------------------------------------------------


def test_a_daily_upload_starts_the_sla_clock_and_quiet_hours_at_the_upload(db_url: str) -> None:
    nb = Meter("WH-NB1", tenant="acme", expected_interval_s=86400)
    live = Meter("WH-LIVE", tenant="acme")
    mon = Monitor()
    mon.add_meters([nb, live])
    upload = datetime(2026, 11, 20, 15, tzinfo=UTC)  # 23:00 in Shanghai
    day = [Reading("WH-NB1", upload - timedelta(hours=h), 10.0) for h in range(24, -1, -1)]
    mon.observe_messages([day, [Reading("WH-LIVE", upload, 5.0)]])
    known = mon.known_at(["WH-NB1", "WH-LIVE", "WH-UNKNOWN"])
    assert known == {"WH-NB1": int(upload.timestamp())}, "only meters that upload in batches"

    config = NotifyConfig.model_validate(
        {
            "quiet_hours": "22:00-07:00",
            "channels": {
                "crm": {"kind": "webhook", "url": "http://127.0.0.1:9/crm"},
                "duty": {"kind": "webhook", "url": "http://127.0.0.1:9/duty"},
            },
            "rules": [
                {"name": "crm", "audience": "customer", "channels": ["crm"]},
                {"name": "duty", "audience": "staff", "channels": ["duty"]},
            ],
        }
    )
    seen = datetime(2026, 11, 19, 18, tzinfo=UTC)  # 02:00 in Shanghai, read at 23:00
    with connect(db_url) as conn:
        upsert_meters(conn, [nb, live])
        changes = apply_alerts(conn, [leak("WH-NB1", seen), leak("WH-LIVE", seen)])
        n = Notifier(config, SECRET)
        n.after_alerts(conn, changes, {m: datetime.fromtimestamp(t, UTC) for m, t in known.items()})
        sla = dict(conn.execute("SELECT meter_id, sla_from FROM alerts").fetchall())
        held = dict(
            conn.execute(
                """SELECT a.meter_id, o.hold_until FROM outbox o JOIN alerts a ON a.id = o.alert_id
                   WHERE o.audience = 'customer'"""
            ).fetchall()
        )
        # Escalation runs from the upload too: not at 02:00 + 30 min, but 23:00 + 30 min.
        n_cfg = NotifyConfig.model_validate(
            {**config.model_dump(), "rules": [*config.model_dump()["rules"],
             {"name": "up", "audience": "staff", "level": 1, "channels": ["duty"]}]}
        )  # fmt: skip
        tick = Notifier(n_cfg, SECRET).tick(conn, upload + timedelta(minutes=29))
        levels = dict(conn.execute("SELECT meter_id, escalation_level FROM alerts").fetchall())
    assert sla == {"WH-NB1": upload, "WH-LIVE": seen}
    # Both are held to the next 07:00 in Shanghai: the live meter's from 02:00 on the 20th, the
    # daily one's from when its upload was read, 23:00 that evening.
    assert held == {
        "WH-LIVE": datetime(2026, 11, 19, 23, tzinfo=UTC),
        "WH-NB1": datetime(2026, 11, 20, 23, tzinfo=UTC),
    }
    assert tick.escalated == 1 and levels == {"WH-NB1": 0, "WH-LIVE": 1}


@pytest.fixture(autouse=True)
def _empty(db_url: str) -> None:
    """Each test starts from empty alert tables (the db_url fixture truncates them)."""
