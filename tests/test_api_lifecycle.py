"""The alert lifecycle through the API against a real database: acknowledge, resolve, customer
feedback (API and signed links), the audit trail and the SLA report. The live stream is in
``test_api_stream``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from detectors.alert import Alert, Severity
from meterwatch.domain import Meter
from meterwatch.settings import MIN_SECRET, Settings
from notify.links import feedback_token
from storage.alerts import apply_alerts
from storage.registry import upsert_meters

SECRET = "test-secret-" + "x" * 32
T0 = datetime(2026, 11, 21, tzinfo=UTC)
W, C = Severity.WARNING, Severity.CRITICAL


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, secret_key=SECRET)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def leak(db: psycopg.Connection[Any]) -> int:
    """An open leak on WH-1 (acme): began at T0, seen at 1 h and 7 h, 1.5 m3 a day."""
    upsert_meters(db, [Meter("WH-1", tenant="acme", dma="north", tariff_cny_per_m3=4.0)])
    ch = apply_alerts(db, [
        Alert("WH-1", "leak", W, at(0), at(1), {"min_flow_lph": 38.0}, 1.2),
        Alert("WH-1", "leak", W, at(0), at(7), {"min_flow_lph": 62.5}, 1.5),
    ])  # fmt: skip
    db.commit()
    return ch.ids[0]


def clear(db: psycopg.Connection[Any], hours: float) -> None:
    """The detector says the leak is over at T0 + ``hours``."""
    apply_alerts(db, [Alert("WH-1", "leak", W, at(0), at(hours), {}, None, cleared=True)])
    db.commit()


def post(client: TestClient, path: str, status: int = 200, **body: Any) -> dict[str, Any]:
    r = client.post(f"/api/v1/alerts/{path}", json=body)
    assert r.status_code == status, r.text
    return dict(r.json())


def kinds(client: TestClient, alert_id: int) -> list[tuple[str, str]]:
    r = client.get(f"/api/v1/alerts/{alert_id}/events")
    assert r.status_code == 200, r.text
    return [(e["kind"], e["actor"]) for e in r.json()]


def rows(db: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    db.rollback()  # a fresh snapshot: see what the API committed
    return db.execute(query, params).fetchall()


def test_acknowledge_then_resolve_with_the_audit_trail(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    a = post(client, f"{leak}/acknowledge", actor="li.wei", note="on my way")
    assert (a["status"], a["acknowledged_by"], a["resolved_at"]) == ("acknowledged", "li.wei", None)
    assert a["acknowledged_at"] is not None
    assert a["ack_due_at"] == "2026-11-21T01:30:00Z"  # detected at 1 h, leaks within 30 min
    again = post(client, f"{leak}/acknowledge", actor="wang.fang")
    assert again == a  # a no-op: the first acknowledgement stands

    r = post(client, f"{leak}/resolve", actor="wang.fang", cause="other", note="valve replaced")
    assert (r["status"], r["resolution"], r["resolved_by"], r["resolution_note"]) == (
        "resolved", "other", "wang.fang", "valve replaced"
    )  # fmt: skip
    assert r["acknowledged_by"] == "li.wei"
    # 1.5 m3 a day from T0 to the last sighting at 7 h.
    assert r["volume_lost_m3"] == pytest.approx(1.5 * 7 / 24)

    assert "resolved" in post(client, f"{leak}/acknowledge", 409, actor="li.wei")["detail"]
    assert "resolved" in post(client, f"{leak}/resolve", 409, actor="li", cause="other")["detail"]
    assert kinds(client, leak) == [
        ("opened", "system"), ("acknowledged", "li.wei"), ("resolved", "wang.fang")
    ]  # fmt: skip
    events = client.get(f"/api/v1/alerts/{leak}/events").json()
    assert events[1]["detail"] == {"note": "on my way"}
    assert events[2]["detail"]["cause"] == "other"
    # The default config sends everything to the dashboard's live stream (staff).
    deliveries = client.get(f"/api/v1/alerts/{leak}/deliveries").json()
    assert [(d["trigger"], d["channel"], d["audience"], d["status"]) for d in deliveries] == [
        ("resolved", "live", "staff", "pending")
    ]
    assert deliveries[0]["tries"] == []


def test_deliveries_show_their_attempts(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    post(client, f"{leak}/resolve", actor="li.wei", cause="other")
    (outbox_id,) = rows(db, "SELECT id FROM outbox WHERE alert_id = %s", leak)[0]
    db.execute(
        """INSERT INTO deliveries (outbox_id, attempt, channel, at, duration_ms, ok, detail)
           VALUES (%s, 1, 'live', %s, 12.5, false, 'timeout'), (%s, 2, 'live', %s, 3, true, '')""",
        (outbox_id, at(8), outbox_id, at(9)),
    )
    db.commit()
    (d,) = client.get(f"/api/v1/alerts/{leak}/deliveries").json()
    assert [(t["attempt"], t["ok"], t["detail"], t["at"]) for t in d["tries"]] == [
        (1, False, "timeout", "2026-11-21T08:00:00Z"), (2, True, "", "2026-11-21T09:00:00Z")
    ]  # fmt: skip


def test_a_repair_waits_for_the_data_while_the_condition_lasts(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    a = post(client, f"{leak}/resolve", actor="zhang.min", cause="leak_repaired")
    assert (a["status"], a["resolved_at"], a["repair_reported_by"], a["acknowledged_by"]) == (
        "acknowledged", None, "zhang.min", "zhang.min"
    )  # fmt: skip
    assert a["repair_reported_at"] is not None and a["volume_lost_m3"] is None
    assert kinds(client, leak) == [
        ("opened", "system"), ("acknowledged", "zhang.min"), ("repair_reported", "zhang.min")
    ]  # fmt: skip
    assert rows(db, "SELECT count(*) FROM outbox WHERE alert_id = %s", leak) == [(0,)]

    clear(db, 13)  # the data shows the leak gone 13 h after it began
    r = post(client, f"{leak}/resolve", actor="zhang.min", cause="meter_fault")
    assert (r["status"], r["resolution"], r["cleared_at"]) == (
        "resolved", "meter_fault", "2026-11-21T13:00:00Z"
    )  # fmt: skip
    assert r["volume_lost_m3"] == pytest.approx(1.5 * 13 / 24)
    assert [k for k, _ in kinds(client, leak)] == [
        "opened", "acknowledged", "repair_reported", "cleared", "resolved"
    ]  # fmt: skip


def test_customer_use_while_active_suppresses_the_next_repeat(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = post(client, f"{leak}/resolve", actor="li.wei", cause="customer_use", note="pool")
    assert (r["status"], r["resolution"]) == ("resolved", "customer_use")
    assert [k for k, _ in kinds(client, leak)] == [
        "opened", "suppressed", "acknowledged", "resolved"
    ]  # fmt: skip
    ((meter, type_, since, until, actor),) = rows(
        db, "SELECT meter_id, type, since, until, actor FROM suppressions WHERE alert_id = %s", leak
    )
    # From the latest sighting, so repeats still on their way are covered, for 7 days (default).
    assert (meter, type_, since, actor) == ("WH-1", "leak", at(7), "li.wei")
    assert abs(until - datetime.now(UTC) - timedelta(days=7)) < timedelta(minutes=5)
    ch = apply_alerts(
        db, [Alert("WH-1", "leak", W, at(0), at(9), {}, 1.5)], reopen_within=timedelta(hours=24)
    )
    db.commit()
    assert (ch.suppressed, ch.opened, ch.reopened) == (1, 0, 0)


def test_false_alarm_after_the_condition_cleared_suppresses_nothing(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    clear(db, 10)
    r = post(client, f"{leak}/resolve", actor="li.wei", cause="false_alarm")
    assert r["status"] == "resolved"
    assert rows(db, "SELECT count(*) FROM suppressions") == [(0,)]


def test_feedback_expected_suppresses_records_and_resolves(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = post(client, f"{leak}/feedback", answer="expected", days=3, note="filling the pool")
    assert (r["status"], r["resolution"], r["resolved_by"], r["resolution_note"]) == (
        "resolved", "customer_use", "customer", "filling the pool"
    )  # fmt: skip
    assert [k for k, _ in kinds(client, leak)] == ["opened", "feedback", "suppressed", "resolved"]
    assert rows(
        db,
        """SELECT meter_id, type, answer, suppress_days, note, actor, alert_started_at, evidence
           FROM feedback WHERE alert_id = %s""",
        leak,
    ) == [("WH-1", "leak", "expected", 3.0, "filling the pool", "customer", at(0),
           {"min_flow_lph": 62.5})]  # fmt: skip
    ((since, until),) = rows(db, "SELECT since, until FROM suppressions WHERE alert_id = %s", leak)
    assert since == at(0)
    assert abs(until - datetime.now(UTC) - timedelta(days=3)) < timedelta(minutes=5)

    # Answered again after it was resolved: recorded, suppressed again (capped), nothing reopens.
    again = post(client, f"{leak}/feedback", answer="expected", days=1000, actor="staff:li.wei")
    assert again["resolved_by"] == "customer"
    assert rows(db, "SELECT max(suppress_days), count(*) FROM feedback") == [(90.0, 2)]
    assert rows(db, "SELECT count(*) FROM suppressions") == [(2,)]


def test_feedback_not_expected_keeps_the_alert_open_and_tells_staff(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = post(client, f"{leak}/feedback", answer="not_expected", note="nobody home")
    assert (r["status"], r["resolved_at"]) == ("open", None)
    assert kinds(client, leak) == [("opened", "system"), ("feedback", "customer")]
    assert rows(db, "SELECT answer, note FROM feedback") == [("not_expected", "nobody home")]
    assert rows(db, "SELECT count(*) FROM suppressions") == [(0,)]
    outbox = rows(db, "SELECT trigger, audience FROM outbox WHERE alert_id = %s ORDER BY id", leak)
    assert outbox == [("feedback", "staff")]


def test_bad_requests(client: TestClient, leak: int) -> None:
    missing = leak + 1000
    for path, body in (
        ("acknowledge", {"actor": "li"}),
        ("resolve", {"actor": "li", "cause": "other"}),
        ("feedback", {"answer": "expected"}),
    ):
        assert post(client, f"{missing}/{path}", 404, **body) == {
            "detail": f"alert {missing} not found"
        }
    for path in ("events", "deliveries"):
        assert client.get(f"/api/v1/alerts/{missing}/{path}").status_code == 404
    bad: tuple[tuple[str, dict[str, Any]], ...] = (
        ("acknowledge", {}),  # until there is authentication, actor is required
        ("acknowledge", {"actor": ""}),
        ("acknowledge", {"actor": "li", "extra": 1}),
        ("resolve", {"actor": "li"}),
        ("resolve", {"actor": "li", "cause": "fixed"}),
        ("feedback", {"answer": "maybe"}),
        ("feedback", {"answer": "expected", "days": 0}),
        ("feedback", {"answer": "expected", "days": -2}),
    )
    for path, body in bad:
        post(client, f"{leak}/{path}", 422, **body)
    assert client.post("/api/v1/alerts/0/acknowledge", json={"actor": "li"}).status_code == 422
    assert kinds(client, leak) == [("opened", "system")]


def test_list_filters_by_team(client: TestClient, db: psycopg.Connection[Any], leak: int) -> None:
    db.execute("UPDATE alerts SET team = 'east' WHERE id = %s", (leak,))
    db.commit()
    assert [a["id"] for a in client.get("/api/v1/alerts?team=east").json()["items"]] == [leak]
    assert client.get("/api/v1/alerts?team=west").json()["total"] == 0


def set_clock(db: psycopg.Connection[Any], t: datetime) -> None:
    """Ingest's event clock (its watermark) stands at ``t``."""
    db.execute("INSERT INTO event_clock (name, at) VALUES ('ingest', %s)", (t,))
    db.commit()


