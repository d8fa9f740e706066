#!/usr/bin/env bash
# The credential manager's gateway: get-authorization-context on a cached token under wrk
# (server-side p50/p99 from Cloister's own request histogram, client-side from wrk), and a
# refresh storm (N callers at once on a connection whose token just expired): how many calls
# reach the provider, and how long callers wait. The provider is panva's oidc-provider
# (compat/idp) on loopback.
# Latency is measured at LAT_CONNECTIONS (default 4: a loaded but not saturated server; on a
# saturated 2-core box every handler's time is mostly its wait for a CPU), throughput at
# CONNECTIONS.
#   DURATION=10s CONNECTIONS=32 LAT_CONNECTIONS=4 STORM=500 bench/credentials.sh
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}; CONNS=${CONNECTIONS:-32}; LCONNS=${LAT_CONNECTIONS:-4}; STORM=${STORM:-500}
ensure_tools
(cd "$ROOT/compat/idp" && [ -d node_modules ] || npm ci --silent --no-audit --no-fund)
DIR=$(mktemp -d)
start_cloister "$DIR"
# Two providers: tokens that live an hour (the cached case) and ones that live TTL seconds (the storm).
IDP_PORT=$(free_port); IDP2_PORT=$(free_port)
(cd "$ROOT/compat/idp" && PORT=$IDP_PORT IDP_CC_TTL=3600 exec node idp.mjs >"$OUT/idp.log" 2>&1) &
IDP_PID=$!
(cd "$ROOT/compat/idp" && PORT=$IDP2_PORT IDP_CC_TTL=${TTL:-5} exec node idp.mjs >"$OUT/idp2.log" 2>&1) &
IDP2_PID=$!
trap 'kill $CL_PID $IDP_PID $IDP2_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do grep -q "idp ready" "$OUT/idp.log" 2>/dev/null && grep -q "idp ready" "$OUT/idp2.log" 2>/dev/null && break; sleep 0.1; done
{ read -r TOKEN; read -r GW; } < <(python3 "$ROOT/bench/credentials.py" setup "$DIR" "$CL_PORT" "$CL_HTTP" "$IDP_PORT" 3600)
URL="$GW/authorizationContext?provider-id=svc&authorization-id=conn"
curl -sf -X POST -H "Authorization: Bearer $TOKEN" "$URL" | grep -q AccessToken
cat > "$OUT/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
# The TTL-3600 connection's token stays cached for the whole wrk run.
wrk -t1 -c4 -d2s -s "$OUT/post.lua" "$URL" >/dev/null
read -r RPS _ _ < <(wrk_run credctx -t2 -c"$CONNS" -d"$DURATION" -s "$OUT/post.lua" "$URL")
# A fresh server-side window for the latency run (the summary keeps the last 60 s).
sleep 61
read -r LRPS P50 P99 < <(wrk_run credctx_lat -t1 -c"$LCONNS" -d"$DURATION" -s "$OUT/post.lua" "$URL")
ROUTE='/gateway/subscriptions/{sub}/resourceGroups/{rg}/service/{svc}/{*rest}'
SRV=$(curl -s "http://127.0.0.1:$CL_HTTP/metrics" | python3 -c '
import sys
want = sys.argv[1]
q = {}
for line in sys.stdin:
    if line.startswith("cloister_http_request_seconds{") and "route=\"%s\"" % want in line and "quantile=" in line:
        k = line.split("quantile=\"")[1].split("\"")[0]
        q[k] = float(line.rsplit(" ", 1)[1]) * 1000
print("%.3f %.3f" % (q.get("0.5", -1), q.get("0.99", -1)))' "$ROUTE")
read -r S50 S99 <<<"$SRV"
# Refresh storm: a connection whose tokens live TTL seconds; wait for expiry, then STORM callers.
{ read -r TOKEN2; read -r GW2; } < <(python3 "$ROOT/bench/credentials.py" setup "$DIR" "$CL_PORT" "$CL_HTTP" "$IDP2_PORT" 5)
sleep $(( ${TTL:-5} + 1 ))
read -r CALLS SP50 SP99 SMAX SERR < <(python3 "$ROOT/bench/credentials.py" storm "$GW2/authorizationContext?provider-id=svc&authorization-id=conn" "$TOKEN2" "$STORM" "$IDP2_PORT")
echo "| get-authorization-context, cached token (plain HTTP, $DURATION each) | value |"
echo "|---|---|"
echo "| throughput, $CONNS connections | $RPS req/s |"
echo "| server-side p50 / p99, $LCONNS connections ($LRPS req/s) | $S50 ms / $S99 ms (goal p99 <= 1 ms) |"
echo "| client-side (wrk) p50 / p99, $LCONNS connections | $P50 ms / $P99 ms |"
echo "| refresh storm: $STORM callers at once on an expired token | $CALLS call(s) to the provider; caller p50 $SP50 ms, p99 $SP99 ms, max $SMAX ms; $SERR errors |"
