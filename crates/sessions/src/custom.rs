//! CustomContainer pools: the pool's image run by a [`ContainerBackend`], as a session
//! [`Runtime`]. The generic [`crate::pool::Pool`] keeps the identifier table, the ready pool
//! (`readySessionInstances` of *started and probed* containers), `maxConcurrentSessions`, the
//! cooldown and `maxAlivePeriodInSeconds`; this module starts a container for a
//! [`CustomLaunch`], waits for its startup probe (or, without one, for the first TCP connect to
//! `targetPort`), runs its liveness probe, watches it exit, and counts image-pull failures and
//! crashes per template for `templateUpdateStatus`.
//!
//! The image is prepared once per pool and template: the digest it resolved to is pinned, so
//! a tag moved in the registry later changes nothing until the template changes.

use crate::container::{
    Container, ContainerBackend, CustomPools, LaunchSpec, PreparedImage, RegistryLogin,
    TemplateCounts,
};
use crate::custom_spec::{CustomLaunch, Probe, ProbeAction, ProbeType};
use crate::runtime::{
    ExecOutcome, ExecStatus, FileError, FileErrorKind, FileInfo, Instance, Runtime, RuntimeInfo,
    SessionKind, SessionSpec, StartError,
};
use async_trait::async_trait;
use cloister_core::clock::now_millis as now_ms;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl CustomLaunch {
    /// Identifies the template (and what it was resolved with) for image pinning and counts.
    fn key(&self) -> String {
        let pw = self
            .login
            .as_ref()
            .map(|(u, p)| format!("{u}:{}", cloister_crypto::sha256_hex(p.as_bytes())))
            .unwrap_or_default();
        format!("{}|{}|{pw}", self.template.to_json(), self.runtime.as_str())
    }
}

/// Counts of one pool's current template (reset when the template changes).
pub struct TemplateStats {
    key: String,
    pub created_ms: i64,
    pub image_pull_fail: AtomicU64,
    pub crash: AtomicU64,
    pub started: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub digest: Mutex<Option<String>>,
}

impl TemplateStats {
    fn fail(&self, counter: &AtomicU64, msg: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap() = Some(msg);
    }
}

/// The sessions runtime of a server with a container backend: custom launches go to the
/// backend, every other session to the interpreter runtime.
pub struct CustomRuntime {
    inner: Arc<dyn Runtime>,
    pub backend: Arc<dyn ContainerBackend>,
    /// Per pool: (template key, the image it resolved to).
    images: Mutex<HashMap<String, (String, PreparedImage)>>,
    stats: Mutex<HashMap<String, Arc<TemplateStats>>>,
    /// How long a container without a startup probe may take to accept a TCP connection.
    pub startup_timeout: Duration,
}

impl CustomRuntime {
    pub fn new(inner: Arc<dyn Runtime>, backend: Arc<dyn ContainerBackend>) -> CustomRuntime {
        CustomRuntime {
            inner,
            backend,
            images: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            startup_timeout: Duration::from_secs(60),
        }
    }

    fn stats_for(&self, l: &CustomLaunch) -> Arc<TemplateStats> {
        let key = l.key();
        let mut m = self.stats.lock().unwrap();
        let pool = l.pool_id.to_lowercase();
        if let Some(s) = m.get(&pool)
            && s.key == key
        {
            return s.clone();
        }
        let s = Arc::new(TemplateStats {
            key,
            created_ms: now_ms(),
            image_pull_fail: AtomicU64::new(0),
            crash: AtomicU64::new(0),
            started: AtomicU64::new(0),
            last_error: Mutex::new(None),
            digest: Mutex::new(None),
        });
        m.insert(pool, s.clone());
        s
    }
}

impl CustomPools for CustomRuntime {
    fn backend(&self) -> &Arc<dyn ContainerBackend> {
        &self.backend
    }

