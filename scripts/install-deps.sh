#!/usr/bin/env bash
# Installs what Cloister needs to build, run and test on Debian 12: a C toolchain (for
# aws-lc-sys and the bundled SQLite), PostgreSQL (tests run against it too), bubblewrap,
# slirp4netns and nftables (the egress filter) for the session sandboxes, the sandboxes' pinned
# Python runtime, and (--python) a venv with the real Azure clients for the compatibility tests.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
for p in build-essential pkg-config postgresql postgresql-client python3-venv curl ca-certificates bubblewrap slirp4netns nftables util-linux iproute2 git; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Node.js runs the real OAuth provider (panva's oidc-provider) in the credential-manager tests.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# Custom-container images: mmdebstrap + umoci build the test image (scripts/image-build.sh),
# skopeo pushes it, docker-registry (CNCF distribution) serves it on loopback, htpasswd
# (apache2-utils) makes the basic-auth registry's bcrypt password file; runc and runsc (gVisor)
# run the containers (crates/containers), in network namespaces made with iproute2, behind nftables.
need=()
for p in mmdebstrap umoci skopeo docker-registry apache2-utils runc runsc iproute2 nftables util-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The sessions' Python runtime (numpy, pandas, matplotlib, ...), pinned, built once.
$SUDO ./scripts/sandbox-runtime.sh
# The NodeLTS sessions' runtime (Node.js and the pinned packages of crates/sandbox/node-runtime).
$SUDO ./scripts/sandbox-runtime.sh --node
if [ "${1:-}" = "--python" ]; then
  PY=python3
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q -r compat/python/requirements.txt
fi
