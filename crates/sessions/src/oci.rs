//! The embedded [`ContainerBackend`]: images from `cloister-images`' store, containers from
//! `cloister-containers` (runc, or runsc for the gVisor tier).
//!
//! ```no_run
//! # fn demo() -> Result<(), String> {
//! use cloister_sessions::oci::{OciBackend, OciConfig};
//! let mut cfg = OciConfig::new("/var/lib/cloister/images", "/var/lib/cloister/containers");
//! cfg.runsc = Some("runsc".into());
//! cfg.plain_http = vec!["127.0.0.1:5000".into()];
//! let backend = OciBackend::new(cfg)?;
//! # Ok(()) }
//! ```

use crate::container::{
    Container, ContainerBackend, LaunchError, LaunchSpec, PrepareError, PreparedImage,
    RegistryLogin, RuntimeClass,
};
use async_trait::async_trait;
use cloister_containers::{Containers, Launch, RunningContainer, Runtime};
use cloister_images::{ImageStore, PullError, PullOptions, RegistryAuth};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the server configures for custom-container pools.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// The image store's root (`cloister_images::ImageStore::open`).
    pub image_dir: PathBuf,
    /// The containers' state (bundles, writable layers, runtime state, console logs).
    pub state_dir: PathBuf,
    /// The runc binary (default `runc` on PATH).
    pub runc: PathBuf,
    /// The runsc binary; None = the gVisor tier is unavailable.
    pub runsc: Option<PathBuf>,
    /// Registry hosts (`host:port`) pulled from over plain HTTP; every other one is HTTPS.
    pub plain_http: Vec<String>,
    /// A pull's time limit and byte limit (downloaded, and separately unpacked).
    pub pull_timeout: Duration,
    pub pull_max_bytes: u64,
    /// Memory per container when the template names none (bytes; default 512 MiB).
    pub default_memory: u64,
    /// Processes/threads per container (default 256).
    pub pids_limit: i64,
    /// The writable layer's cap (bytes; default 256 MiB) and /tmp's (default 64 MiB).
    pub writable_bytes: u64,
    pub tmp_bytes: u64,
    /// Host uid:gid that images running as root run as (default 65532:65532).
    pub root_uid: u32,
    pub root_gid: u32,
}

impl OciConfig {
    pub fn new(image_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> OciConfig {
        let state_dir = state_dir.into();
        let d = cloister_containers::Config::new(state_dir.clone());
        OciConfig {
            image_dir: image_dir.into(),
            state_dir,
            runc: d.runc,
            runsc: d.runsc,
            plain_http: vec![],
            pull_timeout: Duration::from_secs(600),
            pull_max_bytes: 8 << 30,
            default_memory: d.default_memory,
            pids_limit: d.pids_limit,
            writable_bytes: d.writable_bytes,
            tmp_bytes: d.tmp_bytes,
            root_uid: d.root_uid,
            root_gid: d.root_gid,
        }
    }
}

pub struct OciBackend {
    images: ImageStore,
    containers: Containers,
    pull: PullOptions,
}

impl OciBackend {
    /// Opens the image store and the containers' state dir, and probes runsc (if configured).
    pub fn new(cfg: OciConfig) -> Result<OciBackend, String> {
        let images = ImageStore::open(&cfg.image_dir)
            .map_err(|e| format!("image store {}: {e}", cfg.image_dir.display()))?;
        let mut c = cloister_containers::Config::new(cfg.state_dir.clone());
        c.runc = cfg.runc;
        c.runsc = cfg.runsc;
        c.default_memory = cfg.default_memory;
        c.pids_limit = cfg.pids_limit;
        c.writable_bytes = cfg.writable_bytes;
        c.tmp_bytes = cfg.tmp_bytes;
        c.root_uid = cfg.root_uid;
        c.root_gid = cfg.root_gid;
        let containers = Containers::new(c)?;
        Ok(OciBackend {
            images,
            containers,
            pull: PullOptions {
                plain_http: cfg.plain_http,
                timeout: cfg.pull_timeout,
                max_bytes: cfg.pull_max_bytes,
            },
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }
}

fn runtime(c: RuntimeClass) -> Runtime {
    match c {
        RuntimeClass::Runc => Runtime::Runc,
        RuntimeClass::Runsc => Runtime::Runsc,
    }
}

#[async_trait]
impl ContainerBackend for OciBackend {
    async fn prepare(
        &self,
        reference: &str,
        login: Option<&RegistryLogin>,
    ) -> Result<PreparedImage, PrepareError> {
        let auth = login.map(|l| RegistryAuth {
            username: l.username.clone(),
            password: l.password.clone(),
        });
        let image = self
            .images
            .pull(reference, auth.as_ref(), &self.pull)
            .await
            .map_err(|e| match e {
                PullError::NotFound(m) => PrepareError::NotFound(m),
                PullError::Unauthorized(m) => PrepareError::Unauthorized(m),
                other => PrepareError::Failed(other.to_string()),
            })?;
        Ok(PreparedImage {
            reference: reference.to_string(),
            digest: image.digest,
            entrypoint: image.config.entrypoint,
            cmd: image.config.cmd,
            env: image.config.env,
            working_dir: image.config.working_dir,
            user: image.config.user,
        })
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, LaunchError> {
        let image = self.images.get(&spec.image.digest).ok_or_else(|| {
            LaunchError(format!("image {} is not in the store", spec.image.digest))
        })?;
        let launch = Launch {
            rootfs: image.rootfs,
            runtime: runtime(spec.runtime),
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.image.working_dir.clone(),
            user: spec.image.user.clone(),
            cpu: spec.cpu,
            memory_bytes: spec.memory_bytes,
            port: spec.target_port,
            egress: spec.egress,
        };
        let c = self.containers.start(&launch).await.map_err(LaunchError)?;
        Ok(Box::new(OciContainer(c)))
    }

    fn available(&self, class: RuntimeClass) -> Result<(), String> {
        self.containers.available(runtime(class))
    }

    fn sweep(&self) {
        let n = self.containers.sweep();
        if n > 0 {
            tracing::info!(
                containers = n,
                "removed containers left by a previous process"
            );
        }
    }
}

struct OciContainer(RunningContainer);

#[async_trait]
impl Container for OciContainer {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
    fn is_running(&self) -> bool {
        self.0.is_running()
    }
    async fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        self.0.wait_exit(timeout).await
    }
    fn memory_bytes(&self) -> Option<u64> {
        self.0.memory_bytes()
    }
    fn console_tail(&self, max: usize) -> String {
        self.0.console_tail(max)
    }
    async fn stop(self: Box<Self>) {
        self.0.stop().await
    }
}
