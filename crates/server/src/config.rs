//! Server configuration: a TOML file, then `CLOISTER_*` environment variables, then flags
//! (each later source wins).

use cloister_identity::config::IdentityConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// HTTPS listener for every API.
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener (managed-identity endpoints and local use).
    pub http_listen: Option<SocketAddr>,
    /// `sqlite://…` (default: `DATA_DIR/cloister.db`) or `postgres://…`.
    pub store: Option<String>,
    /// The public HTTPS base URL (default `https://<listen>`).
    pub public_url: Option<String>,
    /// Extra DNS names for the server certificate.
    pub tls_names: Vec<String>,
    /// Plain resource types (`Namespace/type[/child…]`) that the management API stores as
    /// given, with ARM's identity block, for resources of the user's own (an app that
    /// `cloister run` gives a managed identity). Every other type must be a registered
    /// provider's. Environment: `CLOISTER_ARM_TYPES`, comma-separated.
    pub arm_types: Vec<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter such as `info` or `cloister=debug`.
    pub log_level: String,
    /// Name of this host's resource (its managed identities are served on IMDS).
    pub host_name: String,
    /// Maximum request body size in bytes.
    pub max_body_bytes: usize,
    /// After SIGTERM: how long in-flight requests may run before the process exits anyway
    /// (seconds). New work gets 503 with `Retry-After` meanwhile.
    pub drain_timeout_secs: u64,
    pub http: HttpConfig,
    pub identity: IdentityConfig,
    pub sessions: SessionsConfig,
    pub cluster: ClusterConfig,
    pub custom_containers: CustomContainersConfig,
}

/// Sessions across nodes: every node with sessions on registers in the store, leases the
/// sessions it runs there, and serves the others on an internal mutual-TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique among the nodes on one store (default: one kept in
    /// `DATA_DIR/node.id`).
    pub node_id: Option<String>,
    /// The internal listener (`CLOISTER_INTERNAL_LISTEN`; port 0 picks a free one).
    pub internal_listen: SocketAddr,
    /// How other nodes reach it (`CLOISTER_INTERNAL_URL`; default `https://<internal_listen>`).
    pub internal_url: Option<String>,
    /// A node silent for this long is dead: its sessions and their share of
    /// `maxConcurrentSessions` are freed (`CLOISTER_LEASE_TTL`).
    pub lease_ttl_secs: u64,
    /// Sandboxes this node runs at most, for placement (`CLOISTER_MAX_SANDBOXES`).
    pub max_sandboxes: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            internal_listen: "127.0.0.1:0".parse().expect("valid"),
            internal_url: None,
            lease_ttl_secs: 10,
            max_sandboxes: 600,
        }
    }
}

/// CustomContainer session pools: the pool's own OCI image, run with runc (or runsc) in a
/// network namespace of its own per session. Off unless enabled (needs root).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomContainersConfig {
    pub enabled: bool,
    /// The image store (blobs, unpacked root filesystems); default `DATA_DIR/images`.
    pub image_dir: Option<PathBuf>,
    /// Per-container state (bundles, writable layers, runtime state); default
    /// `DATA_DIR/containers`.
    pub state_dir: Option<PathBuf>,
    /// The OCI runtimes (default: found on PATH; runsc is optional: `runtimeClassName: runsc`
    /// needs it).
    pub runc: Option<PathBuf>,
    pub runsc: Option<PathBuf>,
    /// Registries reached over plain HTTP (`host:port`), e.g. a loopback test registry.
    pub plain_http_registries: Vec<String>,
    /// Default memory cap of a container whose template gives none (MiB), and its process cap.
    pub memory_mb: u64,
    pub pids: u64,
    /// How long a container without a startup probe may take to accept a TCP connection on
    /// its target port (seconds).
    pub startup_timeout_secs: u64,
}

impl Default for CustomContainersConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            image_dir: None,
            state_dir: None,
            runc: None,
            runsc: None,
            plain_http_registries: vec![],
            memory_mb: 512,
            pids: 256,
            startup_timeout_secs: 60,
        }
    }
}

/// Connection limits of each listener (HTTPS and HTTP alike).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A client must finish a request's headers (HTTP/1.1, including the wait for the next
    /// request on a kept-alive connection) within this many seconds; the TLS handshake too.
    pub header_timeout_secs: u64,
    /// A connection with no request in flight for this many seconds is closed (HTTP/2 too).
    pub idle_timeout_secs: u64,
    /// Open connections per listener; further ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// After a response that left the request body unread (an early 401/403/413/415), the
    /// connection is half-closed and the rest of the body read and discarded for up to this
    /// many seconds, so the client reads the status instead of a reset.
    pub linger_secs: u64,
    /// ... and up to this many bytes.
    pub linger_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout_secs: 15,
            idle_timeout_secs: 60,
            max_connections: 1024,
            linger_secs: 30,
            linger_bytes: 1 << 30,
        }
    }
}

