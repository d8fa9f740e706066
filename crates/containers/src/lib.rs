//! OCI containers under runc or runsc (gVisor), each in its own network namespace, cgroup and
//! writable layer. This crate knows nothing of pools, sessions or images beyond a read-only
//! root filesystem directory.
//!
//! Per container `<id>` (`<prefix>-<12 hex>`, the prefix unique per state directory):
//!
//! ```text
//! <state>/c/<id>/config.json   generated here (spec.rs): all capabilities dropped,
//!                              no_new_privileges, a seccomp deny list, rlimits, runc's
//!                              masked/read-only paths, /tmp a capped tmpfs
//! <state>/c/<id>/rw/           a tmpfs of `writable_bytes` (the cap of the writable layer)
//!                 rw/upper, rw/work   the overlay's upper and work dirs
//! <state>/c/<id>/rootfs/       overlayfs: lowerdir = the image's read-only rootfs
//! <state>/runc, <state>/runsc  the runtimes' --root state dirs
//! /var/run/netns/cloister-<id> its network namespace (net.rs)
//! cgroup /cloister-ctr-<prefix>/<id>   per controller on v1 (absolute path: containers.md P11)
//! ```
//!
//! The runtime runs in the foreground as a child of this process (`runc run --bundle <abs>
//! <id>`, stdio = one pipe read continuously into a 256 KiB ring, the console tail: P3), so its exit status is the container's
//! (128 + signal when killed, e.g. 137 for the OOM killer). `stop` (and `Drop`) force-delete
//! the container, unmount, remove the netns, veth, cgroups (P10) and files.
//!
//! Users: an image user that resolves to a non-zero uid runs as that uid and gid on the host
//! (no user namespace); an image that runs as root (or names no user) runs as the configured
//! unprivileged `root_uid:root_gid` instead (default 65532), never as host root.

pub mod net;
pub mod spec;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which runtime runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Runsc,
}

/// How runsc containers get their network (decided by the startup probe; containers.md P1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunscNetwork {
    /// gVisor's own network stack (netstack) inside the container's netns.
    Netstack,
    /// netstack, with `/proc/sys/net` masked in a private mount namespace for the runsc call
    /// (works around google/gvisor#10704 on kernels ≥ 6.11; safe because every spec names a
    /// dedicated netns).
    NetstackMaskedProc,
    /// `--network=host` inside the container's dedicated netns (the sentry uses the host
    /// kernel's network stack: weaker isolation).
    HostInNetns,
}

impl RunscNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            RunscNetwork::Netstack => "netstack",
            RunscNetwork::NetstackMaskedProc => "netstack (masked /proc/sys/net)",
            RunscNetwork::HostInNetns => "host network inside the container's netns",
        }
    }
}

/// The host side's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bundles, writable layers and runtime state (created 0711; made absolute).
    pub state_dir: PathBuf,
    /// The runc binary (`runc` = looked up on PATH).
    pub runc: PathBuf,
    /// The runsc binary; None = the gVisor tier is off.
    pub runsc: Option<PathBuf>,
    /// Memory limit when the launch names none (bytes).
    pub default_memory: u64,
    /// Maximum processes/threads per container.
    pub pids_limit: i64,
    /// Size of the writable layer (a tmpfs under the overlay's upper dir).
    pub writable_bytes: u64,
    /// Size of the container's /tmp (a tmpfs).
    pub tmp_bytes: u64,
    /// Host uid and gid for images that run as root.
    pub root_uid: u32,
    pub root_gid: u32,
    /// Forces runsc's network mode instead of probing (None = probe at startup).
    pub runsc_network: Option<RunscNetwork>,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            state_dir: state_dir.into(),
            runc: "runc".into(),
            runsc: None,
            default_memory: 512 << 20,
            pids_limit: 256,
            writable_bytes: 256 << 20,
            tmp_bytes: 64 << 20,
            root_uid: 65532,
            root_gid: 65532,
            runsc_network: None,
        }
    }
}

