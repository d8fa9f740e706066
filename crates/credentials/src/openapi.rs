//! The credential manager's part of the OpenAPI document: the description of the resource
//! types its provider registers ([`crate::provider`]), its gateway and consent pages, its key
//! ring, and the ARM operations it serves that no registration declares yet.

use cloister_arm::openapi::{ErrorShape, Op, RG_PREFIX};
use cloister_arm::registry::{ProviderSpec, TypeDoc};

const TAG: &str = "Credential manager";

fn service() -> String {
    format!("{RG_PREFIX}/providers/Microsoft.ApiManagement/service/{{name}}")
}

/// Describes the types of [`crate::provider::arm_provider`] (and `service/apis`, once it
/// is registered), with the path parameters the credential manager's clients know.
pub fn describe(p: ProviderSpec) -> ProviderSpec {
    p.describe(
        "service",
        TypeDoc::new()
            .noun("API Management service instance")
            .tag(TAG)
            .summary(
                "put",
                "Create or update a service instance (ARM's identity block); returns properties.gatewayUrl",
            ),
    )
    .describe(
        "service/authorizationProviders",
        TypeDoc::new()
            .param("authorizationProviderId")
            .noun("credential provider")
            .tag(TAG)
            .summary(
                "list",
                "List the credential providers of a service instance ($filter, $top, $skip, nextLink)",
            )
            .summary("get", "Get a credential provider (secrets are never returned)")
            .summary(
                "put",
                "Create or update a credential provider (oauth2 / aad / cloister; authorizationCode or clientCredentials grant); ETag, If-Match",
            )
            .summary(
                "delete",
                "Delete a credential provider and its connections (If-Match required)",
            ),
    )
    .describe(
        "service/authorizationProviders/authorizations",
        TypeDoc::new()
            .param("authorizationId")
            .noun("connection")
            .tag(TAG)
            .summary("list", "List the connections of a credential provider")
            .summary(
                "get",
                "Get a connection and its status (Connected, or Error with a code)",
            )
            .summary(
                "put",
                "Create or update a connection (client-credentials connections fetch their first token at once)",
            )
            .summary("delete", "Delete a connection and its tokens (If-Match required)")
            .summary(
                "getLoginLinks",
                "A consent link for an authorization-code connection (postLoginRedirectUrl must be allow-listed)",
            )
            .summary(
                "confirmConsentCode",
                "Confirm the consent code shown on the anti-phishing page",
            ),
    )
    .describe(
        "service/authorizationProviders/authorizations/accessPolicies",
        TypeDoc::new()
            .param("authorizationAccessPolicyId")
            .noun("access policy")
            .tag(TAG)
            .summary("list", "List the access policies of a connection")
            .summary("get", "Get an access policy (tenantId, objectId, appIds)")
            .summary(
                "put",
                "Create or update an access policy: who may get the connection's tokens",
            )
            .summary("delete", "Delete an access policy (If-Match required)"),
    )
    .describe(
        "service/apis",
        TypeDoc::new()
            .param("apiId")
            .noun("proxied API")
            .tag(TAG)
            .summary("list", "List the APIs the gateway proxies")
            .summary(
                "put",
                "Create or update a proxied API (path, serviceUrl, the connection whose token is attached)",
            )
            .summary("delete", "Delete a proxied API (If-Match required)"),
    )
}

/// The credential manager's other operations: the gateway, the consent pages, the key ring,
/// and the ARM operations it answers that its registration does not declare yet (the proxied
/// APIs and the connection actions; once registered, the generated ones take their place, as
/// the registry's operations come first in the document).
pub fn ops() -> Vec<Op> {
    let svc = service();
    let conn = format!(
        "{svc}/authorizationProviders/{{authorizationProviderId}}/authorizations/{{authorizationId}}"
    );
    let apis = format!("{svc}/apis");
    let api = format!("{apis}/{{apiId}}");
    let gw =
        "/gateway/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/service/{name}";
    let arm = |m: &str, p: &str, s: &str| Op::arm(m, p, TAG, s);
    let page = |m: &str, p: &str, s: &str| Op::new(m, p, TAG, s);
    vec![
        arm("get", &apis, "List the APIs the gateway proxies"),
        arm("get", &api, "Get a proxied API"),
        arm(
            "put",
            &api,
            "Create or update a proxied API (path, serviceUrl, the connection whose token is attached)",
        ),
        arm("delete", &api, "Delete a proxied API (If-Match required)"),
        arm(
            "post",
            &format!("{conn}/getLoginLinks"),
            "A consent link for an authorization-code connection (postLoginRedirectUrl must be allow-listed)",
        ),
        arm(
            "post",
            &format!("{conn}/confirmConsentCode"),
            "Confirm the consent code shown on the anti-phishing page",
        ),
        arm(
            "get",
            "/providers/Cloister.Credentials/keys",
            "The credential manager's key ring: its provider, versions and records pending rewrap",
        ),
        arm(
            "post",
            "/providers/Cloister.Credentials/keys/rotate",
            "Add a key-ring version and rewrap every data key under it",
        ),
        Op::new(
            "post",
            &format!("{gw}/authorizationContext"),
            TAG,
            "get-authorization-context: the connection's access token and token-response claims, for a caller an access policy names (provider-id, authorization-id, identity-type=managed|jwt, ignore-error); 403 alike for a connection that does not exist",
        )
        .errors(ErrorShape::Arm)
        .auth(),
        Op::new(
            "get",
            &format!("{gw}/{{apiPath}}"),
            TAG,
            "The gateway's proxy: the request is forwarded to the API whose path prefixes apiPath, with the connection's token attached (any method)",
        )
        .errors(ErrorShape::Arm)
        .auth(),
        page(
            "get",
            "/credential-manager/login",
            "The anti-phishing consent page for a login link",
        ),
        page(
            "post",
            "/credential-manager/login",
            "Continue from the consent page to the provider's authorization endpoint",
        ),
        page(
            "get",
            "/credential-manager/redirect/{subscriptionId}/{resourceGroupName}/{name}",
            "The OAuth redirect URI of a service instance: redeems the code and returns to the post-login redirect",
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_registered_type_is_described() {
        let p = super::describe(crate::provider::arm_provider());
        for t in &p.types {
            assert!(t.doc.noun.is_some(), "{} has no description", t.path);
            assert_eq!(t.doc.tag.as_deref(), Some(super::TAG));
        }
    }
}
