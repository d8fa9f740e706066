"""azure-identity's ManagedIdentityCredential and DefaultAzureCredential, unchanged, get
tokens from Cloister with no secret, and PyJWT validates them from the JWKS."""
import ssl

import jwt

from conftest import BIN, clean_env, run_py

GET_TOKEN = """
import json
from azure.identity import {cls}
cred = {cls}({kwargs})
t = cred.get_token("https://dynamicsessions.io/.default")
print(json.dumps({{"token": t.token, "expires_on": t.expires_on}}))
"""


def verify(server, token):
    ctx = ssl.create_default_context(cafile=server.ca)
    jwks = jwt.PyJWKClient(server.url(f"/{server.tenant}/discovery/v2.0/keys"), ssl_context=ctx)
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["ES256", "RS256"], audience="https://dynamicsessions.io",
                      issuer=f"{server.authority}/{server.tenant}/")


def test_imds_through_pod_identity_authority_host(server):
    env = clean_env(AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{server.http_port}")
    for cls in ("ManagedIdentityCredential", "DefaultAzureCredential"):
        kwargs = "" if cls == "ManagedIdentityCredential" else "exclude_cli_credential=True, exclude_powershell_credential=True, exclude_developer_cli_credential=True"
        out = run_py(GET_TOKEN.format(cls=cls, kwargs=kwargs), env)
        claims = verify(server, out["token"])
        assert claims["idtyp"] == "app"
        assert "/Cloister.Platform/hosts/" in claims["xms_mirid"]
        assert claims["exp"] - claims["iat"] > 80000


def test_user_assigned_identity_by_client_id(server):
    server.call("PUT", f"/subscriptions/{server.sub}/resourcegroups/compat?api-version=2021-04-01", {"location": "local"})
    uami = f"/subscriptions/{server.sub}/resourceGroups/compat/providers/Microsoft.ManagedIdentity/userAssignedIdentities/compat-id"
    ident = server.call("PUT", uami + "?api-version=2023-01-31", {"location": "local"})
    host = f"/subscriptions/{server.sub}/resourceGroups/cloister-system/providers/Cloister.Platform/hosts/local"
    server.call("PUT", host + "?api-version=2023-01-31",
                {"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami: {}}}})
    env = clean_env(AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{server.http_port}")
    out = run_py(GET_TOKEN.format(cls="ManagedIdentityCredential", kwargs=f"client_id='{ident['properties']['clientId']}'"), env)
    claims = verify(server, out["token"])
    assert claims["oid"] == ident["properties"]["principalId"]
    assert claims["appid"] == ident["properties"]["clientId"]


def test_cloister_run(server, tmp_path):
    server.call("PUT", f"/subscriptions/{server.sub}/resourcegroups/runrg?api-version=2021-04-01", {"location": "local"})
    uami = f"/subscriptions/{server.sub}/resourceGroups/runrg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/runner"
    ident = server.call("PUT", uami + "?api-version=2023-01-31", {"location": "local"})
    cfg = tmp_path / "cli"
    import os
    import subprocess
    env = clean_env(CLOISTER_CONFIG_DIR=str(cfg))
    subprocess.run([BIN, "login", "--bootstrap", os.path.join(server.dir, "bootstrap.json")], env=env, check=True, capture_output=True)
    for cls in ("ManagedIdentityCredential", "DefaultAzureCredential"):
        out = run_py(GET_TOKEN.format(cls=cls, kwargs=""), env, args=[BIN, "run", "--identity", "runner", "--"])
        claims = verify(server, out["token"])
        assert claims["oid"] == ident["properties"]["principalId"]
        assert claims["xms_mirid"].endswith("/userAssignedIdentities/runner")
