//! Directory operations (applications, credentials, users, groups, managed identities) and
//! client authentication for the token endpoint.

use crate::{Identity, IdentityError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_core::clock::now_secs;
use cloister_core::error::AadError;
use cloister_core::new_guid;
use cloister_crypto::{ClientCertificate, Secret};
use cloister_store::{
    Application, ClientCertificateRow, ClientSecretRow, Group, ServicePrincipal, User,
};
use serde_json::Value;
use std::sync::Arc;

/// Everything needed to authenticate one client, cached briefly.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub app: Application,
    pub sp: ServicePrincipal,
    pub secrets: Vec<ClientSecretRow>,
    pub certs: Vec<ClientCertificateRow>,
}

/// How a client proved who it is.
pub enum ClientAuth {
    Secret(String),
    Assertion {
        assertion_type: String,
        assertion: String,
    },
    None,
}

const SECRET_PURPOSE: &str = "client-secret";

pub fn valid_display_name(s: &str) -> Result<(), IdentityError> {
    if s.trim().is_empty() || s.len() > 256 || s.chars().any(|c| c.is_control()) {
        return Err(IdentityError::Invalid(
            "displayName must be 1-256 printable characters".into(),
        ));
    }
    Ok(())
}

impl Identity {
    // ---- applications --------------------------------------------------------------------
    pub async fn create_application(
        &self,
        tenant: &str,
        display_name: &str,
        redirect_uris: Vec<String>,
        identifier_uris: Vec<String>,
        public_client: bool,
    ) -> Result<(Application, ServicePrincipal), IdentityError> {
        valid_display_name(display_name)?;
        for u in redirect_uris.iter().chain(identifier_uris.iter()) {
            url::Url::parse(u)
                .map_err(|e| IdentityError::Invalid(format!("'{u}' is not a valid URI: {e}")))?;
        }
        let now = now_secs();
        let app = Application {
            app_id: new_guid(),
            object_id: new_guid(),
            tenant_id: tenant.to_string(),
            display_name: display_name.to_string(),
            identifier_uris,
            redirect_uris,
            public_client,
            app_roles: "[]".into(),
            created_at: now,
        };
        let sp = ServicePrincipal {
            id: new_guid(),
            app_id: app.app_id.clone(),
            tenant_id: tenant.to_string(),
            display_name: display_name.to_string(),
            kind: "Application".into(),
            mi_resource_id: None,
            created_at: now,
        };
        self.store.application_create(&app, &sp.id).await?;
        Ok((app, sp))
    }

    /// Adds a client secret; the plaintext is returned once and only its keyed hash is kept.
    pub async fn add_password(
        &self,
        app_id: &str,
        display_name: &str,
        lifetime_secs: i64,
    ) -> Result<(ClientSecretRow, Secret), IdentityError> {
        let app =
            self.store.application_get(app_id).await?.ok_or_else(|| {
                IdentityError::NotFound(format!("application '{app_id}' not found"))
            })?;
        let secret = cloister_crypto::new_client_secret();
        let now = now_secs();
        let row = ClientSecretRow {
            key_id: new_guid(),
            app_id: app.app_id.clone(),
            display_name: display_name.to_string(),
            hint: secret.expose().chars().take(3).collect(),
            secret_hash: self
                .mk
                .keyed_hash(SECRET_PURPOSE, secret.expose().as_bytes()),
            expires_at: now + lifetime_secs.clamp(60, 100 * 365 * 86400),
            created_at: now,
        };
        self.store.secret_add(&row).await?;
        self.invalidate_client(&app.tenant_id, &app.app_id);
        Ok((row, secret))
    }

    /// Adds a certificate credential (PEM, DER or base64 DER of an X.509 certificate).
    pub async fn add_certificate(
        &self,
        app_id: &str,
        display_name: &str,
        cert: &[u8],
    ) -> Result<ClientCertificateRow, IdentityError> {
        let app =
            self.store.application_get(app_id).await?.ok_or_else(|| {
                IdentityError::NotFound(format!("application '{app_id}' not found"))
            })?;
        let parsed = ClientCertificate::from_pem_or_der(cert).map_err(|e| {
            IdentityError::Invalid(format!("the certificate could not be read: {e}"))
        })?;
        let row = ClientCertificateRow {
            key_id: new_guid(),
            app_id: app.app_id.clone(),
            display_name: display_name.to_string(),
            thumbprint_sha1: parsed.x5t_sha1_b64url(),
            cert_der: STANDARD.encode(parsed.der()),
            not_after: parsed.not_after(),
            created_at: now_secs(),
        };
        self.store.cert_add(&row).await?;
        self.invalidate_client(&app.tenant_id, &app.app_id);
        Ok(row)
    }

