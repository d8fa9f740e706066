//! The error envelopes Cloister speaks on the wire.
//!
//! * [`ArmError`]: Azure Resource Manager's `{"error":{"code","message"}}` body, used by every
//!   management API and by the data planes that follow ARM conventions.
//! * [`AadError`]: Entra ID's OAuth 2.0 error body (`error`, `error_description` starting with
//!   the AADSTS code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`).
//!
//! Both are plain values; the HTTP mapping lives in their `IntoResponse` impls so that a handler
//! can simply return `Result<_, ArmError>`.

use axum_core::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// An error in Azure Resource Manager's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub target: Option<String>,
}

impl ArmError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            target: None,
        }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestContent", message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(401, "InvalidAuthenticationToken", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "AuthorizationFailed", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalServerError", message)
    }
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
    pub fn body(&self) -> serde_json::Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(t) = &self.target {
            e["target"] = json!(t);
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp =
            (status, axum_core::body::Body::from(self.body().to_string())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer authorization_uri=\"\", error=\"invalid_token\""),
            );
        }
        resp
    }
}

/// An OAuth 2.0 error in Entra ID's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AADSTS{code}: {description}")]
pub struct AadError {
    pub status: u16,
    /// The OAuth `error` value (`invalid_request`, `invalid_client`, ...).
    pub error: &'static str,
    /// The AADSTS number.
    pub code: u32,
    pub description: String,
    /// Seconds for a `Retry-After` header (throttling).
    pub retry_after: Option<u64>,
}

impl AadError {
    pub fn new(
        status: u16,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
            retry_after: None,
        }
    }
    pub fn invalid_request(code: u32, description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", code, description)
    }
    pub fn invalid_client(code: u32, description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", code, description)
    }
    pub fn invalid_grant(code: u32, description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", code, description)
    }
    pub fn invalid_scope(code: u32, description: impl Into<String>) -> Self {
        Self::new(400, "invalid_scope", code, description)
    }
    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(500, "server_error", 90033, description)
    }

    /// The JSON body, with fresh trace and correlation ids and the timestamp.
    pub fn body(&self) -> serde_json::Value {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let ts = crate::clock::format_aad_timestamp(crate::clock::now_secs());
        json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
                self.code, self.description, trace_id, correlation_id, ts
            ),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        })
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp =
            (status, axum_core::body::Body::from(self.body().to_string())).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Marks a response that is an upstream's own answer (a session container behind a proxy,
/// say): the server's error-shaping middleware passes it on unchanged instead of rewriting a
/// 4xx/5xx into ARM's shape. Set it as a response extension.
#[derive(Clone, Copy, Debug)]
pub struct Verbatim;
