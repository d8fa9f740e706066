//! The sessions service's resource types, as registered with the ARM framework.

use cloister_arm::registry::{ProviderSpec, TypeSpec};

/// `Microsoft.App/sessionPools` (with ARM's identity block). Every dated api-version is
/// answered: clients from `2023-08-01-preview` to `2025-10-02-preview` send pools of the same
/// shape, and the fields of each version are told apart by the pool's own validation.
pub fn arm_provider() -> ProviderSpec {
    ProviderSpec::new("Microsoft.App")
        .with_type(TypeSpec::new("sessionPools", &["*"]).with_identity())
}