    fn counts(&self, pool_id: &str) -> Option<TemplateCounts> {
        let s = self
            .stats
            .lock()
            .unwrap()
            .get(&pool_id.to_lowercase())?
            .clone();
        Some(TemplateCounts {
            created_ms: s.created_ms,
            image_pull_fail: s.image_pull_fail.load(Ordering::Relaxed),
            crash: s.crash.load(Ordering::Relaxed),
            started: s.started.load(Ordering::Relaxed),
            last_error: s.last_error.lock().unwrap().clone(),
            digest: s.digest.lock().unwrap().clone(),
        })
    }

    fn forget(&self, pool_id: &str) {
        let k = pool_id.to_lowercase();
        self.images.lock().unwrap().remove(&k);
        self.stats.lock().unwrap().remove(&k);
    }
}

impl CustomRuntime {
    async fn image(
        &self,
        l: &CustomLaunch,
        stats: &TemplateStats,
    ) -> Result<PreparedImage, StartError> {
        let key = l.key();
        let pool = l.pool_id.to_lowercase();
        if let Some((k, img)) = self.images.lock().unwrap().get(&pool)
            && *k == key
        {
            return Ok(img.clone());
        }
        let c = &l.template.containers[0];
        let login = l.login.as_ref().map(|(u, p)| RegistryLogin {
            username: u.clone(),
            password: p.clone(),
        });
        match self.backend.prepare(&c.image, login.as_ref()).await {
            Ok(img) => {
                *stats.digest.lock().unwrap() = Some(img.digest.clone());
                self.images.lock().unwrap().insert(pool, (key, img.clone()));
                Ok(img)
            }
            Err(e) => {
                let msg = format!("the image '{}' could not be prepared: {e}", c.image);
                tracing::warn!(pool = %l.pool_id, "{msg}");
                stats.fail(&stats.image_pull_fail, msg.clone());
                Err(StartError(msg))
            }
        }
    }

    async fn start_custom(&self, l: &CustomLaunch) -> Result<Box<dyn Instance>, StartError> {
        let stats = self.stats_for(l);
        let image = self.image(l, &stats).await?;
        let spec = launch_spec(l, image)?;
        let c = &l.template.containers[0];
        let container = match self.backend.start(&spec).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("the container could not be started: {e}");
                stats.fail(&stats.crash, msg.clone());
                return Err(StartError(msg));
            }
        };
        let addr = container.addr();
        let startup = c.probes.iter().find(|p| p.kind == ProbeType::Startup);
        if let Err(e) = wait_started(
            container.as_ref(),
            startup,
            l.template.target_port,
            self.startup_timeout,
        )
        .await
        {
            let tail = container.console_tail(400);
            container.stop().await;
            let mut msg = format!("the container did not start: {e}");
            if !tail.trim().is_empty() {
                msg.push_str(&format!("; its last output: {}", tail.trim()));
            }
            stats.fail(&stats.crash, msg.clone());
            return Err(StartError(msg));
        }
        stats.started.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            container: tokio::sync::Mutex::new(Some(container)),
            healthy: AtomicBool::new(true),
            exited: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        tokio::spawn(watch(
            shared.clone(),
            stats.clone(),
            l.exit_ends_session,
            l.pool_id.clone(),
        ));
        if let Some(p) = c.probes.iter().find(|p| p.kind == ProbeType::Liveness) {
            tokio::spawn(liveness(
                shared.clone(),
                stats.clone(),
                p.clone(),
                addr,
                l.pool_id.clone(),
            ));
        }
        let id = shared
            .container
            .lock()
            .await
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        Ok(Box::new(CustomInstance { id, addr, shared }))
    }
}

