//! The interactive authorization-code flow with PKCE, consent, and rotating refresh tokens.

mod common;
use base64::Engine;
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;

struct Flow {
    app: String,
    verifier: String,
    challenge: String,
}

async fn setup(s: &Server) -> Flow {
    let admin = s.admin_token().await;
    let (st, v) = s.call(&admin, "POST", "/v1.0/users", Some(json!({"displayName": "Ada", "userPrincipalName": "ada@cloister.test", "passwordProfile": {"password": "correct horse battery"}}))).await;
    assert_eq!(st, 201, "{v}");
    let (st, app) = s.call(&admin, "POST", "/v1.0/applications", Some(json!({"displayName": "web", "publicClient": {"redirectUris": ["http://localhost:9999/cb"]}}))).await;
    assert_eq!(st, 201);
    let verifier = "a-very-long-code-verifier-with-enough-entropy-0123456789".to_string();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    Flow {
        app: app["appId"].as_str().unwrap().to_string(),
        verifier,
        challenge,
    }
}

fn authz_url(s: &Server, f: &Flow) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", f.app.as_str()),
            ("response_type", "code"),
            ("redirect_uri", "http://localhost:9999/cb"),
            (
                "scope",
                "https://dynamicsessions.io/.default openid offline_access",
            ),
            ("state", "st8"),
            ("nonce", "n0nce"),
            ("code_challenge", f.challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    s.url(&format!("/{}/oauth2/v2.0/authorize?{q}", s.tenant()))
}

fn location_params(r: &reqwest::Response) -> HashMap<String, String> {
    let loc = r.headers().get("location").unwrap().to_str().unwrap();
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn code_flow_with_pkce_consent_and_refresh_rotation() {
    let s = Server::start().await;
    let f = setup(&s).await;
    let url = authz_url(&s, &f);
    let page = s.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=\"passwd\""));
    // Wrong password: the page says so, no redirect.
    let r = s
        .http
        .post(&url)
        .form(&[("login", "ada@cloister.test"), ("passwd", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("AADSTS50126"));
    // Right password: consent page with a ticket.
    let r = s
        .http
        .post(&url)
        .form(&[
            ("login", "ada@cloister.test"),
            ("passwd", "correct horse battery"),
        ])
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(html.contains("Permissions requested"), "{html}");
    let ticket = html
        .split("name=\"ticket\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = s
        .http
        .post(&url)
        .form(&[("ticket", ticket.as_str()), ("consent", "accept")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let p = location_params(&r);
    assert_eq!(p["state"], "st8");
    let code = p["code"].clone();
    let tok_url = s.url(&format!("/{}/oauth2/v2.0/token", s.tenant()));
    // Wrong verifier.
    let bad: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &f.app),
            ("code", &code),
            ("redirect_uri", "http://localhost:9999/cb"),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error_codes"][0], 501481, "{bad}");
    // The code was consumed by that attempt? No: a failed PKCE check still burns the code (single use).
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Consent is remembered: credentials alone now redirect.
    let r = s
        .http
        .post(&url)
        .form(&[
            ("login", "ada@cloister.test"),
            ("passwd", "correct horse battery"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let code = location_params(&r)["code"].clone();
    let ok: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &f.app),
            ("code", &code),
            ("redirect_uri", "http://localhost:9999/cb"),
            ("code_verifier", &f.verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok["access_token"].is_string(), "{ok}");
    let at = claims(ok["access_token"].as_str().unwrap());
    assert_eq!(at["idtyp"], "user");
    assert_eq!(at["upn"], "ada@cloister.test");
    let id = claims(ok["id_token"].as_str().unwrap());
    assert_eq!(id["nonce"], "n0nce");
    assert_eq!(id["aud"], f.app);
    assert!(ok["client_info"].is_string());
    // Code reuse.
    let again: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &f.app),
            ("code", &code),
            ("redirect_uri", "http://localhost:9999/cb"),
            ("code_verifier", &f.verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["error_codes"][0], 54005);
    // Refresh rotation: the new refresh token works, the old one is refused and revokes the family.
    let rt1 = ok["refresh_token"].as_str().unwrap().to_string();
    let r2: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &f.app),
            ("refresh_token", &rt1),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rt2 = r2["refresh_token"]
        .as_str()
        .expect("rotated refresh token")
        .to_string();
    assert_ne!(rt1, rt2);
    let replay: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &f.app),
            ("refresh_token", &rt1),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["error"], "invalid_grant");
    let after: Value = s
        .http
        .post(&tok_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &f.app),
            ("refresh_token", &rt2),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["error"], "invalid_grant",
        "reuse revoked the whole family"
    );
}

#[tokio::test]
async fn authorize_refuses_unregistered_redirects_and_missing_pkce() {
    let s = Server::start().await;
    let f = setup(&s).await;
    let url = authz_url(&s, &f).replace("localhost%3A9999%2Fcb", "evil.example%2Fcb");
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.headers().get("location").is_none(),
        "never redirect to an unregistered URI"
    );
    assert!(r.text().await.unwrap().contains("AADSTS50011"));
    let url = authz_url(&s, &f).replace("code_challenge=", "x=");
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(location_params(&r)["error"], "invalid_request");
}
