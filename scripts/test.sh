#!/usr/bin/env bash
# Sets up .venv with the dev tools and runs lint, type checks and the test suite.
# Tests use PostgreSQL at 127.0.0.1:5432 and Mosquitto at 127.0.0.1:1883 when they run (this
# script starts local ones that are installed but stopped); without them, embedded ones.
# Arguments go to pytest. Long soaks and benchmarks are not part of this: see bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv "[dev]"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    [ -n "$version" ] && pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
if ! port_open 1883 && command -v mosquitto >/dev/null 2>&1 && [ -f /etc/mosquitto/mosquitto.conf ]; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
fi

if command -v npm >/dev/null 2>&1 && [ -f tests/pglite/package-lock.json ]; then
    if [ ! -d tests/pglite/node_modules ] ||
        [ tests/pglite/package-lock.json -nt tests/pglite/node_modules ]; then
        (cd tests/pglite && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy meterwatch storage ingest detectors api simulators evaluation notify
echo "== pytest"
.venv/bin/python -m pytest -m "not slow" "$@"
