//! Cloister's own token validation against forged and broken tokens: every token is checked
//! for signature, algorithm, key, issuer, tenant, audience and lifetime.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloister_core::clock::now_secs;
use cloister_identity::Identity;
use cloister_identity::config::IdentityConfig;
use cloister_identity::tokens::TokenError;
use serde_json::{Value, json};
use std::sync::Arc;

const AUTH: &str = "https://issuer.test";
const AUD: &str = "https://api.test";

async fn identity() -> (Arc<Identity>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = cloister_store::Store::open(&url).await.unwrap();
    let tenant = "11111111-2222-3333-4444-555555555555".to_string();
    store
        .tenant_create(&cloister_store::Tenant {
            id: tenant.clone(),
            display_name: "t".into(),
            is_home: true,
            created_at: 0,
        })
        .await
        .unwrap();
    let mk = Arc::new(cloister_crypto::MasterKey::load_or_create(&dir.path().join("mk")).unwrap());
    let id = Identity::open(
        store,
        mk,
        IdentityConfig::default(),
        AUTH.into(),
        None,
        tenant,
    )
    .await
    .unwrap();
    (id, dir)
}

fn claims(id: &Identity, f: impl FnOnce(&mut Value)) -> Value {
    let now = now_secs();
    let mut c = json!({
        "aud": AUD, "iss": id.issuer_v1(&id.home_tenant), "iat": now, "nbf": now, "exp": now + 600,
        "tid": id.home_tenant, "oid": "o", "sub": "o", "appid": "a", "idtyp": "app", "ver": "1.0",
    });
    f(&mut c);
    c
}

fn check(id: &Identity, token: &str) -> Result<(), TokenError> {
    id.validate(token, &[AUD.to_string()]).map(|_| ())
}

fn reencode(token: &str, header: Option<Value>, payload: Option<Value>) -> String {
    let mut p: Vec<String> = token.split('.').map(str::to_string).collect();
    if let Some(h) = header {
        p[0] = URL_SAFE_NO_PAD.encode(h.to_string());
    }
    if let Some(c) = payload {
        p[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    }
    p.join(".")
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn accepts_a_good_token_and_both_issuers() {
    let (id, _d) = identity().await;
    assert_eq!(check(&id, &id.sign(&claims(&id, |_| {})).unwrap()), Ok(()));
    let v2 = id
        .sign(&claims(&id, |c| {
            c["iss"] = json!(id.issuer_v2(&id.home_tenant))
        }))
        .unwrap();
    assert_eq!(check(&id, &v2), Ok(()));
}

#[tokio::test]
async fn rejects_lifetime_problems() {
    let (id, _d) = identity().await;
    let now = now_secs();
    let expired = id
        .sign(&claims(&id, |c| c["exp"] = json!(now - 400)))
        .unwrap();
    assert_eq!(check(&id, &expired), Err(TokenError::Expired));
    // Within the 5 minutes of skew: still fine.
    let recent = id
        .sign(&claims(&id, |c| c["exp"] = json!(now - 100)))
        .unwrap();
    assert_eq!(check(&id, &recent), Ok(()));
    let future = id
        .sign(&claims(&id, |c| c["nbf"] = json!(now + 400)))
        .unwrap();
    assert_eq!(check(&id, &future), Err(TokenError::NotYetValid));
    let slight = id
        .sign(&claims(&id, |c| c["nbf"] = json!(now + 100)))
        .unwrap();
    assert_eq!(check(&id, &slight), Ok(()));
    let no_exp = id
        .sign(&claims(&id, |c| {
            c.as_object_mut().unwrap().remove("exp");
        }))
        .unwrap();
    assert!(check(&id, &no_exp).is_err());
}

#[tokio::test]
async fn rejects_wrong_audience_issuer_and_tenant() {
    let (id, _d) = identity().await;
    let aud = id
        .sign(&claims(&id, |c| c["aud"] = json!("https://other.test")))
        .unwrap();
    assert_eq!(check(&id, &aud), Err(TokenError::WrongAudience));
    let iss = id
        .sign(&claims(&id, |c| c["iss"] = json!("https://evil.test/x/")))
        .unwrap();
    assert_eq!(check(&id, &iss), Err(TokenError::WrongIssuer));
    let other = "99999999-2222-3333-4444-555555555555";
    let tenant = id
        .sign(&claims(&id, |c| {
            c["iss"] = json!(format!("{AUTH}/{other}/"));
            c["tid"] = json!(other);
        }))
        .unwrap();
    assert_eq!(check(&id, &tenant), Err(TokenError::WrongIssuer));
    // Right issuer but another tenant id inside.
    let tid = id.sign(&claims(&id, |c| c["tid"] = json!(other))).unwrap();
    assert_eq!(check(&id, &tid), Err(TokenError::WrongIssuer));
}

#[tokio::test]
async fn rejects_forgeries() {
    let (id, _d) = identity().await;
    let good = id.sign(&claims(&id, |_| {})).unwrap();
    // alg: none
    let none = reencode(&good, Some(json!({"alg": "none", "typ": "JWT"})), None);
    let none = format!("{}.", none.rsplit_once('.').unwrap().0);
    assert!(check(&id, &none).is_err());
    // HS256 signed with the public key (algorithm confusion).
    let kid = header_of(&good)["kid"].as_str().unwrap().to_string();
    let jwks: Value = serde_json::from_str(&id.keys.jwks()).unwrap();
    let public = jwks["keys"][0]["x5c"][0]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.clone());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(&id, |_| {}),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(check(&id, &hs), Err(TokenError::BadAlgorithm));
    // Unknown kid.
    let mut hdr = header_of(&good);
    hdr["kid"] = json!("not-a-key");
    assert_eq!(
        check(&id, &reencode(&good, Some(hdr), None)),
        Err(TokenError::UnknownKey)
    );
    // Tampered payload.
    let tampered = reencode(
        &good,
        None,
        Some(claims(&id, |c| c["oid"] = json!("admin"))),
    );
    assert_eq!(check(&id, &tampered), Err(TokenError::BadSignature));
    // Tampered signature.
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[5] ^= 0x40;
    let bad_sig = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(check(&id, &bad_sig), Err(TokenError::BadSignature));
    assert_eq!(check(&id, "not.a.jwt"), Err(TokenError::Malformed));
    assert_eq!(check(&id, ""), Err(TokenError::Malformed));
}

#[tokio::test]
async fn retired_key_validates_until_removed() {
    let (id, _d) = identity().await;
    let old = id.sign(&claims(&id, |_| {})).unwrap();
    let old_kid = header_of(&old)["kid"].as_str().unwrap().to_string();
    let published_next = id
        .keys
        .list()
        .into_iter()
        .find(|k| k.state == "next")
        .unwrap()
        .kid;
    let new_active = id.keys.rotate_now().await.unwrap();
    assert_eq!(
        new_active, published_next,
        "the published next key is the one that starts signing"
    );
    let fresh = id.sign(&claims(&id, |_| {})).unwrap();
    assert_eq!(header_of(&fresh)["kid"], new_active);
    // The retired key still verifies its tokens.
    assert_eq!(check(&id, &old), Ok(()));
    assert!(
        id.keys
            .list()
            .iter()
            .any(|k| k.kid == old_kid && k.state == "retired")
    );
    // Once every token it signed has expired, the key is removed and its tokens fail.
    id.store
        .signing_keys_purge(now_secs() + id.cfg.max_token_lifetime() + 1)
        .await
        .unwrap();
    id.keys.reload().await.unwrap();
    assert!(!id.keys.jwks().contains(&old_kid));
    assert_eq!(check(&id, &old), Err(TokenError::UnknownKey));
    assert_eq!(check(&id, &fresh), Ok(()));
}

/// Signs `payload` exactly as given (bytes, not a re-serialised value) with the active key.
fn sign_raw(id: &Identity, header: &str, payload: &str) -> String {
    let key = id.keys.active();
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key.encoding_key(), key.jwt_algorithm())
        .unwrap();
    format!("{msg}.{sig}")
}

