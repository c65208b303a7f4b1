"""The alert store and the detectors' checkpoints.

Detectors emit a stream per (meter, type): alerts with ``cleared=False`` while a condition holds
and one with ``cleared=True`` when it is over. :func:`apply_alerts` turns that stream into one row
per episode: the first alert opens a row, repeats update it, a clear marks the condition over (the
scheduler in notify.scheduler resolves the row once it has stayed over long enough, so a
condition that flickers stays one alert). Every function
runs inside the caller's transaction and leaves the commit to the caller, so alerts and detector
state can be committed together with the readings that produced them.

A batch can hold thousands of alerts (every meter of a fleet going silent at once), so nothing here
costs a round trip per alert. Consecutive repeats of a key are merged in Python first; merging is
associative (max severity, earliest start, latest sighting, newest evidence, summed occurrences),
so the merged repeat has the same effect as applying them one by one. What remains alternates
between raise and clear per key; the n-th operations of all keys form round n, one set-based
statement per kind, and the rounds go out in order in one pipeline. Keys are independent, so only
each key's own order has to be kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from detectors.alert import SEVERITY_RANK, Alert, Severity
from storage.queries import ALERT_COLUMNS, AlertRow

COPY_MIN = 500  # from this many states on, a binary COPY beats one statement with arrays

RANK = "array_position(ARRAY['info', 'warning', 'critical']::text[], {})"


def volume_lost(end: str) -> str:
    """SQL for the water an alert's condition lost from its start to ``end`` (an SQL expression
    over the alerts row), at its estimated loss rate; NULL when no rate is known. Every way an
    alert resolves (a person, a confirmed repair, the condition staying away) counts it alike."""
    return (
        "estimated_loss_m3_per_day * greatest(0, extract(epoch FROM "
        f"{end} - started_at)::float8 / 86400)"
    )


# Raises of a (meter, type) a customer declared expected use for are dropped (table suppressions).
SUPPRESSED = """EXISTS (
    SELECT 1 FROM suppressions s
    WHERE s.meter_id = x.meter_id AND s.type = x.type
      AND x.detected_at >= s.since AND x.detected_at < s.until)"""

# An upsert on the open-alert index: it opens a row when none is open and merges into the open one
# otherwise, also when another session opened it concurrently. A repeat of a condition that had
# cleared (cleared_at set, not yet resolved) continues the same alert. prev holds the open rows as
# they were before the statement (every part of a statement sees the same snapshot), so the
# result can tell a return of the condition and a rise in severity from a plain repeat.
RAISE = f"""
WITH x AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[],
                         %b::timestamptz[], %b::timestamptz[], %b::jsonb[], %b::float8[],
                         %b::integer[]) WITH ORDINALITY
         AS x(meter_id, type, severity, started_at, detected_at, last_seen_at, evidence, loss,
              occurrences, n)
    WHERE NOT {SUPPRESSED}
), prev AS (
    SELECT a.id, a.cleared_at, a.severity FROM alerts a
    JOIN x ON a.meter_id = x.meter_id AND a.type = x.type
    WHERE a.status <> 'resolved'
)
INSERT INTO alerts AS a (tenant, meter_id, dma, type, severity, started_at, detected_at,
    last_seen_at, evidence, estimated_loss_m3_per_day, estimated_cost_cny_per_day, occurrences)
SELECT coalesce(m.tenant, 'unassigned'), x.meter_id, m.dma, x.type, x.severity, x.started_at,
       x.detected_at, x.last_seen_at, x.evidence, x.loss, x.loss * m.tariff_cny_per_m3::float8,
       x.occurrences
