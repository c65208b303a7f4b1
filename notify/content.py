"""What people read: the alert's summary (stored on the alert) and each notification's text.

Customers get a reminder in the voice of a 水管家 service: what we saw, what it costs, what to
check, whom to call, and "is this expected?". Staff get a terse work order. Chinese is the default;
customer texts say 吨 for m3 because that is how water bills speak. Times are the meter's local
wall clock. Every template reads the evidence the detectors emit (docs/detection.md) and drops a
clause whose number is missing rather than print "None": evidence shapes change and flag-raised
alerts carry little. Output is plain text with light markdown (bold, line breaks): WeCom, DingTalk
and Feishu render it, e-mail and SMS read fine without.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from notify.model import AlertFacts, Audience, Trigger
from notify.routing import meter_zone

TYPE_LABELS: dict[str, tuple[str, str]] = {
    "leak": ("疑似漏水", "possible leak"),
    "burst": ("疑似爆管", "possible burst"),
    "abnormal_high": ("用水量异常偏高", "unusually high use"),
    "abnormal_low": ("用水量异常偏低", "unusually low use"),
    "no_consumption": ("长期无用水", "no consumption"),
    "reverse_flow": ("水表倒转", "reverse flow"),
    "tamper": ("水表被拆动或磁干扰", "meter tampering"),
    "low_battery": ("水表电量低", "low meter battery"),
    "silent": ("水表未上报", "meter not reporting"),
    "fleet_outlier": ("用水规律异常", "unusual use pattern"),
    "dma_imbalance": ("分区产销差异常", "district water loss"),
    "meter_alarm": ("水表告警", "meter alarm"),
}
SEVERITY_LABELS = {
    "critical": ("紧急", "CRITICAL"),
    "warning": ("警告", "WARNING"),
    "info": ("提示", "INFO"),
}
TRIGGER_LABELS = {
    Trigger.OPENED: ("新告警", "New"),
    Trigger.SEVERITY: ("级别升高", "Severity raised"),
    Trigger.REOPENED: ("再次出现", "Reopened"),
    Trigger.ESCALATED: ("已升级", "Escalated"),
    Trigger.RESOLVED: ("已关闭", "Resolved"),
    Trigger.FEEDBACK: ("客户反馈", "Customer feedback"),
}
_RESOLUTIONS = {
    "cleared": ("数据显示情况已恢复正常", "the data show the condition has ended"),
    "auto": ("数据显示情况已恢复正常", "the data show the condition has ended"),
    "repaired": ("已维修", "repaired"),
    "staff": ("工作人员关闭", "closed by staff"),
    "expected": ("客户确认属正常用水", "the customer said the use is expected"),
    "false_alarm": ("误报", "false alarm"),
}
_FLAGS = {
    "tamper": ("被拆动", "tampering"),
    "magnetic": ("受到磁铁干扰", "a magnet nearby"),
    "reverse": ("倒流", "reverse flow"),
    "leak": ("漏水", "leak"),
    "burst": ("爆管", "burst"),
    "low_battery": ("电量低", "low battery"),
    "dry": ("管道无水（空管）", "empty pipe (dry)"),
}
# Types about the device rather than the water used: "is this use expected?" does not fit them.
_DEVICE_TYPES = frozenset({"tamper", "low_battery", "silent", "meter_alarm", "reverse_flow"})


def type_label(alert_type: str, lang: str) -> str:
    zh, en = TYPE_LABELS.get(alert_type, (alert_type, alert_type.replace("_", " ")))
    return zh if lang == "zh" else en


# -- numbers and times ----------------------------------------------------------------------------
def _num(ev: Mapping[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` holding a number (bools and strings are not numbers here)."""
    for k in keys:
        v = ev.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def fmt(x: float) -> str:
    """Few digits, as people write them: 38, 3.6, 0.91, 1250."""
    a = abs(x)
    s = f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _local(t: datetime, tz: str) -> datetime:
    return t.astimezone(meter_zone(tz))


