"""The notifier's settings: who hears about which alert, on which channel, and how fast.

One TOML file (``METERWATCH_NOTIFY_CONFIG``, see docs/notifications.md) because routing rules and
channel specs are nested lists an environment variable cannot hold. The file is checked whole at
start-up: a rule naming a channel that does not exist, an unknown channel kind or a misspelt key
stops the notifier with the offending path, instead of silently never notifying anyone.

The escalation ladder is a set of staff rules with ``level >= 1``: level k fires when an alert is
still unacknowledged k x its acknowledge target after it was detected (event time).
"""

from __future__ import annotations

import re
import tomllib
from datetime import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meterwatch.domain import ALERT_TYPES
from notify.model import Audience, Trigger

CHANNEL_KINDS = frozenset({"webhook", "wecom", "dingtalk", "feishu", "email", "mqtt", "stream"})
SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

Lang = Literal["zh", "en"]
Severity = Literal["info", "warning", "critical"]

# Staff hear everything that needs a person; customers only about their own use, never about
# escalations (an internal matter) or feedback (their own answer).
STAFF_TRIGGERS = (
    Trigger.OPENED,
    Trigger.SEVERITY,
    Trigger.REOPENED,
    Trigger.ESCALATED,
    Trigger.FEEDBACK,
)
CUSTOMER_TRIGGERS = (Trigger.OPENED, Trigger.SEVERITY, Trigger.REOPENED)
_NOT_FOR_CUSTOMERS = frozenset({Trigger.ESCALATED, Trigger.FEEDBACK})

# Acknowledge targets follow the 水管家 promise: someone on site within 30 min for water running
# to waste, a working day's slot (4 h) for the rest.
DEFAULT_ACK_MIN: dict[str, float] = {t: 240.0 for t in ALERT_TYPES} | {"burst": 30.0, "leak": 30.0}
# Small repairs in 4 h, medium ones in 8 h; informational alerts within three days.
DEFAULT_RESOLVE_H: dict[str, float] = {"critical": 4.0, "warning": 8.0, "info": 72.0}
# How long a cleared condition must stay away before its alert resolves itself (hours). Zero where
# the detector already holds the condition: a leak clears only after 7 leak-free days, a low
# battery only above the hysteresis band. A silent meter that speaks again is back after 1 h.
DEFAULT_AUTO_RESOLVE_H: dict[str, float] = {t: 24.0 for t in ALERT_TYPES} | {
    "leak": 0.0,
    "low_battery": 0.0,
    "silent": 1.0,
}

_QUIET = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Model):
    """Who hears about what. Empty ``tenants`` / ``types`` / ``teams`` mean all.

    ``level`` 0 serves an alert's ordinary life (opened, severity, ...), and hears of every
    escalation when its triggers include ``escalated``; level k >= 1 is the k-th step of the
    escalation ladder: it hears the escalation to k and, while the alert stays at k or above,
    its other triggers (e.g. ``resolved``, so the people escalated to hear the end).
    """

    name: str = Field(min_length=1)
    audience: Audience
    tenants: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    min_severity: Severity = "info"
    triggers: list[Trigger] = Field(default_factory=list)
    channels: list[str] = Field(min_length=1)
    lang: Lang | None = None
    level: int = Field(default=0, ge=0, le=20)

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(ALERT_TYPES))
        if unknown:
            raise ValueError(f"unknown alert type(s) {unknown}; known: {list(ALERT_TYPES)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_triggers(cls, data: Any) -> Any:
        if isinstance(data, dict) and "triggers" not in data:
            staff = data.get("audience") != Audience.CUSTOMER
            triggers = STAFF_TRIGGERS if staff else CUSTOMER_TRIGGERS
            data = {**data, "triggers": [str(t) for t in triggers]}
        return data

    @model_validator(mode="after")
    def _audience_fits(self) -> Rule:
        if self.audience == Audience.CUSTOMER:
            bad = sorted(str(t) for t in set(self.triggers) & _NOT_FOR_CUSTOMERS)
            if bad:
                raise ValueError(f"rule {self.name!r}: customers are not notified of {bad}")
            if self.level:
                raise ValueError(f"rule {self.name!r}: escalation levels are for staff only")
        return self


class Team(_Model):
    """A field team and the area it covers: by DMA (district) or by tenant (an account)."""

    name: str = Field(min_length=1)
    tenants: list[str] = Field(default_factory=list)
    dmas: list[str] = Field(default_factory=list)


class Sla(_Model):
    """Targets the notifier measures against, in event time from the alert's detection.

    Keys given in the file override the defaults one by one, so ``[sla.ack_min] tamper = 60``
    keeps the 30-minute target of bursts and leaks.
    """

    ack_min: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ACK_MIN))
    resolve_h: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RESOLVE_H))

    @field_validator("ack_min")
    @classmethod
    def _ack(cls, v: dict[str, float]) -> dict[str, float]:
        return DEFAULT_ACK_MIN | _checked(v, ALERT_TYPES, "alert type", positive=True)

    @field_validator("resolve_h")
    @classmethod
    def _resolve(cls, v: dict[str, float]) -> dict[str, float]:
        return DEFAULT_RESOLVE_H | _checked(v, SEVERITIES, "severity", positive=True)


