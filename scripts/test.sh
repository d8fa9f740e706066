#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, the HTTP/CLI integration
# tests and the real-client compatibility tests, on SQLite and again on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --python
PG=$(./scripts/pg.sh | tail -n 1)
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
echo "== tests on SQLite"
cargo test --workspace --locked
echo "== compatibility tests (azure-identity, MSAL, PyJWT) on SQLite"
.venv/bin/python -m pytest -q compat/python
echo "== tests on PostgreSQL"
CLOISTER_TEST_PG="$PG" cargo test --workspace --locked
echo "== compatibility tests on PostgreSQL"
CLOISTER_TEST_PG="$PG" .venv/bin/python -m pytest -q compat/python
echo "all tests passed"
