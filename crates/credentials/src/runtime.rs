//! The runtime: a valid access token for a connection, refreshed when it is due.
//!
//! - The cached token is used until 3 minutes before it expires (until it expires, if it
//!   lives less than that), as API Management does.
//! - Refresh is single-flight: one per connection inside a process (an async mutex per
//!   connection), and one across processes sharing a store (a lease row with an owner and a
//!   deadline, taken by compare-and-set; whoever waits re-reads the store's generation
//!   counter and uses the token the winner stored).
//! - A token set (access token, refresh token, claims) is one sealed record, written before
//!   any caller sees the new access token; a refresh answer without a refresh token keeps
//!   the old one; an answer without `expires_in` is taken to live [`DEFAULT_EXPIRES_IN`].
//! - `invalid_grant` puts the connection in Error ("re-authorization required");
//!   `invalid_client` says where the secret must be updated; 5xx and 429 are retried with
//!   backoff, and while the previous token is still valid it is served.

use crate::model::{Grant, Provider};
use crate::oauth::{OAuthError, TokenResponse, token_request_retrying};
use crate::vault::{RecordContext, Vault};
use cloister_store::Store;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lifetime assumed when a token response carries no `expires_in` (seconds).
pub const DEFAULT_EXPIRES_IN: i64 = 3600;
/// A cached token is not handed out in its last 3 minutes (unless it lives less).
pub const MARGIN: i64 = 180;
/// Outbound token requests allowed per connection per minute.
pub const REQUESTS_PER_MINUTE: u32 = 250;
const LEASE_SECS: i64 = 30;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Which connection, with what it needs.
#[derive(Debug, Clone)]
pub struct ConnRef {
    pub instance_lc: String,
    pub provider_lc: String,
    pub connection_lc: String,
    pub provider: Provider,
    /// For client credentials: the connection's own `clientId`/`scopes`, if any.
    pub parameters: Map<String, Value>,
}

impl ConnRef {
    fn ctx(&self, owner_is_provider: bool, field: &str) -> RecordContext {
        RecordContext {
            instance: self.instance_lc.clone(),
            provider: self.provider_lc.clone(),
            connection: if owner_is_provider {
                String::new()
            } else {
                self.connection_lc.clone()
            },
            field: field.to_string(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The connection must be (re-)authorized; it is in status Error.
    #[error("{message}")]
    NotConnected { code: String, message: String },
    /// The provider's client credentials were refused.
    #[error("{message}")]
    ClientSecret { message: String },
    #[error("{message}")]
    Unavailable { message: String },
    #[error(
        "too many token requests for this connection (at most {REQUESTS_PER_MINUTE} a minute); retry in {retry_after} s"
    )]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Clone)]
struct Cached {
    access_token: String,
    claims: Value,
    use_until: i64,
    expires_at: i64,
    generation: i64,
}

/// A status change to record on the connection resource.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub connection_lc: String,
    pub status: &'static str,
    pub error: Option<(String, String)>,
}

pub struct Runtime {
    store: Store,
    vault: Arc<Vault>,
    http: reqwest::Client,
    node: String,
    cache: Mutex<HashMap<String, Cached>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    rate: Mutex<HashMap<String, (i64, u32)>>,
    /// Called when a connection's status must change (Connected / Error).
    on_status: Box<dyn Fn(StatusChange) + Send + Sync>,
}

fn use_until(expires_at: i64, lifetime: i64) -> i64 {
    if lifetime > MARGIN {
        expires_at - MARGIN
    } else {
        expires_at
    }
}

