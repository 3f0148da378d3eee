#!/usr/bin/env bash
# The main job on the embedded default: a local AWS endpoint on loopback,
# a few enrolled orgs, and rotate-key invoked through a real Lambda Runtime API.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/tools.sh
echo "demo: building the binaries" >&2
cargo build --locked --bins --quiet
exec .venv/bin/python scripts/demo.py "$@"