    pub async fn client_record(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Result<Option<Arc<ClientRecord>>, IdentityError> {
        let key = (tenant.to_string(), client_id.to_lowercase());
        if let Some(r) = self.clients.get(&key) {
            return Ok(Some(r));
        }
        let Some(app) = self.store.application_get(&key.1).await? else {
            return Ok(None);
        };
        if app.tenant_id != tenant {
            return Ok(None);
        }
        let Some(sp) = self.store.sp_by_app_id(&app.app_id).await? else {
            return Ok(None);
        };
        let rec = Arc::new(ClientRecord {
            secrets: self.store.secrets_for_app(&app.app_id).await?,
            certs: self.store.certs_for_app(&app.app_id).await?,
            app,
            sp,
        });
        self.clients.insert(key, rec.clone());
        Ok(Some(rec))
    }

    /// Authenticates a client at the token endpoint. Failures count against the client's
    /// budget; once it is spent the client is locked out for a while (HTTP 429).
    /// Returns the record and the `appidacr` value (`0` public, `1` secret, `2` certificate).
    pub async fn authenticate_client(
        &self,
        tenant: &str,
        client_id: &str,
        auth: ClientAuth,
        allow_public: bool,
    ) -> Result<(Arc<ClientRecord>, &'static str), AadError> {
        let lock_key = format!("{tenant}/{}", client_id.to_lowercase());
        if let Some(wait) = self.is_locked(&lock_key) {
            let mut e = AadError::new(
                429,
                "invalid_client",
                50053,
                format!(
                    "Too many failed authentication attempts for client '{client_id}'. Try again in {wait} seconds."
                ),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        let rec = match self.client_record(tenant, client_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.record_failure(&lock_key);
                return Err(AadError::new(
                    400,
                    "unauthorized_client",
                    700016,
                    format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
                    ),
                ));
            }
            Err(e) => {
                tracing::error!("client lookup: {e}");
                return Err(AadError::server_error("The directory could not be read."));
            }
        };
        let result = match auth {
            ClientAuth::Secret(s) => self.check_secret(&rec, &s),
            ClientAuth::Assertion {
                assertion_type,
                assertion,
            } => self.check_assertion(tenant, &rec, &assertion_type, &assertion),
            ClientAuth::None if allow_public && rec.app.public_client => Ok("0"),
            ClientAuth::None => Err(AadError::invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )),
        };
        match result {
            Ok(acr) => Ok((rec, acr)),
            Err(e) => {
                self.record_failure(&lock_key);
                Err(e)
            }
        }
    }

