//! Self-test of the test IdP (compat/idp, panva's oidc-provider) and its Rust driver: the
//! authorization-code + PKCE flow with headless consent, refresh-token rotation and replay
//! detection, client credentials, stats and failure injection.

#[path = "common/idp.rs"]
mod idp;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idp::Idp;
use serde_json::{Value, json};

const REDIRECT: &str = "http://127.0.0.1:9/cb";

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    Pkce {
        challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        verifier,
    }
}

fn authorize_url(idp: &Idp, client_id: &str, state: &str, p: &Pkce) -> String {
    url::Url::parse_with_params(
        &idp.authorization_url(),
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid offline_access api.read"),
            ("state", state),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap()
    .to_string()
}

fn query(u: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(u)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Runs consent and returns the code, checking the redirect.
async fn code_for(idp: &Idp, client_id: &str, p: &Pkce) -> String {
    let state = format!("st-{}", rand::random::<u32>());
    let loc = idp.consent(&authorize_url(idp, client_id, &state, p)).await;
    assert!(loc.starts_with(&format!("{REDIRECT}?")), "{loc}");
    let q = query(&loc);
    assert_eq!(q.get("state"), Some(&state), "{loc}");
    assert_eq!(q.get("iss"), Some(&idp.issuer()), "{loc}");
    q.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code: {loc}"))
}

fn err(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[tokio::test]
async fn idp_selftest() {
    let t0 = std::time::Instant::now();
    let idp = Idp::start(&[REDIRECT], &[("IDP_AT_TTL", "120"), ("IDP_CC_TTL", "90")]);
    eprintln!("IdP up in {:?}", t0.elapsed());
    let app_secret = idp.app_secret.clone();
    let svc_secret = idp.svc_secret.clone();

    // Discovery says what we rely on.
    let disc: Value = reqwest::get(idp.discovery_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disc["issuer"], json!(idp.issuer()));
    assert_eq!(disc["token_endpoint"], json!(idp.token_url()));
    assert_eq!(
        disc["authorization_endpoint"],
        json!(idp.authorization_url())
    );

    // Authorization code + PKCE, client_secret_post.
    let p = pkce();
    let code = code_for(&idp, "app", &p).await;
    let (st, tok) = idp
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &p.verifier),
            ("client_id", "app"),
            ("client_secret", &app_secret),
        ])
        .await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["expires_in"], json!(120), "{tok}");
    assert_eq!(tok["token_type"], json!("Bearer"), "{tok}");
    let scope = tok["scope"].as_str().unwrap();
    for s in ["openid", "offline_access", "api.read"] {
        assert!(scope.split(' ').any(|x| x == s), "{tok}");
    }
    assert!(tok["id_token"].is_string(), "{tok}");
    let at1 = tok["access_token"].as_str().unwrap().to_string();
    let rt1 = tok["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();

    // Refresh: a new access token and a rotated refresh token.
    let refresh = |rt: String| {
        let secret = app_secret.clone();
        let idp = &idp;
        async move {
            idp.token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("client_id", "app"),
                ("client_secret", &secret),
            ])
            .await
        }
    };
    let (st, tok) = refresh(rt1.clone()).await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["expires_in"], json!(120), "{tok}");
    assert_ne!(tok["access_token"].as_str().unwrap(), at1);
    let rt2 = tok["refresh_token"]
        .as_str()
        .expect("rotated RT")
        .to_string();
    assert_ne!(rt2, rt1);

    // Replaying the old refresh token is invalid_grant and revokes the grant: rt2 dies too.
    let (st, tok) = refresh(rt1.clone()).await;
    assert_eq!((st, err(&tok)), (400, "invalid_grant"), "{tok}");
    let (st, tok) = refresh(rt2.clone()).await;
    assert_eq!((st, err(&tok)), (400, "invalid_grant"), "{tok}");

    // Client credentials.
    let cc = |client: &'static str| {
        let secret = svc_secret.clone();
        let idp = &idp;
        async move {
            idp.token(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", &secret),
                ("scope", "api.read"),
            ])
            .await
        }
    };
    let (st, tok) = cc("svc").await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["expires_in"], json!(90), "{tok}");
    assert_eq!(tok["scope"], json!("api.read"), "{tok}");
    assert!(tok["access_token"].is_string(), "{tok}");

    // A wrong secret is invalid_client.
    let (st, tok) = idp
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", "wrong"),
        ])
        .await;
    assert_eq!((st, err(&tok)), (401, "invalid_client"), "{tok}");

    let s = idp.stats().await;
    assert_eq!(s["authorization_code"], json!(1), "{s}");
    assert_eq!(s["refresh_token"], json!(3), "{s}");
    assert_eq!(s["client_credentials"], json!(2), "{s}");
    assert_eq!(s["errors"], json!(3), "{s}");
    assert_eq!(s["error_codes"]["invalid_grant"], json!(2), "{s}");
    assert_eq!(s["error_codes"]["invalid_client"], json!(1), "{s}");
    assert_eq!(s["log"][0]["auth"], json!("client_secret_post"), "{s}");
    assert_eq!(s["log"][0]["client_id"], json!("app"), "{s}");

    // Failure injection: one 500 for client_credentials, then success; a 429 has Retry-After.
    idp.reset().await;
    idp.fail(json!({"status": 500, "error": "server_error", "count": 1, "grant_type": "client_credentials"}))
        .await;
    let (st, tok) = cc("svc").await;
    assert_eq!((st, err(&tok)), (500, "server_error"), "{tok}");
    let (st, tok) = cc("svc").await;
    assert_eq!(st, 200, "{tok}");
    idp.fail(json!({"status": 429, "count": 1})).await;
    let resp = reqwest::Client::new()
        .post(idp.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", svc_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    // A rule for one grant type leaves the others alone.
    idp.fail(
        json!({"status": 400, "error": "invalid_grant", "count": 1, "grant_type": "refresh_token"}),
    )
    .await;
    let (st, tok) = cc("svc").await;
    assert_eq!(st, 200, "{tok}");
    let s = idp.stats().await;
    assert_eq!(s["client_credentials"], json!(4), "{s}");
    assert_eq!(s["injected"], json!(2), "{s}");
    assert_eq!(s["errors"], json!(2), "{s}");
    idp.reset().await;
    let s = idp.stats().await;
    assert_eq!(s["client_credentials"], json!(0), "{s}");
    assert_eq!(s["errors"], json!(0), "{s}");

    // The client_secret_basic client, then expire-refresh-tokens.
    let p = pkce();
    let code = code_for(&idp, "app-basic", &p).await;
    let basic = reqwest::Client::new();
    let (st, tok) = {
        let r = basic
            .post(idp.token_url())
            .basic_auth("app-basic", Some(&app_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", p.verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(st, 200, "{tok}");
    let rt = tok["refresh_token"].as_str().unwrap().to_string();
    let basic_refresh = |rt: String| {
        let basic = basic.clone();
        let (url, secret) = (idp.token_url(), app_secret.clone());
        async move {
            let r = basic
                .post(url)
                .basic_auth("app-basic", Some(secret))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, tok) = basic_refresh(rt).await;
    assert_eq!(st, 200, "{tok}");
    let rt = tok["refresh_token"].as_str().unwrap().to_string();
    assert!(idp.expire_refresh_tokens().await >= 1);
    let (st, tok) = basic_refresh(rt).await;
    assert_eq!((st, err(&tok)), (400, "invalid_grant"), "{tok}");
    let s = idp.stats().await;
    assert_eq!(s["log"][0]["auth"], json!("client_secret_basic"), "{s}");
    assert_eq!(s["log"][0]["client_id"], json!("app-basic"), "{s}");

    // PKCE is required: an authorization request without a code_challenge is refused.
    let no_pkce = url::Url::parse_with_params(
        &idp.authorization_url(),
        &[
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
            ("state", "s"),
        ],
    )
    .unwrap();
    let loc = idp.consent(no_pkce.as_str()).await;
    assert!(loc.starts_with(REDIRECT), "{loc}");
    assert_eq!(
        query(&loc).get("error").map(String::as_str),
        Some("invalid_request"),
        "{loc}"
    );

    eprintln!("IdP self-test took {:?}", t0.elapsed());
}
