//! Authentication of management API callers: a bearer token issued by Cloister for one of
//! ARM's audiences (`cloister_identity::bearer`). Authorization is the RBAC engine's job.

use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cloister_core::error::ArmError;
use std::sync::Arc;

/// The authenticated caller of the management API (the ARM framework's caller). A token for
/// Graph is not a token for ARM: only the management audiences are accepted.
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
        cloister_identity::bearer::caller(
            &st.id,
            parts.headers.get(axum::http::header::AUTHORIZATION),
            &st.management_audiences,
        )
        .map(Caller)
    }
}
