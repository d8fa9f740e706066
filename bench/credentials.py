"""Credential-manager benchmark helper: sets up a service instance, a client-credentials
provider and connection against the test IdP (compat/idp), prints the gateway URL and a token
for wrk, and runs the refresh storm. Standard library only."""
import json, os, ssl, sys, threading, time, urllib.request, uuid

def req(method, url, body=None, token=None, ctx=None, form=None):
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode(); headers["content-type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode(); headers["content-type"] = "application/x-www-form-urlencoded"
    if token:
        headers["authorization"] = "Bearer " + token
    r = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(r, context=ctx, timeout=60) as resp:
        text = resp.read()
        return resp.status, (json.loads(text) if text else None)

import urllib.parse

def setup(data_dir, https_port, http_port, idp_port, ttl):
    boot = json.load(open(os.path.join(data_dir, "bootstrap.json")))
    ctx = ssl.create_default_context(cafile=os.path.join(data_dir, "ca.pem"))
    base = f"https://127.0.0.1:{https_port}"
    _, t = req("POST", f"{base}/{boot['tenantId']}/oauth2/v2.0/token", ctx=ctx, form={
        "grant_type": "client_credentials", "client_id": boot["clientId"], "client_secret": boot["clientSecret"],
        "scope": base + "/.default"})
    tok = t["access_token"]
    sub = boot["subscriptionId"]
    req("PUT", f"{base}/subscriptions/{sub}/resourcegroups/bench?api-version=2021-04-01", {"location": "local"}, tok, ctx)
    inst = f"/subscriptions/{sub}/resourceGroups/bench/providers/Microsoft.ApiManagement/service/b{ttl}"
    _, v = req("PUT", f"{base}{inst}?api-version=2024-05-01", {"location": "local", "properties": {}}, tok, ctx)
    gateway = v["properties"]["gatewayUrl"]
    req("PUT", f"{base}{inst}/authorizationProviders/svc?api-version=2024-05-01", {"properties": {
        "displayName": "svc", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {
            "clientId": "svc", "clientSecret": "svc-secret-svc-secret-svc-secret", "scopes": "api.read",
            "tokenUrl": f"http://127.0.0.1:{idp_port}/token"}}}}}, tok, ctx)
    _, c = req("PUT", f"{base}{inst}/authorizationProviders/svc/authorizations/conn?api-version=2024-05-01",
               {"properties": {"oauth2grantType": "ClientCredentials"}}, tok, ctx)
    assert c["properties"]["status"] == "Connected", c
    claims = json.loads(__import__("base64").urlsafe_b64decode(tok.split(".")[1] + "=="))
    req("PUT", f"{base}{inst}/authorizationProviders/svc/authorizations/conn/accessPolicies/me?api-version=2024-05-01",
        {"properties": {"tenantId": claims["tid"], "objectId": claims["oid"]}}, tok, ctx)
    # The plain-HTTP listener serves the same router; wrk drives it without TLS.
    http_gateway = gateway.replace(base, f"http://127.0.0.1:{http_port}")
    return tok, http_gateway

def storm(url, token, n, idp_port):
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{idp_port}/__test/reset", method="POST", data=b"")).read()
    lat = []
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)
    def one():
        barrier.wait()
        t0 = time.perf_counter()
        try:
            st, v = req("POST", url, token=token)
            ok = st == 200 and v and v.get("AccessToken")
        except Exception as e:  # noqa
            ok = False
            with lock:
                errors.append(str(e))
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            lat.append(dt)
            if not ok:
                errors.append("bad")
    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{idp_port}/__test/stats").read())
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    return stats["client_credentials"], q(0.5), q(0.99), lat[-1], len(errors)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "setup":
        tok, gw = setup(*sys.argv[2:5], sys.argv[5], sys.argv[6])
        print(tok); print(gw)
    elif cmd == "storm":
        url, token, n, idp = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        print(*storm(url, token, n, idp))
