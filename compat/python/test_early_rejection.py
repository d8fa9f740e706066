"""Python `requests` sends a whole request body before it reads the response. A request the
server refuses before reading its body (a bad token on a 1-10 MB upload) must still reach
the client as its status, over HTTPS and plain HTTP, every time: a reset or TLS error
instead makes azure-core retry and send the body again."""
import requests


def test_a_refused_upload_reads_401_every_time(server):
    path = (f"/dynamicsessions/subscriptions/{server.sub}/resourceGroups/rg/sessionPools/p"
            "/files/upload?api-version=2024-02-02-preview&identifier=x")
    bases = [(f"https://127.0.0.1:{server.port}", server.ca), (f"http://127.0.0.1:{server.http_port}", True)]
    failures = []
    for base, verify in bases:
        for i in range(10):
            size = (1 + i) << 20
            files = {"file": ("data.bin", b"x" * size)}
            try:
                r = requests.post(base + path, files=files, verify=verify, timeout=30,
                                  headers={"Authorization": "Bearer not-a-token"})
                if r.status_code != 401 or r.json()["error"]["code"] == "":
                    failures.append((base, size, r.status_code, r.text[:200]))
            except requests.RequestException as e:
                failures.append((base, size, type(e).__name__, str(e)[:200]))
    assert not failures, failures


def test_a_refused_management_write_reads_its_status(server):
    url = server.url(f"/subscriptions/{server.sub}/resourcegroups/big?api-version=2021-04-01")
    for _ in range(10):
        r = requests.put(url, data=b"{" + b" " * (4 << 20) + b"}", verify=server.ca, timeout=30,
                         headers={"Authorization": "Bearer not-a-token", "Content-Type": "application/json"})
        assert r.status_code in (401, 413), r.text
