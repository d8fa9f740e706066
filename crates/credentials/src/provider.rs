//! The credential manager's resource types, as registered with the ARM framework.

use cloister_arm::registry::{ProviderSpec, TypeSpec};

/// `Microsoft.ApiManagement/service` and the credential manager's children of it
/// (authorization providers, their authorizations, and access policies).
pub fn arm_provider() -> ProviderSpec {
    let any = &["*"];
    ProviderSpec::new("Microsoft.ApiManagement")
        .with_type(TypeSpec::new("service", any).with_identity())
        .with_type(TypeSpec::new("service/authorizationProviders", any))
        .with_type(TypeSpec::new(
            "service/authorizationProviders/authorizations",
            any,
        ))
        .with_type(TypeSpec::new(
            "service/authorizationProviders/authorizations/accessPolicies",
            any,
        ))
}
