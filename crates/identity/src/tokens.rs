//! Minting access and ID tokens, and validating Cloister's own tokens for its APIs.

use crate::Identity;
use crate::resources::{ResolvedResource, TokenVersion};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloister_core::clock::now_secs;
use cloister_store::{ServicePrincipal, User};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Who a token is about.
pub enum Subject<'a> {
    /// An application's service principal; `acr` is `1` (secret) or `2` (certificate).
    App {
        sp: &'a ServicePrincipal,
        acr: &'a str,
    },
    ManagedIdentity {
        sp: &'a ServicePrincipal,
    },
    User {
        user: &'a User,
        client_id: &'a str,
        scp: String,
        acr: &'a str,
    },
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// The claims Cloister's APIs act on, from a validated token.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Claims {
    pub oid: String,
    pub tid: String,
    pub sub: String,
    pub aud: String,
    /// The client application (`appid` or `azp`).
    pub app_id: String,
    /// `app` or `user`.
    pub idtyp: String,
    pub roles: Vec<String>,
    pub scp: Option<String>,
    pub xms_mirid: Option<String>,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    BadAlgorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token's issue time (iat) is in the future")]
    IssuedInFuture,
    #[error("the token repeats a claim or header field")]
    DuplicateClaim,
    #[error("the token's audience is not accepted by this API")]
    WrongAudience,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token is missing the claim '{0}'")]
    MissingClaim(&'static str),
}

impl Identity {
    /// Signs `claims` with the active key; header carries `kid` and `x5t` (= kid), as Entra's.
    pub fn sign(&self, claims: &Value) -> Result<String, crate::IdentityError> {
        self.keys
            .active()
            .sign_jwt(claims)
            .map_err(|e| crate::IdentityError::Internal(format!("signing: {e}")))
    }

    /// An access token for `subject` to call `resource`, valid `lifetime` seconds.
    pub fn mint_access(
        &self,
        tenant: &str,
        resource: &ResolvedResource,
        subject: Subject<'_>,
        lifetime: i64,
        roles: &[String],
    ) -> Result<Minted, crate::IdentityError> {
        let now = now_secs();
        let (iat, nbf, exp) = (now, now - 300, now + lifetime);
        let v1 = resource.version == TokenVersion::V1;
        let mut c = Map::new();
        c.insert("aud".into(), json!(resource.aud));
        c.insert(
            "iss".into(),
            json!(if v1 {
                self.issuer_v1(tenant)
            } else {
                self.issuer_v2(tenant)
            }),
        );
        c.insert("iat".into(), json!(iat));
        c.insert("nbf".into(), json!(nbf));
        c.insert("exp".into(), json!(exp));
        c.insert("tid".into(), json!(tenant));
        c.insert("uti".into(), json!(cloister_crypto::random_token(16)));
        c.insert("ver".into(), json!(if v1 { "1.0" } else { "2.0" }));
        let (client, acr) = match &subject {
            Subject::App { sp, acr } => {
                c.insert("oid".into(), json!(sp.id));
                c.insert("sub".into(), json!(sp.id));
                c.insert("idtyp".into(), json!("app"));
                (sp.app_id.clone(), *acr)
            }
            Subject::ManagedIdentity { sp } => {
                c.insert("oid".into(), json!(sp.id));
                c.insert("sub".into(), json!(sp.id));
                c.insert("idtyp".into(), json!("app"));
                if let Some(r) = &sp.mi_resource_id {
                    c.insert("xms_mirid".into(), json!(mirid(r)));
                }
                (sp.app_id.clone(), "2")
            }
            Subject::User {
                user,
                client_id,
                scp,
                acr,
            } => {
                c.insert("oid".into(), json!(user.id));
                c.insert("sub".into(), json!(user.id));
                c.insert("idtyp".into(), json!("user"));
                c.insert("scp".into(), json!(scp));
                c.insert("name".into(), json!(user.display_name));
                c.insert(
                    if v1 { "upn" } else { "preferred_username" }.into(),
                    json!(user.upn),
                );
                (client_id.to_string(), *acr)
            }
        };
        if v1 {
            c.insert("appid".into(), json!(client));
            c.insert("appidacr".into(), json!(acr));
            c.insert("idp".into(), json!(self.issuer_v1(tenant)));
        } else {
            c.insert("azp".into(), json!(client));
            c.insert("azpacr".into(), json!(acr));
        }
        if !roles.is_empty() {
            c.insert("roles".into(), json!(roles));
        }
        let token = self.sign(&Value::Object(c))?;
        metrics::counter!("cloister_tokens_issued_total").increment(1);
        Ok(Minted {
            token,
            iat,
            nbf,
            exp,
        })
    }

    /// An OpenID Connect ID token for a user signing in to `client_id`.
    pub fn mint_id_token(
        &self,
        tenant: &str,
        client_id: &str,
        user: &User,
        nonce: &str,
    ) -> Result<String, crate::IdentityError> {
        let now = now_secs();
        let mut c = json!({
            "aud": client_id, "iss": self.issuer_v2(tenant), "iat": now, "nbf": now, "exp": now + 3600,
            "sub": user.id, "oid": user.id, "tid": tenant, "ver": "2.0",
            "name": user.display_name, "preferred_username": user.upn,
        });
        if !nonce.is_empty() {
            c["nonce"] = json!(nonce);
        }
        self.sign(&c)
    }

