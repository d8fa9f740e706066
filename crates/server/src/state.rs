//! Shared state of the composed server.

use crate::config::ServerConfig;
use crate::rbac::Rbac;
use cloister_identity::Identity;
use cloister_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

pub struct AppState {
    pub cfg: ServerConfig,
    pub store: Store,
    pub id: Arc<Identity>,
    pub rbac: Arc<Rbac>,
    /// Audiences accepted on management and directory APIs.
    pub management_audiences: Vec<String>,
    pub prometheus: Option<PrometheusHandle>,
    pub default_subscription: String,
}
