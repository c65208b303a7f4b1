"""The alert store and detector checkpoints on the real (plain PostgreSQL) server."""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest

from detectors.alert import SEVERITY_RANK, Alert, Severity
from meterwatch.domain import Meter
from storage.alerts import (
    COPY_MIN,
    AlertChanges,
    StoredAlert,
    apply_alerts,
    count_by_type,
    load_meta,
    load_states,
    read_alerts,
    save_meta,
    save_states,
)
from storage.db import connect
from storage.registry import upsert_meters

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def alert(
    meter_id: str = "WH-1",
    type: str = "leak",
    severity: str = "warning",
    *,
    start: float = 0,
    seen: float = 1,
    loss: float | None = None,
    cleared: bool = False,
    **evidence: Any,
) -> Alert:
    """An alert whose condition began ``start`` hours after T0 and was seen ``seen`` hours after."""
    return Alert(meter_id, type, Severity(severity), at(start), at(seen), evidence, loss, cleared)


def clear(meter_id: str = "WH-1", type: str = "leak", *, seen: float) -> Alert:
    return alert(meter_id, type, start=0, seen=seen, cleared=True)


def rows(conn: psycopg.Connection[Any]) -> list[StoredAlert]:
    return sorted(read_alerts(conn), key=lambda a: a.id)


def changes(ch: AlertChanges) -> tuple[int, int, int]:
    return ch.opened, ch.updated, ch.cleared


CORE = (
    "id", "tenant", "meter_id", "dma", "type", "severity", "status", "started_at", "detected_at",
    "last_seen_at", "resolved_at", "resolution", "evidence", "estimated_loss_m3_per_day",
    "estimated_cost_cny_per_day", "occurrences", "message",
)  # fmt: skip


def core(a: StoredAlert) -> dict[str, Any]:
    return {k: v for k, v in asdict(a).items() if k in CORE}


def events(conn: psycopg.Connection[Any]) -> list[tuple[int, str, datetime | None]]:
    return [
        (r[0], r[1], r[2])
        for r in conn.execute("SELECT alert_id, kind, event_time FROM alert_events ORDER BY id")
    ]


@pytest.fixture
def meters(db: psycopg.Connection[Any]) -> None:
    upsert_meters(db, [
        Meter("WH-1", tenant="acme", dma="wuchang-03", tariff_cny_per_m3=4.0),
        Meter("WH-2", tenant="acme", dma=None, tariff_cny_per_m3=0.0),
    ])  # fmt: skip


# --- apply_alerts -----------------------------------------------------------------------------


def test_raise_repeat_clear(db: psycopg.Connection[Any], meters: None) -> None:
    ch = apply_alerts(db, [
        alert(start=0, seen=1, loss=1.0, min_flow_lph=38.0),
        alert(start=0.5, seen=2, loss=2.0, min_flow_lph=41.0),
        clear(seen=3),
    ])  # fmt: skip
    assert changes(ch) == (1, 1, 1)
    (first,) = rows(db)
    assert ch.ids == [first.id]
    assert core(first) == {
        "id": first.id, "tenant": "acme", "meter_id": "WH-1", "dma": "wuchang-03",
        "type": "leak", "severity": "warning", "status": "open",
        "started_at": at(0), "detected_at": at(1), "last_seen_at": at(2), "resolved_at": None,
        "resolution": None, "evidence": {"min_flow_lph": 41.0},
        "estimated_loss_m3_per_day": 2.0, "estimated_cost_cny_per_day": 8.0, "occurrences": 2,
        "message": {},
    }  # fmt: skip
    cleared = db.execute("SELECT cleared_at FROM alerts WHERE id = %s", (first.id,)).fetchone()
    assert cleared == (at(3),), "a clear ends the condition; the scheduler resolves the alert"
    assert events(db) == [(first.id, "opened", at(1)), (first.id, "cleared", at(3))]


