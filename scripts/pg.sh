#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster on 127.0.0.1:5432 and makes a `cloister` role that may
# create databases. Prints the base URL for CLOISTER_TEST_PG (the only line on stdout).
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$ver main"; then
  pg_createcluster "$ver" main </dev/null >/dev/null 2>&1
fi
# The server outlives this script, so it must not inherit any of our descriptors: a caller
# capturing our stdout (or a CI runner reading our stderr) would otherwise wait for EOF forever.
# Python's subprocess closes every descriptor above 2 and we point 0-2 at a log file.
/usr/bin/python3 - "$ver" <<'PY'
import subprocess, sys
with open("/tmp/cloister-pg-start.log", "ab") as log:
    subprocess.run(["pg_ctlcluster", sys.argv[1], "main", "start"],
                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
PY
for _ in $(seq 1 100); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start; see /tmp/cloister-pg-start.log" >&2; exit 1; }
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cloister'\"" </dev/null | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE cloister LOGIN PASSWORD 'cloister' CREATEDB\"" </dev/null >&2
echo "postgres://cloister:cloister@127.0.0.1:5432"
