"""The notifier's event-time side on the real database: what ``Notifier.after_alerts`` writes to
the outbox for an alert change, and what ``Notifier.tick`` makes due (quiet hours released,
escalation, repair confirmation, auto-resolve). The dispatcher is in test_notify_dispatcher.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

from detectors.alert import Alert, Severity, iso
from meterwatch.codec import decode_uplink, encode_uplink, uplink_topic
from meterwatch.domain import Meter
from notify.config import NotifyConfig
from notify.dispatcher import Dispatcher
from notify.scheduler import Notifier
from notify.service import build_channels
from storage.alerts import AlertChanges, apply_alerts
from storage.registry import upsert_meters
from storage.writer import Message, Writer
from tests.receivers import HttpReceiver

SECRET = "sched-secret"
SH = ZoneInfo("Asia/Shanghai")
T = datetime(2026, 11, 20, 6, tzinfo=UTC)  # 14:00 in Shanghai
H = timedelta(hours=1)
MIN = timedelta(minutes=1)
W, C = Severity.WARNING, Severity.CRITICAL


def hook(name: str, url: str | None = None) -> dict[str, Any]:
    """A webhook channel; scheduler tests never send, so a URL nobody listens on will do."""
    return {"kind": "webhook", "url": url or f"http://127.0.0.1:9/{name}"}


def config(**kw: Any) -> NotifyConfig:
    return NotifyConfig.model_validate(kw)


def alert(
    meter: str, type: str, sev: Severity, start: datetime, seen: datetime, **kw: Any
) -> Alert:
    return Alert(meter, type, sev, start, seen, kw.pop("evidence", {}), **kw)


def store(
    db: psycopg.Connection[Any], n: Notifier, *alerts: Alert, reopen_within: timedelta | None = None
) -> tuple[AlertChanges, int]:
    ch = apply_alerts(db, list(alerts), reopen_within=reopen_within)
    return ch, n.after_alerts(db, ch)


def outbox(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        """SELECT alert_id, trigger, level, channel, audience, idem_key, hold_until FROM outbox
           ORDER BY id"""
    ).fetchall()


def payloads(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [r[0] for r in db.execute("SELECT payload FROM outbox ORDER BY id")]


def col(db: psycopg.Connection[Any], alert_id: int, cols: str) -> tuple[Any, ...]:
    row = db.execute(f"SELECT {cols} FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    assert row is not None
    return tuple(row)


def events(db: psycopg.Connection[Any], alert_id: int, kind: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT event_time, detail FROM alert_events WHERE alert_id = %s AND kind = %s ORDER BY id",
        (alert_id, kind),
    ).fetchall()


@pytest.fixture
def meters(db: psycopg.Connection[Any]) -> None:
    upsert_meters(db, [
        Meter("WH-1", tenant="acme", dma="wuchang-03", tariff_cny_per_m3=4.0),
        Meter("WH-2", tenant="acme"),
        Meter("WH-3", tenant="other"),
        Meter("WH-LON", tenant="acme", timezone="Europe/London"),
    ])  # fmt: skip


# --- after_alerts ------------------------------------------------------------------------------

ROUTED = config(
    channels={"duty": hook("duty"), "crm": hook("crm")},
    rules=[
        {"name": "duty", "audience": "staff", "types": ["leak", "burst"], "channels": ["duty"]},
        {"name": "crm", "audience": "customer", "types": ["leak"], "channels": ["crm"],
         "lang": "en"},
    ],
    teams=[{"name": "east", "dmas": ["wuchang-03"]}, {"name": "keys", "tenants": ["acme"]}],
)  # fmt: skip


def test_a_new_alert_is_announced_once_and_again_only_when_it_gets_more_severe(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(ROUTED, SECRET)
    leak = alert("WH-1", "leak", W, T, T + H, evidence={"min_flow_lph": 40.0},
                 estimated_loss_m3_per_day=0.96)  # fmt: skip
    ch, queued = store(db, n, leak, alert("WH-2", "burst", C, T, T + H))
    a, b = ch.ids
    assert queued == 3
    assert outbox(db) == [
        (a, "opened", 0, "duty", "staff", f"mw-{a}-opened-0-0-duty", None),
        (a, "opened", 0, "crm", "customer", f"mw-{a}-opened-0-0-crm", None),
        (b, "opened", 0, "duty", "staff", f"mw-{b}-opened-0-0-duty", None),
    ], "the burst's customer rule does not list bursts"
    staff, customer, _ = payloads(db)
    assert (staff["lang"], customer["lang"]) == ("zh", "en")
    assert staff["created_at"] == iso(T + H) and staff["alert"]["team"] == "east"
    assert set(customer["links"]) == {"alert", "expected", "not_expected"}
    assert set(staff["links"]) == {"alert"}
    team, message, notified = col(db, a, "team, message, notified_severity")
    assert (team, notified) == ("east", "warning")
    assert set(message) == {"zh", "en"} and all(message.values())
    assert staff["alert"]["message"] == message
    assert col(db, b, "team, notified_severity") == ("keys", "critical"), "by tenant, no DMA"

    # A repeat at the same severity tells nobody anything new.
    assert store(db, n, alert("WH-1", "leak", W, T, T + 2 * H))[1] == 0
    # A rise to critical does, once per channel; a later repeat at warning does not.
    ch, queued = store(db, n, alert("WH-1", "leak", C, T, T + 3 * H))
    assert (ch.ids, queued) == ([a], 2)
    assert outbox(db)[3:] == [
        (a, "severity", 0, "duty", "staff", f"mw-{a}-severity-0-2-duty", None),
        (a, "severity", 0, "crm", "customer", f"mw-{a}-severity-0-2-crm", None),
    ]
    assert payloads(db)[3]["alert"]["severity"] == "critical"
    assert col(db, a, "notified_severity") == ("critical",)
    assert store(db, n, alert("WH-1", "leak", W, T, T + 4 * H))[1] == 0
    assert store(db, n, alert("WH-1", "leak", C, T, T + 5 * H))[1] == 0
    assert len(outbox(db)) == 5


def test_a_condition_back_soon_after_resolution_reopens_with_a_reopened_notification(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(ROUTED, SECRET)
    ch, _ = store(db, n, alert("WH-1", "leak", W, T, T + H), alert("WH-2", "leak", W, T, T + H))
    a, b = ch.ids
    db.execute(
        """UPDATE alerts SET status = 'resolved', resolved_by = 'system', resolution = 'cleared',
               resolved_at = CASE id WHEN %s THEN %s ELSE %s END""",
        (a, T + 5 * H, T - 30 * H + 5 * H),
    )
    within = timedelta(hours=ROUTED.reopen_within_h)
    # The window runs from the alert's end in event time (last seen at T + 1 h), not from its
    # resolved_at, which may be a person's wall clock.
    ch, queued = store(
        db, n, alert("WH-1", "leak", W, T + 9 * H, T + 10 * H),
        alert("WH-2", "leak", W, T + 29 * H, T + 30 * H), reopen_within=within,
    )  # fmt: skip
    assert ch.reopened_ids == [a]
    (new,) = set(ch.ids) - {a}
    assert new not in (a, b), "ended more than 24 h before: a new alert"
    assert queued == 4
    assert outbox(db)[4:] == [
        (a, "reopened", 0, "duty", "staff", f"mw-{a}-reopened-0-1-duty", None),
        (a, "reopened", 0, "crm", "customer", f"mw-{a}-reopened-0-1-crm", None),
        (new, "opened", 0, "duty", "staff", f"mw-{new}-opened-0-0-duty", None),
        (new, "opened", 0, "crm", "customer", f"mw-{new}-opened-0-0-crm", None),
    ]
    assert col(db, a, "status, reopened, notified_severity") == ("open", 1, "warning")
    assert col(db, b, "status") == ("resolved",)


# --- quiet hours -------------------------------------------------------------------------------


def quiet_config(crm_url: str | None = None, duty_url: str | None = None) -> NotifyConfig:
    return config(
        quiet_hours="22:00-07:00",
        channels={"crm": hook("crm", crm_url), "duty": hook("duty", duty_url)},
        rules=[
            {"name": "crm", "audience": "customer", "channels": ["crm"],
             "types": ["abnormal_high", "burst", "leak"]},
            {"name": "duty", "audience": "staff", "channels": ["duty"]},
        ],
    )  # fmt: skip


def dispatch(db_url: str, cfg: NotifyConfig) -> int:
    async def once() -> int:
        channels = build_channels(cfg)
        d = Dispatcher(db_url, channels)
        try:
            return (await d.run_once()).sent
        finally:
            await d.aclose()

    return asyncio.run(once())


def test_quiet_hours_hold_customer_reminders_until_morning_meter_time(
    db: psycopg.Connection[Any], db_url: str, meters: None
) -> None:
    night = datetime(2026, 11, 20, 23, 30, tzinfo=SH)
    morning = datetime(2026, 11, 21, 7, 0, tzinfo=SH)
    with HttpReceiver() as crm, HttpReceiver() as duty:
        cfg = quiet_config(crm.url, duty.url)
        n = Notifier(cfg, SECRET)
        ch, queued = store(
            db, n, alert("WH-1", "abnormal_high", W, night - H, night),
            alert("WH-2", "burst", C, night - H, night),
            alert("WH-LON", "abnormal_high", W, night - H, night),  # 15:30 in London
        )  # fmt: skip
        high, burst, london = ch.ids
        assert queued == 6
        held = {(r[0], r[4]): r[6] for r in outbox(db)}
        assert held == {
            (high, "customer"): morning.astimezone(UTC), (high, "staff"): None,
            (burst, "customer"): None, (burst, "staff"): None,
            (london, "customer"): None, (london, "staff"): None,
        }  # fmt: skip
        assert morning.astimezone(UTC) == datetime(2026, 11, 20, 23, tzinfo=UTC)
        db.commit()

        assert dispatch(db_url, cfg) == 5
        assert len(duty.requests) == 3
        assert sorted(r.json["alert"]["id"] for r in crm.requests) == [burst, london]

        res = n.tick(db, morning - MIN)
        db.commit()
        assert res.released == 0 and dispatch(db_url, cfg) == 0
        res = n.tick(db, morning)
        db.commit()
        assert res.released == 1
        assert dispatch(db_url, cfg) == 1
        last = crm.requests[-1].json
        assert (last["alert"]["id"], last["audience"], last["trigger"]) == (
            high, "customer", "opened"
        )  # fmt: skip
        assert len(crm.requests) == 3 and len(duty.requests) == 3
    assert db.execute("SELECT count(*) FROM outbox WHERE status <> 'sent'").fetchone() == (0,)


def test_a_severity_rise_in_the_night_is_held_like_a_new_alert(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(quiet_config(), SECRET)
    afternoon = datetime(2026, 11, 20, 14, 0, tzinfo=SH)
    night = datetime(2026, 11, 20, 23, 30, tzinfo=SH)
    store(db, n, alert("WH-1", "leak", W, afternoon, afternoon))
    store(db, n, alert("WH-1", "leak", C, afternoon, night))
    customer = [(r[1], r[6]) for r in outbox(db) if r[4] == "customer"]
    assert customer == [("opened", None), ("severity", datetime(2026, 11, 21, 7, 0, tzinfo=SH))]


def test_a_reopening_in_the_night_is_held(db: psycopg.Connection[Any], meters: None) -> None:
    n = Notifier(quiet_config(), SECRET)
    afternoon = datetime(2026, 11, 20, 14, 0, tzinfo=SH)
    night = datetime(2026, 11, 20, 23, 30, tzinfo=SH)
    ch, _ = store(db, n, alert("WH-1", "leak", W, afternoon, afternoon))
    (a,) = ch.ids
    db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = %s WHERE id = %s", (night - H, a)
    )
    ch, _ = store(db, n, alert("WH-1", "leak", W, night, night), reopen_within=24 * H)
    assert ch.reopened_ids == [a]
    reopened = [r for r in outbox(db) if r[1] == "reopened" and r[4] == "customer"]
    assert [r[6] for r in reopened] == [datetime(2026, 11, 21, 7, 0, tzinfo=SH)]


# --- auto-resolve ------------------------------------------------------------------------------


def test_a_cleared_condition_resolves_its_alert_after_the_types_auto_resolve_time(
    db: psycopg.Connection[Any], meters: None
) -> None:
    cfg = config(
        auto_resolve_h={"abnormal_high": 2},  # silent keeps its default of 1 h
        channels={"duty": hook("duty")},
        rules=[{"name": "duty", "audience": "staff", "channels": ["duty"],
                "triggers": ["opened", "resolved"]}],
    )  # fmt: skip
    n = Notifier(cfg, SECRET)
    ch, _ = store(
        db, n, alert("WH-1", "abnormal_high", W, T, T + H, estimated_loss_m3_per_day=2.4),
        alert("WH-2", "silent", W, T, T + H),
        alert("WH-1", "abnormal_high", W, T, T + 6 * H, cleared=True),
        alert("WH-2", "silent", W, T, T + 6 * H, cleared=True),
    )  # fmt: skip
    high, silent = ch.ids
    assert col(db, high, "status, cleared_at") == ("open", T + 6 * H)

    res = n.tick(db, T + 7 * H - timedelta(seconds=1))
    assert (res.resolved, res.queued) == (0, 0)
    res = n.tick(db, T + 7 * H)
    assert (res.resolved, res.queued) == (1, 1)
    assert col(db, silent, "status") == ("resolved",)
    assert col(db, high, "status") == ("open",)
    res = n.tick(db, T + 8 * H - timedelta(seconds=1))
    assert res.resolved == 0
    res = n.tick(db, T + 8 * H)
    assert (res.resolved, res.queued) == (1, 1)

    status, resolution, by, at, lost = col(
        db, high, "status, resolution, resolved_by, resolved_at, volume_lost_m3"
    )
    assert (status, resolution, by, at) == ("resolved", "cleared", "system", T + 6 * H)
    assert lost == pytest.approx(2.4 * 6 / 24, rel=1e-12), "loss/day x (cleared - started)"
    assert col(db, silent, "resolved_at, volume_lost_m3") == (T + 6 * H, None), "no loss rate"
    assert events(db, high, "resolved") == [(T + 6 * H, {"cause": "cleared"})]
    resolved = [r for r in outbox(db) if r[1] == "resolved"]
    assert resolved == [
        (silent, "resolved", 0, "duty", "staff", f"mw-{silent}-resolved-0-0-duty", None),
        (high, "resolved", 0, "duty", "staff", f"mw-{high}-resolved-0-0-duty", None),
    ]
    assert payloads(db)[-1]["created_at"] == iso(T + 8 * H)
    assert payloads(db)[-1]["alert"]["resolution"] == "cleared"
    assert n.tick(db, T + 30 * H).resolved == 0, "resolved once"


# --- repair confirmed by the data --------------------------------------------------------------


def write_readings(
    db: psycopg.Connection[Any], meter: str, points: list[tuple[datetime, float]]
) -> None:
    payload = encode_uplink(meter, [(t, reg, None) for t, reg in points])
    topic = uplink_topic(meter)
    received = points[-1][0]
    decoded = decode_uplink(topic, payload, received_at=received)
    result = Writer(db).write([Message(topic, payload, received, decoded)])
    assert result.inserted == len(points)


def report_repair(db: psycopg.Connection[Any], alert_id: int, cause: str, actor: str) -> None:
    """What storage.lifecycle.resolve does for a repair the data does not show yet."""
    db.execute(
        """UPDATE alerts SET status = 'acknowledged', repair_reported_at = now(),
               repair_reported_by = %(actor)s, acknowledged_at = now(), acknowledged_by = %(actor)s
           WHERE id = %(id)s""",
        {"id": alert_id, "actor": actor},
    )
    db.execute(
        """INSERT INTO alert_events (alert_id, kind, actor, detail)
           VALUES (%s, 'repair_reported', %s, %s)""",
        (alert_id, actor, Jsonb({"cause": cause, "note": ""})),
    )


def test_a_reported_leak_repair_is_confirmed_by_the_first_hour_without_flow(
    db: psycopg.Connection[Any], meters: None
) -> None:
    cfg = config(
        saved_horizon_days=10,
        channels={"duty": hook("duty")},
        rules=[{"name": "duty", "audience": "staff", "channels": ["duty"],
                "triggers": ["opened", "resolved"]}],
    )  # fmt: skip
    n = Notifier(cfg, SECRET)
    q = timedelta(minutes=15)
    # 10 litres every quarter hour (0.96 m3/day) from T to T+6h, then an hour without flow.
    leaking = [(T + i * q, 10.0 + 0.01 * i) for i in range(25)]
    write_readings(db, "WH-1", leaking)
    ch, _ = store(
        db, n, alert("WH-1", "leak", W, T, T + 2 * H, estimated_loss_m3_per_day=0.96),
        alert("WH-1", "leak", W, T, T + 4 * H, estimated_loss_m3_per_day=0.96),
        alert("WH-3", "reverse_flow", W, T, T + H),
        alert("WH-3", "reverse_flow", W, T, T + 3 * H, cleared=True),
    )  # fmt: skip
    leak, reverse = ch.ids
    report_repair(db, leak, "leak_repaired", "wang")
    report_repair(db, reverse, "meter_fault", "li")

    # The reverse flow had already cleared: its repair is confirmed at once, at the clear.
    res = n.tick(db, T + 6 * H)
    assert (res.confirmed, res.resolved) == (1, 0)
    assert col(db, reverse, "status, resolution, resolved_by, confirmed_at, resolved_at") == (
        "resolved", "meter_fault", "li", T + 3 * H, T + 3 * H
    )  # fmt: skip
    # The leak still flows, hour after hour since it was last seen: nothing to confirm.
    assert col(db, leak, "status") == ("acknowledged",)
    assert n.tick(db, T + 7 * H).confirmed == 0

    dry = [(T + 6 * H + i * q, leaking[-1][1]) for i in range(1, 5)]
    more = [(T + 7 * H + i * q, leaking[-1][1] + 0.01 * i) for i in range(1, 3)]
    write_readings(db, "WH-1", dry + more)
    hours = db.execute(
        "SELECT hour, volume_m3, covered_s FROM usage_hourly WHERE meter_id = 'WH-1' ORDER BY 1"
    ).fetchall()
    assert [(h, round(v, 6), c) for h, v, c in hours[4:7]] == [
        (T + 4 * H, 0.04, 3600.0), (T + 5 * H, 0.04, 3600.0), (T + 6 * H, 0.0, 3600.0)
    ]  # fmt: skip

    assert n.tick(db, T + 7 * H).confirmed == 1
    status, resolution, by, confirmed, resolved, lost, saved = col(
        db, leak, "status, resolution, resolved_by, confirmed_at, resolved_at, volume_lost_m3, "
        "volume_saved_m3",
    )  # fmt: skip
    assert (status, resolution, by) == ("resolved", "leak_repaired", "wang")
    assert confirmed == resolved == T + 6 * H
    assert lost == pytest.approx(0.96 * 6 / 24, rel=1e-12)
    assert saved == pytest.approx(0.96 * 10, rel=1e-12)
    assert events(db, leak, "confirmed") == [(T + 6 * H, {})]
    assert events(db, leak, "resolved") == [(T + 6 * H, {"cause": "repair confirmed by data"})]
    assert [r[:4] for r in outbox(db) if r[1] == "resolved"] == [
        (reverse, "resolved", 0, "duty"), (leak, "resolved", 0, "duty")
    ]  # fmt: skip
    assert n.tick(db, T + 9 * H).confirmed == 0


# --- escalation --------------------------------------------------------------------------------

LADDER = config(
    channels={"duty": hook("duty"), "sup": hook("sup"), "dir": hook("dir")},
    rules=[
        {"name": "duty", "audience": "staff", "channels": ["duty"], "triggers": ["opened"]},
        {"name": "sup", "audience": "staff", "level": 1, "channels": ["sup"],
         "triggers": ["escalated"]},
        {"name": "dir", "audience": "staff", "level": 2, "channels": ["dir"],
         "triggers": ["escalated"]},
    ],
)  # fmt: skip


def clock(db: psycopg.Connection[Any]) -> datetime:
    row = db.execute("SELECT at FROM event_clock WHERE name = 'ingest'").fetchone()
    assert row is not None
    return row[0]


def test_an_unacknowledged_burst_climbs_the_ladder_in_event_time(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(LADDER, SECRET)
    d = T + H  # detected; bursts must be acknowledged within 30 minutes
    ch, _ = store(db, n, alert("WH-1", "burst", C, T, d), alert("WH-2", "burst", C, T, d))
    burst, acked = ch.ids
    db.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = %s", (acked,))
    before = outbox(db)

    res = n.tick(db, d + 29 * MIN)
    assert (res.escalated, res.queued, res.clock) == (0, 0, d + 29 * MIN)
    assert outbox(db) == before and col(db, burst, "escalation_level") == (0,)

    # A replay jumps past both rungs at once: both escalate, at their own event times.
    res = n.tick(db, d + 65 * MIN)
    assert (res.escalated, res.queued) == (1, 2)
    assert outbox(db)[len(before) :] == [
        (burst, "escalated", 1, "sup", "staff", f"mw-{burst}-escalated-1-0-sup", None),
        (burst, "escalated", 2, "dir", "staff", f"mw-{burst}-escalated-2-0-dir", None),
    ]
    assert [p["created_at"] for p in payloads(db)[len(before) :]] == [
        iso(d + 30 * MIN), iso(d + 60 * MIN)
    ]  # fmt: skip
    assert events(db, burst, "escalated") == [
        (d + 30 * MIN, {"level": 1}), (d + 60 * MIN, {"level": 2})
    ]  # fmt: skip
    assert col(db, burst, "escalation_level") == (2,)
    assert col(db, acked, "escalation_level") == (0,) and events(db, acked, "escalated") == []

    # The event clock never goes back; the top of the ladder is the end.
    res = n.tick(db, d + 10 * MIN)
    assert res.clock == d + 65 * MIN and clock(db) == d + 65 * MIN
    assert n.tick(db, d + 10 * H).escalated == 0
    assert clock(db) == d + 10 * H
    assert len(outbox(db)) == len(before) + 2
    assert col(db, acked, "escalation_level") == (0,)


def test_escalation_is_due_exactly_at_k_times_the_ack_target(
    db: psycopg.Connection[Any], meters: None
) -> None:
    cfg = config(**{**LADDER.model_dump(), "sla": {"ack_min": {"abnormal_high": 45}}})
    n = Notifier(cfg, SECRET)
    d = T + H
    ch, _ = store(db, n, alert("WH-1", "abnormal_high", W, T, d))
    (a,) = ch.ids
    assert n.tick(db, d + 45 * MIN - timedelta(microseconds=1)).escalated == 0
    assert n.tick(db, d + 45 * MIN).escalated == 1
    assert col(db, a, "escalation_level") == (1,)
    assert n.tick(db, d + 90 * MIN - timedelta(microseconds=1)).escalated == 0
    assert n.tick(db, d + 90 * MIN).escalated == 1
    assert [(r[1], r[2], r[3]) for r in outbox(db)[1:]] == [
        ("escalated", 1, "sup"), ("escalated", 2, "dir")
    ]  # fmt: skip


def test_a_reopened_alert_gets_its_acknowledge_time_again(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(LADDER, SECRET)
    d = T + H
    ch, _ = store(db, n, alert("WH-1", "burst", C, T, d))
    (a,) = ch.ids
    db.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = %s", (a,))
    db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = %s WHERE id = %s", (d + 2 * H, a)
    )
    back = d + 5 * H
    ch, _ = store(db, n, alert("WH-1", "burst", C, back, back), reopen_within=24 * H)
    assert ch.reopened_ids == [a]
    res = n.tick(db, back + MIN)
    assert res.escalated == 0, f"escalated at {events(db, a, 'escalated')}"
    assert col(db, a, "escalation_level") == (0,)


def test_each_rung_of_a_jump_is_told_its_own_level(
    db: psycopg.Connection[Any], meters: None
) -> None:
    n = Notifier(LADDER, SECRET)
    d = T + H
    store(db, n, alert("WH-1", "burst", C, T, d))
    n.tick(db, d + 65 * MIN)
    sup, director = payloads(db)[1:]
    assert (sup["alert"]["escalation_level"], director["alert"]["escalation_level"]) == (1, 2)
    assert "level 1" in sup["text"] or "第 1 级" in sup["text"]
