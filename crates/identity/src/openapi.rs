//! The identity service's part of the OpenAPI document: the token service, OpenID Connect
//! discovery, the managed-identity endpoints it serves ([`crate::api`]), and the description
//! of the resource type its provider registers ([`crate::arm`]).

use cloister_arm::openapi::{ErrorShape, Op};
use cloister_arm::registry::{ProviderSpec, TypeDoc};
use serde_json::{Value, json};

/// The operations of [`crate::api::router`], of the Graph-shaped directory
/// ([`crate::graph`]) and of the `Cloister.Identity` / `Cloister.Directory` endpoints
/// ([`crate::arm`]).
pub fn ops() -> Vec<Op> {
    let mut v = api_ops();
    v.extend(directory_ops());
    v
}

fn directory_ops() -> Vec<Op> {
    let graph = |method: &str, path: &str, summary: &str| {
        Op::new(method, path, "Directory", summary)
            .errors(ErrorShape::Arm)
            .auth()
    };
    vec![
        Op::arm("post", "/providers/Cloister.Identity/bindings", "Cloister", "Bind a user-assigned identity for `cloister run` (needs …/assign/action on it); returns IDENTITY_ENDPOINT and IDENTITY_HEADER"),
        Op::arm("delete", "/providers/Cloister.Identity/bindings/current", "Cloister", "End the `cloister run` binding named by X-IDENTITY-HEADER (a session pool's binding answers 403)").no_auth(),
        Op::arm("get", "/providers/Cloister.Identity/signingKeys", "Cloister", "List signing keys and their states"),
        Op::arm("post", "/providers/Cloister.Identity/signingKeys/rotate", "Cloister", "Rotate now: the published next key starts signing"),
        Op::arm("post", "/providers/Cloister.Directory/tenants", "Cloister", "Create a tenant with its own admin application"),
        Op::arm("get", "/providers/Cloister.Directory/tenants", "Cloister", "List tenants"),
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
    ]
}

fn api_ops() -> Vec<Op> {
    let token = |path: &str, summary: &str| {
        Op::new("post", path, "Token service", summary)
            .errors(ErrorShape::Aad)
            .form_body("TokenRequest")
            .response("TokenResponse")
    };
    let discovery = |path: &str, summary: &str| {
        Op::new("get", path, "Discovery", summary).errors(ErrorShape::Aad)
    };
    vec![
        token(
            "/{tenant}/oauth2/v2.0/token",
            "Token endpoint (client_credentials, authorization_code, refresh_token); scope=<resource>/.default",
        ),
        token(
            "/{tenant}/oauth2/token",
            "v1 token endpoint (resource=); string-valued responses",
        ),
        Op::new(
            "get",
            "/{tenant}/oauth2/v2.0/authorize",
            "Token service",
            "Sign-in page of the authorization-code flow (PKCE)",
        ),
        Op::new(
            "post",
            "/{tenant}/oauth2/v2.0/authorize",
            "Token service",
            "Sign-in and consent form posts; redirects with a code",
        ),
        discovery(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            "OpenID Connect discovery (v2)",
        ),
        discovery(
            "/{tenant}/.well-known/openid-configuration",
            "OpenID Connect discovery (v1)",
        ),
        discovery(
            "/{tenant}/discovery/v2.0/keys",
            "JWKS: active, next and retired signing keys (kid = x5t)",
        ),
        discovery("/{tenant}/discovery/keys", "JWKS (v1 path)"),
        Op::new(
            "get",
            "/common/discovery/instance",
            "Discovery",
            "MSAL instance discovery",
        ),
        Op::new(
            "get",
            "/metadata/identity/oauth2/token",
            "Managed identity",
            "IMDS-compatible token endpoint (Metadata: true; api-version 2018-02-01 or 2019-08-01; client_id | object_id | msi_res_id)",
        )
        .errors(ErrorShape::Imds)
        .response("TokenResponse"),
        Op::new(
            "get",
            "/msi/token",
            "Managed identity",
            "App Service style endpoint (X-IDENTITY-HEADER, api-version 2019-08-01)",
        )
        .errors(ErrorShape::AppService)
        .response("TokenResponse"),
    ]
}

/// The token request and response bodies.
pub fn schemas() -> Vec<(String, Value)> {
    vec![
        (
            "TokenRequest".into(),
            json!({"type": "object", "properties": {"grant_type": {"type": "string"}, "client_id": {"type": "string"}, "client_secret": {"type": "string"}, "client_assertion": {"type": "string"}, "client_assertion_type": {"type": "string"}, "scope": {"type": "string"}, "resource": {"type": "string"}, "code": {"type": "string"}, "redirect_uri": {"type": "string"}, "code_verifier": {"type": "string"}, "refresh_token": {"type": "string"}}}),
        ),
        (
            "TokenResponse".into(),
            json!({"type": "object", "properties": {"token_type": {"type": "string"}, "expires_in": {"type": ["integer", "string"]}, "ext_expires_in": {"type": ["integer", "string"]}, "expires_on": {"type": ["integer", "string"]}, "access_token": {"type": "string"}, "refresh_token": {"type": "string"}, "id_token": {"type": "string"}, "client_info": {"type": "string"}, "scope": {"type": "string"}, "resource": {"type": "string"}, "client_id": {"type": "string"}}}),
        ),
    ]
}

/// Describes the types of [`crate::arm::arm_provider`].
pub fn describe(p: ProviderSpec) -> ProviderSpec {
    p.describe(
        "userAssignedIdentities",
        TypeDoc::new()
            .noun("user-assigned identity")
            .tag("Managed identity")
            .summary(
                "put",
                "Create or update a user-assigned identity: a managed identity with its own service principal (properties.principalId, clientId, tenantId)",
            )
            .summary(
                "delete",
                "Delete a user-assigned identity, its service principal and its role assignments",
            )
            .properties(json!({"type": "object", "properties": {
                "principalId": {"type": "string", "readOnly": true},
                "clientId": {"type": "string", "readOnly": true},
                "tenantId": {"type": "string", "readOnly": true},
            }})),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_registered_type_is_described() {
        let p = super::describe(crate::arm::arm_provider());
        for t in &p.types {
            assert!(t.doc.noun.is_some(), "{} has no description", t.path);
        }
    }
}
