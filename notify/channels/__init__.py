"""Notification channels: one small class per kind, built from a config mapping.

``build_channel(name, spec, context)`` picks the class by ``spec["kind"]``; the class validates
the rest of the mapping (unknown keys are errors) and keeps its connection between sends.
``send`` delivers one notification once or raises :class:`DeliveryError`, whose ``retryable``
tells the outbox whether to try again. Operator reference: docs/channels.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from notify.channels.base import NO_CONTEXT, Channel, ChannelContext, DeliveryError
from notify.channels.dingtalk import DingtalkChannel
from notify.channels.feishu import FeishuChannel
from notify.channels.mail import EmailChannel
from notify.channels.mqtt import MqttChannel
from notify.channels.stream import StreamChannel
from notify.channels.webhook import WebhookChannel
from notify.channels.wecom import WecomChannel

KINDS: dict[str, type[Channel]] = {
    cls.kind: cls
    for cls in (
        WebhookChannel,
        WecomChannel,
        DingtalkChannel,
        FeishuChannel,
        EmailChannel,
        MqttChannel,
        StreamChannel,
    )
}


def build_channel(
    name: str, spec: Mapping[str, Any], context: ChannelContext = NO_CONTEXT
) -> Channel:
    """The channel ``name`` as configured; ValueError (naming the channel, never echoing a
    value) for an unknown kind or a spec its kind refuses."""
    kind = spec.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"channel {name!r}: unknown kind {kind!r}; known kinds: {sorted(KINDS)}")
    return cls(name, spec, context)


__all__ = ["KINDS", "Channel", "ChannelContext", "DeliveryError", "build_channel"]
