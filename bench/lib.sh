# Shared helpers for the benchmark scripts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"

ensure_tools() {
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
  (cd "$ROOT" && cargo build --release --locked -q)
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_cloister DIR: starts a release server, sets CL_PORT, CL_HTTP, CL_PID and waits for it.
start_cloister() {
  local dir=$1
  CL_PORT=$(free_port); CL_HTTP=$(free_port)
  CLOISTER_LOG_LEVEL=warn "$ROOT/target/release/cloister" serve --data-dir "$dir" \
    --listen "127.0.0.1:$CL_PORT" --http-listen "127.0.0.1:$CL_HTTP" >/dev/null 2>"$OUT/cloister.log" &
  CL_PID=$!
  for _ in $(seq 1 200); do
    [ -f "$dir/bootstrap.json" ] && curl -sf "http://127.0.0.1:$CL_HTTP/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "cloister did not start" >&2; exit 1
}

# wrk_run NAME ARGS...: runs wrk with --latency and prints "rps p50_ms p99_ms".
wrk_run() {
  local name=$1; shift
  wrk --latency "$@" > "$OUT/$name.txt"
  python3 - "$OUT/$name.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1)); p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if non2xx: print(f"WARNING: {non2xx.group(1)} non-2xx responses", file=sys.stderr)
print(f"{rps:.0f} {p50:.2f} {p99:.2f}")
PY
}
