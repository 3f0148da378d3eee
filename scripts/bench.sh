#!/usr/bin/env bash
# Benchmarks (docs/benchmarks.md): two builds side by side in one run.
# "before" is a git revision (BENCH_BEFORE), built from a temporary git worktree
# under target/ with the same cargo target dir (the dependencies are reused, only
# the crate recompiles); "after" is the working tree. scripts/bench.py measures
# both on the local stack (AWS requests by kind, rotation latency and its floor,
# sweep scale, cold start, sizes) and prints one summary table first
# (measure | before | after | floor); then, on the working tree only, the
# criterion suite of the in-process costs and a long run of the handlers' fuzzing.
# Arguments go to bench.py, e.g. `bash scripts/bench.sh --calls 50 --only latency`.
#   BENCH_BEFORE      the "before" revision (default: before_default below)
#   BENCH_SWEEP_ORGS  org counts of the sweep benchmark (default 1000,5000)
#   BENCH_PROFILE     cargo profile of both builds (default release; dev: a quick check of the machinery)
#   BENCH_IN_PROCESS  0: skip the criterion suite and the fuzzing
#   BENCH_FANOUT      1: also the fan-out benchmark (scripts/bench_fanout.py) on the working tree's binaries
#   BENCH_FANOUT_ARGS its arguments (default: none, i.e. 20000 orgs over 5 member accounts), e.g. "--orgs 5000"
#   FUZZ_CASES        cases per fuzzed property (default 20000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
# The last commit before issue 14's request cut (fewer AWS requests per rotation).
before_default=58b97fb
before="$(git rev-parse --verify --quiet "${BENCH_BEFORE:-$before_default}^{commit}")" \
  || { echo "bench: BENCH_BEFORE=${BENCH_BEFORE:-$before_default} is not a commit" >&2; exit 1; }
profile="${BENCH_PROFILE:-release}"
if [ "$profile" = dev ]; then out=target/debug; else out="target/$profile"; fi
binaries=(rotate-key rotation-policy scheduled-rotation s3-key-rotation)
bench=target/bench
src="$bench/before-src"

bash scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"

remove_worktree() {
  if [ -e "$src" ]; then git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"; fi
  git worktree prune
}
trap remove_worktree EXIT

# keep NAME DESCRIPTION: cargo uplifts every build's binaries to the same $out/<name>,
# so each build's are copied to their own folder as soon as they are built.
keep() {
  rm -rf "${bench:?}/$1"
  mkdir -p "$bench/$1"
  for binary in "${binaries[@]}"; do cp "$out/$binary" "$bench/$1/"; done
  printf '%s\n' "$2" >"$bench/$1/REVISION"
}

remove_worktree # a leftover of an interrupted run
# A commit's binaries do not change: those of the last run are reused when they are of the same commit and profile.
if [ "$(cat "$bench/before/COMMIT" 2>/dev/null)" = "$before $profile" ]; then
  echo "bench: before, $(git log -1 --format='%h %s' "$before") ($profile): the binaries of the last run" >&2
else
  echo "bench: building before, $(git log -1 --format='%h %s' "$before") ($profile), in $src" >&2
  git worktree add --detach --quiet "$src" "$before"
  (cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build --locked --profile "$profile" --bins)
  keep before "\`$(git log -1 --format='%h' "$before")\` $(git log -1 --format='%s' "$before") ($profile build)"
  echo "$before $profile" >"$bench/before/COMMIT"
  remove_worktree
fi

echo "bench: building after, the working tree ($profile)" >&2
cargo build --locked --profile "$profile" --bins
changes=""
if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ]; then changes=" with uncommitted changes to src"; fi
keep after "the working tree: \`$(git log -1 --format='%h')\` $(git log -1 --format='%s')$changes ($profile build)"

.venv/bin/python scripts/bench.py --sizes "${BENCH_SWEEP_ORGS:-1000,5000}" \
  --build before "$bench/before" --build after "$bench/after" "$@"
if [ "${BENCH_FANOUT:-0}" = 1 ]; then
  echo "bench: the fan-out (scripts/bench_fanout.py), the working tree" >&2
  # $out: the working tree's build, just made (its sweep-worker too, which the "before" revision lacks).
  # shellcheck disable=SC2086 # BENCH_FANOUT_ARGS is a list of arguments
  .venv/bin/python scripts/bench_fanout.py --binaries "$out" ${BENCH_FANOUT_ARGS:-}
fi
if [ "${BENCH_IN_PROCESS:-1}" != 0 ]; then
  echo "bench: criterion suite (benches/core.rs), the working tree" >&2
  cargo bench --locked --bench core -- --noplot 2>/dev/null | grep -B1 "time:" | grep -v -e "^--$" -e "^Benchmarking"
  # The handlers' fuzzing (tests/fuzz_handlers.rs) at length: the test suite runs
  # 256 cases per property; here FUZZ_CASES (default 20000) of each, counts printed.
  echo "bench: fuzzing the handlers (tests/fuzz_handlers.rs), ${FUZZ_CASES:-20000} cases per property" >&2
  FUZZ_CASES="${FUZZ_CASES:-20000}" cargo test --locked --release --test fuzz_handlers 2>&1 | grep -e "^fuzz " -e "^test result"
fi
