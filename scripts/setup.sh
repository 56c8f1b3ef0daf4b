#!/usr/bin/env bash
# Set up evalkit on this machine, idempotently: a virtualenv with the pinned dependencies, and a running
# Docker engine with the base image tasks build on. Safe to run again; a second run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${EVALKIT_VENV:-.venv}

say() { printf '[setup] %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "evalkit needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the dependency pins or the project metadata changed.
stamp="$VENV/.evalkit-installed"
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing evalkit and pinned dependencies (requirements.lock)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[test]"
  echo "$want" >"$stamp"
fi

bash scripts/docker-engine.sh
say "ready: $VENV/bin/evalkit"
