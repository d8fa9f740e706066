//! Authentication of API callers: a bearer token issued by Cloister, validated for
//! signature, issuer, audience and lifetime. Authorization is the `Rbac` evaluator's job.

use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cloister_core::error::ArmError;
use std::sync::Arc;

/// Microsoft Graph's audiences: its URL and its first-party application id.
pub const GRAPH_AUDIENCES: [&str; 2] = [
    "https://graph.microsoft.com",
    "00000003-0000-0000-c000-000000000000",
];

/// The audiences a request to `path` may carry: the management API (ARM) accepts only ARM's
/// audiences (and Cloister's own management endpoint), as Azure Resource Manager refuses a
/// Graph token; the Graph-shaped directory API (`/v1.0/…`) also accepts Graph's. A token for
/// one API is then not a token for the other.
fn audiences(st: &AppState, path: &str) -> Vec<String> {
    let mut a = st.management_audiences.clone();
    if path.starts_with("/v1.0/") || path == "/v1.0" {
        a.extend(GRAPH_AUDIENCES.iter().map(|s| s.to_string()));
    }
    a
}

/// The authenticated caller of a management API (the ARM framework's caller, extracted from
/// the bearer token).
#[derive(Debug, Clone)]
pub struct Caller(pub cloister_arm::provider::Caller);

impl std::ops::Deref for Caller {
    type Target = cloister_arm::provider::Caller;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ArmError;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ArmError::new(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            ));
        };
        let h = h.to_str().unwrap_or("");
        let token = match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(ArmError::new(
                    401,
                    "AuthenticationFailedInvalidHeader",
                    "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                ));
            }
        };
        let claims = st
            .id
            .validate(token, &audiences(st, parts.uri.path()))
            .map_err(|e| ArmError::unauthenticated(format!("The access token is invalid: {e}.")))?;
        Ok(Caller(cloister_arm::provider::Caller {
            object_id: claims.oid,
            tenant_id: claims.tid,
            app_id: claims.app_id,
            idtyp: claims.idtyp,
        }))
    }
}
