"""MSAL Python's authorization-code flow (PKCE) and silent refresh against Cloister."""
import urllib.parse

import msal
import requests


def test_auth_code_flow_and_silent_refresh(server, monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE override a session's `verify`, so point it at our CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca)
    server.call("POST", "/v1.0/users", {"displayName": "Lin", "userPrincipalName": "lin@cloister.test",
                                        "passwordProfile": {"password": "a long passphrase"}})
    app = server.call("POST", "/v1.0/applications", {"displayName": "msal-public",
                                                      "publicClient": {"redirectUris": ["http://localhost:8765/cb"]}})
    pca = msal.PublicClientApplication(app["appId"], authority=f"{server.authority}/{server.tenant}",
                                       instance_discovery=False, verify=server.ca)
    scopes = ["https://dynamicsessions.io/.default"]
    flow = pca.initiate_auth_code_flow(scopes, redirect_uri="http://localhost:8765/cb")
    r = requests.post(flow["auth_uri"], data={"login": "lin@cloister.test", "passwd": "a long passphrase",
                                              "consent": "accept"}, allow_redirects=False, verify=server.ca)
    assert r.status_code == 302, r.text
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(r.headers["Location"]).query))
    result = pca.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == "lin@cloister.test"
    accounts = pca.get_accounts()
    assert accounts and accounts[0]["username"] == "lin@cloister.test"
    again = pca.acquire_token_silent(scopes, account=accounts[0], force_refresh=True)
    assert again and "access_token" in again, again
    assert again["access_token"] != result["access_token"]
