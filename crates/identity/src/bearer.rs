//! The caller of an API from its `Authorization: Bearer` header: a token issued by this
//! identity service, validated for signature, issuer, audience and lifetime.

use crate::Identity;
use axum::http::HeaderValue;
use cloister_arm::provider::Caller;
use cloister_core::error::ArmError;

/// The caller of a request, or ARM's 401 (missing header, wrong scheme, invalid token).
pub fn caller(
    id: &Identity,
    authorization: Option<&HeaderValue>,
    audiences: &[String],
) -> Result<Caller, ArmError> {
    let Some(h) = authorization else {
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
    let claims = id
        .validate(token, audiences)
        .map_err(|e| ArmError::unauthenticated(format!("The access token is invalid: {e}.")))?;
    Ok(Caller {
        object_id: claims.oid,
        tenant_id: claims.tid,
        app_id: claims.app_id,
        idtyp: claims.idtyp,
    })
}
