//! The identity service's HTTP surface, in Entra's and IMDS's wire formats: discovery,
//! JWKS, the token endpoints, the authorize pages, and the managed-identity endpoints.

use crate::Identity;
use crate::authorize::AuthorizeOutcome;
use crate::grants::{TokenRequest, parse_basic, parse_form};
use crate::mi::{Channel, MiError, Selector};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloister_core::error::AadError;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Only the App-Service-style managed-identity endpoint (`/msi/token`): what code inside a
/// session may reach, through the sandbox's identity socket. Session pools' binding secrets
/// work here and nowhere else.
pub fn msi_router(id: Arc<Identity>) -> Router {
    Router::new()
        .route("/msi/token", get(app_service_sandbox))
        .with_state(id)
}

pub fn router(id: Arc<Identity>) -> Router {
    Router::new()
        .route("/common/discovery/instance", get(instance_discovery))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(discovery_v1),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(authorize_get).post(authorize_post),
        )
        .route("/metadata/identity/oauth2/token", get(imds))
        .route("/msi/token", get(app_service_public))
        .with_state(id)
}

fn json_response(status: StatusCode, v: &Value, cache: &'static str) -> Response {
    let mut r = (status, v.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

async fn instance_discovery(
    State(id): State<Arc<Identity>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let host = id.authority.split("://").nth(1).unwrap_or("").to_string();
    let ae = q
        .get("authorization_endpoint")
        .cloned()
        .unwrap_or_else(|| format!("{}/common/oauth2/v2.0/authorize", id.authority));
    json_response(
        StatusCode::OK,
        &json!({
            "tenant_discovery_endpoint": format!("{}/common/v2.0/.well-known/openid-configuration", id.authority),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            "authorization_endpoint": ae,
        }),
        "max-age=86400, private",
    )
}

async fn discovery_v2(State(id): State<Arc<Identity>>, Path(tenant): Path<String>) -> Response {
    discovery(&id, &tenant, true).await
}
async fn discovery_v1(State(id): State<Arc<Identity>>, Path(tenant): Path<String>) -> Response {
    discovery(&id, &tenant, false).await
}

async fn discovery(id: &Identity, seg: &str, v2: bool) -> Response {
    let (tenant, issuer_tid) = match seg.to_ascii_lowercase().as_str() {
        "common" | "organizations" => (seg.to_string(), "{tenantid}".to_string()),
        _ => match id.resolve_tenant(seg).await {
            Ok(t) => (t.clone(), t),
            Err(e) => return e.into_response(),
        },
    };
    let a = &id.authority;
    let (issuer, token, authz, jwks) = if v2 {
        (
            format!("{a}/{issuer_tid}/v2.0"),
            format!("{a}/{tenant}/oauth2/v2.0/token"),
            format!("{a}/{tenant}/oauth2/v2.0/authorize"),
            format!("{a}/{tenant}/discovery/v2.0/keys"),
        )
    } else {
        (
            format!("{a}/{issuer_tid}/"),
            format!("{a}/{tenant}/oauth2/token"),
            format!("{a}/{tenant}/oauth2/v2.0/authorize"),
            format!("{a}/{tenant}/discovery/keys"),
        )
    };
    let alg = id.keys.active().jwt_algorithm();
    json_response(
        StatusCode::OK,
        &json!({
            "token_endpoint": token,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": jwks,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": [format!("{alg:?}")],
            "response_types_supported": ["code"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": false,
            "authorization_endpoint": authz,
            "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "http_logout_supported": false,
            "frontchannel_logout_supported": false,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "preferred_username", "name", "tid", "ver", "oid"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": "cloister",
        }),
        "max-age=86400, private",
    )
}

async fn jwks(State(id): State<Arc<Identity>>, Path(tenant): Path<String>) -> Response {
    if let Err(e) = id.resolve_tenant(&tenant).await {
        return e.into_response();
    }
    let mut r = (StatusCode::OK, id.keys.jwks().as_str().to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600, public"),
    );
    r
}

async fn token_v2(
    State(id): State<Arc<Identity>>,
    Path(t): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(id, t, false, headers, body).await
}
async fn token_v1(
    State(id): State<Arc<Identity>>,
    Path(t): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(id, t, true, headers, body).await
}

async fn token(
    id: Arc<Identity>,
    tenant: String,
    v1: bool,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(AadError::invalid_request(
                900144,
                "The request body must be application/x-www-form-urlencoded.",
            ));
        }
        let tenant = id.resolve_tenant(&tenant).await?;
        let form = parse_form(&body)?;
        let basic = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            Some(h) if h.len() > 6 && h[..6].eq_ignore_ascii_case("basic ") => {
                Some(parse_basic(h)?)
            }
            _ => None,
        };
        id.token(TokenRequest {
            tenant,
            v1,
            form,
            basic,
        })
        .await
    }
    .await;
    match result {
        Ok(v) => json_response(StatusCode::OK, &v, "no-store, no-cache"),
        Err(e) => e.into_response(),
    }
}