def test_a_condition_that_returns_before_resolution_continues_the_alert(
    db: psycopg.Connection[Any], meters: None
) -> None:
    ch = apply_alerts(db, [alert(start=0, seen=1), clear(seen=3), alert(start=4, seen=5, loss=0.5)])
    assert changes(ch) == (1, 1, 1)
    (a,) = rows(db)
    assert (a.status, a.started_at, a.detected_at, a.last_seen_at, a.occurrences) == (
        "open", at(0), at(1), at(5), 2
    )  # fmt: skip
    assert db.execute("SELECT cleared_at FROM alerts").fetchone() == (None,)
    assert [k for _, k, _ in events(db)] == ["opened", "cleared", "returned"]


def test_repeats_in_later_calls_update_the_open_alert(
    db: psycopg.Connection[Any], meters: None
) -> None:
    assert changes(apply_alerts(db, [alert(severity="info", start=2, seen=3, loss=1.0)])) == (
        1,
        0,
        0,
    )
    ch = apply_alerts(db, [alert(severity="critical", start=1, seen=5, loss=None, flow=9)])
    assert changes(ch) == (0, 1, 0)
    ch = apply_alerts(db, [alert(severity="warning", start=4, seen=4, loss=0.25)])  # late, milder
    assert changes(ch) == (0, 1, 0)
    (a,) = rows(db)
    assert ch.ids == [a.id]
    assert a.severity == "critical", "severity never goes down while the alert is open"
    assert (a.started_at, a.detected_at, a.last_seen_at) == (at(1), at(3), at(5))
    assert (a.evidence, a.estimated_loss_m3_per_day, a.estimated_cost_cny_per_day) == (
        {},
        0.25,
        1.0,
    )
    assert (a.status, a.occurrences) == ("open", 3)


def test_a_rise_in_severity_goes_to_the_audit_trail(
    db: psycopg.Connection[Any], meters: None
) -> None:
    # Severities come back from the database as plain strings; the ranks take them as they are.
    assert [SEVERITY_RANK[s] for s in ("info", "warning", "critical")] == [0, 1, 2]
    (alert_id,) = apply_alerts(db, [alert(severity="warning", seen=1)]).ids
    apply_alerts(db, [alert(severity="critical", seen=2)])
    apply_alerts(db, [alert(severity="info", seen=3)])  # milder: the alert stays critical
    got = db.execute("SELECT alert_id, kind, detail FROM alert_events ORDER BY id").fetchall()
    assert got == [
        (alert_id, "opened", {"severity": "warning"}),
        (alert_id, "severity", {"from": "warning", "to": "critical"}),
    ]


def test_tenant_dma_and_cost_come_from_the_registry(
    db: psycopg.Connection[Any], meters: None
) -> None:
    apply_alerts(db, [
        alert("WH-1", loss=0.91), alert("WH-2", loss=0.5), alert("WH-9", "silent", loss=2.0),
        alert("WH-1", "burst", "critical"),
    ])  # fmt: skip
    got = {(a.meter_id, a.type): a for a in rows(db)}
    assert len(got) == 4
    wh1 = got[("WH-1", "leak")]
    assert (wh1.tenant, wh1.dma, wh1.estimated_cost_cny_per_day) == ("acme", "wuchang-03", 3.64)
    wh2 = got[("WH-2", "leak")]
    assert (wh2.tenant, wh2.dma, wh2.estimated_cost_cny_per_day) == ("acme", None, 0.0)
    unknown = got[("WH-9", "silent")]
    assert (unknown.tenant, unknown.dma, unknown.estimated_loss_m3_per_day) == (
        "unassigned", None, 2.0
    )  # fmt: skip
    assert unknown.estimated_cost_cny_per_day is None, "no tariff is known for an unknown meter"
    burst = got[("WH-1", "burst")]
    assert (burst.estimated_loss_m3_per_day, burst.estimated_cost_cny_per_day) == (None, None)
    # A repeat keeps the tenant the alert was raised for, even if the meter has moved since.
    db.execute(
        "UPDATE meters SET tenant = 'unassigned', tariff_cny_per_m3 = 2 WHERE meter_id = 'WH-1'"
    )
    apply_alerts(db, [alert("WH-1", loss=1.0)])
    wh1 = next(a for a in rows(db) if (a.meter_id, a.type) == ("WH-1", "leak"))
    assert (wh1.tenant, wh1.estimated_cost_cny_per_day) == ("acme", 2.0)


