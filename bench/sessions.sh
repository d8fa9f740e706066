#!/usr/bin/env bash
# Dynamic sessions side by side with Jupyter Kernel Gateway in the same run: new identifier to
# first print(1), warm 1+1, server-side allocation latency (/metrics), ready-pool fill/refill
# rate, live sessions with pandas imported and memory per session, and Shell and NodeLTS pools'
# new identifier to first result next to Python's, and bursts (20 clients each opening a new session
# at once against 5 ready; CPU per sandbox start from schedstat). Prints a markdown table;
# raw figures go to bench/out/sessions.json, logs to bench/out/{cloister,kg}.log.
#   bench/sessions.sh                 everything (about 5 minutes once built)
#   KG_ONLY=1 bench/sessions.sh       the Kernel Gateway half only (no Cloister build)
#   SESSIONS_ARGS="--cold 100 --density-max 100" bench/sessions.sh    fewer samples
# Needs python3-venv, PyPI (bench/kg-requirements.txt) and, for Cloister, bubblewrap and the
# session runtime (scripts/sandbox-runtime.sh, run here).
source "$(dirname "$0")/lib.sh"
KG_PRESPAWN=${KG_PRESPAWN_COUNT:-10}
VENV="$OUT/kg-venv"

# The peer's venv, rebuilt when the pins change.
want=$(sha256sum "$ROOT/bench/kg-requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install --no-input -q --disable-pip-version-check -r "$ROOT/bench/kg-requirements.txt"
  echo "$want" >"$VENV/.stamp"
fi

if [ -z "${KG_ONLY:-}" ]; then
  "$ROOT/scripts/sandbox-runtime.sh"
  "$ROOT/scripts/sandbox-runtime.sh" --node
  (cd "$ROOT" && cargo build --release --locked -q)
fi

PIDS=(); DIR=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$DIR" ] && rm -rf "$DIR"
  true
}
trap cleanup EXIT

KG_PORT=$(free_port)
KG_LIST_KERNELS=True KG_PRESPAWN_COUNT=$KG_PRESPAWN JUPYTER_RUNTIME_DIR="$OUT/kg-runtime" "$VENV/bin/jupyter" kernelgateway \
  --KernelGatewayApp.ip=127.0.0.1 --KernelGatewayApp.port="$KG_PORT" >"$OUT/kg.log" 2>&1 &
PIDS+=($!)
# Ready when every prespawned kernel is listed (KG_LIST_KERNELS) and the kernels have stopped
# using CPU (their execution_state stays "starting" until a client connects).
KG_PID=${PIDS[-1]}; n=0
for _ in $(seq 1 600); do
  n=$(curl -sf "http://127.0.0.1:$KG_PORT/api/kernels" 2>/dev/null |
      python3 -c 'import json,sys;print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$n" -ge "$KG_PRESPAWN" ] && break
  sleep 0.2
done
[ "$n" -ge "$KG_PRESPAWN" ] || { echo "Kernel Gateway did not start $KG_PRESPAWN kernels" >&2; exit 1; }
kernels_cpu() { ps --ppid "$KG_PID" -o times= | awk '{s+=$1} END {print s+0}'; }
prev=-1
for _ in $(seq 1 60); do
  now=$(kernels_cpu); [ "$now" = "$prev" ] && break; prev=$now; sleep 2
done

CL_ARGS=()
if [ -z "${KG_ONLY:-}" ]; then
  DIR=$(mktemp -d)
  start_cloister "$DIR"
  PIDS+=("$CL_PID")
  CL_ARGS=(--cloister-dir "$DIR" --port "$CL_PORT" --http-port "$CL_HTTP" --server-pid "$CL_PID")
fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2086
TABLE=$("$VENV/bin/python" "$ROOT/bench/sessions.py" --kg "http://127.0.0.1:$KG_PORT" "${CL_ARGS[@]}" \
  --out "$OUT/sessions.json" ${SESSIONS_ARGS:-})
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
MEM=$(free -g | awk '/^Mem:/{print $2}')
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), ${MEM} GiB RAM, $(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r). Load average (1/5/15 min) before: $LOAD0; after: $LOAD1."
echo "Versions: $("$ROOT/target/release/cloister" --version 2>/dev/null || echo 'cloister (not built)') ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo ', uncommitted changes')); jupyter-kernel-gateway $("$VENV/bin/python" -c 'import kernel_gateway;print(kernel_gateway.__version__)'), ipykernel $("$VENV/bin/python" -c 'import ipykernel;print(ipykernel.__version__)'), $("$VENV/bin/python" --version); KG_PRESPAWN_COUNT=$KG_PRESPAWN."
echo
echo "$TABLE"
