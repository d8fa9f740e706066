"""Dynamic sessions, Cloister side by side with Jupyter Kernel Gateway (driven by bench/sessions.sh).

Runs in the Kernel Gateway venv (bench/out/kg-venv: requests, websocket-client). Phases:

  KG      kernel start + first print(1) (POST /api/kernels, websocket, execute_request until the
          stream output), first print(1) on a prespawned kernel, warm 1+1 on one kernel,
          memory per idle kernel with pandas imported.
  Cloister  (skipped without --cloister-dir) new identifier -> first print(1) from a full ready
          pool, warm 1+1 on one session (HTTPS and plain HTTP), server-side allocation latency
          from /metrics, ready-pool fill and refill rates, live sessions with pandas imported
          and memory per session; Shell and NodeLTS pools next to a PythonLTS one (phase
          "types"): new identifier -> first result (`echo 1`, `console.log(1)`, `print(1)`) with a
          ready pool and with an empty one; bursts (phase "burst"): --burst-clients clients, each
          on its own connection, open a new session at the same moment against a pool with
          --burst-ready ready, --burst-rounds times; p50/p99 of the first answers, and CPU per
          sandbox start from per-process schedstat deltas (server, zygotes, sessions; needs
          --server-pid).

Client-side latencies use one keep-alive connection (http.client) and time.perf_counter().
Everything measured is written to --out as JSON; the markdown table goes to stdout.
"""
import argparse
import base64
import glob
import http.client
import json
import os
import re
import socket
import ssl
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
import websocket

EXEC_API = "2024-02-02-preview"
SESSION_API = "2025-02-02-preview"  # DELETE {endpoint}/session
POOL_API = "2025-07-01"
EXECUTOR_ROLE = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0"
TYPES_API = "2025-10-02-preview"
# Pool type, request body, expected stdout (phase "types").
POOL_TYPES = [
    ("PythonLTS", {"code": "print(1)"}, "1\n"),
    ("Shell", {"shellCommand": "echo 1"}, "1\n"),
    ("NodeLTS", {"code": "console.log(1)"}, "1\n"),
]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def pct(xs, q):
    """Nearest-rank percentile (q in 0..100) of a list of numbers."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def note_load(res, phase):
    res.setdefault("loadavg", {})[phase] = open("/proc/loadavg").read().split()[:3]


def summary(xs_ms):
    return {"n": len(xs_ms), "p50": pct(xs_ms, 50), "p99": pct(xs_ms, 99),
            "min": min(xs_ms) if xs_ms else None, "max": max(xs_ms) if xs_ms else None,
            "mean": statistics.fmean(xs_ms) if xs_ms else None}


def cpu_busy():
    """Whole-machine busy CPU seconds so far (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def mem_used():
    """Host memory in use (MemTotal - MemAvailable), bytes; what `free -b` calls used+shared-ish."""
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":", 1)
        m[k] = int(v.split()[0]) * 1024
    return m["MemTotal"] - m["MemAvailable"], m["MemTotal"]


# ---------------------------------------------------------------------------------------------
# Jupyter Kernel Gateway
# ---------------------------------------------------------------------------------------------

class KG:
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port)

    def req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=hdrs)
        r = self.conn.getresponse()
        text = r.read()
        if r.status >= 400:
            raise RuntimeError(f"KG {method} {path}: {r.status} {text[:300]!r}")
        return json.loads(text) if text else None

    def kernels(self):
        return self.req("GET", "/api/kernels")

    def start(self):
        return self.req("POST", "/api/kernels", {"name": "python3"})["id"]

    def delete(self, kid):
        self.req("DELETE", f"/api/kernels/{kid}")

    def connect(self, kid, quickack=True):
        ws = websocket.create_connection(f"ws://{self.host}:{self.port}/api/kernels/{kid}/channels",
                                         timeout=120, enable_multithread=False)
        return Channel(ws, quickack)


class Channel:
    """One kernel's channels websocket, legacy JSON framing (no subprotocol).

    Jupyter Server never sets TCP_NODELAY on its websockets, so each message it sends behind
    another small one waits for the client's delayed ACK (40 ms on Linux). With quickack (the
    default) the client re-arms TCP_QUICKACK before every read, which removes that wait: the
    figures are then the peer's best case, not what an ordinary client sees."""

    def __init__(self, ws, quickack=True):
        self.ws = ws
        self.session = uuid.uuid4().hex
        self.quickack = quickack

    def recv(self):
        if self.quickack:
            self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return self.ws.recv()

    def send_execute(self, code):
        mid = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": mid, "username": "bench", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())},
            "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        return mid

    def run(self, mid, first):
        """Reads every message answering `mid` until the execute_reply (shell) and the idle status
        (iopub) have both arrived (in either order: they travel on different channels); returns
        the perf_counter time at which the first message of a type in `first` arrived, and it."""
        t_first = found = None
        reply = idle = False
        while not (reply and idle and found):
            m = json.loads(self.recv())
            if m.get("parent_header", {}).get("msg_id") != mid:
                continue
            t = m.get("msg_type") or m["header"]["msg_type"]
            if t == "error" or (t == "execute_reply" and m["content"].get("status") != "ok"):
                raise RuntimeError(f"kernel error: {m['content']}")
            if t in first and found is None:
                t_first, found = time.perf_counter(), m
            reply |= t == "execute_reply"
            idle |= t == "status" and m["content"].get("execution_state") == "idle"
        return t_first, found

    def execute(self, code, first=("stream", "execute_result")):
        """Times code from send to the first message of a type in `first`."""
        t0 = time.perf_counter()
        mid = self.send_execute(code)
        t1, m = self.run(mid, first)
        return t1 - t0, m

    def close(self):
        self.ws.close()


