#!/usr/bin/env bash
# Builds the sandbox's Python runtime: a venv made with Debian's /usr/bin/python3 (CPython 3.11,
# never a pyenv or other interpreter under /root, which the sandbox cannot see) holding the pinned
# packages of crates/sandbox/runtime-requirements.txt. Every sandbox binds it read-only at the same
# path (a venv has absolute paths) and runs DIR/bin/python.
#
#   scripts/sandbox-runtime.sh [DIR]      DIR defaults to /var/lib/cloister/runtime/python
#
# Idempotent: DIR/.cloister-stamp holds the sha256 of the requirements file the runtime was built
# from; when it matches, nothing is done. Otherwise DIR is rebuilt from scratch. Concurrent runs
# (parallel test binaries) serialise on DIR.lock. Needs python3-venv and PyPI.
#
#   scripts/sandbox-runtime.sh --node [DIR]   DIR defaults to /var/lib/cloister/runtime/node
#
# builds the NodeLTS sessions' runtime instead: DIR/bin/node (the host's Node.js, linked when it
# lives under /usr, which every sandbox binds, copied otherwise) and DIR/node_modules installed with
# `npm ci` from crates/sandbox/node-runtime/package-lock.json (exact pins; no install scripts run).
# Stamped with the sha256 of package.json, package-lock.json and `node --version`. Needs npm and
# the npm registry.
set -euo pipefail
if [ "${1:-}" = "--node" ]; then
  DIR="${2:-/var/lib/cloister/runtime/node}"
  case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
  DIR="${DIR%/}"
  cd "$(dirname "$0")/.."
  SRC="$PWD/crates/sandbox/node-runtime"
  NODE="$(readlink -f "$(command -v node)")"
  want="$(cat "$SRC/package.json" "$SRC/package-lock.json" <("$NODE" --version) | sha256sum | cut -d' ' -f1)"
  stamp="$DIR/.cloister-stamp"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock 9
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0
  echo "sandbox-runtime: building $DIR" >&2
  rm -rf "$DIR"
  mkdir -p "$DIR/bin"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR/"
  (cd "$DIR" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  case "$NODE" in
    /usr/*) ln -s "$NODE" "$DIR/bin/node" ;;
    *) cp "$NODE" "$DIR/bin/node" ;;
  esac
  NODE_PATH="$DIR/node_modules" "$DIR/bin/node" -e 'for (const m of ["acorn", "axios", "dayjs", "lodash"]) require(m)'
  chmod -R a+rX,go-w "$DIR"
  echo "$want" >"$stamp"
  echo "sandbox-runtime: ready at $DIR" >&2
  exit 0
fi
DIR="${1:-/var/lib/cloister/runtime/python}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR="${DIR%/}"
cd "$(dirname "$0")/.."
REQ="$PWD/crates/sandbox/runtime-requirements.txt"
PY=/usr/bin/python3

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
stamp="$DIR/.cloister-stamp"
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0

mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9
# Another run may have finished while this one waited for the lock.
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0

echo "sandbox-runtime: building $DIR" >&2
rm -rf "$DIR"
"$PY" -m venv "$DIR"
"$DIR/bin/pip" install --no-input -q --disable-pip-version-check -r "$REQ"
# The font list matplotlib would otherwise rebuild (slowly, and with a warning on stderr) in every
# sandbox; the agent copies it into the sandbox's writable config dir at start.
mkdir -p "$DIR/share/cloister/matplotlib"
MPLCONFIGDIR="$DIR/share/cloister/matplotlib" MPLBACKEND=Agg \
  "$DIR/bin/python" -c 'import matplotlib.font_manager'
# Compile everything now: the sandbox's view of the runtime is read-only.
"$DIR/bin/python" -m compileall -q "$DIR/lib" >/dev/null 2>&1 || true
"$DIR/bin/python" -W ignore -c 'import pkg_resources, numpy, pandas, matplotlib, scipy, sklearn, IPython'
chmod -R a+rX,go-w "$DIR"
echo "$want" >"$stamp"
echo "sandbox-runtime: ready at $DIR" >&2
