"""The dashboard's live stream: ``pg_notify(LIVE_CHANNEL, payload)``.

NOTIFY goes through PostgreSQL, so the API's server-sent events endpoint hears alerts from any
notifier process without a broker of its own. The payload is JSON ``{key, trigger, audience,
title, alert}``. PostgreSQL refuses payloads of 8000 bytes or more, and an alert's evidence or
message can be long, so :func:`live_payload` trims in steps (shorter message and title, then no
evidence, then only the alert's identifying fields) and sets ``"trimmed": true``; the dashboard
fetches the whole alert by id. One connection per channel, kept open; a send that finds it
broken reconnects once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
from pydantic import Field

from notify.channels.base import NO_CONTEXT, Channel, ChannelContext, DeliveryError, Spec
from notify.model import LIVE_CHANNEL, Notification

NOTIFY_LIMIT = 8000  # bytes; the payload must be shorter
APPLICATION_NAME = "meterwatch-notify-stream"
CORE_FIELDS = (
    "id", "tenant", "meter_id", "dma", "type", "severity", "status",
    "started_at", "detected_at", "resolved_at",
)  # fmt: skip


class StreamSpec(Spec):
    database_url: str = ""  # default: the process's database (METERWATCH_DATABASE_URL)
    timeout_s: float = Field(10.0, gt=0, le=300)


def _cut(value: Any, chars: int) -> Any:
    return value[:chars] + "…" if isinstance(value, str) and len(value) > chars else value


def live_payload(n: Notification, limit: int = NOTIFY_LIMIT) -> bytes:
    """The NOTIFY payload, under ``limit`` bytes whatever the alert holds."""
    base = {"key": n.key, "trigger": str(n.trigger), "audience": str(n.audience)}
    full = orjson.dumps({**base, "title": n.title, "alert": dict(n.alert)})
    if len(full) < limit:
        return full
    alert = dict(n.alert)
    message = alert.get("message")
    if isinstance(message, Mapping):
        alert["message"] = {k: _cut(v, 300) for k, v in message.items()}
    alert["evidence"] = {}
    smaller = {**base, "title": _cut(n.title, 200), "alert": alert, "trimmed": True}
    out = orjson.dumps(smaller)
    if len(out) < limit:
        return out
    core = {k: _cut(n.alert[k], 100) for k in CORE_FIELDS if k in n.alert}
    out = orjson.dumps({**base, "title": _cut(n.title, 100), "alert": core, "trimmed": True})
    if len(out) < limit:
        return out
    return orjson.dumps({**base, "alert": {"id": n.alert.get("id")}, "trimmed": True})


class StreamChannel(Channel):
    kind = "stream"
    spec_model = StreamSpec
    _spec: StreamSpec

    def __init__(
        self, name: str, spec: Mapping[str, Any], context: ChannelContext = NO_CONTEXT
    ) -> None:
        super().__init__(name, spec, context)
        self._url = self._spec.database_url or context.database_url
        if not self._url:
            raise ValueError(f"channel {name!r} (kind 'stream'): no database_url and no default")
        try:
            self._where = psycopg.conninfo.conninfo_to_dict(self._url)
        except psycopg.ProgrammingError:
            raise ValueError(f"channel {name!r} (kind 'stream'): bad database_url") from None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self.connects = 0

    def target(self) -> str:
        w = self._where
        return f"postgresql://{w.get('host', '')}:{w.get('port', '')}/{w.get('dbname', '')}"

    async def send(self, n: Notification) -> str:
        payload = live_payload(n).decode()
        async with self._lock:
            for _ in range(2):
                connects = self.connects
                conn = await self._connected()
                try:
                    await conn.execute("SELECT pg_notify(%s, %s)", (LIVE_CHANNEL, payload))
                    return f"NOTIFY {LIVE_CHANNEL} {len(payload.encode())} bytes"
                except psycopg.OperationalError as e:
                    await self._drop()
                    if self.connects != connects:
                        raise DeliveryError(f"{self.target()}: {e}", retryable=True) from e
                except psycopg.Error as e:
                    raise DeliveryError(f"{self.target()}: {e}", retryable=False) from e
        raise DeliveryError(f"{self.target()}: NOTIFY failed after reconnecting", retryable=True)

    async def _connected(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._spec.timeout_s)),
                application_name=APPLICATION_NAME,
            )
        except psycopg.OperationalError as e:
            raise DeliveryError(f"{self.target()}: connect: {e}", retryable=True) from e
        self.connects += 1
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def aclose(self) -> None:
        await self._drop()
