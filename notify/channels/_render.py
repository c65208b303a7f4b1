"""Small text helpers the kinds share: link labels and byte-exact truncation.

The notification's ``title`` and ``text`` are already rendered in its language (notify's
templates); the kinds only dress them in each service's markup and fit them into its limits.
"""

from __future__ import annotations

from notify.model import Notification

ELLIPSIS = "…"

LINK_LABELS: dict[str, dict[str, str]] = {
    "zh": {"alert": "查看告警", "expected": "是预期用水", "not_expected": "不是预期用水"},
    "en": {"alert": "View alert", "expected": "Expected use", "not_expected": "Not expected"},
}


def links(n: Notification) -> list[tuple[str, str]]:
    """(label, url) in a stable order: the alert first, then the customer's two answers."""
    labels = LINK_LABELS.get(n.lang, LINK_LABELS["en"])
    known = [k for k in ("alert", "expected", "not_expected") if n.links.get(k)]
    others = sorted(k for k in n.links if k not in labels and n.links[k])
    return [(labels.get(k, k), n.links[k]) for k in known + others]


def truncate_utf8(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character, ending in
    ``marker`` when something was cut (services count bytes, not characters)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    room = limit - len(marker.encode())
    if room <= 0:
        return raw[:limit].decode(errors="ignore")
    return raw[:room].decode(errors="ignore") + marker


def utf8_len(text: str) -> int:
    return len(text.encode())


def fit(head: str, text: str, tail: str, limit: int) -> str:
    """``head + text + tail`` in at most ``limit`` UTF-8 bytes, cutting the text so the title
    and the links (the parts a reader acts on) survive."""
    room = limit - utf8_len(head) - utf8_len(tail)
    if room >= utf8_len(ELLIPSIS):
        return head + truncate_utf8(text, room) + tail
    return truncate_utf8(head + text + tail, limit)