impl Runtime {
    /// `http` calls the outside providers (see [`crate::oauth::client`]).
    pub fn new(
        store: Store,
        vault: Arc<Vault>,
        http: reqwest::Client,
        on_status: Box<dyn Fn(StatusChange) + Send + Sync>,
    ) -> Runtime {
        Runtime {
            store,
            vault,
            http,
            node: uuid::Uuid::new_v4().to_string(),
            cache: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            on_status,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Forgets a connection's cached token (deleted, secret changed).
    pub fn forget(&self, connection_lc: &str) {
        self.cache.lock().unwrap().remove(connection_lc);
    }

    fn lock_for(&self, c: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(c.to_string())
            .or_default()
            .clone()
    }

    fn take_rate(&self, c: &str) -> Result<(), RuntimeError> {
        let now = now();
        let minute = now / 60;
        let mut m = self.rate.lock().unwrap();
        let e = m.entry(c.to_string()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        if e.1 >= REQUESTS_PER_MINUTE {
            return Err(RuntimeError::RateLimited {
                retry_after: (60 - now % 60).max(1) as u64,
            });
        }
        e.1 += 1;
        Ok(())
    }

    /// The cached token if it may still be handed out.
    pub fn cached(&self, c: &ConnRef) -> Option<(String, Value)> {
        let now = now();
        self.cache
            .lock()
            .unwrap()
            .get(&c.connection_lc)
            .filter(|t| t.use_until > now)
            .map(|t| (t.access_token.clone(), t.claims.clone()))
    }

    /// A valid access token and the token response's claims.
    pub async fn token(&self, c: &ConnRef) -> Result<(String, Value), RuntimeError> {
        if let Some(t) = self.cached(c) {
            return Ok(t);
        }
        let lock = self.lock_for(&c.connection_lc);
        let _g = lock.lock().await;
        if let Some(t) = self.cached(c) {
            return Ok(t);
        }
        // Another process may have refreshed: the store's generation tells.
        if let Some(t) = self.load_stored(c).await? {
            return Ok(t);
        }
        self.refresh(c).await
    }

    /// Reads the stored token set if it is newer than the cache and still usable.
    async fn load_stored(&self, c: &ConnRef) -> Result<Option<(String, Value)>, RuntimeError> {
        let st = self
            .store
            .token_state(&c.connection_lc)
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        let Some(st) = st else { return Ok(None) };
        if st.generation == 0 {
            return Ok(None);
        }
        let known = self
            .cache
            .lock()
            .unwrap()
            .get(&c.connection_lc)
            .map(|t| t.generation)
            .unwrap_or(0);
        if st.generation <= known {
            return Ok(None);
        }
        let Some(set) = self.read_set(c).await? else {
            return Ok(None);
        };
        let lifetime = set["lifetime"].as_i64().unwrap_or(DEFAULT_EXPIRES_IN);
        let cached = Cached {
            access_token: set["access_token"].as_str().unwrap_or("").to_string(),
            claims: set["claims"].clone(),
            use_until: use_until(st.expires_at, lifetime),
            expires_at: st.expires_at,
            generation: st.generation,
        };
        let ok = cached.use_until > now() && !cached.access_token.is_empty();
        let out = (cached.access_token.clone(), cached.claims.clone());
        self.cache
            .lock()
            .unwrap()
            .insert(c.connection_lc.clone(), cached);
        Ok(ok.then_some(out))
    }

    async fn read_set(&self, c: &ConnRef) -> Result<Option<Value>, RuntimeError> {
        let raw = self
            .vault
            .get_secret(&c.ctx(false, "tokens"), &c.connection_lc)
            .await
            .map_err(|e| RuntimeError::Internal(format!("token store: {e}")))?;
        Ok(raw.and_then(|b| serde_json::from_slice::<Value>(&b).ok()))
    }

    async fn client_secret(&self, c: &ConnRef) -> Result<Option<String>, RuntimeError> {
        let (owner, ctx) = match c.provider.grant {
            Grant::ClientCredentials
                if self
                    .vault
                    .get_secret(&c.ctx(false, "clientSecret"), &c.connection_lc)
                    .await
                    .ok()
                    .flatten()
                    .is_some() =>
            {
                (c.connection_lc.clone(), c.ctx(false, "clientSecret"))
            }
            _ => (c.provider_lc.clone(), c.ctx(true, "clientSecret")),
        };
        let raw = self
            .vault
            .get_secret(&ctx, &owner)
            .await
            .map_err(|e| RuntimeError::Internal(format!("token store: {e}")))?;
        Ok(raw.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Takes the cross-process lease, or waits for whoever holds it to store a new token.
    async fn lease_or_wait(&self, c: &ConnRef) -> Result<Option<(String, Value)>, RuntimeError> {
        let deadline = now() + LEASE_SECS + 5;
        loop {
            let t = now();
            let got = self
                .store
                .token_lease(&c.connection_lc, &self.node, t + LEASE_SECS, t)
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))?;
            if got {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            if let Some(tok) = self.load_stored(c).await? {
                return Ok(Some(tok));
            }
            if now() > deadline {
                return Err(RuntimeError::Unavailable {
                    message: "another node is refreshing this connection and has not finished"
                        .into(),
                });
            }
        }
    }

    async fn refresh(&self, c: &ConnRef) -> Result<(String, Value), RuntimeError> {
        if let Some(t) = self.lease_or_wait(c).await? {
            return Ok(t);
        }
        // Double-check under the lease: someone may have finished just before we took it.
        if let Some(t) = self.load_stored(c).await? {
            let _ = self.store.token_release(&c.connection_lc, &self.node).await;
            return Ok(t);
        }
        let r = self.refresh_locked(c).await;
        if r.is_err() {
            let _ = self.store.token_release(&c.connection_lc, &self.node).await;
        }
        r
    }

    async fn refresh_locked(&self, c: &ConnRef) -> Result<(String, Value), RuntimeError> {
        let previous = self.read_set(c).await?;
        let secret = self.client_secret(c).await?.unwrap_or_default();
        let p = &c.provider;
        let resp = match p.grant {
            Grant::AuthorizationCode => {
                let Some(rt) = previous
                    .as_ref()
                    .and_then(|s| s["refresh_token"].as_str())
                    .map(str::to_string)
                else {
                    return Err(self.not_connected(
                        c,
                        "Unauthenticated",
                        "This connection is not authenticated: get a login link and consent.",
                    ));
                };
                self.take_rate(&c.connection_lc)?;
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", p.client_id.as_str()),
                ];
                if !secret.is_empty() {
                    form.push(("client_secret", secret.as_str()));
                }
                token_request_retrying(&self.http, &p.refresh_url, &form).await
            }
            Grant::ClientCredentials => {
                self.take_rate(&c.connection_lc)?;
                let client_id = c
                    .parameters
                    .get("clientId")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&p.client_id)
                    .to_string();
                let scopes = c
                    .parameters
                    .get("scopes")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&p.scopes)
                    .to_string();
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.as_str()),
                ];
                if !scopes.is_empty() {
                    form.push(("scope", scopes.as_str()));
                }
                token_request_retrying(&self.http, &p.token_url, &form).await
            }
        };
        metrics::counter!("cloister_credential_refreshes_total").increment(1);
        match resp {
            Ok(t) => self.store_set(c, t, previous.as_ref()).await,
            Err(OAuthError::InvalidGrant(m)) => Err(self.not_connected(
                c,
                "RefreshTokenInvalid",
                &format!(
                    "The identity provider refused the refresh token ({m}); re-authorization required: get a new login link and consent again."
                ),
            )),
            Err(OAuthError::InvalidClient(m)) => {
                let where_ = match p.grant {
                    Grant::AuthorizationCode => {
                        "update clientSecret on the credential provider (authorizationProviders/…: oauth2.grantTypes.authorizationCode.clientSecret)"
                    }
                    Grant::ClientCredentials => {
                        "update clientSecret on the connection (authorizations/…: parameters.clientSecret)"
                    }
                };
                let message = format!(
                    "The identity provider refused the client credentials ({m}); {where_}."
                );
                (self.on_status)(StatusChange {
                    connection_lc: c.connection_lc.clone(),
                    status: "Error",
                    error: Some(("ClientSecretInvalid".into(), message.clone())),
                });
                Err(RuntimeError::ClientSecret { message })
            }
            Err(OAuthError::Transient { message, .. }) => {
                // Still valid (inside the 3-minute margin)? Serve it.
                if let Some(prev) = self.cache.lock().unwrap().get(&c.connection_lc)
                    && prev.expires_at > now()
                {
                    return Ok((prev.access_token.clone(), prev.claims.clone()));
                }
                Err(RuntimeError::Unavailable { message })
            }
            Err(OAuthError::Other(m)) => Err(RuntimeError::Unavailable { message: m }),
        }
    }

    fn not_connected(&self, c: &ConnRef, code: &str, message: &str) -> RuntimeError {
        self.forget(&c.connection_lc);
        (self.on_status)(StatusChange {
            connection_lc: c.connection_lc.clone(),
            status: "Error",
            error: Some((code.into(), message.into())),
        });
        RuntimeError::NotConnected {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Seals and stores a token set (durably, before anyone gets the access token), bumps
    /// the generation, marks the connection Connected and caches the token.
    async fn store_set(
        &self,
        c: &ConnRef,
        t: TokenResponse,
        previous: Option<&Value>,
    ) -> Result<(String, Value), RuntimeError> {
        let now = now();
        let lifetime = t
            .expires_in
            .filter(|e| *e > 0)
            .unwrap_or(DEFAULT_EXPIRES_IN);
        let expires_at = now + lifetime;
        let refresh_token = t.refresh_token.clone().or_else(|| {
            previous
                .and_then(|p| p["refresh_token"].as_str())
                .map(str::to_string)
        });
        let claims = Value::Object(t.claims.clone());
        let set = json!({
            "access_token": t.access_token,
            "refresh_token": refresh_token,
            "claims": claims,
            "lifetime": lifetime,
        });
        self.vault
            .put_secret(
                &c.ctx(false, "tokens"),
                &c.connection_lc,
                set.to_string().as_bytes(),
            )
            .await
            .map_err(|e| RuntimeError::Internal(format!("token store: {e}")))?;
        let generation = self
            .store
            .token_stored(&c.connection_lc, expires_at, now)
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        self.cache.lock().unwrap().insert(
            c.connection_lc.clone(),
            Cached {
                access_token: t.access_token.clone(),
                claims: claims.clone(),
                use_until: use_until(expires_at, lifetime),
                expires_at,
                generation,
            },
        );
        (self.on_status)(StatusChange {
            connection_lc: c.connection_lc.clone(),
            status: "Connected",
            error: None,
        });
        Ok((t.access_token, claims))
    }

    /// Redeems an authorization code (the consent callback) and stores the token set.
    pub async fn redeem_code(
        &self,
        c: &ConnRef,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<(), RuntimeError> {
        let secret = self.client_secret(c).await?.unwrap_or_default();
        let p = &c.provider;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", p.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if !secret.is_empty() {
            form.push(("client_secret", secret.as_str()));
        }
        self.take_rate(&c.connection_lc)?;
        let lock = self.lock_for(&c.connection_lc);
        let _g = lock.lock().await;
        match token_request_retrying(&self.http, &p.token_url, &form).await {
            Ok(t) => self.store_set(c, t, None).await.map(|_| ()),
            Err(OAuthError::InvalidClient(m)) => Err(RuntimeError::ClientSecret {
                message: format!(
                    "The identity provider refused the client credentials ({m}); update clientSecret on the credential provider."
                ),
            }),
            Err(e) => Err(RuntimeError::NotConnected {
                code: "ConsentFailed".into(),
                message: format!("The authorization code could not be redeemed: {e}"),
            }),
        }
    }

    /// Seals a secret (a provider's or a client-credentials connection's client secret).
    pub async fn put_client_secret(
        &self,
        c: &ConnRef,
        provider_level: bool,
        secret: &str,
    ) -> Result<(), RuntimeError> {
        let owner = if provider_level {
            &c.provider_lc
        } else {
            &c.connection_lc
        };
        self.vault
            .put_secret(
                &c.ctx(provider_level, "clientSecret"),
                owner,
                secret.as_bytes(),
            )
            .await
            .map_err(|e| RuntimeError::Internal(format!("token store: {e}")))
    }

    /// For client credentials: requests a token now, even if a stored one is still valid, so
    /// that a new or changed secret, scope or URL shows at once in the connection's status.
    pub async fn connect(&self, c: &ConnRef) -> Result<(), RuntimeError> {
        self.forget(&c.connection_lc);
        let lock = self.lock_for(&c.connection_lc);
        let _g = lock.lock().await;
        let deadline = now() + LEASE_SECS + 5;
        loop {
            let t = now();
            let got = self
                .store
                .token_lease(&c.connection_lc, &self.node, t + LEASE_SECS, t)
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))?;
            if got {
                break;
            }
            if t > deadline {
                return Err(RuntimeError::Unavailable {
                    message: "another node is refreshing this connection and has not finished"
                        .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let r = self.refresh_locked(c).await;
        if r.is_err() {
            let _ = self.store.token_release(&c.connection_lc, &self.node).await;
        }
        r.map(|_| ())
    }
}
