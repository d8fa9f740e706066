//! The credential manager through its public interfaces: the ARM resources, the consent flow
//! against a real OAuth provider (panva's oidc-provider, started by the test on loopback),
//! the gateway's authorizationContext and proxy, refresh and its failure modes.

mod common;
use common::idp::Idp;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const API: &str = "api-version=2024-05-01";

struct Env {
    s: Server,
    admin: String,
    instance: String,
    gateway: String,
}

async fn instance(s: Server, name: &str) -> Env {
    let admin = s.admin_token().await;
    s.create_rg(&admin, "cm").await;
    let instance = format!(
        "/subscriptions/{}/resourceGroups/cm/providers/Microsoft.ApiManagement/service/{name}",
        s.sub()
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{instance}?{API}"),
            Some(json!({"location": "local", "properties": {"allowedPostLoginRedirectUrls": ["http://127.0.0.1:9/done*"]}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let gateway = v["properties"]["gatewayUrl"].as_str().unwrap().to_string();
    Env {
        s,
        admin,
        instance,
        gateway,
    }
}

fn redirect_uri(e: &Env, name: &str) -> String {
    format!(
        "{}/credential-manager/redirect/{}/cm/{name}",
        e.s.url("").trim_end_matches('/'),
        e.s.sub()
    )
}

impl Env {
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.s
            .call(
                &self.admin,
                "PUT",
                &format!("{}/{path}?{API}", self.instance),
                Some(body),
            )
            .await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.s
            .call(
                &self.admin,
                "GET",
                &format!("{}/{path}?{API}", self.instance),
                None,
            )
            .await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.s
            .call(
                &self.admin,
                "POST",
                &format!("{}/{path}?{API}", self.instance),
                Some(body),
            )
            .await
    }
    async fn delete(&self, path: &str, if_match: Option<&str>) -> u16 {
        let mut r = self
            .s
            .http
            .delete(self.s.url(&format!("{}/{path}?{API}", self.instance)))
            .bearer_auth(&self.admin);
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        r.send().await.unwrap().status().as_u16()
    }
    async fn context(&self, token: &str, provider: &str, conn: &str, extra: &str) -> (u16, Value) {
        let r = self
            .s
            .http
            .post(format!(
                "{}/authorizationContext?provider-id={provider}&authorization-id={conn}{extra}",
                self.gateway
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }
    async fn policy_for_admin(&self, provider: &str, conn: &str, name: &str) {
        let c = claims(&self.admin);
        let (st, v) = self
            .put(
                &format!(
                    "authorizationProviders/{provider}/authorizations/{conn}/accessPolicies/{name}"
                ),
                json!({"properties": {"tenantId": c["tid"], "objectId": c["oid"]}}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
}

async fn auth_code_provider(e: &Env, idp: &Idp, name: &str) {
    let (st, v) = e
        .put(
            &format!("authorizationProviders/{name}"),
            json!({"properties": {"displayName": "Test IdP", "identityProvider": "oauth2pkce", "oauth2": {"grantTypes": {"authorizationCode": {
                "clientId": "app", "clientSecret": "app-secret-app-secret-app-secret", "scopes": "openid offline_access api.read",
                "authorizationUrl": idp.authorization_url(), "tokenUrl": idp.token_url()}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert!(
        !v.to_string().contains("app-secret-app-secret"),
        "secret echoed: {v}"
    );
}

/// Runs the consent flow for a connection and returns where the user ends up.
async fn consent(e: &Env, idp: &Idp, provider: &str, conn: &str) -> String {
    let (st, v) = e
        .post(
            &format!("authorizationProviders/{provider}/authorizations/{conn}/getLoginLinks"),
            json!({"postLoginRedirectUrl": "http://127.0.0.1:9/done"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let link = v["loginLink"].as_str().unwrap().to_string();
    // The anti-phishing page shows a consent code; confirming it skips the page.
    let page = e.s.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let code = html
        .split("id=\"consent-code\">")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .unwrap()
        .to_string();
    let (st, _) = e
        .post(
            &format!("authorizationProviders/{provider}/authorizations/{conn}/confirmConsentCode"),
            json!({"consentCode": "WRONG123"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, v) = e
        .post(
            &format!("authorizationProviders/{provider}/authorizations/{conn}/confirmConsentCode"),
            json!({"consentCode": code}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let r = e.s.http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let authorize = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        authorize.starts_with(&idp.authorization_url()),
        "{authorize}"
    );
    assert!(authorize.contains("code_challenge_method=S256"));
    let callback = idp.consent(&authorize).await;
    let r = e.s.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap_or_default());
    r.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn consent_flow_context_refresh_and_policies() {
    let e = instance(Server::start().await, "apim1").await;
    let idp = Idp::start(&[&redirect_uri(&e, "apim1")], &[("IDP_AT_TTL", "10")]);
    auth_code_provider(&e, &idp, "oidc").await;
    let (st, v) = e
        .put(
            "authorizationProviders/oidc/authorizations/alice",
            json!({"properties": {"authorizationType": "OAuth2", "oauth2grantType": "AuthorizationCode"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["properties"]["status"], "Error");
    assert_eq!(v["properties"]["error"]["code"], "Unauthenticated");
    // Before consent: the runtime says the connection is not connected.
    e.policy_for_admin("oidc", "alice", "admin").await;
    let (st, v) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 500, "{v}");
    let (st, v) = e
        .context(&e.admin, "oidc", "alice", "&ignore-error=true")
        .await;
    assert_eq!((st, v), (200, Value::Null));
    // A post-login redirect that is not allow-listed is refused.
    let (st, v) = e
        .post(
            "authorizationProviders/oidc/authorizations/alice/getLoginLinks",
            json!({"postLoginRedirectUrl": "https://evil.example/steal"}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let back = consent(&e, &idp, "oidc", "alice").await;
    assert!(
        back.starts_with("http://127.0.0.1:9/done?status=success"),
        "{back}"
    );
    let (_, v) = e
        .get("authorizationProviders/oidc/authorizations/alice")
        .await;
    assert_eq!(v["properties"]["status"], "Connected", "{v}");
    // get-authorization-context.
    let (st, v) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 200, "{v}");
    let first = v["AccessToken"].as_str().unwrap().to_string();
    assert!(v["Claims"]["expires_in"].is_number());
    assert!(v["Claims"].get("refresh_token").is_none());
    // Someone without an access policy is refused.
    let (app, _, secret) = e.s.new_sp(&e.admin, "outsider").await;
    let outsider = e.s.client_token(&app, &secret, &e.s.mgmt()).await;
    let (st, _) = e.context(&outsider, "oidc", "alice", "").await;
    assert_eq!(st, 403);
    // The token lives 10 s (less than 3 minutes, so it is served until it expires); then 1,000
    // concurrent callers cause exactly one refresh at the provider and all get a valid token.
    tokio::time::sleep(Duration::from_secs(11)).await;
    idp.reset().await;
    let burst = std::time::Instant::now();
    let mut tasks = vec![];
    for _ in 0..1000 {
        let http = e.s.http.clone();
        let url = format!(
            "{}/authorizationContext?provider-id=oidc&authorization-id=alice",
            e.gateway
        );
        let tok = e.admin.clone();
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(tok).send().await.unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (st, v["AccessToken"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (st, tok) = t.await.unwrap();
        assert_eq!(st, 200);
        tokens.insert(tok);
    }
    // Single flight: one refresh per token lifetime (10 s) the burst lasted. On a quiet machine
    // the burst ends well within one lifetime, so everyone gets the same new token; on a
    // loaded one the new token can expire before the last caller is served, and exactly one
    // more refresh (and token) per lifetime is then correct.
    let lifetimes = 1 + burst.elapsed().as_secs() / 10;
    let stats = idp.stats().await;
    let refreshes = stats["refresh_token"].as_u64().unwrap_or(0);
    assert!(
        refreshes >= 1 && refreshes <= lifetimes,
        "{refreshes} refreshes in {lifetimes} token lifetimes: {stats}"
    );
    assert!(
        tokens.len() as u64 <= refreshes,
        "everyone got a token of one refresh: {tokens:?}"
    );
    assert!(!tokens.contains(&first));
    // Refresh tokens rotate: the rotated one was stored, so the next refresh works too.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (st, v) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(idp.stats().await["refresh_token"], refreshes + 1);
    // An expired refresh token: the connection needs re-authorization.
    idp.expire_refresh_tokens().await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (st, v) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 500, "{v}");
    assert_eq!(v["error"]["code"], "RefreshTokenInvalid");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = e
            .get("authorizationProviders/oidc/authorizations/alice")
            .await;
        if v["properties"]["status"] == "Error" {
            assert!(
                v["properties"]["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("re-authorization required"),
                "{v}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "status did not change: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Consent again and it works again.
    let back = consent(&e, &idp, "oidc", "alice").await;
    assert!(back.contains("status=success"), "{back}");
    let (st, _) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 200);
    // Removing the access policy takes effect on the next request.
    let (_, pol) =
        e.s.call(
            &e.admin,
            "GET",
            &format!(
                "{}/authorizationProviders/oidc/authorizations/alice/accessPolicies/admin?{API}",
                e.instance
            ),
            None,
        )
        .await;
    assert_eq!(pol["properties"]["objectId"], claims(&e.admin)["oid"]);
    assert_eq!(
        e.delete(
            "authorizationProviders/oidc/authorizations/alice/accessPolicies/admin",
            Some("*")
        )
        .await,
        200
    );
    let (st, _) = e.context(&e.admin, "oidc", "alice", "").await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn client_credentials_transient_errors_and_bad_secrets() {
    let e = instance(Server::start().await, "apim2").await;
    let idp = Idp::start(&[&redirect_uri(&e, "apim2")], &[]);
    let (st, v) = e
        .put(
            "authorizationProviders/svc",
            json!({"properties": {"displayName": "Service", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {
                "clientId": "svc", "clientSecret": "svc-secret-svc-secret-svc-secret", "scopes": "api.read", "tokenUrl": idp.token_url()}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    // Created Connected: the first token is fetched at once.
    let (st, v) = e
        .put(
            "authorizationProviders/svc/authorizations/backend",
            json!({"properties": {"authorizationType": "OAuth2", "oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["properties"]["status"], "Connected", "{v}");
    e.policy_for_admin("svc", "backend", "admin").await;
    let (st, v) = e.context(&e.admin, "svc", "backend", "").await;
    assert_eq!(st, 200, "{v}");
    // A connection-level secret that is wrong: the error says where to fix it.
    let (st, v) = e
        .put(
            "authorizationProviders/svc/authorizations/wrong",
            json!({"properties": {"oauth2grantType": "ClientCredentials", "parameters": {"clientId": "svc", "clientSecret": "not-the-secret"}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["properties"]["status"], "Error");
    let msg = v["properties"]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("on the connection"), "{msg}");
    assert!(!v.to_string().contains("not-the-secret"));
    // 5xx and 429 from the provider are retried.
    let (st, _) = e
        .put(
            "authorizationProviders/svc/authorizations/flaky",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    e.policy_for_admin("svc", "flaky", "admin").await;
    idp.reset().await;
    idp.fail(json!({"status": 500, "error": "server_error", "count": 1}))
        .await;
    idp.fail(json!({"status": 429, "error": "server_error", "count": 1}))
        .await;
    let (st, v) = e
        .put(
            "authorizationProviders/svc/authorizations/flaky2",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(
        v["properties"]["status"], "Connected",
        "retried past a 500 and a 429: {v}"
    );
}

#[tokio::test]
async fn resources_etags_filters_limits_and_the_proxy() {
    let e = instance(Server::start().await, "apim3").await;
    let idp = Idp::start(&[&redirect_uri(&e, "apim3")], &[]);
    for name in ["alpha", "beta", "gamma"] {
        let (st, v) = e
            .put(
                &format!("authorizationProviders/{name}"),
                json!({"properties": {"displayName": format!("{name} provider"), "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {
                    "clientId": "svc", "clientSecret": "svc-secret-svc-secret-svc-secret", "tokenUrl": idp.token_url()}}}}}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    // Secrets never come back.
    let (st, v) = e.get("authorizationProviders/alpha").await;
    assert_eq!(st, 200);
    assert!(!v.to_string().contains("svc-secret"), "{v}");
    // $filter, $top, $skip, nextLink.
    let (_, v) =
        e.s.call(
            &e.admin,
            "GET",
            &format!(
                "{}/authorizationProviders?{API}&$filter=startswith(name,'b')",
                e.instance
            ),
            None,
        )
        .await;
    assert_eq!(v["value"].as_array().map(|a| a.len()), Some(1), "{v}");
    assert_eq!(v["value"][0]["name"], "beta");
    let (_, v) =
        e.s.call(
            &e.admin,
            "GET",
            &format!(
                "{}/authorizationProviders?{API}&$filter=displayName eq 'gamma provider'",
                e.instance
            ),
            None,
        )
        .await;
    assert_eq!(v["value"][0]["name"], "gamma");
    let (_, v) =
        e.s.call(
            &e.admin,
            "GET",
            &format!("{}/authorizationProviders?{API}&$top=2", e.instance),
            None,
        )
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let next = v["nextLink"].as_str().unwrap().to_string();
    let (_, v) =
        e.s.call(&e.admin, "GET", next.trim_start_matches(&e.s.url("")), None)
            .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    let (st, _) =
        e.s.call(
            &e.admin,
            "GET",
            &format!(
                "{}/authorizationProviders?{API}&$filter=secret eq 'x'",
                e.instance
            ),
            None,
        )
        .await;
    assert_eq!(st, 400);
    // ETags: a stale If-Match is refused; DELETE needs If-Match.
    let r =
        e.s.http
            .get(e.s.url(&format!(
                "{}/authorizationProviders/alpha?{API}",
                e.instance
            )))
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body = json!({"properties": {"displayName": "renamed", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {"clientId": "svc", "tokenUrl": idp.token_url()}}}}});
    let r =
        e.s.http
            .put(e.s.url(&format!(
                "{}/authorizationProviders/alpha?{API}",
                e.instance
            )))
            .bearer_auth(&e.admin)
            .header("if-match", "\"stale\"")
            .json(&body)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 412);
    let r =
        e.s.http
            .put(e.s.url(&format!(
                "{}/authorizationProviders/alpha?{API}",
                e.instance
            )))
            .bearer_auth(&e.admin)
            .header("if-match", &etag)
            .json(&body)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let new_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    assert_eq!(e.delete("authorizationProviders/alpha", None).await, 428);
    assert_eq!(
        e.delete("authorizationProviders/alpha", Some(&etag)).await,
        412
    );
    // Deleting a provider deletes its connections and their policies.
    let (st, _) = e
        .put(
            "authorizationProviders/beta/authorizations/c1",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    e.policy_for_admin("beta", "c1", "p1").await;
    assert_eq!(
        e.delete("authorizationProviders/beta", Some("*")).await,
        200
    );
    let (st, _) = e.get("authorizationProviders/beta/authorizations/c1").await;
    assert_eq!(st, 404);
    // Bad input.
    for (path, body) in [
        (
            "authorizationProviders/bad1",
            json!({"properties": {"displayName": "x", "identityProvider": "oauth2", "oauth2": {"grantTypes": {}}}}),
        ),
        (
            "authorizationProviders/gamma/authorizations/c2",
            json!({"properties": {"oauth2grantType": "AuthorizationCode"}}),
        ),
        (
            "authorizationProviders/gamma/authorizations/nope/accessPolicies/p",
            json!({"properties": {"tenantId": "t", "objectId": "o"}}),
        ),
    ] {
        let (st, v) = e.put(path, body).await;
        assert!(st == 400 || st == 404, "{path}: {st} {v}");
    }
    // 100 access policies per connection.
    let (st, _) = e
        .put(
            "authorizationProviders/gamma/authorizations/many",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    for i in 0..100 {
        let (st, v) = e
            .put(
                &format!("authorizationProviders/gamma/authorizations/many/accessPolicies/p{i}"),
                json!({"properties": {"tenantId": "00000000-0000-0000-0000-000000000001", "objectId": format!("00000000-0000-0000-0000-{i:012}")}}),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = e
        .put(
            "authorizationProviders/gamma/authorizations/many/accessPolicies/p100",
            json!({"properties": {"tenantId": "00000000-0000-0000-0000-000000000001", "objectId": "00000000-0000-0000-0000-000000000999"}}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    // The proxy: an API whose backend echoes the Authorization header it got.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = backend.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = backend.accept().await else {
                break;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or("").to_string();
                let auth = req
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l[14..].trim().to_string())
                    .unwrap_or_default();
                let body = json!({"line": line, "authorization": auth}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    let (st, _) = e
        .put(
            "authorizationProviders/gamma/authorizations/proxied",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    e.policy_for_admin("gamma", "proxied", "admin").await;
    let (st, v) = e
        .put(
            "apis/echo",
            json!({"properties": {"path": "echo", "serviceUrl": format!("http://127.0.0.1:{port}/base"),
                "authorizationPolicy": {"providerId": "gamma", "authorizationId": "proxied"}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let r =
        e.s.http
            .get(format!("{}/echo/items/7?x=1", e.gateway))
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["line"], "GET /base/items/7?x=1 HTTP/1.1");
    let (_, ctx) = e.context(&e.admin, "gamma", "proxied", "").await;
    assert_eq!(
        v["authorization"],
        format!("Bearer {}", ctx["AccessToken"].as_str().unwrap())
    );
    // Without a bearer token the proxy refuses.
    let r =
        e.s.http
            .get(format!("{}/echo/x", e.gateway))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn cloisters_own_identity_plane_as_a_provider() {
    let e = instance(Server::start().await, "apim4").await;
    let (app, _, secret) = e.s.new_sp(&e.admin, "downstream-caller").await;
    let (st, v) = e
        .put(
            "authorizationProviders/self",
            json!({"properties": {"displayName": "Cloister", "identityProvider": "cloister", "oauth2": {"grantTypes": {"clientCredentials": {
                "clientId": app, "clientSecret": secret, "scopes": "https://dynamicsessions.io/.default"}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = e
        .put(
            "authorizationProviders/self/authorizations/me",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["properties"]["status"], "Connected", "{v}");
    e.policy_for_admin("self", "me", "admin").await;
    let (st, v) = e.context(&e.admin, "self", "me", "").await;
    assert_eq!(st, 200, "{v}");
    let c = claims(v["AccessToken"].as_str().unwrap());
    assert_eq!(c["aud"], "https://dynamicsessions.io");
    assert_eq!(c["appid"], app.as_str());
    // A caller without access learns nothing about which connections exist: a connection
    // that exists, one that does not and one under a provider that does not all answer the
    // same 403 (the names asked about aside), with or without ignore-error; never a 500.
    let (oapp, _, osecret) = e.s.new_sp(&e.admin, "outsider").await;
    let outsider = e.s.client_token(&oapp, &osecret, &e.s.mgmt()).await;
    let mut seen = vec![];
    for (provider, conn) in [("self", "me"), ("self", "nobody"), ("nothere", "me")] {
        for extra in ["", "&ignore-error=true"] {
            let (st, v) = e.context(&outsider, provider, conn, extra).await;
            assert_eq!(st, 403, "{provider}/{conn}{extra}: {v}");
            assert_eq!(v["error"]["code"], "AccessDenied", "{v}");
            let msg = v["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&format!("'{conn}'"), "'C'")
                .replace(&format!("'{provider}'"), "'P'");
            seen.push(msg);
        }
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // The admin, who has access to 'me', asking about a connection that does not exist.
    for extra in ["", "&ignore-error=true"] {
        let (st, v) = e.context(&e.admin, "self", "nobody", extra).await;
        assert_eq!(st, 403, "{v}");
    }
}

/// Two nodes on one PostgreSQL store: an expired token is refreshed once in all.
#[tokio::test]
async fn refresh_is_single_flight_across_nodes() {
    if std::env::var("CLOISTER_TEST_PG")
        .map(|v| v.is_empty())
        .unwrap_or(true)
    {
        eprintln!("skipped: two nodes need a shared PostgreSQL store (CLOISTER_TEST_PG)");
        return;
    }
    let e = instance(Server::start().await, "apim5").await;
    let idp = Idp::start(&[&redirect_uri(&e, "apim5")], &[("IDP_CC_TTL", "10")]);
    let (st, v) = e
        .put(
            "authorizationProviders/svc",
            json!({"properties": {"displayName": "Service", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {
                "clientId": "svc", "clientSecret": "svc-secret-svc-secret-svc-secret", "scopes": "api.read", "tokenUrl": idp.token_url()}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = e
        .put(
            "authorizationProviders/svc/authorizations/shared",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["properties"]["status"], "Connected", "{v}");
    e.policy_for_admin("svc", "shared", "admin").await;
    let b = e.s.second_node().await;
    let gw_b = e
        .gateway
        .replace(&format!(":{}/", e.s.port), &format!(":{}/", b.port));
    tokio::time::sleep(Duration::from_secs(11)).await;
    idp.reset().await;
    let burst = std::time::Instant::now();
    let mut tasks = vec![];
    for i in 0..400 {
        let http = if i % 2 == 0 {
            e.s.http.clone()
        } else {
            b.http.clone()
        };
        let gw = if i % 2 == 0 {
            e.gateway.clone()
        } else {
            gw_b.clone()
        };
        let tok = e.admin.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!(
                    "{gw}/authorizationContext?provider-id=svc&authorization-id=shared"
                ))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (st, v["AccessToken"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (st, tok) = t.await.unwrap();
        assert_eq!(st, 200);
        tokens.insert(tok);
    }
    // Single flight across nodes: one refresh per token lifetime (10 s) the burst lasted, for
    // both nodes together (a loaded machine can outlast one lifetime; see the test above).
    let lifetimes = 1 + burst.elapsed().as_secs() / 10;
    let refreshes = idp.stats().await["client_credentials"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        refreshes >= 1 && refreshes <= lifetimes,
        "{refreshes} refreshes for both nodes in {lifetimes} token lifetimes"
    );
    assert!(tokens.len() as u64 <= refreshes, "{tokens:?}");
}

#[tokio::test]
async fn jwt_identity_type_and_the_cli() {
    let e = instance(Server::start().await, "apim6").await;
    let idp = Idp::start(&[&redirect_uri(&e, "apim6")], &[]);
    // The CLI: provider, connection, access policy, key rotation.
    let boot = e.s.data_dir().join("bootstrap.json");
    let (c, _, err) = e.s.cli(&["login", "--bootstrap", boot.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let provider = json!({"properties": {"displayName": "Service", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"clientCredentials": {
        "clientId": "svc", "clientSecret": "svc-secret-svc-secret-svc-secret", "scopes": "api.read", "tokenUrl": idp.token_url()}}}}})
    .to_string();
    let inst = ["--service-name", "apim6", "-g", "cm"];
    let run = |args: &[&str]| {
        let mut a: Vec<&str> = vec!["apim"];
        a.extend_from_slice(args);
        a.extend_from_slice(&inst);
        e.s.cli(&a)
    };
    let (c, out, err) = run(&[
        "authorization-provider",
        "create",
        "-n",
        "svc",
        "--body",
        &provider,
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(!out.contains("svc-secret"), "{out}");
    let (c, out, err) = run(&[
        "authorization",
        "create",
        "--provider-id",
        "svc",
        "-n",
        "conn",
        "--body",
        r#"{"properties":{"oauth2grantType":"ClientCredentials"}}"#,
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"Connected\""), "{out}");
    let (c, out, _) = run(&[
        "authorization-provider",
        "list",
        "--filter",
        "name eq 'svc'",
    ]);
    assert_eq!(c, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // jwt identity: an app token for https://azure-api.net/authorization-manager.
    let (app, sp, secret) = e.s.new_sp(&e.admin, "jwt-caller").await;
    let jwt =
        e.s.client_token(&app, &secret, "https://azure-api.net/authorization-manager")
            .await;
    let tid = claims(&jwt)["tid"].as_str().unwrap().to_string();
    let body =
        json!({"properties": {"tenantId": tid, "objectId": sp, "appIds": [app]}}).to_string();
    let (c, _, err) = run(&[
        "access-policy",
        "create",
        "--provider-id",
        "svc",
        "--authorization-id",
        "conn",
        "-n",
        "jwt",
        "--body",
        &body,
    ]);
    assert_eq!(c, 0, "{err}");
    let (st, v) = e.context(&jwt, "svc", "conn", "&identity-type=jwt").await;
    assert_eq!(st, 200, "{v}");
    // A management token is not a jwt identity.
    let mgmt = e.s.client_token(&app, &secret, &e.s.mgmt()).await;
    let (st, _) = e.context(&mgmt, "svc", "conn", "&identity-type=jwt").await;
    assert_eq!(st, 401);
    // Key rotation from the CLI re-wraps everything; tokens still come out.
    let (c, out, err) = e.s.cli(&["apim", "rotate-key"]);
    assert_eq!(c, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["primaryVersion"], 2, "{r}");
    assert_eq!(r["remaining"], 0);
    assert!(r["rewrapped"].as_u64().unwrap() >= 2, "{r}");
    let (st, _) = e.context(&jwt, "svc", "conn", "&identity-type=jwt").await;
    assert_eq!(st, 200);
    let (c, _, err) = run(&[
        "access-policy",
        "delete",
        "--provider-id",
        "svc",
        "--authorization-id",
        "conn",
        "-n",
        "jwt",
    ]);
    assert_eq!(c, 0, "{err}");
    let (st, _) = e.context(&jwt, "svc", "conn", "&identity-type=jwt").await;
    assert_eq!(st, 403);
}

/// A scripted token endpoint (and a trivial authorize endpoint) for behaviour real providers
/// do not show on demand: a refresh answer without `refresh_token`, one without `expires_in`.
struct Scripted {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn scripted_provider(answers: Vec<Value>) -> Scripted {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let answers = std::sync::Arc::new(std::sync::Mutex::new(answers.into_iter()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                break;
            };
            let seen = seen2.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let line = text.lines().next().unwrap_or("").to_string();
                let resp = if line.starts_with("GET /authorize") {
                    let q = line
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .split_once('?')
                        .map(|x| x.1)
                        .unwrap_or("");
                    let p: std::collections::HashMap<String, String> =
                        url::form_urlencoded::parse(q.as_bytes())
                            .into_owned()
                            .collect();
                    let loc = format!(
                        "{}?code=code-1&state={}",
                        p["redirect_uri"],
                        url::form_urlencoded::byte_serialize(p["state"].as_bytes())
                            .collect::<String>()
                    );
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: {loc}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                } else {
                    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(body);
                    let a = answers
                        .lock()
                        .unwrap()
                        .next()
                        .unwrap_or(json!({"error": "invalid_grant"}));
                    let status = if a.get("error").is_some() {
                        "400 Bad Request"
                    } else {
                        "200 OK"
                    };
                    let b = a.to_string();
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    )
                };
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Scripted { url, seen }
}

#[tokio::test]
async fn refresh_answers_without_refresh_token_or_expires_in() {
    let e = instance(Server::start().await, "apim7").await;
    let p = scripted_provider(vec![
        json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 1, "token_type": "Bearer"}),
        // No refresh_token: the stored one (rt-1) must be kept.
        json!({"access_token": "at-2", "expires_in": 1, "token_type": "Bearer"}),
        // No expires_in: the documented default (an hour) applies, so no further refresh.
        json!({"access_token": "at-3", "token_type": "Bearer"}),
    ])
    .await;
    let (st, v) = e
        .put(
            "authorizationProviders/scripted",
            json!({"properties": {"displayName": "Scripted", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"authorizationCode": {
                "clientId": "c", "clientSecret": "s", "authorizationUrl": format!("{}/authorize", p.url), "tokenUrl": format!("{}/token", p.url)}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = e
        .put(
            "authorizationProviders/scripted/authorizations/u",
            json!({"properties": {"oauth2grantType": "AuthorizationCode"}}),
        )
        .await;
    assert_eq!(st, 201);
    e.policy_for_admin("scripted", "u", "admin").await;
    let (_, v) = e
        .post(
            "authorizationProviders/scripted/authorizations/u/getLoginLinks",
            json!({"postLoginRedirectUrl": "http://127.0.0.1:9/done"}),
        )
        .await;
    let link = v["loginLink"].as_str().unwrap().to_string();
    let state = link.split("state=").nth(1).unwrap().to_string();
    // Through the anti-phishing page's form, to the provider, back to Cloister.
    let r =
        e.s.http
            .post(e.s.url("/credential-manager/login"))
            .form(&[("state", state.as_str())])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 302);
    let authorize = r.headers()["location"].to_str().unwrap().to_string();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&authorize)
        .send()
        .await
        .unwrap();
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = e.s.http.get(&callback).send().await.unwrap();
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("status=success")
    );
    let (st, v) = e.context(&e.admin, "scripted", "u", "").await;
    assert_eq!((st, v["AccessToken"].as_str()), (200, Some("at-1")));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, v) = e.context(&e.admin, "scripted", "u", "").await;
    assert_eq!(v["AccessToken"], "at-2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, v) = e.context(&e.admin, "scripted", "u", "").await;
    assert_eq!(v["AccessToken"], "at-3");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, v) = e.context(&e.admin, "scripted", "u", "").await;
    assert_eq!(
        (st, v["AccessToken"].as_str()),
        (200, Some("at-3")),
        "at-3 lives an hour"
    );
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].contains("grant_type=authorization_code") && seen[0].contains("code_verifier=")
    );
    assert!(seen[1].contains("refresh_token=rt-1"), "{}", seen[1]);
    assert!(
        seen[2].contains("refresh_token=rt-1"),
        "the old refresh token was kept: {}",
        seen[2]
    );
}

/// Hostile: one instance's names used under another. A connection of instance A named under
/// instance B (its items, its gateway, an API of B pointing at it), a login started for A
/// confirmed and called back through B, and a caller who may read A listing B.
#[tokio::test]
async fn one_instance_cannot_reach_anothers_connections() {
    let e = instance(Server::start().await, "apima").await;
    let b = format!(
        "/subscriptions/{}/resourceGroups/cm/providers/Microsoft.ApiManagement/service/apimb",
        e.s.sub()
    );
    let (st, v) = e
        .s
        .call(
            &e.admin,
            "PUT",
            &format!("{b}?{API}"),
            Some(json!({"location": "local", "properties": {"allowedPostLoginRedirectUrls": ["http://127.0.0.1:9/done*"]}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let gateway_b = v["properties"]["gatewayUrl"].as_str().unwrap().to_string();
    assert_ne!(gateway_b, e.gateway);
    let on_b = |path: &str| format!("{b}/{path}?{API}");
    // In A: a connection to Cloister's own plane, connected, with a policy for the admin.
    let (app, _, secret) = e.s.new_sp(&e.admin, "downstream").await;
    let (st, v) = e
        .put(
            "authorizationProviders/self",
            json!({"properties": {"displayName": "Cloister", "identityProvider": "cloister", "oauth2": {"grantTypes": {"clientCredentials": {
                "clientId": app, "clientSecret": secret, "scopes": "https://dynamicsessions.io/.default"}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = e
        .put(
            "authorizationProviders/self/authorizations/me",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(
        (st, &v["properties"]["status"]),
        (201, &json!("Connected")),
        "{v}"
    );
    e.policy_for_admin("self", "me", "admin").await;
    let (st, v) = e.context(&e.admin, "self", "me", "").await;
    assert_eq!(st, 200, "{v}");
    // Under B the same names are nothing: no items, no token, no policy can be added.
    let (st, v) =
        e.s.call(
            &e.admin,
            "GET",
            &on_b("authorizationProviders/self/authorizations/me"),
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) =
        e.s.call(&e.admin, "GET", &on_b("authorizationProviders"), None)
            .await;
    assert_eq!(
        (st, v["value"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) =
        e.s.call(
            &e.admin,
            "PUT",
            &on_b("authorizationProviders/self/authorizations/me/accessPolicies/sneak"),
            Some(json!({"properties": {"tenantId": e.s.tenant(), "objectId": claims(&e.admin)["oid"]}})),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let r =
        e.s.http
            .post(format!(
                "{gateway_b}/authorizationContext?provider-id=self&authorization-id=me"
            ))
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 403);
    // An API of B that names A's connection gets B's (missing) connection, not A's token.
    let (st, v) =
        e.s.call(
            &e.admin,
            "PUT",
            &on_b("apis/steal"),
            Some(
                json!({"properties": {"path": "steal", "serviceUrl": "http://127.0.0.1:9/x",
                "authorizationPolicy": {"providerId": "self", "authorizationId": "me"}}}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let r =
        e.s.http
            .get(format!("{gateway_b}/steal/y"))
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 403);
    // A login started for A: its consent code does not confirm through B, and B's callback
    // does not finish it.
    let (st, v) = e
        .put(
            "authorizationProviders/ac",
            json!({"properties": {"displayName": "AC", "identityProvider": "oauth2", "oauth2": {"grantTypes": {"authorizationCode": {
                "clientId": "c", "clientSecret": "s", "authorizationUrl": "http://127.0.0.1:9/authorize", "tokenUrl": "http://127.0.0.1:9/token"}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = e
        .put(
            "authorizationProviders/ac/authorizations/u",
            json!({"properties": {"oauth2grantType": "AuthorizationCode"}}),
        )
        .await;
    assert_eq!(st, 201);
    let (st, v) = e
        .post(
            "authorizationProviders/ac/authorizations/u/getLoginLinks",
            json!({"postLoginRedirectUrl": "http://127.0.0.1:9/done"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let link = v["loginLink"].as_str().unwrap().to_string();
    let state = link.split("state=").nth(1).unwrap().to_string();
    let html =
        e.s.http
            .get(&link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    let code = html
        .split("id=\"consent-code\">")
        .nth(1)
        .and_then(|x| x.split('<').next())
        .unwrap()
        .to_string();
    let (st, v) =
        e.s.call(
            &e.admin,
            "POST",
            &on_b("authorizationProviders/ac/authorizations/u/confirmConsentCode"),
            Some(json!({"consentCode": code})),
        )
        .await;
    assert!(st == 400 || st == 404, "{st} {v}");
    let r = e.s.http.get(&link).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the link still shows the anti-phishing page"
    );
    let r =
        e.s.http
            .get(e.s.url(&format!(
                "/credential-manager/redirect/{}/cm/apimb?state={state}&code=stolen",
                e.s.sub()
            )))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let (_, v) = e.get("authorizationProviders/ac/authorizations/u").await;
    assert_eq!(v["properties"]["status"], "Error", "{v}");
    assert_eq!(v["properties"]["error"]["code"], "Unauthenticated", "{v}");
    // A reader of A: reads A's items (no secrets), not B's, and changes nothing.
    let (rapp, rsp, rsecret) = e.s.new_sp(&e.admin, "reader-of-a").await;
    e.s.assign(
        &e.admin,
        &e.instance,
        "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        &rsp,
    )
    .await;
    let reader = e.s.client_token(&rapp, &rsecret, &e.s.mgmt()).await;
    let (st, v) =
        e.s.call(
            &reader,
            "GET",
            &format!("{}/authorizationProviders?{API}", e.instance),
            None,
        )
        .await;
    assert_eq!(
        (st, v["value"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    assert!(!v.to_string().contains(&secret), "{v}");
    for path in ["authorizationProviders", "apis", "apis/steal"] {
        let (st, v) = e.s.call(&reader, "GET", &on_b(path), None).await;
        assert_eq!(st, 403, "{path}: {v}");
    }
    let (st, v) =
        e.s.call(
            &reader,
            "GET",
            &format!(
                "/subscriptions/{}/providers/Microsoft.ApiManagement/service?{API}",
                e.s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["apima"], "{v}");
    let (st, v) =
        e.s.call(
            &reader,
            "PUT",
            &format!(
                "{}/authorizationProviders/self/authorizations/me/accessPolicies/me?{API}",
                e.instance
            ),
            Some(json!({"properties": {"tenantId": e.s.tenant(), "objectId": rsp}})),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) =
        e.s.call(
            &reader,
            "POST",
            &format!(
                "{}/authorizationProviders/ac/authorizations/u/getLoginLinks?{API}",
                e.instance
            ),
            Some(json!({"postLoginRedirectUrl": "http://127.0.0.1:9/done"})),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = e.context(&reader, "self", "me", "").await;
    assert_eq!(st, 403);
}

/// Deleting a service instance deletes what the credential manager kept under it: a new
/// instance of the same name starts empty and its gateway serves nothing of the old one.
#[tokio::test]
async fn a_deleted_instance_leaves_nothing_behind() {
    let e = instance(Server::start().await, "apimd").await;
    let (app, _, secret) = e.s.new_sp(&e.admin, "downstream").await;
    let (st, v) = e
        .put(
            "authorizationProviders/self",
            json!({"properties": {"displayName": "Cloister", "identityProvider": "cloister", "oauth2": {"grantTypes": {"clientCredentials": {
                "clientId": app, "clientSecret": secret, "scopes": "https://dynamicsessions.io/.default"}}}}}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = e
        .put(
            "authorizationProviders/self/authorizations/me",
            json!({"properties": {"oauth2grantType": "ClientCredentials"}}),
        )
        .await;
    assert_eq!(st, 201);
    e.policy_for_admin("self", "me", "admin").await;
    let (st, _) = e.context(&e.admin, "self", "me", "").await;
    assert_eq!(st, 200);
    let (st, v) =
        e.s.call(&e.admin, "DELETE", &format!("{}?{API}", e.instance), None)
            .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = e.get("authorizationProviders").await;
    assert_eq!(st, 404, "no instance, no children");
    let (st, _) = e.context(&e.admin, "self", "me", "").await;
    assert_eq!(st, 404, "the gateway of a deleted instance");
    let (st, v) =
        e.s.call(
            &e.admin,
            "PUT",
            &format!("{}?{API}", e.instance),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = e.get("authorizationProviders").await;
    assert_eq!(
        (st, v["value"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    // The gateway's instance cache lives a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _) = e.context(&e.admin, "self", "me", "").await;
    assert_eq!(st, 403);
}
