//! The credential manager's resource types, as registered with the ARM framework (the
//! providers that serve them are in [`crate::arm`]).

use cloister_arm::registry::ProviderSpec;

/// `Microsoft.ApiManagement/service` and the credential manager's children of it
/// (authorization providers, their authorizations with the consent actions, access
/// policies, and the gateway's APIs).
pub fn arm_provider() -> ProviderSpec {
    crate::arm::api_management_spec()
}
