//! Managed-identity tokens: which identities a caller may use (the host's, like a VM's
//! IMDS, or a binding made by `cloister run`), choosing among them by `client_id`,
//! `object_id`/`principal_id` or resource id, and the per-identity, per-resource token cache
//! that hands the same token out until its refresh time, as IMDS does.

use crate::tokens::Subject;
use crate::{Identity, IdentityError};
use cloister_core::clock::now_secs;
use cloister_crypto::Secret;
use cloister_store::{BindingRow, ServicePrincipal};
use std::sync::Arc;

pub const BINDING_PURPOSE: &str = "identity-binding";
pub const HOST_RESOURCE_KEY: &str = "host_resource_id";

#[derive(Debug, Clone)]
pub struct CachedToken {
    pub access_token: String,
    pub client_id: String,
    pub object_id: String,
    pub mi_resource_id: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub refresh_at: i64,
}

/// A binding's identities as cached: its expiry, and whether it is a session pool's (whose
/// secret works only through the sandboxes' identity socket and cannot end itself).
#[derive(Debug)]
pub struct BindingEntry {
    pub expires_at: i64,
    pub session: bool,
    pub set: Arc<IdentitySet>,
}

/// A session pool's binding that this node re-creates when it is lost: the row as first
/// written and its lifetime.
#[derive(Debug, Clone)]
pub struct KeptBinding {
    pub row: BindingRow,
    pub ttl_secs: i64,
}

/// Where a binding secret was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The `/msi/token` of the HTTP and HTTPS listeners: `cloister run` bindings only.
    Public,
    /// The identity socket bound into sandboxes: session-pool bindings (and `cloister run`'s).
    Sandbox,
}

/// What `DELETE …/bindings/current` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// A session pool's binding: it ends with its pool (or the pool's identity settings),
    /// not with its own secret.
    Refused,
}

/// True for the bindings a session pool makes for its sessions: their creator is the pool's
/// resource id (a `cloister run` binding's creator is the caller's object id).
pub fn is_session_binding(b: &BindingRow) -> bool {
    b.created_by.starts_with('/')
}

/// Why no token was given. Every variant is permanent and maps to HTTP 400, never 404 or
/// 5xx, because Azure SDKs retry those.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MiError {
    #[error("Identity not found")]
    IdentityNotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{1}")]
    InvalidResource(String, String),
    #[error("{0}")]
    Unavailable(String),
}

/// Which identity a request selects.
#[derive(Debug, Default, Clone)]
pub struct Selector {
    pub client_id: Option<String>,
    pub object_id: Option<String>,
    pub resource_id: Option<String>,
}

impl Selector {
    fn count(&self) -> usize {
        [&self.client_id, &self.object_id, &self.resource_id]
            .iter()
            .filter(|x| x.is_some())
            .count()
    }
}

/// The identities a caller may use.
#[derive(Debug, Clone)]
pub struct IdentitySet {
    pub system: Option<ServicePrincipal>,
    pub user: Vec<ServicePrincipal>,
}

impl IdentitySet {
    pub fn select(&self, sel: &Selector) -> Result<&ServicePrincipal, MiError> {
        if sel.count() > 1 {
            return Err(MiError::BadRequest(
                "Only one of client_id, object_id and msi_res_id may be given.".into(),
            ));
        }
        let all = || self.system.iter().chain(self.user.iter());
        if let Some(c) = &sel.client_id {
            return all()
                .find(|p| p.app_id.eq_ignore_ascii_case(c))
                .ok_or(MiError::IdentityNotFound);
        }
        if let Some(o) = &sel.object_id {
            return all()
                .find(|p| p.id.eq_ignore_ascii_case(o))
                .ok_or(MiError::IdentityNotFound);
        }
        if let Some(r) = &sel.resource_id {
            let r = r.trim_end_matches('/');
            return self
                .user
                .iter()
                .find(|p| {
                    p.mi_resource_id
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(r))
                })
                .ok_or(MiError::IdentityNotFound);
        }
        match (&self.system, self.user.as_slice()) {
            (Some(s), _) => Ok(s),
            (None, [only]) => Ok(only),
            (None, []) => Err(MiError::IdentityNotFound),
            (None, _) => Err(MiError::BadRequest(
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request".into(),
            )),
        }
    }
}

impl Identity {
    /// The identities of the host (the resource this server runs as), served on the plain
    /// IMDS path to local callers. Cached for a few seconds; writes on this node invalidate.
    pub async fn host_identities(&self) -> Result<Arc<IdentitySet>, IdentityError> {
        let key = "__host__".to_string();
        if let Some(b) = self.bindings.get(&key) {
            return Ok(b.set.clone());
        }
        let set = match self.store.meta_get(HOST_RESOURCE_KEY).await? {
            Some(host) => {
                let b = BindingRow {
                    secret_hash: key.clone(),
                    resource_id: host,
                    principal_ids: vec![],
                    created_by: "system".into(),
                    expires_at: i64::MAX,
                    created_at: 0,
                };
                self.identities_of_binding(&b).await?
            }
            None => IdentitySet {
                system: None,
                user: vec![],
            },
        };
        let set = Arc::new(set);
        self.bindings.insert(
            key,
            Arc::new(BindingEntry {
                expires_at: i64::MAX,
                session: false,
                set: set.clone(),
            }),
        );
        Ok(set)
    }

