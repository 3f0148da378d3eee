#!/usr/bin/env bash
# Runs every test: unit tests, property tests, integration tests against a
# local AWS endpoint (moto server, started by the tests themselves), the real
# binaries under the Lambda Runtime API (cargo lambda), cfn-lint, checkov over
# both templates (tests/package), and the Python suite in tests/sdk that drives
# the functions only through the reference APIs' own SDKs (Cisco Secure Access,
# Alibaba Cloud KMS), behind the API Gateway stand-in scripts/gateway.py,
# tests/consumers (the AWS CLI and boto3 reading the org's prefix across rotations
# through s3-key-rotation-credentials, from the org's own account), and the
# permissions evaluated with IAM's semantics (tests/permissions/test_evaluated.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The function binaries as `cargo lambda watch` runs them (without the
# dev-dependencies' features), built once here rather than inside a test.
cargo build --locked --bins
# Every AWS action each template role was allowed or refused, over all the suites
# below (scripts/moto_server.py records them), for tests/permissions: granted = used.
export S3KR_CALLS_LOG="$PWD/target/aws-calls.jsonl"
rm -f "$S3KR_CALLS_LOG"
cargo test --locked "$@"
# SAM as a deployment builds it: the arm64 `bootstrap` of each function, by
# cargo-lambda with zig (both from .venv); tests/package checks the artefacts.
rustup target add aarch64-unknown-linux-gnu >&2
SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 sam build --beta-features
.venv/bin/python -m pytest tests/sdk tests/package tests/wire tests/consumers tests/permissions/test_evaluated.py -q -p no:cacheprovider
# Last: it needs the calls of the whole suite (a filtered `cargo test` run sees only part).
if [ $# -eq 0 ]; then
  .venv/bin/python -m pytest tests/permissions/test_granted_used.py -q -p no:cacheprovider
fi
