"""Backtest: re-run the detectors with other thresholds over stored history, touch nothing live.

Engineers tune before they deploy: the stored readings of a period go through two fresh banks, one
with the thresholds in force and one with the proposed ones, and the alert episodes are compared:
what would appear, what would vanish. The rows are read once and fed to both banks in the same
order, so the difference is the thresholds' alone. Readings come back one per message in time
order (the storage keeps readings, not how they were grouped in uplinks), which the detectors
accept as any arrival order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from detectors.alert import Alert
from detectors.bank import Monitor
from detectors.batch import Batch
from detectors.config import FleetSettings, ThresholdBook
from evaluation.episodes import Episode, episodes
from meterwatch.domain import flag_bits
from storage.registry import load_meters

CHUNK = 50_000


def stored_chunks(
    conn: psycopg.Connection[Any], since: datetime, until: datetime
) -> Iterator[tuple[list[str], Batch]]:
    """Stored readings of ``[since, until)`` in time order, chunk by chunk: the meter ids and a
    batch whose ``meter`` column is still to be filled with a bank's indices of them."""
    with conn.cursor(name="mw_backtest") as cur:
        cur.itersize = CHUNK
        cur.execute(
            """SELECT meter_id, extract(epoch FROM ts)::bigint, register_m3, battery_pct, flags
               FROM readings WHERE ts >= %s AND ts < %s ORDER BY ts, meter_id""",
            (since, until),
        )
        while rows := cur.fetchmany(CHUNK):
            n = len(rows)
            ts = np.fromiter((r[1] for r in rows), np.int64, n)
            battery = np.fromiter((np.nan if r[3] is None else r[3] for r in rows), np.float32, n)
            batch = Batch(
                meter=np.zeros(n, np.int32),
                ts=ts,
                register=np.fromiter((r[2] for r in rows), np.float64, n),
                battery=battery,
                flags=np.fromiter((flag_bits(r[4] or ()) for r in rows), np.uint8, n),
                status=np.ones(n, np.bool_),
                span_start=ts.copy(),
            )
            yield [r[0] for r in rows], batch


def run_banks(
    conn: psycopg.Connection[Any], books: Sequence[ThresholdBook], fleet: FleetSettings,
    since: datetime, until: datetime,
) -> list[list[Alert]]:  # fmt: skip
    """The alerts of one fresh bank per threshold book over the same stored readings, read once."""
    meters = load_meters(conn)
    monitors = [Monitor(meters, thresholds=book, fleet=fleet) for book in books]
    out: list[list[Alert]] = [[] for _ in monitors]
    for ids, batch in stored_chunks(conn, since, until):
        for monitor, alerts in zip(monitors, out, strict=True):
            alerts.extend(monitor.observe(replace(batch, meter=monitor.index(ids))))
    return out


def _overlaps(a: Episode, b: Episode) -> bool:
    a_end = a.cleared_at or a.last_seen_at
    b_end = b.cleared_at or b.last_seen_at
    return a.started_at <= b_end and b.started_at <= a_end


def only_in(first: Sequence[Episode], second: Sequence[Episode]) -> list[Episode]:
    """Episodes of ``first`` that no episode of ``second`` (same meter and type) overlaps."""
    by_key: dict[tuple[str, str], list[Episode]] = {}
    for e in second:
        by_key.setdefault((e.meter_id, e.type), []).append(e)
    return [
        e for e in first if not any(_overlaps(e, o) for o in by_key.get((e.meter_id, e.type), ()))
    ]


@dataclass
class BacktestResult:
    since: datetime
    until: datetime
    current: Counter[str] = field(default_factory=Counter)
    proposed: Counter[str] = field(default_factory=Counter)
    appear: list[Episode] = field(default_factory=list)
    vanish: list[Episode] = field(default_factory=list)

    def to_json(self, limit: int = 50) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "episodes_current": dict(sorted(self.current.items())),
            "episodes_proposed": dict(sorted(self.proposed.items())),
            "appear_by_type": dict(sorted(Counter(e.type for e in self.appear).items())),
            "vanish_by_type": dict(sorted(Counter(e.type for e in self.vanish).items())),
            "appear": [e.to_json() for e in self.appear[:limit]],
            "vanish": [e.to_json() for e in self.vanish[:limit]],
        }

    def text(self) -> str:
        lines = [f"backtest {self.since.isoformat()} .. {self.until.isoformat()}"]
        lines.append(f"{'type':16} {'current':>8} {'proposed':>8} {'appear':>7} {'vanish':>7}")
        appear = Counter(e.type for e in self.appear)
        vanish = Counter(e.type for e in self.vanish)
        for t in sorted(set(self.current) | set(self.proposed)):
            lines.append(
                f"{t:16} {self.current[t]:8d} {self.proposed[t]:8d} {appear[t]:7d} {vanish[t]:7d}"
            )
        return "\n".join(lines)


def backtest(
    conn: psycopg.Connection[Any], current: ThresholdBook, proposed: ThresholdBook,
    since: datetime, until: datetime, fleet: FleetSettings | None = None,
) -> BacktestResult:  # fmt: skip
    current_alerts, proposed_alerts = run_banks(
        conn, [current, proposed], fleet or FleetSettings(), since, until
    )
    old, new = episodes(current_alerts), episodes(proposed_alerts)
    return BacktestResult(
        since, until,
        current=Counter(e.type for e in old), proposed=Counter(e.type for e in new),
        appear=only_in(new, old), vanish=only_in(old, new),
    )  # fmt: skip
