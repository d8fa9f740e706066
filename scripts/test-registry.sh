#!/usr/bin/env bash
# A throwaway OCI registry (Debian's docker-registry, CNCF distribution) on 127.0.0.1 for tests.
#
#   scripts/test-registry.sh start DIR [USER:PASS]   starts one on a free loopback port with its
#                                                    own config and storage under DIR (basic auth,
#                                                    htpasswd with bcrypt, when USER:PASS is given);
#                                                    prints HOST:PORT once it answers
#   scripts/test-registry.sh stop DIR                stops it (by its pid file) and leaves DIR
#
# Storage layout (for tests that tamper with blobs):
#   DIR/storage/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data
# Never listens on another interface (the packaged config would: containers.md P7).
set -euo pipefail

usage() { echo "usage: $0 start DIR [USER:PASS] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd="$1" dir="$2"

case "$cmd" in
  start)
    command -v docker-registry >/dev/null || { echo "test-registry.sh: docker-registry is missing (scripts/install-deps.sh)" >&2; exit 2; }
    mkdir -p "$dir/storage"
    dir="$(cd "$dir" && pwd)"
    auth=""
    if [ -n "${3:-}" ]; then
      command -v htpasswd >/dev/null || { echo "test-registry.sh: htpasswd is missing (apache2-utils)" >&2; exit 2; }
      # The password goes through stdin, never onto a command line.
      printf '%s' "${3#*:}" | htpasswd -iBn "${3%%:*}" > "$dir/htpasswd" 2>/dev/null
      chmod 600 "$dir/htpasswd"
      auth="auth: { htpasswd: { realm: cloister-test, path: $dir/htpasswd } }"
    fi
    for attempt in 1 2 3 4 5; do
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
      cat > "$dir/config.yml" <<EOF
version: 0.1
log: { level: warn, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $dir/storage }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$port }
$auth
EOF
      setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
      echo $! > "$dir/pid"
      for _ in $(seq 1 100); do
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then break; fi
        code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)"
        if [ "$code" = 200 ] || [ "$code" = 401 ]; then
          echo "127.0.0.1:$port" > "$dir/address"
          echo "127.0.0.1:$port"
          exit 0
        fi
        sleep 0.05
      done
      kill "$(cat "$dir/pid")" 2>/dev/null || true
    done
    echo "test-registry.sh: the registry did not start; log:" >&2
    cat "$dir/registry.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$dir/pid" ]; then
      pid="$(cat "$dir/pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/pid"
    fi
    ;;
  *) usage ;;
esac
