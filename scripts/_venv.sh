# Sourced by demo.sh and test.sh: a project virtualenv in .venv with the project installed.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "[dev]")
set -euo pipefail

pick_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    echo "meterwatch needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_venv() {
    local extras="$1" py stamp want
    if [ ! -x .venv/bin/python ]; then
        py=$(pick_python)
        "$py" -m venv .venv
    fi
    stamp=.venv/.meterwatch-installed
    want="$(cat pyproject.toml | sha256sum | cut -c1-16)$extras"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e ".$extras"
        echo "$want" >"$stamp"
    fi
}
