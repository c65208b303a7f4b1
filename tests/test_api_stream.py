"""The live stream through a real uvicorn server and a real database: one LISTEN connection per
process fanned out to every client, tenant filters, slow clients dropped without holding back
PostgreSQL's NOTIFY queue, and a reconnect after the LISTEN connection is killed."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient

import api.live
import api.routes.stream
from api.live import APPLICATION_NAME, Hub
from api.main import create_app
from meterwatch.embedded import free_port
from meterwatch.settings import Settings
from notify.model import LIVE_CHANNEL
from tests.helpers import count, wait_until

STREAM = "/api/v1/alerts/stream"
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = %s AND datname = current_database()"
)
LISTENER_PID = (
    "SELECT coalesce(max(pid), 0) FROM pg_stat_activity "
    "WHERE application_name = %s AND datname = current_database()"
)


@dataclass
class Served:
    url: str
    hub: Hub  # read from the test's thread: only counters, which is safe enough for asserts


@contextmanager
def serving(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The app served by uvicorn on a free port: only a real server really streams."""
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.3)
    hubs: list[Hub] = []

    class RecordedHub(Hub):
        def start(self) -> None:
            hubs.append(self)
            super().start()

    monkeypatch.setattr(api.live, "Hub", RecordedHub)
    # A small send buffer (accepted sockets inherit it), so a client that stops reading fills
    # the server's side after a few kilobytes, as it would after megabytes with the defaults.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(Settings(database_url=db_url)), log_level="warning",
        timeout_graceful_shutdown=2,
    )  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_until(lambda: srv.started, timeout=15)
    hub = hubs[0]
    assert wait_until(lambda: hub.listening, timeout=10)
    try:
        yield Served(f"http://127.0.0.1:{port}", hub)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def server(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    with serving(db_url, monkeypatch) as served:
        yield served


def notify(db: psycopg.Connection[Any], tenant: str, key: str, *, pad: int = 0) -> None:
    alert: dict[str, Any] = {"id": 1, "tenant": tenant, "type": "leak"}
    if pad:
        alert["message"] = "x" * pad
    payload = {"key": key, "trigger": "opened", "audience": "staff", "alert": alert}
    db.execute("SELECT pg_notify(%s, %s)", (LIVE_CHANNEL, json.dumps(payload)))


def next_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return event, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


def test_one_notification_reaches_clients_by_tenant(
    server: Served, db: psycopg.Connection[Any], db_url: str
) -> None:
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        http.stream("GET", STREAM) as everything,
        http.stream("GET", STREAM, params={"tenant": "acme"}) as acme,
    ):
        assert everything.status_code == 200 and acme.status_code == 200
        assert everything.headers["content-type"].startswith("text/event-stream")
        all_lines, acme_lines = everything.iter_lines(), acme.iter_lines()
        # First a comment that sets how soon the client comes back after the stream ends.
        assert [next(acme_lines) for _ in range(3)] == [": listening", "retry: 3000", ""]
        # Headers come after the subscription, and the hub listens: from here nothing is missed.
        notify(db, "beta", "k1")
        notify(db, "acme", "k2")
        db.commit()
        assert next_event(all_lines) == ("alert", {
            "key": "k1", "trigger": "opened", "audience": "staff",
            "alert": {"id": 1, "tenant": "beta", "type": "leak"},
        })  # fmt: skip
        assert next_event(all_lines)[1]["key"] == "k2"
        event, data = next_event(acme_lines)
        assert (event, data["key"], data["alert"]["tenant"]) == ("alert", "k2", "acme")
        # A quiet stream still says something now and then, so proxies keep it open.
        assert ": ping" in [next(acme_lines) for _ in range(8)]
        assert server.hub.subscribers == 2
    # The clients went away: so do their subscriptions, but the process keeps listening.
    assert wait_until(lambda: server.hub.subscribers == 0, timeout=10)
    assert count(db_url, LISTENERS, (APPLICATION_NAME,)) == 1