def kg_phase(args, res):
    note_load(res, "kg")
    kg = KG(args.kg)
    # Prespawned kernels: the ones listed before this phase started any.
    pre = [k["id"] for k in kg.kernels()]
    log(f"KG: {len(pre)} prespawned kernels")
    res["kg_prespawned"] = len(pre)

    # 1. New kernel -> first print(1).
    cold, start_only = [], []
    for i in range(args.kg_cold + 2):
        t0 = time.perf_counter()
        kid = kg.start()
        t1 = time.perf_counter()
        ch = kg.connect(kid)
        t2, m = ch.run(ch.send_execute("print(1)"), ("stream",))
        assert m["content"]["text"].strip() == "1", m
        ch.close()
        kg.delete(kid)
        if i >= 2:  # two warm-ups
            cold.append((t2 - t0) * 1000)
            start_only.append((t1 - t0) * 1000)
    res["kg_cold"] = summary(cold)
    res["kg_cold_post_only"] = summary(start_only)
    log(f"KG kernel start -> print(1): p50 {res['kg_cold']['p50']:.1f} ms")

    # 1b. A prespawned kernel -> first print(1) (websocket connect + execute).
    pre_ms = []
    for kid in pre[1:]:  # the first is kept for the warm loop
        t0 = time.perf_counter()
        ch = kg.connect(kid)
        t1, _ = ch.run(ch.send_execute("print(1)"), ("stream",))
        pre_ms.append((t1 - t0) * 1000)
        ch.close()
    res["kg_prespawned_first"] = summary(pre_ms)

    # 2. Warm 1+1 on an existing kernel.
    kid = pre[0] if pre else kg.start()
    ch = kg.connect(kid)
    for _ in range(50):
        ch.execute("1+1")
    warm = []
    for _ in range(args.warm):
        dt, m = ch.execute("1+1", first=("execute_result",))
        assert m["content"]["data"]["text/plain"] == "2", m
        warm.append(dt * 1000)
    ch.close()
    res["kg_warm"] = summary(warm)
    # The same with an ordinary client (no TCP_QUICKACK), fewer samples.
    ch = kg.connect(kid, quickack=False)
    for _ in range(10):
        ch.execute("1+1")
    plain = [ch.execute("1+1", first=("execute_result",))[0] * 1000 for _ in range(max(50, args.warm // 10))]
    ch.close()
    res["kg_warm_no_quickack"] = summary(plain)
    log(f"KG warm 1+1: p50 {res['kg_warm']['p50']:.2f} ms")

    # 5 (peer). Memory per idle kernel with pandas imported.
    if args.kg_mem:
        time.sleep(1)
        before, _ = mem_used()
        ids = []
        for _ in range(args.kg_mem):
            k = kg.start()
            c = kg.connect(k)
            c.execute("import pandas", first=("execute_reply",))
            c.close()
            ids.append(k)
        time.sleep(2)
        after, _ = mem_used()
        res["kg_mem_per_kernel"] = (after - before) / len(ids)
        log(f"KG: {(after - before) / len(ids) / 2**20:.0f} MiB per kernel with pandas")
        for k in ids:
            kg.delete(k)


# ---------------------------------------------------------------------------------------------
# Cloister
# ---------------------------------------------------------------------------------------------

class Cloister:
    def __init__(self, data_dir, port, http_port):
        self.dir, self.port, self.http_port = data_dir, port, http_port
        self.boot = json.load(open(os.path.join(data_dir, "bootstrap.json")))
        self.ca = os.path.join(data_dir, "ca.pem")
        self.base = f"https://127.0.0.1:{port}"
        self.s = requests.Session()
        self.s.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment beats verify
        self.s.verify = self.ca
        self.tenant, self.sub = self.boot["tenantId"], self.boot["subscriptionId"]
        self.mgmt = self.token(self.base + "/.default")
        self.dp = self.token("https://dynamicsessions.io/.default")
        payload = self.mgmt.split(".")[1]
        self.oid = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["oid"]
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def token(self, scope):
        r = self.s.post(f"{self.base}/{self.tenant}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": self.boot["clientId"],
            "client_secret": self.boot["clientSecret"], "scope": scope})
        r.raise_for_status()
        return r.json()["access_token"]

    def arm(self, method, path, body=None, ok=(200, 201, 202, 204)):
        r = self.s.request(method, self.base + path, json=body,
                           headers={"Authorization": "Bearer " + self.mgmt})
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.text else None

    def pool_id(self, name):
        return (f"/subscriptions/{self.sub}/resourceGroups/bench/providers/Microsoft.App/"
                f"sessionPools/{name}")

    def create_pool(self, name, ready, max_sessions, container_type="PythonLTS"):
        self.arm("PUT", f"/subscriptions/{self.sub}/resourcegroups/bench?api-version=2021-04-01",
                 {"location": "local"})
        pid = self.pool_id(name)
        p = self.arm("PUT", f"{pid}?api-version={POOL_API}", {
            "location": "local",
            "properties": {
                "containerType": container_type,
                "scaleConfiguration": {"maxConcurrentSessions": max_sessions,
                                       "readySessionInstances": ready},
                "dynamicPoolConfiguration": {"lifecycleConfiguration": {
                    "lifecycleType": "Timed", "cooldownPeriodInSeconds": 3600}},
            }})
        self.arm("PUT", f"{pid}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}"
                        f"?api-version=2022-04-01", {"properties": {
                            "roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/"
                                                + EXECUTOR_ROLE,
                            "principalId": self.oid}})
        return pid, p["properties"]["poolManagementEndpoint"]

    def node_count(self, pid):
        return self.arm("GET", f"{pid}?api-version={POOL_API}")["properties"].get("nodeCount", 0)

    def wait_nodes(self, pid, n, timeout, every=0.05):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            c = self.node_count(pid)
            if c >= n:
                return time.perf_counter() - t0
            time.sleep(every)
        return None

    def delete_pool(self, pid):
        self.arm("DELETE", f"{pid}?api-version={POOL_API}")

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.http_port)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()


class DataPlane:
    """One keep-alive connection to a pool's data plane."""

    def __init__(self, cl, endpoint, plain_http=False):
        u = urllib.parse.urlsplit(endpoint)
        self.path = u.path
        if plain_http:
            self.conn = http.client.HTTPConnection("127.0.0.1", cl.http_port)
        else:
            self.conn = http.client.HTTPSConnection(u.hostname, u.port, context=cl.ctx)
        self.hdrs = {"Authorization": "Bearer " + cl.dp, "Content-Type": "application/json"}

    def execute(self, identifier, code):
        body = json.dumps({"properties": {"codeInputType": "inline",
                                          "executionType": "synchronous", "code": code}}).encode()
        t0 = time.perf_counter()
        self.conn.request("POST", f"{self.path}/code/execute?api-version={EXEC_API}"
                                  f"&identifier={identifier}", body=body, headers=self.hdrs)
        r = self.conn.getresponse()
        text = r.read()
        dt = time.perf_counter() - t0
        try:
            v = json.loads(text)
        except ValueError:
            v = {"raw": text[:300].decode(errors="replace")}
        return dt, r.status, v

    def executions(self, identifier, body):
        """POST executions (2025-10-02-preview, flat body): the API Shell pools are driven by."""
        t0 = time.perf_counter()
        self.conn.request("POST", f"{self.path}/executions?api-version={TYPES_API}"
                                  f"&identifier={identifier}", body=json.dumps(body).encode(),
                          headers=self.hdrs)
        r = self.conn.getresponse()
        text = r.read()
        dt = time.perf_counter() - t0
        try:
            v = json.loads(text)
        except ValueError:
            v = {"raw": text[:300].decode(errors="replace")}
        return dt, r.status, v

    def delete(self, identifier):
        self.conn.request("DELETE", f"{self.path}/session?api-version={SESSION_API}"
                                    f"&identifier={identifier}", headers=self.hdrs)
        r = self.conn.getresponse()
        r.read()
        return r.status


def ok_result(status, v, stdout=None, result=None):
    p = v.get("properties", {}) if isinstance(v, dict) else {}
    if status != 200 or p.get("status") != "Success":
        return False
    if stdout is not None and p.get("stdout", "").strip() != stdout:
        return False
    if result is not None and p.get("result") != result:
        return False
    return True


def prom(text, name):
    """Quantiles (summary) or buckets (histogram) of one metric family, plus sum and count."""
    out = {"quantiles": {}, "buckets": [], "sum": None, "count": None}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf'{name}(_bucket|_sum|_count)?(\{{[^}}]*\}})?\s+(\S+)', line)
        if not m:
            continue
        kind, labels, val = m.group(1), m.group(2) or "", float(m.group(3))
        if kind == "_sum":
            out["sum"] = val
        elif kind == "_count":
            out["count"] = val
        elif kind == "_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            out["buckets"].append((float("inf") if le == "+Inf" else float(le), val))
        else:
            q = re.search(r'quantile="([^"]+)"', labels)
            if q:
                out["quantiles"][q.group(1)] = val
    return out


