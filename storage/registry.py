"""The meter registry: CSV import (``meterwatch meters import``) and upserts.

A CSV row that does not validate is reported with its line number and nothing of that row is
written; the other rows still are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from meterwatch.codec import METER_ID_RE
from meterwatch.domain import Meter, MeterKind

COLUMNS = (
    "meter_id", "tenant", "dma", "kind", "dn_mm", "q3_m3h", "timezone", "install_date",
    "register_max_m3", "tariff_cny_per_m3", "parent_meter_id", "expected_interval_s",
)  # fmt: skip


@dataclass
class ImportResult:
    meters: int = 0
    errors: list[str] = field(default_factory=list)


def _row_to_meter(row: dict[str, str]) -> Meter:
    meter_id = (row.get("meter_id") or "").strip()
    if not METER_ID_RE.match(meter_id):
        raise ValueError(f"invalid meter_id {meter_id!r}")
    defaults = Meter(meter_id)

    def get(name: str) -> str | None:
        value = (row.get(name) or "").strip()
        return value or None

    kind = MeterKind(get("kind") or defaults.kind)
    tz = get("timezone") or defaults.timezone
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {tz!r}") from None
    install = get("install_date")
    meter = Meter(
        meter_id=meter_id,
        tenant=get("tenant") or defaults.tenant,
        dma=get("dma"),
        kind=kind,
        dn_mm=int(get("dn_mm") or defaults.dn_mm),
        q3_m3h=float(get("q3_m3h") or defaults.q3_m3h),
        timezone=tz,
        install_date=date.fromisoformat(install) if install else None,
        register_max_m3=float(get("register_max_m3") or defaults.register_max_m3),
        tariff_cny_per_m3=float(get("tariff_cny_per_m3") or defaults.tariff_cny_per_m3),
        parent_meter_id=get("parent_meter_id"),
        expected_interval_s=int(get("expected_interval_s") or defaults.expected_interval_s),
    )
    if meter.q3_m3h <= 0 or meter.register_max_m3 <= 0 or meter.dn_mm <= 0:
        raise ValueError("q3_m3h, register_max_m3 and dn_mm must be positive")
    if meter.tariff_cny_per_m3 < 0 or meter.expected_interval_s <= 0:
        raise ValueError("tariff must be >= 0 and expected_interval_s > 0")
    return meter


def parse_csv(text: str) -> tuple[list[Meter], list[str]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "meter_id" not in reader.fieldnames:
        return [], ["line 1: header must name at least meter_id"]
    unknown = set(reader.fieldnames) - set(COLUMNS)
    errors = [f"line 1: unknown columns ignored: {sorted(unknown)}"] if unknown else []
    meters: list[Meter] = []
    for row in reader:
        try:
            meters.append(_row_to_meter(row))
        except (ValueError, TypeError) as e:
            errors.append(f"line {reader.line_num}: {e}")
    return meters, errors


def upsert_meters(conn: psycopg.Connection[Any], meters: Iterable[Meter]) -> int:
    """Insert or update meters (and their tenants); parents are linked after all rows exist."""
    rows = list(meters)
    if not rows:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenants (tenant) VALUES (%s) ON CONFLICT DO NOTHING",
            [(t,) for t in sorted({m.tenant for m in rows})],
        )
        cur.executemany(
            """INSERT INTO meters (meter_id, tenant, dma, kind, dn_mm, q3_m3h, timezone,
                   install_date, register_max_m3, tariff_cny_per_m3, expected_interval_s,
                   auto_registered)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false)
               ON CONFLICT (meter_id) DO UPDATE SET
                   tenant = EXCLUDED.tenant, dma = EXCLUDED.dma, kind = EXCLUDED.kind,
                   dn_mm = EXCLUDED.dn_mm, q3_m3h = EXCLUDED.q3_m3h,
                   timezone = EXCLUDED.timezone, install_date = EXCLUDED.install_date,
                   register_max_m3 = EXCLUDED.register_max_m3,
                   tariff_cny_per_m3 = EXCLUDED.tariff_cny_per_m3,
                   expected_interval_s = EXCLUDED.expected_interval_s,
                   auto_registered = false, updated_at = now()""",
            [
                (
                    m.meter_id,
                    m.tenant,
                    m.dma,
                    str(m.kind),
                    m.dn_mm,
                    m.q3_m3h,
                    m.timezone,
                    m.install_date,
                    m.register_max_m3,
                    m.tariff_cny_per_m3,
                    m.expected_interval_s,
                )
                for m in rows
            ],
        )
        cur.executemany(
            "UPDATE meters SET parent_meter_id = %s WHERE meter_id = %s",
            [(m.parent_meter_id, m.meter_id) for m in rows if m.parent_meter_id],
        )
    return len(rows)


def import_csv(conn: psycopg.Connection[Any], text: str) -> ImportResult:
    meters, errors = parse_csv(text)
    return ImportResult(upsert_meters(conn, meters), errors)


def load_meters(conn: psycopg.Connection[Any]) -> list[Meter]:
    """Every registered meter, for the detectors' registry."""
    rows = conn.execute(
        """SELECT meter_id, tenant, dma, kind, dn_mm, q3_m3h, timezone, install_date,
                  register_max_m3, tariff_cny_per_m3::float8, parent_meter_id, expected_interval_s
           FROM meters"""
    ).fetchall()
    return [Meter(r[0], r[1], r[2], MeterKind(r[3]), *r[4:]) for r in rows]