def _when(t: datetime, tz: str, lang: str) -> str:
    """Customer style: 11月21日 02:00 (zh), 2026-11-21 02:00 (en); the meter's wall clock."""
    lt = _local(t, tz)
    return f"{lt.month}月{lt.day}日 {lt:%H:%M}" if lang == "zh" else f"{lt:%Y-%m-%d %H:%M}"


def _stamp(t: datetime, tz: str) -> str:
    """Staff style: 2026-11-21 02:00, with the zone named when it is not the usual one."""
    s = f"{_local(t, tz):%Y-%m-%d %H:%M}"
    return s if tz == "Asia/Shanghai" else f"{s} ({tz})"


def _hours(hours: Any, lang: str, limit: int = 6) -> str | None:
    if not isinstance(hours, list) or not hours:
        return None
    hs = [int(h["hour"]) if isinstance(h, dict) else int(h) for h in hours[:limit]]
    more = len(hours) > limit
    if lang == "zh":
        return "、".join(f"{h:02d}时" for h in hs) + ("等" if more else "")
    return ", ".join(f"{h:02d}:00" for h in hs) + (", ..." if more else "")


def _flags(ev: Mapping[str, Any], lang: str) -> str | None:
    flags = ev.get("flags")
    if not isinstance(flags, list) or not flags:
        return None
    i = 0 if lang == "zh" else 1
    return ("、" if lang == "zh" else ", ").join(_FLAGS.get(f, (f, f))[i] for f in flags)


def _help(hotline: str, lang: str) -> str:
    if lang == "zh":
        return f"如需帮助请致电 {hotline}。" if hotline else "如需帮助请联系供水公司。"
    return f"For help, call {hotline}." if hotline else "For help, contact your water company."


def _loss(a: AlertFacts, lang: str, loss: float | None = None, *, extra: bool = False) -> str:
    """ ", 估计每天损失 0.91 吨水（约 3.6 元）" or "" when the loss is unknown."""
    loss = a.estimated_loss_m3_per_day if loss is None else loss
    if loss is None or loss <= 0:
        return ""
    cost = a.estimated_cost_cny_per_day
    if lang == "zh":
        c = f"（约 {fmt(cost)} 元）" if cost else ""
        return f"，{'比平时每天多用' if extra else '估计每天损失'} {fmt(loss)} 吨水{c}"
    c = f" (about CNY {fmt(cost)})" if cost else ""
    if extra:
        return f", an estimated {fmt(loss)} m³ a day more than usual{c}"
    return f", losing an estimated {fmt(loss)} m³ of water a day{c}"


def _paren(parts: list[str], lang: str) -> str:
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return f"（{'，'.join(parts)}）" if lang == "zh" else f" ({', '.join(parts)})"


# -- one summary per alert type -------------------------------------------------------------------
Summary = Callable[[AlertFacts, str, str, str], str]  # (alert, lang, who, since) -> sentences


def _leak(a: AlertFacts, lang: str, who: str, since: str) -> str:
    ev, zh = a.evidence, lang == "zh"
    rate = _num(ev, "leak_lph", "min_flow_lph", "night_min_flow_lph", "low_flow_lph")
    r = f"{fmt(rate)} {'升/小时' if zh else 'L/h'}" if rate is not None else ""
    rule = ev.get("rule")
    nights = _num(ev, "nights")
    loss = a.estimated_loss_m3_per_day
    if loss is None and rate is not None:
        loss = rate * 24 / 1000.0  # the detector's own rule: the rate all day long
    if ev.get("source") == "meter_flag":
        head = (
            f"{who} 自 {since} 起报告漏水告警" if zh else f"{who} has reported a leak since {since}"
        )
    elif rule == "night_flow" and nights:
        head = (
            f"{who} 自 {since} 起连续 {fmt(nights)} 晚夜间仍有水流"
            if zh
            else f"{who} has had water flowing at night for {fmt(nights)} nights since {since}"
        )
    elif rule == "low_flow_day":
        low, normal = _num(ev, "low_flow_lph"), _num(ev, "normal_low_lph")
        unit = "升/小时" if zh else "L/h"
        r = ", ".join(
            p
            for p in (
                f"{'约' if zh else 'about'} {fmt(low)} {unit}" if low is not None else "",
                f"{'平时约' if zh else 'usually'} {fmt(normal)} {unit}"
                if normal is not None
                else "",
            )
            if p
        )
        head = (
            f"{who} 自 {since} 起最低流量持续高于平时"
            if zh
            else f"{who} has had a higher low flow than usual since {since}"
        )
    else:
        head = (
            f"{who} 自 {since} 起持续有水流" if zh else f"{who} has had water flowing since {since}"
        )
    if zh:
        r = f"约 {r}" if r and not r.startswith(("约", "平时")) else r
        return (
            f"{head}{_paren([r.replace(', ', '，')], lang)}，疑似漏水{_loss(a, lang, loss)}。"
            "请检查马桶、水箱浮球阀、阀门及暗管；关闭所有用水点后观察水表是否仍在走字。"
        )
    r = f"about {r}" if r and not r.startswith(("about", "usually")) else r
    return (
        f"{head}{_paren([r], lang)}: possibly a leak{_loss(a, lang, loss)}. Check toilets, cistern "
        "float valves, valves and hidden pipes; with every tap closed, see whether the meter's "
        "dial still moves."
    )