/// One container to start.
#[derive(Clone)]
pub struct Launch {
    /// The image's read-only root filesystem (absolute).
    pub rootfs: PathBuf,
    pub runtime: Runtime,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// The image's `User` (`uid[:gid]` or names in the image's /etc/passwd).
    pub user: Option<String>,
    pub cpu: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub port: u16,
    pub egress: bool,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("rootfs", &self.rootfs)
            .field("runtime", &self.runtime)
            .field("args", &self.args)
            .field("env", &format!("{} entries", self.env.len()))
            .field("egress", &self.egress)
            .finish()
    }
}

/// The containers of one state directory.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    prefix: String,
    runsc: Result<RunscNetwork, String>,
}

/// FNV-1a, for a stable short name of a state directory.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The directories of an absolute cgroup path, one per v1 controller (or one on v2).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    if cgroup_v2() {
        return vec![Path::new(CGROUP_ROOT).join(rel)];
    }
    let mut v = vec![];
    if let Ok(rd) = fs::read_dir(CGROUP_ROOT) {
        for e in rd.flatten() {
            let p = e.path().join(rel);
            if e.path().is_dir() && !e.path().is_symlink() {
                v.push(p);
            }
        }
    }
    v
}

/// Kills what is in the groups and removes them, children first.
fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..100 {
        let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() && fs::remove_dir(dir).is_ok() {
            return;
        }
        for p in pids {
            // SAFETY: kill(2) on a pid read from the group.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove a container cgroup");
}

fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (s, t, f, d) = (c(src)?, c(&target.to_string_lossy())?, c(fstype)?, c(data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ))
    }
}

