#!/usr/bin/env bash
# Installs what is needed, builds Cloister and starts it: HTTPS on 127.0.0.1:8443, plain HTTP
# (managed identity endpoint) on 127.0.0.1:8080, state in ./cloister-data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked
# Custom-container pools (runc/runsc) are on for the platform started here; the server logs why
# if this host cannot run them (CLOISTER_CUSTOM_CONTAINERS=0 turns them off).
export CLOISTER_CUSTOM_CONTAINERS="${CLOISTER_CUSTOM_CONTAINERS:-1}"
exec ./target/release/cloister serve --data-dir "${CLOISTER_DATA_DIR:-./cloister-data}" \
  --listen "${CLOISTER_LISTEN:-127.0.0.1:8443}" --http-listen "${CLOISTER_HTTP_LISTEN:-127.0.0.1:8080}" "$@"
