//! Cloister access: Azure RBAC as pure domain logic (no I/O). Role definitions (the
//! built-ins carry Azure's names, GUIDs and permissions), case-insensitive `*` wildcard
//! action matching, role and deny assignments, custom-role validation, and the evaluator every
//! Cloister service calls with (principal, action, scope).
//!
//! * [`Snapshot`]: an immutable, indexed view of role definitions, assignments, deny
//!   assignments, group memberships (nested, transitive) and the management-group hierarchy.
//!   A check walks only the scope's ancestor chain, so its cost follows the assignments on
//!   that chain, not the total.
//! * [`Engine`]: the current snapshot behind an atomic swap plus a decision cache that a
//!   [`Engine::replace`] invalidates before it returns.
//!
//! Rules, as in Azure: assignments inherit downward; deny assignments win; `notActions`
//! subtract within one permission block but are not a deny (another role may grant);
//! control-plane `actions` never grant data actions and vice versa.
//!
//! ```
//! use cloister_access::*;
//! use cloister_core::scope::Scope;
//! let reader = RoleAssignment {
//!     id: "ra-1".into(),
//!     scope: "/subscriptions/s1".into(),
//!     role_definition_id: builtin::READER.into(),
//!     principal_id: "group-ops".into(),
//!     principal_type: "Group".into(),
//! };
//! let members = vec![("group-ops".to_string(), "alice".to_string())];
//! let engine = Engine::new(Snapshot::build(builtin_roles(), vec![reader], vec![], members, vec![]));
//! let pool = Scope::parse("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.App/sessionPools/p1").unwrap();
//! let d = engine.check("alice", &Action::control("Microsoft.App/sessionPools/read"), &pool);
//! assert!(d.allowed);
//! assert_eq!(d.reason.to_string(), "allowed by role assignment 'ra-1'");
//! assert!(!engine.check("alice", &Action::control("Microsoft.App/sessionPools/write"), &pool).allowed);
//! assert!(!engine.check("alice", &Action::data("Microsoft.App/sessionPools/interpreters/execute/action"), &pool).allowed);
//! ```

pub mod builtin;
mod engine;
mod matching;
pub mod writes;

pub use builtin::{builtin_by_id, builtin_by_name, builtin_roles};
pub use engine::{DEFAULT_CACHE_CAPACITY, Decision, DecisionReason, Engine, Snapshot};
pub use matching::wildcard_match;
pub use writes::{
    WriteRefusal, authorize_role_assignment_delete, authorize_role_assignment_write,
    authorize_role_definition_write,
};

use cloister_core::scope::{Scope, ScopeKind};
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
    /// A control-plane (ARM) operation, e.g. `Microsoft.App/sessionPools/write`; granted only
    /// by `actions`.
    Control(String),
    /// A data-plane operation, e.g. `Microsoft.App/sessionPools/interpreters/execute/action`;
    /// granted only by `dataActions`.
    Data(String),
}

impl Action {
    pub fn control(a: impl Into<String>) -> Action {
        Action::Control(a.into())
    }
    pub fn data(a: impl Into<String>) -> Action {
        Action::Data(a.into())
    }
    /// The operation string.
    pub fn as_str(&self) -> &str {
        match self {
            Action::Control(a) | Action::Data(a) => a,
        }
    }
    pub fn is_data(&self) -> bool {
        matches!(self, Action::Data(_))
    }
}

/// Why a custom role definition was rejected (a human-readable message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRole(pub String);

fn action_problem(a: &str) -> Option<&'static str> {
    if a.is_empty() {
        return Some("is empty");
    }
    if a.len() > 512 {
        return Some("is longer than 512 characters");
    }
    if !a.chars().all(|c| c.is_ascii_graphic()) {
        return Some("must be printable ASCII without whitespace");
    }
    if a.contains("**") {
        return Some("contains '**'");
    }
    if a != "*" && (!a.contains('/') || a.starts_with('/') || a.ends_with('/')) {
        return Some("must look like '{Namespace}/{resourceType}/{operation}' (or be '*')");
    }
    None
}

/// Checks a role definition (a custom role, before it is stored):
///
/// * `roleName`: 1-512 printable characters, not blank;
/// * at least one `permissions` entry, and at least one action or data action overall;
/// * at least one `assignableScopes` entry, each a valid scope; a role with data actions
///   cannot be assignable at a management group (as in Azure);
/// * every (not)action and (not)data action: 1-512 printable ASCII characters without
///   whitespace, `*` or `{Namespace}/…` shaped; a data action cannot be `*` alone (data
///   wildcards must name a provider, e.g. `Microsoft.SignalRService/SignalR/*`).
///
/// ```
/// use cloister_access::*;
/// let mut role = RoleDefinition {
///     id: "b3d5…".into(), role_name: "Widget Reader".into(), description: String::new(),
///     role_type: RoleType::CustomRole,
///     permissions: vec![Permission { actions: vec!["Contoso.Widgets/*/read".into()], ..Default::default() }],
///     assignable_scopes: vec!["/subscriptions/s1".into()],
/// };
/// assert!(validate_role_definition(&role).is_ok());
/// role.permissions[0].actions.push("bad action".into());
/// assert_eq!(
///     validate_role_definition(&role).unwrap_err().to_string(),
///     "actions: 'bad action' must be printable ASCII without whitespace"
/// );
/// ```
pub fn validate_role_definition(d: &RoleDefinition) -> Result<(), InvalidRole> {
    if d.role_name.trim().is_empty()
        || d.role_name.chars().count() > 512
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
    let mut scopes = Vec::with_capacity(d.assignable_scopes.len());
    for s in &d.assignable_scopes {
        let sc = Scope::parse(s).map_err(|e| InvalidRole(format!("assignableScopes: {e}")))?;
        scopes.push(sc);
    }
    let mut grants_any = false;
    let mut has_data = false;
    for p in &d.permissions {
        for (field, list) in [
            ("actions", &p.actions),
            ("notActions", &p.not_actions),
            ("dataActions", &p.data_actions),
            ("notDataActions", &p.not_data_actions),
        ] {
            for a in list {
                if let Some(problem) = action_problem(a) {
                    return Err(InvalidRole(format!(
                        "{field}: '{}' {problem}",
                        a.chars().take(80).collect::<String>()
                    )));
                }
            }
        }
        if p.data_actions.iter().any(|a| a == "*") {
            return Err(InvalidRole(
                "dataActions: '*' alone is not allowed; a data action wildcard must name a resource provider, e.g. 'Microsoft.Storage/*'".into(),
            ));
        }
        grants_any |= !p.actions.is_empty() || !p.data_actions.is_empty();
        has_data |= !p.data_actions.is_empty();
    }
    if !grants_any {
        return Err(InvalidRole(
            "the role grants no actions or data actions".into(),
        ));
    }
    if has_data
        && let Some(mg) = scopes
            .iter()
            .find(|s| s.kind() == ScopeKind::ManagementGroup)
    {
        return Err(InvalidRole(format!(
            "a role with dataActions cannot be assignable at management group scope '{mg}'"
        )));
    }
    Ok(())
}
