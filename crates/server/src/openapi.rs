//! The OpenAPI 3.1 document of every API Cloister serves, built from one table so that the
//! paths, methods and error shapes stay in one place. `crates/cli/tests/openapi.rs` checks
//! that every documented operation answers.

use serde_json::{Map, Value, json};

struct Op {
    path: &'static str,
    method: &'static str,
    tag: &'static str,
    summary: &'static str,
    /// `arm`, `aad`, `imds`, `appservice`, `graph` or `none`: the error body shape.
    errors: &'static str,
    auth: bool,
}

const fn op(
    path: &'static str,
    method: &'static str,
    tag: &'static str,
    summary: &'static str,
    errors: &'static str,
    auth: bool,
) -> Op {
    Op {
        path,
        method,
        tag,
        summary,
        errors,
        auth,
    }
}

const OPS: &[Op] = &[
    op(
        "/{tenant}/oauth2/v2.0/token",
        "post",
        "Token service",
        "Token endpoint (client_credentials, authorization_code, refresh_token); scope=<resource>/.default",
        "aad",
        false,
    ),
    op(
        "/{tenant}/oauth2/token",
        "post",
        "Token service",
        "v1 token endpoint (resource=); string-valued responses",
        "aad",
        false,
    ),
    op(
        "/{tenant}/oauth2/v2.0/authorize",
        "get",
        "Token service",
        "Sign-in page of the authorization-code flow (PKCE)",
        "none",
        false,
    ),
    op(
        "/{tenant}/oauth2/v2.0/authorize",
        "post",
        "Token service",
        "Sign-in and consent form posts; redirects with a code",
        "none",
        false,
    ),
    op(
        "/{tenant}/v2.0/.well-known/openid-configuration",
        "get",
        "Discovery",
        "OpenID Connect discovery (v2)",
        "aad",
        false,
    ),
    op(
        "/{tenant}/.well-known/openid-configuration",
        "get",
        "Discovery",
        "OpenID Connect discovery (v1)",
        "aad",
        false,
    ),
    op(
        "/{tenant}/discovery/v2.0/keys",
        "get",
        "Discovery",
        "JWKS: active, next and retired signing keys (kid = x5t)",
        "aad",
        false,
    ),
    op(
        "/{tenant}/discovery/keys",
        "get",
        "Discovery",
        "JWKS (v1 path)",
        "aad",
        false,
    ),
    op(
        "/common/discovery/instance",
        "get",
        "Discovery",
        "MSAL instance discovery",
        "none",
        false,
    ),
    op(
        "/metadata/identity/oauth2/token",
        "get",
        "Managed identity",
        "IMDS-compatible token endpoint (Metadata: true; api-version 2018-02-01 or 2019-08-01; client_id | object_id | msi_res_id)",
        "imds",
        false,
    ),
    op(
        "/msi/token",
        "get",
        "Managed identity",
        "App Service style endpoint (X-IDENTITY-HEADER, api-version 2019-08-01)",
        "appservice",
        false,
    ),
    op(
        "/subscriptions",
        "get",
        "ARM",
        "List subscriptions the caller can read",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}",
        "get",
        "ARM",
        "Get a subscription",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups",
        "get",
        "ARM",
        "List resource groups",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
        "put",
        "ARM",
        "Create or update a resource group",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
        "get",
        "ARM",
        "Get a resource group",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
        "delete",
        "ARM",
        "Delete a resource group with its resources, their identities and role assignments",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/{namespace}/{type}/{name}",
        "put",
        "ARM",
        "Create or update a resource (any type; `identity` block for system- and user-assigned identities; Microsoft.ManagedIdentity/userAssignedIdentities creates an identity)",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/{namespace}/{type}/{name}",
        "patch",
        "ARM",
        "Update a resource",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/{namespace}/{type}/{name}",
        "get",
        "ARM",
        "Get a resource",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/{namespace}/{type}/{name}",
        "delete",
        "ARM",
        "Delete a resource, its children and its system-assigned identity",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/{namespace}/{type}",
        "get",
        "ARM",
        "List resources of a type in a resource group",
        "arm",
        true,
    ),
    op(
        "/subscriptions/{subscriptionId}/providers/{namespace}/{type}",
        "get",
        "ARM",
        "List resources of a type in a subscription",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleAssignments",
        "get",
        "RBAC",
        "List role assignments at, above and below a scope ($filter=atScope() | principalId eq '…' | assignedTo('…'))",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
        "put",
        "RBAC",
        "Create a role assignment",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
        "get",
        "RBAC",
        "Get a role assignment",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
        "delete",
        "RBAC",
        "Delete a role assignment",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleDefinitions",
        "get",
        "RBAC",
        "List role definitions ($filter=roleName eq '…' | type eq 'CustomRole')",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
        "put",
        "RBAC",
        "Create or update a custom role",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
        "get",
        "RBAC",
        "Get a role definition",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
        "delete",
        "RBAC",
        "Delete a custom role (refused while assigned)",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/denyAssignments",
        "get",
        "RBAC",
        "List deny assignments",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
        "put",
        "RBAC",
        "Create a deny assignment (Cloister extension)",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
        "get",
        "RBAC",
        "Get a deny assignment",
        "arm",
        true,
    ),
    op(
        "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
        "delete",
        "RBAC",
        "Delete a deny assignment",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups",
        "get",
        "ARM",
        "List management groups",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups/{groupId}",
        "put",
        "ARM",
        "Create or update a management group (properties.details.parent.id)",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups/{groupId}",
        "get",
        "ARM",
        "Get a management group",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups/{groupId}",
        "delete",
        "ARM",
        "Delete an empty management group",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}",
        "put",
        "ARM",
        "Move a subscription under a management group",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}",
        "delete",
        "ARM",
        "Move a subscription back to the root",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Subscription/aliases/{aliasName}",
        "put",
        "ARM",
        "Create a subscription",
        "arm",
        true,
    ),
    op(
        "/providers/Microsoft.Subscription/aliases/{aliasName}",
        "get",
        "ARM",
        "Get a subscription alias",
        "arm",
        true,
    ),
    op(
        "/providers/Cloister.Identity/bindings",
        "post",
        "Cloister",
        "Bind a user-assigned identity for `cloister run` (needs …/assign/action on it); returns IDENTITY_ENDPOINT and IDENTITY_HEADER",
        "arm",
        true,
    ),
    op(
        "/providers/Cloister.Identity/bindings/current",
        "delete",
        "Cloister",
        "End the binding named by X-IDENTITY-HEADER",
        "arm",
        false,
    ),
    op(
        "/providers/Cloister.Identity/signingKeys",
        "get",
        "Cloister",
        "List signing keys and their states",
        "arm",
        true,
    ),
    op(
        "/providers/Cloister.Identity/signingKeys/rotate",
        "post",
        "Cloister",
        "Rotate now: the published next key starts signing",
        "arm",
        true,
    ),
    op(
        "/providers/Cloister.Directory/tenants",
        "post",
        "Cloister",
        "Create a tenant with its own admin application",
        "arm",
        true,
    ),
    op(
        "/providers/Cloister.Directory/tenants",
        "get",
        "Cloister",
        "List tenants",
        "arm",
        true,
    ),
    op(
        "/v1.0/applications",
        "post",
        "Directory",
        "Create an application and its service principal",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications",
        "get",
        "Directory",
        "List applications",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}",
        "get",
        "Directory",
        "Get an application (object id or app id)",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}",
        "patch",
        "Directory",
        "Update an application",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}",
        "delete",
        "Directory",
        "Delete an application, its service principal and its role assignments",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}/addPassword",
        "post",
        "Directory",
        "Add a client secret (returned once)",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}/removePassword",
        "post",
        "Directory",
        "Remove a client secret",
        "graph",
        true,
    ),
    op(
        "/v1.0/applications/{id}/keyCredentials",
        "post",
        "Directory",
        "Add a certificate credential (PEM or base64 DER)",
        "graph",
        true,
    ),
    op(
        "/v1.0/servicePrincipals",
        "get",
        "Directory",
        "List service principals ($filter=appId eq '…')",
        "graph",
        true,
    ),
    op(
        "/v1.0/servicePrincipals/{id}",
        "get",
        "Directory",
        "Get a service principal",
        "graph",
        true,
    ),
    op(
        "/v1.0/users",
        "post",
        "Directory",
        "Create a user",
        "graph",
        true,
    ),
    op(
        "/v1.0/users",
        "get",
        "Directory",
        "List users",
        "graph",
        true,
    ),
    op(
        "/v1.0/users/{id}",
        "get",
        "Directory",
        "Get a user (id or userPrincipalName)",
        "graph",
        true,
    ),
    op(
        "/v1.0/users/{id}",
        "delete",
        "Directory",
        "Delete a user",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups",
        "post",
        "Directory",
        "Create a group",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups",
        "get",
        "Directory",
        "List groups",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups/{id}",
        "get",
        "Directory",
        "Get a group",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups/{id}",
        "delete",
        "Directory",
        "Delete a group",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups/{id}/members",
        "get",
        "Directory",
        "List direct members",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups/{id}/members/$ref",
        "post",
        "Directory",
        "Add a member (@odata.id)",
        "graph",
        true,
    ),
    op(
        "/v1.0/groups/{id}/members/{memberId}/$ref",
        "delete",
        "Directory",
        "Remove a member",
        "graph",
        true,
    ),
    op("/healthz", "get", "Operations", "Liveness", "none", false),
    op(
        "/readyz",
        "get",
        "Operations",
        "Readiness (store reachable)",
        "none",
        false,
    ),
    op(
        "/metrics",
        "get",
        "Operations",
        "Prometheus metrics",
        "none",
        false,
    ),
    op(
        "/openapi.json",
        "get",
        "Operations",
        "This document",
        "none",
        false,
    ),
];

