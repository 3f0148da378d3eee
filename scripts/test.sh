#!/usr/bin/env bash
# Runs every test: unit tests, property tests, integration tests against a
# local AWS endpoint (moto server, started by the tests themselves), the real
# binaries under the Lambda Runtime API (cargo lambda), and cfn-lint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The function binaries as `cargo lambda watch` runs them (without the
# dev-dependencies' features), built once here rather than inside a test.
cargo build --locked --bins
cargo test --locked "$@"