def _checked(
    v: dict[str, float], known: tuple[str, ...], what: str, *, positive: bool
) -> dict[str, float]:
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {list(known)}")
    for k, x in v.items():
        if x < 0 or (positive and x == 0):
            raise ValueError(f"{k}: must be {'> 0' if positive else '>= 0'}, got {x}")
    return v


def _default_rules() -> list[dict[str, Any]]:
    return [
        {
            "name": "live",
            "audience": "staff",
            "channels": ["live"],
            "triggers": [str(t) for t in Trigger],
        }
    ]


class NotifyConfig(_Model):
    """Everything routing, content and the scheduler need; see docs/notifications.md."""

    language: Lang = "zh"
    hotline: str = ""
    public_url: str = "http://127.0.0.1:8000"
    quiet_hours: str | None = None
    channels: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"live": {"kind": "stream"}}
    )
    rules: list[Rule] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    sla: Sla = Field(default_factory=Sla)
    auto_resolve_h: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_AUTO_RESOLVE_H))
    reopen_within_h: float = Field(default=24.0, ge=0)
    suppress_days_default: int = Field(default=7, ge=1)
    suppress_days_max: int = Field(default=90, ge=1)
    # Volume a repair saves = the loss rate when it was repaired x this horizon: how long the leak
    # would plausibly have gone on unnoticed without the reminder (a month: one billing cycle).
    saved_horizon_days: float = Field(default=30.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_routing(cls, data: Any) -> Any:
        # No file, or a file without channels: the dashboard's live stream hears everything. A
        # file that names its own channels names its own rules too (none means no notifications).
        if isinstance(data, dict) and "rules" not in data and "channels" not in data:
            data = {**data, "rules": _default_rules()}
        return data

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"public_url must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        m = _QUIET.match(v.strip())
        if not m or m.group(1, 2) == m.group(3, 4):
            raise ValueError(f'quiet_hours must look like "22:00-07:00" (start != end), got {v!r}')
        return v.strip()

    @field_validator("channels")
    @classmethod
    def _kinds(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in v.items():
            kind = spec.get("kind")
            if kind not in CHANNEL_KINDS:
                raise ValueError(
                    f"channel {name!r}: kind must be one of {sorted(CHANNEL_KINDS)}, got {kind!r}"
                )
        return v

    @field_validator("auto_resolve_h")
    @classmethod
    def _auto(cls, v: dict[str, float]) -> dict[str, float]:
        return DEFAULT_AUTO_RESOLVE_H | _checked(v, ALERT_TYPES, "alert type", positive=False)

    @model_validator(mode="after")
    def _consistent(self) -> NotifyConfig:
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique: {dup}")
        for r in self.rules:
            missing = [c for c in r.channels if c not in self.channels]
            if missing:
                raise ValueError(
                    f"rule {r.name!r} names unknown channel(s) {missing}; "
                    f"defined: {sorted(self.channels)}"
                )
        team_names = {t.name for t in self.teams}
        for r in self.rules:
            unknown = sorted(set(r.teams) - team_names)
            if unknown:
                raise ValueError(f"rule {r.name!r} names unknown team(s) {unknown}")
        levels = {r.level for r in self.rules if r.level}
        gaps = sorted(set(range(1, max(levels, default=0) + 1)) - levels)
        if gaps:
            raise ValueError(f"escalation ladder has no rule for level(s) {gaps}")
        if self.suppress_days_default > self.suppress_days_max:
            raise ValueError("suppress_days_default must not exceed suppress_days_max")
        return self

    @property
    def quiet_window(self) -> tuple[time, time] | None:
        """Quiet hours as (start, end) local times; end < start spans midnight."""
        if self.quiet_hours is None:
            return None
        a, b = self.quiet_hours.split("-")
        return time.fromisoformat(a), time.fromisoformat(b)

    @property
    def max_level(self) -> int:
        """The top of the escalation ladder (0: no escalation)."""
        return max((r.level for r in self.rules), default=0)

    def team_for(self, tenant: str, dma: str | None) -> str | None:
        """The team that owns a meter: the first covering its DMA, else the first covering its
        tenant. Districts win because field work is organised by area, accounts by exception."""
        if dma is not None:
            for t in self.teams:
                if dma in t.dmas:
                    return t.name
        for t in self.teams:
            if tenant in t.tenants:
                return t.name
        return None

    @classmethod
    def load(cls, path: Path | None) -> NotifyConfig:
        """Read and check a TOML file; ``None`` gives the defaults (the live stream only).

        Raises :class:`NotifyConfigError` naming the file and the offending keys.
        """
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise NotifyConfigError(f"{path}: {e}") from e
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise NotifyConfigError(f"{path}: {format_errors(e)}") from e


class NotifyConfigError(ValueError):
    """The notification config file is unreadable or invalid."""


def format_errors(e: ValidationError) -> str:
    """One line per problem, as ``rules.0.channels: message``: what an operator can act on."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
