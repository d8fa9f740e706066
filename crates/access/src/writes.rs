//! Who may change access: the authorization decisions of the role definition and role
//! assignment write handlers, as pure functions of a [`Snapshot`] (for the caller's own
//! permissions) and the stored objects the write touches. The server's handlers call these
//! and nothing else to decide, so the property test in `tests/escalation.rs` checks the rule
//! that is actually enforced.
//!
//! The rule (see `docs/security.md`, "Changing access"):
//!
//! * **Role assignment PUT** at scope `S`: `roleAssignments/write` at `S`, and the role must
//!   exist and be assignable at `S` (at or below one of its `assignableScopes`).
//! * **Role assignment DELETE**: `roleAssignments/delete` at the assignment's own scope.
//! * **Role definition PUT** (create or update): `roleDefinitions/write` at every scope in
//!   the old **and** the new `assignableScopes` (as in Azure); no `/`. If the role is
//!   assigned anywhere (its id is used by stored role assignments, even if the definition
//!   itself is gone), every assignment must stay inside the new `assignableScopes`; and
//!   unless the new permissions are covered by the old ones (a narrowing, checked
//!   syntactically: see [`covers`]), the change counts as granting the new permissions at
//!   every scope where the role is assigned, so the caller also needs
//!   `roleAssignments/write` at each of those scopes: it could have made those assignments
//!   itself, with any role.
//! * **Role definition DELETE**: `roleDefinitions/delete` at every assignable scope, and no
//!   assignment may use it.
//!
//! Why this is enough: a principal that holds `roleAssignments/write` at a scope can already
//! grant anything there (Owner is assignable everywhere). Every write allowed above either
//! removes access, or grants access only at or below scopes where the writer holds
//! `roleAssignments/write`. So by induction, whatever a principal can reach through any
//! sequence of its own allowed writes is either what it held already or lies at or below a
//! scope where it could already write role assignments.

use crate::{
    Action, Permission, RoleAssignment, RoleDefinition, RoleType, Snapshot, wildcard_match,
};
use cloister_core::scope::{Scope, ScopeKind};

pub const ROLE_ASSIGNMENTS_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
pub const ROLE_ASSIGNMENTS_DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";
pub const ROLE_DEFINITIONS_WRITE: &str = "Microsoft.Authorization/roleDefinitions/write";
pub const ROLE_DEFINITIONS_DELETE: &str = "Microsoft.Authorization/roleDefinitions/delete";