/// The container to start: command = the template's command + args, else the image's
/// entrypoint with the template's args or the image's cmd (as Kubernetes does); env = the
/// image's, overridden by the template's (secret references resolved).
fn launch_spec(l: &CustomLaunch, image: PreparedImage) -> Result<LaunchSpec, StartError> {
    let c = &l.template.containers[0];
    let args: Vec<String> = if !c.command.is_empty() {
        c.command.iter().chain(c.args.iter()).cloned().collect()
    } else if !c.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(c.args.iter())
            .cloned()
            .collect()
    } else {
        image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect()
    };
    if args.is_empty() {
        return Err(StartError(format!(
            "the image '{}' has no entrypoint or cmd and the template gives no command",
            c.image
        )));
    }
    let mut env: Vec<String> = image.env.clone();
    for e in &c.env {
        let value = match (&e.value, &e.secret_ref) {
            (_, Some(r)) => l
                .secrets
                .iter()
                .find(|(n, _)| n == r)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| StartError(format!("the secret '{r}' is missing")))?,
            (Some(v), None) => v.clone(),
            (None, None) => String::new(),
        };
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(n, _)| n) != e.name);
        env.push(format!("{}={value}", e.name));
    }
    Ok(LaunchSpec {
        image,
        runtime: l.runtime,
        args,
        env,
        cpu: c.cpu,
        memory_bytes: c.memory_bytes,
        target_port: l.template.target_port,
        egress: l.egress,
    })
}

fn probe_addr(addr: SocketAddr, target_port: u16, port: u16) -> SocketAddr {
    // Probes go to the container only (their `host` is ignored: no probing of other hosts).
    // The backend maps `targetPort` to `addr`; another port is reached on the same address.
    if port == target_port {
        addr
    } else {
        SocketAddr::new(addr.ip(), port)
    }
}

/// One probe attempt.
async fn check(probe: &Probe, addr: SocketAddr, target_port: u16) -> Result<(), String> {
    let t = Duration::from_secs(probe.timeout_secs.max(1) as u64);
    match &probe.action {
        ProbeAction::Tcp { port, .. } => {
            let a = probe_addr(addr, target_port, *port);
            match tokio::time::timeout(t, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("TCP connect to port {port}: {e}")),
                Err(_) => Err(format!("TCP connect to port {port} timed out")),
            }
        }
        ProbeAction::Http {
            path,
            port,
            headers,
            https,
            ..
        } => {
            let a = probe_addr(addr, target_port, *port);
            let fut = async {
                let mut s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(|e| format!("connect to port {port}: {e}"))?;
                if *https {
                    // HTTPS probes check that the port accepts connections (TLS is not
                    // verified: the certificate of a session container is its own).
                    return Ok(());
                }
                let mut req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {a}\r\nUser-Agent: cloister-probe\r\nConnection: close\r\n"
                );
                for (n, v) in headers {
                    if !n.contains(['\r', '\n']) && !v.contains(['\r', '\n']) {
                        req.push_str(&format!("{n}: {v}\r\n"));
                    }
                }
                req.push_str("\r\n");
                s.write_all(req.as_bytes())
                    .await
                    .map_err(|e| format!("HTTP probe write: {e}"))?;
                let mut buf = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let k = s
                        .read(&mut buf[n..])
                        .await
                        .map_err(|e| format!("HTTP probe read: {e}"))?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                let line = String::from_utf8_lossy(&buf[..n]).to_string();
                let code: u16 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| "HTTP probe: no status line".to_string())?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe GET {path} answered {code}"))
                }
            };
            tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(format!("HTTP probe GET {path} timed out")))
        }
    }
}

async fn exited(c: &dyn Container) -> Option<String> {
    if c.is_running() {
        return None;
    }
    let code = c.wait_exit(Duration::from_millis(50)).await;
    Some(match code {
        Some(code) => format!("the container exited with status {code}"),
        None => "the container stopped".into(),
    })
}

