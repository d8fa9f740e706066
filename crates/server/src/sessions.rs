//! The sandbox runtime of dynamic sessions, from the configuration, and the socket through
//! which code in sessions reaches the managed-identity endpoint. The session-pool resource
//! provider is `cloister_sessions::arm`.

use crate::config::ServerConfig;
use crate::state::AppState;
use cloister_sessions::Manager;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The sandbox runtime, or None (with the reason logged) when this host cannot run it.
pub fn build_manager(cfg: &ServerConfig) -> Option<Arc<Manager>> {
    if !cfg.sessions.enabled {
        tracing::info!("dynamic sessions are disabled by configuration");
        return None;
    }
    if !which("bwrap") {
        tracing::warn!(
            "dynamic sessions are off: bubblewrap (bwrap) is not installed; run scripts/install-deps.sh"
        );
        return None;
    }
    let s = &cfg.sessions;
    let work_dir = sandbox_dir(&cfg.data_dir);
    if cloister_sandbox::drops_privileges() {
        // Work dirs live outside data directories: remove those of data directories that are
        // gone, and record ours.
        let root = Path::new(cloister_sandbox::WORK_ROOT);
        let removed = cloister_sandbox::sweep_work_dirs(root);
        let stale = cloister_sandbox::sweep_stale_cgroup_parents(root);
        if removed + stale > 0 {
            tracing::info!(
                removed,
                stale,
                "removed the sandbox work dirs and cgroup parents of deleted data directories"
            );
        }
        let owner = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
        if let Err(e) = cloister_sandbox::mark_work_dir(&work_dir, &owner) {
            tracing::warn!("sandbox work dir {}: {e}", work_dir.display());
        }
    }
    let mut sc = cloister_sandbox::SandboxConfig::new(work_dir);
    let python = if s.python.exists() {
        s.python.clone()
    } else {
        tracing::warn!(
            "the session runtime {} is missing (build it with scripts/sandbox-runtime.sh); sessions use the system python3 without numpy, pandas or matplotlib",
            s.python.display()
        );
        "/usr/bin/python3".into()
    };
    // A runtime venv (DIR/bin/python with DIR/pyvenv.cfg) is bound read-only into each sandbox.
    if let Some(dir) = python.parent().and_then(Path::parent)
        && dir.join("pyvenv.cfg").exists()
    {
        sc = sc.with_runtime(dir);
    } else {
        sc.python = python;
    }
    // Starts queue behind a semaphore; on a loaded host an interpreter may still take a while.
    sc.start_timeout = std::time::Duration::from_secs(60);
    sc.limits.memory_bytes = s.memory_mb << 20;
    sc.limits.pids = s.pids;
    sc.limits.cpu_percent = s.cpu_percent;
    sc.data_bytes = s.data_mb << 20;
    sc.tmp_bytes = s.tmp_mb << 20;
    sc.cgroup_parent = cgroup_parent(&cfg.data_dir);
    let mut rt: Arc<dyn cloister_sessions::runtime::Runtime> =
        Arc::new(cloister_sessions::bwrap::BwrapRuntime::new(sc));
    if let Some(backend) = container_backend(cfg) {
        let mut c = cloister_sessions::custom::CustomRuntime::new(rt, backend);
        c.startup_timeout =
            std::time::Duration::from_secs(cfg.custom_containers.startup_timeout_secs.max(1));
        rt = Arc::new(c);
    }
    let mut m = Manager::new(rt);
    if let Some(mm) = Arc::get_mut(&mut m) {
        mm.refill_parallelism = s.refill_parallelism.max(1);
    }
    Some(m)
}

/// The container backend of CustomContainer pools, or None (with the reason logged) when they
/// are not enabled or this host cannot run them.
fn container_backend(
    cfg: &ServerConfig,
) -> Option<Arc<dyn cloister_sessions::container::ContainerBackend>> {
    let c = &cfg.custom_containers;
    if !c.enabled {
        return None;
    }
    let mut oc = cloister_sessions::oci::OciConfig::new(
        c.image_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("images")),
        c.state_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("containers")),
    );
    if let Some(r) = &c.runc {
        oc.runc = r.clone();
    }
    if c.runsc.is_some() {
        oc.runsc = c.runsc.clone();
    }
    oc.plain_http = c.plain_http_registries.clone();
    oc.default_memory = c.memory_mb << 20;
    oc.pids_limit = c.pids as i64;
    match cloister_sessions::oci::OciBackend::new(oc) {
        Ok(b) => {
            tracing::info!("custom containers enabled");
            Some(Arc::new(b))
        }
        Err(e) => {
            tracing::error!("custom containers are off: {e}");
            None
        }
    }
}

/// The sandboxes' work directory (agent script, generated `/etc` files, identity socket). A
/// server running as root starts bwrap as uid 65534, which cannot enter the private (0700) data
/// directory, so it uses a world-traversable directory of its own under
/// [`cloister_sandbox::WORK_ROOT`], named like its cgroup parent; nothing secret is in it.
fn sandbox_dir(data_dir: &Path) -> PathBuf {
    if cloister_sandbox::drops_privileges() {
        Path::new(cloister_sandbox::WORK_ROOT).join(cgroup_parent(data_dir))
    } else {
        data_dir.join("sandbox")
    }
}

/// One cgroup parent per data directory: a restarted server sweeps what its previous
/// process left, and never touches another server's sandboxes.
fn cgroup_parent(data_dir: &Path) -> String {
    let p = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let h = cloister_crypto::sha256_hex(p.to_string_lossy().as_bytes());
    format!("cloister-{}", &h[..12])
}

/// The socket that code in sessions reaches the managed-identity endpoint through.
pub fn identity_socket(cfg: &ServerConfig) -> PathBuf {
    sandbox_dir(&cfg.data_dir).join("identity.sock")
}

/// Serves `/msi/token` (and nothing else) on the identity socket.
pub async fn serve_identity_socket(st: &AppState) -> anyhow::Result<()> {
    if st.sessions.is_none() {
        return Ok(());
    }
    let path = identity_socket(&st.cfg);
    // Sandboxes (bwrap included) run as uid 65534: the directory is 0755 and the socket 0666;
    // the binding secret, not the socket mode, is the guard.
    cloister_sandbox::prepare_work_dir(path.parent().unwrap_or(Path::new("/")))?;
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    }
    let app = cloister_identity::api::msi_router(st.id.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!("identity socket: {e}");
        }
    });
    Ok(())
}
