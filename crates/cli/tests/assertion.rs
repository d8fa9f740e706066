//! client_assertion JWTs as the Rust SDK sends them: RS256 with `x5t` in standard base64, and
//! integer claims; replay and wrong audience are refused.

mod common;
use base64::Engine;
use common::*;
use serde_json::json;

#[tokio::test]
async fn rs256_assertion_with_standard_base64_x5t() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (st, app) = s
        .call(
            &admin,
            "POST",
            "/v1.0/applications",
            Some(json!({"displayName": "rust-sdk"})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, v) = s
        .call(
            &admin,
            "POST",
            &format!(
                "/v1.0/applications/{}/keyCredentials",
                app["id"].as_str().unwrap()
            ),
            Some(json!({"key": cert.pem()})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let app_id = app["appId"].as_str().unwrap().to_string();
    let thumb = base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        cert.der(),
    ));
    let endpoint = s.url(&format!("/{}/oauth2/v2.0/token", s.tenant()));
    let now = cloister_core::clock::now_secs();
    let sign = |aud: &str, jti: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.x5t = Some(thumb.clone());
        let claims = json!({"aud": aud, "iss": app_id, "sub": app_id, "jti": jti, "nbf": now, "exp": now + 600});
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let req = |assertion: String| {
        let s = &s;
        let app_id = app_id.clone();
        async move {
            s.token_raw(&[
                ("grant_type", "client_credentials"),
                ("client_id", &app_id),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("scope", "https://dynamicsessions.io/.default"),
            ])
            .await
        }
    };
    let a1 = sign(&endpoint, "j1");
    let (st, v) = req(a1.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(claims(v["access_token"].as_str().unwrap())["appidacr"], "2");
    let (st, v) = req(a1).await;
    assert_eq!(st, 401, "replayed assertion: {v}");
    let (st, _) = req(sign("https://elsewhere.example/token", "j2")).await;
    assert_eq!(st, 401);
    // Signed by another key with the same thumbprint header: signature check fails.
    let other = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.x5t = Some(thumb.clone());
    let forged = jsonwebtoken::encode(
        &h,
        &json!({"aud": endpoint, "iss": app_id, "sub": app_id, "jti": "j3", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(other.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (st, v) = req(forged).await;
    assert_eq!(st, 401);
    assert_eq!(v["error_codes"][0], 700027);
}