fn umount(target: &Path) {
    let Ok(t) = std::ffi::CString::new(target.to_string_lossy().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

fn is_mountpoint(p: &Path) -> bool {
    let s = p.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(s.as_str()))
}

impl Containers {
    /// Opens the state directory, checks runc, and probes runsc's networking when configured.
    pub fn new(mut cfg: Config) -> Result<Containers, String> {
        if !cfg.state_dir.is_absolute() {
            cfg.state_dir = std::env::current_dir()
                .map_err(|e| e.to_string())?
                .join(&cfg.state_dir);
        }
        for d in ["", "c", "runc", "runsc"] {
            let p = cfg.state_dir.join(d);
            fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o711));
        cfg.state_dir = fs::canonicalize(&cfg.state_dir).map_err(|e| e.to_string())?;
        let prefix = format!("{:06x}", fnv(&cfg.state_dir.to_string_lossy()) & 0xff_ffff);
        let runsc = match &cfg.runsc {
            None => Err("runsc is not configured".to_string()),
            Some(bin) => match cfg.runsc_network {
                Some(mode) => which(bin)
                    .map(|_| mode)
                    .ok_or_else(|| format!("{} is not installed", bin.display())),
                None => probe_runsc(bin, &cfg.state_dir, &prefix),
            },
        };
        match &runsc {
            Ok(mode) => tracing::info!(
                mode = mode.as_str(),
                "runsc networking chosen by the startup probe"
            ),
            Err(e) if cfg.runsc.is_some() => tracing::warn!(error = %e, "runsc is unusable"),
            Err(_) => {}
        }
        Ok(Containers {
            inner: Arc::new(Inner { cfg, prefix, runsc }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The name prefix of this state directory's containers, netns and cgroups.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// How runsc containers are networked, or why runsc cannot be used.
    pub fn runsc_network(&self) -> Result<RunscNetwork, String> {
        self.inner.runsc.clone()
    }

    /// Whether `rt` can run here.
    pub fn available(&self, rt: Runtime) -> Result<(), String> {
        match rt {
            Runtime::Runc => which(&self.inner.cfg.runc)
                .map(|_| ())
                .ok_or_else(|| format!("{} is not installed", self.inner.cfg.runc.display())),
            Runtime::Runsc => self.inner.runsc.clone().map(|_| ()),
        }
    }

    fn cgroup_parent(&self) -> String {
        format!("/cloister-ctr-{}", self.inner.prefix)
    }

    fn runtime_root(&self, rt: Runtime) -> PathBuf {
        self.inner.cfg.state_dir.join(match rt {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
        })
    }

    /// Starts a container; returns once the runtime has written its init pid.
    pub async fn start(&self, l: &Launch) -> Result<RunningContainer, String> {
        self.available(l.runtime)?;
        if l.args.is_empty() {
            return Err("the container has no command".into());
        }
        let me = self.clone();
        let l2 = l.clone();
        let mut prep = tokio::task::spawn_blocking(move || me.prepare(&l2))
            .await
            .map_err(|e| e.to_string())??;
        // stdout and stderr: one pipe, read continuously into a bounded ring (never a file
        // that grows with the container's output, never a pipe nobody reads: P3).
        let (log_r, log_w) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                self.teardown(&mut prep);
                return Err(format!("pipe: {e}"));
            }
        };
        let log2 = log_w.try_clone().map_err(|e| e.to_string())?;
        let pid_file = prep.dir.join("init.pid");
        let root = self.runtime_root(l.runtime);
        let mut cmd = match l.runtime {
            Runtime::Runc => {
                let mut c = tokio::process::Command::new(&self.inner.cfg.runc);
                c.arg("--root").arg(&root);
                c
            }
            Runtime::Runsc => {
                let bin = self.inner.cfg.runsc.clone().unwrap_or_default();
                let mode = self.inner.runsc.clone()?;
                runsc_command(&bin, &root, mode)
            }
        };
        cmd.arg("run")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--bundle")
            .arg(&prep.dir)
            .arg(&prep.id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_w))
            .stderr(Stdio::from(log2))
            .kill_on_drop(false);
        let t0 = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{:?}: {e}", l.runtime);
                self.teardown(&mut prep);
                return Err(msg);
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(None::<i32>);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    st.code()
                        .or_else(|| st.signal().map(|s| 128 + s))
                        .unwrap_or(-1)
                }
                Err(_) => -1,
            };
            let _ = tx.send(Some(code));
        });
        let mut c = RunningContainer {
            owner: self.clone(),
            prep: Mutex::new(Some(prep)),
            id: String::new(),
            addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), l.port),
            exit: rx,
            console: Console::spawn(log_r, CONSOLE_BYTES),
        };
        {
            let g = c.prep.lock().unwrap();
            let p = g.as_ref().unwrap();
            c.id = p.id.clone();
            c.addr = SocketAddr::new(net::container_addr(p.slot.n).into(), l.port);
        }
        // Started = the pid file is there; an exit before that is a failed start.
        let has_pid =
            || fs::read_to_string(&pid_file).is_ok_and(|s| s.trim().parse::<i32>().is_ok());
        loop {
            // A container that ran and already exited has its pid file: it started.
            let exited = *c.exit.borrow();
            if let Some(code) = exited
                && !has_pid()
            {
                c.console.settle().await;
                let tail = c.console_tail(2000);
                c.stop_blocking();
                return Err(format!(
                    "the container exited during start (status {code}): {}",
                    tail.trim()
                ));
            }
            if has_pid() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                c.stop_blocking();
                return Err("the runtime did not start the container within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        tracing::debug!(id = %c.id, runtime = ?l.runtime, ms = t0.elapsed().as_millis() as u64, "container started");
        Ok(c)
    }

    /// Bundle, writable layer, network namespace (blocking).
    fn prepare(&self, l: &Launch) -> Result<Prepared, String> {
        let cfg = &self.inner.cfg;
        if !l.rootfs.is_absolute() || !l.rootfs.is_dir() {
            return Err(format!(
                "{} is not an absolute directory",
                l.rootfs.display()
            ));
        }
        let (mut uid, mut gid) = spec::resolve_user(&l.rootfs, l.user.as_deref())
            .ok_or_else(|| format!("the image's user {:?} is not in its /etc/passwd", l.user))?;
        if uid == 0 {
            (uid, gid) = (cfg.root_uid, cfg.root_gid);
        }
        net::ensure_table()?;
        if l.egress {
            net::enable_forwarding()?;
        }
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{}-{}", self.inner.prefix, &hex[..12]);
        let egress = l.egress;
        let slot = net::take_slot(&|n| {
            net::link_exists(&net::veth_name(n, false))
                || net::link_exists(&net::veth_name(n, true))
        })?;
        let dir = cfg.state_dir.join("c").join(&id);
        let mut p = Prepared {
            id: id.clone(),
            runtime: l.runtime,
            dir: dir.clone(),
            netns: format!("cloister-{id}"),
            veth: net::veth_name(slot.n, egress),
            slot,
            cgroup: format!("{}/{id}", self.cgroup_parent()),
        };
        let r = (|| -> Result<(), String> {
            let rw = dir.join("rw");
            let rootfs = dir.join("rootfs");
            for d in [&dir, &rw, &rootfs] {
                fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o711));
            mount(
                "cloister-rw",
                &rw,
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                &format!("size={},mode=0700", cfg.writable_bytes),
            )?;
            for d in ["upper", "work"] {
                fs::create_dir(rw.join(d)).map_err(|e| e.to_string())?;
            }
            let _ = fs::set_permissions(rw.join("upper"), fs::Permissions::from_mode(0o755));
            mount(
                "overlay",
                &rootfs,
                "overlay",
                libc::MS_NOSUID | libc::MS_NODEV,
                &format!(
                    "lowerdir={},upperdir={},workdir={}",
                    l.rootfs.display(),
                    rw.join("upper").display(),
                    rw.join("work").display()
                ),
            )?;
            net::setup(&p.netns, &p.veth, p.slot.n, egress)?;
            let mut env = l.env.clone();
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.push(
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                );
            }
            let resolv = egress
                .then_some("/etc/resolv.conf")
                .filter(|r| Path::new(r).exists());
            let netns_path = format!("/var/run/netns/{}", p.netns);
            let config = spec::config(&spec::SpecInput {
                root: &rootfs.to_string_lossy(),
                root_readonly: false,
                hostname: &id,
                args: &l.args,
                env: &env,
                cwd: l
                    .cwd
                    .as_deref()
                    .filter(|c| c.starts_with('/'))
                    .unwrap_or("/"),
                uid,
                gid,
                netns: &netns_path,
                cgroups_path: Some(&p.cgroup),
                memory: l.memory_bytes.unwrap_or(cfg.default_memory),
                pids: cfg.pids_limit,
                cpu: l.cpu,
                tmp_bytes: cfg.tmp_bytes,
                resolv_conf: resolv,
            });
            // The env may hold the template's secrets: root only.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join("config.json"))
                .and_then(|mut f| f.write_all(config.to_string().as_bytes()))
                .map_err(|e| format!("config.json: {e}"))
        })();
        if let Err(e) = r {
            self.teardown(&mut p);
            return Err(e);
        }
        Ok(p)
    }

    /// Removes everything of one container (blocking; idempotent).
    fn teardown(&self, p: &mut Prepared) {
        let root = self.runtime_root(p.runtime);
        let bin = match p.runtime {
            Runtime::Runc => self.inner.cfg.runc.clone(),
            Runtime::Runsc => self.inner.cfg.runsc.clone().unwrap_or_default(),
        };
        let _ = std::process::Command::new(&bin)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &p.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_files(&p.dir);
        net::teardown(&p.netns, &p.veth);
        for d in cgroup_dirs(&p.cgroup) {
            remove_cgroup(&d);
            // The parent too once it is empty (fails harmlessly while others run).
            if let Some(parent) = d.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }

    /// Removes what a previous process with this state directory left: containers (both
    /// runtimes), mounts and files, network namespaces (and so their veth pairs), cgroups.
    /// Returns how many containers it found.
    pub fn sweep(&self) -> usize {
        let cfg = &self.inner.cfg;
        let mut found = 0;
        for (rt, bin) in [
            (Runtime::Runc, Some(cfg.runc.clone())),
            (Runtime::Runsc, cfg.runsc.clone()),
        ] {
            let Some(bin) = bin else { continue };
            let root = self.runtime_root(rt);
            let Ok(out) = std::process::Command::new(&bin)
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
            else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new(&bin)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Ok(rd) = fs::read_dir(cfg.state_dir.join("c")) {
            for e in rd.flatten() {
                found += 1;
                remove_files(&e.path());
            }
        }
        let ns_prefix = format!("cloister-{}-", self.inner.prefix);
        if let Ok(rd) = fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&ns_prefix) {
                    // Deleting the namespace deletes its eth0 and so the host end.
                    net::teardown(&name, "");
                }
            }
        }
        for d in cgroup_dirs(&self.cgroup_parent()) {
            remove_cgroup(&d);
        }
        found
    }
}