def _burst(a: AlertFacts, lang: str, who: str, since: str) -> str:
    ev, zh = a.evidence, lang == "zh"
    flow, dur, vol = _num(ev, "flow_m3h"), _num(ev, "duration_min"), _num(ev, "volume_m3")
    if zh:
        p = _paren(
            [
                f"约 {fmt(flow)} 吨/小时" if flow is not None else "",
                f"已持续约 {fmt(dur)} 分钟" if dur is not None else "",
                f"累计约 {fmt(vol)} 吨" if vol is not None else "",
            ],
            lang,
        )
        return (
            f"{who} 自 {since} 起出现异常大流量{p}，疑似爆管或用水设备故障。"
            "请立即关闭总阀门，检查管道和用水设备。"
        )
    p = _paren(
        [
            f"about {fmt(flow)} m³/h" if flow is not None else "",
            f"for about {fmt(dur)} min" if dur is not None else "",
            f"{fmt(vol)} m³ so far" if vol is not None else "",
        ],
        lang,
    )
    return (
        f"{who} has shown a very high flow since {since}{p}: possibly a burst pipe or a failed "
        "fitting. Close the main valve now and check the pipes and appliances."
    )


def _use(a: AlertFacts, lang: str, who: str, since: str) -> str:
    """abnormal_high and abnormal_low: the last day against the meter's own normal."""
    ev, zh, high = a.evidence, lang == "zh", a.type == "abnormal_high"
    day, base, ratio = _num(ev, "day_m3"), _num(ev, "baseline_m3"), _num(ev, "ratio")
    days = _num(ev, "days")
    hours = _hours(ev.get("hours_above_normal"), lang) if high else None
    if zh:
        span = f"近 {fmt(days)} 天" if days else f"自 {since} 起"
        out = f"{who} {span}用水量明显{'偏高' if high else '低于平时'}"
        if day is not None:
            out += f"：最近一天用水约 {fmt(day)} 吨"
            if base is not None:
                rel = f"{fmt(ratio)} 倍" if high and ratio else f"{fmt((ratio or 0) * 100)}%"
                out += f"，约为平时（{fmt(base)} 吨）的 {rel}" if ratio is not None else ""
        out += f"{_loss(a, lang, extra=True) if high else ''}。"
        if hours:
            out += f"偏高时段：{hours}。"
        if high:
            return out + "请确认是否有新增用水（如访客、灌溉、设备清洗），或是否存在漏水。"
        return out + "如非外出或停产，可能是水表或供水异常，请联系我们检查。"
    span = f"over the last {fmt(days)} days" if days else f"since {since}"
    out = f"{who} has used {'much more' if high else 'much less'} water than usual {span}"
    if day is not None:
        out += f": {fmt(day)} m³ on the last day"
        if base is not None and ratio is not None:
            rel = f"{fmt(ratio)} times" if high else f"{fmt(ratio * 100)}% of"
            out += f", {rel} the usual {fmt(base)} m³"
    out += f"{_loss(a, lang, extra=True) if high else ''}."
    if hours:
        out += f" Hours above normal: {hours}."
    if high:
        return out + " Please check for new uses (guests, irrigation, cleaning) or a leak."
    return out + " Unless the premises are empty, the meter or the supply may be at fault."