/// Dynamic sessions: the sandbox runtime and per-session limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Serve session pools (needs bubblewrap and root for cgroups).
    pub enabled: bool,
    /// The interpreter of the runtime built by `scripts/sandbox-runtime.sh`.
    pub python: PathBuf,
    /// Memory cap per session (MiB), process cap, CPU share (percent of one core).
    pub memory_mb: u64,
    pub pids: u64,
    pub cpu_percent: u32,
    /// Size caps of `/mnt/data` and `/tmp` in each session (MiB).
    pub data_mb: u64,
    pub tmp_mb: u64,
    /// Ready sessions started at once while refilling a pool.
    pub refill_parallelism: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            python: PathBuf::from("/var/lib/cloister/runtime/python/bin/python"),
            memory_mb: 1024,
            pids: 128,
            cpu_percent: 100,
            data_mb: 256,
            tmp_mb: 64,
            refill_parallelism: 2,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./cloister-data"),
            listen: "127.0.0.1:8443".parse().expect("valid"),
            http_listen: None,
            store: None,
            public_url: None,
            tls_names: vec![],
            arm_types: vec![],
            log_format: "text".into(),
            log_level: "info".into(),
            host_name: "local".into(),
            max_body_bytes: 1 << 20,
            drain_timeout_secs: 30,
            http: HttpConfig::default(),
            identity: IdentityConfig::default(),
            sessions: SessionsConfig::default(),
            cluster: ClusterConfig::default(),
            custom_containers: CustomContainersConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file (if given) and applies `CLOISTER_*` environment overrides.
    pub fn load(file: Option<&Path>) -> anyhow::Result<ServerConfig> {
        let mut cfg = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", p.display()))?
            }
            None => ServerConfig::default(),
        };
        let env = |k: &str| {
            std::env::var(format!("CLOISTER_{k}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = env("DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Some(v) = env("LISTEN") {
            cfg.listen = v
                .parse()
                .map_err(|e| anyhow::anyhow!("CLOISTER_LISTEN: {e}"))?;
        }
        if let Some(v) = env("HTTP_LISTEN") {
            cfg.http_listen = Some(
                v.parse()
                    .map_err(|e| anyhow::anyhow!("CLOISTER_HTTP_LISTEN: {e}"))?,
            );
        }
        if let Some(v) = env("STORE") {
            cfg.store = Some(v);
        }
        if let Some(v) = env("PUBLIC_URL") {
            cfg.public_url = Some(v);
        }
        if let Some(v) = env("LOG_FORMAT") {
            cfg.log_format = v;
        }
        if let Some(v) = env("LOG_LEVEL") {
            cfg.log_level = v;
        }
        if let Some(v) = env("SANDBOX_PYTHON") {
            cfg.sessions.python = v.into();
        }
        if let Some(v) = env("SESSIONS") {
            cfg.sessions.enabled = !matches!(v.as_str(), "0" | "false" | "off");
        }
        if let Some(v) = env("CUSTOM_CONTAINERS") {
            cfg.custom_containers.enabled = !matches!(v.as_str(), "0" | "false" | "off");
        }
        if let Some(v) = env("PLAIN_HTTP_REGISTRIES") {
            cfg.custom_containers.plain_http_registries = v
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
        }
        if let Some(v) = env("ARM_TYPES") {
            cfg.arm_types = v
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
        }
        let num = |k: &str| -> anyhow::Result<Option<u64>> {
            env(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|e| anyhow::anyhow!("CLOISTER_{k}: {e}"))
                })
                .transpose()
        };
        if let Some(v) = num("DRAIN_TIMEOUT")? {
            cfg.drain_timeout_secs = v;
        }
        if let Some(v) = num("HEADER_TIMEOUT")? {
            cfg.http.header_timeout_secs = v;
        }
        if let Some(v) = num("IDLE_TIMEOUT")? {
            cfg.http.idle_timeout_secs = v;
        }
        if let Some(v) = num("MAX_CONNECTIONS")? {
            cfg.http.max_connections = v as usize;
        }
        if let Some(v) = env("SIGNING_ALG") {
            cfg.identity.signing_alg = v;
        }
        if let Some(v) = env("NODE_ID") {
            cfg.cluster.node_id = Some(v);
        }
        if let Some(v) = env("INTERNAL_LISTEN") {
            cfg.cluster.internal_listen = v
                .parse()
                .map_err(|e| anyhow::anyhow!("CLOISTER_INTERNAL_LISTEN: {e}"))?;
        }
        if let Some(v) = env("INTERNAL_URL") {
            cfg.cluster.internal_url = Some(v);
        }
        if let Some(v) = num("LEASE_TTL")? {
            cfg.cluster.lease_ttl_secs = v;
        }
        if let Some(v) = num("MAX_SANDBOXES")? {
            cfg.cluster.max_sandboxes = u32::try_from(v).unwrap_or(u32::MAX);
        }
        Ok(cfg)
    }

    pub fn store_url(&self) -> String {
        self.store.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("cloister.db").display()
            )
        })
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn http_base(&self) -> Option<String> {
        self.http_listen.map(|a| format!("http://{a}"))
    }
}
