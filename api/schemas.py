"""What the API accepts and returns.

Models are read from ``storage.queries`` rows by attribute, so the SQL column names are the wire
names. Timestamps go out as ISO 8601 with an offset. Query timestamps may leave the offset out,
which means UTC (as every database session here runs in UTC); every bound is echoed back resolved,
in UTC, so a client can see how its input was read.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
)

from detectors.alert import ALERT_TYPES, Severity
from meterwatch.domain import MeterKind
from storage.lifecycle import Answer, Cause

T = TypeVar("T")

# An unescaped "+" in a query string arrives as a space: "08:15:00 08:00" means "08:15:00+08:00".
_SPACED_OFFSET = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def _restore_plus(value: Any) -> Any:
    if isinstance(value, str):
        return _SPACED_OFFSET.sub(r"\1+\2", value.strip())
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("datetime out of range") from None


Instant = Annotated[datetime, BeforeValidator(_restore_plus), AfterValidator(_as_utc)]
"""A query timestamp: ISO 8601 (an offset is optional; none means UTC) or epoch seconds."""


def _known_alert_type(value: str) -> str:
    if value not in ALERT_TYPES:
        raise ValueError(f"unknown alert type; expected one of {', '.join(ALERT_TYPES)}")
    return value


AlertType = Annotated[
    str,
    AfterValidator(_known_alert_type),
    WithJsonSchema({"type": "string", "enum": list(ALERT_TYPES)}),
]
"""An alert type of ``detectors.alert.ALERT_TYPES``, checked against the tuple itself so the API
cannot fall behind the detectors."""

AlertStatus = Literal["open", "acknowledged", "resolved"]


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MeterPublic(_FromRow):
    meter_id: str
    tenant: str
    dma: str | None
    kind: MeterKind
    dn_mm: int
    q3_m3h: float = Field(description="rated permanent flow Q3, m3/h")
    timezone: str
    install_date: date | None
    register_max_m3: float = Field(description="the register wraps to 0 here")
    tariff_cny_per_m3: float
    parent_meter_id: str | None
    closed_hours: JsonValue = None
    expected_interval_s: int
    auto_registered: bool
    last_reading_at: datetime | None = Field(description="timestamp of the newest stored reading")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="items matching the filters, over all pages")
    limit: int
    offset: int


class ReadingPublic(_FromRow):
    ts: datetime
    register_m3: float
    flow_lph: float | None
    battery_pct: float | None
    rssi_dbm: float | None
    flags: list[str]


class ReadingsPublic(BaseModel):
    meter_id: str
    start: datetime = Field(description="inclusive")
    end: datetime = Field(description="exclusive")
    truncated: bool = Field(description="the window holds more readings than were returned")
    next_start: datetime | None = Field(
        description="when truncated: the start that continues after the last reading returned"
    )
    readings: list[ReadingPublic]


class UsageBucket(BaseModel):
    start: datetime
    end: datetime
    volume_m3: float = Field(description="net volume, to 1 mL; reverse flow counts negative")
    reverse_m3: float = Field(description="volume that flowed backwards, as a positive number")
    covered_s: float = Field(
        description="seconds of the bucket between two readings; less than the bucket's length "
        "means the meter's data starts or stops inside it"
    )


class UsagePublic(BaseModel):
    meter_id: str
    timezone: str = Field(description="the meter's zone; day buckets are its local days")
    bucket: Literal["hour", "day"]
    start: datetime = Field(description="buckets starting at or after this")
    end: datetime = Field(description="and before this")
    total_m3: float
    reverse_m3: float
    covered_s: float
    buckets: list[UsageBucket]


class AlertPublic(_FromRow):
    """One episode of a condition on a meter; detector repeats update it while it is open."""

    id: int
    tenant: str
    meter_id: str
    dma: str | None
    type: str = Field(description="one of: " + ", ".join(ALERT_TYPES))
    severity: Severity = Field(description="the highest severity reported while open")
    status: AlertStatus
    started_at: datetime = Field(description="when the condition began (event time)")
    detected_at: datetime = Field(description="event time of the reading that raised the alert")
    last_seen_at: datetime = Field(description="event time of the latest report of the condition")
    resolved_at: datetime | None
    resolution: str | None = Field(description="why it was resolved; 'cleared' by the detector")
    evidence: dict[str, JsonValue] = Field(description="the numbers behind the latest report")
    estimated_loss_m3_per_day: float | None
    estimated_cost_cny_per_day: float | None = Field(
        description="the loss at the meter's tariff when the alert was last reported"
    )
    occurrences: int = Field(description="reports of the condition while the alert was open")
    message: dict[str, str] = Field(description="text for people, by language (zh, en)")
    team: str | None = Field(description="the field team whose area the meter is in")
    cleared_at: datetime | None = Field(
        description="when the detector last saw the condition end (event time); null while it lasts"
    )
    acknowledged_at: datetime | None = Field(
        description="when staff took it on (or resolved it); a customer's answer is not one"
    )
    acknowledged_by: str | None
    resolved_by: str | None
    resolution_note: str | None
    escalation_level: int = Field(description="0 until nobody acknowledged in time")
    reopened: int = Field(description="times the condition came back soon after a resolve")
    repair_reported_at: datetime | None = Field(
        description="staff reported a repair; the alert closes when the data confirms it"
    )
    repair_reported_by: str | None
    confirmed_at: datetime | None = Field(description="when the data confirmed the repair")
    volume_lost_m3: float | None = Field(description="estimated loss over the whole episode")
    volume_saved_m3: float | None = Field(description="loss a confirmed repair avoided")
    sla_from: datetime | None = Field(
        default=None,
        description="when the SLA clock started (event time): when the alert became known, "
        "again at a reopening; null on alerts older than this field (detected_at stands in)",
    )
    ack_due_at: datetime | None = Field(
        default=None,
        description="acknowledge by: sla_from (else detected_at) + the type's target",
    )
    resolve_due_at: datetime | None = Field(
        default=None,
        description="resolve by: sla_from (else detected_at) + the severity's target",
    )


Actor = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00]+$",
        description="who does it; required until the API has authentication, then taken from it",
    ),
]
Note = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00]*$")]


class AcknowledgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    note: Note = ""


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    cause: Cause = Field(
        description="leak_repaired and meter_fault wait for the data while the condition lasts"
    )
    note: Note = ""


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Answer
    days: float | None = Field(
        default=None,
        gt=0,
        le=3650,
        description="expected: how long to suppress; the config's default when left out, "
        "capped at its maximum",
    )
    note: Note = ""
    actor: Actor = "customer"


class EventPublic(_FromRow):
    id: int
    at: datetime = Field(description="wall clock of the change")
    event_time: datetime | None = Field(description="event time it refers to, if any")
    kind: str
    actor: str
    detail: dict[str, JsonValue]


class AttemptPublic(_FromRow):
    attempt: int
    at: datetime
    duration_ms: float
    ok: bool
    detail: str


class DeliveryPublic(_FromRow):
    """One notification of the alert on one channel, and how sending it went."""

    id: int
    trigger: str
    level: int
    channel: str
    audience: str
    idem_key: str
    title: str | None
    status: Literal["pending", "sent", "dead", "cancelled"]
    attempts: int
    hold_until: datetime | None = Field(description="held back through quiet hours until then")
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    tries: list[AttemptPublic]


class SlaRowPublic(_FromRow):
    team: str | None
    month: str = Field(
        description="YYYY-MM, in the deployment's zone, of when the SLA clock started "
        "(sla_from, else detected_at)"
    )
    type: str | None = Field(description="with by=type; null otherwise")
    alerts: int
    acknowledged: int
    ack_median_min: float | None
    ack_p90_min: float | None
    ack_met: int = Field(description="acknowledged within the type's target")
    ack_missed: int = Field(description="acknowledged late, or not by the target while unresolved")
    ack_within_target: float | None = Field(description="met / (met + missed)")
    resolved: int
    resolve_median_h: float | None
    resolve_p90_h: float | None
    resolve_met: int
    resolve_missed: int
    resolve_within_target: float | None


class SlaTargets(BaseModel):
    ack_min: dict[str, float] = Field(description="time to acknowledge by alert type, minutes")
    resolve_h: dict[str, float] = Field(description="time to resolve by severity, hours")


class SlaReportPublic(BaseModel):
    since: datetime
    until: datetime
    as_of: datetime = Field(description="alerts still open are judged at this time")
    timezone: str
    by: Literal["type"] | None
    targets: SlaTargets
    rows: list[SlaRowPublic]


class HealthPublic(BaseModel):
    status: Literal["ok", "error"]
    database: Literal["ok", "unavailable", "not migrated"]
    flavour: str | None
    detail: str | None = None


class ErrorPublic(BaseModel):
    detail: str