async fn authorize_get(
    State(id): State<Arc<Identity>>,
    Path(t): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    outcome(id.authorize(&t, q, false).await)
}

async fn authorize_post(
    State(id): State<Arc<Identity>>,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    // Parameters may come in the query (the original URL) and the form.
    let mut p: HashMap<String, String> = q
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    match parse_form(&body) {
        Ok(f) => p.extend(f),
        Err(e) => {
            return outcome(AuthorizeOutcome::Page(
                400,
                crate::authorize::esc(&e.description),
            ));
        }
    }
    outcome(id.authorize(&t, p, true).await)
}

fn outcome(o: AuthorizeOutcome) -> Response {
    let mut r = match o {
        AuthorizeOutcome::Page(status, html) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Html(html),
        )
            .into_response(),
        AuthorizeOutcome::FormPost(html) => Html(html).into_response(),
        AuthorizeOutcome::Redirect(url) => {
            let mut r = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action *"),
    );
    r
}

// ---- managed identity -------------------------------------------------------------------

const IMDS_VERSIONS: [&str; 8] = [
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-03-11",
    "2019-08-01",
    "2019-11-01",
    "2020-06-01",
    "2021-02-01",
];

fn imds_error(error: &str, description: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
        "no-store",
    )
}

fn selector(q: &HashMap<String, String>, object_keys: &[&str], res_keys: &[&str]) -> Selector {
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| q.get(*k).filter(|v| !v.is_empty()).cloned())
    };
    Selector {
        client_id: pick(&["client_id"]),
        object_id: pick(object_keys),
        resource_id: pick(res_keys),
    }
}

fn mi_error_response(e: MiError, app_service: bool) -> Response {
    let (error, desc) = match &e {
        MiError::IdentityNotFound => (
            "invalid_request".to_string(),
            "Identity not found".to_string(),
        ),
        MiError::BadRequest(m) => ("invalid_request".to_string(), m.clone()),
        MiError::InvalidResource(err, m) => (
            if err == "invalid_resource" {
                err.clone()
            } else {
                "invalid_resource".into()
            },
            m.clone(),
        ),
        MiError::Unavailable(m) => ("invalid_request".to_string(), m.clone()),
    };
    if app_service {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"statusCode": 400, "message": desc, "error": error}),
            "no-store",
        )
    } else {
        imds_error(&error, &desc)
    }
}

