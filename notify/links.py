"""Signed feedback links: a customer answers "is this use expected?" from an SMS or e-mail.

The token carries the alert id and its expiry in clear and an HMAC-SHA256 over both, so the API
needs no login and no stored nonce: whoever holds the link may answer for that one alert until it
expires. The MAC is cut to 128 bits, plenty against forgery and short enough for an SMS.

>>> t = feedback_token("k" * 32, 17, 2_000_000_000)
>>> verify_feedback_token("k" * 32, t, now=1_900_000_000)
17
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_MAC_BYTES = 16
_TOKEN = re.compile(r"^([1-9]\d{0,18})\.([1-9]\d{0,11})\.([A-Za-z0-9_-]{22})$")
# Domain separation: the same secret may sign other things (API tokens) without a feedback token
# ever passing for one of those.
_PURPOSE = b"meterwatch-feedback-v1:"


def _mac(secret: str, alert_id: int, expires_at: int) -> str:
    if not secret:
        raise ValueError("no secret: set METERWATCH_SECRET_KEY to sign feedback links")
    msg = _PURPOSE + f"{alert_id}.{expires_at}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def feedback_token(secret: str, alert_id: int, expires_at: int) -> str:
    """``{alert_id}.{expires_at}.{mac}``: URL-safe; ``expires_at`` in epoch seconds."""
    if alert_id <= 0 or expires_at <= 0:
        raise ValueError("alert_id and expires_at must be positive")
    return f"{alert_id}.{expires_at}.{_mac(secret, alert_id, expires_at)}"


def verify_feedback_token(secret: str, token: str, now: int) -> int:
    """The alert id the token was made for; ``ValueError("invalid")`` or ``("expired")``.

    The MAC is checked (in constant time) before the expiry, so a forged token never learns
    whether its expiry would have passed.
    """
    m = _TOKEN.match(token)
    if m is None:
        raise ValueError("invalid")
    alert_id, expires_at = int(m.group(1)), int(m.group(2))
    if not hmac.compare_digest(m.group(3), _mac(secret, alert_id, expires_at)):
        raise ValueError("invalid")
    if now >= expires_at:
        raise ValueError("expired")
    return alert_id


def alert_link(public_url: str, alert_id: int) -> str:
    """The alert in the API (staff log in to open it)."""
    return f"{public_url.rstrip('/')}/api/v1/alerts/{alert_id}"


def feedback_links(public_url: str, secret: str, alert_id: int, expires_at: int) -> dict[str, str]:
    """The two answers a customer can give, and the alert itself: what ``render`` prints."""
    base = public_url.rstrip("/")
    token = feedback_token(secret, alert_id, expires_at)
    return {
        "expected": f"{base}/api/v1/feedback/{token}?answer=expected",
        "not_expected": f"{base}/api/v1/feedback/{token}?answer=not_expected",
        "alert": alert_link(base, alert_id),
    }
