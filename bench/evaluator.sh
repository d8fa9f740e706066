#!/usr/bin/env bash
# The access evaluator: decisions/s and p50/p99 with 1k, 10k and 100k role assignments, on
# the uncached snapshot path and through the engine's decision cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -q -p cloister-access --example eval_bench
