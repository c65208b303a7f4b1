"""Customers answer a reminder from its link: ``/feedback/{token}``, a small bilingual page.

The links in SMS, WeChat and e-mail reminders (``notify.links``) carry a signed token naming the
alert; holding the link is the permission to answer for that alert until it expires. A GET only
shows the question with the answer preselected: chat apps and mail scanners fetch links to preview
them, and a preview must not answer for the customer. The form POSTs back to the same address,
and that applies the answer (``storage.lifecycle.feedback``) and thanks the customer.

Pages, not JSON: the reader is a person on a phone. They are self-contained (no scripts, inline
style) and tell the browser not to cache them, send them on as a referrer, or let robots in,
because the address is the credential.
"""

from __future__ import annotations

import html
import math
import time
from typing import Annotated
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import HTMLResponse

from api.deps import ConnDep, NotifyDep, SettingsDep, SigningKeyDep
from meterwatch.settings import MIN_SECRET
from notify.content import type_label
from notify.links import verify_feedback_token
from notify.routing import meter_zone
from storage import lifecycle, queries
from storage.lifecycle import ANSWERS, CUSTOMER, AlertNotFound

FORM_BYTES_MAX = 16 * 1024
FORM_FIELDS_MAX = 10  # the form has three
NOTE_MAX = 1000

Token = Annotated[str, Path(description="the signed token of the reminder's link")]

router = APIRouter(prefix="/feedback", tags=["feedback"])

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}

