#!/usr/bin/env bash
# Custom-container start → first HTTP 200 and idle memory, for docs/benchmarks.md.
#
#   bench/containers.sh [N]     (root; default N=20 starts per row)
#
# Rows: plain `runc run --detach` of the test image's rootfs (read-only root, a netns made
# with `ip`, no overlay, no cgroup path; the floor, containers.md §2.2 method), then
# cloister-containers under runc and runsc (crates/containers/examples/bench.rs: netns + veth,
# overlay on a capped tmpfs, cgroup, seccomp, the foreground runtime process). Each start is
# timed from the runtime's invocation to the first 200 of `GET /`, polled every 2 ms.
# Memory: 5 containers at once, PSS (smaps_rollup) of every process of a container.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-20}"
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 2; }
export CARGO_INCREMENTAL=0
store=/var/tmp/cloister-containers-test/images
if ! ls "$store"/images/*/rootfs/opt/cloister-test/server.py >/dev/null 2>&1; then
  # The container tests pull the test image into this store.
  (cd "$here" && cargo test -q -p cloister-containers --test runc -- --exact \
    runc_serves_http_over_the_veth_with_separate_state_and_stop_removes_everything >&2)
fi
rootfs="$(dirname "$(dirname "$(dirname "$(ls -d "$store"/images/*/rootfs/opt/cloister-test/server.py | head -1)")")")"
(cd "$here" && cargo build -q -p cloister-containers --example bench)
bench="$here/target/debug/examples/bench"

echo "== floor: plain runc run --detach"
python3 - "$rootfs" "$n" <<'PY'
import json, os, subprocess, sys, tempfile, time, urllib.request
rootfs, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp(prefix="cloister-floor-", dir="/var/tmp")
ns, vh = "cloister-floor", "clfloor0"
sh = lambda c: subprocess.run(c, shell=True, check=True)
sh(f"ip netns add {ns}; ip link add {vh} type veth peer name eth0 netns {ns}; "
   f"ip addr add 10.213.255.253/30 dev {vh}; ip link set {vh} up; "
   f"ip -n {ns} addr add 10.213.255.254/30 dev eth0; ip -n {ns} link set eth0 up; ip -n {ns} link set lo up")
try:
    subprocess.run(["runc", "spec", "--bundle", d], check=True)
    cfg = json.load(open(f"{d}/config.json"))
    cfg["root"] = {"path": rootfs, "readonly": True}
    p = cfg["process"]
    p["terminal"] = False; p["args"] = ["python3", "-u", "/opt/cloister-test/server.py"]
    p["env"] = ["PATH=/usr/bin:/bin", "PORT=8080"]; p["cwd"] = "/srv"; p["user"] = {"uid": 65534, "gid": 65534}
    cfg["linux"]["namespaces"] = [x if x["type"] != "network" else {"type": "network", "path": f"/var/run/netns/{ns}"} for x in cfg["linux"]["namespaces"]]
    cfg["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=64m"]})
    json.dump(cfg, open(f"{d}/config.json", "w"))
    times = []
    for i in range(n):
        cid = f"floor{os.getpid()}-{i}"
        t0 = time.monotonic()
        subprocess.run(["runc", "--root", f"{d}/state", "run", "--detach", "--bundle", d, cid],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        while True:
            try:
                if urllib.request.urlopen("http://10.213.255.254:8080/", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.002)
        times.append((time.monotonic() - t0) * 1000)
        subprocess.run(["runc", "--root", f"{d}/state", "delete", "--force", cid], check=True)
    times.sort()
    q = lambda f: times[round((len(times) - 1) * f)]
    print(json.dumps({"runtime": "plain runc run --detach", "start_to_first_200_ms":
                      {"n": n, "min": times[0], "median": q(0.5), "p99": q(0.99), "max": times[-1]}}))
finally:
    subprocess.run(f"ip link del {vh}; ip netns del {ns}", shell=True)
    subprocess.run(["rm", "-rf", d])
PY
echo "== cloister-containers, runc"
"$bench" "$rootfs" runc "$n"
if command -v runsc >/dev/null; then
  echo "== cloister-containers, runsc (the probe's network mode)"
  "$bench" "$rootfs" runsc "$n"
  echo "== cloister-containers, runsc forced to --network=host inside the netns"
  RUNSC_NETWORK=host "$bench" "$rootfs" runsc "$n"
  echo "== start -> exit of python3 -c pass (no network): runc, runsc probe mode, runsc host mode"
  BENCH_TRUE=1 "$bench" "$rootfs" runc "$n" 2>&1 | grep "^{"
  BENCH_TRUE=1 "$bench" "$rootfs" runsc "$n" 2>&1 | grep "^{"
  BENCH_TRUE=1 RUNSC_NETWORK=host "$bench" "$rootfs" runsc "$n" 2>&1 | grep "^{"
fi
