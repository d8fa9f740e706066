//! Cloister's identity service, modelled on Microsoft Entra ID: the directory (tenants,
//! users, groups, applications, service principals, managed identities), the OAuth 2.0 /
//! OpenID Connect token service with Entra's wire formats, signing-key rotation, and the
//! managed-identity endpoints (IMDS and App Service style) that let unchanged Azure SDKs get
//! tokens with no secret.
//!
//! The HTTP surface is in [`api`]; everything else is domain logic over the store.
//!
//! ```ignore
//! let identity = Identity::open(store, master_key, cfg, "https://127.0.0.1:8443".into()).await?;
//! let router = cloister_identity::api::router(identity.clone());
//! ```

pub mod api;
pub mod arm;
pub mod authorize;
pub mod bearer;
pub mod config;
pub mod directory;
pub mod grants;
pub mod graph;
pub mod keys;
pub mod mi;
pub mod openapi;
pub mod resources;
pub mod strict;
pub mod tokens;

use cloister_crypto::MasterKey;
use cloister_store::{Store, StoreError};
use config::IdentityConfig;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use keys::KeyRing;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<IdentityError> for cloister_core::error::ArmError {
    fn from(e: IdentityError) -> Self {
        use cloister_core::error::ArmError;
        match e {
            IdentityError::Invalid(m) => ArmError::invalid(m),
            IdentityError::NotFound(m) => ArmError::not_found("NotFound", m),
            IdentityError::Conflict(m) => ArmError::conflict("Conflict", m),
            IdentityError::Store(StoreError::Conflict(m)) => ArmError::conflict("Conflict", m),
            IdentityError::Store(StoreError::NotFound) => {
                ArmError::not_found("NotFound", "not found")
            }
            other => {
                tracing::error!("identity error: {other}");
                ArmError::internal("an internal error occurred")
            }
        }
    }
}

/// The identity service. Shared behind an `Arc`.
pub struct Identity {
    pub store: Store,
    pub mk: Arc<MasterKey>,
    pub keys: KeyRing,
    pub cfg: IdentityConfig,
    /// `https://host:port`, no trailing slash: the authority host clients are given.
    pub authority: String,
    /// The management endpoint (`https://host:port/`) that is also a valid token audience.
    pub management_endpoint: String,
    /// The plain-HTTP base for managed-identity endpoints, if one is served.
    pub http_base: Option<String>,
    pub home_tenant: String,
    pub(crate) clients: moka::sync::Cache<(String, String), Arc<directory::ClientRecord>>,
    pub(crate) mi_cache: moka::sync::Cache<(String, String), Arc<mi::CachedToken>>,
    pub(crate) bindings: moka::sync::Cache<String, Arc<mi::BindingEntry>>,
    /// The session-pool bindings this node keeps alive (by secret hash): re-created under the
    /// same secret when their row is lost, so the sessions holding the secret keep working.
    pub(crate) kept_bindings: dashmap::DashMap<String, mi::KeptBinding>,
    pub(crate) jti_seen: moka::sync::Cache<String, ()>,
    /// Tokens that passed validation, by (audiences, token): their claims. A hit re-checks
    /// lifetime and that the signing key is still published.
    pub(crate) validated: moka::sync::Cache<(String, String), Arc<tokens::Claims>>,
    /// Tenant ids known to exist (tenants are never deleted).
    pub(crate) tenants: moka::sync::Cache<String, ()>,
    failures: DefaultKeyedRateLimiter<String>,
    locked: dashmap::DashMap<String, Instant>,
}

impl Identity {
    pub async fn open(
        store: Store,
        mk: Arc<MasterKey>,
        cfg: IdentityConfig,
        authority: String,
        http_base: Option<String>,
        home_tenant: String,
    ) -> Result<Arc<Identity>, IdentityError> {
        let keys = KeyRing::load(store.clone(), mk.clone(), cfg.clone()).await?;
        let per_min = NonZeroU32::new(cfg.failed_auth_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let authority = authority.trim_end_matches('/').to_string();
        Ok(Arc::new(Identity {
            management_endpoint: format!("{authority}/"),
            authority,
            http_base,
            home_tenant,
            store,
            mk,
            keys,
            failures: RateLimiter::keyed(Quota::per_minute(per_min)),
            locked: dashmap::DashMap::new(),
            clients: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
            mi_cache: moka::sync::Cache::builder().max_capacity(100_000).build(),
            bindings: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
            kept_bindings: dashmap::DashMap::new(),
            tenants: moka::sync::Cache::builder().max_capacity(100_000).build(),
            validated: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            jti_seen: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            cfg,
        }))
    }

    /// `{authority}/{tenant}/v2.0`
    pub fn issuer_v2(&self, tenant: &str) -> String {
        format!("{}/{}/v2.0", self.authority, tenant)
    }
    /// `{authority}/{tenant}/`: the v1 issuer (Entra's is `https://sts.windows.net/{tid}/`).
    pub fn issuer_v1(&self, tenant: &str) -> String {
        format!("{}/{}/", self.authority, tenant)
    }
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, tenant)
    }

    /// True if `key` is currently locked out after too many failed authentications.
    pub(crate) fn is_locked(&self, key: &str) -> Option<u64> {
        if let Some(until) = self.locked.get(key) {
            let now = Instant::now();
            if *until > now {
                return Some((*until - now).as_secs().max(1));
            }
        }
        None
    }
    /// Records a failed authentication; locks the key out once the per-minute budget is spent.
    pub(crate) fn record_failure(&self, key: &str) {
        metrics::counter!("cloister_auth_failures_total").increment(1);
        if let Err(not_until) = self.failures.check_key(&key.to_string()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            self.locked.insert(
                key.to_string(),
                Instant::now() + wait.max(Duration::from_secs(1)),
            );
        }
    }

    /// Forget cached directory data (after a write on this node).
    pub fn invalidate_client(&self, tenant: &str, client_id: &str) {
        self.clients
            .invalidate(&(tenant.to_string(), client_id.to_string()));
    }
    pub fn invalidate_all_clients(&self) {
        self.clients.invalidate_all();
        self.mi_cache.invalidate_all();
    }

    /// Periodic maintenance (keys, expired codes and bindings).
    pub async fn tick(&self) -> Result<(), IdentityError> {
        self.keys.tick().await?;
        let now = cloister_core::clock::now_secs();
        self.store.auth_codes_purge(now).await?;
        self.store.bindings_purge(now).await?;
        self.locked.retain(|_, until| *until > Instant::now());
        // Forget failure budgets that have fully recovered, so that spraying random client
        // ids cannot grow memory without bound.
        self.failures.retain_recent();
        Ok(())
    }
}
