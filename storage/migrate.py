"""Versioned, idempotent migrations with a TimescaleDB path and a plain-PostgreSQL path.

Files in ``storage/sql`` are ``NNNN_name.sql`` (both flavours) or ``NNNN_name.<flavour>.sql``
(``timescale`` or ``postgres``). The flavour is chosen once, on the first migrate, and recorded in
``meterwatch_meta``; later migrates and every reader follow the recorded choice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg

from storage.partitions import Partitions

LOCK_KEY = 0x6D657465  # "mete": serialises concurrent migrates
FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescale|postgres))?\.sql$")
FLAVOURS = ("timescale", "postgres")
RECORD_SQL = "INSERT INTO schema_migrations (version, name, flavour) VALUES (%s, %s, %s)"


@dataclass
class MigrationResult:
    flavour: str
    applied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    flavour: str | None
    text: str


def migrations() -> list[Migration]:
    out = []
    for entry in resources.files("storage").joinpath("sql").iterdir():
        m = FILE_RE.match(entry.name)
        if m:
            out.append(Migration(int(m[1]), m[2], m[3], entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: (m.version, m.flavour or ""))


def _statements(text: str) -> list[str]:
    """Split a migration into statements (our files keep one statement per ``;`` at line end)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*\n", body + "\n") if s.strip()]


def _fill(text: str, params: Mapping[str, object]) -> str:
    """Fill a migration's ``{name}`` placeholders; values are quoted for SQL string literals."""
    for key, value in params.items():
        text = text.replace("{" + key + "}", str(value).replace("'", "''"))
    return text


def render_statements(flavour: str, params: Mapping[str, object]) -> list[str]:
    """The statements a first migrate runs for ``flavour``, with ``params`` filled in.

    Tests run exactly these on engines that cannot be reached through psycopg (TimescaleDB in
    PGlite), so the SQL under test is the SQL production runs. The plain-PostgreSQL path executes
    each file as one text; splitting it here changes nothing about what runs.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    return [
        stmt
        for mig in migrations()
        if mig.flavour in (None, flavour)
        for stmt in _statements(_fill(mig.text, params))
    ]


def _choose_flavour(conn: psycopg.Connection[Any], wanted: str) -> str:
    if wanted == "off":
        return "postgres"
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        if wanted == "on":
            raise RuntimeError(
                "METERWATCH_TIMESCALE=on but the server has no timescaledb extension"
            )
        return "postgres"
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error:
        if wanted == "on":
            raise
        return "postgres"  # offered but not loadable (e.g. not in shared_preload_libraries)
    return "timescale"


def migrate(
    conn: psycopg.Connection[Any],
    *,
    timescale: str = "auto",
    partition_days: int = 7,
    compress_after_days: int = 30,
    retention_days: int = 3650,
    timezone: str = "Asia/Shanghai",
    now: datetime | None = None,
) -> MigrationResult:
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS meterwatch_meta (
                   key text PRIMARY KEY, value text NOT NULL)"""
        )
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, flavour text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        meta = dict(conn.execute("SELECT key, value FROM meterwatch_meta").fetchall())
        flavour = meta.get("flavour") or _choose_flavour(conn, timescale)
        params = {
            "partition_days": int(meta.get("partition_days", partition_days)),
            "compress_after_days": compress_after_days,
            "retention_days": retention_days,
            "timezone": meta.get("timezone", timezone),
        }
        with conn.transaction():
            for key, value in (("flavour", flavour), *((k, str(v)) for k, v in params.items())):
                if key in ("flavour", "partition_days", "timezone"):
                    conn.execute(
                        "INSERT INTO meterwatch_meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (key, value),
                    )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        result = MigrationResult(flavour)
        for mig in migrations():
            if mig.version in done or mig.flavour not in (None, flavour):
                continue
            text = _fill(mig.text, params)
            if flavour == "timescale":
                # Continuous aggregates cannot be created inside a transaction block.
                for stmt in _statements(text):
                    conn.execute(stmt.encode())
                conn.execute(
                    RECORD_SQL,
                    (mig.version, mig.name, flavour),
                )
            else:
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute(
                        RECORD_SQL,
                        (mig.version, mig.name, flavour),
                    )
            result.applied.append(f"{mig.version:04d}_{mig.name}")
        if flavour == "postgres":
            now = now or datetime.now(UTC)
            step = timedelta(days=params["partition_days"])
            Partitions(params["partition_days"]).ensure(
                conn, [now - step, now, now + step, now + 2 * step]
            )
        return result
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