def _no_use(a: AlertFacts, lang: str, who: str, since: str) -> str:
    days = _num(a.evidence, "days_without_use")
    if lang == "zh":
        d = f"已有 {fmt(days)} 天" if days else ""
        return (
            f"{who} 自 {since} 起{d}没有用水记录。如房屋空置或停产可忽略；"
            "如一直在用水，水表可能已停走，请联系我们安排检查。"
        )
    d = f" ({fmt(days)} days)" if days else ""
    return (
        f"{who} has recorded no use since {since}{d}. If the premises are empty, ignore this; "
        "if water is being used, the meter may be stuck."
    )


def _reverse(a: AlertFacts, lang: str, who: str, since: str) -> str:
    vol = _num(a.evidence, "volume_l")
    if lang == "zh":
        v = f"（回流约 {fmt(vol)} 升）" if vol is not None else ""
        return (
            f"{who} 自 {since} 起出现倒转{v}，可能是管道回流或水表安装方向有误，"
            "存在水质安全隐患。请勿自行处理，我们将安排检查。"
        )
    v = f" (about {fmt(vol)} L back)" if vol is not None else ""
    return (
        f"{who} has run backwards since {since}{v}: water flowing back or a meter fitted the "
        "wrong way round, a risk to water quality. We will arrange a check."
    )


def _tamper(a: AlertFacts, lang: str, who: str, since: str) -> str:
    flags = _flags(a.evidence, lang)
    if lang == "zh":
        f = flags or "被拆动或受到磁干扰"
        return f"{who} 于 {since} 报告{f}。请检查水表及铅封是否完好；如近期有维修施工请告知我们。"
    f = flags or "tampering or a magnet"
    return (
        f"{who} reported {f} at {since}. Please check that the meter and its seal are intact, "
        "and tell us about any recent plumbing work."
    )


def _battery(a: AlertFacts, lang: str, who: str, since: str) -> str:
    pct = _num(a.evidence, "battery_pct")
    if lang == "zh":
        p = f"（剩余 {fmt(pct)}%）" if pct is not None else ""
        return f"{who} 电池电量偏低{p}，可能影响远程抄表。我们会安排更换电池，无需您操作。"
    p = f" ({fmt(pct)}% left)" if pct is not None else ""
    return (
        f"{who} is running low on battery{p}, which may stop remote reading. We will replace "
        "it; you need not do anything."
    )


def _silent(a: AlertFacts, lang: str, who: str, since: str) -> str:
    h = _num(a.evidence, "silent_after_h")
    if lang == "zh":
        d = f"（已超过 {fmt(h)} 小时）" if h else ""
        return (
            f"{who} 自 {since} 起未再上报读数{d}。可能是信号或电池问题，"
            "不影响正常用水，我们会安排检查。"
        )
    d = f" (over {fmt(h)} h)" if h else ""
    return (
        f"{who} has not reported since {since}{d}, probably a signal or battery problem. Your "
        "supply is not affected; we will check it."
    )


def _outlier(a: AlertFacts, lang: str, who: str, since: str) -> str:
    ev = a.evidence
    vol, group = _num(ev, "day_volume_m3"), _num(ev, "group_median_day_volume_m3")
    hours = _hours(ev.get("hours"), lang, limit=3)
    if lang == "zh":
        p = _paren(
            [
                f"最近一天用水约 {fmt(vol)} 吨" if vol is not None else "",
                f"同类用户一般约 {fmt(group)} 吨" if group is not None else "",
            ],
            lang,
        )
        h = f"差异较大的时段：{hours}。" if hours else ""
        return (
            f"{who} 自 {since} 起用水规律与同类用户明显不同{p}。{h}"
            "请确认用水方式是否有变化，或是否存在漏水。"
        )
    p = _paren(
        [
            f"{fmt(vol)} m³ on the last day" if vol is not None else "",
            f"similar users about {fmt(group)} m³" if group is not None else "",
        ],
        lang,
    )
    h = f" Most different hours: {hours}." if hours else ""
    return (
        f"{who} has used water unlike similar users since {since}{p}.{h} Please check whether "
        "anything changed, or look for a leak."
    )


