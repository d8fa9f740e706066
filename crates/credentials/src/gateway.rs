//! The credential manager's runtime surface, served beside the management API: the login
//! link's anti-phishing page, the consent callback, `authorizationContext`
//! (get-authorization-context), and the API proxy that attaches a connection's access token.
//! The management API's `getLoginLinks` and `confirmConsentCode` actions ([`crate::arm`])
//! start and confirm the logins these pages continue.

use crate::arm::conn_ref;
use crate::consent::{pending_login, state_hash, unseal};
use crate::manager::Credentials;
use crate::model::{Grant, Provider};
use crate::runtime::RuntimeError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_identity::Identity;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The audience of user/app tokens presented with `identity-type=jwt`.
pub const AUTHORIZATION_MANAGER: &str = "https://azure-api.net/authorization-manager";

/// What the gateway needs: the credential manager, and the identity service that validates
/// its callers' bearer tokens (management audiences for `managed`, the authorization
/// manager's for `jwt`).
pub struct Gateway {
    pub cm: Arc<Credentials>,
    pub id: Arc<Identity>,
    /// The audiences of a `managed` caller's token (the management API's).
    pub management_audiences: Vec<String>,
}

type St = State<Arc<Gateway>>;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/credential-manager/login",
            get(login_page).post(login_continue),
        )
        .route(
            "/credential-manager/redirect/{sub}/{rg}/{svc}",
            get(callback),
        )
        .route(
            "/gateway/subscriptions/{sub}/resourceGroups/{rg}/service/{svc}/{*rest}",
            any(gateway),
        )
        .with_state(gw)
}

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">{body}</body></html>"
    );
    let mut r = Html(html).into_response();
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn authorize_redirect(cm: &Credentials, state: &str, v: &Value) -> Response {
    let provider = match cm
        .store
        .cred_get(v["provider"].as_str().unwrap_or(""))
        .await
    {
        Ok(Some(p)) => p,
        _ => {
            return page(
                "Not found",
                "<h1>The credential provider no longer exists.</h1>",
            );
        }
    };
    let Some(p) =
        Provider::from_properties(&serde_json::from_str(&provider.properties).unwrap_or(json!({})))
    else {
        return page("Error", "<h1>The provider's settings are unreadable.</h1>");
    };
    let challenge = cloister_crypto::pkce_s256(v["verifier"].as_str().unwrap_or(""));
    let redirect_uri = cm.redirect_url(v["instance"].as_str().unwrap_or(""));
    let mut url = url::Url::parse(&p.authorization_url).expect("validated on write");
    {
        let mut qp = url.query_pairs_mut();
        qp.append_pair("response_type", "code")
            .append_pair("client_id", &p.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if !p.scopes.is_empty() {
            qp.append_pair("scope", &p.scopes);
        }
        for (k, val) in &p.extra {
            if let Some(s) = val.as_str()
                && k.starts_with("authorize.")
            {
                qp.append_pair(&k["authorize.".len()..], s);
            }
        }
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(h) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    r
}

/// The login link: the anti-phishing page, unless its consent code was confirmed.
async fn login_page(State(gw): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let cm = &gw.cm;
    let state = q.get("state").cloned().unwrap_or_default();
    let Some((_, v)) = pending_login(cm, &state).await else {
        return (StatusCode::BAD_REQUEST, page("Link expired", "<h1>This login link is not valid or has expired.</h1><p>Ask the application for a new one.</p>")).into_response();
    };
    if v["confirmed"] == true {
        return authorize_redirect(cm, &state, &v).await;
    }
    let provider = cm
        .store
        .cred_get(v["provider"].as_str().unwrap_or(""))
        .await
        .ok()
        .flatten();
    let (pname, host) = provider
        .and_then(|p| {
            let pp = Provider::from_properties(&serde_json::from_str(&p.properties).ok()?)?;
            let host = url::Url::parse(&pp.authorization_url)
                .ok()?
                .host_str()?
                .to_string();
            Some((pp.display_name, host))
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Connect {} to Cloister?</h1>\
<p>An application asked to connect <b>{}</b> at <b>{}</b> to the connection <code>{}</code>. \
Tokens you grant will be stored by Cloister and used by that application.</p>\
<p><b>Only continue if you started this yourself.</b> If someone sent you this link, close this page.</p>\
<p>Consent code: <b id=\"consent-code\">{}</b> (give it to the application if it asks; it then skips this page).</p>\
<form method=\"post\" action=\"/credential-manager/login\"><input type=\"hidden\" name=\"state\" value=\"{}\">\
<button type=\"submit\">Continue to {}</button></form>",
        esc(&pname),
        esc(&pname),
        esc(&host),
        esc(v["connection"].as_str().unwrap_or("")),
        esc(v["consentCode"].as_str().unwrap_or("")),
        esc(&state),
        esc(&host)
    );
    page("Confirm the connection", &body)
}

async fn login_continue(State(gw): St, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let state = form.get("state").cloned().unwrap_or_default();
    match pending_login(&gw.cm, &state).await {
        Some((_, v)) => authorize_redirect(&gw.cm, &state, &v).await,
        None => (
            StatusCode::BAD_REQUEST,
            page(
                "Link expired",
                "<h1>This login link is not valid or has expired.</h1>",
            ),
        )
            .into_response(),
    }
}

fn back(redirect: &str, params: &[(&str, &str)]) -> Response {
    let mut u = match url::Url::parse(redirect) {
        Ok(u) => u,
        Err(_) => return page("Done", "<h1>Done.</h1>"),
    };
    {
        let mut qp = u.query_pairs_mut();
        for (k, v) in params {
            qp.append_pair(k, v);
        }
    }
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(h) = HeaderValue::from_str(u.as_str()) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    r
}

/// The consent callback: one-time `state`, code redeemed with the PKCE verifier, tokens
/// sealed and stored, the connection Connected, then back to `postLoginRedirectUrl`.
async fn callback(
    State(gw): St,
    Path((sub, rg, svc)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let cm = &gw.cm;
    let state = q.get("state").cloned().unwrap_or_default();
    let login = match cm.store.login_take(&state_hash(cm, &state)).await {
        Ok(Some(l)) if l.expires_at >= now_secs() => l,
        _ => {
            return (StatusCode::BAD_REQUEST, page("Invalid state", "<h1>This sign-in response does not match a pending login (it expired or was already used).</h1>")).into_response();
        }
    };
    let Some(v) = unseal(cm, &login.sealed) else {
        return (
            StatusCode::BAD_REQUEST,
            page("Invalid state", "<h1>The login could not be read.</h1>"),
        )
            .into_response();
    };
    let redirect = v["redirect"].as_str().unwrap_or("").to_string();
    let conn_id = v["connection"].as_str().unwrap_or("").to_string();
    let instance = v["instance"].as_str().unwrap_or("").to_string();
    let expected_instance = format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ApiManagement/service/{svc}"
    );
    if !instance.eq_ignore_ascii_case(&expected_instance) {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Invalid state",
                "<h1>This sign-in response belongs to another instance.</h1>",
            ),
        )
            .into_response();
    }
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").cloned().unwrap_or_default();
        let msg = format!("The identity provider answered {err}: {desc}");
        cm.set_status(&conn_id, "Error", Some(("ConsentFailed", &msg)))
            .await;
        return back(&redirect, &[("status", "error"), ("error", err)]);
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        cm.set_status(
            &conn_id,
            "Error",
            Some((
                "ConsentFailed",
                "The identity provider sent no authorization code.",
            )),
        )
        .await;
        return back(&redirect, &[("status", "error"), ("error", "missing_code")]);
    };
    let (Ok(Some(provider)), Ok(Some(conn))) = (
        cm.store
            .cred_get(v["provider"].as_str().unwrap_or(""))
            .await,
        cm.store.cred_get(&conn_id).await,
    ) else {
        return back(
            &redirect,
            &[("status", "error"), ("error", "connection_deleted")],
        );
    };
    // RFC 9207: if the provider names itself, it must be the one we sent the user to.
    let conn_props: Value = serde_json::from_str(&conn.properties).unwrap_or(json!({}));
    let Some(cref) = conn_ref(&instance.to_lowercase(), &provider, &conn.id, &conn_props) else {
        return back(
            &redirect,
            &[("status", "error"), ("error", "provider_unreadable")],
        );
    };
    if let Some(iss) = q.get("iss") {
        let auth_origin = url::Url::parse(&cref.provider.authorization_url)
            .ok()
            .map(|u| u.origin().ascii_serialization());
        let iss_origin = url::Url::parse(iss)
            .ok()
            .map(|u| u.origin().ascii_serialization());
        if auth_origin != iss_origin {
            let msg = format!(
                "The sign-in response came from '{iss}', not from the provider's authorization server."
            );
            cm.set_status(&conn_id, "Error", Some(("ConsentFailed", &msg)))
                .await;
            return back(
                &redirect,
                &[("status", "error"), ("error", "issuer_mismatch")],
            );
        }
    }
    let redirect_uri = cm.redirect_url(&instance);
    match cm
        .runtime
        .redeem_code(
            &cref,
            code,
            v["verifier"].as_str().unwrap_or(""),
            &redirect_uri,
        )
        .await
    {
        Ok(()) => {
            cm.set_status(&conn_id, "Connected", None).await;
            back(&redirect, &[("status", "success")])
        }
        Err(e) => {
            let code = match &e {
                RuntimeError::NotConnected { code, .. } => code.clone(),
                RuntimeError::ClientSecret { .. } => "ClientSecretInvalid".into(),
                _ => "ConsentFailed".into(),
            };
            cm.set_status(&conn_id, "Error", Some((&code, &e.to_string())))
                .await;
            back(&redirect, &[("status", "error"), ("error", &code)])
        }
    }
}

