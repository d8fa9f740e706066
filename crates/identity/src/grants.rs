//! The token endpoint: `client_credentials`, `authorization_code` (with PKCE) and rotating
//! `refresh_token` grants, on the v2 (`scope=`) and v1 (`resource=`) endpoints, with
//! Entra's response and error shapes.

use crate::Identity;
use crate::directory::ClientAuth;
use crate::resources::{ScopeRequest, parse_scope};
use crate::tokens::Subject;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_core::clock::now_secs;
use cloister_core::error::AadError;
use cloister_store::{Redeem, RefreshTokenRow, StoreError};
use serde_json::{Value, json};
use std::collections::HashMap;

pub const CODE_PURPOSE: &str = "auth-code";
pub const REFRESH_PURPOSE: &str = "refresh-token";

/// A parsed token request.
pub struct TokenRequest {
    pub tenant: String,
    /// The v1 endpoint (`/oauth2/token`): `resource=` and string-valued responses.
    pub v1: bool,
    pub form: HashMap<String, String>,
    /// Credentials from an `Authorization: Basic` header.
    pub basic: Option<(String, String)>,
}

/// Parses a form body; repeated parameters are rejected.
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, AadError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
        AadError::invalid_request(9002313, "Invalid request. Request is malformed or invalid: the body is not a valid application/x-www-form-urlencoded form.")
    })?;
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v).is_some() {
            return Err(AadError::invalid_request(
                9002313,
                format!(
                    "Invalid request. Request is malformed or invalid: the parameter '{k}' appears more than once."
                ),
            ));
        }
    }
    Ok(map)
}