/// Waits until the container is ready: its startup probe passes (at most `failureThreshold`
/// failures, `periodSeconds` apart, after `initialDelaySeconds`) or, without one, a TCP
/// connect to `targetPort` succeeds within `timeout`. Fails at once if the container exits.
async fn wait_started(
    c: &dyn Container,
    probe: Option<&Probe>,
    target_port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let addr = c.addr();
    match probe {
        None => {
            let t0 = Instant::now();
            loop {
                if let Some(e) = exited(c).await {
                    return Err(e);
                }
                let left = timeout.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    return Err(format!(
                        "nothing accepted connections on port {target_port} within {} s",
                        timeout.as_secs()
                    ));
                }
                if let Ok(Ok(_)) = tokio::time::timeout(
                    left.min(Duration::from_secs(1)),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Some(p) => {
            tokio::time::sleep(Duration::from_secs(p.initial_delay_secs as u64)).await;
            let mut failures = 0;
            loop {
                if let Some(e) = exited(c).await {
                    return Err(e);
                }
                match check(p, addr, target_port).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        failures += 1;
                        if failures >= p.failure_threshold {
                            return Err(format!(
                                "the startup probe failed {failures} times; last: {e}"
                            ));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(p.period_secs as u64)).await;
            }
        }
    }
}

struct Shared {
    container: tokio::sync::Mutex<Option<Box<dyn Container>>>,
    healthy: AtomicBool,
    exited: AtomicBool,
    stopping: AtomicBool,
}

/// Notices the container's exit: a crash unless it ended an `OnContainerExit` session with
/// status 0 (or the pool stopped it).
async fn watch(shared: Arc<Shared>, stats: Arc<TemplateStats>, exit_ok: bool, pool: String) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let g = shared.container.lock().await;
        let Some(c) = g.as_ref() else { return };
        if c.is_running() {
            continue;
        }
        let code = c.wait_exit(Duration::from_millis(50)).await;
        drop(g);
        shared.exited.store(true, Ordering::Release);
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if exit_ok && code == Some(0) {
            tracing::debug!(%pool, "a session container exited (OnContainerExit)");
        } else {
            let msg = match code {
                Some(c) => format!("a session container exited with status {c}"),
                None => "a session container stopped".into(),
            };
            tracing::info!(%pool, "{msg}");
            metrics::counter!("cloister_custom_container_crashes_total").increment(1);
            stats.fail(&stats.crash, msg);
        }
        return;
    }
}

/// The liveness probe: after `failureThreshold` failures in a row the container is unhealthy
/// and its session is removed (the pool replaces ready instances and ends sessions whose
/// instance is not alive).
async fn liveness(
    shared: Arc<Shared>,
    stats: Arc<TemplateStats>,
    p: Probe,
    addr: SocketAddr,
    pool: String,
) {
    tokio::time::sleep(Duration::from_secs(p.initial_delay_secs as u64)).await;
    let port = addr.port();
    let mut failures = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(p.period_secs as u64)).await;
        if shared.stopping.load(Ordering::Acquire) || shared.exited.load(Ordering::Acquire) {
            return;
        }
        match check(&p, addr, port).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= p.failure_threshold {
                    if shared.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let msg = format!("a session container failed its liveness probe: {e}");
                    tracing::info!(%pool, "{msg}");
                    shared.healthy.store(false, Ordering::Release);
                    stats.fail(&stats.crash, msg);
                    return;
                }
            }
        }
    }
}