    /// `client_info` for MSAL: base64url of `{"uid","utid"}`.
    pub fn client_info(user_id: &str, tenant: &str) -> String {
        URL_SAFE_NO_PAD.encode(json!({"uid": user_id, "utid": tenant}).to_string())
    }

    /// Validates a token presented to a Cloister API: signature by a published key (whose
    /// algorithm must match the header's), issuer of the home tenant, one of `audiences`,
    /// and lifetime within the allowed skew.
    pub fn validate(&self, token: &str, audiences: &[String]) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| strict_error(token))?;
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.keys.find(kid).ok_or(TokenError::UnknownKey)?;
        // A token validated before (same audiences) needs no second signature check: its
        // bytes are the cache key, its key is still published (above), and its lifetime is
        // checked again here.
        let cache_key = (audiences.join(" "), token.to_string());
        if let Some(c) = self.validated.get(&cache_key) {
            if c.exp + self.cfg.clock_skew_secs > now_secs() {
                return Ok((*c).clone());
            }
            self.validated.invalidate(&cache_key);
            return Err(TokenError::Expired);
        }
        let claims = self.validate_uncached(token, audiences, &header, &key)?;
        self.validated
            .insert(cache_key, std::sync::Arc::new(claims.clone()));
        Ok(claims)
    }

    fn validate_uncached(
        &self,
        token: &str,
        audiences: &[String],
        header: &jsonwebtoken::Header,
        key: &cloister_crypto::SigningKey,
    ) -> Result<Claims, TokenError> {
        if header.alg != key.jwt_algorithm() {
            return Err(TokenError::BadAlgorithm);
        }
        // serde_json keeps the last of repeated keys; a token that repeats one means two
        // things, so it means nothing.
        crate::strict::check_jwt(token).map_err(|_| strict_error(token))?;
        let mut v = Validation::new(key.jwt_algorithm());
        v.leeway = self.cfg.clock_skew_secs as u64;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss"]);
        let mut auds: Vec<String> = Vec::new();
        for a in audiences {
            let t = a.trim_end_matches('/');
            auds.push(t.to_string());
            auds.push(format!("{t}/"));
        }
        v.set_audience(&auds);
        let tenant = &self.home_tenant;
        v.set_issuer(&[self.issuer_v1(tenant), self.issuer_v2(tenant)]);
        let data =
            jsonwebtoken::decode::<Value>(token, key.decoding_key(), &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm => TokenError::BadAlgorithm,
                    ErrorKind::MissingRequiredClaim(_) => TokenError::Malformed,
                    _ => TokenError::Malformed,
                }
            })?;
        let c = data.claims;
        // jsonwebtoken requires `iat` but does not look at it: a token issued in the future
        // (beyond the clock skew) was not issued by a signer with a sane clock.
        match c.get("iat").and_then(Value::as_f64) {
            Some(iat) if iat <= (now_secs() + self.cfg.clock_skew_secs) as f64 => {}
            Some(_) => return Err(TokenError::IssuedInFuture),
            None => return Err(TokenError::Malformed),
        }
        let get = |k: &'static str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let tid = get("tid").ok_or(TokenError::MissingClaim("tid"))?;
        if &tid != tenant {
            return Err(TokenError::WrongIssuer);
        }
        Ok(Claims {
            oid: get("oid").ok_or(TokenError::MissingClaim("oid"))?,
            sub: get("sub").unwrap_or_default(),
            aud: get("aud").unwrap_or_default(),
            app_id: get("appid").or_else(|| get("azp")).unwrap_or_default(),
            idtyp: get("idtyp").unwrap_or_else(|| "user".into()),
            roles: c
                .get("roles")
                .and_then(|r| r.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            scp: get("scp"),
            xms_mirid: get("xms_mirid"),
            exp: c.get("exp").and_then(|v| v.as_i64()).unwrap_or(0),
            tid,
        })
    }
}

impl Identity {
    /// The values of the app roles `principal` holds on the resource application (the
    /// `roles` claim); empty for first-party resources.
    pub async fn roles_for(&self, principal: &str, res: &ResolvedResource) -> Vec<String> {
        let Some(app_id) = &res.app_id else {
            return vec![];
        };
        let Ok(Some(app)) = self.store.application_get(app_id).await else {
            return vec![];
        };
        let defs: Vec<Value> = serde_json::from_str(&app.app_roles).unwrap_or_default();
        let held = self
            .store
            .app_roles_of(principal, app_id)
            .await
            .unwrap_or_default();
        defs.iter()
            .filter(|d| d.get("isEnabled").and_then(|v| v.as_bool()).unwrap_or(true))
            .filter(|d| {
                d.get("id")
                    .and_then(|v| v.as_str())
                    .is_some_and(|id| held.iter().any(|h| h.eq_ignore_ascii_case(id)))
            })
            .filter_map(|d| d.get("value").and_then(|v| v.as_str()).map(str::to_string))
            .collect()
    }
}

/// Why a token's header or payload does not parse: a repeated key, or anything else.
fn strict_error(token: &str) -> TokenError {
    match crate::strict::check_jwt(token) {
        Err(e) if e.contains("duplicate key") => TokenError::DuplicateClaim,
        _ => TokenError::Malformed,
    }
}

/// `xms_mirid` carries the resource id with `resourcegroups` in lower case, as Azure emits it.
pub fn mirid(resource_id: &str) -> String {
    let mut out = String::with_capacity(resource_id.len());
    for (i, seg) in resource_id.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.eq_ignore_ascii_case("resourcegroups") {
            out.push_str("resourcegroups");
        } else {
            out.push_str(seg);
        }
    }
    out
}