/// Why a write to access was refused. The server maps these to ARM errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    /// 403 `AuthorizationFailed`: the caller may not do `action` at `scope`.
    Forbidden { action: String, scope: String },
    /// 400 with this code.
    Invalid { code: &'static str, message: String },
    /// 409 with this code.
    Conflict { code: &'static str, message: String },
}

fn allowed(snap: &Snapshot, principal: &str, action: &str, scope: &Scope) -> bool {
    snap.check(principal, &Action::control(action), scope)
        .allowed
}

fn require(
    snap: &Snapshot,
    principal: &str,
    action: &str,
    scope: &Scope,
) -> Result<(), WriteRefusal> {
    if allowed(snap, principal, action, scope) {
        Ok(())
    } else {
        Err(WriteRefusal::Forbidden {
            action: action.to_string(),
            scope: scope.to_string(),
        })
    }
}

/// True if `def` may be assigned at `scope`: `scope` is one of its assignable scopes or
/// lexically below one.
pub fn assignable_at(def: &RoleDefinition, scope: &Scope) -> bool {
    def.assignable_scopes
        .iter()
        .filter_map(|a| Scope::parse(a).ok())
        .any(|a| a.contains(scope))
}

/// True if every action and data action that `new` permits is also permitted by `old`,
/// decided soundly (never "covered" when it is not), pattern by pattern:
///
/// * a pattern without `*` names exactly one operation (ignoring case): covered if `old`
///   permits that operation, evaluated as the evaluator does;
/// * a pattern with `*`: covered if one block of `old` holds it (the same string ignoring
///   case, or `*`) and every `notActions` / `notDataActions` entry of that block is also in
///   the new pattern's own block.
///
/// Pattern-against-pattern inclusion is not attempted: a false "not covered" only means the
/// caller needs authority where the role is assigned.
pub fn covers(old: &[Permission], new: &[Permission]) -> bool {
    let has = |list: &[String], p: &str| list.iter().any(|q| q.eq_ignore_ascii_case(p));
    let permits_exactly = |data: bool, op: &str| {
        old.iter().any(|o| {
            let (grant, not) = if data {
                (&o.data_actions, &o.not_data_actions)
            } else {
                (&o.actions, &o.not_actions)
            };
            grant.iter().any(|q| wildcard_match(q, op))
                && !not.iter().any(|q| wildcard_match(q, op))
        })
    };
    let pattern_covered = |data: bool, p: &str, own_not: &[String]| {
        if !p.contains('*') {
            return permits_exactly(data, p);
        }
        old.iter().any(|o| {
            let (grant, not) = if data {
                (&o.data_actions, &o.not_data_actions)
            } else {
                (&o.actions, &o.not_actions)
            };
            (has(grant, "*") || has(grant, p)) && not.iter().all(|q| has(own_not, q))
        })
    };
    new.iter().all(|n| {
        n.actions
            .iter()
            .all(|p| pattern_covered(false, p, &n.not_actions))
            && n.data_actions
                .iter()
                .all(|p| pattern_covered(true, p, &n.not_data_actions))
    })
}

fn distinct_scopes<'a>(lists: impl IntoIterator<Item = &'a String>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for s in lists {
        if let Ok(sc) = Scope::parse(s)
            && !out.iter().any(|o| o.canonical_str() == sc.canonical_str())
        {
            out.push(sc);
        }
    }
    out
}

/// May `principal` change the role definition `old` (the stored one; `None` if there is
/// none) into `new` (`None` to delete it)? `assignments` are every stored role assignment
/// whose role is this definition's id (read in the same transaction as the write).
///
/// `new` is expected to have passed [`crate::validate_role_definition`]; its id is the
/// definition's id.
pub fn authorize_role_definition_write(
    snap: &Snapshot,
    principal: &str,
    old: Option<&RoleDefinition>,
    new: Option<&RoleDefinition>,
    assignments: &[RoleAssignment],
) -> Result<(), WriteRefusal> {
    if old.is_some_and(|d| d.role_type == RoleType::BuiltInRole) {
        return Err(WriteRefusal::Invalid {
            code: "RoleDefinitionIsBuiltIn",
            message: if new.is_some() {
                "Built-in role definitions cannot be changed."
            } else {
                "Built-in role definitions cannot be deleted."
            }
            .into(),
        });
    }
    let Some(new) = new else {
        // Delete.
        let Some(old) = old else { return Ok(()) };
        for sc in distinct_scopes(&old.assignable_scopes) {
            require(snap, principal, ROLE_DEFINITIONS_DELETE, &sc)?;
        }
        if !assignments.is_empty() {
            return Err(WriteRefusal::Conflict {
                code: "RoleDefinitionHasAssignments",
                message: format!(
                    "The role definition '{}' is used by {} role assignment(s); delete them first.",
                    old.id,
                    assignments.len()
                ),
            });
        }
        return Ok(());
    };
    let mut scopes_new = Vec::with_capacity(new.assignable_scopes.len());
    for a in &new.assignable_scopes {
        let sc = Scope::parse(a).map_err(|e| WriteRefusal::Invalid {
            code: "InvalidAssignableScope",
            message: format!("assignableScopes: {e}"),
        })?;
        if sc.kind() == ScopeKind::Root {
            return Err(WriteRefusal::Invalid {
                code: "InvalidAssignableScope",
                message: "Custom roles cannot have '/' as an assignable scope; use a management group, subscription or resource group.".into(),
            });
        }
        scopes_new.push(sc);
    }
    let old_scopes = old.map(|d| d.assignable_scopes.as_slice()).unwrap_or(&[]);
    for sc in distinct_scopes(old_scopes.iter().chain(&new.assignable_scopes)) {
        require(snap, principal, ROLE_DEFINITIONS_WRITE, &sc)?;
    }
    if assignments.is_empty() {
        return Ok(());
    }
    let assigned: Vec<Scope> = distinct_scopes(assignments.iter().map(|a| &a.scope));
    let outside: Vec<String> = assigned
        .iter()
        .filter(|s| !assignable_at(new, s))
        .map(|s| s.to_string())
        .collect();
    if !outside.is_empty() {
        return Err(WriteRefusal::Conflict {
            code: "RoleDefinitionHasAssignments",
            message: format!(
                "The role definition is assigned at scopes that the new assignableScopes do not include: {}. Delete those role assignments first.",
                outside.join(", ")
            ),
        });
    }
    let narrowing = old.is_some_and(|o| covers(&o.permissions, &new.permissions));
    if !narrowing {
        for sc in &assigned {
            require(snap, principal, ROLE_ASSIGNMENTS_WRITE, sc)?;
        }
    }
    Ok(())
}

