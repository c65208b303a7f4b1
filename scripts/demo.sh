#!/usr/bin/env bash
# Sets up .venv and runs the demo: embedded PostgreSQL and broker, a simulated fleet, ingest, API.
# Any arguments go to `meterwatch demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv ""
exec .venv/bin/meterwatch demo "$@"