    /// Identities reachable through a binding secret (`X-IDENTITY-HEADER`) presented on
    /// `channel`. A session pool's secret works only on [`Channel::Sandbox`]; there, a binding
    /// this node keeps ([`Identity::keep_session_binding`]) that was deleted, purged or let
    /// expire is re-created under the same secret first.
    pub async fn binding_identities(
        &self,
        secret: &str,
        channel: Channel,
    ) -> Result<Option<Arc<IdentitySet>>, IdentityError> {
        if secret.is_empty() || secret.len() > 256 {
            return Ok(None);
        }
        let hash = self.mk.keyed_hash(BINDING_PURPOSE, secret.as_bytes());
        let entry = match self.bindings.get(&hash) {
            Some(b) => Some(b),
            None => match self.store.binding_get(&hash).await? {
                Some(b) => Some(self.cache_binding(&b).await?),
                None => None,
            },
        };
        let live = entry.filter(|e| e.expires_at >= now_secs());
        let entry = match (live, channel) {
            (Some(e), _) => e,
            (None, Channel::Sandbox) => match self.revive_binding(&hash).await? {
                Some(e) => e,
                None => return Ok(None),
            },
            (None, Channel::Public) => return Ok(None),
        };
        if entry.session && channel == Channel::Public {
            return Ok(None);
        }
        Ok(Some(entry.set.clone()))
    }

    async fn cache_binding(&self, b: &BindingRow) -> Result<Arc<BindingEntry>, IdentityError> {
        let e = Arc::new(BindingEntry {
            expires_at: b.expires_at,
            session: is_session_binding(b) || self.kept_bindings.contains_key(&b.secret_hash),
            set: Arc::new(self.identities_of_binding(b).await?),
        });
        self.bindings.insert(b.secret_hash.clone(), e.clone());
        Ok(e)
    }

    /// Writes a kept binding's row again (a fresh lifetime, the same secret hash).
    async fn revive_binding(&self, hash: &str) -> Result<Option<Arc<BindingEntry>>, IdentityError> {
        let Some(k) = self.kept_bindings.get(hash).map(|k| k.clone()) else {
            return Ok(None);
        };
        let row = self.write_binding(&k.row, k.ttl_secs).await?;
        tracing::info!(pool = %row.created_by, "re-created a lost session identity binding");
        Ok(Some(self.cache_binding(&row).await?))
    }

    /// Replaces the row of `template.secret_hash` with one that expires `ttl_secs` from now.
    async fn write_binding(
        &self,
        template: &BindingRow,
        ttl_secs: i64,
    ) -> Result<BindingRow, IdentityError> {
        let now = now_secs();
        let row = BindingRow {
            expires_at: now + ttl_secs,
            created_at: now,
            ..template.clone()
        };
        self.bindings.invalidate(&row.secret_hash);
        self.store.binding_delete(&row.secret_hash).await?;
        if let Err(e) = self.store.binding_insert(&row).await {
            // Another request may have re-created it between the delete and the insert.
            match self.store.binding_get(&row.secret_hash).await? {
                Some(r) => return Ok(r),
                None => return Err(e.into()),
            }
        }
        Ok(row)
    }

    /// Makes sure the binding of session pool `pool_id` to `principal_ids` under `secret` (the
    /// `IDENTITY_HEADER` of its sessions) exists with at least half of `ttl_secs` left,
    /// re-creating it under the same secret if it was lost, and keeps it alive from now on (see
    /// [`Identity::binding_identities`]). Returns its expiry.
    pub async fn keep_session_binding(
        &self,
        pool_id: &str,
        principal_ids: Vec<String>,
        secret: &str,
        ttl_secs: i64,
    ) -> Result<i64, IdentityError> {
        let ttl_secs = ttl_secs.clamp(60, 30 * 86400);
        let hash = self.mk.keyed_hash(BINDING_PURPOSE, secret.as_bytes());
        let now = now_secs();
        let template = BindingRow {
            secret_hash: hash.clone(),
            resource_id: String::new(),
            principal_ids,
            created_by: pool_id.to_string(),
            expires_at: now + ttl_secs,
            created_at: now,
        };
        self.kept_bindings.insert(
            hash.clone(),
            KeptBinding {
                row: template.clone(),
                ttl_secs,
            },
        );
        if let Some(r) = self.store.binding_get(&hash).await?
            && r.principal_ids == template.principal_ids
            && r.created_by == template.created_by
            && r.expires_at > now + ttl_secs / 2
        {
            return Ok(r.expires_at);
        }
        Ok(self.write_binding(&template, ttl_secs).await?.expires_at)
    }

