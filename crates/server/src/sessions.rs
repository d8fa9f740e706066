//! Glue between the management plane and dynamic sessions: the sandbox runtime from the
//! configuration, the data plane's authorizer (Cloister tokens + the Session Executor data
//! action), and the `Microsoft.App/sessionPools` resource kept in step with the pool manager.

use crate::config::ServerConfig;
use crate::state::AppState;
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_identity::Identity;
use cloister_sessions::Manager;
use cloister_sessions::api::{Authorizer, endpoint};
use cloister_sessions::error::DpError;
use cloister_sessions::runtime::SessionSpec;
use cloister_sessions::spec::PoolSpec;
use cloister_store::Resource;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const POOL_TYPE: &str = "Microsoft.App/sessionPools";
/// The data action the Session Executor role grants.
pub const EXECUTE: &str = "Microsoft.App/sessionPools/interpreters/execute/action";
pub const AUDIENCES: [&str; 4] = [
    "https://dynamicsessions.io",
    "https://dynamicsessions.io/",
    "https://acasessions.io",
    "https://acasessions.io/",
];

pub fn is_pool(t: &str) -> bool {
    t.eq_ignore_ascii_case(POOL_TYPE)
}

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
    let rt = Arc::new(cloister_sessions::bwrap::BwrapRuntime::new(sc));
    let mut m = Manager::new(rt);
    if let Some(mm) = Arc::get_mut(&mut m) {
        mm.refill_parallelism = s.refill_parallelism.max(1);
    }
    Some(m)
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

pub struct TokenAuthorizer {
    pub id: Arc<Identity>,
    pub rbac: Arc<crate::rbac::Rbac>,
}

impl Authorizer for TokenAuthorizer {
    fn authorize(&self, authorization: Option<&str>, pool_id: &str) -> Result<String, DpError> {
        let Some(h) = authorization else {
            return Err(DpError::new(
                401,
                "Unauthorized",
                "Authentication failed. The 'Authorization' header is missing; send a bearer token for https://dynamicsessions.io.",
            ));
        };
        let token = match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(DpError::new(
                    401,
                    "Unauthorized",
                    "Authentication failed. The 'Authorization' header must be 'Bearer <token>'.",
                ));
            }
        };
        let auds: Vec<String> = AUDIENCES.iter().map(|s| s.to_string()).collect();
        let claims = self.id.validate(token, &auds).map_err(|e| {
            DpError::new(
                401,
                "InvalidAuthenticationToken",
                format!("The access token is invalid: {e}. Session pools accept tokens for https://dynamicsessions.io or https://acasessions.io."),
            )
        })?;
        let sc = Scope::parse(pool_id)
            .map_err(|e| DpError::bad(format!("The pool path is not valid: {e}")))?;
        self.rbac
            .authorize_data(&claims.oid, EXECUTE, &sc)
            .map_err(|e| DpError::new(403, "PermissionDenied", e.message))?;
        Ok(claims.oid)
    }
}

