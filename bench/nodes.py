"""Sessions across nodes (driven by bench/nodes.sh): warm `1+1` on one session through the node
that owns it and through another node of the same store, interleaved in the same run, so the
difference is what forwarding over the internal channel costs.

Reuses bench/sessions.py's clients (one keep-alive HTTPS connection per node, perf_counter).
"""
import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import Cloister, DataPlane, ok_result, summary  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--owner-dir", required=True)
    ap.add_argument("--owner-port", type=int, required=True)
    ap.add_argument("--owner-http", type=int, required=True)
    ap.add_argument("--other-port", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cl = Cloister(a.owner_dir, a.owner_port, a.owner_http)
    pid, ep = cl.create_pool("bench-nodes", 0, 100)
    other_ep = ep.replace(f"127.0.0.1:{a.owner_port}", f"127.0.0.1:{a.other_port}", 1)
    owner, other = DataPlane(cl, ep), DataPlane(cl, other_ep)
    ident = str(uuid.uuid4())
    # The other node learns of the pool within a second; the owner allocates the session
    # (bench/nodes.sh gives the other node no capacity, so placement picks the owner).
    deadline = time.time() + 30
    while True:
        dt, st, v = other.execute(ident, "1+1")
        if ok_result(st, v, result=2):
            break
        if time.time() > deadline:
            raise RuntimeError(f"the other node does not serve the pool: {st} {json.dumps(v)[:300]}")
        time.sleep(0.2)
    for dp in (owner, other):
        for _ in range(50):  # warm both connections and paths
            dp.execute(ident, "1+1")
    res = {"owner": [], "other": [], "errors": 0}
    for i in range(a.n):
        for name, dp in (("owner", owner), ("other", other)) if i % 2 else (("other", other), ("owner", owner)):
            dt, st, v = dp.execute(ident, "1+1")
            if ok_result(st, v, result=2):
                res[name].append(dt * 1000)
            else:
                res["errors"] += 1
    so, sf = summary(res["owner"]), summary(res["other"])
    out = {"owner": so, "other": sf, "errors": res["errors"], "n": a.n}
    json.dump(out, open(a.out, "w"), indent=1)
    print("| warm `1+1` on one session | p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    print(f"| through the owning node | {so['p50']:.2f} | {so['p99']:.2f} |")
    print(f"| through another node (forwarded) | {sf['p50']:.2f} | {sf['p99']:.2f} |")
    print(f"| forwarding adds | {sf['p50'] - so['p50']:.2f} | {sf['p99'] - so['p99']:.2f} |")
    print(f"\n{a.n} calls through each node, interleaved; {res['errors']} errors.")
    cl.delete_pool(pid)


if __name__ == "__main__":
    main()