fn error_schema(kind: &str) -> Option<&'static str> {
    match kind {
        "arm" | "graph" => Some("#/components/schemas/ArmError"),
        "aad" => Some("#/components/schemas/AadError"),
        "imds" => Some("#/components/schemas/ImdsError"),
        "appservice" => Some("#/components/schemas/AppServiceError"),
        _ => None,
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for o in OPS {
        let params: Vec<Value> = o
            .path
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(|s| json!({"name": s.trim_matches(|c| c == '{' || c == '}'), "in": "path", "required": true, "schema": {"type": "string"}}))
            .chain((o.errors == "arm").then(|| json!({"name": "api-version", "in": "query", "required": true, "schema": {"type": "string", "example": "2022-04-01"}})))
            .collect();
        let mut responses = json!({"200": {"description": "Success"}});
        if let Some(s) = error_schema(o.errors) {
            responses["4XX"] = json!({"description": "Client error", "content": {"application/json": {"schema": {"$ref": s}}}});
        }
        let mut entry = json!({"tags": [o.tag], "summary": o.summary, "parameters": params, "responses": responses});
        if o.auth {
            entry["security"] = json!([{"bearer": []}]);
        }
        if matches!(o.method, "put" | "patch") || (o.method == "post" && o.errors != "aad") {
            entry["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        if o.errors == "aad" && o.method == "post" {
            entry["requestBody"] = json!({"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}}});
            entry["responses"]["200"] = json!({"description": "Tokens", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}}});
        }
        paths.entry(o.path.to_string()).or_insert_with(|| json!({}))[o.method] = entry;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cloister", "version": env!("CARGO_PKG_VERSION"), "description": "Cloister's identity and access plane: an Entra-compatible token service, managed-identity endpoints, an ARM-shaped management API with Azure RBAC, and a Graph-shaped directory API."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "ArmError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "target": {"type": "string"}}}}},
                "AadError": {"type": "object", "required": ["error", "error_description", "error_codes"], "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}, "error_codes": {"type": "array", "items": {"type": "integer"}}, "timestamp": {"type": "string"}, "trace_id": {"type": "string"}, "correlation_id": {"type": "string"}, "error_uri": {"type": "string"}}},
                "ImdsError": {"type": "object", "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}}},
                "AppServiceError": {"type": "object", "properties": {"statusCode": {"type": "integer"}, "message": {"type": "string"}}},
                "TokenRequest": {"type": "object", "properties": {"grant_type": {"type": "string"}, "client_id": {"type": "string"}, "client_secret": {"type": "string"}, "client_assertion": {"type": "string"}, "client_assertion_type": {"type": "string"}, "scope": {"type": "string"}, "resource": {"type": "string"}, "code": {"type": "string"}, "redirect_uri": {"type": "string"}, "code_verifier": {"type": "string"}, "refresh_token": {"type": "string"}}},
                "TokenResponse": {"type": "object", "properties": {"token_type": {"type": "string"}, "expires_in": {"type": ["integer", "string"]}, "ext_expires_in": {"type": ["integer", "string"]}, "access_token": {"type": "string"}, "refresh_token": {"type": "string"}, "id_token": {"type": "string"}, "client_info": {"type": "string"}, "scope": {"type": "string"}}},
            }
        }
    })
}

/// Every (method, path template) documented, for tests.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|o| (o.method, o.path)).collect()
}
