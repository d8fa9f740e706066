//! The credential manager as a running service: its vault and runtime, the handles its
//! management API and gateway share (store, master key, public URL), and a short-lived cache
//! of a connection's provider, connection and access policies for the token hot path. Every
//! write on this node clears the cache, so a removed access policy takes effect on the next
//! request; other nodes follow within a second.

use crate::model::{Policy, parse_policy};
use crate::runtime::{Runtime, StatusChange};
use crate::vault::{LocalKeyProvider, Vault};
use cloister_crypto::MasterKey;
use cloister_store::{CredItem, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Entry = Arc<(Option<CredItem>, Option<CredItem>, Vec<Policy>)>;

pub struct Credentials {
    pub runtime: Arc<Runtime>,
    pub vault: Arc<Vault>,
    pub(crate) store: Store,
    /// Seals pending logins and hashes their one-time `state`.
    pub(crate) mk: Arc<MasterKey>,
    /// The externally visible base URL (`https://host:port`), no trailing `/`.
    pub(crate) public_url: String,
    cache: moka::sync::Cache<String, Entry>,
    instances: moka::sync::Cache<String, bool>,
}

impl Credentials {
    /// Opens the vault (its key ring wrapped by the master key) and starts the runtime. The
    /// OAuth client also trusts `ca_pem` (Cloister's own CA, for `cloister` providers).
    pub async fn open(
        store: Store,
        mk: Arc<MasterKey>,
        ca_pem: Option<Vec<u8>>,
        public_url: String,
    ) -> Result<Credentials, String> {
        let vault = Arc::new(
            Vault::open(store.clone(), Arc::new(LocalKeyProvider::new(mk.clone())))
                .await
                .map_err(|e| format!("credential vault: {e}"))?,
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
                store.clone(),
                vault.clone(),
                crate::oauth::client(ca_pem.as_deref()),
                on_status,
            )),
            vault,
            store,
            mk,
            public_url: public_url.trim_end_matches('/').to_string(),
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

    /// The gateway URL of a service instance (`{public}/gateway/subscriptions/…/service/{name}`).
    pub fn gateway_url(&self, instance_id: &str) -> String {
        let p: Vec<&str> = instance_id.trim_matches('/').split('/').collect();
        format!(
            "{}/gateway/subscriptions/{}/resourceGroups/{}/service/{}",
            self.public_url,
            p.get(1).unwrap_or(&""),
            p.get(3).unwrap_or(&""),
            p.last().unwrap_or(&"")
        )
    }

    /// The OAuth redirect (consent callback) URL of a service instance.
    pub fn redirect_url(&self, instance_id: &str) -> String {
        let p: Vec<&str> = instance_id.trim_matches('/').split('/').collect();
        format!(
            "{}/credential-manager/redirect/{}/{}/{}",
            self.public_url,
            p.get(1).unwrap_or(&""),
            p.get(3).unwrap_or(&""),
            p.last().unwrap_or(&"")
        )
    }

    /// Whether a service instance exists (cached like the rest, for the gateway's hot path).
    pub async fn instance_exists(&self, id: &str) -> bool {
        let key = id.to_lowercase();
        if let Some(b) = self.instances.get(&key) {
            return b;
        }
        let b = matches!(self.store.resource_get(id).await, Ok(Some(_)));
        self.instances.insert(key, b);
        b
    }

    /// The provider and connection (None if missing; a connection only if it is the named
    /// provider's) and whether the caller is allowed.
    pub async fn lookup(
        &self,
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
                let p = self
                    .store
                    .cred_get(provider_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|p| p.kind == "provider");
                let c = self
                    .store
                    .cred_get(conn_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|c| {
                        c.kind == "connection" && c.parent_lc == provider_id.to_lowercase()
                    });
                let pols = match &c {
                    Some(c) => self
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

    /// Records a connection's status and clears the caches.
    pub(crate) async fn set_status(&self, conn_id: &str, status: &str, err: Option<(&str, &str)>) {
        set_connection_status(&self.store, conn_id, status, err).await;
        self.invalidate();
    }

    /// Adds a key version and re-wraps every stored data key under it (payloads untouched).
    pub async fn rotate(&self) -> Result<Value, String> {
        let version = self.vault.rotate().await.map_err(|e| e.to_string())?;
        let r = self
            .vault
            .rewrap_all(500)
            .await
            .map_err(|e| e.to_string())?;
        Ok(json!({
            "primaryVersion": version,
            "rewrapped": r.rewrapped,
            "skipped": r.skipped,
            "remaining": r.remaining,
        }))
    }

    pub async fn key_status(&self) -> Value {
        json!({
            "keyProvider": self.vault.provider_id(),
            "primaryVersion": self.vault.primary_version(),
            "versions": self.vault.versions(),
            "pendingRewrap": self.vault.pending_rewrap().await.ok(),
        })
    }

    /// Monthly rotation (and finishing any interrupted re-wrap); the server calls it hourly.
    pub async fn upkeep(&self) {
        const MONTH: Duration = Duration::from_secs(30 * 86400);
        match self.vault.rotate_if_due(MONTH).await {
            Ok(Some(v)) => tracing::info!(version = v, "credential key ring rotated"),
            Ok(None) => {}
            Err(e) => tracing::warn!("credential key rotation: {e}"),
        }
        if self.vault.pending_rewrap().await.unwrap_or(0) > 0
            && let Err(e) = self.vault.rewrap_all(500).await
        {
            tracing::warn!("credential re-wrap: {e}");
        }
        metrics::gauge!("cloister_credential_records_pending_rewrap")
            .set(self.vault.pending_rewrap().await.unwrap_or(0) as f64);
    }
}

/// Records a connection's status (and error, or none) on its resource; nothing is written
/// when it is already so.
pub async fn set_connection_status(
    store: &Store,
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
