"""``GET /alerts/stream``: alert changes as server-sent events, for dashboards.

The notifier's ``stream`` channel sends each notification with ``pg_notify`` on
``notify.model.LIVE_CHANNEL``; every client here has its own connection LISTENing on it, so the
stream hears the notifier of any process without a broker. That connection lives outside the pool
(a LISTEN would pin a pooled connection for hours), which is why the number of streams is capped:
each one is a PostgreSQL backend. FastAPI's SSE support writes a ``: ping`` comment after 15 s
without an event, so proxies keep the connection and a vanished client is noticed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from api.deps import SettingsDep
from api.routes.meters import Text
from notify.model import LIVE_CHANNEL

STREAMS_MAX = 50
APPLICATION_NAME = "meterwatch-api-stream"  # how the listening backends show in pg_stat_activity

log = logging.getLogger(__name__)
router = APIRouter(prefix="/alerts", tags=["alerts"])


class StreamSlots:
    """How many streams are open, against a limit; one per app (it sits in the lifespan state)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


async def listener(
    request: Request, settings: SettingsDep
) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A connection LISTENing on the live channel for the length of the response.

    A dependency, not part of the event generator, so a database that is down answers 503 before
    the stream starts, and the connection closes when the response ends however it ends (the
    request's exit stack runs after a streamed response is done).
    """
    slots = cast(StreamSlots, request.state.streams)
    if not slots.take():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"too many live streams open ({slots.limit}); try again later",
            headers={"Retry-After": "30"},
        )
    try:
        async with await AsyncConnection.connect(
            settings.database_url, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(LIVE_CHANNEL)))
            yield conn
    finally:
        slots.give_back()


ListenerDep = Annotated[AsyncConnection[TupleRow], Depends(listener)]


def _tenant(payload: str) -> str | None:
    try:
        obj = json.loads(payload)
        tenant = obj["alert"]["tenant"]
    except (ValueError, TypeError, KeyError):
        return None
    return tenant if isinstance(tenant, str) else None


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "`event: alert` with the notification JSON as data, per change"},
        503: {"description": "database unavailable, or too many streams open"},
    },
)
async def alert_stream(conn: ListenerDep, tenant: Text = None) -> AsyncIterator[ServerSentEvent]:
    """Alert changes as they happen: ``event: alert``, ``data: {"key", "trigger", "audience",
    "alert"}``. With ``tenant``, only that tenant's alerts. Nothing is replayed on reconnect:
    fetch ``/alerts`` for the current state, then follow the stream."""
    async for n in conn.notifies():
        if tenant is not None and _tenant(n.payload) != tenant:
            continue
        yield ServerSentEvent(event="alert", raw_data=n.payload)
