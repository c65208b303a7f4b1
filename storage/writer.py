"""Batch writes: readings, dead letters, consumption pieces and (plain PostgreSQL) rollups.

One batch is one transaction, so the caller can acknowledge the batch's MQTT messages exactly when
it commits. Readings go through a binary COPY into a temporary staging table and an
``INSERT ... ON CONFLICT DO NOTHING``, which makes redelivered messages free. Consumption is then
recomputed only around the readings that were really new, from the stored neighbours, so late and
out-of-order readings end up with the same pieces as sorted input.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from meterwatch import consumption
from meterwatch.codec import UNKNOWN_METER, Decoded
from storage.db import read_meta
from storage.partitions import Partitions, maintain

READING_COLUMNS = (
    "meter_id", "ts", "register_m3", "flow_lph", "battery_pct", "rssi_dbm", "flags", "received_at"
)  # fmt: skip
READING_TYPES = (
    "text",
    "timestamptz",
    "float8",
    "float4",
    "float4",
    "float4",
    "text[]",
    "timestamptz",
)
PIECE_COLUMNS = "meter_id, ts, ts_end, volume_m3, kind"
ADVISORY_NS = 0x6D77  # advisory lock namespace for per-meter locks


@dataclass(slots=True)
class Message:
    """One received MQTT message and what the codec made of it."""

    topic: str
    payload: bytes
    received_at: datetime
    decoded: Decoded


@dataclass(slots=True)
class BatchResult:
    messages: int = 0
    readings: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    registered: int = 0
    pieces: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def merge(self, other: BatchResult) -> BatchResult:
        """Add ``other``'s counts to this one (in place) and return it."""
        for name in ("messages", "readings", "inserted", "duplicates", "dead_letters",
                     "registered", "pieces"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_reason.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v
        return self


class Writer:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        auto_register: bool = True,
        default_register_max_m3: float = 100000.0,
        default_q3_m3h: float = 2.5,
    ) -> None:
        self.conn = conn
        self.auto_register = auto_register
        self.default_register_max_m3 = default_register_max_m3
        self.default_q3_m3h = default_q3_m3h
        meta = read_meta(conn)
        conn.commit()
        self.flavour = meta["flavour"]
        self.timezone = meta.get("timezone", "Asia/Shanghai")
        self.partitions = (
            Partitions(int(meta["partition_days"])) if self.flavour == "postgres" else None
        )

    def maintain(self, now: datetime, retention_days: int) -> tuple[int, list[str]]:
        """Partitions ahead of time and retention, for the plain-PostgreSQL flavour."""
        if self.partitions is None:
            return 0, []
        self.conn.commit()
        return maintain(
            self.conn, now=now, step_days=self.partitions.step_days, retention_days=retention_days
        )

    def write(self, messages: list[Message]) -> BatchResult:
        try:
            with self.conn.transaction():
                return self._write(messages)
        except BaseException:
            if self.partitions is not None:
                self.partitions = Partitions(self.partitions.step_days)  # forget rolled-back DDL
            raise

    def _write(self, messages: list[Message]) -> BatchResult:
        res = BatchResult(messages=len(messages))
        dead: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        ids = sorted(
            {m.decoded.meter_id for m in messages if m.decoded.readings and m.decoded.meter_id}
        )
        known = self._register(ids, res)
        for m in messages:
            d = m.decoded
            for rej in d.rejections:
                dead.append(_dead(m, rej.reason, rej.detail, rej.position))
            if not d.readings:
                continue
            if d.meter_id not in known:
                dead.append(
                    _dead(m, UNKNOWN_METER, f"meter {d.meter_id!r} is not registered", None)
                )
                continue
            for r in d.readings:
                # COPY's binary dumper wants a list for text[] (a tuple is a composite).
                rows.append((*r[:6], list(r.flags), m.received_at))
        res.readings = len(rows)
        if dead:
            res.dead_letters = self._dead_letters(dead)
            for row in dead:
                res.by_reason[row[3]] = res.by_reason.get(row[3], 0) + 1
        if not rows:
            return res
        if self.partitions is not None:
            self.partitions.ensure(self.conn, (r[1] for r in rows))
        meter_ids = sorted({r[0] for r in rows})
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(m)) FROM unnest(%s::text[]) AS m",
            (ADVISORY_NS, meter_ids),
        )
        inserted = self._insert_readings(rows)
        res.inserted = len(inserted)
        res.duplicates = res.readings - res.inserted
        if inserted:
            res.pieces = self._recompute_consumption(inserted)
        return res

    def _register(self, ids: list[str], res: BatchResult) -> set[str]:
        if not ids:
            return set()
        if self.auto_register:
            cur = self.conn.execute(
                """INSERT INTO meters (meter_id, auto_registered, register_max_m3, q3_m3h)
                   SELECT m, true, %s, %s FROM unnest(%s::text[]) AS m
                   ON CONFLICT (meter_id) DO NOTHING""",
                (self.default_register_max_m3, self.default_q3_m3h, ids),
            )
            res.registered = max(cur.rowcount, 0)
            return set(ids)
        found = self.conn.execute(
            "SELECT meter_id FROM meters WHERE meter_id = ANY(%s)", (ids,)
        ).fetchall()
        return {m for (m,) in found}

    def _dead_letters(self, dead: list[tuple[Any, ...]]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO dead_letters (received_at, topic, meter_id, reason, detail,
                       reading_index, payload, payload_sha256)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                dead,
            )
        return len(dead)

    def _insert_readings(self, rows: list[tuple[Any, ...]]) -> list[tuple[str, datetime]]:
        conn = self.conn
        conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS mw_stage_readings
               (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"""
        )
        cols = ", ".join(READING_COLUMNS)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY mw_stage_readings ({cols}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(READING_TYPES)
            for row in rows:
                copy.write_row(row)
        return conn.execute(
            f"""INSERT INTO readings ({cols}) SELECT {cols} FROM mw_stage_readings
                ON CONFLICT (meter_id, ts) DO NOTHING RETURNING meter_id, ts"""
        ).fetchall()

    def _recompute_consumption(self, inserted: list[tuple[str, datetime]]) -> int:
        conn = self.conn
        span: dict[str, list[datetime]] = {}
        for meter_id, ts in inserted:
            s = span.get(meter_id)
            if s is None:
                span[meter_id] = [ts, ts]
            elif ts < s[0]:
                s[0] = ts
            elif ts > s[1]:
                s[1] = ts
        ids = list(span)
        # The stored neighbours just outside each meter's new span, and everything inside it.
        points = conn.execute(
            """SELECT r.meter_id, m.register_max_m3, m.q3_m3h, x.ts, x.register_m3
               FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS r(meter_id, lo, hi)
               JOIN meters m ON m.meter_id = r.meter_id,
               LATERAL (
                   (SELECT ts, register_m3 FROM readings
                    WHERE meter_id = r.meter_id AND ts < r.lo ORDER BY ts DESC LIMIT 1)
                   UNION ALL
                   (SELECT ts, register_m3 FROM readings
                    WHERE meter_id = r.meter_id AND ts >= r.lo AND ts <= r.hi)
                   UNION ALL
                   (SELECT ts, register_m3 FROM readings
                    WHERE meter_id = r.meter_id AND ts > r.hi ORDER BY ts LIMIT 1)
               ) AS x""",
            (ids, [span[i][0] for i in ids], [span[i][1] for i in ids]),
        ).fetchall()
        by_meter: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
        params: dict[str, tuple[float, float]] = {}
        for meter_id, reg_max, q3, ts, reg in points:
            by_meter[meter_id].append((ts, reg))
            params[meter_id] = (reg_max, q3)
        pieces: list[consumption.Piece] = []
        r_ids, r_lo, r_hi = [], [], []
        for meter_id, pts in by_meter.items():
            if len(pts) < 2:
                continue
            pts.sort()
            reg_max, q3 = params[meter_id]
            pieces.extend(consumption.pieces(meter_id, pts, register_max_m3=reg_max, q3_m3h=q3))
            r_ids.append(meter_id)
            r_lo.append(pts[0][0])
            r_hi.append(pts[-1][0])
        if not r_ids:
            return 0
        if self.partitions is not None:
            self.partitions.ensure(conn, (p.ts for p in pieces))
        ranges = (r_ids, r_lo, r_hi)
        conn.execute(
            """DELETE FROM consumption c
               USING unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS r(meter_id, lo, hi)
               WHERE c.meter_id = r.meter_id AND c.ts >= r.lo AND c.ts < r.hi""",
            ranges,
        )
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY consumption ({PIECE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(("text", "timestamptz", "timestamptz", "float8", "text"))
            for p in pieces:
                copy.write_row(p)
        if self.flavour == "postgres":
            self._rollups(ranges)
        return len(pieces)

    def _rollups(self, ranges: tuple[list[str], list[datetime], list[datetime]]) -> None:
        """Keep usage_hourly and usage_daily exact for the hours and days a batch touched.

        On TimescaleDB continuous aggregates do this; here the ingest path does it, in the same
        transaction, so readers never see a rollup that disagrees with the pieces.
        """
        conn = self.conn
        unnest = "unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS r(meter_id, lo, hi)"
        conn.execute(
            f"""DELETE FROM usage_hourly h USING {unnest}
                WHERE h.meter_id = r.meter_id AND h.hour >= date_trunc('hour', r.lo)
                  AND h.hour <= date_trunc('hour', r.hi)""",
            ranges,
        )
        conn.execute(
            f"""INSERT INTO usage_hourly (meter_id, hour, volume_m3, reverse_m3, covered_s)
                SELECT c.meter_id, date_trunc('hour', c.ts), sum(c.volume_m3),
                       sum(CASE WHEN c.kind = 'reverse' THEN -c.volume_m3 ELSE 0 END),
                       sum(extract(epoch FROM c.ts_end - c.ts))
                FROM consumption c JOIN {unnest} ON c.meter_id = r.meter_id
                 AND c.ts >= date_trunc('hour', r.lo)
                 AND c.ts < date_trunc('hour', r.hi) + interval '1 hour'
                GROUP BY 1, 2""",
            ranges,
        )
        tz = self.timezone
        conn.execute(
            f"""DELETE FROM usage_daily d USING {unnest}
                WHERE d.meter_id = r.meter_id AND d.day >= date_trunc('day', r.lo, %s)
                  AND d.day <= date_trunc('day', r.hi, %s)""",
            (*ranges, tz, tz),
        )
        conn.execute(
            f"""INSERT INTO usage_daily (meter_id, day, volume_m3, reverse_m3, covered_s)
                SELECT h.meter_id, date_trunc('day', h.hour, %s), sum(h.volume_m3),
                       sum(h.reverse_m3), sum(h.covered_s)
                FROM usage_hourly h JOIN {unnest} ON h.meter_id = r.meter_id
                 AND h.hour >= date_trunc('day', r.lo, %s)
                 AND h.hour < date_trunc('day', r.hi, %s) + interval '1 day'
                GROUP BY 1, 2""",
            (tz, *ranges, tz, tz),
        )


def _dead(m: Message, reason: str, detail: str, index: int | None) -> tuple[Any, ...]:
    digest = hashlib.sha256(m.payload).digest()
    return (m.received_at, m.topic, m.decoded.meter_id, reason, detail, index, m.payload, digest)