def test_clears_without_an_open_alert_do_nothing(db: psycopg.Connection[Any]) -> None:
    ch = apply_alerts(db, [clear(seen=1), clear(seen=2)])
    assert (changes(ch), ch.ids, rows(db)) == ((0, 0, 0), [], [])
    ch = apply_alerts(db, [alert(seen=3), clear(seen=4), clear(seen=5)])
    assert changes(ch) == (1, 0, 1)
    assert len(rows(db)) == 1
    assert db.execute("SELECT status, cleared_at FROM alerts").fetchone() == ("open", at(4))
    assert changes(apply_alerts(db, [clear(seen=6)])) == (0, 0, 0), "already cleared"
    db.execute("UPDATE alerts SET status = 'resolved', resolved_at = cleared_at")
    assert changes(apply_alerts(db, [clear(seen=7)])) == (0, 0, 0)
    assert changes(apply_alerts(db, [])) == (0, 0, 0)


def test_acknowledged_alerts_take_repeats_and_clears(db: psycopg.Connection[Any]) -> None:
    apply_alerts(db, [alert(seen=1)])
    db.execute("UPDATE alerts SET status = 'acknowledged'")
    assert changes(apply_alerts(db, [alert(seen=2)])) == (0, 1, 0)
    (a,) = rows(db)
    assert (a.status, a.occurrences) == ("acknowledged", 2)
    assert changes(apply_alerts(db, [clear(seen=3), alert(seen=4)])) == (0, 1, 1)
    (a,) = rows(db)
    assert (a.status, a.occurrences) == ("acknowledged", 3)
    db.execute("UPDATE alerts SET status = 'resolved', resolved_at = %s", (at(5),))
    assert changes(apply_alerts(db, [alert(seen=6)])) == (1, 0, 0)
    old, new = rows(db)
    assert (old.status, new.status) == ("resolved", "open")


def test_a_return_soon_after_resolution_reopens_the_alert(db: psycopg.Connection[Any]) -> None:
    day = timedelta(hours=24)
    apply_alerts(db, [alert(seen=1), clear(seen=2)])
    db.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = %s, resolution = 'x'", (at(3),)
    )
    ch = apply_alerts(db, [alert(seen=20), alert(seen=21)], reopen_within=day)
    (a,) = rows(db)
    assert (ch.reopened, ch.reopened_ids, ch.opened, ch.updated) == (1, [a.id], 0, 2)
    assert (a.status, a.resolved_at, a.resolution, a.occurrences, a.last_seen_at) == (
        "open", None, None, 3, at(21)
    )  # fmt: skip
    assert db.execute("SELECT reopened FROM alerts").fetchone() == (1,)
    assert [k for _, k, _ in events(db)][-1] == "reopened"
    # Later than reopen_within after the resolution: a new alert.
    db.execute("UPDATE alerts SET status = 'resolved', resolved_at = %s", (at(22),))
    ch = apply_alerts(db, [alert(seen=47)], reopen_within=day)
    assert (ch.reopened, ch.opened) == (0, 1)
    assert [a.status for a in rows(db)] == ["resolved", "open"]


def test_suppressed_raises_change_nothing(db: psycopg.Connection[Any]) -> None:
    db.execute(
        """INSERT INTO suppressions (meter_id, type, since, until, actor)
           VALUES ('WH-1', 'leak', %s, %s, 'customer')""",
        (at(0), at(10)),
    )
    ch = apply_alerts(db, [alert(seen=1), alert(seen=2), alert("WH-1", "burst", seen=2)])
    assert (ch.opened, ch.updated, ch.suppressed) == (1, 0, 2)
    assert [(a.meter_id, a.type) for a in rows(db)] == [("WH-1", "burst")]
    ch = apply_alerts(db, [alert(seen=10)])
    assert (ch.opened, ch.suppressed) == (1, 0), "the suppression ends at its until"


