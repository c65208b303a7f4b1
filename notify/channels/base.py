"""What every channel shares: the error the dispatcher classifies, the context, spec parsing.

A channel turns one rendered :class:`~notify.model.Notification` into one delivery attempt. It
does not retry: the outbox does, with backoff, and needs only two facts about a failure, both on
:class:`DeliveryError`: may the same request succeed later (``retryable``), and what to write in
``deliveries.detail``. So every transport's failures are mapped here, once, to that pair::

    Exception
     └── DeliveryError(detail, retryable, status)
           retryable=True   connection refused/reset, timeouts, HTTP 408/425/429/5xx, SMTP 4xx,
                            a robot's rate-limit errcode, a broker or database that went away
           retryable=False  other HTTP 4xx, SMTP 5xx, a robot's other errcodes (bad key, bad sign)

Secrets (HMAC keys, passwords, robot URLs, which carry their token) never reach ``repr``, a
detail or a log line: a detail names the host only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from notify.model import Notification


class DeliveryError(Exception):
    """One failed attempt; ``retryable`` says whether sending the same notification again may
    work, ``status`` is the transport's code when there was one (the HTTP status, also for a
    robot's errcode refusal, which the detail names; the SMTP reply code)."""

    def __init__(self, detail: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.status = status

    def __repr__(self) -> str:
        return f"DeliveryError({self.detail!r}, retryable={self.retryable}, status={self.status})"


@dataclass(frozen=True)
class ChannelContext:
    """Process-wide settings some kinds default to, so a config need not repeat them."""

    database_url: str = ""
    mqtt_url: str = ""
    topic_prefix: str = ""


NO_CONTEXT = ChannelContext()


class Spec(BaseModel):
    """Base of the kinds' spec models: unknown keys are refused, so a typo is not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


S = TypeVar("S", bound=Spec)


def parse_spec(model: type[S], name: str, kind: str, spec: Mapping[str, Any]) -> S:
    """Validate a channel's config mapping; the error names the channel and the keys at fault but
    never echoes the values, which may be secrets."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(spec)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ValueError(f"channel {name!r} (kind {kind!r}): {problems}") from None


def redact_url(url: str) -> str:
    """Scheme, host and port only: robot URLs carry their access token in the path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class Channel(ABC):
    """One configured destination. Built once, ``send`` many times (concurrently is fine),
    ``aclose`` at shutdown; connections are kept open between sends."""

    kind: ClassVar[str]
    # What ``spec`` may hold (checked at construction); a kind with options narrows ``_spec`` too.
    spec_model: ClassVar[type[Spec]] = Spec
    name: str
    _spec: Spec

    def __init__(
        self, name: str, spec: Mapping[str, Any], context: ChannelContext = NO_CONTEXT
    ) -> None:
        self.name = name
        self._spec = parse_spec(self.spec_model, name, self.kind, spec)

    @abstractmethod
    async def send(self, n: Notification) -> str:
        """Deliver ``n`` once; return a short receipt for the delivery log or raise
        :class:`DeliveryError`."""

    async def aclose(self) -> None:
        """Release connections; the channel may not be used afterwards."""
        return None

    def target(self) -> str:
        """Where it sends, safe to show (no token, no password)."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} -> {self.target()}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
