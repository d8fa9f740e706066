//! Custom-container sessions: what a `CustomContainer` pool needs from an image store and an
//! OCI runtime. The pool (the `custom` module) owns the identifier table, the ready pool, limits,
//! lifecycles and the proxy; a [`ContainerBackend`] owns images, bundles, network namespaces
//! and the runtime processes. The embedded backend is `oci::OciBackend` (the image
//! store of `cloister-images` and runc/runsc through `cloister-containers`); a Kubernetes
//! backend would implement the same two traits.

use async_trait::async_trait;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Which OCI runtime runs a pool's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeClass {
    /// runc: namespaces, cgroups, seccomp and dropped capabilities on the host kernel.
    #[default]
    Runc,
    /// runsc (gVisor): the container's system calls are served by gVisor's user-space kernel.
    Runsc,
}

impl RuntimeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeClass::Runc => "runc",
            RuntimeClass::Runsc => "runsc",
        }
    }

    /// `runc`, or `runsc`/`gvisor`, matched without regard to case.
    pub fn parse(s: &str) -> Option<RuntimeClass> {
        match s.trim().to_ascii_lowercase().as_str() {
            "runc" => Some(RuntimeClass::Runc),
            "runsc" | "gvisor" => Some(RuntimeClass::Runsc),
            _ => None,
        }
    }
}

/// Credentials for pulling a pool's image, already resolved from the pool's secrets (or from
/// its managed identity). `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryLogin {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An image resolved, verified and unpacked by the backend, ready to start containers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// The reference as the pool names it.
    pub reference: String,
    /// The manifest digest (`sha256:…`) that every session of this template runs.
    pub digest: String,
    /// The image config's entrypoint, cmd, env, working dir and user, for the launch spec.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Why an image could not be prepared. The pool reports it in `templateUpdateStatus`
/// (`imagePullFailCount`) and to the caller that waited; messages never hold a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrepareError {
    #[error("image not found: {0}")]
    NotFound(String),
    #[error("registry refused the credentials: {0}")]
    Unauthorized(String),
    #[error("image pull failed: {0}")]
    Failed(String),
}

/// One container to start: the template resolved (secrets substituted, command = the
/// template's command + args, or the image's entrypoint + cmd as Kubernetes does).
#[derive(Clone)]
pub struct LaunchSpec {
    pub image: PreparedImage,
    pub runtime: RuntimeClass,
    /// `process.args`; never empty.
    pub args: Vec<String>,
    /// `NAME=value` entries: the image's env overridden by the template's (secret values
    /// included: they are the container's own, never logged).
    pub env: Vec<String>,
    /// CPU cores (e.g. 0.5) and memory in bytes; None = the backend's default cap.
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// The port the container serves on (`ingress.targetPort`).
    pub target_port: u16,
    /// Egress beyond the container's own network namespace (`EgressEnabled`).
    pub egress: bool,
}

impl fmt::Debug for LaunchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // env may hold secret values: names only.
        let names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n))
            .collect();
        f.debug_struct("LaunchSpec")
            .field("image", &self.image.digest)
            .field("runtime", &self.runtime)
            .field("args", &self.args)
            .field("env", &names)
            .field("cpu", &self.cpu)
            .field("memory_bytes", &self.memory_bytes)
            .field("target_port", &self.target_port)
            .field("egress", &self.egress)
            .finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

#[async_trait]
pub trait ContainerBackend: Send + Sync + 'static {
    /// Resolves `reference`, pulls what the store lacks (verifying digests) and unpacks it
    /// once per digest. Concurrent calls for one image share the work.
    async fn prepare(
        &self,
        reference: &str,
        login: Option<&RegistryLogin>,
    ) -> Result<PreparedImage, PrepareError>;
    /// Starts a container in its own network namespace, cgroup and writable layer; returns
    /// once the runtime has started it (not once it listens: the pool probes `addr`).
    async fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, LaunchError>;
    /// Which runtime classes this host can run (runsc may be missing or broken).
    fn available(&self, class: RuntimeClass) -> Result<(), String>;
    /// Removes what a previous process of this server left (containers, netns, mounts).
    fn sweep(&self);
}

#[async_trait]
pub trait Container: Send + Sync {
    /// A stable id (the session's `etag`).
    fn id(&self) -> &str;
    /// Where the host reaches the container's `targetPort`.
    fn addr(&self) -> SocketAddr;
    /// Whether the container's main process is still running.
    fn is_running(&self) -> bool;
    /// Waits until the main process exits or `timeout` passes; Some(exit code) if it exited.
    async fn wait_exit(&self, timeout: Duration) -> Option<i32>;
    /// The container's memory use (its cgroup's), for status and benchmarks.
    fn memory_bytes(&self) -> Option<u64>;
    /// The last bytes of its stdout and stderr (console log), for diagnostics.
    fn console_tail(&self, max: usize) -> String;
    /// Kills the container and removes its cgroup, network namespace and writable layer.
    async fn stop(self: Box<Self>);
}

/// What a custom pool's current template did so far (for its `templateUpdateStatus`).
#[derive(Debug, Clone, Default)]
pub struct TemplateCounts {
    pub created_ms: i64,
    pub image_pull_fail: u64,
    pub crash: u64,
    pub started: u64,
    pub last_error: Option<String>,
    pub digest: Option<String>,
}

/// The custom-container side of a sessions runtime (what the pool manager and the provider
/// need of it), so that the generic `Runtime` trait does not name the runtime that has it.
pub trait CustomPools: Send + Sync {
    fn backend(&self) -> &std::sync::Arc<dyn ContainerBackend>;
    /// The counts of a pool's current template, if it has started anything yet.
    fn counts(&self, pool_id: &str) -> Option<TemplateCounts>;
    /// Forgets a deleted pool's pinned image and counts.
    fn forget(&self, pool_id: &str);
}
