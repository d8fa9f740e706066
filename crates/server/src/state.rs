//! Shared state of the composed server.

use crate::config::ServerConfig;
use crate::rbac::Rbac;
use cloister_identity::Identity;
use cloister_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// A pool's in-session identity binding: (principals, secret, expiry).
pub type PoolBinding = (Vec<String>, String, i64);

pub struct AppState {
    /// The ARM provider registry (types, api-versions, actions).
    pub arm: cloister_arm::registry::Registry,
    pub cfg: ServerConfig,
    pub store: Store,
    pub id: Arc<Identity>,
    pub rbac: Arc<Rbac>,
    /// Audiences accepted on management and directory APIs.
    pub management_audiences: Vec<String>,
    pub prometheus: Option<PrometheusHandle>,
    pub default_subscription: String,
    /// Session pools (None when this host cannot run sandboxes).
    pub sessions: Option<Arc<cloister_sessions::Manager>>,
    /// Per pool: (principals, binding secret, expiry) of its in-session identities.
    /// The credential manager (vault, runtime).
    pub credentials: Option<crate::credentials::Credentials>,
    pub pool_bindings: std::sync::Mutex<std::collections::HashMap<String, PoolBinding>>,
}
