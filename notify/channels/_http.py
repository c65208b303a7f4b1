"""The HTTP kinds' shared transport: one ``httpx.AsyncClient`` per channel and one mapping of
HTTP outcomes to :class:`DeliveryError`.

408 (timeout), 425 (too early), 429 (rate limited) and 5xx say "later"; any other 4xx says the
request itself is wrong (bad URL, bad token) and repeating it cannot help; 3xx is not followed, a
moved webhook is a configuration error. The chat robots answer HTTP 200 with an error code in the
JSON body, so they add :func:`robot_answer` on top.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, ClassVar

import httpx
import orjson
from pydantic import AfterValidator, Field

from notify.channels.base import (
    NO_CONTEXT,
    Channel,
    ChannelContext,
    DeliveryError,
    Spec,
    redact_url,
)

RETRYABLE_STATUS = frozenset({408, 425, 429})
USER_AGENT = "meterwatch-notify/1"


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def check_http_url(url: str) -> str:
    """Refuse anything but an absolute http(s) URL at config time rather than at the first alert."""
    parts = httpx.URL(url)
    if parts.scheme not in ("http", "https") or not parts.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


HttpUrl = Annotated[str, AfterValidator(check_http_url)]


class HttpSpec(Spec):
    """What every HTTP kind's spec holds."""

    url: HttpUrl
    timeout_s: float = Field(10.0, gt=0, le=300)


class HttpChannel(Channel):
    """Base of the HTTP kinds: owns the client, posts JSON, maps transport failures."""

    spec_model: ClassVar[type[HttpSpec]]
    _spec: HttpSpec

    def __init__(
        self, name: str, spec: Mapping[str, Any], context: ChannelContext = NO_CONTEXT
    ) -> None:
        super().__init__(name, spec, context)
        self._url = self._spec.url
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._spec.timeout_s),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    def target(self) -> str:
        return redact_url(self._url)

    async def _post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """POST once; a non-2xx answer or a transport failure becomes a DeliveryError."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        where = self.target()
        try:
            response = await self._client.post(url, content=body, headers=all_headers)
        except httpx.TimeoutException as e:
            raise DeliveryError(f"{where}: timed out ({type(e).__name__})", retryable=True) from e
        except httpx.TransportError as e:
            raise DeliveryError(f"{where}: {type(e).__name__}: {e}", retryable=True) from e
        if not response.is_success:
            status = response.status_code
            raise DeliveryError(
                f"{where}: HTTP {status} {snippet(response)}".rstrip(),
                retryable=retryable_status(status),
                status=status,
            )
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


def snippet(response: httpx.Response, limit: int = 200) -> str:
    return " ".join(response.text[:limit].split())


def robot_answer(
    response: httpx.Response,
    *,
    where: str,
    code_keys: tuple[str, ...],
    retryable_codes: Collection[int],
) -> str:
    """Check a chat robot's JSON answer: code 0 is delivered, a rate-limit code is retryable,
    any other code is a refusal (bad key, bad signature, bad message) that repeats on retry."""
    try:
        answer: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise DeliveryError(
            f"{where}: HTTP {response.status_code}, not JSON: {snippet(response)}",
            retryable=False,
            status=response.status_code,
        ) from None
    if not isinstance(answer, dict):
        answer = {}
    key = next((k for k in code_keys if k in answer), None)
    if key is None:
        raise DeliveryError(
            f"{where}: HTTP {response.status_code}, no {'/'.join(code_keys)} in answer",
            retryable=False,
            status=response.status_code,
        )
    try:
        code = int(answer[key])
    except (TypeError, ValueError):
        code = -1
    if code == 0:
        return f"{response.status_code} {key}=0"
    message = answer.get("errmsg") or answer.get("msg") or answer.get("StatusMessage") or ""
    raise DeliveryError(
        f"{where}: {key}={code} {str(message)[:200]}".rstrip(),
        retryable=code in retryable_codes,
        status=response.status_code,
    )