def _dma(a: AlertFacts, lang: str, who: str, since: str) -> str:
    ev, zh = a.evidence, lang == "zh"
    dma = ev.get("dma") or a.dma or "?"
    day = ev.get("day")
    start_day = _local(a.started_at, a.timezone).date()
    d = (date(1970, 1, 1) + timedelta(days=day) if isinstance(day, int) else start_day).isoformat()
    n = {
        k: _num(ev, k)
        for k in (
            "inflow_m3",
            "customers_m3",
            "loss_m3",
            "normal_loss_m3",
            "excess_m3",
            "excess_share_of_inflow",
            "inlet_min_flow_m3h",
        )
    }
    u = "吨" if zh else "m³"
    parts = [
        (f"进水约 {fmt(x)} {u}" if zh else f"inflow {fmt(x)} {u}")
        if (x := n["inflow_m3"]) is not None
        else "",
        (f"用户用水约 {fmt(x)} {u}" if zh else f"customers {fmt(x)} {u}")
        if (x := n["customers_m3"]) is not None
        else "",
        (f"损失约 {fmt(x)} {u}" if zh else f"loss {fmt(x)} {u}")
        if (x := n["loss_m3"]) is not None
        else "",
        (f"平时约 {fmt(x)} {u}" if zh else f"usually {fmt(x)} {u}")
        if (x := n["normal_loss_m3"]) is not None
        else "",
        (f"超出 {fmt(x)} {u}" if zh else f"{fmt(x)} {u} over")
        if (x := n["excess_m3"]) is not None
        else "",
        (f"占进水 {fmt(x * 100)}%" if zh else f"{fmt(x * 100)}% of inflow")
        if (x := n["excess_share_of_inflow"]) is not None
        else "",
    ]
    mnf = n["inlet_min_flow_m3h"]
    if zh:
        m = f"夜间最小流量约 {fmt(mnf)} 吨/小时。" if mnf is not None else ""
        return (
            f"计量分区 {dma} {d} 产销差异常{_paren(parts, lang)}。{m}"
            "疑似管网漏损，建议安排巡检和听漏。"
        )
    m = f" Minimum night flow {fmt(mnf)} m³/h." if mnf is not None else ""
    return (
        f"District {dma} lost more water than usual on {d}{_paren(parts, lang)}.{m} Possibly a "
        "leak in the network: plan an inspection and leak detection."
    )


def _alarm(a: AlertFacts, lang: str, who: str, since: str) -> str:
    flags = _flags(a.evidence, lang)
    if lang == "zh":
        f = f"：{flags}" if flags else ""
        return f"{who} 于 {since} 报告告警{f}。如非计划停水，请联系我们检查。"
    f = f": {flags}" if flags else ""
    return f"{who} raised an alarm at {since}{f}. Unless the supply is off as planned, call us."


_SUMMARIES: dict[str, Summary] = {
    "leak": _leak,
    "burst": _burst,
    "abnormal_high": _use,
    "abnormal_low": _use,
    "no_consumption": _no_use,
    "reverse_flow": _reverse,
    "tamper": _tamper,
    "low_battery": _battery,
    "silent": _silent,
    "fleet_outlier": _outlier,
    "dma_imbalance": _dma,
    "meter_alarm": _alarm,
}


