//! Azure RBAC over the store: the engine that builds the access evaluator's snapshots from the
//! stored role definitions, assignments, deny assignments, group memberships and the
//! management-group hierarchy ([`engine::Rbac`]), and the `Microsoft.Authorization` resource
//! provider ([`arm::Authorization`]) that reads and writes them.
//!
//! The decisions themselves are `cloister_access`'s (pure); this crate is where they meet
//! storage and the management API.

pub mod arm;
pub mod engine;

pub use engine::Rbac;