FROM x LEFT JOIN meters m ON m.meter_id = x.meter_id
ORDER BY x.n
ON CONFLICT (meter_id, type) WHERE status <> 'resolved' DO UPDATE SET
    severity = CASE WHEN {RANK.format("EXCLUDED.severity")} > {RANK.format("a.severity")}
                    THEN EXCLUDED.severity ELSE a.severity END,
    started_at = least(a.started_at, EXCLUDED.started_at),
    last_seen_at = greatest(a.last_seen_at, EXCLUDED.last_seen_at),
    evidence = EXCLUDED.evidence,
    estimated_loss_m3_per_day = EXCLUDED.estimated_loss_m3_per_day,
    estimated_cost_cny_per_day = EXCLUDED.estimated_cost_cny_per_day,
    occurrences = a.occurrences + EXCLUDED.occurrences,
    cleared_at = NULL,
    updated_at = now()
RETURNING a.id, a.meter_id, a.type, a.occurrences, a.severity, a.last_seen_at, a.detected_at,
    (SELECT p.cleared_at FROM prev p WHERE p.id = a.id) AS was_cleared,
    (SELECT p.severity FROM prev p WHERE p.id = a.id) AS prev_severity
"""

# A condition that comes back within reopen_within of its alert's end reopens that alert instead
# of opening a new one: the same leak, found again the morning after "repaired". The end is in
# event time (when the condition cleared, or was last seen): resolved_at may be a person's wall
# clock, which a meter uploading a day at once would never catch up with.
REOPEN = f"""
WITH x AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[])
         AS x(meter_id, type, detected_at)
    WHERE NOT {SUPPRESSED}
      AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.meter_id = x.meter_id AND o.type = x.type
                      AND o.status <> 'resolved')
), last AS (
    SELECT DISTINCT ON (a.meter_id, a.type) a.id, a.resolved_at, x.detected_at,
           coalesce(a.cleared_at, a.last_seen_at) AS ended
    FROM alerts a JOIN x ON a.meter_id = x.meter_id AND a.type = x.type
    WHERE a.status = 'resolved'
    ORDER BY a.meter_id, a.type, a.resolved_at DESC
)
UPDATE alerts AS a
SET status = 'open', reopened = a.reopened + 1, reopened_at = last.detected_at,
    resolved_at = NULL, resolved_by = NULL,
    resolution = NULL, resolution_note = NULL, cleared_at = NULL, acknowledged_at = NULL,
    acknowledged_by = NULL, escalation_level = 0, repair_reported_at = NULL,
    repair_reported_by = NULL, confirmed_at = NULL, volume_lost_m3 = NULL,
    volume_saved_m3 = NULL, sla_from = NULL, updated_at = now()
FROM last
WHERE a.id = last.id AND a.status = 'resolved' AND a.resolved_at = last.resolved_at
  AND last.detected_at < last.ended + %b::interval
RETURNING a.id, last.detected_at
"""

# A clear ends the condition, not the alert: the scheduler resolves it once the condition has
# stayed away for the type's auto-resolve time (notify.scheduler), or confirms a reported repair.
CLEAR = """
UPDATE alerts AS a
SET cleared_at = c.detected_at, updated_at = now()
FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS c(meter_id, type, detected_at)
WHERE a.meter_id = c.meter_id AND a.type = c.type AND a.status <> 'resolved'
  AND a.cleared_at IS NULL
RETURNING a.id, c.detected_at
"""

# Rows a round may touch, locked first and in id order. A person acting on an alert (storage.
# lifecycle) holds its row while adding a suppression; without this the upsert would wait for that
# row inside a statement whose snapshot predates the suppression, and open a new alert the
# customer has just declared expected. After the lock, each statement sees what was committed.
LOCK_KEYS = """
SELECT a.id FROM alerts a
JOIN unnest(%b::text[], %b::text[]) AS k(meter_id, type)
  ON a.meter_id = k.meter_id AND a.type = k.type
WHERE a.status <> 'resolved'
   OR a.id = (SELECT r.id FROM alerts r
              WHERE r.meter_id = k.meter_id AND r.type = k.type AND r.status = 'resolved'
              ORDER BY r.resolved_at DESC LIMIT 1)