def counter(text, name):
    tot = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_"):
            tot += float(line.rsplit(None, 1)[1])
    return tot


def bucket_pct(buckets_after, buckets_before, q):
    before = dict(buckets_before)
    bs = sorted((le, c - before.get(le, 0)) for le, c in buckets_after)
    total = bs[-1][1] if bs else 0
    for le, c in bs:
        if total and c >= q * total:
            return le
    return float("nan")


def cgroup_memory(data_dir):
    """Sums the memory cgroups of this server's sandboxes, the children of
    cloister-{sha256(canonical data dir)[:12]} (cgroup v1 memory hierarchy, or v2):
    (sandboxes, usage bytes incl. page cache, anonymous RSS bytes). The zygotes' groups
    (zygote-*: the shared pages every forked sandbox reads) are summed separately, as
    cgroup_memory.zygotes = (zygotes, usage, rss)."""
    import hashlib
    h = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:12]
    n = usage = rss = 0
    for parent in (f"/sys/fs/cgroup/memory/cloister-{h}", f"/sys/fs/cgroup/cloister-{h}"):
        if not os.path.isdir(parent):
            continue
        z = [0, 0, 0]
        for d in glob.glob(f"{parent}/*/"):
            u = r = 0
            for f in ("memory.usage_in_bytes", "memory.current"):
                try:
                    u = int(open(os.path.join(d, f)).read())
                    break
                except OSError:
                    pass
            try:
                st = dict(l.split() for l in open(os.path.join(d, "memory.stat")))
                r = int(st.get("total_rss", st.get("rss", st.get("anon", 0))))
            except OSError:
                pass
            if os.path.basename(d.rstrip("/")).startswith("zygote-"):
                z = [z[0] + 1, z[1] + u, z[2] + r]
            else:
                n, usage, rss = n + 1, usage + u, rss + r
        cgroup_memory.zygotes = tuple(z)
        break
    return n, usage, rss


def server_groups(data_dir):
    """The cgroup directories of this server's sandboxes and zygotes (pids hierarchy on v1)."""
    import hashlib
    h = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:12]
    for parent in (f"/sys/fs/cgroup/pids/cloister-{h}", f"/sys/fs/cgroup/cloister-{h}"):
        if os.path.isdir(parent):
            return glob.glob(f"{parent}/*/")
    return []