def test_resolving_an_unacknowledged_alert_records_the_acknowledgement(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = post(client, f"{leak}/resolve", actor="li.wei", cause="other")
    assert (r["acknowledged_by"], r["acknowledged_at"]) == ("li.wei", r["resolved_at"])
    assert kinds(client, leak) == [
        ("opened", "system"), ("acknowledged", "li.wei"), ("resolved", "li.wei")
    ]  # fmt: skip


def test_a_repeated_repair_report_changes_nothing(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    first = post(client, f"{leak}/resolve", actor="zhang.min", cause="leak_repaired")
    again = post(client, f"{leak}/resolve", actor="wang.fang", cause="meter_fault", note="x")
    assert again == first  # the first report and its reporter stand
    assert [k for k, _ in kinds(client, leak)] == ["opened", "acknowledged", "repair_reported"]


def test_a_customer_answer_is_not_an_acknowledgement(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = post(client, f"{leak}/feedback", answer="expected")
    assert (r["status"], r["resolved_by"]) == ("resolved", "customer")
    assert (r["acknowledged_at"], r["acknowledged_by"]) == (None, None)
    assert "acknowledged" not in [k for k, _ in kinds(client, leak)]


def test_expected_on_an_old_alert_also_resolves_the_newer_one(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    clear(db, 10)
    post(client, f"{leak}/resolve", actor="li.wei", cause="other")
    # The next episode, days later: a new alert, open and escalating.
    ch = apply_alerts(db, [Alert("WH-1", "leak", W, at(40), at(41), {}, 1.0)])
    db.commit()
    (newer,) = ch.ids
    assert newer != leak

    # The customer finally taps "expected" on the first reminder's link.
    r = client.post(link(leak), data={"answer": "expected", "days": "3"})
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/alerts/{leak}").json()["resolved_by"] == "li.wei"
    n = client.get(f"/api/v1/alerts/{newer}").json()
    assert (n["status"], n["resolution"], n["resolved_by"], n["acknowledged_by"]) == (
        "resolved", "customer_use", "customer", None
    )  # fmt: skip
    assert kinds(client, newer) == [
        ("opened", "system"), ("feedback", "customer"), ("resolved", "customer")
    ]  # fmt: skip
    events = client.get(f"/api/v1/alerts/{newer}/events").json()
    assert events[1]["detail"]["answered_alert"] == leak
    outbox = rows(db, "SELECT trigger FROM outbox WHERE alert_id = %s ORDER BY id", newer)
    assert ("resolved",) in outbox
    # Only the answered alert has the labelled case.
    assert rows(db, "SELECT alert_id FROM feedback") == [(leak,)]


def test_expected_leaves_alerts_outside_the_suppression_alone(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    clear(db, 10)
    post(client, f"{leak}/resolve", actor="li.wei", cause="other")
    apply_alerts(db, [Alert("WH-1", "burst", C, at(40), at(41), {}, 1.0)])  # another type
    db.commit()
    set_clock(db, at(20))  # the data stands before the next leak: the window ends at 20 h + 1 day
    ch = apply_alerts(db, [Alert("WH-1", "leak", W, at(50), at(50), {}, 1.0)])
    db.commit()
    post(client, f"{leak}/feedback", answer="expected", days=1)
    assert rows(db, "SELECT count(*) FROM alerts WHERE status <> 'resolved'") == [(2,)]
    assert client.get(f"/api/v1/alerts/{ch.ids[0]}").json()["status"] == "open"


def test_not_expected_replayed_notifies_staff_once_per_quiet_period(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    url = link(leak)
    for _ in range(3):  # the customer taps Submit three times, or the link is replayed
        r = client.post(url, data={"answer": "not_expected"})
        assert r.status_code == 200 and "Our staff will contact you" in r.text
    assert rows(db, "SELECT count(*) FROM feedback WHERE alert_id = %s", leak) == [(3,)]
    assert rows(db, "SELECT count(*) FROM outbox WHERE alert_id = %s", leak) == [(1,)]
    events = client.get(f"/api/v1/alerts/{leak}/events").json()
    assert [e["detail"]["staff_notified"] for e in events[1:]] == [True, False, False]

    # Past the quiet period the customer is heard again, with a notification of its own.
    db.execute("UPDATE feedback SET at = at - interval '7 hours'")
    db.commit()
    post(client, f"{leak}/feedback", answer="not_expected", note="still running")
    assert rows(db, "SELECT count(*), count(DISTINCT idem_key) FROM outbox") == [(2, 2)]


def test_suppression_runs_on_the_event_clock(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    set_clock(db, at(100))  # a replay ahead of the wall clock
    post(client, f"{leak}/feedback", answer="expected", days=2)
    assert rows(db, "SELECT since, until FROM suppressions") == [(at(0), at(100 + 48))]
    # Detector repeats up to then are dropped, though the wall clock is days behind.
    ch = apply_alerts(db, [Alert("WH-1", "leak", W, at(140), at(140), {}, 1.0)])
    db.commit()
    assert (ch.suppressed, ch.opened) == (1, 0)


def test_a_suppression_lasts_at_least_an_hour(
    client: TestClient, db: psycopg.Connection[Any]
) -> None:
    upsert_meters(db, [Meter("WH-2", tenant="acme")])
    soon = datetime.now(UTC) + timedelta(days=1)  # event time ahead of the wall clock, no clock
    ch = apply_alerts(db, [Alert("WH-2", "leak", W, soon, soon, {}, 1.0)])
    db.commit()
    r = post(client, f"{ch.ids[0]}/feedback", answer="expected", days=1e-12)
    assert r["status"] == "resolved"
    ((length,),) = rows(db, "SELECT until - since FROM suppressions")
    assert length == timedelta(hours=1)


def test_notifications_are_timed_at_the_event_clock(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    set_clock(db, at(30))
    post(client, f"{leak}/feedback", answer="not_expected")
    post(client, f"{leak}/resolve", actor="li.wei", cause="other")
    assert rows(
        db, "SELECT trigger, payload->>'created_at' FROM outbox WHERE alert_id = %s ORDER BY id",
        leak,
    ) == [("feedback", "2026-11-22T06:00:00Z"), ("resolved", "2026-11-22T06:00:00Z")]  # fmt: skip


def hold(db: psycopg.Connection[Any], alert_id: int, key: str, audience: str, held: bool) -> None:
    db.execute(
        """INSERT INTO outbox (alert_id, trigger, channel, audience, idem_key, payload, hold_until)
           VALUES (%s, 'opened', 'sms', %s, %s, '{}', %s)""",
        (alert_id, audience, key, at(30) if held else None),
    )
    db.commit()


@pytest.mark.parametrize("how", ["resolve", "expected"])
def test_closing_cancels_held_customer_reminders(
    client: TestClient, db: psycopg.Connection[Any], leak: int, how: str
) -> None:
    hold(db, leak, "held-customer", "customer", True)
    hold(db, leak, "held-staff", "staff", True)
    hold(db, leak, "due-customer", "customer", False)
    if how == "resolve":
        post(client, f"{leak}/resolve", actor="li.wei", cause="false_alarm")
    else:
        post(client, f"{leak}/feedback", answer="expected")
    assert rows(
        db, "SELECT idem_key, status, last_error FROM outbox WHERE idem_key LIKE '%%-%%' "
        "AND trigger = 'opened' ORDER BY id",
    ) == [
        ("held-customer", "cancelled", "alert resolved before quiet hours ended"),
        ("held-staff", "pending", None),
        ("due-customer", "pending", None),
    ]  # fmt: skip


def test_deadlines_run_from_the_sla_start(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    # Detected at 1 h in a day's upload that arrived at 20 h: the clock started at the upload.
    db.execute("UPDATE alerts SET sla_from = %s WHERE id = %s", (at(20), leak))
    db.commit()
    a = client.get(f"/api/v1/alerts/{leak}").json()
    assert (a["sla_from"], a["ack_due_at"], a["resolve_due_at"]) == (
        "2026-11-21T20:00:00Z", "2026-11-21T20:30:00Z", "2026-11-22T04:00:00Z"
    )  # fmt: skip


# Customer feedback links.


def link(alert_id: int, *, expires_in: int = 3600, secret: str = SECRET) -> str:
    return f"/api/v1/feedback/{feedback_token(secret, alert_id, int(time.time()) + expires_in)}"


def test_feedback_link_get_changes_nothing_and_post_applies(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    url = link(leak)
    for _ in range(3):  # a chat app's preview, a mail scanner, the customer
        r = client.get(url, params={"answer": "expected"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert (r.headers["cache-control"], r.headers["referrer-policy"]) == (
            "no-store", "no-referrer"
        )  # fmt: skip
        assert "WH-1" in r.text and 'value="expected" required checked' in r.text
        assert "Is this water use expected?" in r.text and "这次用水是否正常" in r.text
    assert client.get(f"/api/v1/alerts/{leak}").json()["status"] == "open"
    assert rows(db, "SELECT count(*) FROM feedback") == [(0,)]
    assert kinds(client, leak) == [("opened", "system")]

    r = client.post(
        url,
        content="answer=expected&days=2&note=%E8%93%84%E6%B0%B4%20<b>",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and "Thank you" in r.text
    a = client.get(f"/api/v1/alerts/{leak}").json()
    assert (a["status"], a["resolution"], a["resolved_by"]) == (
        "resolved", "customer_use", "customer"
    )  # fmt: skip
    assert rows(db, "SELECT answer, suppress_days, note FROM feedback") == [
        ("expected", 2.0, "蓄水 <b>")
    ]


def test_feedback_link_not_expected(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    r = client.post(link(leak), data={"answer": "not_expected", "days": "", "note": ""})
    assert r.status_code == 200 and "Our staff will contact you" in r.text
    assert client.get(f"/api/v1/alerts/{leak}").json()["status"] == "open"
    assert rows(db, "SELECT trigger FROM outbox WHERE alert_id = %s", leak) == [("feedback",)]


def test_feedback_link_refuses_bad_tokens_and_input(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    good = link(leak)
    base, token = good.rsplit("/", 1)
    _, expires, mac = token.split(".")
    bad = {
        "tampered mac": good[:-1] + ("A" if mac[-1] != "A" else "B"),
        "another alert": f"{base}/{leak + 1}.{expires}.{mac}",
        "another secret": link(leak, secret="other-secret"),
        "garbage": "/api/v1/feedback/not-a-token",
        "expired": link(leak, expires_in=-1),
    }
    for name, url in bad.items():
        for r in (client.get(url), client.post(url, data={"answer": "expected"})):
            assert r.status_code == 403, (name, r.request.method, r.text)
            assert r.headers["content-type"].startswith("text/html")
            assert ("expired" in r.text) == (name == "expired"), name
    assert client.post(good, data={"note": "x"}).status_code == 422
    assert client.post(good, data={"answer": "expected", "days": "nan"}).status_code == 422
    assert client.post(good, data={"answer": "expected", "days": "-1"}).status_code == 422
    assert client.get(link(leak + 1000)).status_code == 404
    assert client.post(link(leak + 1000), data={"answer": "expected"}).status_code == 404
    assert rows(db, "SELECT count(*) FROM feedback") == [(0,)]


@pytest.mark.parametrize("secret", ["", "x" * (MIN_SECRET - 1)])
def test_feedback_link_without_a_secret_is_503(db_url: str, leak: int, secret: str) -> None:
    # A key too short to sign with is no key: no link signed with it is accepted either.
    settings = Settings(database_url=db_url, secret_key=secret)
    assert settings.signing_key == ""
    with TestClient(create_app(settings)) as c:
        for url in (link(leak), link(leak, secret=secret or SECRET)):
            for r in (c.get(url), c.post(url, data={"answer": "expected"})):
                assert r.status_code == 503
                assert "METERWATCH_SECRET_KEY" in r.text


def test_feedback_link_tolerates_odd_input(
    client: TestClient, db: psycopg.Connection[Any], leak: int
) -> None:
    url = link(leak)
    for value in ("x" * 21, "maybe", ""):  # a mangled link still shows the question
        r = client.get(url, params={"answer": value})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "required checked" not in r.text and "Is this water use expected?" in r.text
    fields = "&".join(f"f{i}=1" for i in range(11)) + "&answer=expected"
    r = client.post(
        url, content=fields, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")
    assert "The form is too large" in r.text and "提交的内容过长" in r.text
    assert rows(db, "SELECT count(*) FROM feedback") == [(0,)]


def test_feedback_page_shows_the_meters_local_time(
    client: TestClient, db: psycopg.Connection[Any]
) -> None:
    upsert_meters(db, [Meter("WH-B", tenant="acme", timezone="Europe/Berlin")])
    ch = apply_alerts(db, [Alert("WH-B", "leak", W, at(0), at(1), {}, 1.0)])
    db.commit()
    r = client.get(link(ch.ids[0]))
    assert "2026-11-21 01:00" in r.text  # midnight UTC is 01:00 in Berlin (08:00 in Shanghai)
    # A meter the registry does not know: the deployment's zone.
    ch = apply_alerts(db, [Alert("WH-X", "leak", W, at(0), at(1), {}, 1.0)])
    db.commit()
    assert "2026-11-21 08:00" in client.get(link(ch.ids[0])).text


# SLA report.


def insert_alert(
    db: psycopg.Connection[Any],
    *,
    team: str,
    type: str,
    severity: str,
    detected: datetime,
    ack_min: float | None = None,
    resolve_h: float | None = None,
    tenant: str = "acme",
) -> None:
    ack = detected + timedelta(minutes=ack_min) if ack_min is not None else None
    res = detected + timedelta(hours=resolve_h) if resolve_h is not None else None
    db.execute(
        """INSERT INTO alerts (tenant, meter_id, type, severity, status, started_at, detected_at,
               last_seen_at, acknowledged_at, resolved_at, team)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (tenant, f"M-{type}-{detected.timestamp()}", type, severity,
         "resolved" if res else "acknowledged" if ack else "open",
         detected, detected, detected, ack, res, team),
    )  # fmt: skip


@pytest.fixture
def sla_alerts(db: psycopg.Connection[Any]) -> None:
    """Targets (defaults): leak/burst acknowledged in 30 min, the rest 4 h; resolved in 4 h
    (critical), 8 h (warning), 72 h (info)."""
    nov = datetime(2024, 11, 10, 2, tzinfo=UTC)
    for type_, severity, ack, res in (
        ("leak", "warning", 10, 2),  # both in time
        ("leak", "warning", 20, 10),  # resolved late
        ("leak", "critical", 60, 3),  # acknowledged late
        ("silent", "warning", 100, None),  # never resolved: missed
    ):
        insert_alert(db, team="east", type=type_, severity=severity, detected=nov, ack_min=ack,
                     resolve_h=res)  # fmt: skip
    # 17:00 UTC on 31 October is 01:00 on 1 November in Shanghai: a November alert.
    oct31 = datetime(2024, 10, 31, 17, tzinfo=UTC)
    insert_alert(db, team="east", type="abnormal_high", severity="info", detected=oct31,
                 ack_min=30, resolve_h=80)  # fmt: skip
    # Closed by the data before anyone had to react: no acknowledgement target either way.
    insert_alert(db, team="west", type="leak", severity="critical", detected=nov, resolve_h=1 / 3,
                 tenant="beta")  # fmt: skip
    # Closed after its acknowledgement target with nobody having reacted: missed.
    insert_alert(db, team="west", type="leak", severity="warning", detected=nov, resolve_h=2,
                 tenant="beta")  # fmt: skip
    db.commit()


def sla(client: TestClient, **params: Any) -> dict[str, Any]:
    r = client.get("/api/v1/sla", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sla_report_by_team_and_month(client: TestClient, sla_alerts: None) -> None:
    body = sla(client, since="2024-10-01T00:00:00+08:00", until="2024-12-01T00:00:00+08:00")
    assert (body["timezone"], body["by"], body["since"]) == (
        "Asia/Shanghai", None, "2024-09-30T16:00:00Z"
    )  # fmt: skip
    assert body["targets"]["ack_min"]["leak"] == 30 and body["targets"]["resolve_h"]["info"] == 72
    east, west = body["rows"]
    assert east == {
        "team": "east", "month": "2024-11", "type": None, "alerts": 5, "acknowledged": 5,
        # ack minutes 10, 20, 30, 60, 100
        "ack_median_min": 30.0, "ack_p90_min": pytest.approx(84.0),
        "ack_met": 4, "ack_missed": 1, "ack_within_target": 0.8,
        # resolve hours 2, 3, 10, 80 (and one never resolved)
        "resolved": 4, "resolve_median_h": 6.5, "resolve_p90_h": pytest.approx(59.0),
        "resolve_met": 2, "resolve_missed": 3, "resolve_within_target": 0.4,
    }  # fmt: skip
    assert (west["team"], west["alerts"], west["acknowledged"], west["ack_median_min"]) == (
        "west", 2, 0, None
    )  # fmt: skip
    assert (west["ack_met"], west["ack_missed"], west["ack_within_target"]) == (0, 1, 0.0)
    assert (west["resolve_met"], west["resolve_missed"], west["resolve_within_target"]) == (
        2, 0, 1.0
    )  # fmt: skip
    assert west["resolve_median_h"] == pytest.approx((1 / 3 + 2) / 2)

    # Only October, UTC: the alert that is November in Shanghai is out.
    assert sla(client, since="2024-10-01T00:00:00Z", until="2024-10-31T16:00:00Z")["rows"] == []


def test_sla_report_by_type_and_filters(client: TestClient, sla_alerts: None) -> None:
    window = {"since": "2024-10-01T00:00:00Z", "until": "2024-12-01T00:00:00Z"}
    by_type = sla(client, by="type", team="east", **window)["rows"]
    assert [r["type"] for r in by_type] == ["abnormal_high", "leak", "silent"]
    leak = by_type[1]
    assert (leak["alerts"], leak["ack_median_min"], leak["ack_p90_min"]) == (
        3, 20.0, pytest.approx(52.0)
    )  # fmt: skip
    assert (leak["ack_met"], leak["ack_missed"], leak["resolve_met"], leak["resolve_missed"]) == (
        2, 1, 2, 1
    )  # fmt: skip
    assert [r["team"] for r in sla(client, tenant="beta", **window)["rows"]] == ["west"]
    assert sla(client, team="nobody", **window)["rows"] == []
    for query in ("by=severity", "since=2024-12-01&until=2024-11-01", "team=", "since=yesterday"):
        assert client.get(f"/api/v1/sla?{query}").status_code == 422, query


def test_sla_open_alerts_count_as_missed_only_after_their_target(
    client: TestClient, db: psycopg.Connection[Any]
) -> None:
    now = datetime.now(UTC)
    insert_alert(db, team="north", type="leak", severity="critical",
                 detected=now - timedelta(minutes=10))  # fmt: skip
    insert_alert(db, team="north", type="leak", severity="critical",
                 detected=now - timedelta(minutes=40))  # fmt: skip
    db.commit()
    (row,) = sla(client, team="north")["rows"]  # the default window: these three months
    assert (row["alerts"], row["ack_met"], row["ack_missed"], row["ack_within_target"]) == (
        2, 0, 1, 0.0
    )  # fmt: skip
    assert (row["resolve_met"], row["resolve_missed"], row["resolve_within_target"]) == (
        0, 0, None
    )  # fmt: skip


def test_sla_report_runs_from_the_sla_start_and_ignores_customer_acknowledgements(
    client: TestClient, db: psycopg.Connection[Any]
) -> None:
    oct31 = datetime(2024, 10, 31, 12, tzinfo=UTC)
    # Detected on 31 October in a late upload that arrived on 2 November: a November alert,
    # acknowledged 20 min after the upload (in time), resolved 3 h after it (in time).
    insert_alert(db, team="south", type="leak", severity="critical", detected=oct31,
                 ack_min=48 * 60 + 20, resolve_h=51)  # fmt: skip
    db.execute("UPDATE alerts SET sla_from = %s WHERE team = 'south'", (oct31 + timedelta(days=2),))
    # An older row whose "acknowledgement" was a customer's answer: not acknowledged, and late.
    insert_alert(db, team="south", type="leak", severity="critical",
                 detected=datetime(2024, 11, 10, tzinfo=UTC), ack_min=5, resolve_h=2)  # fmt: skip
    db.execute(
        "UPDATE alerts SET acknowledged_by = 'customer' WHERE team = 'south' AND sla_from IS NULL"
    )
    db.commit()
    window = {"team": "south", "since": "2024-11-01T00:00:00Z", "until": "2024-12-01T00:00:00Z"}
    (row,) = sla(client, **window)["rows"]
    assert (row["month"], row["alerts"], row["acknowledged"], row["ack_median_min"]) == (
        "2024-11", 2, 1, pytest.approx(20.0)
    )  # fmt: skip
    assert (row["ack_met"], row["ack_missed"]) == (1, 1)
    assert (row["resolve_met"], row["resolve_missed"], row["resolve_median_h"]) == (
        2, 0, pytest.approx(2.5)
    )  # fmt: skip
    assert sla(client, team="south", since="2024-10-01T00:00:00Z",
               until="2024-11-01T00:00:00Z")["rows"] == []  # fmt: skip
