#!/usr/bin/env bash
# Builds an OCI image from Debian packages only (no base image, no outside registry):
# mmdebstrap writes a root filesystem tarball, umoci packs it as one layer of an OCI image layout.
# Reproducible: the same inputs and the same package versions give the same manifest digest
# (SOURCE_DATE_EPOCH fixes every timestamp; containers.md P8).
#
#   scripts/image-build.sh --out DIR [--tag TAG] [--suite bookworm] [--include PKG[,PKG…]]
#       [--add SRC:DEST]… [--entrypoint ARG]… [--cmd ARG]… [--env K=V]… [--workdir DIR]
#       [--user UID:GID] [--port N]… [--debcache DIR]
#
# Example (an image whose Cmd serves the current directory):
#   scripts/image-build.sh --out /tmp/oci --tag web --include python3 \
#       --workdir /srv --user 65534:65534 --cmd python3 --cmd -m --cmd http.server --cmd 8000 --port 8000
#   skopeo copy --dest-tls-verify=false oci:/tmp/oci:web docker://127.0.0.1:5000/me/web:1
#
# --add copies a host file into the image (mode kept, owned by root); DEST is an absolute path.
# Must run as root (mmdebstrap's root mode). Needs mmdebstrap and umoci (scripts/install-deps.sh).
set -euo pipefail

out="" tag="latest" suite="bookworm" include="" workdir="" user="" debcache=""
adds=() entry=() cmd=() envs=() ports=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --suite) suite="$2"; shift 2 ;;
    --include) include="${include:+$include,}$2"; shift 2 ;;
    --add) adds+=("$2"); shift 2 ;;
    --entrypoint) entry+=("$2"); shift 2 ;;
    --cmd) cmd+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --port) ports+=("$2"); shift 2 ;;
    --debcache) debcache="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "image-build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "image-build.sh: --out DIR is required" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "image-build.sh: run as root" >&2; exit 2; }
for t in mmdebstrap umoci; do
  command -v "$t" >/dev/null || { echo "image-build.sh: $t is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
[ ! -e "$out" ] || { echo "image-build.sh: $out already exists" >&2; exit 2; }

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
ts="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
work="$(mktemp -d "${TMPDIR:-/tmp}/image-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
debcache="${debcache:-$work/debcache}"
mkdir -p "$debcache"

hooks=()
for a in "${adds[@]}"; do
  src="${a%%:*}" dest="${a#*:}"
  [ -f "$src" ] || { echo "image-build.sh: --add $src: no such file" >&2; exit 2; }
  case "$dest" in /*) ;; *) echo "image-build.sh: --add DEST must be absolute" >&2; exit 2 ;; esac
  src="$(readlink -f "$src")"
  hooks+=(--customize-hook="mkdir -p \"\$1$(dirname "$dest")\" && cp \"$src\" \"\$1$dest\" && chown 0:0 \"\$1$dest\" && touch -h -d @$SOURCE_DATE_EPOCH \"\$1$dest\"")
done

sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
# The essential .debs are kept (--skip=essential/unlink) so sync-out can cache them for the next
# build; the prune hook then removes them, docs, man pages and locales from the image (P14: a
# prune hook is faster than dpkg path-excludes).
mmdebstrap --quiet --variant=essential ${include:+--include="$include"} --skip=essential/unlink \
  --setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives/" \
  --setup-hook="sync-in $debcache /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $debcache" \
  "${hooks[@]}" \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/* "$1"/var/log/*.log "$1"/var/log/apt/* "$1"/var/cache/ldconfig/aux-cache' \
  "$suite" "$work/rootfs.tar" "$sources"

umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci raw add-layer --image "$work/oci:$tag" --history.created "$ts" "$work/rootfs.tar"
cfg=(--created "$ts" --history.created "$ts" --os linux --architecture amd64)
[ -z "$workdir" ] || cfg+=(--config.workingdir "$workdir")
[ -z "$user" ] || cfg+=(--config.user "$user")
cfg+=(--config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for e in "${envs[@]}"; do cfg+=(--config.env "$e"); done
for e in "${entry[@]}"; do cfg+=(--config.entrypoint "$e"); done
for c in "${cmd[@]}"; do cfg+=(--config.cmd "$c"); done
for p in "${ports[@]}"; do cfg+=(--config.exposedports "$p/tcp"); done
umoci config --image "$work/oci:$tag" "${cfg[@]}"
umoci gc --layout "$work/oci"
mkdir -p "$(dirname "$out")"
mv "$work/oci" "$out"
echo "$out"
