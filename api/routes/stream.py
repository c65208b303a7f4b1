"""``GET /alerts/stream``: alert changes as server-sent events, for dashboards.

The notifier's ``stream`` channel sends each notification with ``pg_notify`` on
``notify.model.LIVE_CHANNEL``; the process's one LISTEN connection (:mod:`api.live`) hands it to
every stream here, so the stream hears the notifier of any process without a broker and a
client costs a queue, not a PostgreSQL backend. The first thing sent sets ``retry:``, so a
client whose stream ends (it fell behind, or the LISTEN connection was lost) comes back soon.
FastAPI's SSE support writes a ``: ping`` comment after 15 s without an event, so proxies keep
the connection and a vanished client is noticed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import HubDep
from api.live import Subscription, Unavailable
from api.routes.meters import Text

RETRY_MS = 3000  # how long EventSource waits before reconnecting after the stream ends
LISTEN_WAIT_S = 2.0  # a client arriving during a reconnect waits this long before a 503

router = APIRouter(prefix="/alerts", tags=["alerts"])


async def subscription(hub: HubDep, tenant: Text = None) -> AsyncIterator[Subscription]:
    """The client's place in the hub for the length of the response.

    A dependency, not part of the event generator, so a hub that is not listening answers 503
    before the stream starts, and the subscription ends when the response ends however it ends
    (the request's exit stack runs after a streamed response is done).
    """
    if not hub.listening:
        await hub.wait_listening(LISTEN_WAIT_S)
    try:
        sub = hub.subscribe(tenant)
    except Unavailable as e:
        retry_after = "30" if hub.listening else "5"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(e), headers={"Retry-After": retry_after}
        ) from None
    try:
        yield sub
    finally:
        hub.unsubscribe(sub)


SubscriptionDep = Annotated[Subscription, Depends(subscription)]


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "`event: alert` with the notification JSON as data, per change"},
        503: {"description": "database unavailable, or too many streams open"},
    },
)
async def alert_stream(sub: SubscriptionDep) -> AsyncIterator[ServerSentEvent]:
    """Alert changes as they happen: ``event: alert``, ``data: {"key", "trigger", "audience",
    "alert"}``. With ``tenant``, only that tenant's alerts. Nothing is replayed on reconnect:
    fetch ``/alerts`` for the current state, then follow the stream; it ends (and the client
    reconnects) whenever changes might have been missed."""
    yield ServerSentEvent(comment="listening", retry=RETRY_MS)
    while (payload := await sub.get()) is not None:
        yield ServerSentEvent(event="alert", raw_data=payload)