/// A gateway error in ARM's shape.
fn gw_err(status: u16, code: &str, message: impl Into<String>) -> Response {
    ArmError::new(status, code, message).into_response()
}

struct CallerId {
    oid: String,
    tid: String,
    appid: String,
}

fn caller(
    gw: &Gateway,
    headers: &HeaderMap,
    identity_type: &str,
) -> Result<CallerId, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string())
        .ok_or_else(|| Box::new(gw_err(401, "Unauthorized", "A bearer token is required: the caller's identity is checked against the connection's access policies.")))?;
    let auds: Vec<String> = if identity_type == "jwt" {
        vec![
            AUTHORIZATION_MANAGER.to_string(),
            format!("{AUTHORIZATION_MANAGER}/"),
        ]
    } else {
        let mut a = gw.management_audiences.clone();
        a.push(AUTHORIZATION_MANAGER.to_string());
        a
    };
    let claims = gw.id.validate(&token, &auds).map_err(|e| {
        gw_err(
            401,
            "InvalidAuthenticationToken",
            format!("The token is invalid: {e}."),
        )
    })?;
    Ok(CallerId {
        oid: claims.oid,
        tid: claims.tid,
        appid: claims.app_id,
    })
}

async fn gateway(
    State(gw): St,
    Path((sub, rg, svc, rest)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    let instance = format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ApiManagement/service/{svc}"
    );
    if !gw.cm.instance_exists(&instance).await {
        return gw_err(
            404,
            "NotFound",
            format!("The service instance '{svc}' was not found."),
        );
    }
    if rest.eq_ignore_ascii_case("authorizationContext") && req.method() == Method::POST {
        return authorization_context(&gw, &instance, req).await;
    }
    proxy(&gw, &instance, &rest, req).await
}