def test_keys_are_independent_and_keep_their_own_order(db: psycopg.Connection[Any]) -> None:
    ch = apply_alerts(db, [
        alert("A", seen=1), clear("B", seen=1), alert("B", seen=2), alert("A", "silent", seen=2),
        clear("A", seen=3), alert("B", seen=3), alert("A", seen=4), clear("B", seen=5),
    ])  # fmt: skip
    assert changes(ch) == (3, 2, 2)
    got = [(a.meter_id, a.type, a.status, a.detected_at, a.occurrences) for a in rows(db)]
    assert sorted(got) == [
        ("A", "leak", "open", at(1), 2),
        ("A", "silent", "open", at(2), 1),
        ("B", "leak", "open", at(2), 2),
    ]
    cleared = db.execute("SELECT meter_id, cleared_at FROM alerts ORDER BY meter_id, type")
    assert cleared.fetchall() == [("A", None), ("A", None), ("B", at(5))]


def _state(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT meter_id, type, severity, status, started_at, detected_at, last_seen_at,
                  resolved_at, resolution, evidence, estimated_loss_m3_per_day,
                  estimated_cost_cny_per_day, occurrences, cleared_at
           FROM alerts ORDER BY meter_id, type, detected_at, status"""
    ).fetchall()


def test_one_call_equals_one_call_per_alert(db: psycopg.Connection[Any], meters: None) -> None:
    """Repeats are merged before they reach the database; the rows must not show it."""
    rng = random.Random(11)
    for trial in range(5):
        stream = []
        for i in range(60):
            stream.append(
                alert(
                    rng.choice(["WH-1", "WH-2", "WH-3"]), rng.choice(["leak", "silent"]),
                    rng.choice(["info", "warning", "critical"]),
                    start=rng.uniform(0, 50), seen=rng.uniform(0, 50),
                    loss=rng.choice([None, rng.uniform(0, 3)]), cleared=rng.random() < 0.3, i=i,
                )
            )  # fmt: skip
        ch = apply_alerts(db, stream)
        together = _state(db)
        db.execute("TRUNCATE alerts CASCADE")
        one_by_one = [apply_alerts(db, [a]) for a in stream]
        assert _state(db) == together, f"trial {trial}"
        assert changes(ch) == tuple(map(sum, zip(*map(changes, one_by_one), strict=True)))
        assert ch.opened + ch.updated == sum(not a.cleared for a in stream)
        db.execute("TRUNCATE alerts CASCADE")


def test_thousands_of_alerts_in_one_call(db: psycopg.Connection[Any]) -> None:
    n = 5000
    ids = [f"WH-{i:06d}" for i in range(n)]
    ch = apply_alerts(db, [alert(m, "silent", seen=1, silent_s=3600) for m in ids])
    assert changes(ch) == (n, 0, 0)
    assert len(set(ch.ids)) == n
    repeat = [alert(m, "silent", "critical", seen=2, silent_s=7200) for m in ids]
    ch2 = apply_alerts(db, repeat + [alert(m, "silent", seen=1.5) for m in ids[:10]])
    assert changes(ch2) == (0, n + 10, 0)
    assert sorted(ch2.ids) == sorted(ch.ids)
    ch3 = apply_alerts(db, [clear(m, "silent", seen=3) for m in ids] + [alert(ids[0], "silent")])
    assert changes(ch3) == (0, 1, n)
    got = db.execute(
        """SELECT cleared_at IS NULL, severity, occurrences, evidence, last_seen_at, count(*)
           FROM alerts GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3"""
    ).fetchall()
    assert got == [
        (False, "critical", 2, {"silent_s": 7200}, at(2), n - 10),
        (False, "critical", 3, {}, at(2), 9),  # evidence of the last repeat in the list
        (True, "critical", 4, {}, at(2), 1),  # cleared, then back
    ]
    # opened, severity (warning -> critical), cleared for each; one returned
    assert db.execute("SELECT count(*) FROM alert_events").fetchone() == (3 * n + 1,)


def test_the_caller_commits(db_url: str, db: psycopg.Connection[Any]) -> None:
    apply_alerts(db, [alert(seen=1)])
    save_states(db, {"WH-1": b"s"})
    save_meta(db, "watermark", b"w")
    with connect(db_url) as other:
        assert other.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    db.rollback()
    assert (rows(db), load_states(db), load_meta(db, "watermark")) == ([], {}, None)


def test_autocommit_connections_get_a_transaction_per_call(db_url: str) -> None:
    with connect(db_url, autocommit=True) as conn:
        bad = alert("A", seen=3, unserialisable={1, 2})
        with pytest.raises(TypeError):
            apply_alerts(conn, [alert("A", seen=1), alert("B", seen=1), clear("A", seen=2), bad])
        assert rows(conn) == [], "a failed batch leaves nothing behind"
        states = {f"WH-{i}": bytes([i % 256]) * 3 for i in range(COPY_MIN + 1)}
        save_states(conn, states)
        assert load_states(conn) == states
        # Inside the caller's transaction block the caller's transaction is the one used.
        with pytest.raises(RuntimeError, match="caller"), conn.transaction():
            apply_alerts(conn, [alert("A", seen=1)])
            save_states(conn, {m: b"" for m in states})
            raise RuntimeError("the caller fails after the store did its part")
        assert (rows(conn), load_states(conn)) == ([], states)


def test_evidence_with_numpy_numbers_and_nan(db: psycopg.Connection[Any]) -> None:
    evidence = {"mean": np.float64(1.5), "n": np.int64(3), "z": math.nan, "f32": np.float32(2)}
    apply_alerts(db, [Alert("WH-1", "fleet_outlier", Severity.INFO, at(0), at(1), evidence)])
    (a,) = rows(db)
    assert a.evidence == {"mean": 1.5, "n": 3, "z": None, "f32": 2.0}


# --- reads ------------------------------------------------------------------------------------


def test_read_alerts_filters_and_count_by_type(db: psycopg.Connection[Any]) -> None:
    apply_alerts(db, [
        alert("A", "leak", seen=1), clear("A", "leak", seen=2), alert("A", "leak", seen=3),
        alert("B", "silent", seen=2), alert("C", "burst", seen=4),
    ])  # fmt: skip

    def got(**kw: Any) -> list[tuple[str, str, datetime]]:
        return [(a.meter_id, a.type, a.detected_at) for a in read_alerts(db, **kw)]

    assert got() == [("A", "leak", at(1)), ("B", "silent", at(2)), ("C", "burst", at(4))]
    assert got(since=at(2)) == [("B", "silent", at(2)), ("C", "burst", at(4))]
    assert got(until=at(2)) == [("A", "leak", at(1))]
    assert got(since=at(1), until=at(4), types=["leak", "burst"]) == [("A", "leak", at(1))]
    assert got(types=[]) == []
    assert count_by_type(db) == {"burst": 1, "leak": 1, "silent": 1}


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, COPY_MIN, 3 * COPY_MIN])
def test_states_round_trip_and_replace(db: psycopg.Connection[Any], n: int) -> None:
    states = {f"WH-{i:06d}": random.Random(i).randbytes(i % 300) for i in range(n)}
    save_states(db, states)
    assert load_states(db) == states
    changed = {m: b"\x00new" for m in list(states)[::2]}
    save_states(db, changed)  # twice in one transaction: the staging table starts empty again
    save_states(db, {})
    db.commit()
    assert load_states(db) == {**states, **changed}
    some = ["WH-000000", "WH-000001", "nope"]
    assert load_states(db, some) == {m: {**states, **changed}[m] for m in some[:2]}
    assert load_states(db, []) == {}


def test_meta_round_trip(db: psycopg.Connection[Any]) -> None:
    assert load_meta(db, "watermark") is None
    save_meta(db, "watermark", b"\x00\x01")
    save_meta(db, "fleet", b"")
    save_meta(db, "watermark", b"\x02")
    assert (load_meta(db, "watermark"), load_meta(db, "fleet")) == (b"\x02", b"")
