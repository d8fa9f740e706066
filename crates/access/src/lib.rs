//! Azure RBAC, as pure domain logic: role definitions (the built-ins carry Azure's names and
//! ids), case-insensitive wildcard action matching, role and deny assignments, and the
//! evaluator every Cloister service calls with (principal, action, scope).
//!
//! The evaluator indexes assignments by scope, so a decision walks only the scope's ancestor
//! chain and the assignments at those scopes: its cost does not grow with the total number of
//! assignments.
//!
//! ```
//! use cloister_access::*;
//! use cloister_core::scope::Scope;
//! let ra = RoleAssignment { id: "a".into(), scope: "/subscriptions/s".into(),
//!     role_definition_id: "acdd72a7-3385-48ef-bd42-f606fba81ae7".into(), // Reader
//!     principal_id: "p".into(), principal_type: "User".into() };
//! let snap = Snapshot::build(builtin_roles(), vec![ra], vec![], vec![], vec![]);
//! let rg = Scope::parse("/subscriptions/s/resourceGroups/rg").unwrap();
//! assert!(snap.check("p", &Action::Control("Microsoft.Resources/subscriptions/resourceGroups/read".into()), &rg).allowed);
//! assert!(!snap.check("p", &Action::Control("Microsoft.Resources/subscriptions/resourceGroups/write".into()), &rg).allowed);
//! ```

mod builtin;
mod engine;
mod matching;

pub use builtin::{builtin_by_name, builtin_roles};
pub use engine::{Decision, DecisionReason, Engine, Snapshot};
pub use matching::wildcard_match;

use serde::{Deserialize, Serialize};

/// The principal id that means everyone in deny assignments.
pub const EVERYONE: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Permission {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleType {
    BuiltInRole,
    CustomRole,
}

impl std::fmt::Display for RoleType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoleType::BuiltInRole => "BuiltInRole",
            RoleType::CustomRole => "CustomRole",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// The role's GUID (ARM's `name`).
    pub id: String,
    pub role_name: String,
    pub description: String,
    pub role_type: RoleType,
    pub permissions: Vec<Permission>,
    pub assignable_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    pub id: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DenyAssignment {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub permissions: Vec<Permission>,
    /// Principal ids; [`EVERYONE`] means everyone.
    pub principals: Vec<String>,
    pub exclude_principals: Vec<String>,
    pub does_not_apply_to_child_scopes: bool,
}

/// What is being asked: a control-plane action or a data action. Control-plane grants never
/// cover data actions and vice versa.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Control(String),
    Data(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRole(pub String);

fn valid_action(a: &str) -> bool {
    !a.is_empty() && a.len() <= 512 && a.chars().all(|c| c.is_ascii_graphic()) && !a.contains("**")
}

/// Checks a custom role definition before it is stored.
pub fn validate_role_definition(d: &RoleDefinition) -> Result<(), InvalidRole> {
    if d.role_name.trim().is_empty()
        || d.role_name.len() > 512
        || d.role_name.chars().any(char::is_control)
    {
        return Err(InvalidRole(
            "roleName must be 1-512 printable characters".into(),
        ));
    }
    if d.permissions.is_empty() {
        return Err(InvalidRole(
            "permissions must hold at least one entry".into(),
        ));
    }
    if d.assignable_scopes.is_empty() {
        return Err(InvalidRole(
            "assignableScopes must hold at least one scope".into(),
        ));
    }
    for s in &d.assignable_scopes {
        cloister_core::scope::Scope::parse(s).map_err(|e| InvalidRole(e.to_string()))?;
    }
    let mut any = false;
    for p in &d.permissions {
        for a in p
            .actions
            .iter()
            .chain(&p.not_actions)
            .chain(&p.data_actions)
            .chain(&p.not_data_actions)
        {
            if !valid_action(a) {
                return Err(InvalidRole(format!(
                    "'{}' is not a valid action",
                    a.chars().take(80).collect::<String>()
                )));
            }
        }
        any |= !p.actions.is_empty() || !p.data_actions.is_empty();
    }
    if !any {
        return Err(InvalidRole(
            "the role grants no actions or data actions".into(),
        ));
    }
    Ok(())
}
