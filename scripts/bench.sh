#!/usr/bin/env bash
# Benchmarks (README, "Benchmarks"): builds the release binaries, runs the
# scripts/bench.py suite on the local stack (sweep scale, rotation latency,
# cold start, sizes), the criterion suite of the in-process costs and a long
# run of the handlers' fuzzing.
# Arguments go to bench.py, e.g. `bash scripts/bench.sh --sizes 100,1000`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/tools.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "bench: building the release binaries" >&2
cargo build --locked --release --bins
.venv/bin/python scripts/bench.py "$@"
echo "bench: criterion suite (benches/core.rs)" >&2
cargo bench --locked --bench core -- --noplot 2>/dev/null | grep -B1 "time:" | grep -v -e "^--$" -e "^Benchmarking"
# The handlers' fuzzing (tests/fuzz_handlers.rs) at length: the test suite runs
# 256 cases per property; here FUZZ_CASES (default 20000) of each, counts printed.
echo "bench: fuzzing the handlers (tests/fuzz_handlers.rs), ${FUZZ_CASES:-20000} cases per property" >&2
FUZZ_CASES="${FUZZ_CASES:-20000}" cargo test --locked --release --test fuzz_handlers 2>&1 | grep -e "^fuzz " -e "^test result"