def _summary(a: AlertFacts, lang: str, hotline: str) -> str:
    who = f"您的水表 {a.meter_id}" if lang == "zh" else f"Your meter {a.meter_id}"
    since = _when(a.started_at, a.timezone, lang)
    fn = _SUMMARIES.get(a.type)
    if fn is None:
        label = type_label(a.type, lang)
        body = (
            f"{who}：{label}（自 {since} 起）。"
            if lang == "zh"
            else f"{who}: {label} since {since}."
        )
    else:
        body = fn(a, lang, who, since)
    if a.type == "dma_imbalance":
        return body  # for the utility's own staff: no "call us"
    return f"{body}{'' if lang == 'zh' else ' '}{_help(hotline, lang)}"


def message(alert: AlertFacts, hotline: str) -> dict[str, str]:
    """The alert's ``message`` (DESIGN.md): one summary per language, customer-readable."""
    return {"zh": _summary(alert, "zh", hotline), "en": _summary(alert, "en", hotline)}


# -- notifications --------------------------------------------------------------------------------
def render(
    alert: AlertFacts,
    audience: Audience,
    trigger: Trigger,
    lang: str,
    ack_by: datetime,
    resolve_by: datetime,
    *,
    message: Mapping[str, str],
    links: Mapping[str, str],
) -> tuple[str, str]:
    """(title, text) of one notification.

    ``ack_by`` / ``resolve_by`` are the SLA deadlines staff texts print (``routing.deadlines``);
    ``message`` is the alert's summary per language (:func:`message`), which customers read. For
    ``Trigger.ESCALATED`` the alert's ``escalation_level`` is the new level.
    """
    lang = "en" if lang == "en" else "zh"
    if audience == Audience.CUSTOMER:
        return _customer(alert, trigger, lang, message[lang], links)
    return _staff(alert, trigger, lang, links, ack_by, resolve_by)


def _customer(
    a: AlertFacts, trigger: Trigger, lang: str, summary: str, links: Mapping[str, str]
) -> tuple[str, str]:
    zh, label = lang == "zh", type_label(a.type, lang)
    if trigger == Trigger.RESOLVED:
        title = f"{label}提醒已解除" if zh else f"Resolved: {label}"
        lost = a.volume_lost_m3
        if zh:
            v = f"期间估计损失约 {fmt(lost)} 吨水。" if lost else ""
            body = f"您的水表 {a.meter_id} 的{label}情况已解除。{v}感谢您的配合。"
        else:
            v = f" About {fmt(lost)} m³ of water was lost meanwhile." if lost else ""
            body = f"The {label} on your meter {a.meter_id} is over.{v} Thank you."
        return title, f"**{title}**\n\n{body}"
    note = {
        Trigger.SEVERITY: ("情况有所加重。", "This has become more serious. "),
        Trigger.REOPENED: ("该情况再次出现。", "This has come back. "),
    }.get(trigger, ("", ""))[0 if zh else 1]
    title = f"用水提醒：{label}" if zh else f"Water use notice: {label}"
    text = f"**{title}**\n\n{note}{summary}"
    yes, no = links.get("expected"), links.get("not_expected")
    if yes and no:
        device = a.type in _DEVICE_TYPES
        if zh:
            q = "您是否已知晓此情况？" if device else "这次用水是否在您的预期之内？"
            y = "已知晓，无需处理" if device else "是，属于正常用水"
            n = "不知道，请帮我检查" if device else "不是，请帮我处理"
        else:
            q = "Did you know about this?" if device else "Is this use expected?"
            y = "Yes, I know about it" if device else "Yes, it is expected"
            n = "No, please check it" if device else "No, please help"
        text += (
            f"\n\n**{q}**\n- {y}：{yes}\n- {n}：{no}"
            if zh
            else (f"\n\n**{q}**\n- {y}: {yes}\n- {n}: {no}")
        )
    return title, text


