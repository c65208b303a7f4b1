"""The containers' healthcheck: does this container hold a connection to the service it needs?

``python -m meterwatch.healthcheck METERWATCH_MQTT_URL`` exits 0 while the container has an
ESTABLISHED TCP connection to the port of the URL in that environment variable, 1 otherwise,
also for a missing or unusable URL (Docker reserves 2). Compose runs it for ingest (the broker)
and the notifier (the database).

It reads the kernel's socket tables (``/proc/net/tcp``, ``/proc/net/tcp6``: one network namespace
per container, so only its own connections) rather than connecting: a new connection would show
that the service is up, not that the process is still connected to it. Only the port is compared,
because the host in the URL is a name and the tables hold addresses. Standard library only, so it
starts quickly every interval.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

DEFAULT_PORTS = {
    "mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "postgresql": 5432, "postgres": 5432,
}  # fmt: skip
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
ESTABLISHED = "01"  # the ``st`` column's code


def port_of(url: str) -> int:
    """The URL's port, else its scheme's default (as ingest and libpq use it)."""
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    if parts.scheme not in DEFAULT_PORTS:
        # Not the URL itself: it may hold a password.
        raise ValueError(f"no port given and no default port for scheme {parts.scheme!r}")
    return DEFAULT_PORTS[parts.scheme]


def connected(port: int, tables: Iterable[str] = TABLES) -> bool:
    """Whether a socket in these tables is ESTABLISHED to a remote ``port``."""
    suffix = f":{port:04X}"  # rem_address is "HEXADDR:HEXPORT"
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        if any(len(r) > 3 and r[2].endswith(suffix) and r[3] == ESTABLISHED for r in rows):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m meterwatch.healthcheck ENV_VAR_WITH_URL", file=sys.stderr)
        return 1
    url = os.environ.get(args[0], "")
    if not url:
        print(f"{args[0]} is not set", file=sys.stderr)
        return 1
    try:
        port = port_of(url)
    except ValueError as e:
        print(f"{args[0]}: {e}", file=sys.stderr)
        return 1
    return 0 if connected(port) else 1


if __name__ == "__main__":
    sys.exit(main())