#[tokio::test]
async fn rejects_an_issue_time_in_the_future() {
    let (id, _d) = identity().await;
    let now = now_secs();
    let decade = id
        .sign(&claims(&id, |c| c["iat"] = json!(now + 10 * 365 * 86400)))
        .unwrap();
    assert_eq!(check(&id, &decade), Err(TokenError::IssuedInFuture));
    let beyond_skew = id
        .sign(&claims(&id, |c| c["iat"] = json!(now + 400)))
        .unwrap();
    assert_eq!(check(&id, &beyond_skew), Err(TokenError::IssuedInFuture));
    // Within the 5 minutes of skew: still fine.
    let slight = id
        .sign(&claims(&id, |c| c["iat"] = json!(now + 100)))
        .unwrap();
    assert_eq!(check(&id, &slight), Ok(()));
    let text = id.sign(&claims(&id, |c| c["iat"] = json!("soon"))).unwrap();
    assert!(check(&id, &text).is_err());
}

#[tokio::test]
async fn rejects_repeated_claims_and_header_fields() {
    let (id, _d) = identity().await;
    let good = id.sign(&claims(&id, |_| {})).unwrap();
    let header = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(good.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let body = claims(&id, |_| {}).to_string();
    // The same bytes, signed raw, are accepted: the signing path is not what is refused.
    assert_eq!(check(&id, &sign_raw(&id, &header, &body)), Ok(()));
    // A second `oid` after the first (serde_json alone would keep "admin").
    let dup = format!("{},\"oid\":\"admin\"}}", &body[..body.len() - 1]);
    assert_eq!(
        check(&id, &sign_raw(&id, &header, &dup)),
        Err(TokenError::DuplicateClaim)
    );
    // The same key spelled with an escape.
    let esc = format!("{},\"o\\u0069d\":\"admin\"}}", &body[..body.len() - 1]);
    assert_eq!(
        check(&id, &sign_raw(&id, &header, &esc)),
        Err(TokenError::DuplicateClaim)
    );
    // A repeated `aud` that would swap the audience after the check.
    let aud = format!("{{\"aud\":\"https://other.test\",{}", &body[1..]);
    assert!(check(&id, &sign_raw(&id, &header, &aud)).is_err());
    // A repeated header field.
    let hdup = format!("{},\"alg\":\"none\"}}", &header[..header.len() - 1]);
    assert_eq!(
        check(&id, &sign_raw(&id, &hdup, &body)),
        Err(TokenError::DuplicateClaim)
    );
}