    /// Stops keeping a session pool's binding and ends it (the pool is gone, or its sessions'
    /// identities changed).
    pub async fn forget_session_binding(&self, secret: &str) -> Result<(), IdentityError> {
        let hash = self.mk.keyed_hash(BINDING_PURPOSE, secret.as_bytes());
        self.kept_bindings.remove(&hash);
        self.bindings.invalidate(&hash);
        self.store.binding_delete(&hash).await?;
        Ok(())
    }

    async fn identities_of_binding(&self, b: &BindingRow) -> Result<IdentitySet, IdentityError> {
        let mut set = IdentitySet {
            system: None,
            user: vec![],
        };
        if !b.resource_id.is_empty()
            && let Some(r) = self.store.resource_get(&b.resource_id).await?
        {
            if let Some(p) = &r.system_principal_id
                && let Some(sp) = self.sp_cached(p).await?
            {
                set.system = Some(sp);
            }
            for ua in &r.user_identities {
                if let Some(sp) = self.store.sp_by_mi_resource(ua).await? {
                    set.user.push(sp);
                }
            }
        }
        for p in &b.principal_ids {
            if let Some(sp) = self.sp_cached(p).await? {
                set.user.push(sp);
            }
        }
        Ok(set)
    }

    async fn sp_cached(&self, id: &str) -> Result<Option<ServicePrincipal>, IdentityError> {
        Ok(self.store.sp_get(id).await?)
    }

    /// Creates a binding to the given identities; returns its secret (shown once).
    pub async fn create_binding(
        &self,
        principal_ids: Vec<String>,
        created_by: &str,
        ttl_secs: i64,
    ) -> Result<(Secret, i64), IdentityError> {
        let secret = Secret::new(cloister_crypto::random_token(32));
        let now = now_secs();
        let expires_at = now + ttl_secs.clamp(60, 7 * 86400);
        self.store
            .binding_insert(&BindingRow {
                secret_hash: self
                    .mk
                    .keyed_hash(BINDING_PURPOSE, secret.expose().as_bytes()),
                resource_id: String::new(),
                principal_ids,
                created_by: created_by.to_string(),
                expires_at,
                created_at: now,
            })
            .await?;
        Ok((secret, expires_at))
    }

    /// Ends the binding whose secret is presented, unless it is a session pool's.
    pub async fn delete_binding(&self, secret: &str) -> Result<DeleteOutcome, IdentityError> {
        if secret.is_empty() || secret.len() > 256 {
            return Ok(DeleteOutcome::NotFound);
        }
        let hash = self.mk.keyed_hash(BINDING_PURPOSE, secret.as_bytes());
        if self.kept_bindings.contains_key(&hash) {
            return Ok(DeleteOutcome::Refused);
        }
        match self.store.binding_get(&hash).await? {
            None => Ok(DeleteOutcome::NotFound),
            Some(b) if is_session_binding(&b) => Ok(DeleteOutcome::Refused),
            Some(_) => {
                self.bindings.invalidate(&hash);
                Ok(if self.store.binding_delete(&hash).await? {
                    DeleteOutcome::Deleted
                } else {
                    DeleteOutcome::NotFound
                })
            }
        }
    }

    /// Forget cached identity sets (after a resource's identities change).
    pub fn invalidate_identity_sets(&self) {
        self.bindings.invalidate_all();
    }

    /// A token for managed identity `sp` and the requested resource, from the cache until
    /// its refresh time (half its lifetime), unless `bypass_cache`.
    pub async fn mi_token(
        &self,
        sp: &ServicePrincipal,
        resource: &str,
        bypass_cache: bool,
    ) -> Result<Arc<CachedToken>, MiError> {
        let key = (sp.id.clone(), resource.to_string());
        let now = now_secs();
        if !bypass_cache
            && let Some(t) = self.mi_cache.get(&key)
            && t.refresh_at > now
        {
            metrics::counter!("cloister_mi_cache_hits_total").increment(1);
            return Ok(t);
        }
        let res = self
            .resolve_resource(&self.home_tenant, resource)
            .await
            .map_err(|e| {
                MiError::InvalidResource(
                    e.error.to_string(),
                    format!("AADSTS{}: {}", e.code, e.description),
                )
            })?;
        let lifetime = self.cfg.mi_token_secs;
        let m = self
            .mint_access(
                &self.home_tenant,
                &res,
                Subject::ManagedIdentity { sp },
                lifetime,
                &self.roles_for(&sp.id, &res).await,
            )
            .map_err(|e| MiError::Unavailable(e.to_string()))?;
        let t = Arc::new(CachedToken {
            access_token: m.token,
            client_id: sp.app_id.clone(),
            object_id: sp.id.clone(),
            mi_resource_id: sp.mi_resource_id.clone().unwrap_or_default(),
            iat: m.iat,
            nbf: m.nbf,
            exp: m.exp,
            refresh_at: m.iat + lifetime / 2,
        });
        self.mi_cache.insert(key, t.clone());
        Ok(t)
    }
}
