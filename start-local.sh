#!/usr/bin/env bash
# Serve the registry locally on assets/nodes, at http://localhost:8002 (PORT overrides).
# Creates .venv on first use and installs the project into it; later runs start at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $python" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.droq-registry-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing the project into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  touch "$stamp"
fi

export REGISTRY_ASSETS_DIR="${REGISTRY_ASSETS_DIR:-assets/nodes}"
export REGISTRY_DB_PATH="${REGISTRY_DB_PATH:-registry.db}"
exec .venv/bin/droq-registry serve
