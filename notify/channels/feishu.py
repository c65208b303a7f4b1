"""飞书 (Feishu / Lark) custom bot.

Followed: Feishu's "自定义机器人使用指南"
(open.feishu.cn/document/client-docs/bot-v3/add-custom-bot).
POST JSON to ``https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN``, here a rich-text ``post``
message in ``zh_cn`` or ``en_us``. With the "签名校验" setting the body also carries
``timestamp`` (seconds, within an hour) and ``sign`` = base64(HMAC-SHA256(key=
f"{timestamp}\\n{secret}", msg=b"")): unlike DingTalk, the string is the key and the message is
empty. The answer is ``{"code": 0, "msg": "success"}`` (older deployments: ``{"StatusCode": 0}``);
19021 is a failed signature, 9499 and 11232 are rate limits. Requests are capped at 20 KB.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
from pydantic import SecretStr

from notify.channels._http import HttpChannel, HttpSpec, robot_answer
from notify.channels._render import links as link_list
from notify.channels._render import truncate_utf8
from notify.model import Notification

TEXT_LIMIT = 16_000  # leaves room for the JSON around it under the 20 KB request cap
RATE_LIMITED = frozenset({9499, 11232})


class FeishuSpec(HttpSpec):
    secret: SecretStr | None = None


def sign(secret: str, timestamp_s: str) -> str:
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def post_body(n: Notification) -> dict[str, Any]:
    text = truncate_utf8(n.text, TEXT_LIMIT)
    content: list[list[dict[str, str]]] = [
        [{"tag": "text", "text": line}] for line in text.split("\n")
    ]
    content += [[{"tag": "a", "text": label, "href": url}] for label, url in link_list(n)]
    lang = "zh_cn" if n.lang.startswith("zh") else "en_us"
    return {
        "msg_type": "post",
        "content": {"post": {lang: {"title": n.title, "content": content}}},
    }


class FeishuChannel(HttpChannel):
    kind = "feishu"
    spec_model = FeishuSpec
    _spec: FeishuSpec

    def body(self, n: Notification) -> dict[str, Any]:
        body = post_body(n)
        if self._spec.secret is not None:
            timestamp = str(int(time.time()))
            body = {
                "timestamp": timestamp,
                "sign": sign(self._spec.secret.get_secret_value(), timestamp),
                **body,
            }
        return body

    async def send(self, n: Notification) -> str:
        body = orjson.dumps(self.body(n))
        response = await self._post(self._url, body, {"Idempotency-Key": n.key})
        return robot_answer(
            response,
            where=self.target(),
            code_keys=("code", "StatusCode"),
            retryable_codes=RATE_LIMITED,
        )
