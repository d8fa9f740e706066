//! Pending logins of the consent flow: the ARM actions that start one (`getLoginLinks`) and
//! confirm its anti-phishing code (`confirmConsentCode`), and the sealed login state the
//! gateway's pages and callback read. A login's `state` is stored only as a keyed hash; the
//! rest (PKCE verifier, redirect, consent code) is sealed under the master key.

use crate::manager::Credentials;
use crate::model::{Grant, Provider};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cloister_arm::host::store_err;
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_store::{LoginRow, Resource};
use serde_json::{Value, json};

const LOGIN_TTL: i64 = 600;
const STATE_PURPOSE: &str = "credential-login-state";
const LOGIN_AAD: &[u8] = b"cloister credential login v1";

fn random_token() -> String {
    cloister_crypto::random_token(32)
}

pub(crate) fn seal(cm: &Credentials, v: &Value) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(cm.mk.seal(v.to_string().as_bytes(), LOGIN_AAD))
}

pub(crate) fn unseal(cm: &Credentials, s: &str) -> Option<Value> {
    let raw = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    let plain = cm.mk.open(&raw, LOGIN_AAD).ok()?;
    serde_json::from_slice(&plain).ok()
}

pub(crate) fn state_hash(cm: &Credentials, state: &str) -> String {
    cm.mk.keyed_hash(STATE_PURPOSE, state.as_bytes())
}

/// Whether `url` is on the instance's allow-list (`properties.allowedPostLoginRedirectUrls`:
/// exact URLs, or prefixes ending in `*`).
fn redirect_allowed(inst: &Resource, url: &str) -> bool {
    let props: Value = serde_json::from_str(&inst.properties).unwrap_or(json!({}));
    props["allowedPostLoginRedirectUrls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .any(|e| match e.strip_suffix('*') {
                    Some(prefix) => url.starts_with(prefix),
                    None => url == e,
                })
        })
        .unwrap_or(false)
}

/// `POST …/getLoginLinks {postLoginRedirectUrl}` → `{loginLink}`.
pub(crate) async fn login_link(
    cm: &Credentials,
    inst: &Resource,
    provider_id: &str,
    conn_id: &str,
    body: &[u8],
) -> Result<Response, ArmError> {
    let b: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let redirect = b["postLoginRedirectUrl"]
        .as_str()
        .unwrap_or("")
        .trim()
        .to_string();
    if redirect.is_empty() {
        return Err(ArmError::bad_request(
            "ValidationError",
            "'postLoginRedirectUrl' is required.",
        ));
    }
    if !(redirect.starts_with("https://") || redirect.starts_with("http://")) {
        return Err(ArmError::bad_request(
            "ValidationError",
            "'postLoginRedirectUrl' must be an absolute http(s) URL.",
        ));
    }
    if !redirect_allowed(inst, &redirect) {
        return Err(ArmError::bad_request(
            "RedirectUrlNotAllowed",
            format!(
                "'{redirect}' is not in the service instance's properties.allowedPostLoginRedirectUrls; add it (or a prefix ending in *) first."
            ),
        ));
    }
    let store = &cm.store;
    let provider = store
        .cred_get(provider_id)
        .await
        .map_err(store_err)?
        .filter(|p| p.kind == "provider")
        .ok_or_else(|| {
            ArmError::not_found("ResourceNotFound", "The credential provider was not found.")
        })?;
    let conn = store
        .cred_get(conn_id)
        .await
        .map_err(store_err)?
        .filter(|c| c.kind == "connection" && c.parent_lc == provider.id.to_lowercase())
        .ok_or_else(|| ArmError::not_found("ResourceNotFound", "The connection was not found."))?;
    let p =
        Provider::from_properties(&serde_json::from_str(&provider.properties).unwrap_or(json!({})))
            .ok_or_else(|| ArmError::internal("The provider's stored settings are unreadable."))?;
    if p.grant != Grant::AuthorizationCode {
        return Err(ArmError::bad_request(
            "ValidationError",
            "Login links are for authorizationCode providers; client-credentials connections need no consent.",
        ));
    }
    let state = random_token();
    let verifier = random_token() + &random_token();
    let consent_code = random_token()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_uppercase();
    let now = now_secs();
    store
        .login_insert(&LoginRow {
            state_hash: state_hash(cm, &state),
            connection_lc: conn.id.to_lowercase(),
            sealed: seal(cm, &json!({
                "verifier": verifier, "redirect": redirect, "consentCode": consent_code, "confirmed": false,
                "provider": provider.id, "connection": conn.id, "instance": inst.id,
            })),
            expires_at: now + LOGIN_TTL,
            created_at: now,
        })
        .await
        .map_err(store_err)?;
    let _ = store.login_purge(now).await;
    let link = format!("{}/credential-manager/login?state={state}", cm.public_url);
    Ok((StatusCode::OK, axum::Json(json!({"loginLink": link}))).into_response())
}

/// `POST …/confirmConsentCode {consentCode}`: the code the anti-phishing page showed; once
/// confirmed, that login link goes straight to the identity provider.
pub(crate) async fn confirm_consent_code(
    cm: &Credentials,
    conn_id: &str,
    body: &[u8],
) -> Result<Response, ArmError> {
    let b: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let code = b["consentCode"]
        .as_str()
        .unwrap_or("")
        .trim()
        .to_uppercase();
    if code.is_empty() {
        return Err(ArmError::bad_request(
            "ValidationError",
            "'consentCode' is required.",
        ));
    }
    // The code is unique among this connection's pending logins.
    let pending = cm
        .store
        .logins_of(&conn_id.to_lowercase(), now_secs())
        .await
        .map_err(store_err)?;
    for l in pending {
        if let Some(mut v) = unseal(cm, &l.sealed)
            && v["consentCode"].as_str() == Some(code.as_str())
        {
            v["confirmed"] = json!(true);
            cm.store
                .login_update(&l.state_hash, &seal(cm, &v))
                .await
                .map_err(store_err)?;
            return Ok(StatusCode::OK.into_response());
        }
    }
    Err(ArmError::bad_request(
        "InvalidConsentCode",
        "The consent code does not match a pending login of this connection.",
    ))
}

/// An unexpired pending login, without consuming it (the pages); the callback takes it.
pub(crate) async fn pending_login(cm: &Credentials, state: &str) -> Option<(LoginRow, Value)> {
    let l = cm
        .store
        .login_peek(&state_hash(cm, state))
        .await
        .ok()
        .flatten()?;
    if l.expires_at < now_secs() {
        return None;
    }
    let v = unseal(cm, &l.sealed)?;
    Some((l, v))
}
