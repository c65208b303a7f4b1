"""Texts for people (every alert type, both languages) and the signed feedback links."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterwatch.domain import ALERT_TYPES
from notify.config import NotifyConfig
from notify.content import message, render
from notify.links import feedback_links, feedback_token, verify_feedback_token
from notify.model import AlertFacts, Audience, Trigger
from notify.routing import deadlines

T0 = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)  # 02:00 on 22 Nov in Shanghai
SECRET = "s3cret-for-tests-only-0123456789"
LINKS = {
    "expected": "https://w.example/api/v1/feedback/tok?answer=expected",
    "not_expected": "https://w.example/api/v1/feedback/tok?answer=not_expected",
    "alert": "https://w.example/api/v1/alerts/17",
}

# What the detectors emit (detectors/*.py), one realistic example per type.
EVIDENCE: dict[str, dict[str, Any]] = {
    "leak": {"rule": "continuous_flow", "leak_lph": 38.0, "min_flow_lph": 38.0,
             "normal_min_lph": 0.0, "threshold_lph": 5.0, "window_h": 24},
    "burst": {"flow_m3h": 2.4, "q3_m3h": 2.5, "duration_min": 35.0, "volume_m3": 1.4},
    "abnormal_high": {"day_m3": 1.8, "baseline_m3": 0.45, "ratio": 4.0, "days": 3,
                      "hours_above_normal": [2, 3, 14]},
    "abnormal_low": {"day_m3": 0.05, "baseline_m3": 0.4, "ratio": 0.12, "days": 3,
                     "hours_above_normal": []},
    "no_consumption": {"days_without_use": 7.5, "since": "2026-11-14T02:00:00+00:00",
                       "stage": "flag"},
    "reverse_flow": {"source": "register", "volume_l": 42.0, "intervals": 2},
    "tamper": {"source": "meter_flag", "flags": ["magnetic"], "battery_pct": 80.0},
    "low_battery": {"source": "meter_flag", "flags": ["low_battery"], "battery_pct": 8.0},
    "silent": {"last_reading_at": "2026-11-21T10:00:00+00:00", "expected_interval_s": 900,
               "silent_after_h": 4.0},
    "fleet_outlier": {"score": -0.71, "day_volume_m3": 2.2, "group_rows": 300,
                      "group_median_day_volume_m3": 0.6, "volume_ratio": 3.667,
                      "hours": [{"hour": 3, "share": 0.2, "group_share": 0.01}]},
    "dma_imbalance": {"dma": "wuchang-03", "day": 20778, "inflow_m3": 1200.0,
                      "customers_m3": 1020.0, "customer_meters": 480, "loss_m3": 180.0,
                      "normal_loss_m3": 120.0, "excess_m3": 60.0,
                      "excess_share_of_inflow": 0.05, "inlet_min_flow_m3h": 12.5},
    "meter_alarm": {"source": "meter_flag", "flags": ["dry"]},
}  # fmt: skip


def alert(type_: str = "leak", **kw: Any) -> AlertFacts:
    base: dict[str, Any] = {
        "id": 17,
        "tenant": "acme",
        "tenant_name": "武汉某某食品有限公司",
        "meter_id": "WH-000123",
        "dma": "wuchang-03",
        "type": type_,
        "severity": "warning",
        "status": "open",
        "started_at": T0,
        "detected_at": T0 + timedelta(hours=24),
        "last_seen_at": T0 + timedelta(hours=24),
        "evidence": EVIDENCE[type_],
        "estimated_loss_m3_per_day": 0.91,
        "estimated_cost_cny_per_day": 3.6,
        "team": "east",
    }
    return AlertFacts(**(base | kw))


def rendered(
    a: AlertFacts, audience: Audience, trigger: Trigger, lang: str, hotline: str = ""
) -> tuple[str, str]:
    """(title, text) as the outbox renders them under the default config."""
    return render(
        a, audience, trigger, lang, *deadlines(NotifyConfig(), a),
        message=message(a, hotline), links=LINKS,
    )  # fmt: skip


def test_every_type_has_evidence_here() -> None:
    assert set(EVIDENCE) == set(ALERT_TYPES)


@pytest.mark.parametrize("type_", ALERT_TYPES)
@pytest.mark.parametrize("empty", [False, True])
def test_every_type_renders_in_both_languages(type_: str, empty: bool) -> None:
    a = alert(type_)
    if empty:
        a = replace(a, evidence={}, estimated_loss_m3_per_day=None, estimated_cost_cny_per_day=None)
    msg = message(a, "96390")
    assert set(msg) == {"zh", "en"}
    assert a.meter_id in msg["zh"] or type_ == "dma_imbalance"
    for lang in ("zh", "en"):
        text = msg[lang]
        assert len(text) > 20
        assert "None" not in text and "nan" not in text.lower()
        if lang == "en":
            assert not any("\u4e00" <= c <= "\u9fff" for c in text), text
        for audience in Audience:
            for trig in (Trigger.OPENED, Trigger.RESOLVED):
                title, body = rendered(a, audience, trig, lang, hotline="96390")
                assert title and body
                assert "None" not in body and "<" not in body  # no HTML


def test_leak_message_reads_like_the_service() -> None:
    zh = message(alert(), "96390")["zh"]
    assert zh == (
        "您的水表 WH-000123 自 11月22日 02:00 起持续有水流（约 38 升/小时），疑似漏水，"
        "估计每天损失 0.91 吨水（约 3.6 元）。请检查马桶、水箱浮球阀、阀门及暗管；"
        "关闭所有用水点后观察水表是否仍在走字。如需帮助请致电 96390。"
    )
    en = message(alert(), "96390")["en"]
    for part in ("2026-11-22 02:00", "38 L/h", "0.91 m³", "CNY 3.6", "96390", "toilets"):
        assert part in en


def test_leak_message_uses_the_meters_zone_and_degrades_without_figures() -> None:
    a = alert(timezone="Europe/Berlin")
    assert "11月21日 19:00" in message(a, "")["zh"]
    assert "如需帮助请联系供水公司" in message(a, "")["zh"]
    bare = replace(a, evidence={}, estimated_loss_m3_per_day=None, estimated_cost_cny_per_day=None)
    zh = message(bare, "")["zh"]
    assert "疑似漏水" in zh and "升/小时" not in zh and "损失" not in zh and "元" not in zh
    # A leak rate but no stored loss: the loss is the rate all day long.
    rate_only = replace(a, estimated_loss_m3_per_day=None, estimated_cost_cny_per_day=None)
    assert "0.91 吨" in message(rate_only, "")["zh"]


def test_night_flow_and_business_low_flow_leaks() -> None:
    night = alert(evidence={"rule": "night_flow", "nights": 3, "leak_lph": 12.0,
                            "night_min_flow_lph": 12.0, "threshold_lph": 5.0})  # fmt: skip
    assert "连续 3 晚夜间仍有水流（约 12 升/小时）" in message(night, "")["zh"]
    low = alert(evidence={"rule": "low_flow_day", "leak_lph": 60.0, "low_flow_lph": 85.0,
                          "normal_low_lph": 25.0, "window_h": 48})  # fmt: skip
    zh = message(low, "")["zh"]
    assert "最低流量持续高于平时（约 85 升/小时，平时约 25 升/小时）" in zh


def test_type_specific_figures_appear() -> None:
    burst = message(alert("burst"), "")["zh"]
    assert "2.4 吨/小时" in burst and "35 分钟" in burst and "关闭总阀门" in burst
    high = message(alert("abnormal_high"), "")["zh"]
    assert "近 3 天" in high and "4 倍" in high and "02时、03时、14时" in high
    low = message(alert("abnormal_low"), "")["en"]
    assert "12% of the usual 0.4 m³" in low
    assert "回流约 42 升" in message(alert("reverse_flow"), "")["zh"]
    assert "受到磁铁干扰" in message(alert("tamper"), "")["zh"]
    assert "剩余 8%" in message(alert("low_battery"), "")["zh"]
    assert "7.5 天" in message(alert("no_consumption"), "")["zh"]
    dma = message(alert("dma_imbalance"), "")["zh"]
    assert "wuchang-03" in dma and "2026-11-21" in dma and "占进水 5%" in dma
    assert "空管" in message(alert("meter_alarm"), "")["zh"]


def test_customer_reminder_asks_with_both_links() -> None:
    for lang, question in (("zh", "这次用水是否在您的预期之内"), ("en", "Is this use expected?")):
        _, text = rendered(alert(), Audience.CUSTOMER, Trigger.OPENED, lang, hotline="96390")
        assert question in text
        assert LINKS["expected"] in text and LINKS["not_expected"] in text
        assert LINKS["alert"] not in text  # customers cannot open the staff API
        assert "96390" in text
    _, again = rendered(alert(), Audience.CUSTOMER, Trigger.REOPENED, "zh")
    assert "再次出现" in again
    _, done = rendered(alert(volume_lost_m3=2.5), Audience.CUSTOMER, Trigger.RESOLVED, "zh")
    assert "已解除" in done and "2.5 吨" in done and LINKS["expected"] not in done


def test_staff_work_order_has_the_facts_and_the_sla() -> None:
    cfg = NotifyConfig()
    a = alert(severity="critical", escalation_level=2)
    ack, res = deadlines(cfg, a)
    title, text = render(a, Audience.STAFF, Trigger.ESCALATED, "zh", ack, res,
                         message=message(a, ""), links=LINKS)  # fmt: skip
    assert title.startswith("[紧急]") and "WH-000123" in title
    for part in ("wuchang-03", "east", "武汉某某食品有限公司", "leak_lph=38", "0.91 m³/天",
                 "3.6 元/天", LINKS["alert"], "第 2 级"):  # fmt: skip
        assert part in text, part
    # Detected 02:00 on 23 Nov (Shanghai): acknowledge by 02:30, resolve (critical) by 06:00.
    assert "2026-11-23 02:30 前确认" in text and "2026-11-23 06:00 前处理" in text
    _, en = rendered(a, Audience.STAFF, Trigger.OPENED, "en")
    assert "acknowledge by 2026-11-23 02:30" in en and "Escalation level: 2" in en


def test_staff_feedback_and_resolution() -> None:
    _, fb = rendered(alert(), Audience.STAFF, Trigger.FEEDBACK, "zh")
    assert "不在预期之内" in fb
    done = alert(resolution="repaired", resolved_at=T0 + timedelta(hours=30),
                 volume_lost_m3=1.2, volume_saved_m3=27.3)  # fmt: skip
    title, text = rendered(done, Audience.STAFF, Trigger.RESOLVED, "en")
    assert "Resolved" in title
    assert "Cause: repaired" in text and "Volume lost: 1.2 m³" in text
    assert "Volume saved (est.): 27.3 m³" in text and "acknowledge by" not in text


# -- feedback links -------------------------------------------------------------------------------
def test_token_round_trip_and_links() -> None:
    exp = 1_900_000_000
    token = feedback_token(SECRET, 17, exp)
    assert verify_feedback_token(SECRET, token, now=exp - 1) == 17
    links = feedback_links("https://w.example/", SECRET, 17, exp)
    assert links["expected"] == f"https://w.example/api/v1/feedback/{token}?answer=expected"
    assert links["not_expected"] == f"https://w.example/api/v1/feedback/{token}?answer=not_expected"
    assert links["alert"] == "https://w.example/api/v1/alerts/17"
    assert all(c.isalnum() or c in "._-" for c in token)


def test_token_tamper_and_expiry() -> None:
    exp = 1_900_000_000
    token = feedback_token(SECRET, 17, exp)
    alert_id, expiry, mac = token.split(".")
    forged = [
        f"18.{expiry}.{mac}",  # another alert
        f"{alert_id}.{exp + 86400}.{mac}",  # a later expiry
        f"{alert_id}.{expiry}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        token + "x",
        "",
        "17.1900000000",
    ]
    for bad in forged:
        with pytest.raises(ValueError, match="invalid"):
            verify_feedback_token(SECRET, bad, now=exp - 10)
    with pytest.raises(ValueError, match="invalid"):
        verify_feedback_token("another-secret", token, now=exp - 10)
    with pytest.raises(ValueError, match="expired"):
        verify_feedback_token(SECRET, token, now=exp)
    with pytest.raises(ValueError):
        feedback_token("", 17, exp)  # an empty secret signs nothing
