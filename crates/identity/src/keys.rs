//! The signing key ring: one `active` key signs, one `next` key is already published in the
//! JWKS so verifiers learn it before it signs, and `retired` keys stay published until every
//! token they signed has expired. Private keys are sealed with the master key at rest.

use crate::IdentityError;
use crate::config::IdentityConfig;
use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_core::clock::now_secs;
use cloister_crypto::{MasterKey, SigningAlg, SigningKey, StoredKey};
use cloister_store::{SigningKeyRow, Store};
use std::collections::HashMap;
use std::sync::Arc;

pub struct KeyRing {
    store: Store,
    mk: Arc<MasterKey>,
    cfg: IdentityConfig,
    alg: SigningAlg,
    state: ArcSwap<RingState>,
}

struct RingState {
    active: Arc<SigningKey>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    rows: Vec<SigningKeyRow>,
    jwks: Arc<String>,
}

/// A published key as listed by the admin API (no private material).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub remove_after: Option<i64>,
}

impl KeyRing {
    pub async fn load(
        store: Store,
        mk: Arc<MasterKey>,
        cfg: IdentityConfig,
    ) -> Result<KeyRing, IdentityError> {
        let alg: SigningAlg = cfg.signing_alg.parse().map_err(|_| {
            IdentityError::Config(format!("unknown signing_alg '{}'", cfg.signing_alg))
        })?;
        let rows = store.signing_keys().await?;
        let now = now_secs();
        if !rows.iter().any(|r| r.state == "active") {
            // First start: nothing has verified anything yet, so the first key may sign at once.
            let k = generate(alg).await?;
            let mut row = to_row(&k, &mk, "active", now)?;
            row.activated_at = Some(now);
            if let Err(e) = store.signing_key_insert(&row).await {
                // Another node may have raced us; fine as long as an active key exists now.
                tracing::debug!("first key insert: {e}");
            }
        }
        let ring_state = build_state(&store.signing_keys().await?, &mk)?;
        let ring = KeyRing {
            store,
            mk,
            cfg,
            alg,
            state: ArcSwap::from_pointee(ring_state),
        };
        ring.ensure_next().await?;
        Ok(ring)
    }

    async fn ensure_next(&self) -> Result<(), IdentityError> {
        let rows = self.store.signing_keys().await?;
        if !rows.iter().any(|r| r.state == "next") {
            let k = generate(self.alg).await?;
            self.store
                .signing_key_insert(&to_row(&k, &self.mk, "next", now_secs())?)
                .await?;
        }
        self.reload().await
    }

    /// Re-reads the key table (other nodes may have rotated).
    pub async fn reload(&self) -> Result<(), IdentityError> {
        let rows = self.store.signing_keys().await?;
        let st = build_state(&rows, &self.mk)?;
        self.state.store(Arc::new(st));
        Ok(())
    }

    /// Periodic maintenance: purge expired retired keys, rotate when due, keep a `next` key.
    pub async fn tick(&self) -> Result<(), IdentityError> {
        let now = now_secs();
        self.store.signing_keys_purge(now).await?;
        let rows = self.store.signing_keys().await?;
        let active = rows.iter().find(|r| r.state == "active");
        let next = rows.iter().find(|r| r.state == "next");
        if let (Some(a), Some(n)) = (active, next) {
            let due = a.activated_at.unwrap_or(a.created_at) + self.cfg.key_rotation_secs <= now;
            let published_long_enough = n.created_at + self.cfg.key_publish_lead_secs <= now;
            if due && published_long_enough {
                self.store
                    .signing_key_promote(&n.kid, now, now + self.cfg.max_token_lifetime())
                    .await?;
                tracing::info!(kid = %n.kid, "signing key rotated on schedule");
            }
        }
        self.ensure_next().await
    }

    /// Rotation on demand: the published `next` key starts signing, the old active key is
    /// retired (kept in the JWKS until its tokens expire), and a new `next` key is published.
    pub async fn rotate_now(&self) -> Result<String, IdentityError> {
        let rows = self.store.signing_keys().await?;
        let Some(n) = rows.iter().find(|r| r.state == "next") else {
            self.ensure_next().await?;
            return Box::pin(self.rotate_now()).await;
        };
        let now = now_secs();
        self.store
            .signing_key_promote(&n.kid, now, now + self.cfg.max_token_lifetime())
            .await?;
        tracing::info!(kid = %n.kid, "signing key rotated on demand");
        self.ensure_next().await?;
        Ok(n.kid.clone())
    }

    pub fn active(&self) -> Arc<SigningKey> {
        self.state.load().active.clone()
    }
    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.state.load().by_kid.get(kid).cloned()
    }
    pub fn jwks(&self) -> Arc<String> {
        self.state.load().jwks.clone()
    }
    pub fn list(&self) -> Vec<KeyInfo> {
        self.state
            .load()
            .rows
            .iter()
            .map(|r| KeyInfo {
                kid: r.kid.clone(),
                alg: r.alg.clone(),
                state: r.state.clone(),
                created_at: r.created_at,
                activated_at: r.activated_at,
                retired_at: r.retired_at,
                remove_after: r.remove_after,
            })
            .collect()
    }
}

async fn generate(alg: SigningAlg) -> Result<SigningKey, IdentityError> {
    tokio::task::spawn_blocking(move || SigningKey::generate(alg))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
        .map_err(|e| IdentityError::Internal(format!("key generation: {e}")))
}

fn to_row(
    k: &SigningKey,
    mk: &MasterKey,
    state: &str,
    now: i64,
) -> Result<SigningKeyRow, IdentityError> {
    let st = k.to_stored(mk);
    Ok(SigningKeyRow {
        kid: st.kid,
        alg: st.alg,
        cert_der: st.cert_der_b64,
        sealed_key: STANDARD.encode(&st.sealed_private_key),
        state: state.into(),
        created_at: now,
        activated_at: None,
        retired_at: None,
        remove_after: None,
    })
}

fn build_state(rows: &[SigningKeyRow], mk: &MasterKey) -> Result<RingState, IdentityError> {
    let mut by_kid = HashMap::new();
    let mut active = None;
    let mut keys = Vec::new();
    for r in rows {
        let sealed = STANDARD
            .decode(&r.sealed_key)
            .map_err(|e| IdentityError::Internal(format!("key {}: {e}", r.kid)))?;
        let st = StoredKey {
            kid: r.kid.clone(),
            alg: r.alg.clone(),
            cert_der_b64: r.cert_der.clone(),
            sealed_private_key: sealed,
        };
        let k = Arc::new(SigningKey::from_stored(&st, mk).map_err(|e| {
            IdentityError::Internal(format!("cannot open signing key {}: {e}", r.kid))
        })?);
        if r.state == "active" {
            active = Some(k.clone());
        }
        keys.push(k.public_jwk());
        by_kid.insert(r.kid.clone(), k);
    }
    let active = active.ok_or_else(|| IdentityError::Internal("no active signing key".into()))?;
    let jwks = Arc::new(serde_json::json!({ "keys": keys }).to_string());
    Ok(RingState {
        active,
        by_kid,
        rows: rows.to_vec(),
        jwks,
    })
}
