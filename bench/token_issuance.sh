#!/usr/bin/env bash
# client_credentials token issuance under load from a second process (wrk), Cloister side by
# side with npm oidc-provider in the same run. Both sign JWT access tokens with the same
# algorithm. Prints a markdown table; raw wrk output goes to bench/out/.
#   DURATION=10s CONNECTIONS=32 BENCH_ALG=ES256 bench/token_issuance.sh
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}; CONNS=${CONNECTIONS:-32}; ALG=${BENCH_ALG:-ES256}
ensure_tools
(cd "$ROOT/bench/oidc" && npm install --silent --no-audit --no-fund >/dev/null)
DIR=$(mktemp -d)
CLOISTER_SIGNING_ALG=$ALG start_cloister "$DIR"
trap 'kill $CL_PID ${OP_PID:-} 2>/dev/null || true; rm -rf "$DIR"' EXIT
read -r TENANT ID SECRET < <(python3 -c "import json;b=json.load(open('$DIR/bootstrap.json'));print(b['tenantId'],b['clientId'],b['clientSecret'])")
cat > "$OUT/cc.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=client_credentials&client_id=$ID&client_secret=$SECRET&scope=https%3A%2F%2Fdynamicsessions.io%2F.default"
LUA
OP_PORT=$(free_port)
(cd "$ROOT/bench/oidc" && PORT=$OP_PORT BENCH_ALG=$ALG node server.mjs >"$OUT/oidc.log" 2>&1) &
OP_PID=$!
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$OP_PORT/.well-known/openid-configuration" >/dev/null && break; sleep 0.1; done
cat > "$OUT/op.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=client_credentials&client_id=bench&client_secret=bench-secret-bench-secret&resource=https%3A%2F%2Fdynamicsessions.io"
LUA
# Sanity: both answer with a token.
curl -sf -X POST "http://127.0.0.1:$CL_HTTP/$TENANT/oauth2/v2.0/token" -d "grant_type=client_credentials&client_id=$ID&client_secret=$SECRET&scope=https%3A%2F%2Fdynamicsessions.io%2F.default" | grep -q access_token
curl -sf -X POST "http://127.0.0.1:$OP_PORT/token" -d "grant_type=client_credentials&client_id=bench&client_secret=bench-secret-bench-secret&resource=https%3A%2F%2Fdynamicsessions.io" | grep -q access_token
wrk -t1 -c4 -d2s -s "$OUT/cc.lua" "http://127.0.0.1:$CL_HTTP/$TENANT/oauth2/v2.0/token" >/dev/null
wrk -t1 -c4 -d2s -s "$OUT/op.lua" "http://127.0.0.1:$OP_PORT/token" >/dev/null
read -r C_RPS C_P50 C_P99 < <(wrk_run cloister_http -t1 -c"$CONNS" -d"$DURATION" -s "$OUT/cc.lua" "http://127.0.0.1:$CL_HTTP/$TENANT/oauth2/v2.0/token")
read -r S_RPS S_P50 S_P99 < <(wrk_run cloister_https -t1 -c"$CONNS" -d"$DURATION" -s "$OUT/cc.lua" "https://127.0.0.1:$CL_PORT/$TENANT/oauth2/v2.0/token")
read -r O_RPS O_P50 O_P99 < <(wrk_run oidc_provider -t1 -c"$CONNS" -d"$DURATION" -s "$OUT/op.lua" "http://127.0.0.1:$OP_PORT/token")
echo "| server ($ALG JWT, $CONNS connections, $DURATION) | req/s | p50 ms | p99 ms | throughput vs oidc-provider |"
echo "|---|---|---|---|---|"
python3 - "$C_RPS" "$C_P50" "$C_P99" "$S_RPS" "$S_P50" "$S_P99" "$O_RPS" "$O_P50" "$O_P99" <<'PY'
import sys
c, c50, c99, s, s50, s99, o, o50, o99 = map(float, sys.argv[1:])
print(f"| Cloister, HTTP listener | {c:.0f} | {c50:.2f} | {c99:.2f} | {c/o:.1f}x |")
print(f"| Cloister, HTTPS (keep-alive) | {s:.0f} | {s50:.2f} | {s99:.2f} | {s/o:.1f}x |")
print(f"| oidc-provider 9.13.3 (Node {__import__('subprocess').run(['node','--version'],capture_output=True,text=True).stdout.strip()}) | {o:.0f} | {o50:.2f} | {o99:.2f} | 1.0x |")
PY
