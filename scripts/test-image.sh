#!/usr/bin/env bash
# The one test image of Cloister's container tests, built once per set of inputs and cached.
#
#   scripts/test-image.sh                 builds (or reuses) the image; prints its OCI layout dir
#                                         (tag "test": oci:<dir>:test)
#   scripts/test-image.sh push HOST:PORT REPO:TAG [USER:PASS]
#                                         pushes it to a registry over plain HTTP; prints the
#                                         manifest digest (sha256:…)
#
# The image: Debian bookworm (essential + python3-minimal + the Python stdlib) with
# crates/images/fixture/server.py as /opt/cloister-test/server.py, Cmd
# `python3 -u /opt/cloister-test/server.py`, Env PORT=8080, port 8080/tcp, user 65534:65534,
# working dir /srv. The server answers GET / (hostname, pid, counter), POST /counter,
# GET /headers, a WebSocket echo at /ws and POST /exit.
#
# Cache: /var/lib/cloister/test-images/<sha256 of the inputs>/oci (override the root with
# CLOISTER_TEST_IMAGES). The first build takes about two minutes (mmdebstrap); later calls are
# instant. Concurrent callers wait on one lock and share the build.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${CLOISTER_TEST_IMAGES:-/var/lib/cloister/test-images}"
server="$here/crates/images/fixture/server.py"
packages="python3-minimal,libpython3.11-stdlib"
epoch=1700000000

key="$( { cat "$here/scripts/image-build.sh" "$server"; echo "$packages $epoch bookworm v1"; } | sha256sum | cut -c1-32)"
dir="$root/$key"

build() {
  mkdir -p "$root"
  exec 9>"$root/.lock"
  flock 9
  if [ ! -f "$dir/oci/index.json" ]; then
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp" "$root/debcache"
    SOURCE_DATE_EPOCH=$epoch "$here/scripts/image-build.sh" --out "$dir.tmp/oci" --tag test \
      --include "$packages" --debcache "$root/debcache" \
      --add "$server:/opt/cloister-test/server.py" \
      --cmd python3 --cmd -u --cmd /opt/cloister-test/server.py \
      --env PORT=8080 --env PYTHONUNBUFFERED=1 --workdir /srv --user 65534:65534 --port 8080 >&2
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
  fi
  exec 9>&-
}

case "${1:-build}" in
  build)
    build
    echo "$dir/oci"
    ;;
  push)
    [ $# -ge 3 ] || { echo "usage: $0 push HOST:PORT REPO:TAG [USER:PASS]" >&2; exit 2; }
    build
    creds=()
    df="$(mktemp)" af="$(mktemp)"
    if [ -n "${4:-}" ]; then
      # Credentials in a 0600 auth file, not on skopeo's command line.
      printf '{"auths":{"%s":{"auth":"%s"}}}' "$2" "$(printf '%s' "$4" | base64 -w0)" > "$af"
      creds=(--dest-authfile "$af")
    fi
    skopeo copy --quiet --dest-tls-verify=false "${creds[@]}" --digestfile "$df" \
      "oci:$dir/oci:test" "docker://$2/$3" >&2
    cat "$df"; echo
    rm -f "$df" "$af"
    ;;
  *) echo "usage: $0 [build] | push HOST:PORT REPO:TAG [USER:PASS]" >&2; exit 2 ;;
esac