pub struct CustomInstance {
    id: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

fn not_here() -> FileError {
    FileError {
        kind: FileErrorKind::Invalid,
        message: "A custom container session is reached over HTTP at the pool's endpoint; it has no files API of Cloister's.".into(),
    }
}

#[async_trait]
impl Instance for CustomInstance {
    fn id(&self) -> &str {
        &self.id
    }
    async fn exec(&mut self, _code: &str, _timeout: Duration, _max: usize) -> ExecOutcome {
        ExecOutcome::empty(ExecStatus::Failed, not_here().message, 0)
    }
    async fn write_file(&mut self, _p: &str, _d: Vec<u8>) -> Result<FileInfo, FileError> {
        Err(not_here())
    }
    async fn write_piece(
        &mut self,
        _p: &str,
        _s: u64,
        _f: bool,
        _l: bool,
        _d: &[u8],
    ) -> Result<Option<FileInfo>, FileError> {
        Err(not_here())
    }
    async fn abort_write(&mut self) {}
    async fn read_file(&mut self, _p: &str) -> Result<Vec<u8>, FileError> {
        Err(not_here())
    }
    async fn stat_file(&mut self, _p: &str) -> Result<FileInfo, FileError> {
        Err(not_here())
    }
    async fn list_files(&mut self, _d: &str, _r: bool) -> Result<Vec<FileInfo>, FileError> {
        Err(not_here())
    }
    async fn delete_file(&mut self, _p: &str) -> Result<(), FileError> {
        Err(not_here())
    }
    fn is_alive(&self) -> bool {
        if !self.shared.healthy.load(Ordering::Acquire)
            || self.shared.exited.load(Ordering::Acquire)
        {
            return false;
        }
        match self.shared.container.try_lock() {
            Ok(g) => g.as_ref().is_some_and(|c| c.is_running()),
            Err(_) => true,
        }
    }
    fn addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
    fn process_count(&self) -> usize {
        usize::from(self.is_alive())
    }
    async fn shutdown(self: Box<Self>) {
        self.shared.stopping.store(true, Ordering::Release);
        let c = self.shared.container.lock().await.take();
        if let Some(c) = c {
            c.stop().await;
        }
    }
}

#[async_trait]
impl Runtime for CustomRuntime {
    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Instance>, StartError> {
        match &spec.custom {
            Some(l) => self.start_custom(l).await,
            None => self.inner.start(spec).await,
        }
    }
    fn info(&self, kind: SessionKind) -> RuntimeInfo {
        self.inner.info(kind)
    }
    fn sweep(&self) {
        self.inner.sweep();
        self.backend.sweep();
    }
    fn custom(&self) -> Option<&dyn CustomPools> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::RuntimeClass;
    use crate::custom_spec::CustomTemplate;
    use serde_json::json;

    fn launch(container: serde_json::Value) -> CustomLaunch {
        CustomLaunch {
            pool_id: "/p".into(),
            template: CustomTemplate::parse(
                &json!({"containers": [container], "ingress": {"targetPort": 8080}}),
            )
            .unwrap(),
            runtime: RuntimeClass::Runc,
            egress: false,
            exit_ends_session: false,
            secrets: vec![("s1".into(), "secret-value".into())],
            login: Some(("u".into(), "registry-password".into())),
        }
    }

    fn image() -> PreparedImage {
        PreparedImage {
            reference: "r/i:1".into(),
            digest: "sha256:00".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: None,
            user: None,
        }
    }

    #[test]
    fn command_args_and_env_as_kubernetes_does() {
        let l = launch(json!({"image": "r/i:1"}));
        assert_eq!(launch_spec(&l, image()).unwrap().args, ["/entry", "serve"]);
        let l = launch(json!({"image": "r/i:1", "args": ["x"]}));
        assert_eq!(launch_spec(&l, image()).unwrap().args, ["/entry", "x"]);
        let l = launch(json!({"image": "r/i:1", "command": ["sleep"], "args": ["9"]}));
        assert_eq!(launch_spec(&l, image()).unwrap().args, ["sleep", "9"]);
        let l = launch(
            json!({"image": "r/i:1", "env": [{"name": "A", "value": "t"}, {"name": "B", "secretRef": "s1"}]}),
        );
        let s = launch_spec(&l, image()).unwrap();
        assert_eq!(s.env, ["PATH=/bin", "A=t", "B=secret-value"]);
        // The registry password is not in the container's spec, nor in any Debug output.
        let dbg = format!("{s:?} {l:?}");
        assert!(!s.env.iter().any(|e| e.contains("registry-password")));
        assert!(
            !dbg.contains("registry-password") && !dbg.contains("secret-value"),
            "{dbg}"
        );
        let mut empty = image();
        empty.entrypoint.clear();
        empty.cmd.clear();
        assert!(launch_spec(&launch(json!({"image": "r/i:1"})), empty).is_err());
    }
}
