#!/usr/bin/env bash
# Runs every test: unit tests, property tests, integration tests against a
# local AWS endpoint (moto server, started by the tests themselves), the real
# binaries under the Lambda Runtime API (cargo lambda), cfn-lint, checkov over
# both templates (tests/package), the Python suite in tests/sdk that drives
# the functions only through the reference APIs' own SDKs (Cisco Secure Access,
# Alibaba Cloud KMS), behind the API Gateway stand-in scripts/gateway.py, the
# wire matrices (tests/wire), tests/consumers (the AWS CLI and boto3 reading the
# org's prefix across rotations through s3-key-rotation-credentials, from the org's
# own account), and the permissions evaluated with IAM's semantics
# (tests/permissions/test_evaluated.py). Arguments go to `cargo test` (a filtered
# run skips tests/permissions/test_granted_used.py).
#
# Each step prints `time: STEP N s`, its wall time (all of them again at the end).
# Once the debug build is done, SAM's arm64 release build runs in the background at
# the lowest CPU priority (it takes the CPU the suites leave idle: they wait on the
# local endpoint and on the functions' timeouts; only tests/package, which checks its
# artefacts, waits for it); after tests/sdk, the wire matrices (tests/wire, the
# longest suite; a background step's output is shown when it is collected) run
# beside the other suites, which run one after the other.
#
# A suite is added with one `suite` line below. Each one that runs functions under
# their template roles appends to the calls log (whole lines, opened for appending:
# suites may run at once), which tests/permissions reads last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
logs=target/test-logs
mkdir -p "$logs"
: >"$logs/times"

# suite NAME COMMAND...: runs COMMAND, prints its wall time; fails as it fails.
suite() {
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  timed "$name" $((SECONDS - start)) "$status"
  return "$status"
}
timed() {
  local line="time: $1 $2 s"
  [ "$3" = 0 ] || line="$line (failed: exit $3)"
  echo "$line" | tee -a "$logs/times"
}
# background NAME COMMAND...: starts COMMAND, its output to target/test-logs/NAME.log;
# collect NAME waits for it, prints its output and its wall time, and fails as it failed.
# A step left running when the script stops (a failure, Ctrl-C) is stopped with it: each
# runs in a process group of its own (job control on while it starts).
declare -A pids
background() {
  local name=$1
  shift
  rm -f "$logs/$name.done"
  set -m
  (
    start=$SECONDS status=0
    "$@" >"$logs/$name.log" 2>&1 || status=$?
    echo "$((SECONDS - start)) $status" >"$logs/$name.done"
  ) &
  pids[$name]=$!
  set +m
}
stop_background() {
  local pid
  for pid in "${pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || true
  done
}
trap stop_background EXIT
collect() {
  local name=$1 seconds status
  # (With job control on at its start, bash may have reaped it already: its .done file says.)
  wait "${pids[$name]}" 2>/dev/null || true
  while [ ! -f "$logs/$name.done" ]; do sleep 1; done
  cat "$logs/$name.log"
  read -r seconds status <"$logs/$name.done"
  timed "$name" "$seconds" "$status"
  return "$status"
}
pytest_suite() {
  .venv/bin/python -m pytest "$@" -q -p no:cacheprovider --durations=5
}

suite tools bash scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
# The function binaries as `cargo lambda watch` runs them (without the
# dev-dependencies' features), built once here rather than inside a test
# (tests/runtime_api.rs), then the test binaries (with them).
suite build-bins cargo build --locked --bins
suite build-tests cargo test --locked --no-run "$@"
# Every AWS action each template role was allowed or refused, over all the suites
# below (scripts/moto_server.py records them), for tests/permissions: granted = used.
export S3KR_CALLS_LOG="$PWD/target/aws-calls.jsonl"
rm -f "$S3KR_CALLS_LOG"

# SAM as a deployment builds it: the arm64 `bootstrap` of each function, by
# cargo-lambda with zig (both from .venv); tests/package checks the artefacts.
rustup target add aarch64-unknown-linux-gnu >&2
background sam-build env SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 nice -n 19 sam build --beta-features

# tests/sdk first, beside SAM's build only: its load test (50 invocations at once, which
# must serialize per org) is the suite most sensitive to what else runs.
suite sdk pytest_suite tests/sdk
# Then two lanes at once (every suite's stacks are on free ports of their own): the wire
# matrices, the longest suite, beside the others one after the other.
background wire pytest_suite tests/wire
suite rust cargo test --locked "$@"
suite consumers pytest_suite tests/consumers
suite permissions-evaluated pytest_suite tests/permissions/test_evaluated.py
collect sam-build
suite package pytest_suite tests/package
collect wire
# Last: it needs the calls of the whole suite (a filtered `cargo test` run sees only part).
if [ $# -eq 0 ]; then
  suite permissions pytest_suite tests/permissions/test_granted_used.py
fi
timed all $((SECONDS - started)) 0 >/dev/null
echo "times:"
sed 's/^time: /  /' "$logs/times"
