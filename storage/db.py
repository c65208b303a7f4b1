"""Connections. Sessions run in UTC so timestamps come back the same whatever the server's zone."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import TupleRow

SESSION_OPTIONS = "-c TimeZone=UTC"


def connect(url: str, **kwargs: Any) -> psycopg.Connection[TupleRow]:
    if not url:
        raise ValueError("no database URL (set METERWATCH_DATABASE_URL or pass --database-url)")
    return psycopg.connect(url, options=SESSION_OPTIONS, **kwargs)


def read_meta(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("SELECT key, value FROM meterwatch_meta").fetchall()
    return {k: v for k, v in rows}
