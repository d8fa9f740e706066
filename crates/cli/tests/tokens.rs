//! The token service through its HTTP interface: grants, response and error shapes,
//! discovery, JWKS, claims, rate limiting.

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn client_credentials_body_and_basic() {
    let s = Server::start().await;
    let (s1, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &s.admin_id()),
            ("client_secret", &s.admin_secret()),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .await;
    assert_eq!(s1, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    let ei = v["expires_in"].as_i64().unwrap();
    assert!(
        (3500..=5400).contains(&ei),
        "app tokens live 60-90 minutes, got {ei}"
    );
    assert_eq!(v["ext_expires_in"].as_i64().unwrap(), ei);
    let at = v["access_token"].as_str().unwrap();
    let c = claims(at);
    assert_eq!(c["aud"], "https://dynamicsessions.io");
    assert_eq!(c["tid"], s.tenant());
    assert_eq!(c["appid"], s.admin_id());
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["ver"], "1.0");
    assert_eq!(
        c["iss"],
        format!("https://127.0.0.1:{}/{}/", s.port, s.tenant())
    );
    for k in ["iat", "nbf", "exp", "oid", "sub", "uti"] {
        assert!(c.get(k).is_some(), "claim {k} missing");
    }
    let h = header(at);
    assert_eq!(h["kid"], h["x5t"]);

    // HTTP Basic (RFC 6749 2.3.1)
    let r = s
        .http
        .post(s.url(&format!("/{}/oauth2/v2.0/token", s.tenant())))
        .basic_auth(s.admin_id(), Some(s.admin_secret()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn v1_endpoint_returns_strings() {
    let s = Server::start().await;
    let r = s
        .http
        .post(s.url(&format!("/{}/oauth2/token", s.tenant())))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &s.admin_id()),
            ("client_secret", &s.admin_secret()),
            ("resource", "https://management.azure.com/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["expires_in"].is_string() && v["expires_on"].is_string() && v["not_before"].is_string()
    );
    assert_eq!(v["resource"], "https://management.azure.com/");
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["aud"],
        "https://management.azure.com/"
    );
}

fn assert_aad_error(v: &serde_json::Value, error: &str, code: i64) {
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"][0].as_i64(), Some(code), "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}:")),
        "{v}"
    );
    for k in ["timestamp", "trace_id", "correlation_id"] {
        assert!(v[k].is_string(), "{k} missing in {v}");
    }
}

#[tokio::test]
async fn token_errors_have_entra_shape() {
    let s = Server::start().await;
    let id = s.admin_id();
    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", "wrong"),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 7000215);
    // The secret is never echoed.
    assert!(!v.to_string().contains("wrong\""));

    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-1111-2222-3333-444444444444"),
            ("client_secret", "x"),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "unauthorized_client", 700016);

    let (st, v) = s.token_raw(&[("client_id", &id)]).await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "invalid_request", 900144);

    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &s.admin_secret()),
            (
                "scope",
                "https://a.example/.default https://b.example/.default",
            ),
        ])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "invalid_scope", 700022);

    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &s.admin_secret()),
            ("scope", "https://dynamicsessions.io/read"),
        ])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "invalid_scope", 1002012);

    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &s.admin_secret()),
            ("scope", "https://nothing.example/.default"),
        ])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "invalid_resource", 500011);

    let (st, v) = s
        .token_raw(&[("grant_type", "password"), ("client_id", &id)])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "unsupported_grant_type", 70003);

    let (st, v) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
            ("client_id", &id),
        ])
        .await;
    assert_eq!(st, 400);
    assert_aad_error(&v, "invalid_request", 9002313);

    let r = s
        .http
        .post(s.url("/not-a-tenant/oauth2/v2.0/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_aad_error(&r.json().await.unwrap(), "invalid_request", 90002);

    // JSON instead of a form
    let r = s
        .http
        .post(s.url(&format!("/{}/oauth2/v2.0/token", s.tenant())))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn failed_client_auth_is_rate_limited() {
    let s = Server::start().await;
    let id = s.admin_id();
    let mut saw_429 = false;
    for _ in 0..15 {
        let (st, v) = s
            .token_raw(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", "bad"),
                ("scope", "https://dynamicsessions.io/.default"),
            ])
            .await;
        if st == 429 {
            assert_eq!(v["error_codes"][0], 50053);
            saw_429 = true;
            break;
        }
        assert_eq!(st, 401);
    }
    assert!(saw_429, "the client was never locked out");
    // While locked out, even the right secret is refused.
    let (st, _) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &s.admin_secret()),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .await;
    assert_eq!(st, 429);
}

