//! The data plane's error envelope: `{"error":{"code","message","target"}}` with the
//! `x-ms-error-code` header, as Azure's dynamic-sessions API answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct DpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub target: Option<String>,
    pub retry_after: Option<u64>,
}

impl DpError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> DpError {
        DpError {
            status,
            code,
            message: message.into(),
            target: None,
            retry_after: None,
        }
    }
    pub fn target(mut self, t: &str) -> DpError {
        self.target = Some(t.to_string());
        self
    }
    pub fn bad(message: impl Into<String>) -> DpError {
        DpError::new(400, "BadRequest", message)
    }
    pub fn validation(message: impl Into<String>) -> DpError {
        DpError::new(400, "SessionRequestValidationFailed", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> DpError {
        DpError::new(404, code, message)
    }
}

impl IntoResponse for DpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(t) = &self.target {
            err["target"] = json!(t);
        }
        let mut r = (status, json!({ "error": err }).to_string()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        h.insert("x-ms-error-code", HeaderValue::from_static(self.code));
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer authorization_uri=\"\", error=\"invalid_token\", resource_id=\"https://dynamicsessions.io\"",
                ),
            );
        }
        r
    }
}

/// A pool's refusal in the data plane's shape: 429 at the limit, 503 while a session
/// cannot be started or is allocated elsewhere, 404 for a pool being deleted.
pub(crate) fn pool_err(e: crate::pool::PoolError) -> DpError {
    match e {
        crate::pool::PoolError::MaxSessions(_) => {
            let mut d = DpError::new(429, "MaxConcurrentSessionsReached", e.to_string());
            d.retry_after = Some(5);
            d
        }
        crate::pool::PoolError::Start(_) => {
            let mut d = DpError::new(503, "SessionAllocationFailed", e.to_string());
            d.retry_after = Some(1);
            d
        }
        crate::pool::PoolError::Closed => DpError::not_found("SessionPoolNotFound", e.to_string()),
        crate::pool::PoolError::Contended(_) => {
            let mut d = DpError::new(503, "SessionAllocationContended", e.to_string());
            d.retry_after = Some(1);
            d
        }
    }
}
