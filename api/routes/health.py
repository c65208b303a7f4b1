"""``GET /healthz`` for container healthchecks and load balancers.

It asks the database, not just the process: an API that cannot reach PostgreSQL answers 503 so an
orchestrator can hold traffic back. The wait for a connection is short because a healthcheck that
hangs is as bad as one that fails.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from api.deps import PoolDep
from api.schemas import HealthPublic
from storage import queries

HEALTH_TIMEOUT_S = 2.0

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def _unhealthy(body: HealthPublic) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get(
    "/healthz",
    response_model=HealthPublic,
    response_model_exclude_none=True,
    responses={503: {"model": HealthPublic, "description": "database unreachable or empty"}},
)
async def healthz(pool: PoolDep) -> HealthPublic | JSONResponse:
    try:
        async with pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
            await queries.ping(conn)
            meta = await queries.read_meta(conn)
    except psycopg.errors.UndefinedTable:
        meta = {}
    except psycopg.Error as e:
        log.warning("healthcheck: database unavailable: %s", e)
        return _unhealthy(
            HealthPublic(
                status="error",
                database="unavailable",
                flavour=None,
                detail=f"cannot query the database ({type(e).__name__})",
            )
        )
    flavour = meta.get("flavour")
    if flavour is None:
        return _unhealthy(
            HealthPublic(
                status="error",
                database="not migrated",
                flavour=None,
                detail="run `meterwatch db migrate`",
            )
        )
    return HealthPublic(status="ok", database="ok", flavour=flavour)
