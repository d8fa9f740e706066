//! Cloister's sandbox: one bubblewrap jail per session, with every namespace unshared, an
//! unprivileged uid, no capabilities, a seccomp filter ([`seccomp`]), a cgroup capping memory,
//! pids and CPU ([`cgroup`]), a read-only runtime and size-capped writable `/tmp` and
//! `/mnt/data`. Inside runs a small stdlib-only Python agent that executes code in a
//! persistent namespace and answers over its stdin/stdout.
//!
//! This crate knows nothing about session pools.
//!
//! ```no_run
//! # async fn f() -> Result<(), cloister_sandbox::SandboxError> {
//! let cfg = cloister_sandbox::SandboxConfig::new(std::env::temp_dir().join("cloister-sbx"));
//! let mut sbx = cloister_sandbox::Sandbox::start(&cfg).await?;
//! let r = sbx.exec("1 + 1", std::time::Duration::from_secs(5)).await?;
//! assert_eq!(r.result.as_deref(), Some("2"));
//! sbx.shutdown().await;
//! # Ok(()) }
//! ```

pub mod cgroup;
pub mod seccomp;

use cgroup::{Cgroup, Limits};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const AGENT: &str = include_str!("agent.py");

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox could not be started: {0}")]
    Start(String),
    #[error("the code ran longer than {0:?} and the sandbox was stopped")]
    Timeout(Duration),
    #[error("the sandbox stopped{}", if *.oom { " (out of memory)" } else { "" })]
    Died { oom: bool },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Host directory for the agent script (bound read-only into every sandbox).
    pub work_dir: PathBuf,
    pub limits: Limits,
    /// Size cap of `/tmp` and of `/mnt/data`, each.
    pub tmpfs_bytes: u64,
    pub python: PathBuf,
    pub start_timeout: Duration,
}

impl SandboxConfig {
    pub fn new(work_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            work_dir,
            limits: Limits {
                memory_bytes: 256 << 20,
                pids: 64,
                cpu_percent: 100,
            },
            tmpfs_bytes: 64 << 20,
            python: PathBuf::from("/usr/bin/python3"),
            start_timeout: Duration::from_secs(15),
        }
    }
}

/// The outcome of running code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    /// `Succeeded` or `Failed` (an exception; the traceback is in `stderr`).
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// `repr` of the last expression, if any.
    pub result: Option<String>,
}

pub struct Sandbox {
    id: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    cgroup: Cgroup,
    next: u64,
    dead: bool,
}

fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"cloister-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: writing from a valid slice to our fd.
        let n = unsafe { libc::write(fd, bytes[off..].as_ptr().cast(), bytes.len() - off) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        off += n as usize;
    }
    // SAFETY: rewinding our own fd.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    Ok(owned)
}

impl Sandbox {
    /// Starts a sandbox and waits until its interpreter answers.
    pub async fn start(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        std::fs::create_dir_all(&cfg.work_dir)?;
        let agent = cfg.work_dir.join("agent.py");
        if std::fs::read_to_string(&agent).ok().as_deref() != Some(AGENT) {
            let tmp = cfg
                .work_dir
                .join(format!("agent.py.{}", std::process::id()));
            std::fs::write(&tmp, AGENT)?;
            std::fs::rename(&tmp, &agent)?;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = Cgroup::create(&id, cfg.limits)
            .map_err(|e| SandboxError::Start(format!("cgroup: {e}")))?;
        let filter = seccomp::compile().map_err(SandboxError::Start)?;
        let memfd = memfd_with(&filter)?;
        let seccomp_fd = memfd.as_raw_fd();
        let procs = cgroup.procs_paths();
        let size = cfg.tmpfs_bytes.to_string();
        let mut cmd = tokio::process::Command::new("bwrap");
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
        ])
        .args(["--hostname", "sandbox"])
        .args([
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
        ])
        .args([
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
        ])
        .args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--size", &size, "--perms", "1777", "--tmpfs", "/tmp"])
        .args(["--size", &size, "--perms", "0777", "--tmpfs", "/mnt/data"])
        .arg("--ro-bind")
        .arg(&agent)
        .arg("/opt/cloister/agent.py")
        .args(["--chdir", "/mnt/data", "--clearenv"])
        .args([
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/mnt/data",
            "--setenv",
            "LANG",
            "C.UTF-8",
        ])
        .args(["--seccomp", "3"])
        .arg(&cfg.python)
        .args(["-I", "-S", "-u", "/opt/cloister/agent.py"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        // SAFETY: the hook only calls dup2 and cgroup writes (open/write/close), which are
        // async-signal-safe, on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(seccomp_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Cgroup::join_self(&procs)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            cgroup.destroy();
            SandboxError::Start(format!("bwrap: {e}"))
        })?;
        drop(memfd);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| SandboxError::Start("no stdin".into()))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| SandboxError::Start("no stdout".into()))?,
        )
        .lines();
        let mut sbx = Sandbox {
            id,
            child,
            stdin,
            stdout,
            cgroup,
            next: 0,
            dead: false,
        };
        match tokio::time::timeout(cfg.start_timeout, sbx.stdout.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("\"ready\"") => Ok(sbx),
            Ok(Ok(other)) => {
                sbx.kill();
                Err(SandboxError::Start(format!(
                    "the interpreter did not start ({other:?})"
                )))
            }
            Ok(Err(e)) => {
                sbx.kill();
                Err(SandboxError::Start(e.to_string()))
            }
            Err(_) => {
                sbx.kill();
                Err(SandboxError::Start(
                    "the interpreter did not answer in time".into(),
                ))
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `code`; state persists between calls. On a timeout or a crash the sandbox is
    /// destroyed and every later call fails.
    pub async fn exec(
        &mut self,
        code: &str,
        timeout: Duration,
    ) -> Result<ExecResult, SandboxError> {
        if self.dead {
            return Err(SandboxError::Died {
                oom: self.cgroup.oom_killed(),
            });
        }
        self.next += 1;
        let line = serde_json::json!({"id": self.next, "code": code}).to_string() + "\n";
        let io = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await?;
            self.stdout.next_line().await
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(Ok(Some(resp))) => serde_json::from_str(&resp)
                .map_err(|e| SandboxError::Start(format!("agent reply: {e}"))),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let oom = self.cgroup.oom_killed();
                self.kill();
                Err(SandboxError::Died { oom })
            }
            Err(_) => {
                self.kill();
                Err(SandboxError::Timeout(timeout))
            }
        }
    }

    /// The number of processes in the sandbox's cgroup.
    pub fn process_count(&self) -> usize {
        self.cgroup.pids().len()
    }

    fn kill(&mut self) {
        self.dead = true;
        let _ = self.child.start_kill();
        self.cgroup.destroy();
    }

    /// Stops the sandbox and removes everything it had.
    pub async fn shutdown(mut self) {
        self.kill();
        let _ = self.child.wait().await;
    }

    /// True once the cgroup is gone (for tests and leak checks).
    pub fn cgroup_exists(&self) -> bool {
        self.cgroup.exists()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.dead {
            self.kill();
        }
    }
}