/// Decodes `Authorization: Basic` as RFC 6749 2.3.1 wants (form-urlencoded id and secret).
pub fn parse_basic(value: &str) -> Result<(String, String), AadError> {
    let bad = || {
        AadError::invalid_client(
            9002313,
            "The Authorization header is not valid HTTP Basic credentials.",
        )
    };
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(bad)?;
    let raw = STANDARD.decode(b64.trim()).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = s.split_once(':').ok_or_else(bad)?;
    let dec = |x: &str| {
        url::form_urlencoded::parse(format!("a={x}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Ok((dec(id).ok_or_else(bad)?, dec(secret).ok_or_else(bad)?))
}

fn missing(p: &str) -> AadError {
    AadError::invalid_request(
        900144,
        format!("The request body must contain the following parameter: '{p}'."),
    )
}

impl Identity {
    /// Maps the tenant path segment to a tenant id (`common` and `organizations` resolve to
    /// the home tenant).
    pub async fn resolve_tenant(&self, segment: &str) -> Result<String, AadError> {
        let seg = segment.to_ascii_lowercase();
        if seg == "common" || seg == "organizations" {
            return Ok(self.home_tenant.clone());
        }
        if seg == self.home_tenant || self.tenants.contains_key(&seg) {
            return Ok(seg);
        }
        if cloister_core::is_guid(&seg)
            && let Ok(Some(t)) = self.store.tenant_get(&seg).await
        {
            // Tenants are never deleted, so a positive answer can be remembered.
            self.tenants.insert(t.id.clone(), ());
            return Ok(t.id);
        }
        Err(AadError::invalid_request(
            90002,
            format!(
                "Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ))
    }

    /// Handles one token request and returns the JSON body of a successful response.
    pub async fn token(&self, mut req: TokenRequest) -> Result<Value, AadError> {
        let grant = req
            .form
            .get("grant_type")
            .cloned()
            .ok_or_else(|| missing("grant_type"))?;
        // Client identity: body or Basic header, which must agree.
        let body_id = req.form.get("client_id").cloned();
        let (client_id, auth) = match (req.basic.take(), body_id) {
            (Some((id, _)), Some(b)) if !id.eq_ignore_ascii_case(&b) => {
                return Err(AadError::invalid_client(
                    9002313,
                    "The client_id in the body does not match the one in the Authorization header.",
                ));
            }
            (Some((id, secret)), _) => (id, ClientAuth::Secret(secret)),
            (None, Some(id)) => {
                let auth = if let Some(s) = req.form.get("client_secret") {
                    ClientAuth::Secret(s.clone())
                } else if let Some(a) = req.form.get("client_assertion") {
                    ClientAuth::Assertion {
                        assertion_type: req
                            .form
                            .get("client_assertion_type")
                            .cloned()
                            .unwrap_or_default(),
                        assertion: a.clone(),
                    }
                } else {
                    ClientAuth::None
                };
                (id, auth)
            }
            (None, None) => return Err(missing("client_id")),
        };
        if client_id.len() > 256 {
            return Err(AadError::invalid_request(700016, "client_id is not valid."));
        }
        metrics::counter!("cloister_token_requests_total", "grant" => grant_label(&grant))
            .increment(1);
        match grant.as_str() {
            "client_credentials" => self.client_credentials(&req, &client_id, auth).await,
            "authorization_code" => self.authorization_code(&req, &client_id, auth).await,
            "refresh_token" => self.refresh(&req, &client_id, auth).await,
            other => Err(AadError::new(
                400,
                "unsupported_grant_type",
                70003,
                format!(
                    "The app requested an unsupported grant type '{}'.",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        }
    }

    /// The requested resource: `scope=<resource>/.default` on v2, `resource=` on v1.
    fn requested_resource(
        &self,
        req: &TokenRequest,
        client_credentials: bool,
    ) -> Result<(String, ScopeRequest), AadError> {
        if req.v1 {
            let r = req
                .form
                .get("resource")
                .ok_or_else(|| missing("resource"))?;
            let sr = ScopeRequest {
                resource: Some(r.clone()),
                scopes: vec![".default".into()],
                oidc: vec![],
            };
            return Ok((r.clone(), sr));
        }
        if req.form.contains_key("resource") {
            return Err(AadError::invalid_request(
                901002,
                "The 'resource' request parameter is not supported.",
            ));
        }
        let scope = req.form.get("scope").ok_or_else(|| missing("scope"))?;
        let sr = parse_scope(scope)?;
        let Some(resource) = sr.resource.clone() else {
            return Err(AadError::invalid_scope(
                70011,
                format!(
                    "The provided value for the input parameter 'scope' isn't valid: '{scope}' names no resource."
                ),
            ));
        };
        if client_credentials
            && (sr.scopes.len() != 1 || sr.scopes[0] != ".default" || !sr.oidc.is_empty())
        {
            return Err(AadError::invalid_scope(
                1002012,
                format!(
                    "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        }
        Ok((resource, sr))
    }

    async fn client_credentials(
        &self,
        req: &TokenRequest,
        client_id: &str,
        auth: ClientAuth,
    ) -> Result<Value, AadError> {
        let (resource, _) = self.requested_resource(req, true)?;
        let res = self.resolve_resource(&req.tenant, &resource).await?;
        let (rec, acr) = self
            .authenticate_client(&req.tenant, client_id, auth, false)
            .await?;
        let lifetime = if self.cfg.app_token_max_secs > self.cfg.app_token_min_secs {
            self.cfg.app_token_min_secs
                + rand::random_range(
                    0..=(self.cfg.app_token_max_secs - self.cfg.app_token_min_secs),
                )
        } else {
            self.cfg.app_token_min_secs
        };
        let m = self
            .mint_access(
                &req.tenant,
                &res,
                Subject::App { sp: &rec.sp, acr },
                lifetime,
                &self.roles_for(&rec.sp.id, &res).await,
            )
            .map_err(|e| AadError::server_error(e.to_string()))?;
        let expires_in = m.exp - now_secs();
        if req.v1 {
            Ok(json!({
                "token_type": "Bearer", "expires_in": expires_in.to_string(), "ext_expires_in": expires_in.to_string(),
                "expires_on": m.exp.to_string(), "not_before": m.nbf.to_string(), "resource": resource,
                "access_token": m.token,
            }))
        } else {
            Ok(
                json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": m.token}),
            )
        }
    }

    async fn authorization_code(
        &self,
        req: &TokenRequest,
        client_id: &str,
        auth: ClientAuth,
    ) -> Result<Value, AadError> {
        let code = req.form.get("code").ok_or_else(|| missing("code"))?;
        let redirect_uri = req
            .form
            .get("redirect_uri")
            .ok_or_else(|| missing("redirect_uri"))?;
        let (rec, acr) = self
            .authenticate_client(&req.tenant, client_id, auth, true)
            .await?;
        let hash = self.mk.keyed_hash(CODE_PURPOSE, code.as_bytes());
        let row = match self.store.auth_code_take(&hash).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(AadError::invalid_grant(
                    70000,
                    "The provided authorization code is invalid.",
                ));
            }
            Err(StoreError::Conflict(_)) => {
                return Err(AadError::invalid_grant(
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                ));
            }
            Err(e) => {
                tracing::error!("auth code: {e}");
                return Err(AadError::server_error("The code could not be redeemed."));
            }
        };
        if row.expires_at < now_secs() {
            return Err(AadError::invalid_grant(
                70008,
                "The provided authorization code has expired.",
            ));
        }
        if !row.client_id.eq_ignore_ascii_case(&rec.app.app_id) || row.tenant_id != req.tenant {
            return Err(AadError::invalid_grant(
                70000,
                "The authorization code was issued to another client.",
            ));
        }
        if &row.redirect_uri != redirect_uri {
            return Err(AadError::invalid_grant(
                70000,
                "The redirect_uri does not match the one used in the authorization request.",
            ));
        }
        if !row.code_challenge.is_empty() {
            let verifier = req.form.get("code_verifier").ok_or_else(|| {
                AadError::invalid_grant(501491, "The code_verifier parameter is missing but the authorization request had a code_challenge.")
            })?;
            let (method, challenge) = row
                .code_challenge
                .split_once(':')
                .unwrap_or(("S256", &row.code_challenge));
            let computed = if method == "plain" {
                verifier.clone()
            } else {
                cloister_crypto::pkce_s256(verifier)
            };
            if computed != challenge {
                return Err(AadError::invalid_grant(
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                ));
            }
        }
        let sr = parse_scope(&row.scope)?;
        self.issue_user_tokens(
            &req.tenant,
            &rec.app.app_id,
            acr,
            &row.user_id,
            &sr,
            &row.nonce,
            None,
        )
        .await
    }

    async fn refresh(
        &self,
        req: &TokenRequest,
        client_id: &str,
        auth: ClientAuth,
    ) -> Result<Value, AadError> {
        let rt = req
            .form
            .get("refresh_token")
            .ok_or_else(|| missing("refresh_token"))?;
        let (rec, acr) = self
            .authenticate_client(&req.tenant, client_id, auth, true)
            .await?;
        let hash = self.mk.keyed_hash(REFRESH_PURPOSE, rt.as_bytes());
        let next_token = cloister_crypto::random_token(48);
        let next_hash = self.mk.keyed_hash(REFRESH_PURPOSE, next_token.as_bytes());
        let now = now_secs();
        let lifetime = self.cfg.refresh_token_secs;
        let redeemed = self
            .store
            .refresh_rotate(&hash, |old| RefreshTokenRow {
                token_hash: next_hash.clone(),
                family_id: old.family_id.clone(),
                tenant_id: old.tenant_id.clone(),
                client_id: old.client_id.clone(),
                user_id: old.user_id.clone(),
                scope: old.scope.clone(),
                expires_at: now + lifetime,
                created_at: now,
            })
            .await
            .map_err(|e| {
                tracing::error!("refresh: {e}");
                AadError::server_error("The refresh token could not be redeemed.")
            })?;
        let old = match redeemed {
            Redeem::Ok(r) => r,
            Redeem::Reused => {
                return Err(AadError::invalid_grant(
                    70000,
                    "The refresh token was already used; its whole session has been revoked.",
                ));
            }
            Redeem::Unknown => {
                return Err(AadError::invalid_grant(
                    9002313,
                    "Invalid request. The refresh token is malformed or unknown.",
                ));
            }
        };
        if old.expires_at < now {
            return Err(AadError::invalid_grant(
                700082,
                "The refresh token has expired due to inactivity.",
            ));
        }
        if !old.client_id.eq_ignore_ascii_case(&rec.app.app_id) || old.tenant_id != req.tenant {
            return Err(AadError::invalid_grant(
                70000,
                "The refresh token was issued to another client.",
            ));
        }
        let sr = match req.form.get("scope") {
            Some(s) => {
                let sr = parse_scope(s)?;
                let prev = parse_scope(&old.scope)?;
                if let (Some(r), Some(p)) = (&sr.resource, &prev.resource)
                    && !crate::resources::same_resource(r, p)
                    && !self
                        .store
                        .consent_exists(
                            &old.user_id,
                            &rec.app.app_id,
                            &crate::resources::consent_key(r),
                        )
                        .await
                        .unwrap_or(false)
                {
                    return Err(AadError::new(
                        400,
                        "invalid_grant",
                        65001,
                        format!(
                            "The user or administrator has not consented to use the application with ID '{}' for the resource '{r}'.",
                            rec.app.app_id
                        ),
                    ));
                }
                sr
            }
            None => parse_scope(&old.scope)?,
        };
        self.issue_user_tokens(
            &req.tenant,
            &rec.app.app_id,
            acr,
            &old.user_id,
            &sr,
            "",
            Some((next_token, old.family_id)),
        )
        .await
    }

    /// Access token (+ refresh token, ID token and client_info) for a signed-in user.
    #[allow(clippy::too_many_arguments)]
    async fn issue_user_tokens(
        &self,
        tenant: &str,
        client_id: &str,
        acr: &str,
        user_id: &str,
        sr: &ScopeRequest,
        nonce: &str,
        rotated: Option<(String, String)>,
    ) -> Result<Value, AadError> {
        let user = self
            .store
            .user_get(user_id)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                AadError::invalid_grant(50034, "The user account does not exist in the directory.")
            })?;
        let resource = sr
            .resource
            .clone()
            .unwrap_or_else(|| "https://graph.microsoft.com".into());
        let res = self.resolve_resource(tenant, &resource).await?;
        let scp: Vec<String> = sr
            .scopes
            .iter()
            .map(|s| {
                if s == ".default" {
                    "user_impersonation".to_string()
                } else {
                    s.clone()
                }
            })
            .collect();
        let roles = self.roles_for(&user.id, &res).await;
        let m = self
            .mint_access(
                tenant,
                &res,
                Subject::User {
                    user: &user,
                    client_id,
                    scp: scp.join(" "),
                    acr,
                },
                self.cfg.user_token_secs,
                &roles,
            )
            .map_err(|e| AadError::server_error(e.to_string()))?;
        let expires_in = m.exp - now_secs();
        let mut scope_out: Vec<String> = sr
            .scopes
            .iter()
            .map(|s| format!("{}/{}", resource.trim_end_matches('/'), s))
            .collect();
        scope_out.extend(
            sr.oidc
                .iter()
                .filter(|o| o.as_str() != "offline_access")
                .cloned(),
        );
        let mut body = json!({
            "token_type": "Bearer",
            "scope": scope_out.join(" "),
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": m.token,
            "client_info": Identity::client_info(&user.id, tenant),
        });
        let wants_refresh = sr.oidc.iter().any(|o| o == "offline_access") || rotated.is_some();
        if wants_refresh {
            let token = match rotated {
                Some((t, _)) => t,
                None => {
                    let t = cloister_crypto::random_token(48);
                    let now = now_secs();
                    self.store
                        .refresh_insert(&RefreshTokenRow {
                            token_hash: self.mk.keyed_hash(REFRESH_PURPOSE, t.as_bytes()),
                            family_id: cloister_core::new_guid(),
                            tenant_id: tenant.to_string(),
                            client_id: client_id.to_string(),
                            user_id: user.id.clone(),
                            scope: join_scope(sr),
                            expires_at: now + self.cfg.refresh_token_secs,
                            created_at: now,
                        })
                        .await
                        .map_err(|_| AadError::server_error("could not store the refresh token"))?;
                    t
                }
            };
            body["refresh_token"] = json!(token);
        }
        if sr.oidc.iter().any(|o| o == "openid") {
            let id = self
                .mint_id_token(tenant, client_id, &user, nonce)
                .map_err(|e| AadError::server_error(e.to_string()))?;
            body["id_token"] = json!(id);
        }
        Ok(body)
    }
}

/// Re-serializes a parsed scope request.
pub fn join_scope(sr: &ScopeRequest) -> String {
    let mut v: Vec<String> = sr.oidc.clone();
    if let Some(r) = &sr.resource {
        for s in &sr.scopes {
            v.push(format!("{}/{}", r.trim_end_matches('/'), s));
        }
    }
    v.join(" ")
}

fn grant_label(g: &str) -> &'static str {
    match g {
        "client_credentials" => "client_credentials",
        "authorization_code" => "authorization_code",
        "refresh_token" => "refresh_token",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicate_params_rejected() {
        let e = parse_form(b"a=1&a=2").unwrap_err();
        assert_eq!(e.code, 9002313);
    }
    #[test]
    fn basic_decodes_urlencoded() {
        let h = format!("Basic {}", STANDARD.encode("my%20id:s%3Acret"));
        assert_eq!(
            parse_basic(&h).unwrap(),
            ("my id".to_string(), "s:cret".to_string())
        );
    }
    proptest! {
        #[test]
        fn form_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_form(&b);
        }
        #[test]
        fn basic_never_panics(s in ".{0,200}") {
            let _ = parse_basic(&s);
        }
    }
}
