#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster on 127.0.0.1:5432 and makes a `cloister` role that may
# create databases. Prints the base URL for CLOISTER_TEST_PG.
set -euo pipefail
# Everything but the final URL goes to stderr, so callers can capture stdout.
exec 3>&1 1>&2
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$ver main"; then
  pg_createcluster "$ver" main >/dev/null
fi
pg_ctlcluster "$ver" main start 2>/dev/null || true
for _ in $(seq 1 50); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 0.2
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cloister'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE cloister LOGIN PASSWORD 'cloister' CREATEDB\""
echo "postgres://cloister:cloister@127.0.0.1:5432" >&3
