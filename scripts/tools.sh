#!/usr/bin/env bash
# Installs the project's Python tools (moto server, cargo-lambda, cfn-lint, checkov) into
# the project-local virtualenv .venv, faketime, and the permissions evaluator's Node.js
# packages (tests/permissions/evaluator). Idempotent: a second run only checks.
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
# libfaketime (Debian package faketime): the tests start moto under it to make
# IAM keys with old creation dates (adoption of orgs older than this service).
if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  echo "tools: installing faketime (Debian)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq faketime >&2
fi
# The permissions evaluator of tests/permissions (@cloud-copilot/iam-simulate, Node.js):
# test-only, AGPL-3.0-or-later, never part of a function or the CLI (see its README).
# Installed from the committed lockfile, again only when the lockfile changed.
evaluator="$root/tests/permissions/evaluator"
if ! cmp -s "$evaluator/package-lock.json" "$evaluator/node_modules/.installed-lock" 2>/dev/null; then
  echo "tools: installing the permissions evaluator (npm ci, tests/permissions/evaluator)" >&2
  (cd "$evaluator" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$evaluator/package-lock.json" "$evaluator/node_modules/.installed-lock"
fi
