"""Starts a real `cloister serve` for the compatibility tests (SQLite, or PostgreSQL when
CLOISTER_TEST_PG is set) and offers helpers that run client code in a clean subprocess."""
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("CLOISTER_BIN", os.path.join(ROOT, "target", "debug", "cloister"))


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cloister-compat-")
        # Port 0: the server picks free ports and reports them in endpoints.json.
        args = [BIN, "serve", "--data-dir", self.dir, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        pg = os.environ.get("CLOISTER_TEST_PG")
        if pg:
            name = "c_" + uuid.uuid4().hex
            subprocess.run(["psql", f"{pg}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
            args += ["--store", f"{pg}/{name}"]
        env = dict(os.environ, CLOISTER_LOG_LEVEL="warn")
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
        boot = os.path.join(self.dir, "bootstrap.json")
        endpoints = os.path.join(self.dir, "endpoints.json")
        deadline = time.time() + 60
        while True:
            if os.path.exists(boot) and os.path.exists(endpoints):
                try:
                    ep = json.load(open(endpoints))
                    self.port = int(ep["https"].rsplit(":", 1)[1])
                    self.http_port = int(ep["http"].rsplit(":", 1)[1])
                    self.boot = json.load(open(boot))
                    self.ca = os.path.join(self.dir, "ca.pem")
                    if requests.get(self.url("/healthz"), verify=self.ca, timeout=2).ok:
                        break
                except (ValueError, requests.RequestException):
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError("cloister exited early")
            if time.time() > deadline:
                raise RuntimeError("cloister did not start")
            time.sleep(0.05)
        self.tenant = self.boot["tenantId"]
        self.sub = self.boot["subscriptionId"]
        self.authority = f"https://127.0.0.1:{self.port}"

    def url(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    def token(self, client_id=None, secret=None, resource=None):
        r = requests.post(self.url(f"/{self.tenant}/oauth2/v2.0/token"), verify=self.ca, data={
            "grant_type": "client_credentials",
            "client_id": client_id or self.boot["clientId"],
            "client_secret": secret or self.boot["clientSecret"],
            "scope": (resource or self.authority + "/") .rstrip("/") + "/.default",
        })
        r.raise_for_status()
        return r.json()["access_token"]

    def call(self, method, path, body=None, token=None):
        r = requests.request(method, self.url(path), json=body, verify=self.ca,
                             headers={"Authorization": "Bearer " + (token or self.token())})
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.text else None

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def clean_env(**extra):
    """An environment with no Azure credentials from the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_py(code, env, args=None):
    """Runs client code in a fresh interpreter (credential classes read env at construction)."""
    cmd = (args or []) + [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"client failed:\nstdout={out.stdout}\nstderr={out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])