/// `POST {gatewayUrl}/authorizationContext?provider-id=&authorization-id=&identity-type=&ignore-error=`
async fn authorization_context(gw: &Gateway, instance: &str, req: Request) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        q.iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let provider_id = get("provider-id");
    let authorization_id = get("authorization-id");
    let identity_type = match get("identity-type").to_ascii_lowercase().as_str() {
        "" | "managed" => "managed",
        "jwt" => "jwt",
        other => {
            return gw_err(
                400,
                "BadRequest",
                format!("identity-type must be managed or jwt; got '{other}'."),
            );
        }
    };
    let ignore_error = get("ignore-error").eq_ignore_ascii_case("true");
    if provider_id.is_empty() || authorization_id.is_empty() {
        return gw_err(
            400,
            "BadRequest",
            "provider-id and authorization-id are required.",
        );
    }
    let who = match caller(gw, req.headers(), identity_type) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match context_for(&gw.cm, instance, &provider_id, &authorization_id, &who).await {
        Ok((token, claims)) => (
            StatusCode::OK,
            axum::Json(json!({"AccessToken": token, "Claims": claims})),
        )
            .into_response(),
        Err((status, code, message)) => {
            if status == 403 {
                return gw_err(403, &code, message);
            }
            if ignore_error {
                return (StatusCode::OK, axum::Json(Value::Null)).into_response();
            }
            // As the get-authorization-context policy does with ignore-error=false.
            gw_err(status, &code, message)
        }
    }
}

type CtxErr = (u16, String, String);