def _evidence(ev: Mapping[str, Any], limit: int = 400) -> str:
    def one(v: Any) -> str:
        if isinstance(v, float):
            return fmt(v)
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {one(x)}" for k, x in v.items()) + "}"
        return str(v)

    s = ", ".join(f"{k}={one(v)}" for k, v in ev.items() if v is not None)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _staff(
    a: AlertFacts,
    trigger: Trigger,
    lang: str,
    links: Mapping[str, str],
    ack_by: datetime,
    resolve_by: datetime,
) -> tuple[str, str]:
    zh = lang == "zh"
    i = 0 if zh else 1
    label = type_label(a.type, lang)
    sev = SEVERITY_LABELS.get(a.severity, (a.severity, a.severity.upper()))[i]
    what = TRIGGER_LABELS[trigger][i]
    if trigger == Trigger.ESCALATED:
        what += f" L{a.escalation_level}"
    title = (
        f"[{sev}] {what}：{label} · {a.meter_id}"
        if zh
        else (f"[{sev}] {what}: {label} · {a.meter_id}")
    )
    sep = "：" if zh else ": "
    tenant = (
        f"{a.tenant}（{a.tenant_name}）"
        if zh and a.tenant_name
        else (f"{a.tenant} ({a.tenant_name})" if a.tenant_name else a.tenant)
    )
    lines = [f"**{title}**"]
    if trigger == Trigger.ESCALATED:
        lines.append(
            f"**未在确认时限内确认，已升级至第 {a.escalation_level} 级**"
            if zh
            else f"**Not acknowledged in time: escalated to level {a.escalation_level}**"
        )
    elif trigger == Trigger.FEEDBACK:
        lines.append(
            "**客户反馈：这次用水不在预期之内，请尽快联系客户并安排上门。**"
            if zh
            else "**The customer says this use is not expected: call and visit.**"
        )
    elif trigger == Trigger.REOPENED:
        lines.append("**已关闭的告警再次出现。**" if zh else "**Came back after it was resolved.**")
    fields = [
        (
            "类型" if zh else "Type",
            f"{label}（{a.type}），{sev}" if zh else f"{label} ({a.type}), {sev}",
        ),
        ("水表" if zh else "Meter", a.meter_id),
        ("用户" if zh else "Tenant", tenant),
        ("分区" if zh else "DMA", a.dma or "-"),
        ("班组" if zh else "Team", a.team or "-"),
        ("开始" if zh else "Since", _stamp(a.started_at, a.timezone)),
        ("发现" if zh else "Detected", _stamp(a.detected_at, a.timezone)),
    ]
    if a.evidence:
        fields.append(("证据" if zh else "Evidence", _evidence(a.evidence)))
    loss, cost = a.estimated_loss_m3_per_day, a.estimated_cost_cny_per_day
    if loss:
        c = (f"，{fmt(cost)} 元/天" if zh else f", CNY {fmt(cost)}/day") if cost else ""
        fields.append(
            ("估计损失" if zh else "Est. loss", f"{fmt(loss)} m³/{'天' if zh else 'day'}{c}")
        )
    if trigger == Trigger.RESOLVED:
        fields.extend(_closing(a, zh))
    else:
        ack, res = _stamp(ack_by, a.timezone), _stamp(resolve_by, a.timezone)
        sla = f"{ack} 前确认，{res} 前处理" if zh else f"acknowledge by {ack}, resolve by {res}"
        fields.append(("SLA", sla))
        if a.escalation_level > 0:
            fields.append(("升级级别" if zh else "Escalation level", str(a.escalation_level)))
    if links.get("alert"):
        fields.append(("详情" if zh else "Link", links["alert"]))
    lines.extend(f"{k}{sep}{v}" for k, v in fields)
    return title, "\n".join(lines)


def _closing(a: AlertFacts, zh: bool) -> list[tuple[str, str]]:
    i = 0 if zh else 1
    out = []
    when = a.resolved_at or a.last_seen_at
    out.append(("关闭" if zh else "Resolved", _stamp(when.astimezone(UTC), a.timezone)))
    if a.resolution:
        out.append(
            ("原因" if zh else "Cause", _RESOLUTIONS.get(a.resolution, (a.resolution,) * 2)[i])
        )
    if a.volume_lost_m3 is not None:
        out.append(("损失水量" if zh else "Volume lost", f"{fmt(a.volume_lost_m3)} m³"))
    if a.volume_saved_m3 is not None:
        out.append(
            ("挽回水量（估算）" if zh else "Volume saved (est.)", f"{fmt(a.volume_saved_m3)} m³")
        )
    return out
