"""Which channels hear about an alert change, and when: pure functions of the config and the alert.

Times are event times (the alert's own, or the event time of the change being routed), never the
wall clock, so a replay routes exactly as live data did. Quiet hours hold customer reminders back
(a leak can wait until morning; a household woken at 3 am by an SMS will not welcome the next
one); bursts are never held, and staff are never held: their duty rota is their business.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notify.config import SEVERITY_RANK, NotifyConfig, Rule
from notify.model import AlertFacts, Audience, Target, Trigger

# Water running to waste at burst rates costs more than a night's sleep.
NEVER_HELD = frozenset({"burst"})


def route(
    config: NotifyConfig,
    alert: AlertFacts,
    trigger: Trigger,
    level: int = 0,
    at: datetime | None = None,
) -> list[Target]:
    """The targets of one alert change, in rule order, at most one per channel.

    ``level`` is the escalation level: the level escalated to for ``Trigger.ESCALATED``, the
    alert's current level otherwise (so the people it was escalated to hear how it ends). ``at``
    is the event time of the change (defaults to ``alert.detected_at``): quiet hours are judged
    on it. A channel named by several rules goes out once, as the first of them says.
    """
    when = at or alert.detected_at
    team = alert.team or config.team_for(alert.tenant, alert.dma)
    out: list[Target] = []
    seen: set[str] = set()
    for rule in config.rules:
        if not _matches(rule, alert, trigger, level, team):
            continue
        hold = None
        if rule.audience == Audience.CUSTOMER and alert.type not in NEVER_HELD:
            hold = quiet_until(config, when, alert.timezone)
        lang = rule.lang or config.language
        for ch in rule.channels:
            if ch not in seen:
                seen.add(ch)
                out.append(Target(channel=ch, audience=rule.audience, lang=lang, hold_until=hold))
    return out


def _matches(rule: Rule, alert: AlertFacts, trigger: Trigger, level: int, team: str | None) -> bool:
    if trigger not in rule.triggers:
        return False
    if trigger == Trigger.ESCALATED:
        # The rung escalated to, and the duty channels that asked to hear of every escalation.
        if rule.level not in (0, level):
            return False
    elif rule.level > level:
        return False
    if rule.tenants and alert.tenant not in rule.tenants:
        return False
    if rule.types and alert.type not in rule.types:
        return False
    if rule.teams and team not in rule.teams:
        return False
    return SEVERITY_RANK.get(alert.severity, 0) >= SEVERITY_RANK[rule.min_severity]


def quiet_until(config: NotifyConfig, when: datetime, timezone: str) -> datetime | None:
    """The end of the quiet hours ``when`` falls in (UTC), or ``None`` outside them.

    Judged on the meter's wall clock; a window like 22:00-07:00 spans midnight.
    """
    window = config.quiet_window
    if window is None:
        return None
    start, end = window
    tz = meter_zone(timezone)
    local = when.astimezone(tz)
    now = local.time().replace(tzinfo=None)
    day = local.date()
    if start < end:
        inside = start <= now < end
    else:
        inside = now >= start or now < end
        if now >= start:
            day += timedelta(days=1)
    if not inside:
        return None
    # A wall time built from the zone and converted, so a DST change in the night is honoured.
    return datetime.combine(day, end, tzinfo=tz).astimezone(UTC)


def meter_zone(name: str) -> ZoneInfo:
    """The meter's zone; an unknown name (a registry typo) falls back to UTC rather than stop
    every notification for that meter."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def ack_due(config: NotifyConfig, alert_type: str) -> timedelta:
    """How long after detection an alert of this type must be acknowledged."""
    return timedelta(minutes=config.sla.ack_min.get(alert_type, 240.0))


def resolve_due(config: NotifyConfig, severity: str) -> timedelta:
    """How long after detection an alert of this severity must be resolved."""
    return timedelta(hours=config.sla.resolve_h.get(severity, config.sla.resolve_h["warning"]))


def auto_resolve_after(config: NotifyConfig, alert_type: str) -> timedelta:
    """How long a cleared condition must stay away before its alert resolves itself."""
    return timedelta(hours=config.auto_resolve_h.get(alert_type, 24.0))


def escalation_due(config: NotifyConfig, alert_type: str, level: int) -> timedelta:
    """Age (from detection) at which an unacknowledged alert escalates to ``level``."""
    return ack_due(config, alert_type) * level


def deadlines(config: NotifyConfig, alert: AlertFacts) -> tuple[datetime, datetime]:
    """(acknowledge by, resolve by) for the alert, as staff notifications print them."""
    return (
        alert.sla_start + ack_due(config, alert.type),
        alert.sla_start + resolve_due(config, alert.severity),
    )
