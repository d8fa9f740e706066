#!/usr/bin/env bash
# The managed-identity (IMDS) endpoint on cached tokens, under load from wrk.
#   DURATION=10s CONNECTIONS=64 bench/imds.sh
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}; CONNS=${CONNECTIONS:-64}
ensure_tools
DIR=$(mktemp -d)
start_cloister "$DIR"
trap 'kill $CL_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
URL="http://127.0.0.1:$CL_HTTP/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://dynamicsessions.io"
curl -sf -H 'Metadata: true' "$URL" | grep -q access_token
wrk -t1 -c8 -d2s -H 'Metadata: true' "$URL" >/dev/null
read -r RPS P50 P99 < <(wrk_run imds -t2 -c"$CONNS" -d"$DURATION" -H 'Metadata: true' "$URL")
echo "| endpoint ($CONNS connections, $DURATION) | req/s | p50 ms | p99 ms | goal |"
echo "|---|---|---|---|---|"
echo "| IMDS, cached token | $RPS | $P50 | $P99 | 50,000 req/s |"