ORDER BY a.id
FOR UPDATE OF a
"""

EVENTS = """
INSERT INTO alert_events (alert_id, event_time, kind, detail)
SELECT * FROM unnest(%b::bigint[], %b::timestamptz[], %b::text[], %b::jsonb[])
"""
# An audit trail entry: (alert id, event time, kind, detail).
Event = tuple[int, datetime, str, Mapping[str, Any]]

ON_STATE_CONFLICT = """
ON CONFLICT (meter_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"""
SAVE_STATES = f"""
INSERT INTO detector_state (meter_id, state)
SELECT * FROM unnest(%b::text[], %b::bytea[]) {ON_STATE_CONFLICT}"""
# Emptying the stage in the same statement lets one transaction save states more than once.
SAVE_STAGED_STATES = f"""
WITH staged AS (DELETE FROM mw_stage_detector_state RETURNING meter_id, state)
INSERT INTO detector_state (meter_id, state) SELECT meter_id, state FROM staged
{ON_STATE_CONFLICT}"""


@dataclass(slots=True)
class AlertChanges:
    """What one :func:`apply_alerts` call did, counted per alert of the list.

    A raise either ``opened`` a row, ``reopened`` a recently resolved one, or ``updated`` the open
    one (``suppressed`` raises change nothing); a clear either ``cleared`` an open row's condition
    or found none (and counts nowhere). ``ids`` are the rows touched, each once, so a caller can
    notify about them in the same transaction; ``reopened_ids`` those reopened.
    """

    opened: int = 0
    updated: int = 0
    cleared: int = 0
    reopened: int = 0
    suppressed: int = 0
    ids: list[int] = field(default_factory=list)
    reopened_ids: list[int] = field(default_factory=list)


# An alert as stored: the same row the API reads (``storage.queries.AlertRow``).
StoredAlert = AlertRow


@dataclass(slots=True)
class _Raise:
    """Consecutive raises of one key, merged as applying them in order would merge them."""

    severity: Severity
    started_at: datetime
    detected_at: datetime
    last_seen_at: datetime
    evidence: Mapping[str, Any]
    loss: float | None
    occurrences: int = 1

    def absorb(self, a: Alert) -> None:
        if SEVERITY_RANK[a.severity] > SEVERITY_RANK[self.severity]:
            self.severity = a.severity
        self.started_at = min(self.started_at, a.started_at)
        self.last_seen_at = max(self.last_seen_at, a.detected_at)
        self.evidence = a.evidence
        self.loss = a.estimated_loss_m3_per_day
        self.occurrences += 1


@dataclass(frozen=True, slots=True)
class _Clear:
    detected_at: datetime


Key = tuple[str, str]


def _plan(alerts: Sequence[Alert]) -> dict[Key, list[_Raise | _Clear]]:
    """Each key's operations, alternating raise and clear; a clear after a clear does nothing."""
    plan: dict[Key, list[_Raise | _Clear]] = {}
    for a in alerts:
        ops = plan.setdefault((a.meter_id, a.type), [])
        last = ops[-1] if ops else None
        if a.cleared:
            if not isinstance(last, _Clear):
                ops.append(_Clear(a.detected_at))
        elif isinstance(last, _Raise):
            last.absorb(a)
        else:
            ops.append(
                _Raise(
                    Severity(a.severity),
                    a.started_at,
                    a.detected_at,
                    a.detected_at,
                    a.evidence,
                    a.estimated_loss_m3_per_day,
                )
            )
    return plan


def jsonb_dumps(obj: Any) -> bytes:
    """The ``dumps`` of ``Jsonb`` parameters: orjson takes the numpy numbers detectors compute
    with and writes NaN as null, which jsonb accepts (``json.dumps`` would write ``NaN`` and the
    whole batch would fail)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def write_events(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    """Add these entries to the audit trail (``alert_events``), in one statement."""
    if events:
        conn.execute(
            EVENTS,
            (
                [e[0] for e in events],
                [e[1] for e in events],
                [e[2] for e in events],
                [Jsonb(dict(e[3]), jsonb_dumps) for e in events],
            ),
        )


@contextmanager
def _atomic(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The caller's transaction when there is one; a transaction of our own on an idle autocommit
    connection, where each statement would otherwise commit alone (and a staged COPY be lost)."""
    own = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction() if own else nullcontext():
        yield


Round = tuple[dict[Key, _Clear], dict[Key, _Raise]]


def _rounds(plan: Mapping[Key, Sequence[_Raise | _Clear]]) -> list[Round]:
    """The n-th operation of every key, by n: each round touches a key at most once."""
    rounds: list[Round] = []
    for key, ops in plan.items():
        for n, op in enumerate(ops):
            if n == len(rounds):
                rounds.append(({}, {}))
            if isinstance(op, _Clear):
                rounds[n][0][key] = op
            else:
                rounds[n][1][key] = op
    return rounds


def apply_alerts(
    conn: psycopg.Connection[Any],
    alerts: Sequence[Alert],
    *,
    reopen_within: timedelta | None = None,
) -> AlertChanges:
    """Open, update, clear (and, within ``reopen_within`` of a resolution, reopen) alert rows as
    the list says, in list order per (meter, type); each change goes to the audit trail."""
    submitted: list[tuple[str, psycopg.Cursor[Any], dict[Key, _Raise] | None]] = []
    plan = _plan(alerts)
    raised = [k for k, ops in plan.items() if any(isinstance(op, _Raise) for op in ops)]
    with _atomic(conn):
        with conn.pipeline():
            if raised:
                conn.execute(LOCK_KEYS, ([k[0] for k in raised], [k[1] for k in raised]))
            for clears, raises in _rounds(plan):
                if clears:
                    cur = conn.cursor()
                    cur.execute(
                        CLEAR,
                        (
                            [k[0] for k in clears],
                            [k[1] for k in clears],
                            [c.detected_at for c in clears.values()],
                        ),
                    )
                    submitted.append(("clear", cur, None))
                if raises:
                    r = list(raises.values())
                    if reopen_within is not None:
                        cur = conn.cursor()
                        cur.execute(
                            REOPEN,
                            (
                                [k[0] for k in raises],
                                [k[1] for k in raises],
                                [x.detected_at for x in r],
                                reopen_within,
                            ),
                        )
                        submitted.append(("reopen", cur, None))
                    cur = conn.cursor()
                    cur.execute(
                        RAISE,
                        (
                            [k[0] for k in raises],
                            [k[1] for k in raises],
                            [str(x.severity) for x in r],
                            [x.started_at for x in r],
                            [x.detected_at for x in r],
                            [x.last_seen_at for x in r],
                            [Jsonb(dict(x.evidence), jsonb_dumps) for x in r],
                            [x.loss for x in r],
                            [x.occurrences for x in r],
                        ),
                    )
                    submitted.append(("raise", cur, raises))
        # The pipeline has been synced: every result is in, none of these fetches waits.
        changes, events = _collect(submitted)
        write_events(conn, events)
    return changes


def _collect(
    submitted: Sequence[tuple[str, psycopg.Cursor[Any], dict[Key, _Raise] | None]],
) -> tuple[AlertChanges, list[Event]]:
    changes = AlertChanges()
    events: list[Event] = []
    seen: set[int] = set()
    reopened: set[int] = set()
    for what, cur, raised in submitted:
        for row in cur.fetchall():
            if what == "clear":
                changes.cleared += 1
                events.append((row[0], row[1], "cleared", {}))
            elif what == "reopen":
                changes.reopened += 1
                reopened.add(row[0])
                changes.reopened_ids.append(row[0])
                events.append((row[0], row[1], "reopened", {}))
            else:
                assert raised is not None
                alert_id, meter_id, alert_type, occurrences, severity, seen_at = row[:6]
                detected_at, was_cleared, prev_severity = row[6:9]
                k = raised[(meter_id, alert_type)].occurrences
                if occurrences == k and alert_id not in reopened:
                    # A row that was open before holds its own occurrences too.
                    changes.opened += 1
                    changes.updated += k - 1
                    events.append((alert_id, detected_at, "opened", {"severity": severity}))
                else:
                    changes.updated += k
                    if was_cleared is not None:
                        events.append((alert_id, seen_at, "returned", {}))
                    if (
                        prev_severity is not None
                        and SEVERITY_RANK[severity] > SEVERITY_RANK[prev_severity]
                    ):
                        events.append(
                            (alert_id, seen_at, "severity", {"from": prev_severity, "to": severity})
                        )
            if row[0] not in seen:
                seen.add(row[0])
                changes.ids.append(row[0])
        cur.close()
    raised_n = sum(
        op.occurrences for _, _, raised in submitted if raised is not None for op in raised.values()
    )
    changes.suppressed = raised_n - changes.opened - changes.updated
    return changes, events


def save_states(conn: psycopg.Connection[Any], states: Mapping[str, bytes]) -> None:
    """Insert or replace per-meter detector checkpoints."""
    if not states:
        return
    if len(states) < COPY_MIN:
        conn.execute(SAVE_STATES, (list(states), list(states.values())))
        return
    with _atomic(conn):
        conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS mw_stage_detector_state
               (meter_id text NOT NULL, state bytea NOT NULL) ON COMMIT DELETE ROWS"""
        )
        with (
            conn.cursor() as cur,
            cur.copy("COPY mw_stage_detector_state FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(("text", "bytea"))
            for row in states.items():
                copy.write_row(row)
        conn.execute(SAVE_STAGED_STATES)


def load_states(
    conn: psycopg.Connection[Any], meter_ids: Sequence[str] | None = None
) -> dict[str, bytes]:
    """Checkpoints of ``meter_ids`` that have one (all meters' when None)."""
    with conn.cursor(binary=True) as cur:
        if meter_ids is None:
            cur.execute("SELECT meter_id, state FROM detector_state")
        else:
            cur.execute(
                "SELECT meter_id, state FROM detector_state WHERE meter_id = ANY(%b::text[])",
                (list(meter_ids),),
            )
        return {m: bytes(s) for m, s in cur}


def save_meta(conn: psycopg.Connection[Any], key: str, value: bytes) -> None:
    conn.execute(
        """INSERT INTO detector_meta (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
        (key, value),
    )


def load_meta(conn: psycopg.Connection[Any], key: str) -> bytes | None:
    row = conn.execute("SELECT value FROM detector_meta WHERE key = %s", (key,)).fetchone()
    return bytes(row[0]) if row else None


def read_alerts(
    conn: psycopg.Connection[Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Sequence[str] | None = None,
) -> list[StoredAlert]:
    """Alerts detected in ``[since, until)`` of the given types, oldest first, for scoring."""
    with conn.cursor(row_factory=class_row(StoredAlert)) as cur:
        cur.execute(
            sql.SQL(
                """SELECT {cols} FROM alerts
                   WHERE (%(since)s::timestamptz IS NULL OR detected_at >= %(since)s)
                     AND (%(until)s::timestamptz IS NULL OR detected_at < %(until)s)
                     AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
                   ORDER BY detected_at, id"""
            ).format(cols=ALERT_COLUMNS),
            {"since": since, "until": until, "types": None if types is None else list(types)},
        )
        return cur.fetchall()


def count_by_type(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Alert rows (episodes, whatever their status) per type."""
    rows = conn.execute("SELECT type, count(*) FROM alerts GROUP BY type ORDER BY type").fetchall()
    return {t: int(n) for t, n in rows}
