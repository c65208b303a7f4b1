"""Generic webhook: the notification as JSON, signed, for the utility's own systems.

The receiver checks ``X-Meterwatch-Signature`` = ``sha256=`` + hex HMAC-SHA256 keyed by the
shared secret over ``f"{timestamp}." + body`` (the scheme Stripe and Slack use: signing the
timestamp with the body lets a receiver refuse replays older than a few minutes), and drops
duplicates of an at-least-once delivery by ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson
from pydantic import Field, SecretStr

from notify.channels._http import HttpChannel, HttpSpec
from notify.model import Notification

OWN_HEADERS = frozenset(
    {
        "content-type",
        "x-meterwatch-timestamp",
        "x-meterwatch-signature",
        "x-meterwatch-event",
        "idempotency-key",
    }
)


class WebhookSpec(HttpSpec):
    secret: SecretStr | None = None
    # Extra headers (an Authorization token, a tenant id); the meterwatch headers win a clash.
    headers: dict[str, str] = Field(default_factory=dict)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class WebhookChannel(HttpChannel):
    kind = "webhook"
    spec_model = WebhookSpec
    _spec: WebhookSpec

    async def send(self, n: Notification) -> str:
        body = orjson.dumps(n.to_json())
        timestamp = str(int(time.time()))
        headers = {
            **{k: v for k, v in self._spec.headers.items() if k.lower() not in OWN_HEADERS},
            "Content-Type": "application/json",
            "X-Meterwatch-Timestamp": timestamp,
            "X-Meterwatch-Event": str(n.trigger),
            "Idempotency-Key": n.key,
        }
        if self._spec.secret is not None:
            headers["X-Meterwatch-Signature"] = signature(
                self._spec.secret.get_secret_value(), timestamp, body
            )
        response = await self._post(self._url, body, headers)
        return str(response.status_code)
