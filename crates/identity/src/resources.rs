//! Which resource (audience) a token request is for: parsing the v2 `scope` parameter and
//! the v1 `resource` parameter, and resolving the resource against first-party resources,
//! the management endpoint and registered applications.

use crate::Identity;
use cloister_core::error::AadError;

/// OpenID Connect scopes that name no resource.
pub const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequest {
    /// The resource as requested (`https://dynamicsessions.io`, `api://…`, an app id).
    pub resource: Option<String>,
    /// Scope names on that resource (`.default`, `read`, …).
    pub scopes: Vec<String>,
    /// OIDC scopes asked for (`openid`, `offline_access`, …).
    pub oidc: Vec<String>,
}

const MAX_SCOPE_LEN: usize = 4096;

fn valid_uri_chars(s: &str) -> bool {
    !s.is_empty() && s.len() <= 2048 && s.chars().all(|c| c.is_ascii_graphic())
}

/// Parses a v2 `scope` parameter. All non-OIDC scopes must name one resource (AADSTS700022).
pub fn parse_scope(raw: &str) -> Result<ScopeRequest, AadError> {
    if raw.len() > MAX_SCOPE_LEN {
        return Err(AadError::invalid_scope(
            70011,
            "The provided value for the input parameter 'scope' is too long.",
        ));
    }
    let mut out = ScopeRequest {
        resource: None,
        scopes: vec![],
        oidc: vec![],
    };
    for item in raw.split([' ', '+']).filter(|s| !s.is_empty()) {
        if !valid_uri_chars(item) {
            return Err(AadError::invalid_scope(
                70011,
                "The provided value for the input parameter 'scope' isn't valid: it contains characters that are not allowed.",
            ));
        }
        if OIDC_SCOPES.iter().any(|o| o.eq_ignore_ascii_case(item)) {
            out.oidc.push(item.to_ascii_lowercase());
            continue;
        }
        let (resource, name) = match item.rfind('/') {
            Some(i) if i > 0 && i + 1 < item.len() && !item[..i].ends_with(':') => {
                (&item[..i], &item[i + 1..])
            }
            _ => ("https://graph.microsoft.com", item),
        };
        match &out.resource {
            Some(r) if !same_resource(r, resource) => {
                return Err(AadError::invalid_scope(
                    700022,
                    format!(
                        "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope {raw} is not valid."
                    ),
                ));
            }
            Some(_) => {}
            None => out.resource = Some(resource.to_string()),
        }
        out.scopes.push(name.to_string());
    }
    Ok(out)
}

/// Compares resource URIs the way Entra does: case-insensitive, trailing slash ignored.
pub fn same_resource(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedResource {
    /// The `aud` claim: the resource exactly as requested.
    pub aud: String,
    pub version: TokenVersion,
    /// The registered application, for app resources.
    pub app_id: Option<String>,
}

impl Identity {
    /// Resolves a requested resource (AADSTS500011 if no such resource exists in the tenant).
    pub async fn resolve_resource(
        &self,
        tenant: &str,
        requested: &str,
    ) -> Result<ResolvedResource, AadError> {
        if !valid_uri_chars(requested) {
            return Err(AadError::invalid_request(
                50001,
                "The resource identifier is empty or contains characters that are not allowed.",
            ));
        }
        let first_party = self
            .cfg
            .resources
            .iter()
            .any(|r| same_resource(r, requested))
            || same_resource(&self.management_endpoint, requested)
            || same_resource(&self.authority, requested);
        if first_party {
            return Ok(ResolvedResource {
                aud: requested.to_string(),
                version: TokenVersion::V1,
                app_id: None,
            });
        }
        let candidate = requested
            .strip_prefix("api://")
            .unwrap_or(requested)
            .trim_end_matches('/');
        if cloister_core::is_guid(candidate)
            && let Ok(Some(app)) = self.store.application_get(&candidate.to_lowercase()).await
            && app.tenant_id == tenant
        {
            return Ok(ResolvedResource {
                aud: requested.to_string(),
                version: TokenVersion::V2,
                app_id: Some(app.app_id),
            });
        }
        if let Ok(apps) = self.store.application_list(tenant).await
            && let Some(app) = apps.iter().find(|a| {
                a.identifier_uris
                    .iter()
                    .any(|u| same_resource(u, requested))
            })
        {
            return Ok(ResolvedResource {
                aud: requested.to_string(),
                version: TokenVersion::V2,
                app_id: Some(app.app_id.clone()),
            });
        }
        Err(AadError::new(
            400,
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {requested} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        ))
    }
}

/// The key under which a user's consent to a resource is recorded.
pub fn consent_key(resource: &str) -> String {
    resource.trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_scope() {
        let s = parse_scope("https://dynamicsessions.io/.default").unwrap();
        assert_eq!(s.resource.as_deref(), Some("https://dynamicsessions.io"));
        assert_eq!(s.scopes, vec![".default"]);
    }
    #[test]
    fn azure_cli_double_slash() {
        let s = parse_scope("https://management.azure.com//.default").unwrap();
        assert_eq!(s.resource.as_deref(), Some("https://management.azure.com/"));
    }
    #[test]
    fn oidc_and_resource() {
        let s =
            parse_scope("openid profile offline_access api://abc/read api://abc/write").unwrap();
        assert_eq!(s.oidc.len(), 3);
        assert_eq!(s.scopes, vec!["read", "write"]);
    }
    #[test]
    fn two_resources_rejected() {
        let e = parse_scope("https://a.example/.default https://b.example/.default").unwrap_err();
        assert_eq!(e.code, 700022);
    }
    #[test]
    fn control_chars_rejected() {
        assert!(parse_scope("https://a.example/\u{1}.default").is_err());
    }
    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse_scope(&s);
        }
        #[test]
        fn resource_roundtrip(host in "[a-z]{1,20}", name in "[a-zA-Z.]{1,10}") {
            let raw = format!("https://{host}.example/{name}");
            let s = parse_scope(&raw).unwrap();
            prop_assert_eq!(s.resource.unwrap(), format!("https://{host}.example"));
            prop_assert_eq!(s.scopes, vec![name]);
        }
    }
}
