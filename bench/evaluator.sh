#!/usr/bin/env bash
# The access evaluator (cloister-access): decisions/s and p50/p99 latency with 1k, 10k and
# 100k role assignments, uncached (Snapshot::check) and through the Engine's decision cache.
# Prints a markdown table and keeps a copy in bench/out/evaluator.md. Takes well under a
# minute on two cores once built.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$ROOT/bench/out"
cd "$ROOT"
cargo run --release -q -p cloister-access --example eval_bench | tee "$ROOT/bench/out/evaluator.md"
