//! The OpenAPI 3.1 document of every API Cloister serves, composed: the ARM operations of
//! every registered resource type, generated from the provider registry
//! ([`cloister_arm::openapi::registry_ops`]), then each service crate's own surfaces (its
//! `openapi::ops()`), then what the server itself still serves (below). The first operation
//! of a route wins, so a hand-listed operation gives way to the generated one once its type
//! is registered. `crates/cli/tests/openapi.rs` checks that every documented operation
//! answers and that every routed ARM operation is documented.

use cloister_arm::openapi::{self as doc, ErrorShape, Op};
use cloister_arm::registry::Registry;
use serde_json::Value;

/// For tests over the served document: its shape checker, the template matcher and the
/// registry's types.
pub use cloister_arm::openapi::{check, template_matches};
pub use cloister_arm::registry::Level;

/// Every documented operation, in the document's order of precedence.
pub fn ops(reg: &Registry) -> Vec<Op> {
    doc::merge([
        doc::registry_ops(reg),
        cloister_identity::openapi::ops(),
        cloister_sessions::openapi::ops(),
        cloister_credentials::openapi::ops(),
        server_ops(),
    ])
}

/// The document.
pub fn document(reg: &Registry) -> Value {
    let mut schemas = doc::registry_schemas(reg);
    schemas.extend(cloister_identity::openapi::schemas());
    doc::document(&ops(reg), &schemas)
}

fn arm(method: &str, path: &str, tag: &str, summary: &str) -> Op {
    Op::arm(method, path, tag, summary)
}

fn graph(method: &str, path: &str, summary: &str) -> Op {
    Op::new(method, path, "Directory", summary)
        .errors(ErrorShape::Arm)
        .auth()
}

/// What the server serves itself: the operational endpoints, the Graph-shaped directory
/// (`graph.rs`), and the management operations `arm.rs` and `arm_tenant.rs` still route by
/// hand (subscriptions, resource groups, `Microsoft.Authorization`, management groups,
/// subscription aliases, `Cloister.Identity` and `Cloister.Directory`). Each of the latter
/// leaves this list when its provider registers the type.
fn server_ops() -> Vec<Op> {
    vec![
        arm("get", "/subscriptions", "ARM", "List subscriptions the caller can read"),
        arm("get", "/subscriptions/{subscriptionId}", "ARM", "Get a subscription"),
        arm("get", "/subscriptions/{subscriptionId}/resourcegroups", "ARM", "List resource groups"),
        arm("put", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", "ARM", "Create or update a resource group"),
        arm("get", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", "ARM", "Get a resource group"),
        arm("delete", "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}", "ARM", "Delete a resource group with its resources, their identities and role assignments"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/roleAssignments", "RBAC", "List role assignments at, above and below a scope ($filter=atScope() | principalId eq '…' | assignedTo('…'))"),
        arm("put", "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}", "RBAC", "Create a role assignment"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}", "RBAC", "Get a role assignment"),
        arm("delete", "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}", "RBAC", "Delete a role assignment"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/roleDefinitions", "RBAC", "List role definitions ($filter=roleName eq '…' | type eq 'CustomRole')"),
        arm("put", "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}", "RBAC", "Create or update a custom role"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}", "RBAC", "Get a role definition"),
        arm("delete", "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}", "RBAC", "Delete a custom role (refused while assigned)"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/denyAssignments", "RBAC", "List deny assignments"),
        arm("put", "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}", "RBAC", "Create a deny assignment (Cloister extension)"),
        arm("get", "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}", "RBAC", "Get a deny assignment"),
        arm("delete", "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}", "RBAC", "Delete a deny assignment"),
        arm("get", "/providers/Microsoft.Management/managementGroups", "ARM", "List management groups"),
        arm("put", "/providers/Microsoft.Management/managementGroups/{groupId}", "ARM", "Create or update a management group (properties.details.parent.id)"),
        arm("get", "/providers/Microsoft.Management/managementGroups/{groupId}", "ARM", "Get a management group"),
        arm("delete", "/providers/Microsoft.Management/managementGroups/{groupId}", "ARM", "Delete an empty management group"),
        arm("put", "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}", "ARM", "Move a subscription under a management group"),
        arm("delete", "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}", "ARM", "Move a subscription back to the root"),
        arm("put", "/providers/Microsoft.Subscription/aliases/{aliasName}", "ARM", "Create a subscription"),
        arm("get", "/providers/Microsoft.Subscription/aliases/{aliasName}", "ARM", "Get a subscription alias"),
        arm("post", "/providers/Cloister.Identity/bindings", "Cloister", "Bind a user-assigned identity for `cloister run` (needs …/assign/action on it); returns IDENTITY_ENDPOINT and IDENTITY_HEADER"),
        arm("delete", "/providers/Cloister.Identity/bindings/current", "Cloister", "End the `cloister run` binding named by X-IDENTITY-HEADER (a session pool's binding answers 403)").no_auth(),
        arm("get", "/providers/Cloister.Identity/signingKeys", "Cloister", "List signing keys and their states"),
        arm("post", "/providers/Cloister.Identity/signingKeys/rotate", "Cloister", "Rotate now: the published next key starts signing"),
        arm("post", "/providers/Cloister.Directory/tenants", "Cloister", "Create a tenant with its own admin application"),
        arm("get", "/providers/Cloister.Directory/tenants", "Cloister", "List tenants"),
        graph("post", "/v1.0/applications", "Create an application and its service principal"),
        graph("get", "/v1.0/applications", "List applications"),
        graph("get", "/v1.0/applications/{id}", "Get an application (object id or app id)"),
        graph("patch", "/v1.0/applications/{id}", "Update an application"),
        graph("delete", "/v1.0/applications/{id}", "Delete an application, its service principal and its role assignments"),
        graph("post", "/v1.0/applications/{id}/addPassword", "Add a client secret (returned once)"),
        graph("post", "/v1.0/applications/{id}/removePassword", "Remove a client secret"),
        graph("post", "/v1.0/applications/{id}/keyCredentials", "Add a certificate credential (PEM or base64 DER)"),
        graph("get", "/v1.0/servicePrincipals", "List service principals ($filter=appId eq '…')"),
        graph("get", "/v1.0/servicePrincipals/{id}", "Get a service principal"),
        graph("post", "/v1.0/users", "Create a user"),
        graph("get", "/v1.0/users", "List users"),
        graph("get", "/v1.0/users/{id}", "Get a user (id or userPrincipalName)"),
        graph("delete", "/v1.0/users/{id}", "Delete a user"),
        graph("post", "/v1.0/groups", "Create a group"),
        graph("get", "/v1.0/groups", "List groups"),
        graph("get", "/v1.0/groups/{id}", "Get a group"),
        graph("delete", "/v1.0/groups/{id}", "Delete a group"),
        graph("get", "/v1.0/groups/{id}/members", "List direct members"),
        graph("post", "/v1.0/groups/{id}/members/$ref", "Add a member (@odata.id)"),
        graph("delete", "/v1.0/groups/{id}/members/{memberId}/$ref", "Remove a member"),
        Op::new("get", "/healthz", "Operations", "Liveness"),
        Op::new("get", "/readyz", "Operations", "Readiness (store reachable)"),
        Op::new("get", "/metrics", "Operations", "Prometheus metrics"),
        Op::new("get", "/openapi.json", "Operations", "This document"),
    ]
}