    fn check_secret(&self, rec: &ClientRecord, presented: &str) -> Result<&'static str, AadError> {
        let now = now_secs();
        for s in &rec.secrets {
            if self
                .mk
                .verify_keyed_hash(SECRET_PURPOSE, presented.as_bytes(), &s.secret_hash)
            {
                if s.expires_at <= now {
                    return Err(AadError::invalid_client(
                        7000222,
                        format!(
                            "The provided client secret keys for app '{}' are expired.",
                            rec.app.app_id
                        ),
                    ));
                }
                return Ok("1");
            }
        }
        Err(AadError::invalid_client(
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '".to_string()
                + &rec.app.app_id
                + "'.",
        ))
    }

    fn check_assertion(
        &self,
        tenant: &str,
        rec: &ClientRecord,
        assertion_type: &str,
        assertion: &str,
    ) -> Result<&'static str, AadError> {
        if assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
            return Err(AadError::invalid_request(
                50027,
                "client_assertion_type must be 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
            ));
        }
        let bad = |m: &str| AadError::invalid_client(50027, format!("Invalid JWT token. {m}"));
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| bad("The client assertion is not a well-formed JWT."))?;
        crate::strict::check_jwt(assertion).map_err(|_| {
            bad("The client assertion's header or payload is not a JSON object with unique keys.")
        })?;
        use jsonwebtoken::Algorithm::*;
        if !matches!(header.alg, RS256 | PS256 | ES256) {
            return Err(bad(
                "The client assertion must be signed with RS256, PS256 or ES256.",
            ));
        }
        let presented: Vec<&str> = header
            .x5t
            .iter()
            .chain(header.x5t_s256.iter())
            .map(String::as_str)
            .collect();
        if presented.is_empty() {
            return Err(bad(
                "The client assertion header has neither 'x5t' nor 'x5t#S256'.",
            ));
        }
        let now = now_secs();
        let cert = rec
            .certs
            .iter()
            .filter_map(|c| {
                let der = STANDARD.decode(&c.cert_der).ok()?;
                ClientCertificate::from_pem_or_der(&der).ok()
            })
            .find(|c| presented.iter().any(|p| cloister_crypto::thumbprint_matches(c, p)))
            .ok_or_else(|| {
                AadError::invalid_client(
                    700027,
                    format!(
                        "The certificate with identifier used to sign the client assertion is not registered on application '{}'.",
                        rec.app.app_id
                    ),
                )
            })?;
        if cert.not_after() < now {
            return Err(AadError::invalid_client(
                700027,
                "The certificate used to sign the client assertion has expired.",
            ));
        }
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let key = cert
            .decoding_key()
            .map_err(|_| bad("The registered certificate's key is not usable."))?;
        let data =
            jsonwebtoken::decode::<Value>(assertion, &key, &v).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AadError::invalid_client(
                    700027,
                    "Client assertion failed signature validation.",
                ),
                _ => bad("The client assertion could not be decoded."),
            })?;
        let c = data.claims;
        let num = |k: &str| c.get(k).and_then(|v| v.as_f64());
        let skew = self.cfg.clock_skew_secs as f64;
        let now_f = now as f64;
        let exp = num("exp").ok_or_else(|| bad("The client assertion has no 'exp' claim."))?;
        if exp + skew < now_f {
            return Err(AadError::invalid_client(
                700024,
                "Client assertion is not within its valid time range: it has expired.",
            ));
        }
        if let Some(nbf) = num("nbf")
            && nbf - skew > now_f
        {
            return Err(AadError::invalid_client(
                700024,
                "Client assertion is not within its valid time range: it is not yet valid.",
            ));
        }
        if let Some(iat) = num("iat")
            && iat - skew > now_f
        {
            return Err(AadError::invalid_client(
                700024,
                "Client assertion is not within its valid time range: it was issued in the future.",
            ));
        }
        if exp - now_f > 86400.0 {
            return Err(AadError::invalid_client(
                700024,
                "Client assertion lifetime is too long.",
            ));
        }
        let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("");
        if !s("iss").eq_ignore_ascii_case(&rec.app.app_id)
            || !s("sub").eq_ignore_ascii_case(&rec.app.app_id)
        {
            return Err(AadError::invalid_client(
                700023,
                "The client assertion's 'iss' and 'sub' claims must both be the client id.",
            ));
        }
        let aud_ok = match c.get("aud") {
            Some(Value::String(a)) => self.assertion_audience_ok(tenant, a),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str())
                .any(|a| self.assertion_audience_ok(tenant, a)),
            _ => false,
        };
        if !aud_ok {
            return Err(bad(
                "The client assertion's audience must be this tenant's token endpoint.",
            ));
        }
        if let Some(jti) = c.get("jti").and_then(|v| v.as_str()) {
            let key = format!("{}/{jti}", rec.app.app_id);
            if self.jti_seen.contains_key(&key) {
                return Err(bad(
                    "The client assertion has already been used (jti replay).",
                ));
            }
            self.jti_seen.insert(key, ());
        }
        Ok("2")
    }

    fn assertion_audience_ok(&self, tenant: &str, aud: &str) -> bool {
        let Ok(u) = url::Url::parse(aud) else {
            return false;
        };
        let path = u.path().trim_end_matches('/').to_ascii_lowercase();
        let t = tenant.to_ascii_lowercase();
        matches!(u.scheme(), "https" | "http")
            && (path == format!("/{t}/oauth2/v2.0/token") || path == format!("/{t}/oauth2/token"))
    }

    // ---- users and groups ----------------------------------------------------------------
    pub async fn create_user(
        &self,
        tenant: &str,
        upn: &str,
        display_name: &str,
        password: Secret,
    ) -> Result<User, IdentityError> {
        valid_display_name(display_name)?;
        if !upn.contains('@')
            || upn.len() > 113
            || upn.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(IdentityError::Invalid(
                "userPrincipalName must look like alias@domain".into(),
            ));
        }
        if password.expose().chars().count() < 8 {
            return Err(IdentityError::Invalid(
                "the password must be at least 8 characters".into(),
            ));
        }
        let hash = tokio::task::spawn_blocking(move || hash_password(password.expose()))
            .await
            .map_err(|e| IdentityError::Internal(e.to_string()))??;
        let u = User {
            id: new_guid(),
            tenant_id: tenant.to_string(),
            upn: upn.to_string(),
            display_name: display_name.to_string(),
            password_hash: hash,
            created_at: now_secs(),
        };
        self.store.user_create(&u).await?;
        Ok(u)
    }

    /// Checks a user's password (rate-limited per user name).
    pub async fn verify_user(
        &self,
        tenant: &str,
        upn: &str,
        password: &str,
    ) -> Result<Option<User>, AadError> {
        let lock_key = format!("user:{tenant}/{}", upn.to_lowercase());
        if let Some(wait) = self.is_locked(&lock_key) {
            let mut e = AadError::new(
                429,
                "invalid_grant",
                50053,
                format!(
                    "The account is locked because of too many sign-in attempts. Try again in {wait} seconds."
                ),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        let user = self
            .store
            .user_by_upn(tenant, upn)
            .await
            .map_err(|_| AadError::server_error("directory unavailable"))?;
        let pw = password.to_string();
        let ok = match &user {
            Some(u) => {
                let h = u.password_hash.clone();
                tokio::task::spawn_blocking(move || verify_password(&pw, &h))
                    .await
                    .unwrap_or(false)
            }
            None => {
                // Spend the same time as a real check so user names cannot be probed by timing.
                tokio::task::spawn_blocking(move || {
                    let _ = hash_password(&pw);
                })
                .await
                .ok();
                false
            }
        };
        if ok {
            Ok(user)
        } else {
            self.record_failure(&lock_key);
            Ok(None)
        }
    }

    pub async fn create_group(
        &self,
        tenant: &str,
        display_name: &str,
        description: &str,
    ) -> Result<Group, IdentityError> {
        valid_display_name(display_name)?;
        let g = Group {
            id: new_guid(),
            tenant_id: tenant.to_string(),
            display_name: display_name.to_string(),
            description: description.to_string(),
            created_at: now_secs(),
        };
        self.store.group_create(&g).await?;
        Ok(g)
    }

    /// What kind of directory object `id` is: `User`, `Group`, `ServicePrincipal` or
    /// `ManagedIdentity` (Azure's principalType values), and its display name.
    pub async fn principal_kind(
        &self,
        id: &str,
    ) -> Result<Option<(String, String)>, IdentityError> {
        if let Some(u) = self.store.user_get(id).await? {
            return Ok(Some(("User".into(), u.upn)));
        }
        if let Some(g) = self.store.group_get(id).await? {
            return Ok(Some(("Group".into(), g.display_name)));
        }
        if let Some(sp) = self.store.sp_get(id).await? {
            // Azure reports managed identities as service principals too.
            return Ok(Some(("ServicePrincipal".into(), sp.display_name)));
        }
        Ok(None)
    }

    /// A new managed identity's service principal for `resource_id` (not yet stored).
    pub fn new_managed_identity(&self, resource_id: &str, display_name: &str) -> ServicePrincipal {
        ServicePrincipal {
            id: new_guid(),
            app_id: new_guid(),
            tenant_id: self.home_tenant.clone(),
            display_name: display_name.to_string(),
            kind: "ManagedIdentity".into(),
            mi_resource_id: Some(resource_id.to_string()),
            created_at: now_secs(),
        }
    }
}

fn hash_password(pw: &str) -> Result<String, IdentityError> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Internal(e.to_string()))
}

fn verify_password(pw: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    match argon2::PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(pw.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}
