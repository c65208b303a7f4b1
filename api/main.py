"""The FastAPI app: routers, error bodies, and a connection pool and live hub in the lifespan.

``meterwatch api`` runs ``uvicorn.run("api.main:create_app", factory=True)``, which calls
``create_app()`` and so reads :class:`Settings` from the environment; the demo and the tests hand
in their own settings. Building the app does no I/O: the pool opens when the server starts and
closes when it stops, and so does the live stream's one LISTEN connection (:mod:`api.live`), so
an app that is never served leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from api import live
from api.deps import Pool
from api.routes import alerts, feedback, health, meters, sla, stream
from meterwatch import __version__
from meterwatch.settings import Settings
from notify.config import NotifyConfig
from storage.db import SESSION_OPTIONS
from storage.lifecycle import AlertNotFound, IllegalTransition

API_V1 = "/api/v1"
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
POOL_TIMEOUT_S = 10.0  # how long a request waits for a connection before answering 503

log = logging.getLogger(__name__)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Connection loss, pool timeouts and server shutdowns are the database's state, not a bug."""
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "database unavailable, try again later"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status.HTTP_404_NOT_FOUND)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    """The alert's state does not allow the change (e.g. acknowledging a resolved alert)."""
    return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers in JSON; the server logs the traceback, the client gets no internals."""
    return JSONResponse({"detail": "internal error"}, status.HTTP_500_INTERNAL_SERVER_ERROR)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not settings.database_url:
        raise ValueError("no database URL (set METERWATCH_DATABASE_URL or pass --database-url)")
    url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Read before anything opens: a broken notification config stops the start with the
        # file's problem, not the first resolve with a 500.
        notify = NotifyConfig.load(settings.notify_config)
        # Not waiting for the pool to fill lets the API start while the database is still coming
        # up; /healthz reports it until then. Autocommit because most requests are reads; the
        # lifecycle routes open their own transaction. The connection check replaces connections
        # a database restart broke.
        pool: Pool = AsyncConnectionPool(
            url,
            open=False,
            kwargs={"options": SESSION_OPTIONS, "autocommit": True},
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_S,
            check=AsyncConnectionPool.check_connection,
            name="meterwatch-api",
        )
        await pool.open()
        # Like the pool, the hub connects in the background and keeps trying: the live stream
        # answers 503 until it listens.
        hub = live.Hub(url, streams_max=live.STREAMS_MAX, queue_max=live.QUEUE_MAX)
        hub.start()
        try:
            yield {"pool": pool, "settings": settings, "notify": notify, "live": hub}
        finally:
            await hub.close()
            await pool.close()

    app = FastAPI(
        title="meterwatch",
        version=__version__,
        summary="Smart water meters: registry, readings, usage and alerts with their lifecycle.",
        lifespan=lifespan,
    )
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(AlertNotFound, _not_found)
    app.add_exception_handler(IllegalTransition, _conflict)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(health.router)
    app.include_router(meters.router, prefix=API_V1)
    # Before alerts: /alerts/stream would otherwise be taken for /alerts/{alert_id}.
    app.include_router(stream.router, prefix=API_V1)
    app.include_router(alerts.router, prefix=API_V1)
    app.include_router(feedback.router, prefix=API_V1)
    app.include_router(sla.router, prefix=API_V1)
    return app
