"""企业微信 (WeCom) group robot.

Followed: WeCom's "群机器人配置说明" (developer.work.weixin.qq.com/document/path/91770).
POST JSON to ``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY``; the key in the URL is
the only credential (no signing). ``markdown.content`` holds at most 4096 bytes UTF-8,
``text.content`` 2048. The answer is HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}``;
errcode 45009 is the rate limit (20 messages a minute per robot).

Markdown messages cannot @-mention by phone number; only ``text`` messages carry
``mentioned_mobile_list``. So a channel with ``mentioned_mobiles`` sends alerts whose severity is
in ``mention_severities`` (default: critical) as plain text with the mentions, which makes
phones ring, and everything else as markdown.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field

from notify.channels._http import HttpChannel, HttpSpec, robot_answer
from notify.channels._render import fit, links
from notify.model import Notification

MARKDOWN_LIMIT = 4096
TEXT_LIMIT = 2048
RATE_LIMITED = frozenset({45009})


class WecomSpec(HttpSpec):
    mentioned_mobiles: list[str] = Field(default_factory=list)  # "@all" mentions everyone
    mention_severities: list[str] = Field(default_factory=lambda: ["critical"])


def markdown_body(n: Notification) -> dict[str, Any]:
    tail = "".join(f"\n[{label}]({url})" for label, url in links(n))
    content = fit(f"### {n.title}\n", n.text, tail, MARKDOWN_LIMIT)
    return {"msgtype": "markdown", "markdown": {"content": content}}


def text_body(n: Notification, mobiles: list[str]) -> dict[str, Any]:
    tail = "".join(f"\n{label}: {url}" for label, url in links(n))
    content = fit(f"{n.title}\n", n.text, tail, TEXT_LIMIT)
    return {"msgtype": "text", "text": {"content": content, "mentioned_mobile_list": mobiles}}


class WecomChannel(HttpChannel):
    kind = "wecom"
    spec_model = WecomSpec
    _spec: WecomSpec

    def body(self, n: Notification) -> dict[str, Any]:
        mobiles = self._spec.mentioned_mobiles
        if mobiles and n.alert.get("severity") in self._spec.mention_severities:
            return text_body(n, mobiles)
        return markdown_body(n)

    async def send(self, n: Notification) -> str:
        body = orjson.dumps(self.body(n))
        response = await self._post(self._url, body, {"Idempotency-Key": n.key})
        return robot_answer(
            response, where=self.target(), code_keys=("errcode",), retryable_codes=RATE_LIMITED
        )
