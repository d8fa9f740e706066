//! The identity service's resource types, as registered with the ARM framework.

use cloister_arm::registry::{ProviderSpec, TypeSpec};

/// `Microsoft.ManagedIdentity/userAssignedIdentities`: an identity itself, so it has no
/// `identity` block of its own.
pub fn arm_provider() -> ProviderSpec {
    ProviderSpec::new("Microsoft.ManagedIdentity")
        .with_type(TypeSpec::new("userAssignedIdentities", &["*"]))
}