fn remove_files(dir: &Path) {
    let rootfs = dir.join("rootfs");
    let rw = dir.join("rw");
    for m in [&rootfs, &rw] {
        for _ in 0..3 {
            if !is_mountpoint(m) {
                break;
            }
            umount(m);
        }
    }
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a container's directory");
    }
}

fn which(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// The runsc command for a network mode (the global flags before the subcommand).
fn runsc_command(bin: &Path, root: &Path, mode: RunscNetwork) -> tokio::process::Command {
    let mut c = match mode {
        RunscNetwork::NetstackMaskedProc => {
            let mut c = tokio::process::Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg("mount -t tmpfs -o size=4k,ro tmpfs /proc/sys/net && exec \"$0\" \"$@\"")
                .arg(bin);
            c
        }
        _ => tokio::process::Command::new(bin),
    };
    c.arg("--root").arg(root);
    if mode == RunscNetwork::HostInNetns {
        c.arg("--network=host");
    }
    c
}

/// Runs one throwaway sandbox-network container (host / read-only as its root, `true` as its
/// program) in a throwaway netns, in each network mode until one works.
fn probe_runsc(bin: &Path, state: &Path, prefix: &str) -> Result<RunscNetwork, String> {
    let bin = which(bin).ok_or_else(|| format!("{} is not installed", bin.display()))?;
    let dir = state.join(format!("runsc-probe-{}", std::process::id()));
    let ns = format!("cloister-{prefix}-probe{}", std::process::id());
    let _ = fs::create_dir_all(&dir);
    let netns_path = format!("/var/run/netns/{ns}");
    let result = (|| {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .map_err(|e| format!("ip: {e}"))?;
        if !st.success() {
            return Err(format!("ip netns add {ns} failed"));
        }
        let true_bin = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("no /usr/bin/true on the host for the runsc probe")?;
        let args = vec![true_bin.to_string()];
        let config = spec::config(&spec::SpecInput {
            root: "/",
            root_readonly: true,
            hostname: "probe",
            args: &args,
            env: &["PATH=/usr/bin:/bin".to_string()],
            cwd: "/",
            uid: 65534,
            gid: 65534,
            netns: &netns_path,
            cgroups_path: None,
            memory: 256 << 20,
            pids: 64,
            cpu: None,
            tmp_bytes: 1 << 20,
            resolv_conf: None,
        });
        fs::write(dir.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
        let mut errors = vec![];
        for (i, mode) in [
            RunscNetwork::Netstack,
            RunscNetwork::NetstackMaskedProc,
            RunscNetwork::HostInNetns,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("{prefix}-probe{}-{i}", std::process::id());
            let root = dir.join("root");
            let cmd = runsc_command(&bin, &root, mode);
            let mut cmd = cmd.into_std();
            let out = cmd
                .arg("run")
                .arg("--bundle")
                .arg(&dir)
                .arg(&id)
                .stdin(Stdio::null())
                .output();
            let _ = std::process::Command::new(&bin)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match out {
                Ok(o) if o.status.success() => return Ok(mode),
                Ok(o) => errors.push(format!(
                    "{}: {}",
                    mode.as_str(),
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .rev()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" / ")
                )),
                Err(e) => errors.push(format!("{}: {e}", mode.as_str())),
            }
        }
        Err(format!(
            "runsc failed in every network mode: {}",
            errors.join("; ")
        ))
    })();
    net::teardown(&ns, "");
    let _ = fs::remove_dir_all(&dir);
    result
}

/// How much of a container's output is kept (the most recent bytes).
pub const CONSOLE_BYTES: usize = 256 << 10;

fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors that we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// The console ring: a task reads the pipe until every writer has closed it.
#[derive(Clone)]
struct Console(
    Arc<Mutex<std::collections::VecDeque<u8>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Console {
    fn spawn(r: std::os::fd::OwnedFd, cap: usize) -> Console {
        let ring = Console(
            Arc::new(Mutex::new(std::collections::VecDeque::new())),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        let c = ring.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(r) else {
                return;
            };
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = rx.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut q = c.0.lock().unwrap_or_else(|e| e.into_inner());
                q.extend(&buf[..n]);
                let over = q.len().saturating_sub(cap);
                q.drain(..over);
            }
            c.1.store(true, std::sync::atomic::Ordering::Release);
        });
        ring
    }

    /// Waits (≤ 200 ms) until every writer has closed the pipe, so the tail is complete.
    async fn settle(&self) {
        let t0 = Instant::now();
        while !self.1.load(std::sync::atomic::Ordering::Acquire)
            && t0.elapsed() < Duration::from_millis(200)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn tail(&self, max: usize) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let skip = q.len().saturating_sub(max);
        let bytes: Vec<u8> = q.iter().skip(skip).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

struct Prepared {
    id: String,
    runtime: Runtime,
    dir: PathBuf,
    netns: String,
    veth: String,
    slot: net::Slot,
    cgroup: String,
}

/// A started container. `stop` it (Drop does the same, blocking).
pub struct RunningContainer {
    owner: Containers,
    prep: Mutex<Option<Prepared>>,
    id: String,
    addr: SocketAddr,
    exit: tokio::sync::watch::Receiver<Option<i32>>,
    console: Console,
}

impl RunningContainer {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's address and port on its veth.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host end of its veth pair.
    pub fn host_addr(&self) -> Ipv4Addr {
        match self.addr.ip() {
            std::net::IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) - 1),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    pub fn netns(&self) -> String {
        format!("cloister-{}", self.id)
    }

    /// The absolute cgroup path (per controller on v1).
    pub fn cgroup(&self) -> String {
        format!("{}/{}", self.owner.cgroup_parent(), self.id)
    }

    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// The exit status once the runtime has exited (128 + signal when killed).
    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    pub async fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let mut rx = self.exit.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some())).await;
        let code = *self.exit.borrow();
        if code.is_some() {
            self.console.settle().await;
        }
        code
    }

    /// The memory cgroup's usage.
    pub fn memory_bytes(&self) -> Option<u64> {
        let rel = self.cgroup();
        let p = if cgroup_v2() {
            Path::new(CGROUP_ROOT)
                .join(rel.trim_start_matches('/'))
                .join("memory.current")
        } else {
            Path::new(CGROUP_ROOT)
                .join("memory")
                .join(rel.trim_start_matches('/'))
                .join("memory.usage_in_bytes")
        };
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// The last `max` bytes (at most [`CONSOLE_BYTES`]) of the container's stdout and stderr.
    pub fn console_tail(&self, max: usize) -> String {
        self.console.tail(max)
    }

    /// The init process's pid on the host (from the runtime's pid file).
    pub fn init_pid(&self) -> Option<i32> {
        let g = self.prep.lock().unwrap();
        let p = g.as_ref()?;
        fs::read_to_string(p.dir.join("init.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills the container and removes its cgroups, netns, veth, mounts and files.
    pub async fn stop(self) {
        let me = self;
        let _ = tokio::task::spawn_blocking(move || me.stop_blocking()).await;
    }

    fn stop_blocking(&self) {
        let Some(p) = self.prep.lock().unwrap().take() else {
            return;
        };
        kill_and_teardown(&self.owner, p, &self.exit);
    }
}

/// Kills the container, waits (≤ 5 s) for the foreground runtime to exit, removes the rest.
fn kill_and_teardown(
    owner: &Containers,
    mut p: Prepared,
    exit: &tokio::sync::watch::Receiver<Option<i32>>,
) {
    let bin = match p.runtime {
        Runtime::Runc => owner.inner.cfg.runc.clone(),
        Runtime::Runsc => owner.inner.cfg.runsc.clone().unwrap_or_default(),
    };
    let _ = std::process::Command::new(&bin)
        .arg("--root")
        .arg(owner.runtime_root(p.runtime))
        .args(["kill", "--all", &p.id, "KILL"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // Let the foreground runtime notice and exit before the files go.
    let t0 = Instant::now();
    while exit.borrow().is_none() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    owner.teardown(&mut p);
}

/// Dropping a container without `stop` tears it down too: on a blocking thread of the current
/// Tokio runtime if there is one (a drop on a runtime thread must not wait for the runtime's
/// exit, which that thread may be the one to deliver), else right here.
impl Drop for RunningContainer {
    fn drop(&mut self) {
        let Some(p) = self.prep.lock().unwrap().take() else {
            return;
        };
        let owner = self.owner.clone();
        let exit = self.exit.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || kill_and_teardown(&owner, p, &exit));
            }
            Err(_) => kill_and_teardown(&owner, p, &exit),
        }
    }
}