/// IMDS-compatible `GET /metadata/identity/oauth2/token`: the host's identities, for local
/// callers only.
async fn imds(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return imds_error("bad_request_102", "Required metadata header not specified");
    }
    if headers.contains_key("x-forwarded-for") {
        return imds_error(
            "bad_request",
            "Requests through a proxy (X-Forwarded-For) are not accepted",
        );
    }
    if !peer.ip().is_loopback() {
        return imds_error(
            "unknown_source",
            "Managed identity tokens are served to local callers only",
        );
    }
    match q.get("api-version") {
        None => {
            return imds_error(
                "invalid_request",
                "Required query variable 'api-version' is missing",
            );
        }
        Some(v) if !IMDS_VERSIONS.contains(&v.as_str()) => {
            return imds_error(
                "invalid_request",
                &format!(
                    "Invalid api-version '{}'",
                    v.chars().take(40).collect::<String>()
                ),
            );
        }
        _ => {}
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return imds_error(
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let set = match id.host_identities().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("host identities: {e}");
            return imds_error("invalid_request", "Identity not found");
        }
    };
    let sp = match set.select(&selector(
        &q,
        &["object_id", "principal_id"],
        &["msi_res_id", "mi_res_id"],
    )) {
        Ok(sp) => sp.clone(),
        Err(e) => return mi_error_response(e, false),
    };
    let bypass = q.get("bypass_cache").is_some_and(|v| v == "true");
    match id.mi_token(&sp, resource, bypass).await {
        Ok(t) => {
            let now = cloister_core::clock::now_secs();
            let mut body = json!({
                "access_token": t.access_token,
                "client_id": t.client_id,
                "expires_in": (t.exp - now).to_string(),
                "expires_on": t.exp.to_string(),
                "ext_expires_in": (t.exp - now).to_string(),
                "not_before": t.nbf.to_string(),
                "refresh_in": (t.refresh_at - now).max(0).to_string(),
                "resource": resource,
                "token_type": "Bearer",
            });
            if let Some(o) = q.get("object_id") {
                body["object_id"] = json!(o);
            }
            if let Some(r) = q.get("msi_res_id") {
                body["msi_res_id"] = json!(r);
            }
            json_response(StatusCode::OK, &body, "no-store")
        }
        Err(e) => mi_error_response(e, false),
    }
}

/// `/msi/token` on the HTTP and HTTPS listeners: `cloister run` bindings only.
async fn app_service_public(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    app_service(id, headers, q, Channel::Public).await
}

/// `/msi/token` on the sandboxes' identity socket.
async fn app_service_sandbox(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    app_service(id, headers, q, Channel::Sandbox).await
}

/// App Service style endpoint (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`, 2019-08-01): the
/// identities of the binding whose secret is presented, if that secret may be used on
/// `channel`.
async fn app_service(
    id: Arc<Identity>,
    headers: HeaderMap,
    q: HashMap<String, String>,
    channel: Channel,
) -> Response {
    let err = |m: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"statusCode": 400, "message": m}),
            "no-store",
        )
    };
    let Some(secret) = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
    else {
        return err("The X-IDENTITY-HEADER header is required");
    };
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return err("api-version must be 2019-08-01");
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return err("Required query variable 'resource' is missing");
    };
    let set = match id.binding_identities(secret, channel).await {
        Ok(Some(s)) => s,
        Ok(None) => return err("The X-IDENTITY-HEADER value is not valid or has expired"),
        Err(e) => {
            tracing::error!("binding lookup: {e}");
            return err("Identity not found");
        }
    };
    let sp = match set.select(&selector(
        &q,
        &["principal_id", "object_id"],
        &["mi_res_id", "msi_res_id"],
    )) {
        Ok(sp) => sp.clone(),
        Err(e) => return mi_error_response(e, true),
    };
    match id.mi_token(&sp, resource, false).await {
        Ok(t) => {
            let now = cloister_core::clock::now_secs();
            Json(json!({
                "access_token": t.access_token,
                "expires_on": t.exp.to_string(),
                "expires_in": (t.exp - now).to_string(),
                "refresh_in": (t.refresh_at - now).max(0).to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": t.client_id,
            }))
            .into_response()
        }
        Err(e) => mi_error_response(e, true),
    }
}
