//! The credential manager inside the server: its vault and runtime, and a short-lived cache
//! of a connection's provider, connection and access policies for the token hot path.
//! Every write on this node clears the cache, so a removed access policy takes effect on the
//! next request; other nodes follow within a second.

use crate::state::AppState;
use cloister_credentials::model::{Policy, parse_policy};
use cloister_credentials::runtime::{Runtime, StatusChange};
use cloister_credentials::vault::{LocalKeyProvider, Vault};
use cloister_store::CredItem;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Entry = Arc<(Option<CredItem>, Option<CredItem>, Vec<Policy>)>;

pub struct Credentials {
    pub runtime: Arc<Runtime>,
    pub vault: Arc<Vault>,
    cache: moka::sync::Cache<String, Entry>,
    instances: moka::sync::Cache<String, bool>,
}

impl Credentials {
    pub async fn open(
        store: cloister_store::Store,
        mk: Arc<cloister_crypto::MasterKey>,
        ca_pem: Option<Vec<u8>>,
    ) -> anyhow::Result<Credentials> {
        let vault = Arc::new(
            Vault::open(store.clone(), Arc::new(LocalKeyProvider::new(mk)))
                .await
                .map_err(|e| anyhow::anyhow!("credential vault: {e}"))?,
        );
        let st2 = store.clone();
        let on_status = Box::new(move |c: StatusChange| {
            let store = st2.clone();
            tokio::spawn(async move {
                let err = c.error.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                set_connection_status(&store, &c.connection_lc, c.status, err).await;
            });
        });
        Ok(Credentials {
            runtime: Arc::new(Runtime::new(
                store,
                vault.clone(),
                cloister_credentials::oauth::client(ca_pem.as_deref()),
                on_status,
            )),
            vault,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            instances: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
        })
    }

    pub fn invalidate(&self) {
        self.cache.invalidate_all();
        self.instances.invalidate_all();
    }

    /// Whether a service instance exists (cached like the rest, for the gateway's hot path).
    pub async fn instance_exists(&self, st: &AppState, id: &str) -> bool {
        let key = id.to_lowercase();
        if let Some(b) = self.instances.get(&key) {
            return b;
        }
        let b = matches!(st.store.resource_get(id).await, Ok(Some(_)));
        self.instances.insert(key, b);
        b
    }

    /// The provider and connection (None if missing) and whether the caller is allowed.
    pub async fn lookup(
        &self,
        st: &AppState,
        provider_id: &str,
        conn_id: &str,
        oid: &str,
        tid: &str,
        appid: &str,
    ) -> Result<(Option<CredItem>, Option<CredItem>, bool), String> {
        let key = conn_id.to_lowercase();
        let e = match self.cache.get(&key) {
            Some(e) => e,
            None => {
                let p = st
                    .store
                    .cred_get(provider_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|p| p.kind == "provider");
                let c = st
                    .store
                    .cred_get(conn_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|c| {
                        c.kind == "connection" && c.parent_lc == provider_id.to_lowercase()
                    });
                let pols = match &c {
                    Some(c) => st
                        .store
                        .cred_children(&c.id, "policy")
                        .await
                        .map_err(|e| e.to_string())?
                        .iter()
                        .filter_map(|p| {
                            parse_policy(&serde_json::from_str(&p.properties).ok()?).ok()
                        })
                        .collect(),
                    None => vec![],
                };
                let e: Entry = Arc::new((p, c, pols));
                self.cache.insert(key, e.clone());
                e
            }
        };
        let allowed = e.2.iter().any(|p| p.allows(tid, oid, appid));
        Ok((e.0.clone(), e.1.clone(), allowed))
    }
}

/// Records a connection's status (and error, or none) on its resource; nothing is written
/// when it is already so.
pub async fn set_connection_status(
    store: &cloister_store::Store,
    connection: &str,
    status: &str,
    error: Option<(&str, &str)>,
) {
    let Ok(Some(it)) = store.cred_get(connection).await else {
        return;
    };
    let mut props: Value = serde_json::from_str(&it.properties).unwrap_or(json!({}));
    let wanted_error = error.map(|(code, message)| json!({"code": code, "message": message}));
    if props["status"] == status && props.get("error") == wanted_error.as_ref() {
        return;
    }
    props["status"] = json!(status);
    match wanted_error {
        Some(e) => props["error"] = e,
        None => {
            if let Some(m) = props.as_object_mut() {
                m.remove("error");
            }
        }
    }
    let _ = store
        .cred_set_properties(
            &it.id,
            &props.to_string(),
            &uuid::Uuid::new_v4().simple().to_string(),
            cloister_core::clock::now_secs(),
        )
        .await;
}

/// Adds a key version and re-wraps every stored data key under it (payloads untouched).
pub async fn rotate(cm: &Credentials) -> anyhow::Result<Value> {
    let version = cm
        .vault
        .rotate()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = cm
        .vault
        .rewrap_all(500)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(json!({
        "primaryVersion": version,
        "rewrapped": r.rewrapped,
        "skipped": r.skipped,
        "remaining": r.remaining,
    }))
}

pub async fn key_status(cm: &Credentials) -> Value {
    json!({
        "keyProvider": cm.vault.provider_id(),
        "primaryVersion": cm.vault.primary_version(),
        "versions": cm.vault.versions(),
        "pendingRewrap": cm.vault.pending_rewrap().await.ok(),
    })
}

/// Monthly rotation (and finishing any interrupted re-wrap), checked hourly.
pub async fn upkeep(cm: &Credentials) {
    const MONTH: Duration = Duration::from_secs(30 * 86400);
    match cm.vault.rotate_if_due(MONTH).await {
        Ok(Some(v)) => tracing::info!(version = v, "credential key ring rotated"),
        Ok(None) => {}
        Err(e) => tracing::warn!("credential key rotation: {e}"),
    }
    if cm.vault.pending_rewrap().await.unwrap_or(0) > 0
        && let Err(e) = cm.vault.rewrap_all(500).await
    {
        tracing::warn!("credential re-wrap: {e}");
    }
    metrics::gauge!("cloister_credential_records_pending_rewrap")
        .set(cm.vault.pending_rewrap().await.unwrap_or(0) as f64);
}