/// May `principal` assign `role` (`None`: no such role) at `scope`?
pub fn authorize_role_assignment_write(
    snap: &Snapshot,
    principal: &str,
    scope: &Scope,
    role_id: &str,
    role: Option<&RoleDefinition>,
) -> Result<(), WriteRefusal> {
    require(snap, principal, ROLE_ASSIGNMENTS_WRITE, scope)?;
    let role = role.ok_or_else(|| WriteRefusal::Invalid {
        code: "RoleDefinitionDoesNotExist",
        message: format!("The specified role definition with ID '{role_id}' does not exist."),
    })?;
    if !assignable_at(role, scope) {
        return Err(WriteRefusal::Invalid {
            code: "InvalidRoleAssignmentScope",
            message: format!(
                "The role definition '{}' is not assignable at scope '{scope}'.",
                role.role_name
            ),
        });
    }
    Ok(())
}

/// May `principal` delete `assignment`? (Authorized at the assignment's own scope.)
pub fn authorize_role_assignment_delete(
    snap: &Snapshot,
    principal: &str,
    assignment: &RoleAssignment,
) -> Result<(), WriteRefusal> {
    let sc = Scope::parse(&assignment.scope).map_err(|e| WriteRefusal::Invalid {
        code: "InvalidRoleAssignmentScope",
        message: e.to_string(),
    })?;
    require(snap, principal, ROLE_ASSIGNMENTS_DELETE, &sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(actions: &[&str], not: &[&str]) -> Permission {
        Permission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: not.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn covers_examples() {
        let old = [p(&["A/b/read", "A/c/*"], &["A/c/delete"])];
        assert!(covers(&old, &[p(&["a/B/read"], &[])]));
        assert!(
            covers(&old, &[p(&["A/c/write"], &[])]),
            "literal, permitted by A/c/*"
        );
        assert!(
            !covers(&old, &[p(&["A/c/delete"], &[])]),
            "literal, excluded by notActions"
        );
        assert!(covers(&old, &[p(&["A/c/*"], &["A/c/delete", "A/c/x"])]));
        assert!(
            !covers(&old, &[p(&["A/c/*"], &[])]),
            "dropping a notAction widens"
        );
        assert!(
            !covers(&old, &[p(&["A/c/delete"], &[])]),
            "no pattern inclusion"
        );
        assert!(!covers(&old, &[p(&["*"], &[])]));
        assert!(covers(&[p(&["*"], &[])], &[p(&["anything/x/y", "*"], &[])]));
        assert!(covers(&old, &[p(&[], &[])]), "a block that permits nothing");
        assert!(!covers(&[], &[p(&["A/b/read"], &[])]));
        let data = Permission {
            data_actions: vec!["A/b/action".into()],
            ..Default::default()
        };
        assert!(!covers(&old, std::slice::from_ref(&data)));
        let same = std::slice::from_ref(&data);
        assert!(covers(same, same));
    }
}