#[tokio::test]
async fn discovery_and_jwks() {
    let s = Server::start().await;
    let t = s.tenant();
    let v: serde_json::Value = s
        .http
        .get(s.url(&format!("/{t}/v2.0/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["issuer"],
        format!("https://127.0.0.1:{}/{t}/v2.0", s.port)
    );
    assert_eq!(
        v["token_endpoint"],
        s.url(&format!("/{t}/oauth2/v2.0/token"))
    );
    let jwks_uri = v["jwks_uri"].as_str().unwrap().to_string();
    let v1: serde_json::Value = s
        .http
        .get(s.url(&format!("/{t}/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["issuer"], format!("https://127.0.0.1:{}/{t}/", s.port));
    let jwks: serde_json::Value = s
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.len() >= 2,
        "active and next keys are published: {jwks}"
    );
    for k in keys {
        assert_eq!(k["kid"], k["x5t"]);
        assert!(k["x5c"].is_array());
        assert!(k.get("d").is_none(), "no private material");
    }
    let inst: serde_json::Value = s
        .http
        .get(s.url("/common/discovery/instance?api-version=1.1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(inst["tenant_discovery_endpoint"].is_string());
}

#[tokio::test]
async fn management_api_rejects_bad_tokens() {
    let s = Server::start().await;
    let path = "/subscriptions?api-version=2022-12-01";
    let admin = s.admin_token().await;
    assert_eq!(s.call(&admin, "GET", path, None).await.0, 200);
    // Wrong audience.
    let other = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    let (st, v) = s.call(&other, "GET", path, None).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    // A Microsoft Graph token: Azure Resource Manager refuses it, and so does Cloister's
    // management API; the Graph-shaped directory API takes it.
    let graph = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://graph.microsoft.com",
        )
        .await;
    assert_eq!(claims(&graph)["aud"], "https://graph.microsoft.com");
    for p in [
        path.to_string(),
        format!(
            "/subscriptions/{}/resourcegroups?api-version=2022-12-01",
            s.sub()
        ),
        "/providers/Cloister.Identity/signingKeys?api-version=2024-01-01".to_string(),
    ] {
        let (st, v) = s.call(&graph, "GET", &p, None).await;
        assert_eq!(st, 401, "{p}: {v}");
        assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    }
    let (st, v) = s.call(&graph, "GET", "/v1.0/applications", None).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.call(&admin, "GET", "/v1.0/applications", None).await;
    assert_eq!(st, 200, "{v}");
    // Tampered payload.
    let mut parts: Vec<String> = admin.split('.').map(str::to_string).collect();
    let mut c = claims(&admin);
    c["oid"] = json!("00000000-0000-0000-0000-000000000001");
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
    assert_eq!(s.call(&parts.join("."), "GET", path, None).await.0, 401);
    // alg none.
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(s.call(&none, "GET", path, None).await.0, 401);
    // Garbage and missing header.
    assert_eq!(s.call("garbage", "GET", path, None).await.0, 401);
    let r = s.http.get(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Another tenant's token.
    let (st, t2) = s
        .call(
            &admin,
            "POST",
            "/providers/Cloister.Directory/tenants?api-version=2024-01-01",
            Some(json!({"displayName": "other"})),
        )
        .await;
    assert_eq!(st, 201, "{t2}");
    let r = s
        .http
        .post(s.url(&format!(
            "/{}/oauth2/v2.0/token",
            t2["tenantId"].as_str().unwrap()
        )))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", t2["clientId"].as_str().unwrap()),
            ("client_secret", t2["clientSecret"].as_str().unwrap()),
            ("scope", &format!("{}.default", s.mgmt())),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let foreign: serde_json::Value = r.json().await.unwrap();
    let (st, _) = s
        .call(foreign["access_token"].as_str().unwrap(), "GET", path, None)
        .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn signing_keys_rotate_with_overlap() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let (st, before) = s
        .call(
            &admin,
            "GET",
            "/providers/Cloister.Identity/signingKeys?api-version=2024-01-01",
            None,
        )
        .await;
    assert_eq!(st, 200);
    let next = before["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "next")
        .unwrap()["kid"]
        .clone();
    let (st, after) = s
        .call(
            &admin,
            "POST",
            "/providers/Cloister.Identity/signingKeys/rotate?api-version=2024-01-01",
            None,
        )
        .await;
    assert_eq!(st, 200, "{after}");
    // The key that was published as next now signs.
    assert_eq!(after["activeKid"], next);
    let new_token = s.admin_token().await;
    assert_eq!(header(&new_token)["kid"], next);
    // The old token (signed by the retired key) still validates: the retired key stays published.
    assert_eq!(
        s.call(&admin, "GET", "/subscriptions?api-version=2022-12-01", None)
            .await
            .0,
        200
    );
    let states: Vec<String> = after["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_string())
        .collect();
    assert!(
        states.contains(&"retired".to_string())
            && states.contains(&"next".to_string())
            && states.contains(&"active".to_string())
    );
    let jwks: serde_json::Value = s
        .http
        .get(s.url(&format!("/{}/discovery/v2.0/keys", s.tenant())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
}

/// The SQLite database and its -wal/-shm files hold sealed secrets and hashes of every
/// credential: they are the owner's only (0600) after a start, after writes, and after a
/// restart over files an older version left 0644.
#[tokio::test]
async fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start().await;
    if s.store.is_some() {
        return; // PostgreSQL: no database file here.
    }
    let db = s.data_dir().join("cloister.db");
    let files = |db: &std::path::Path| -> Vec<(String, u32)> {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let p = format!("{}{suffix}", db.display());
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.permissions().mode() & 0o777))
            })
            .collect()
    };
    let check = |when: &str, found: Vec<(String, u32)>| {
        assert!(found.len() >= 2, "{when}: {found:?}");
        for (p, mode) in found {
            assert_eq!(mode, 0o600, "{when}: {p} is {mode:o}");
        }
    };
    check("after start", files(&db));
    let admin = s.admin_token().await;
    for i in 0..5 {
        s.create_rg(&admin, &format!("modes{i}")).await;
    }
    check("after writes", files(&db));
    s.kill9();
    for (p, _) in files(&db) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.spawn().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "modes-after").await;
    check("after a restart over 0644 files", files(&db));
}
