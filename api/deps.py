"""Dependencies as ``Annotated`` aliases, so a route's signature says what it uses.

The pool, settings and live hub live in the lifespan state (``api.main``), not in module globals,
so two apps in one process (tests, the demo) never share a pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from api.live import Hub
from meterwatch.settings import Settings
from notify.config import NotifyConfig

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


def get_pool(request: Request) -> Pool:
    return cast(Pool, request.state.pool)


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


def get_notify(request: Request) -> NotifyConfig:
    return cast(NotifyConfig, request.state.notify)


def get_hub(request: Request) -> Hub:
    return cast(Hub, request.state.live)


PoolDep = Annotated[Pool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
NotifyDep = Annotated[NotifyConfig, Depends(get_notify)]
HubDep = Annotated[Hub, Depends(get_hub)]


def get_signing_key(settings: SettingsDep) -> str:
    """The feedback links' key; "" when none is fit to sign with (``Settings.signing_key``)."""
    return settings.signing_key


SigningKeyDep = Annotated[str, Depends(get_signing_key)]


async def get_conn(pool: PoolDep) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """One pooled connection per request, returned to the pool when the request is done."""
    async with pool.connection() as conn:
        yield conn


ConnDep = Annotated[AsyncConnection[TupleRow], Depends(get_conn)]
