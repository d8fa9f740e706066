#!/usr/bin/env bash
# Sessions across nodes: two release nodes on one store (a shared SQLite file, one master key,
# one public URL); warm 1+1 on one session through its owner and through the other node, in the
# same run. Prints a markdown table; raw figures in bench/out/nodes.json.
#   bench/nodes.sh            (NODES_N=2000 calls per node by default)
source "$(dirname "$0")/lib.sh"
"$ROOT/scripts/sandbox-runtime.sh"
(cd "$ROOT" && cargo build --release --locked -q)
VENV="$OUT/kg-venv"
[ -x "$VENV/bin/python" ] || { /usr/bin/python3 -m venv "$VENV"; "$VENV/bin/pip" install -q -r "$ROOT/bench/kg-requirements.txt"; }
PIDS=(); A=$(mktemp -d); B=$(mktemp -d)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$A" "$B"
}
trap cleanup EXIT
start_cloister "$A"; PIDS+=("$CL_PID"); A_PORT=$CL_PORT; A_HTTP=$CL_HTTP
B_PORT=$(free_port); B_HTTP=$(free_port)
# The other node advertises no capacity, so the session is placed on the first.
CLOISTER_MASTER_KEY=$(cat "$A/master.key") CLOISTER_MAX_SANDBOXES=0 CLOISTER_LOG_LEVEL=warn \
  "$ROOT/target/release/cloister" serve --data-dir "$B" --listen "127.0.0.1:$B_PORT" \
  --http-listen "127.0.0.1:$B_HTTP" --store "sqlite://$A/cloister.db?mode=rwc" \
  --public-url "https://127.0.0.1:$A_PORT" >/dev/null 2>"$OUT/cloister-b.log" &
PIDS+=($!)
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$B_HTTP/healthz" >/dev/null && break; sleep 0.1; done
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
TABLE=$("$VENV/bin/python" "$ROOT/bench/nodes.py" --owner-dir "$A" --owner-port "$A_PORT" \
  --owner-http "$A_HTTP" --other-port "$B_PORT" --n "${NODES_N:-2000}" --out "$OUT/nodes.json")
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r). Load average before: $LOAD0; after: $LOAD1. Cloister $(git -C "$ROOT" rev-parse --short HEAD)."
echo
echo "$TABLE"
