#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, the HTTP/CLI integration
# tests and the real-client compatibility tests, on SQLite and again on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
# Nothing here reads a terminal; a test that tried would otherwise wait forever.
exec </dev/null
# Each step has a ceiling well inside CI's 90 minutes, so a hang fails loudly instead.
step() { timeout --kill-after=30 "$1" "${@:2}"; }
./scripts/install-deps.sh --python
PG=$(./scripts/pg.sh)
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
echo "== tests on SQLite"
step 1500 cargo test --workspace --locked
echo "== the sandbox tests again with one bwrap per sandbox (the fallback when no zygote starts)"
CLOISTER_SANDBOX_ZYGOTE=0 step 600 cargo test -p cloister-sandbox --locked --test agent --test escape
echo "== compatibility tests (azure-identity, MSAL, PyJWT) on SQLite"
step 900 .venv/bin/python -m pytest -q compat/python
echo "== tests on PostgreSQL"
# Only these crates' tests reach the store through CLOISTER_TEST_PG (the store itself, the
# credential vault, and every HTTP/CLI integration test through a real server); the others
# (sandboxes, images, containers, pure logic) would only run a second time unchanged.
CLOISTER_TEST_PG="$PG" step 1500 cargo test --locked -p cloister-store -p cloister-credentials -p cloister
echo "== compatibility tests on PostgreSQL"
CLOISTER_TEST_PG="$PG" step 900 .venv/bin/python -m pytest -q compat/python
echo "all tests passed"
