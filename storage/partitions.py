"""Native range partitions for the plain-PostgreSQL flavour.

Partitions are created for the periods a batch actually touches (not for the whole span between
its oldest and newest reading), so one stray old timestamp costs one partition, not hundreds.
Buckets are aligned to a fixed Monday so every process computes the same bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
PARTITIONED = ("readings", "consumption", "usage_hourly")


def bucket_start(ts: datetime, step_days: int) -> datetime:
    step = timedelta(days=step_days)
    return ORIGIN + ((ts - ORIGIN) // step) * step


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start:%Y%m%d}"


class Partitions:
    """Remembers which partitions exist so the hot path asks the database only for new periods."""

    def __init__(self, step_days: int) -> None:
        self.step_days = step_days
        self._known: set[datetime] = set()

    def ensure(self, conn: psycopg.Connection[Any], timestamps: Iterable[datetime]) -> int:
        """Create missing partitions for these timestamps; returns how many were created.

        Runs in its own transactions (DDL takes strong locks; keep them short and out of the
        write transaction). Another process creating the same partition at once is harmless.
        """
        # A batch repeats few distinct instants (a fleet reports on the same clock), so bucket
        # the distinct ones: this runs for every batch on the ingest path.
        wanted = {bucket_start(ts, self.step_days) for ts in set(timestamps)} - self._known
        created = 0
        step = timedelta(days=self.step_days)
        for start in sorted(wanted):
            for table in PARTITIONED:
                name = partition_name(table, start)
                stmt = sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(name), sql.Identifier(table), start, start + step)
                try:
                    with conn.transaction():
                        exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
                        if exists and exists[0] is None:
                            conn.execute(stmt)
                            created += 1
                except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                    pass  # created concurrently by another process
            self._known.add(start)
        return created


def drop_older_than(conn: psycopg.Connection[Any], cutoff: datetime, step_days: int) -> list[str]:
    """Retention: drop whole partitions that end before ``cutoff``."""
    step = timedelta(days=step_days)
    rows = conn.execute(
        """SELECT c.relname, p.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = ANY(%s)""",
        (list(PARTITIONED),),
    ).fetchall()
    dropped: list[str] = []
    for child, parent in rows:
        stamp = child.removeprefix(f"{parent}_p")
        try:
            start = datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue
        if start + step <= cutoff:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(child)))
            dropped.append(child)
    return dropped


def maintain(
    conn: psycopg.Connection[Any], *, now: datetime, step_days: int, retention_days: int
) -> tuple[int, list[str]]:
    """Create the partitions for the coming periods and drop the expired ones.

    Ingest calls this at start and then hourly; TimescaleDB does the same with its policies.
    """
    step = timedelta(days=step_days)
    created = Partitions(step_days).ensure(conn, [now + k * step for k in range(3)])
    dropped = drop_older_than(conn, now - timedelta(days=retention_days), step_days)
    return created, dropped
