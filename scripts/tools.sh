#!/usr/bin/env bash
# Installs the project's Python tools (moto server, cargo-lambda, cfn-lint) into
# the project-local virtualenv .venv. Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.installed-requirements"
if [ ! -x "$venv/bin/python" ]; then
  echo "tools: creating virtualenv .venv" >&2
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  echo "tools: installing $(grep -cv '^#' "$req") pinned packages into .venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