/// Validates and normalises a pool's `properties` on PUT/PATCH; returns the stored text.
pub fn prepare(
    r: &Resource,
    props: Option<&Value>,
    patch: bool,
    name: &str,
) -> Result<String, ArmError> {
    let ok_name = (2..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok_name {
        return Err(ArmError::bad_request(
            "InvalidResourceName",
            format!(
                "The session pool name '{name}' is not valid: use 2-63 lower-case letters, digits and hyphens, starting with a letter."
            ),
        ));
    }
    let base = if patch {
        serde_json::from_str::<Value>(&r.properties)
            .ok()
            .and_then(|v| PoolSpec::parse(&v, None).ok())
    } else {
        None
    };
    let empty = json!({});
    let spec = PoolSpec::parse(props.unwrap_or(&empty), base.as_ref())
        .map_err(|m| ArmError::bad_request("InvalidRequestContent", m))?;
    for i in &spec.identities {
        let known = if i.identity == "system" {
            r.system_principal_id.is_some()
        } else {
            r.user_identities
                .iter()
                .any(|u| u.eq_ignore_ascii_case(&i.identity))
        };
        if !known {
            return Err(ArmError::bad_request(
                "InvalidManagedIdentitySettings",
                format!(
                    "managedIdentitySettings names '{}', which is not an identity of this session pool; add it to the pool's 'identity' block first.",
                    i.identity
                ),
            ));
        }
    }
    Ok(spec.to_stored().to_string())
}

fn spec_of(r: &Resource) -> Option<PoolSpec> {
    serde_json::from_str::<Value>(&r.properties)
        .ok()
        .and_then(|v| PoolSpec::parse(&v, None).ok())
}

/// The pool's properties as returned: both `dynamicPoolConfiguration` forms, the
/// data-plane endpoint and the provisioning state.
pub fn decorate(st: &AppState, r: &Resource, props: &mut Value) {
    if let Some(spec) = spec_of(r) {
        let mut p = spec.to_stored();
        p["dynamicPoolConfiguration"]["executionType"] = json!("Timed");
        p["dynamicPoolConfiguration"]["cooldownPeriodInSeconds"] = json!(spec.cooldown_secs);
        *props = p;
    }
    props["poolManagementEndpoint"] = json!(endpoint(&st.cfg.public_url(), &r.id));
    props["nodeCount"] = json!(0);
    if let Some(p) = st.sessions.as_ref().and_then(|m| m.pool(&r.id)) {
        props["nodeCount"] = json!(p.session_count() + p.ready_count());
    }
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

/// Binding lifetime for a pool's in-session identities; renewed well before it ends.
const BINDING_TTL: i64 = 7 * 86400;

/// The sandbox settings of a pool: its network, and, when some of its identities have
/// lifecycle `Main`, a binding to exactly those identities whose secret is the
/// `IDENTITY_HEADER` inside its sessions.
async fn session_spec(st: &AppState, r: &Resource, spec: &PoolSpec) -> SessionSpec {
    let mut ss = SessionSpec {
        network: spec.network,
        identity_socket: None,
        identity_header: None,
    };
    let mut principals = vec![];
    for i in spec.identities.iter().filter(|i| i.main) {
        if i.identity == "system" {
            if let Some(p) = &r.system_principal_id {
                principals.push(p.clone());
            }
        } else if let Ok(Some(sp)) = st.store.sp_by_mi_resource(&i.identity).await {
            principals.push(sp.id);
        }
    }
    if principals.is_empty() {
        let gone = st
            .pool_bindings
            .lock()
            .unwrap()
            .remove(&r.id.to_lowercase());
        if let Some((_, old, _)) = gone
            && let Err(e) = st.id.forget_session_binding(&old).await
        {
            tracing::warn!(pool = %r.id, "ending the previous identity binding: {e}");
        }
        return ss;
    }
    principals.sort();
    let key = r.id.to_lowercase();
    // One secret per pool and set of identities, for the life of this process: the binding
    // under it is kept alive (re-created if deleted, purged or expired), so the sessions
    // holding it keep their identities. A new set of identities gets a new secret and the old
    // binding ends.
    let known = st.pool_bindings.lock().unwrap().get(&key).cloned();
    let secret = match known {
        Some((p, s, _)) if p == principals => s,
        other => {
            if let Some((_, old, _)) = other
                && let Err(e) = st.id.forget_session_binding(&old).await
            {
                tracing::warn!(pool = %r.id, "ending the previous identity binding: {e}");
            }
            cloister_crypto::random_token(32)
        }
    };
    match st
        .id
        .keep_session_binding(&r.id, principals.clone(), &secret, BINDING_TTL)
        .await
    {
        Ok(exp) => {
            st.pool_bindings
                .lock()
                .unwrap()
                .insert(key, (principals, secret.clone(), exp));
        }
        Err(e) => {
            tracing::error!(pool = %r.id, "identity binding for sessions: {e}");
            return ss;
        }
    }
    ss.identity_socket = Some(identity_socket(&st.cfg));
    ss.identity_header = Some(secret);
    ss
}

/// Brings the running pool in line with the stored resource.
pub async fn apply(st: &AppState, r: &Resource) {
    if st.sessions.is_none() {
        return;
    }
    if let Some(spec) = spec_of(r) {
        let ss = session_spec(st, r, &spec).await;
        if let Some(m) = &st.sessions {
            m.upsert(&r.id, spec, ss);
        }
    }
}

/// Renews in-session identity bindings before they expire, and re-creates lost ones
/// (called on the renewal tick).
pub async fn renew(st: &AppState) {
    let _ = load_all(st).await;
}

/// Stops pools whose resources are gone.
pub async fn removed(st: &AppState, ids: &[String]) {
    let Some(m) = &st.sessions else { return };
    for id in ids {
        m.remove(id).await;
        let gone = st.pool_bindings.lock().unwrap().remove(&id.to_lowercase());
        if let Some((_, secret, _)) = gone
            && let Err(e) = st.id.forget_session_binding(&secret).await
        {
            tracing::warn!(pool = %id, "ending the identity binding of a deleted pool: {e}");
        }
    }
}

/// Starts every stored pool (server start).
pub async fn load_all(st: &AppState) -> anyhow::Result<()> {
    if st.sessions.is_none() {
        return Ok(());
    }
    for sub in st.store.subscription_list().await? {
        for r in st
            .store
            .resource_list(&sub.id, None, Some(POOL_TYPE))
            .await?
        {
            apply(st, &r).await;
        }
    }
    Ok(())
}
