#!/usr/bin/env bash
# Benchmarks (README, "Benchmarks"): builds the release binaries, runs the
# scripts/bench.py suite on the local stack (sweep scale, rotation latency,
# cold start, sizes) and the criterion suite of the in-process costs.
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