def proc_cpu(pid):
    """CPU seconds of one process: the sum of its threads' /proc/PID/task/*/schedstat run times
    (nanoseconds), plus what its reaped children used (cutime + cstime of /proc/PID/stat: the
    zygote reaps each forked session's first child, which exits after its fork)."""
    ns = 0
    for t in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            ns += int(open(t).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        reaped = (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        reaped = 0.0
    return ns / 1e9 + reaped


def cpu_snapshot(cl):
    """{(part, pid): CPU seconds} of the server ("server") and of every process in its
    zygotes' ("zygote") and sandboxes' ("session") cgroups: a start's CPU, wherever it ran (the
    supervisor's threads, the zygote's fork and its reaped first child, the session's own
    pid 1 and agent), is the sum of the deltas."""
    parts = {cl.server_pid: "server"} if cl.server_pid else {}
    for d in server_groups(cl.dir):
        part = "zygote" if os.path.basename(d.rstrip("/")).startswith("zygote-") else "session"
        try:
            for x in open(os.path.join(d, "cgroup.procs")).read().split():
                parts.setdefault(int(x), part)
        except OSError:
            pass
    return {(part, p): proc_cpu(p) for p, part in parts.items()}


def cpu_delta(before, after, part=None):
    return sum(v - before.get(k, 0.0) for k, v in after.items() if part in (None, k[0]))


def burst_phase(args, res, cl):
    """7: bursts. --burst-clients clients, each on its own warm keep-alive connection, open a new
    session at the same moment (new identifier -> print(1)) against a pool with --burst-ready
    ready; --burst-rounds rounds, each once the pool is back to its ready count. CPU per sandbox
    start from per-process schedstat deltas (cpu_snapshot) over each round and its refill."""
    note_load(res, "burst")
    R, C = args.burst_ready, args.burst_clients
    pid, ep = cl.create_pool("bench-burst", R, 1000)
    if cl.wait_nodes(pid, R, 300) is None:
        raise RuntimeError(f"the burst pool never reached {R} ready instances")
    conns = [DataPlane(cl, ep) for _ in range(C)]
    warm_id = str(uuid.uuid4())
    for d in conns:  # TLS handshakes and the token path, on one session
        dt, st, v = d.execute(warm_id, "0")
        if not ok_result(st, v):
            raise RuntimeError(f"code/execute does not work: {st} {json.dumps(v)[:500]}")
    lat, bad, cpu, starts, per_round, parts = [], 0, 0.0, 0, [], {}
    live = 1
    for rnd in range(args.burst_rounds):
        if cl.wait_nodes(pid, live + R, 120, every=0.02) is None:
            raise RuntimeError("the burst pool did not refill")
        time.sleep(0.5)
        n0 = cl.node_count(pid)
        c0 = cpu_snapshot(cl)
        gate = threading.Barrier(C)
        out = [None] * C

        def one(i):
            gate.wait()
            out[i] = conns[i].execute(str(uuid.uuid4()), "print(1)")

        with ThreadPoolExecutor(C) as ex:
            list(ex.map(one, range(C)))
        ms = []
        for dt, st, v in out:
            if ok_result(st, v, stdout="1"):
                ms.append(dt * 1000)
            else:
                bad += 1
        live += C
        cl.wait_nodes(pid, live + R, 120, every=0.02)
        n1 = cl.node_count(pid)
        c1 = cpu_snapshot(cl)
        # Sandboxes started for this round: C sessions plus the refill back to R ready, less the
        # R that were ready before it.
        started = max(n1 - n0, 1)
        cpu += cpu_delta(c0, c1)
        for part in ("server", "zygote", "session"):
            parts[part] = parts.get(part, 0.0) + cpu_delta(c0, c1, part)
        starts += started
        lat += ms
        per_round.append({"p50": pct(ms, 50), "max": max(ms) if ms else None, "started": started,
                          "cpu_ms_per_start": cpu_delta(c0, c1) / started * 1000})
        log(f"burst round {rnd}: p50 {pct(ms, 50):.0f} ms, max {max(ms) if ms else 0:.0f} ms, "
            f"{started} starts, {cpu_delta(c0, c1) / started * 1000:.1f} CPU-ms per start")
    res["cl_burst"] = summary(lat)
    res["cl_burst_errors"] = bad
    res["cl_burst_rounds"] = per_round
    res["cl_burst_cpu_ms_per_start"] = cpu / starts * 1000 if starts else None
    res["cl_burst_cpu_ms_per_start_parts"] = {k: v / starts * 1000 for k, v in parts.items()} if starts else {}
    log(f"Cloister burst of {C} on {R} ready: p50 {res['cl_burst']['p50']:.0f} ms, "
        f"p99 {res['cl_burst']['p99']:.0f} ms, {res['cl_burst_cpu_ms_per_start']:.1f} CPU-ms per start")
    cl.delete_pool(pid)
    time.sleep(3)


def cloister_phase(args, res):
    cl = Cloister(args.cloister_dir, args.port, args.http_port)
    cl.server_pid = args.server_pid

    ph = args.phases.split(",")
    if "coldstart" in ph:
        coldstart_phase(args, res, cl)
    if "alloc" in ph:
        alloc_phases(args, res, cl)
    if "refill" in ph:
        refill_phase(args, res, cl)
    if "density" in ph:
        density_phase(args, res, cl)
    if "types" in ph:
        types_phase(args, res, cl)
    if "burst" in ph:
        burst_phase(args, res, cl)


def types_phase(args, res, cl):
    """6: new identifier -> first result on a PythonLTS, a Shell and a NodeLTS pool, in the same
    run: from a ready pool of --types-ready (each request sent once the pool is full again), and
    from an empty pool (readySessionInstances 0: the sandbox starts on demand)."""
    note_load(res, "types")
    R = args.types_ready
    for ctype, body, want in POOL_TYPES:
        for ready in (R, 0):
            key = f"types_{ctype}_{'ready' if ready else 'empty'}"
            pid, ep = cl.create_pool(f"bench-{ctype.lower()}-{ready}", ready, 600, ctype)
            if ready and cl.wait_nodes(pid, ready, 300) is None:
                raise RuntimeError(f"the {ctype} pool never reached {ready} ready instances")
            dp = DataPlane(cl, ep)
            # The first request warms the connection and the token path.
            dt, st, v = dp.executions(str(uuid.uuid4()), body)
            if st != 200 or v.get("result", {}).get("stdout") != want:
                raise RuntimeError(f"{ctype} executions does not work: {st} {json.dumps(v)[:500]}")
            ms, bad = [], 0
            for i in range(args.types):
                tw = time.perf_counter()
                while ready and cl.node_count(pid) < ready + 1 + i and time.perf_counter() - tw < 30:
                    time.sleep(0.01)
                if not ready:
                    time.sleep(0.3)
                dt, st, v = dp.executions(str(uuid.uuid4()), body)
                if st == 200 and v.get("result", {}).get("stdout") == want:
                    ms.append(dt * 1000)
                else:
                    bad += 1
            res[key] = summary(ms)
            res[key + "_errors"] = bad
            log(f"{ctype} new identifier -> first result ({'ready' if ready else 'empty'} pool): "
                f"p50 {res[key]['p50']:.1f} ms, {bad} errors")
            cl.delete_pool(pid)
            time.sleep(1)


def coldstart_phase(args, res, cl):
    """1c: new identifier -> print(1) with no ready instance (readySessionInstances 0)."""
    note_load(res, "coldstart")
    pid, ep = cl.create_pool("bench-cold", 0, 600)
    dp = DataPlane(cl, ep)
    ms, bad = [], 0
    for i in range(args.coldstart + 1):
        dt, st, v = dp.execute(str(uuid.uuid4()), "print(1)")
        if not ok_result(st, v, stdout="1"):
            bad += 1
        elif i:  # the first one also warms the connection
            ms.append(dt * 1000)
        time.sleep(0.5)
    res["cl_coldstart"] = summary(ms)
    res["cl_coldstart_errors"] = bad
    log(f"Cloister new identifier, no ready instance -> print(1): p50 {res['cl_coldstart']['p50']:.0f} ms")
    cl.delete_pool(pid)
    time.sleep(2)


def alloc_phases(args, res, cl):
    """1 (new identifier -> print(1)), 3 (server-side allocation), 2 (warm 1+1)."""
    note_load(res, "alloc")
    R = args.ready
    pid, ep = cl.create_pool("bench-alloc", R, 600)
    res["endpoint"] = ep
    t = cl.wait_nodes(pid, R, 300)
    if t is None:
        raise RuntimeError(f"the pool never reached {R} ready instances "
                           f"(nodeCount {cl.node_count(pid)})")
    log(f"Cloister: {R} ready in {t:.1f} s")
    dp = DataPlane(cl, ep)
    # Warm-up of the connection and the token path on one session (kept for the warm loop).
    warm_id = str(uuid.uuid4())
    dt, st, v = dp.execute(warm_id, "print(1)")
    if not ok_result(st, v, stdout="1"):
        raise RuntimeError(f"code/execute does not work: {st} {json.dumps(v)[:500]}")
    cl.wait_nodes(pid, R + 1, 60)

    m0 = cl.metrics()
    cold, bad, waits, exec_ms = [], [], [], []
    t_start = time.perf_counter()
    ids = []
    for i in range(args.cold):
        if time.perf_counter() - t_start > args.cold_seconds:
            break
        # Pace: send once the pool is back to R ready (nodeCount = sessions + ready), and no
        # sooner than --pace-ms after the previous request.
        tw = time.perf_counter()
        need = R + 1 + i
        while cl.node_count(pid) < need and time.perf_counter() - tw < 30:
            time.sleep(0.01)
        rest = args.pace_ms / 1000 - (time.perf_counter() - tw)
        if rest > 0:
            time.sleep(rest)
        waits.append(time.perf_counter() - tw)
        ident = str(uuid.uuid4())
        dt, st, v = dp.execute(ident, "print(1)")
        ids.append(ident)
        if ok_result(st, v, stdout="1"):
            cold.append(dt * 1000)
            exec_ms.append(v["properties"].get("executionTimeInMilliseconds", 0))
        else:
            bad.append((st, json.dumps(v)[:300]))
    elapsed = time.perf_counter() - t_start
    m1 = cl.metrics()
    res["cl_cold"] = summary(cold)
    res["cl_cold_exec_ms"] = summary(exec_ms)
    res["cl_cold_errors"] = bad[:5]
    res["cl_cold_error_count"] = len(bad)
    res["cl_cold_pace_per_s"] = len(ids) / elapsed
    res["cl_cold_wait_s"] = summary([w * 1000 for w in waits])
    res["cl_cold_started"] = (counter(m1, "cloister_sessions_cold_started_total")
                              - counter(m0, "cloister_sessions_cold_started_total"))
    log(f"Cloister new identifier -> print(1): p50 {res['cl_cold']['p50']:.1f} ms, "
        f"{len(bad)} errors, pace {res['cl_cold_pace_per_s']:.2f}/s")

    # 3. Server-side allocation latency, straight after phase 1.
    a0, a1 = prom(m0, "cloister_session_allocation_seconds"), prom(m1, "cloister_session_allocation_seconds")
    alloc = {"count_total": a1["count"], "count_phase": (a1["count"] or 0) - (a0["count"] or 0)}
    if a1["quantiles"]:
        alloc["kind"] = "summary"
        alloc["p50_ms"] = a1["quantiles"].get("0.5", float("nan")) * 1000
        alloc["p99_ms"] = a1["quantiles"].get("0.99", float("nan")) * 1000
        alloc["max_ms"] = a1["quantiles"].get("1", float("nan")) * 1000
    elif a1["buckets"]:
        alloc["kind"] = "histogram"
        alloc["p50_ms"] = bucket_pct(a1["buckets"], a0["buckets"], 0.5) * 1000
        alloc["p99_ms"] = bucket_pct(a1["buckets"], a0["buckets"], 0.99) * 1000
    else:
        alloc["kind"] = "missing"
    if a1["sum"] is not None and alloc["count_phase"]:
        alloc["mean_ms_phase"] = (a1["sum"] - (a0["sum"] or 0)) / alloc["count_phase"] * 1000
    res["cl_alloc"] = alloc
    res["metrics_alloc_lines"] = [l for l in m1.splitlines() if "allocation" in l]

    # 2. Warm 1+1 on one session, HTTPS and plain HTTP.
    for key, d in (("cl_warm", dp), ("cl_warm_http", DataPlane(cl, ep, plain_http=True))):
        for _ in range(50):
            d.execute(warm_id, "1+1")
        warm, wexec, errs = [], [], 0
        for _ in range(args.warm):
            dt, st, v = d.execute(warm_id, "1+1")
            if ok_result(st, v, result=2):
                warm.append(dt * 1000)
                wexec.append(v["properties"].get("executionTimeInMilliseconds", 0))
            else:
                errs += 1
                if errs == 1:
                    res[key + "_first_error"] = [st, json.dumps(v)[:300]]
        res[key] = summary(warm)
        res[key + "_exec_ms"] = summary(wexec)
        res[key + "_errors"] = errs
        log(f"Cloister warm 1+1 ({key}): p50 {res[key]['p50']:.2f} ms, {errs} errors")
    cl.delete_pool(pid)
    time.sleep(3)



def refill_phase(args, res, cl):
    """4: fill and refill rate of the ready pool."""
    note_load(res, "refill")
    N = args.refill
    t0, c0 = time.perf_counter(), cpu_busy()
    pid, ep = cl.create_pool("bench-refill", N, 600)
    t_fill = cl.wait_nodes(pid, N, 300, every=0.02)
    fill_s = (time.perf_counter() - t0) if t_fill is not None else None
    res["cl_fill"] = {"n": N, "seconds": fill_s, "per_s": N / fill_s if fill_s else None,
                      "cpu_s_per_start": (cpu_busy() - c0) / N}
    time.sleep(2)
    dp = DataPlane(cl, ep)
    t0 = time.perf_counter()
    # Drain the ready pool as fast as one client can (no code beyond an expression).
    alloc_err = 0
    for _ in range(N):
        _, st, v = dp.execute(str(uuid.uuid4()), "0")
        alloc_err += not ok_result(st, v)
    t_drained = time.perf_counter() - t0
    t_back = cl.wait_nodes(pid, 2 * N, 300, every=0.02)
    refill_s = (time.perf_counter() - t0) if t_back is not None else None
    res["cl_refill"] = {"n": N, "drain_seconds": t_drained, "seconds": refill_s,
                        "per_s": N / refill_s if refill_s else None, "errors": alloc_err}
    log(f"Cloister fill {N}: {fill_s} s; refill after draining {N}: {refill_s} s")
    cl.delete_pool(pid)
    time.sleep(5)


def density_phase(args, res, cl):
    """5: live sessions with pandas imported, memory per session."""
    note_load(res, "density")
    used0, total = mem_used()
    ceiling = 0.8 * total
    Rd = args.density_ready
    pid, ep = cl.create_pool("bench-density", Rd, max(600, args.density_max + Rd))
    cl.wait_nodes(pid, Rd, 300)
    time.sleep(3)
    used_ready, _ = mem_used()
    per_ready = (used_ready - used0) / Rd
    cg0 = cgroup_memory(cl.dir)
    lock = threading.Lock()
    live, fails, stop, inflight = [], [], threading.Event(), [0]
    t0 = time.perf_counter()

    def worker():
        d = DataPlane(cl, ep)
        while not stop.is_set():
            with lock:
                if len(live) + inflight[0] >= args.density_max:
                    stop.set()
                    return
                inflight[0] += 1
            ident = str(uuid.uuid4())
            try:
                _, st, v = d.execute(ident, "import pandas")
            except Exception as e:  # connection reset and the like
                st, v = 0, {"exception": repr(e)}
                d = DataPlane(cl, ep)
            with lock:
                inflight[0] -= 1
                if ok_result(st, v):
                    live.append(ident)
                    fails.clear()
                else:
                    fails.append((st, json.dumps(v)[:300]))
                    res.setdefault("density_errors", []).append(fails[-1])
                    if len(fails) >= 5:
                        res["density_stop"] = "5 consecutive failures"
                        stop.set()
                if mem_used()[0] >= ceiling:
                    res["density_stop"] = "memory ceiling (80% of RAM)"
                    stop.set()
                if time.perf_counter() - t0 > args.density_seconds:
                    res["density_stop"] = f"time budget ({args.density_seconds} s)"
                    stop.set()

    with ThreadPoolExecutor(args.density_clients) as ex:
        for _ in range(args.density_clients):
            ex.submit(worker)
    res.setdefault("density_stop", f"{args.density_max} sessions")
    alloc_s = time.perf_counter() - t0
    time.sleep(3)
    used1, _ = mem_used()
    cg1 = cgroup_memory(cl.dir)
    # Are they all still alive with pandas loaded?
    d = DataPlane(cl, ep)
    alive = 0
    for ident in list(live):
        _, st, v = d.execute(ident, "import sys; 'pandas' in sys.modules")
        alive += ok_result(st, v, result=True) or (st == 200 and
                                                    v.get("properties", {}).get("result") == "True")
    n = len(live)
    res["density"] = {
        "sessions": n, "alive_after": alive, "seconds": alloc_s, "ready": Rd,
        "mem_before": used0, "mem_after": used1, "mem_total": total,
        "per_ready_idle": per_ready,
        "per_session": (used1 - used_ready) / n if n else None,
        "cgroups_before": cg0, "cgroups_after": cg1,
        "cg_usage_per_sandbox": cg1[1] / cg1[0] if cg1[0] else None,
        "cg_rss_per_sandbox": cg1[2] / cg1[0] if cg1[0] else None,
        "zygotes": getattr(cgroup_memory, "zygotes", (0, 0, 0)),
    }
    log(f"Cloister: {n} sessions with pandas ({alive} alive after), stop: {res['density_stop']}, "
        f"{res['density']['per_session'] / 2**20 if n else 0:.0f} MiB per session")
    cl.delete_pool(pid)


# ---------------------------------------------------------------------------------------------

def table(res, args):
    f1 = lambda x: "n/a" if x is None or x != x else f"{x:.1f}"
    f2 = lambda x: "n/a" if x is None or x != x else f"{x:.2f}"

    def ratio(a, b):
        return "n/a" if not a or not b or a != a or b != b else f"{b / a:.1f}x"

    kc, kw = res.get("kg_cold"), res.get("kg_warm")
    cc, cw, ch = res.get("cl_cold"), res.get("cl_warm"), res.get("cl_warm_http")
    print("| measurement | Cloister p50 | Cloister p99 | Kernel Gateway p50 | Kernel Gateway p99 "
          "| KG / Cloister (p50) | goal | met |")
    print("|---|---|---|---|---|---|---|---|")
    if cc or kc:
        met = "n/a"
        if cc and kc:
            met = "yes" if cc["p50"] <= 25 and kc["p50"] / cc["p50"] >= 10 else "no"
        pace = (f"; paced at {res['cl_cold_pace_per_s']:.1f}/s, each sent once the pool was back to "
                f"{args.ready} ready; {res['cl_cold_started']:.0f} cold starts, "
                f"{res['cl_cold_error_count']} errors") if cc else ""
        print(f"| 1. new identifier → first `print(1)` result, ms (Cloister n={cc['n'] if cc else 0}{pace}; "
              f"KG kernel start n={kc['n'] if kc else 0}) | {f1(cc and cc['p50'])} | {f1(cc and cc['p99'])} "
              f"| {f1(kc and kc['p50'])} | {f1(kc and kc['p99'])} | {ratio(cc and cc['p50'], kc and kc['p50'])} "
              f"| p50 ≤ 25 ms, ≥ 10x | {met} |")
    cs = res.get("cl_coldstart")
    if cs and cs["n"]:
        print(f"| 1c. Cloister: new identifier with no ready instance (readySessionInstances 0, sandbox "
              f"started on demand) → first `print(1)`, ms (n={cs['n']}) | {f1(cs['p50'])} | {f1(cs['p99'])} "
              f"| {f1(kc and kc['p50'])} | {f1(kc and kc['p99'])} | {ratio(cs['p50'], kc and kc['p50'])} | | |")
    kp = res.get("kg_prespawned_first")
    if kp and kp["n"]:
        print(f"| 1b. KG: prespawned kernel → first `print(1)` (websocket connect + execute), ms "
              f"(n={kp['n']}) | | | {f1(kp['p50'])} | {f1(kp['p99'])} | "
              f"{ratio(cc and cc['p50'], kp['p50'])} | | |")
    if cw or kw:
        met = "n/a" if not cw else ("yes" if cw["p50"] <= 3 else "no")
        print(f"| 2. warm `1+1` round trip, ms (n={args.warm}; Cloister HTTPS keep-alive) | {f2(cw and cw['p50'])} "
              f"| {f2(cw and cw['p99'])} | {f2(kw and kw['p50'])} | {f2(kw and kw['p99'])} "
              f"| {ratio(cw and cw['p50'], kw and kw['p50'])} | p50 ≤ 3 ms | {met} |")
    if ch:
        print(f"| 2b. warm `1+1`, Cloister plain-HTTP listener, ms | {f2(ch['p50'])} | {f2(ch['p99'])} "
              f"| {f2(kw and kw['p50'])} | {f2(kw and kw['p99'])} | {ratio(ch['p50'], kw and kw['p50'])} | | |")
    kn = res.get("kg_warm_no_quickack")
    if kn:
        print(f"| 2c. warm `1+1`, KG with an ordinary client (no TCP_QUICKACK: Nagle + delayed ACK), ms "
              f"(n={kn['n']}) | | | {f2(kn['p50'])} | {f2(kn['p99'])} | {ratio(cw and cw['p50'], kn['p50'])} | | |")
    a = res.get("cl_alloc")
    if a:
        met = "n/a" if a["kind"] == "missing" else ("yes" if a["p99_ms"] <= 5 else "no")
        kind = {"summary": "Prometheus summary, last ≤60 s", "histogram": "bucket upper bounds",
                "missing": "metric missing"}[a["kind"]]
        print(f"| 3. allocation from the ready pool, server side, ms ({kind}; "
              f"{a['count_phase']:.0f} allocations in phase 1) | {f2(a.get('p50_ms'))} | {f2(a.get('p99_ms'))} "
              f"| | | | p99 ≤ 5 ms | {met} |")
    fl, rf = res.get("cl_fill"), res.get("cl_refill")
    if fl:
        cpu = f"; ≈{fl['cpu_s_per_start']:.2f} CPU-s per sandbox start" if fl.get("cpu_s_per_start") else ""
        print(f"| 4. ready pool fill from empty, sessions/s ({fl['n']} instances in "
              f"{f1(fl['seconds'])} s{cpu}) | {f1(fl['per_s'])} | | | | | | |")
    if rf:
        print(f"| 4b. refill after allocating {rf['n']} (drained in {f1(rf['drain_seconds'])} s, "
              f"back to {rf['n']} ready in {f1(rf['seconds'])} s), sessions/s | {f1(rf['per_s'])} | | | | | | |")
    d = res.get("density")
    if d:
        met = "yes" if d["sessions"] >= 500 and d["alive_after"] >= 500 else "no"
        print(f"| 5. live sessions with pandas imported (stopped by: {res.get('density_stop')}; "
              f"{d['alive_after']} answered afterwards) | {d['sessions']} | | | | | ≥ 500 | {met} |")
        if d["per_session"]:
            kgm = res.get("kg_mem_per_kernel")
            print(f"| 5b. host memory per idle session with pandas, MiB (MemAvailable delta) | "
                  f"{d['per_session'] / 2**20:.0f} | | {kgm / 2**20 if kgm else float('nan'):.0f} (per kernel) | | "
                  f"{ratio(d['per_session'], kgm)} | | |")
        if d.get("cg_rss_per_sandbox"):
            print(f"| 5c. per sandbox, from its memory cgroup ({d['cgroups_after'][0]} sandboxes incl. "
                  f"{d['ready']} ready): anonymous RSS / usage incl. page cache, MiB | "
                  f"{d['cg_rss_per_sandbox'] / 2**20:.0f} / {d['cg_usage_per_sandbox'] / 2**20:.0f} | | | | | | |")
        z = d.get("zygotes") or (0, 0, 0)
        if z[0]:
            print(f"| 5d. the zygotes' own groups (shared by every forked sandbox; {z[0]} zygote(s)): "
                  f"anonymous RSS / usage, MiB | {z[2] / 2**20:.0f} / {z[1] / 2**20:.0f} | | | | | | |")
    elif res.get("kg_mem_per_kernel"):
        print(f"| 5b. host memory per idle kernel with pandas, MiB (MemAvailable delta, "
              f"{args.kg_mem} kernels) | | | {res['kg_mem_per_kernel'] / 2**20:.0f} | | | | |")
    if any(res.get(f"types_{t}_{k}") for t, _, _ in POOL_TYPES for k in ("ready", "empty")):
        for ctype, body, _ in POOL_TYPES:
            what = body.get("shellCommand") or body.get("code")
            for kind, label in (("ready", f"ready pool of {args.types_ready}"),
                                ("empty", "empty pool, started on demand")):
                r = res.get(f"types_{ctype}_{kind}")
                if r and r["n"]:
                    print(f"| 6. {ctype}: new identifier → first `{what}` result (POST executions), "
                          f"{label}, ms (n={r['n']}, {res.get(f'types_{ctype}_{kind}_errors', 0)} errors) "
                          f"| {f1(r['p50'])} | {f1(r['p99'])} | | | | | |")


    b = res.get("cl_burst")
    if b and b["n"]:
        met = "yes" if b["p99"] < 250 else "no"
        cps = res.get("cl_burst_cpu_ms_per_start")
        print(f"| 7. burst: {args.burst_clients} clients each open a new session at once, "
              f"{args.burst_ready} ready, new identifier → first `print(1)`, ms (n={b['n']}, "
              f"{args.burst_rounds} rounds, {res.get('cl_burst_errors', 0)} errors) | {f1(b['p50'])} "
              f"| {f1(b['p99'])} | | | | p99 < 250 ms | {met} |")
        if cps is not None:
            pp = res.get("cl_burst_cpu_ms_per_start_parts") or {}
            split = ", ".join(f"{k} {v:.1f}" for k, v in pp.items())
            print(f"| 7b. CPU per sandbox start during the bursts, ms (schedstat; {split}; the server's "
                  f"share includes the requests' HTTPS and executions) | {f1(cps)} | | | | | ≤ 10 ms "
                  f"| {'yes' if cps <= 10 else 'no'} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kg", required=True, help="Kernel Gateway base URL")
    ap.add_argument("--cloister-dir")
    ap.add_argument("--port", type=int)
    ap.add_argument("--http-port", type=int)
    ap.add_argument("--out", default="bench/out/sessions.json")
    ap.add_argument("--ready", type=int, default=20)
    ap.add_argument("--cold", type=int, default=200)
    ap.add_argument("--pace-ms", type=float, default=100)
    ap.add_argument("--cold-seconds", type=float, default=120, help="time budget of phase 1")
    ap.add_argument("--kg-cold", type=int, default=30)
    ap.add_argument("--kg-mem", type=int, default=10)
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--refill", type=int, default=30)
    ap.add_argument("--density-ready", type=int, default=10)
    ap.add_argument("--density-max", type=int, default=600)
    ap.add_argument("--density-clients", type=int, default=2)
    ap.add_argument("--density-seconds", type=float, default=420)
    ap.add_argument("--skip-kg", action="store_true")
    ap.add_argument("--coldstart", type=int, default=10)
    ap.add_argument("--types", type=int, default=30, help="samples per pool type and pool state (phase types)")
    ap.add_argument("--types-ready", type=int, default=5)
    ap.add_argument("--burst-clients", type=int, default=20)
    ap.add_argument("--burst-ready", type=int, default=5)
    ap.add_argument("--burst-rounds", type=int, default=5)
    ap.add_argument("--server-pid", type=int, help="the server's pid (CPU per start, phase burst)")
    ap.add_argument("--phases", default="coldstart,alloc,refill,density,types,burst",
                    help="Cloister phases to run")
    args = ap.parse_args()
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args)}
    try:
        if not args.skip_kg:
            kg_phase(args, res)
        if args.cloister_dir:
            cloister_phase(args, res)
    finally:
        json.dump(res, open(args.out, "w"), indent=1, default=str)
    table(res, args)


if __name__ == "__main__":
    main()