STYLE = """body{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#1a1a1a}h1{font-size:1.3rem}.en{color:#555}label{display:block;margin:.6rem 0}
textarea,input[type=number]{width:100%;box-sizing:border-box;font:inherit}
button{font:inherit;padding:.5rem 1.5rem;margin-top:.8rem}.box{background:#f3f6f9;padding:.8rem;
border-radius:.4rem}"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title_zh: str, title_en: str, body: str, code: int = status.HTTP_200_OK) -> HTMLResponse:
    doc = (
        '<!doctype html><html lang="zh"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title_zh)} / {_e(title_en)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{_e(title_zh)}<br><span class="en">{_e(title_en)}</span></h1>{body}</body></html>'
    )
    return HTMLResponse(doc, code, headers=HEADERS)


def _both(zh: str, en: str) -> str:
    return f'<p>{_e(zh)}<br><span class="en">{_e(en)}</span></p>'


def _error(code: int, zh: str, en: str) -> HTMLResponse:
    return _page("无法处理", "Cannot continue", _both(zh, en), code)


def _check(key: str, token: str) -> int | HTMLResponse:
    """The alert id of a valid token, or the page that says why there is none."""
    if not key:
        return _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "本系统尚未配置反馈链接（METERWATCH_SECRET_KEY 未设置或过短），请致电客服。",
            "Feedback links are not configured on this server (METERWATCH_SECRET_KEY is not "
            f"set or shorter than {MIN_SECRET} characters). Please call customer service.",
        )
    try:
        return verify_feedback_token(key, token, now=int(time.time()))
    except ValueError as e:
        if str(e) == "expired":
            return _error(
                status.HTTP_403_FORBIDDEN,
                "此链接已过期。如需帮助，请致电客服。",
                "This link has expired. Please call customer service if you need help.",
            )
        return _error(
            status.HTTP_403_FORBIDDEN,
            "此链接无效。请使用提醒消息中的完整链接。",
            "This link is not valid. Please use the complete link from the reminder.",
        )


def _gone() -> HTMLResponse:
    return _error(status.HTTP_404_NOT_FOUND, "找不到这条提醒。", "This reminder no longer exists.")


def _summary(alert: queries.AlertRow, zone: ZoneInfo) -> str:
    message = alert.message if isinstance(alert.message, dict) else {}
    zh = message.get("zh") or type_label(alert.type, "zh")
    en = message.get("en") or type_label(alert.type, "en")
    since = alert.started_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    return (
        f'<div class="box"><p>水表 / Meter <b>{_e(alert.meter_id)}</b> · {_e(since)}</p>'
        f"{_both(str(zh), str(en))}</div>"
    )


def _radio(value: str, checked: bool, zh: str, en: str) -> str:
    mark = " checked" if checked else ""
    return (
        f'<label><input type="radio" name="answer" value="{value}" required{mark}> '
        f'{_e(zh)} <span class="en">/ {_e(en)}</span></label>'
    )


@router.get("/{token}", response_class=HTMLResponse)
async def confirm(
    conn: ConnDep,
    config: NotifyDep,
    settings: SettingsDep,
    key: SigningKeyDep,
    token: Token,
    answer: Annotated[str | None, Query(description="expected or not_expected")] = None,
) -> HTMLResponse:
    """The question with ``answer`` preselected and a form to send it; changes nothing.

    Any other ``answer`` (a mangled link, a truncated one) preselects nothing: the customer
    still gets the question, not an error about a query parameter.
    """
    checked = _check(key, token)
    if isinstance(checked, HTMLResponse):
        return checked
    alert = await queries.get_alert(conn, checked)
    if alert is None:
        return _gone()
    # The meter's zone, as in the reminder that carried the link.
    zone = meter_zone(await queries.meter_timezone(conn, alert.meter_id) or settings.timezone)
    days = config.suppress_days_default
    form = (
        f'<form method="post" action="{_e(token)}">'
        + _radio("expected", answer == "expected",
                 "是的，这是正常用水（如蓄水、生产），暂停提醒",
                 "Yes, this use is expected (e.g. filling a tank, production); pause reminders")
        + _radio("not_expected", answer == "not_expected",
                 "不是，我不知道原因，请派人检查", "No, I don't know why; please have it checked")
        + f'<label>暂停提醒天数（仅选“是”时）<span class="en"> / Pause reminders for (days, '
        f'"yes" only)</span><input type="number" name="days" min="1" '
        f'max="{config.suppress_days_max}" step="1" value="{days}"></label>'
        '<label>备注（可选）<span class="en"> / Note (optional)</span>'
        f'<textarea name="note" rows="3" maxlength="{NOTE_MAX}"></textarea></label>'
        '<button type="submit">提交 / Submit</button></form>'
    )  # fmt: skip
    body = (
        _summary(alert, zone)
        + _both("请确认您的回复，点击“提交”后才会记录。",
                "Please confirm your answer; nothing is recorded until you press Submit.")
        + form
    )  # fmt: skip
    return _page("这次用水是否正常？", "Is this water use expected?", body)


def _form_days(raw: str, max_days: int) -> float | HTMLResponse | None:
    if not raw.strip():
        return None
    try:
        days = float(raw)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        return _error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "天数必须是正数。",
            "The number of days must be a positive number.",
        )
    return min(days, float(max_days))


@router.post("/{token}", response_class=HTMLResponse)
async def answer(
    request: Request,
    conn: ConnDep,
    config: NotifyDep,
    key: SigningKeyDep,
    token: Token,
) -> HTMLResponse:
    """Apply the form's answer (fields ``answer``, ``days``, ``note``) and say thank you."""
    checked = _check(key, token)
    if isinstance(checked, HTMLResponse):
        return checked
    # Read by hand: a three-field form does not need python-multipart as a dependency.
    body = await request.body()
    if len(body) > FORM_BYTES_MAX:
        return _error(
            status.HTTP_413_CONTENT_TOO_LARGE, "提交的内容过长。", "The form is too large."
        )
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=FORM_FIELDS_MAX)
    except ValueError:  # more fields than that: not our form
        return _error(
            status.HTTP_413_CONTENT_TOO_LARGE, "提交的内容过长。", "The form is too large."
        )
    given = fields.get("answer", [""])[0]
    if given not in ANSWERS:
        return _error(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "请选择一个回复。", "Please choose an answer."
        )
    days = _form_days(fields.get("days", [""])[0], config.suppress_days_max)
    if isinstance(days, HTMLResponse):
        return days
    note = fields.get("note", [""])[0].replace("\x00", "")[:NOTE_MAX]
    try:
        async with conn.transaction():
            await lifecycle.feedback(
                conn, checked, answer=given, days=days, note=note, actor=CUSTOMER,
                config=config, secret=key,
            )  # fmt: skip
    except AlertNotFound:
        return _gone()
    if given == "expected":
        text = _both("已记录。我们会暂停这类提醒。", "Recorded. We will pause these reminders.")
    else:
        text = _both(
            "已记录。工作人员会尽快与您联系或上门检查。",
            "Recorded. Our staff will contact you or come to check soon.",
        )
    return _page("谢谢您的回复", "Thank you for your answer", text)
