"""钉钉 (DingTalk) custom robot.

Followed: DingTalk's custom robot guide ("自定义机器人接入", "加签"). POST JSON to
``https://oapi.dingtalk.com/robot/send?access_token=TOKEN``. With the "加签" security setting the
URL also carries ``timestamp`` (milliseconds, within an hour of DingTalk's clock) and ``sign`` =
urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))). The answer is HTTP 200
with ``{"errcode": 0, "errmsg": "ok"}``; 130101 means too fast (20 messages a minute), 310000 a
sign, keyword or IP check that failed. With the "自定义关键词" setting the keyword must appear in
the title or text, which the operator's templates see to.

A markdown message @-mentions only the phones in ``at.atMobiles`` that also appear as
``@<mobile>`` in its text, so both are added, for alerts whose severity is in
``mention_severities`` (default: critical).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote_plus

import orjson
from pydantic import Field, SecretStr

from notify.channels._http import HttpChannel, HttpSpec, robot_answer
from notify.channels._render import fit, links
from notify.model import Notification

# DingTalk documents no byte limit for markdown; this keeps well clear of its request size cap.
TEXT_LIMIT = 18_000
RATE_LIMITED = frozenset({130101})


class DingtalkSpec(HttpSpec):
    secret: SecretStr | None = None
    at_mobiles: list[str] = Field(default_factory=list)
    at_all: bool = False
    mention_severities: list[str] = Field(default_factory=lambda: ["critical"])


def sign(secret: str, timestamp_ms: str) -> str:
    """The URL-encoded "加签" signature."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return quote_plus(base64.b64encode(mac.digest()).decode())


class DingtalkChannel(HttpChannel):
    kind = "dingtalk"
    spec_model = DingtalkSpec
    _spec: DingtalkSpec

    def body(self, n: Notification) -> dict[str, Any]:
        mention = n.alert.get("severity") in self._spec.mention_severities
        mobiles = self._spec.at_mobiles if mention else []
        tail = "".join(f"\n\n[{label}]({url})" for label, url in links(n))
        if mobiles:
            tail += "\n\n" + " ".join(f"@{m}" for m in mobiles)
        text = fit(f"#### {n.title}\n\n", n.text.replace("\n", "\n\n"), tail, TEXT_LIMIT)
        return {
            "msgtype": "markdown",
            "markdown": {"title": n.title, "text": text},
            "at": {"atMobiles": mobiles, "isAtAll": mention and self._spec.at_all},
        }

    def signed_url(self) -> str:
        if self._spec.secret is None:
            return self._url
        timestamp = str(int(time.time() * 1000))
        signature = sign(self._spec.secret.get_secret_value(), timestamp)
        joiner = "&" if "?" in self._url else "?"
        return f"{self._url}{joiner}timestamp={timestamp}&sign={signature}"

    async def send(self, n: Notification) -> str:
        body = orjson.dumps(self.body(n))
        response = await self._post(self.signed_url(), body, {"Idempotency-Key": n.key})
        return robot_answer(
            response, where=self.target(), code_keys=("errcode",), retryable_codes=RATE_LIMITED
        )