def test_many_clients_share_one_database_connection(
    server: Served, db: psycopg.Connection[Any], db_url: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        streams = [http.stream("GET", STREAM) for _ in range(8)]
        responses = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in responses)
            assert server.hub.subscribers == 8
            assert count(db_url, LISTENERS, (APPLICATION_NAME,)) == 1
            notify(db, "acme", "k1")
            db.commit()
            assert {next_event(r.iter_lines())[1]["key"] for r in responses} == {"k1"}
        finally:
            for s in streams:
                s.__exit__(None, None, None)


def test_a_client_that_stops_reading_is_dropped_and_holds_nothing_back(
    db_url: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.live, "QUEUE_MAX", 20)
    events = 300
    with serving(db_url, monkeypatch) as srv, socket.socket() as stalled:
        # A small receive window, so the server's socket fills after a few events, not megabytes.
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
        stalled.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        with (
            httpx.Client(base_url=srv.url, timeout=10) as http,
            http.stream("GET", STREAM) as reading,
        ):
            assert wait_until(lambda: srv.hub.subscribers == 2, timeout=5)
            lines = reading.iter_lines()
            for batch in range(0, events, 10):
                keys = [f"k{i}" for i in range(batch, batch + 10)]
                for key in keys:
                    notify(db, "acme", key, pad=4000)
                db.commit()
                assert [next_event(lines)[1]["key"] for _ in keys] == keys
            assert (srv.hub.dropped, srv.hub.subscribers) == (1, 1)
            # The LISTEN backend consumed everything: PostgreSQL's queue is (close to) empty.
            usage = count(db_url, "SELECT (pg_notification_queue_usage() * 1e9)::bigint")
            assert usage < 10_000, usage  # < 0.001 %: a few pages at most
        # The stalled client, once it reads, finds what was sent before the drop, then the end.
        received = b""
        stalled.settimeout(5)
        while chunk := stalled.recv(65536):
            received += chunk
        assert b"retry: 3000" in received and received.endswith(b"0\r\n\r\n")
        assert 0 < received.count(b"event: alert") < events


def test_the_hub_reconnects_after_losing_its_connection(
    server: Served, db: psycopg.Connection[Any], db_url: str
) -> None:
    pid = count(db_url, LISTENER_PID, (APPLICATION_NAME,))
    assert pid
    with httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("GET", STREAM) as before:
            lines = before.iter_lines()
            next(lines)
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            db.commit()
            # Notifications sent while nobody listened are lost: the stream ends, so the client
            # reconnects and reloads rather than miss them unawares.
            with pytest.raises(AssertionError, match="the stream ended"):
                next_event(lines)
        assert wait_until(lambda: count(db_url, LISTENER_PID, (APPLICATION_NAME,)) not in (0, pid))
        assert wait_until(lambda: server.hub.listening, timeout=5)
        assert server.hub.connects == 2
        with http.stream("GET", STREAM, params={"tenant": "acme"}) as after:
            assert after.status_code == 200
            notify(db, "acme", "k1")
            db.commit()
            assert next_event(after.iter_lines())[1]["key"] == "k1"
    assert count(db_url, LISTENERS, (APPLICATION_NAME,)) == 1


def test_stream_refuses_beyond_its_limit(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.live, "STREAMS_MAX", 0)
    with TestClient(create_app(Settings(database_url=db_url))) as c:
        r = c.get(STREAM)
    assert r.status_code == 503 and "too many live streams" in r.json()["detail"]
    assert r.headers["retry-after"] == "30"


def test_stream_without_a_database_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.routes.stream, "LISTEN_WAIT_S", 0.2)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with TestClient(create_app(Settings(database_url=url))) as c:
        r = c.get(STREAM)
    assert r.status_code == 503 and "not connected" in r.json()["detail"]
    assert r.headers["retry-after"] == "5"
