"""What the notifier passes around: an alert's facts, a routing target, a rendered notification.

These are plain values so routing and content stay pure (no I/O, no clock) and the outbox can store
a notification as JSON at commit time and send exactly that later, whatever changed since.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from detectors.alert import iso

# PostgreSQL NOTIFY channel of the live stream: the notifier's "stream" channel sends on it and the
# API's server-sent events endpoint listens, so the dashboard hears alerts from any process.
LIVE_CHANNEL = "meterwatch_alerts"


class Audience(StrEnum):
    CUSTOMER = "customer"  # the enterprise or household whose meter it is: a reminder
    STAFF = "staff"  # the utility's people on duty: a work notification


class Trigger(StrEnum):
    """Why a notification goes out."""

    OPENED = "opened"  # a new alert
    SEVERITY = "severity"  # an open alert became more severe
    REOPENED = "reopened"  # the condition came back soon after the alert was resolved
    ESCALATED = "escalated"  # nobody acknowledged within the SLA: the next contact level
    RESOLVED = "resolved"  # closed (by staff, by the data, or automatically)
    FEEDBACK = "feedback"  # the customer said the use is not expected: staff must look


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """An alert with the meter facts its message and routing need (joined from the registry)."""

    id: int
    tenant: str
    meter_id: str
    dma: str | None
    type: str
    severity: str
    status: str
    started_at: datetime
    detected_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None = None
    resolution: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    estimated_loss_m3_per_day: float | None = None
    estimated_cost_cny_per_day: float | None = None
    team: str | None = None
    escalation_level: int = 0
    kind: str = "residential"
    timezone: str = "Asia/Shanghai"
    tenant_name: str = ""
    volume_lost_m3: float | None = None
    volume_saved_m3: float | None = None
    # When the SLA clock started (event time): when the alert became known, or was reopened.
    sla_from: datetime | None = None

    @property
    def sla_start(self) -> datetime:
        return self.sla_from or self.detected_at

    def to_json(self) -> dict[str, Any]:
        """The alert object of the public contract (DESIGN.md), times in ISO 8601 UTC."""
        out = asdict(self)
        out["evidence"] = dict(self.evidence)
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = iso(v)
        return out


@dataclass(frozen=True, slots=True)
class Target:
    """One channel a notification goes to, as routing decided it."""

    channel: str
    audience: Audience
    lang: str = "zh"
    # Event time before which the notification must not go out (quiet hours); None: at once.
    hold_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A rendered notification for one channel, stored in the outbox and sent as is.

    ``key`` is the idempotency key (the same on every retry, different per alert, trigger,
    escalation level and channel); channels put it where their receivers can see it (a header,
    the Message-ID, an MQTT user property) so duplicates of an at-least-once delivery are dropped.
    """

    key: str
    channel: str
    audience: Audience
    trigger: Trigger
    lang: str
    title: str
    text: str
    alert: Mapping[str, Any]  # AlertFacts.to_json() plus "message": {"zh": ..., "en": ...}
    links: Mapping[str, str] = field(default_factory=dict)  # "alert", "expected", "not_expected"
    created_at: str = ""  # ISO 8601 UTC, event time of the change that caused it

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "channel": self.channel,
            "audience": str(self.audience),
            "trigger": str(self.trigger),
            "lang": self.lang,
            "title": self.title,
            "text": self.text,
            "alert": dict(self.alert),
            "links": dict(self.links),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Notification:
        return cls(
            key=obj["key"],
            channel=obj["channel"],
            audience=Audience(obj["audience"]),
            trigger=Trigger(obj["trigger"]),
            lang=obj.get("lang", "zh"),
            title=obj.get("title", ""),
            text=obj.get("text", ""),
            alert=obj.get("alert") or {},
            links=obj.get("links") or {},
            created_at=obj.get("created_at", ""),
        )


def idem_key(alert_id: int, trigger: Trigger, level: int, channel: str, seq: int = 0) -> str:
    """Stable per (alert, trigger, level, channel, seq); ``seq`` tells repeated triggers apart
    (a second severity rise, a second reopening)."""
    return f"mw-{alert_id}-{trigger}-{level}-{seq}-{channel}"
