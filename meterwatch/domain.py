"""Domain types shared by ingest, storage, simulators and the API.

``Reading`` is a NamedTuple on purpose: ingest builds one per reading on its hot path and hands it
to ``COPY`` unchanged, so it must be cheap to create and already a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from enum import StrEnum
from typing import NamedTuple

# One bit per known flag: the compact form recordings and detectors carry (fits a uint8).
FLAG_BITS: dict[str, int] = {
    "tamper": 1,
    "magnetic": 2,
    "reverse": 4,
    "leak": 8,
    "burst": 16,
    "low_battery": 32,
    "dry": 64,
}
KNOWN_FLAGS = frozenset(FLAG_BITS)


def flag_bits(flags: Iterable[str]) -> int:
    """The bit set of ``flags``; flags without a bit (unknown to the detectors) are left out."""
    bits = 0
    for name in flags:
        bits |= FLAG_BITS.get(name, 0)
    return bits


def flag_names(bits: int) -> tuple[str, ...]:
    """The flag names set in ``bits``, in ``FLAG_BITS`` order (the order the codec expects)."""
    return tuple(name for name, bit in FLAG_BITS.items() if bits & bit)


# What detectors can say about a meter (docs/detection.md); the contract of alerts everywhere.
ALERT_TYPES = (
    "leak",
    "burst",
    "abnormal_high",
    "abnormal_low",
    "no_consumption",
    "reverse_flow",
    "tamper",
    "low_battery",
    "silent",
    "fleet_outlier",
    "dma_imbalance",
    "meter_alarm",  # a meter flag no other type covers (e.g. ``dry``): kept, never dropped
)


class MeterKind(StrEnum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"
    INDUSTRIAL = "industrial"
    BULK = "bulk"


class Reading(NamedTuple):
    meter_id: str
    ts: datetime
    register_m3: float
    flow_lph: float | None = None
    battery_pct: float | None = None
    rssi_dbm: float | None = None
    flags: tuple[str, ...] = ()


class Meter(NamedTuple):
    meter_id: str
    tenant: str = "unassigned"
    dma: str | None = None
    kind: MeterKind = MeterKind.RESIDENTIAL
    dn_mm: int = 15
    q3_m3h: float = 2.5
    timezone: str = "Asia/Shanghai"
    install_date: date | None = None
    register_max_m3: float = 100000.0
    tariff_cny_per_m3: float = 0.0
    parent_meter_id: str | None = None
    expected_interval_s: int = 900
