"""Routing: which channels hear of an alert change, quiet hours, SLA, and the config file."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from notify.channels import ChannelContext
from notify.config import NotifyConfig, NotifyConfigError
from notify.model import AlertFacts, Audience, Trigger
from notify.routing import (
    ack_due,
    auto_resolve_after,
    deadlines,
    escalation_due,
    quiet_until,
    resolve_due,
    route,
)
from notify.service import build_channels

DOC = Path(__file__).resolve().parent.parent / "docs" / "notifications.md"
T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)  # 14:00 in Shanghai


def alert(**kw: Any) -> AlertFacts:
    base: dict[str, Any] = {
        "id": 17,
        "tenant": "acme",
        "meter_id": "WH-000123",
        "dma": "wuchang-03",
        "type": "leak",
        "severity": "warning",
        "status": "open",
        "started_at": T0 - timedelta(hours=24),
        "detected_at": T0,
        "last_seen_at": T0,
    }
    return AlertFacts(**(base | kw))


def config(**kw: Any) -> NotifyConfig:
    base: dict[str, Any] = {
        "channels": {
            "live": {"kind": "stream"},
            "duty": {"kind": "wecom"},
            "boss": {"kind": "dingtalk"},
            "director": {"kind": "email"},
            "sms": {"kind": "webhook"},
            "acme": {"kind": "feishu"},
        },
        "rules": [
            {"name": "acme", "audience": "customer", "tenants": ["acme"], "channels": ["acme"]},
            {"name": "sms", "audience": "customer", "types": ["leak", "burst"],
             "channels": ["sms"]},
            {"name": "live", "audience": "staff", "channels": ["live"],
             "triggers": ["opened", "severity", "reopened", "escalated", "resolved", "feedback"]},
            {"name": "duty", "audience": "staff", "min_severity": "warning",
             "channels": ["duty", "live"], "lang": "en"},
            {"name": "l1", "audience": "staff", "level": 1, "channels": ["boss"],
             "triggers": ["escalated", "resolved"]},
            {"name": "l2", "audience": "staff", "level": 2, "teams": ["east"],
             "channels": ["director"], "triggers": ["escalated"]},
        ],
        "teams": [{"name": "east", "dmas": ["wuchang-03"]}, {"name": "keys", "tenants": ["acme"]}],
    }  # fmt: skip
    return NotifyConfig.model_validate(base | kw)


def channels(targets: list[Any]) -> list[str]:
    return [t.channel for t in targets]


# -- routing --------------------------------------------------------------------------------------
def test_default_config_sends_everything_to_the_live_stream() -> None:
    cfg = NotifyConfig.load(None)
    for trig in Trigger:
        got = route(cfg, alert(severity="info"), trig, level=1 if trig == "escalated" else 0)
        assert [(t.channel, t.audience) for t in got] == [("live", Audience.STAFF)], trig


def test_rules_contribute_channels_in_order_without_duplicates() -> None:
    got = route(config(), alert(), Trigger.OPENED)
    assert channels(got) == ["acme", "sms", "live", "duty"]
    by = {t.channel: t for t in got}
    assert by["acme"].audience == Audience.CUSTOMER
    # "live" is named by two staff rules: the first wins, with its language (the default zh).
    assert by["live"].lang == "zh"
    assert by["duty"].lang == "en"


def test_tenant_type_and_severity_filters() -> None:
    cfg = config()
    other = alert(tenant="hanyang", type="abnormal_high", severity="info")
    assert channels(route(cfg, other, Trigger.OPENED)) == ["live"]
    assert channels(route(cfg, replace(other, type="burst"), Trigger.OPENED)) == ["sms", "live"]
    crit = replace(other, severity="critical")
    assert channels(route(cfg, crit, Trigger.OPENED)) == ["live", "duty"]


def test_trigger_filter_and_customer_defaults() -> None:
    cfg = config()
    # Customers hear neither feedback nor resolution by default; "live" asked for resolution.
    assert channels(route(cfg, alert(), Trigger.FEEDBACK)) == ["live", "duty"]
    assert channels(route(cfg, alert(), Trigger.RESOLVED)) == ["live"]
    assert channels(route(cfg, alert(), Trigger.REOPENED)) == ["acme", "sms", "live", "duty"]


def test_escalation_levels_route_to_their_rung() -> None:
    cfg = config()
    assert cfg.max_level == 2
    a = alert(escalation_level=1)
    assert channels(route(cfg, a, Trigger.ESCALATED, level=1)) == ["live", "duty", "boss"]
    a2 = alert(escalation_level=2)
    assert channels(route(cfg, a2, Trigger.ESCALATED, level=2)) == ["live", "duty", "director"]
    # Level 2 serves team "east" only (the team comes from the DMA when the alert has none).
    west = alert(dma="hanyang-01", tenant="someone")
    assert channels(route(cfg, west, Trigger.ESCALATED, level=2)) == ["live", "duty"]
    # The people escalated to hear how it ends; the director's rule did not ask for "resolved".
    assert channels(route(cfg, a2, Trigger.RESOLVED, level=2)) == ["live", "boss"]
    assert channels(route(cfg, a2, Trigger.RESOLVED, level=0)) == ["live"]


def test_team_for_prefers_dma_over_tenant() -> None:
    cfg = config()
    assert cfg.team_for("acme", "wuchang-03") == "east"
    assert cfg.team_for("acme", "hanyang-01") == "keys"
    assert cfg.team_for("acme", None) == "keys"
    assert cfg.team_for("other", None) is None
    # An alert's own team (set by the store) wins over the registry lookup.
    a = alert(team="keys", escalation_level=2)
    assert "director" not in channels(route(cfg, a, Trigger.ESCALATED, level=2))


# -- quiet hours ----------------------------------------------------------------------------------
def sh(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    """A Shanghai wall time (UTC+8, no DST) as UTC."""
    return datetime(y, mo, d, h, mi, tzinfo=UTC) - timedelta(hours=8)


@pytest.mark.parametrize(
    ("local", "until"),
    [
        (sh(2026, 11, 21, 23, 30), sh(2026, 11, 22, 7)),  # before midnight: next morning
        (sh(2026, 11, 22, 2, 0), sh(2026, 11, 22, 7)),  # after midnight: this morning
        (sh(2026, 11, 21, 22, 0), sh(2026, 11, 22, 7)),  # the start is inside
        (sh(2026, 11, 22, 7, 0), None),  # the end is outside
        (sh(2026, 11, 21, 21, 59), None),
        (sh(2026, 11, 21, 14, 0), None),
    ],
)
def test_quiet_hours_across_midnight_in_shanghai(local: datetime, until: datetime | None) -> None:
    cfg = config(quiet_hours="22:00-07:00")
    got = route(cfg, alert(detected_at=local), Trigger.OPENED)
    holds = {t.channel: t.hold_until for t in got}
    assert holds["acme"] == until
    assert holds["sms"] == until
    assert holds["live"] is None and holds["duty"] is None  # staff are never held


def test_quiet_hours_use_the_meters_zone_and_dst() -> None:
    cfg = config(quiet_hours="22:00-07:00")
    # 2026-03-29 01:30 in Berlin is CET (UTC+1); that night the clocks jump to CEST at 02:00,
    # so 07:00 local is 05:00 UTC, not 06:00.
    t = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    a = alert(detected_at=t, timezone="Europe/Berlin")
    assert route(cfg, a, Trigger.OPENED)[0].hold_until == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)
    # The same instant is 08:30 in Shanghai: outside the quiet hours.
    assert route(cfg, replace(a, timezone="Asia/Shanghai"), Trigger.OPENED)[0].hold_until is None
    # New York at 23:00 EST (04:00 UTC next day) holds until 07:00 EST = 12:00 UTC.
    ny = datetime(2026, 1, 16, 4, 0, tzinfo=UTC)
    assert quiet_until(cfg, ny, "America/New_York") == datetime(2026, 1, 16, 12, 0, tzinfo=UTC)


def test_quiet_hours_same_day_window_and_event_time_of_later_triggers() -> None:
    cfg = config(quiet_hours="12:00-14:00")
    a = alert(detected_at=sh(2026, 11, 21, 9))
    assert route(cfg, a, Trigger.OPENED)[0].hold_until is None
    later = sh(2026, 11, 21, 12, 30)
    got = route(cfg, a, Trigger.SEVERITY, at=later)
    assert got[0].hold_until == sh(2026, 11, 21, 14)


def test_bursts_are_never_held_and_no_quiet_hours_hold_nothing() -> None:
    night = sh(2026, 11, 22, 3)
    cfg = config(quiet_hours="22:00-07:00")
    burst = route(cfg, alert(type="burst", detected_at=night), Trigger.OPENED)
    assert [t.channel for t in burst] == ["acme", "sms", "live", "duty"]
    assert all(t.hold_until is None for t in burst)
    held = route(cfg, alert(detected_at=night), Trigger.OPENED)
    assert held[0].hold_until == sh(2026, 11, 22, 7)  # the same alert as a leak is held
    no_quiet = route(config(), alert(detected_at=night), Trigger.OPENED)
    assert no_quiet and all(t.hold_until is None for t in no_quiet)


# -- SLA -------------------------------------------------------------------------------------------
def test_sla_defaults_overrides_and_escalation_timing() -> None:
    cfg = config(sla={"ack_min": {"tamper": 60}, "resolve_h": {"critical": 2}})
    assert ack_due(cfg, "leak") == timedelta(minutes=30)
    assert ack_due(cfg, "burst") == timedelta(minutes=30)
    assert ack_due(cfg, "tamper") == timedelta(minutes=60)
    assert ack_due(cfg, "silent") == timedelta(hours=4)
    assert resolve_due(cfg, "critical") == timedelta(hours=2)
    assert resolve_due(cfg, "warning") == timedelta(hours=8)
    assert resolve_due(cfg, "info") == timedelta(hours=72)
    assert escalation_due(cfg, "leak", 2) == timedelta(hours=1)
    assert deadlines(cfg, alert()) == (T0 + timedelta(minutes=30), T0 + timedelta(hours=8))


def test_auto_resolve_defaults_and_overrides() -> None:
    cfg = config(auto_resolve_h={"burst": 2})
    assert auto_resolve_after(cfg, "leak") == timedelta(0)
    assert auto_resolve_after(cfg, "silent") == timedelta(hours=1)
    assert auto_resolve_after(cfg, "burst") == timedelta(hours=2)
    assert auto_resolve_after(cfg, "abnormal_high") == timedelta(hours=24)


# -- the config file ------------------------------------------------------------------------------
def doc_example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/notifications.md has no TOML example"
    return max(blocks, key=len)


def test_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "notify.toml"
    path.write_text(doc_example(), encoding="utf-8")
    cfg = NotifyConfig.load(path)
    # Every channel of the example is one the notifier can build (none is sent to here).
    context = ChannelContext(database_url="postgresql://x@localhost/x", mqtt_url="mqtt://x")
    for name, channel in build_channels(cfg, context).items():
        assert channel.name == name
    assert cfg.hotline == "96390"
    assert cfg.quiet_hours == "22:00-07:00"
    assert cfg.channels["duty-wecom"]["kind"] == "wecom"
    assert [r.name for r in cfg.rules][:2] == ["dashboard", "duty"]
    assert cfg.max_level == 2
    assert cfg.team_for("acme", "wuchang-01") == "east"
    assert cfg.sla.ack_min["tamper"] == 120 and cfg.sla.ack_min["silent"] == 240
    assert cfg.auto_resolve_h["burst"] == 2 and cfg.auto_resolve_h["leak"] == 0
    acme_leak = alert(detected_at=sh(2026, 11, 21, 23))
    got = {t.channel: t for t in route(cfg, acme_leak, Trigger.OPENED)}
    assert list(got) == ["live", "duty-wecom", "acme-feishu", "crm"]
    assert got["acme-feishu"].hold_until == sh(2026, 11, 22, 7)
    assert got["duty-wecom"].hold_until is None


def test_load_reports_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[rules]]\nname = "x"\naudience = "staff"\nchannels = ["nope"]\n')
    with pytest.raises(NotifyConfigError, match=r"bad\.toml: .*unknown channel.*'nope'"):
        NotifyConfig.load(path)
    path.write_text("quiet_hours = \n")
    with pytest.raises(NotifyConfigError, match=r"bad\.toml"):
        NotifyConfig.load(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channels": {"x": {"kind": "pager"}}}, "kind must be one of"),
        ({"channels": {"x": {"url": "http://h"}}}, "kind must be one of"),
        ({"quiet_hours": "22-07"}, "quiet_hours"),
        ({"quiet_hours": "25:00-07:00"}, "quiet_hours"),
        ({"quiet_hours": "07:00-07:00"}, "quiet_hours"),
        ({"quiet_hour": "22:00-07:00"}, "Extra inputs are not permitted"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["live"], "colour": 1}]},
         "Extra inputs"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["nope"]}]}, "unknown channel"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["live"], "types": ["flood"]}]},
         "unknown alert type"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["live"], "level": 2}]},
         "no rule for level"),
        ({"rules": [{"name": "r", "audience": "customer", "channels": ["live"],
                     "triggers": ["escalated"]}]}, "customers are not notified"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["live"], "teams": ["t"]}]},
         "unknown team"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": ["live"]}] * 2}, "unique"),
        ({"rules": [{"name": "r", "audience": "staff", "channels": []}]}, "at least 1"),
        ({"sla": {"ack_min": {"flood": 5}}}, "unknown alert type"),
        ({"sla": {"resolve_h": {"warning": 0}}}, "must be > 0"),
        ({"auto_resolve_h": {"leak": -1}}, "must be >= 0"),
        ({"suppress_days_default": 100}, "suppress_days_default"),
        ({"public_url": "water.example.cn"}, "public_url"),
        ({"language": "fr"}, "language"),
    ],
)  # fmt: skip
def test_validation_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotifyConfig.model_validate(data)


def test_file_with_own_channels_and_no_rules_routes_nowhere(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text('hotline = "96xxx"\n[channels.duty]\nkind = "wecom"\n')
    cfg = NotifyConfig.load(path)
    assert route(cfg, alert(), Trigger.OPENED) == []
    # ... while a file with neither keeps the default live stream.
    path.write_text('hotline = "96xxx"\nlanguage = "en"\n')
    assert channels(route(NotifyConfig.load(path), alert(), Trigger.OPENED)) == ["live"]
