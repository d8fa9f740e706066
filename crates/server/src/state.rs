//! Shared state of the composed server.

use crate::config::ServerConfig;
use cloister_authorization::Rbac;
use cloister_identity::Identity;
use cloister_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

pub struct AppState {
    /// The ARM host: the provider registry and the providers behind it.
    pub host: cloister_arm::host::Host,
    pub cfg: ServerConfig,
    pub store: Store,
    pub id: Arc<Identity>,
    pub rbac: Arc<Rbac>,
    /// Audiences accepted on management and directory APIs.
    pub management_audiences: Vec<String>,
    pub prometheus: Option<PrometheusHandle>,
    pub default_subscription: String,
    /// The sandbox pools (None when this host cannot run sandboxes).
    pub sessions: Option<Arc<cloister_sessions::Manager>>,
    /// Sends session requests to the node that owns the session (with sessions on).
    pub forwarder: Option<Arc<dyn cloister_sessions::api::Forwarder>>,
    /// The credential manager (vault, runtime, caches).
    pub credentials: Arc<cloister_credentials::Credentials>,
    /// This state itself, for work that outlives a request (long-running operations).
    pub me: std::sync::OnceLock<std::sync::Weak<AppState>>,
}