async fn context_for(
    cm: &Credentials,
    instance: &str,
    provider_id: &str,
    authorization_id: &str,
    who: &CallerId,
) -> Result<(String, Value), CtxErr> {
    let pid = format!("{instance}/authorizationProviders/{provider_id}");
    let cid = format!("{pid}/authorizations/{authorization_id}");
    let (provider, conn, allowed) = cm
        .lookup(
            &pid,
            &cid,
            who.oid.as_str(),
            who.tid.as_str(),
            who.appid.as_str(),
        )
        .await
        .map_err(|e| (500, "InternalServerError".to_string(), e))?;
    // A connection that does not exist has no access policy naming the caller: the answer is
    // the same 403, word for word, so a caller without access cannot tell which connections
    // exist.
    let (Some(provider), Some(conn), true) = (provider, conn, allowed) else {
        return Err((
            403,
            "AccessDenied".into(),
            format!(
                "The caller (object id {}) is not named by an access policy of connection '{authorization_id}' of provider '{provider_id}', or there is no such connection.",
                who.oid
            ),
        ));
    };
    let props: Value = serde_json::from_str(&conn.properties).unwrap_or(json!({}));
    let cref = conn_ref(&instance.to_lowercase(), &provider, &conn.id, &props).ok_or((
        500,
        "InternalServerError".to_string(),
        "The provider's stored settings are unreadable.".to_string(),
    ))?;
    if let Some(t) = cm.runtime.cached(&cref) {
        return Ok(t);
    }
    if props["status"] != "Connected"
        && props["error"]["code"] == "Unauthenticated"
        && cref.provider.grant == Grant::AuthorizationCode
    {
        return Err((
            500,
            "ConnectionNotConnected".into(),
            format!(
                "Connection '{authorization_id}' is not connected: {}",
                props["error"]["message"]
                    .as_str()
                    .unwrap_or("consent is needed")
            ),
        ));
    }
    cm.runtime.token(&cref).await.map_err(|e| match e {
        RuntimeError::RateLimited { .. } => (429, "TooManyRequests".into(), e.to_string()),
        RuntimeError::NotConnected { code, message } => (500, code, message),
        RuntimeError::ClientSecret { message } => (500, "ClientSecretInvalid".into(), message),
        RuntimeError::Unavailable { message } => (502, "ProviderUnavailable".into(), message),
        RuntimeError::Internal(m) => (500, "InternalServerError".into(), m),
    })
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
];

/// `{gatewayUrl}/{api path}/…` → the API's `serviceUrl/…` with the connection's token.
async fn proxy(gw: &Gateway, instance: &str, rest: &str, req: Request) -> Response {
    let cm = &gw.cm;
    let apis = cm
        .store
        .cred_children(&instance.to_lowercase(), "api")
        .await
        .unwrap_or_default();
    let best = apis
        .iter()
        .filter_map(|a| {
            let p: Value = serde_json::from_str(&a.properties).ok()?;
            let path = p["path"].as_str()?.to_string();
            let hit = rest == path || rest.starts_with(&format!("{path}/"));
            hit.then_some((path, p))
        })
        .max_by_key(|(p, _)| p.len());
    let Some((path, api)) = best else {
        return gw_err(
            404,
            "NotFound",
            format!("No API of this instance serves '/{rest}'."),
        );
    };
    let pol = &api["authorizationPolicy"];
    let identity_type = pol["identityType"].as_str().unwrap_or("managed");
    let who = match caller(gw, req.headers(), identity_type) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (token, _) = match context_for(
        cm,
        instance,
        pol["providerId"].as_str().unwrap_or(""),
        pol["authorizationId"].as_str().unwrap_or(""),
        &who,
    )
    .await
    {
        Ok(t) => t,
        Err((status, code, message)) => return gw_err(status, &code, message),
    };
    let tail = &rest[path.len()..];
    let mut target = format!("{}{}", api["serviceUrl"].as_str().unwrap_or(""), tail);
    if let Some(qs) = req.uri().query() {
        target.push('?');
        target.push_str(qs);
    }
    let method = req.method().clone();
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in req.headers() {
        if !HOP.contains(&k.as_str()) {
            headers.append(k.clone(), v.clone());
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 32 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return gw_err(
                413,
                "RequestEntityTooLarge",
                "The request body is larger than 32 MiB.",
            );
        }
    };
    let resp = cm
        .runtime
        .http()
        .request(method, &target)
        .headers(headers)
        .bearer_auth(token)
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => {
            let mut out = Response::builder().status(r.status().as_u16());
            for (k, v) in r.headers() {
                if !HOP.contains(&k.as_str()) {
                    out = out.header(k, v);
                }
            }
            match r.bytes().await {
                Ok(b) => out.body(Body::from(b)).unwrap_or_else(|_| {
                    gw_err(
                        502,
                        "BadGateway",
                        "The backend's answer could not be relayed.",
                    )
                }),
                Err(e) => gw_err(
                    502,
                    "BadGateway",
                    format!("The backend's answer was cut short: {e}"),
                ),
            }
        }
        Err(e) => gw_err(
            502,
            "BadGateway",
            format!("The backend could not be reached: {e}"),
        ),
    }
}
