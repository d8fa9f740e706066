//! Cloister's sandbox: one bubblewrap jail per session, with every namespace unshared, an
//! unprivileged uid, no capabilities, a seccomp filter ([`seccomp`]), a cgroup capping memory,
//! pids and CPU ([`cgroup`]), a read-only root, `/dev` and runtime, and size-capped writable
//! `/tmp`, `/dev/shm` and `/mnt/data` (the only paths that take a file). Inside runs a Python agent (`agent.py`, embedded in this crate) that executes
//! code in one persistent IPython `InteractiveShell` and serves file requests.
//!
//! This crate knows nothing about session pools.
//!
//! ```no_run
//! # async fn f() -> Result<(), cloister_sandbox::SandboxError> {
//! use std::time::Duration;
//! let cfg = cloister_sandbox::SandboxConfig::new(std::env::temp_dir().join("cloister-sbx"))
//!     .with_runtime(cloister_sandbox::DEFAULT_RUNTIME_DIR);
//! let mut sbx = cloister_sandbox::Sandbox::start(&cfg).await?;
//! let r = sbx.exec("1 + 1", Duration::from_secs(5), 4096).await?;
//! assert_eq!(r.result.as_deref(), Some("2"));
//! sbx.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # The runtime
//! `scripts/sandbox-runtime.sh DIR` builds a venv at `DIR` (default [`DEFAULT_RUNTIME_DIR`]) from
//! Debian's `/usr/bin/python3` and the pins in `crates/sandbox/runtime-requirements.txt`
//! (IPython, numpy, pandas, matplotlib, scipy, scikit-learn, setuptools < 81). The jail binds it
//! read-only at the same path (a venv holds absolute paths) and runs `DIR/bin/python`
//! ([`SandboxConfig::with_runtime`]). Plain `/usr/bin/python3` works too: the agent then falls
//! back to `exec`/`eval` with `repr` results ([`Sandbox::flavour`] says which one runs).
//!
//! # The protocol channel
//! The supervisor makes a `socketpair(AF_UNIX, SOCK_STREAM)` and hands one end to bwrap as
//! fd 4 (fd 3 carries the seccomp program); the agent moves it to a close-on-exec descriptor
//! (≥ 100) at start, so no subprocess inherits it. Requests and replies are JSON lines with an
//! `id`; the supervisor skips lines that are not JSON or answer another request (left over from
//! a cancelled call), and kills the sandbox on a line longer than that request's cap
//! ([`exec_reply_cap`] for an exec, [`MAX_LIST_REPLY`], one base64 [`FILE_CHUNK`] for a read,
//! [`MAX_SMALL_REPLY`] otherwise): it never buffers more. User code runs in the agent's
//! process and could write to the channel on purpose, a forged reply included: that can only
//! confuse its own session, never the supervisor, which applies every cap again to what it
//! parsed (stdout, stderr, result and images of an exec).
//! The first line on the channel goes the other way: `{"env": {...}}`, the session's own
//! variables (the identity binding's secret), which therefore never appear on bwrap's command
//! line or in an environment block the host can read (`/proc/PID/environ` shows what a process
//! was started with; the agent sets them later).
//! The agent points fd 0 at `/dev/null` and fds 1 and 2 at pipes that it drains on two threads
//! into capped buffers, so whatever user code, C extensions or subprocesses write to
//! stdout/stderr is captured into the reply and can never reach the protocol. Binary file data
//! travels base64-encoded, in chunks of [`FILE_CHUNK`] bytes.
//!
//! # Timeouts, interrupts, strays and OOM
//! When [`Sandbox::exec`] times out, the supervisor sends SIGINT to the agent (host pid found
//! through the cgroup and `/proc/PID/status` `NSpid`), the cell ends with `KeyboardInterrupt`,
//! and the call returns [`SandboxError::Timeout`] with the sandbox still usable. If no reply
//! comes within [`SandboxConfig::interrupt_grace`] (code that ignores SIGINT, or a long C call)
//! the whole sandbox is killed: still `Timeout`, but [`Sandbox::is_alive`] is then false.
//! An `exec` or `shell` call dropped before its reply (its caller went away: an HTTP client
//! that disconnected) sends the same SIGINT, so the cell stops instead of holding the sandbox
//! until its own timeout; the next request skips the late reply.
//! After every `exec` the supervisor SIGKILLs every process in the sandbox's cgroup except
//! bwrap's two processes and the agent: background processes never outlive the call that
//! started them (so neither does a `multiprocessing` pool; threads do). If the agent dies (the
//! memory cgroup's OOM killer, `os._exit`, ...) the call returns [`SandboxError::Died`] with
//! `oom` read from the cgroup; the sandbox is then gone and the caller replaces it.
//!
//! # Files
//! [`Sandbox::write_file`], [`Sandbox::read_file`], [`Sandbox::list_files`],
//! [`Sandbox::stat_file`] and [`Sandbox::delete_file`] go through the agent, so every path is
//! resolved inside the jail. Names are relative to `/mnt/data` or absolute under it; anything
//! that resolves outside (`..`, symlinks leading out; checked with `realpath`) is refused with
//! [`FileErrorKind::Invalid`]. The jail stays the real boundary: user code running in the
//! sandbox can reach no more than the agent can. `/mnt/data` is a tmpfs of
//! [`SandboxConfig::data_bytes`]; an upload larger than the free space is refused up front with
//! [`FileErrorKind::TooLarge`]. tmpfs pages are charged to the sandbox's memory cgroup, so the
//! memory limit should exceed `data_bytes + tmp_bytes` plus the interpreter's ~100 MB, or a
//! full disk turns into an OOM kill instead of `ENOSPC`.
//!
//! # Network and identity
//! [`Network::Disabled`] leaves the sandbox with a loopback-only network namespace;
//! [`Network::Enabled`] adds outbound access through slirp4netns ([`net`]). When
//! [`SandboxConfig::identity_socket`] is set, that host unix socket is bound at
//! [`IDENTITY_SOCKET_PATH`] and the agent forwards TCP connections to `127.0.0.1:42356` (in the
//! sandbox's own network namespace) to it byte for byte; `IDENTITY_ENDPOINT` and
//! `IDENTITY_HEADER` are set as Azure's managed-identity clients expect.
//!
//! # Host uid
//! A supervisor running as root joins the sandbox's cgroup in the child it forks and then drops
//! to a host uid/gid of the sandbox's own ([`uids`]: from `CLOISTER_SANDBOX_UID_RANGE`, no
//! supplementary groups) before it execs bwrap, so bwrap runs unprivileged and builds its own
//! user namespaces: every process of the sandbox is that host uid, and 65534 inside (its
//! `uid_map`, seen from the host, reads `65534 <uid> 1`), never host root and never another
//! sandbox's uid. A forked sandbox runs as a uid of its own too, of its zygote's block
//! ([`zygote`], [`uids::UidBlock`]). The agent is not dumpable. Everything bwrap binds must therefore be reachable by any uid:
//! [`SandboxConfig::work_dir`] (made 0755 by [`Sandbox::start`], its files 0644; keep it out
//! of private directories, see [`WORK_ROOT`]), the runtime (a+rX), and the identity socket
//! (0666 in a 0755 directory; the binding secret is what guards it). The supervisor, still
//! root, signals, inspects and kills the sandbox's processes and runs slirp4netns. A
//! supervisor that is not root runs bwrap as its own uid ([`drops_privileges`]).
//!
//! # Shell commands and Node.js
//! [`Sandbox::shell`] asks the Python agent to run a bash command (`op: shell`): a fresh
//! `bash --noprofile --norc` per command, in a new session and process group, in the working
//! directory and with the exported variables the previous command of the sandbox ended with
//! (written by the command's EXIT trap to a memfd the agent reads back). The agent enforces the
//! timeout itself (killing the process group, keeping the output so far) and reports the exit
//! code; the supervisor waits [`AGENT_TIMEOUT_SLACK`] longer before it interrupts.
//! [`SandboxConfig::with_node_runtime`] makes a template whose agent is `node_agent.js`
//! ([`Agent::Node`]): the sandbox starts as usual and `agent.py` execs Node before anything
//! else, so the jail is the same; the Node agent speaks the same protocol (exec with REPL
//! semantics, the file ops), enforces its own timeouts and answers `flavour: node`.
//!
//! # Forked sandboxes
//! [`Sandbox::start`] forks sandboxes from a per-template zygote by default ([`zygote`]; the
//! jail each forked child builds for itself is described there); [`SandboxConfig::fork`] off
//! starts one bwrap per sandbox as described above.
//!
//! # Known limits
//! * Enabled egress reaches the public internet; non-public destinations are refused by an
//!   nftables table ([`egress`]), which needs `nft` and a root supervisor.
//! * The runtime is read-only: `pip install` inside a sandbox does not work.

pub mod cgroup;
pub mod egress;
pub mod net;
pub mod seccomp;
pub mod uids;
pub mod zygote;

use cgroup::{Cgroup, Limits};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;

const AGENT: &str = include_str!("agent.py");
const NODE_AGENT: &str = include_str!("node_agent.js");
const HOSTS: &str = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const RESOLV: &str = "nameserver 10.0.2.3\n";

/// Where `scripts/sandbox-runtime.sh` builds the Python runtime by default.
pub const DEFAULT_RUNTIME_DIR: &str = "/var/lib/cloister/runtime/python";
/// Where `scripts/sandbox-runtime.sh --node` builds the Node.js runtime (the packages of
/// `crates/sandbox/node-runtime/package-lock.json`, and `bin/node`) by default.
pub const DEFAULT_NODE_RUNTIME_DIR: &str = "/var/lib/cloister/runtime/node";
/// How much longer than an execution's own timeout the supervisor waits for an agent that
/// enforces the timeout itself (the shell and Node agents), before it interrupts it.
pub const AGENT_TIMEOUT_SLACK: Duration = Duration::from_secs(2);
/// The `max_output` the agent applies when a request carries none.
pub const DEFAULT_MAX_OUTPUT: usize = 65536;
/// Where [`SandboxConfig::identity_socket`] appears inside the jail.
pub const IDENTITY_SOCKET_PATH: &str = "/run/cloister/identity.sock";
/// The in-sandbox loopback port the agent forwards to the identity socket.
pub const IDENTITY_PORT: u16 = 42356;
/// Bytes of file data per protocol message.
pub const FILE_CHUNK: usize = 4 << 20;
/// The uid and gid of sandboxed processes, inside their user namespace and, when the
/// supervisor runs as root, on the host too (`nobody`/`nogroup`).
pub const SANDBOX_UID: u32 = 65534;
/// A root-owned, world-traversable place for the work dirs of a supervisor running as root:
/// bwrap runs as [`SANDBOX_UID`] and must reach the files it binds, so they cannot sit in a
/// private (0700) data directory.
pub const WORK_ROOT: &str = "/var/lib/cloister/sandbox";

/// True when sandboxes are started as host uid [`SANDBOX_UID`]: the supervisor runs as root
/// (otherwise bwrap simply runs as the supervisor's own uid).
pub fn drops_privileges() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `dir` (and missing parents) readable and traversable by everyone (0755, whatever
/// the umask), so that bwrap running as [`SANDBOX_UID`] can bind what is in it. Existing
/// parents are left as they are.
pub fn prepare_work_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o755 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Removes the empty server cgroup parents (`cloister-` and 12 hex digits, named like the work
/// dirs under `root`) that have no work dir under `root`: what versions that swept only the
/// work dir of a deleted data directory left. A parent with groups in it is never touched
/// (the kernel refuses to remove it), so a live server loses nothing: its next sandbox
/// creates the parent again. Returns how many were removed.
pub fn sweep_stale_cgroup_parents(root: &Path) -> usize {
    let prefix = "cloister-";
    cgroup::parents_named(prefix)
        .into_iter()
        .filter(|n| {
            n.len() == prefix.len() + 12
                && n[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
                && !root.join(n).exists()
        })
        .filter(|n| cgroup::remove_empty_parent(n))
        .count()
}

/// The file in a work dir under [`WORK_ROOT`] that names the directory it serves.
const OWNER_FILE: &str = "owner";

/// Records (root-only, 0600) that `work_dir` serves `owner`, e.g. a server's data directory,
/// so that [`sweep_work_dirs`] can tell when it is orphaned.
pub fn mark_work_dir(work_dir: &Path, owner: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    prepare_work_dir(work_dir)?;
    let tmp = work_dir.join(format!(".{OWNER_FILE}.{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(owner.as_os_str().as_encoded_bytes())
        .and_then(|()| std::fs::rename(&tmp, work_dir.join(OWNER_FILE)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes the work dirs directly under `root` whose recorded owner ([`mark_work_dir`]) no
/// longer exists: what servers whose data directories were deleted (tests, retired servers)
/// left behind, and with each its cgroup parent of the same name (its groups swept, then the
/// parent itself; [`cgroup::remove_parent`]). Directories without an owner record are left
/// alone. Returns how many work dirs were removed.
pub fn sweep_work_dirs(root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let dir = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(owner) = std::fs::read(dir.join(OWNER_FILE)) else {
            continue;
        };
        let owner = Path::new(std::ffi::OsStr::from_bytes(&owner));
        if owner.is_absolute() && !owner.exists() && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
            if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                cgroup::remove_parent(name);
            }
        }
    }
    removed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileErrorKind {
    /// No such file or directory.
    NotFound,
    /// A path outside `/mnt/data`, a directory where a file was expected, and the like.
    Invalid,
    /// Larger than the free space of `/mnt/data`.
    TooLarge,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox could not be started: {0}")]
    Start(String),
    /// The code ran longer than allowed. If the interrupt worked the sandbox is still usable
    /// ([`Sandbox::is_alive`]); otherwise it was killed.
    #[error("the code ran longer than {0:?}")]
    Timeout(Duration),
    #[error("the sandbox stopped{}", if *.oom { " (out of memory)" } else { "" })]
    Died { oom: bool },
    #[error("{message}")]
    File {
        kind: FileErrorKind,
        message: String,
    },
    #[error("the agent answered something unexpected: {0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Loopback only (its own network namespace, nothing attached).
    #[default]
    Disabled,
    /// Outbound access through slirp4netns; the host's loopback stays unreachable.
    Enabled,
}

/// The program that serves the sandbox's protocol (see the crate docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Agent {
    /// `agent.py`: IPython for code, bash for shell commands ([`Sandbox::shell`]).
    #[default]
    Python,
    /// `node_agent.js` on `node`, with REPL semantics for JavaScript; `modules` is the
    /// runtime's `node_modules` (`NODE_PATH`). The sandbox starts as a Python one (forked from a
    /// zygote of its own template, or bwrap) and its agent execs Node before it says ready.
    Node {
        node: PathBuf,
        modules: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Which agent serves the sandbox.
    pub agent: Agent,
    /// Host directory for the agent script and generated `/etc` files (bound read-only).
    /// [`Sandbox::start`] creates it 0755 with 0644 files; every directory above it must be
    /// traversable by [`SANDBOX_UID`] (see [`WORK_ROOT`]).
    pub work_dir: PathBuf,
    pub limits: Limits,
    /// Size cap of `/tmp`.
    pub tmp_bytes: u64,
    /// Size cap of `/mnt/data`.
    pub data_bytes: u64,
    /// The interpreter that runs the agent (`DIR/bin/python` for a runtime venv).
    pub python: PathBuf,
    /// A runtime directory bound read-only at the same path.
    pub runtime_dir: Option<PathBuf>,
    /// Modules the agent imports before it reports ready (missing ones are skipped).
    pub preload: Vec<String>,
    pub network: Network,
    /// A host unix socket bound at [`IDENTITY_SOCKET_PATH`] and forwarded from
    /// `127.0.0.1:`[`IDENTITY_PORT`] inside. [`SANDBOX_UID`] must be able to reach and connect
    /// to it (mode 0666, traversable directories).
    pub identity_socket: Option<PathBuf>,
    /// The value of `IDENTITY_HEADER` inside the sandbox.
    pub identity_header: String,
    /// Extra environment variables (they may override the defaults).
    pub env: Vec<(String, String)>,
    pub start_timeout: Duration,
    /// The cgroup parent of this sandbox (one per server; see [`cgroup::sweep`]).
    pub cgroup_parent: String,
    /// How long an interrupted cell may take to stop before the sandbox is killed.
    pub interrupt_grace: Duration,
    /// Limit for each file request (one chunk).
    pub file_timeout: Duration,
    /// Fork sandboxes from a per-template zygote that has already imported
    /// [`SandboxConfig::zygote_preload`] (see [`zygote`]), so that those pages are shared
    /// between sandboxes, rather than starting one bwrap (and interpreter) per sandbox.
    /// Default: on, unless the environment has `CLOISTER_SANDBOX_ZYGOTE=0`.
    pub fork: bool,
    /// Modules the zygote imports before it forks (in addition to [`SandboxConfig::preload`]
    /// and IPython's shell): every forked sandbox starts with them imported, at no memory cost
    /// of its own.
    pub zygote_preload: Vec<String>,
    /// How many sessions one zygote serves at once, at most, when the supervisor is root: the
    /// size of the zygote's block of host uids (capped by [`uids::block_len`]). The next
    /// session of the template is forked from a new zygote. Default [`uids::BLOCK_LEN`].
    pub zygote_sessions: u32,
}

impl SandboxConfig {
    /// Plain `/usr/bin/python3`, no network, 512 MiB of memory, 64 pids, one CPU, 64 MiB `/tmp`
    /// and 256 MiB `/mnt/data`.
    pub fn new(work_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            agent: Agent::Python,
            work_dir,
            limits: Limits {
                memory_bytes: 512 << 20,
                pids: 64,
                cpu_percent: 100,
            },
            tmp_bytes: 64 << 20,
            data_bytes: 256 << 20,
            python: PathBuf::from("/usr/bin/python3"),
            runtime_dir: None,
            preload: vec![],
            network: Network::Disabled,
            identity_socket: None,
            identity_header: String::new(),
            env: vec![],
            start_timeout: Duration::from_secs(15),
            interrupt_grace: Duration::from_secs(2),
            cgroup_parent: cgroup::DEFAULT_PARENT.to_string(),
            file_timeout: Duration::from_secs(60),
            fork: std::env::var("CLOISTER_SANDBOX_ZYGOTE").map_or(true, |v| v != "0"),
            zygote_preload: vec![],
            zygote_sessions: uids::BLOCK_LEN,
        }
    }

    /// Runs the runtime venv at `dir` (see `scripts/sandbox-runtime.sh`) and preloads numpy (and
    /// pandas too in the zygote).
    pub fn with_runtime(mut self, dir: impl Into<PathBuf>) -> SandboxConfig {
        let dir = dir.into();
        self.python = dir.join("bin").join("python");
        self.runtime_dir = Some(dir);
        self.preload = vec!["numpy".into()];
        self.zygote_preload = vec!["numpy".into(), "pandas".into()];
        self
    }

    /// A Node.js template: the runtime at `dir` (see `scripts/sandbox-runtime.sh --node`) bound
    /// read-only, its `bin/node` (or, without one, `/usr/bin/node`) running `node_agent.js`,
    /// its `node_modules` on `NODE_PATH`. The jail itself starts from the system's plain
    /// `python3`, which only execs Node: no Python module is preloaded.
    pub fn with_node_runtime(mut self, dir: impl Into<PathBuf>) -> SandboxConfig {
        let dir = dir.into();
        let own = dir.join("bin/node");
        let (node, modules) = if dir.join("node_modules").is_dir() {
            (
                if own.exists() {
                    own
                } else {
                    PathBuf::from("/usr/bin/node")
                },
                Some(dir.join("node_modules")),
            )
        } else {
            (PathBuf::from("/usr/bin/node"), None)
        };
        self.runtime_dir = modules.as_ref().map(|_| dir);
        self.python = PathBuf::from("/usr/bin/python3");
        self.preload = vec![];
        self.zygote_preload = vec![];
        self.agent = Agent::Node { node, modules };
        self
    }
}

/// The outcome of running code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    /// `Succeeded` or `Failed` (an exception; the traceback is in `stderr`).
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// IPython's `text/plain` of the last expression (plain `repr` without IPython), if any.
    pub result: Option<String>,
    /// PNGs, base64: matplotlib figures (shown, or still open when the cell ended) and
    /// `display()`ed images, in order.
    pub images: Vec<String>,
    pub duration_ms: u64,
    /// A shell command's exit code ([`Sandbox::shell`]; -1 when it could not start or timed
    /// out); None for code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The agent stopped the execution at its timeout (the shell and Node agents enforce it
    /// themselves, and keep the output so far).
    #[serde(default)]
    pub timed_out: bool,
    /// `CommandStartError`, `ExecutionTimeout`, or a JavaScript error's name, and its message.
    #[serde(default)]
    pub error_name: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// An exec reply as parsed: its strings borrowed from the line where they can be, so that
/// only what survives the caps is copied.
#[derive(Deserialize)]
struct RawExec<'a> {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    interrupted: bool,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(borrow, default)]
    stdout: Text<'a>,
    #[serde(borrow, default)]
    stderr: Text<'a>,
    #[serde(borrow, default)]
    result: Option<Text<'a>>,
    #[serde(borrow, default)]
    images: Vec<Text<'a>>,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    timed_out: bool,
    #[serde(borrow, default)]
    error_name: Option<Text<'a>>,
    #[serde(borrow, default)]
    error_message: Option<Text<'a>>,
}

/// Characters of an exec reply's `error_name` and `error_message` that are kept.
const MAX_ERROR_NAME: usize = 128;
const MAX_ERROR_MESSAGE: usize = 4096;

#[derive(Deserialize, Default)]
struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

impl Text<'_> {
    /// The first `max` characters.
    fn cut(&self, max: usize) -> String {
        let end = self
            .0
            .char_indices()
            .nth(max)
            .map_or(self.0.len(), |(i, _)| i);
        self.0[..end].to_string()
    }
}

impl RawExec<'_> {
    /// The caps of an exec, applied again on the supervisor's side (the reply may have been
    /// written by user code rather than the agent): stdout and stderr to `max_output`
    /// characters, the result to [`MAX_RESULT`], images to [`MAX_IMAGE_BYTES`] in all.
    fn capped(self, max_output: usize) -> Result<ExecResult, SandboxError> {
        let status = match &*self.status.0 {
            s @ ("Succeeded" | "Failed") => s.to_string(),
            other => {
                return Err(SandboxError::Protocol(format!(
                    "an exec reply with status {:?}",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        let mut total = 0usize;
        let images = self
            .images
            .iter()
            .take_while(|i| {
                total = total.saturating_add(i.0.len());
                total <= MAX_IMAGE_BYTES
            })
            .map(|i| i.0.to_string())
            .collect();
        Ok(ExecResult {
            status,
            stdout: self.stdout.cut(max_output),
            stderr: self.stderr.cut(max_output),
            result: self.result.as_ref().map(|r| r.cut(MAX_RESULT)),
            images,
            duration_ms: self.duration_ms,
            exit_code: self
                .exit_code
                .map(|c| c.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
            timed_out: self.timed_out,
            error_name: self.error_name.as_ref().map(|t| t.cut(MAX_ERROR_NAME)),
            error_message: self
                .error_message
                .as_ref()
                .map(|t| t.cut(MAX_ERROR_MESSAGE)),
        })
    }
}

/// The `id` of a reply line, if it is JSON with one (nothing else is copied out of it).
fn reply_id(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<u64>,
    }
    serde_json::from_slice::<Id>(line).ok()?.id
}

/// A file or directory under `/mnt/data`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    /// Absolute, under `/mnt/data`.
    pub path: String,
    pub is_dir: bool,
    /// 0 for directories.
    pub size: u64,
    /// Unix seconds.
    pub modified: f64,
}

/// Characters of an exec's `result` (the text/plain of the last expression) that a reply
/// carries: the agent cuts it there, and so does the supervisor.
pub const MAX_RESULT: usize = 1 << 20;
/// Base64 bytes of images per exec reply (the agent drops further figures with a note on
/// stderr; the supervisor drops any beyond it).
pub const MAX_IMAGE_BYTES: usize = 32 << 20;
/// The longest reply to a file listing (the agent stops listing before it).
pub const MAX_LIST_REPLY: usize = 16 << 20;
/// The longest reply to anything but exec, read and list; and to the start-up line.
pub const MAX_SMALL_REPLY: usize = 1 << 20;
/// Room for a reply's keys, numbers and JSON punctuation.
const REPLY_SLACK: usize = 64 << 10;

/// The longest protocol line the supervisor accepts in answer to an exec with `max_output`:
/// what the agent can legitimately send (stdout and stderr of `max_output` characters each
/// and a result of [`MAX_RESULT`], at most 4 bytes of JSON per character, which the agent
/// guarantees, plus [`MAX_IMAGE_BYTES`]). A longer line (only user code writing to the
/// channel's descriptor can produce one) kills the sandbox; the supervisor never buffers more.
pub fn exec_reply_cap(max_output: usize) -> usize {
    max_output
        .saturating_mul(2)
        .saturating_add(MAX_RESULT)
        .saturating_mul(4)
        .saturating_add(MAX_IMAGE_BYTES + REPLY_SLACK)
}

/// The longest reply to a read of one [`FILE_CHUNK`] (base64).
const READ_REPLY: usize = FILE_CHUNK.div_ceil(3) * 4 + REPLY_SLACK;

/// Newline-delimited frames with a length cap. Cancel-safe: bytes taken from the socket stay
/// in `partial` until their line is complete.
struct LineReader {
    inner: BufReader<OwnedReadHalf>,
    partial: Vec<u8>,
}

impl LineReader {
    fn new(r: OwnedReadHalf) -> LineReader {
        LineReader {
            inner: BufReader::with_capacity(1 << 16, r),
            partial: Vec::new(),
        }
    }

    /// The next line, at most `cap` bytes: a longer one is an `InvalidData` error, after at
    /// most `cap` + 64 KiB bytes were buffered.
    async fn next_line(&mut self, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                return Ok(None);
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if self.partial.len() + take > cap {
                self.partial = Vec::new();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the sandbox sent a reply longer than {cap} bytes"),
                ));
            }
            let need = self.partial.len() + take;
            if need > self.partial.capacity() {
                // Double as usual, but never past the cap: the buffer stays within it.
                let want = need.max(self.partial.capacity() * 2).min(cap);
                self.partial.reserve_exact(want - self.partial.len());
            }
            self.partial.extend_from_slice(&avail[..take]);
            self.inner.consume(take + usize::from(done));
            if done {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }
}

/// The last few KiB of a child's stderr, for error messages.
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    const KEEP: usize = 4096;

    pub(crate) fn spawn<R: AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> Tail {
        let tail = Tail::default();
        if let Some(mut r) = r {
            let t = tail.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    t.push(&buf[..n]);
                }
            });
        }
        tail
    }

    /// The same for a blocking reader, on a thread of its own (for a child that outlives the
    /// tokio runtime that started it).
    pub(crate) fn spawn_thread<R: std::io::Read + Send + 'static>(r: Option<R>) -> Tail {
        let tail = Tail::default();
        if let Some(mut r) = r {
            let t = tail.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    t.push(&buf[..n]);
                }
            });
        }
        tail
    }

    fn push(&self, bytes: &[u8]) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.extend_from_slice(bytes);
        if v.len() > Self::KEEP {
            let cut = v.len() - Self::KEEP;
            v.drain(..cut);
        }
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Sends SIGINT to the agent when dropped armed: see [`Sandbox::exec_request`].
struct InterruptOnDrop {
    /// The agent's pidfd (a raw copy: the [`Sandbox`] that owns it outlives this guard, which
    /// lives inside a call that borrows it) and its host pid.
    pidfd: Option<RawFd>,
    pid: Option<i32>,
    id: String,
    armed: bool,
}

impl InterruptOnDrop {
    fn new(s: &Sandbox) -> InterruptOnDrop {
        InterruptOnDrop {
            pidfd: s.agent_pidfd.as_ref().map(|f| f.as_raw_fd()),
            pid: s.agent_pid,
            id: s.id.clone(),
            armed: !s.dead,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::debug!(sandbox = %self.id, "the caller went away during an execution; interrupting it");
        match self.pidfd {
            Some(fd) => pidfd_sigint(fd, self.pid),
            None => {
                if let Some(pid) = self.pid {
                    // SAFETY: signalling the agent of a sandbox that is still alive (its owner
                    // is borrowed by the call being dropped).
                    unsafe {
                        libc::kill(pid, libc::SIGINT);
                    }
                }
            }
        }
    }
}

/// SIGINT through the agent's pidfd (never another process that reused its pid), or by pid
/// on a kernel without pidfd_send_signal.
fn pidfd_sigint(fd: RawFd, pid: Option<i32>) {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGINT,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
        && let Some(pid) = pid
    {
        // SAFETY: signalling the agent by pid, as before pidfds.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
}

pub struct Sandbox {
    id: String,
    /// bwrap, for a sandbox that has its own (none when forked from a zygote).
    child: Option<Child>,
    /// The zygote it was forked from, kept alive while the sandbox lives.
    zygote: Option<Arc<zygote::Zygote>>,
    writer: OwnedWriteHalf,
    reader: LineReader,
    cgroup: Cgroup,
    slirp: Option<net::Slirp>,
    /// Host pids that the after-exec sweep spares: bwrap (both) and the agent.
    keep: Vec<i32>,
    agent_pid: Option<i32>,
    /// A pidfd of the agent: readable once it has exited (see [`Sandbox::is_alive`]).
    agent_pidfd: Option<OwnedFd>,
    flavour: String,
    data_bytes: u64,
    interrupt_grace: Duration,
    file_timeout: Duration,
    stderr: Tail,
    next: u64,
    dead: bool,
    /// Whether the memory cgroup had OOM-killed something when the sandbox died.
    oom: bool,
    /// The sandbox's own host uid (a root supervisor's; for a forked sandbox, one of its
    /// zygote's block), given back once it is killed.
    host_uid: Option<uids::Lease>,
}

/// A host uid of its own for a sandbox, when the supervisor runs as root.
fn host_uid() -> Result<Option<uids::HostUid>, SandboxError> {
    if !drops_privileges() {
        return Ok(None);
    }
    uids::allocate().map(Some).map_err(SandboxError::Start)
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

/// Writes `content` to `dir/name`, mode 0644 (bwrap reads it as [`SANDBOX_UID`]), unless it is
/// already there (atomically, for concurrent starts).
fn install(dir: &Path, name: &str, content: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let current = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o644)
        && std::fs::read_to_string(&path).ok().as_deref() == Some(content);
    if !current {
        let tmp = dir.join(format!(
            "{name}.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&tmp, content)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if placed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        placed?;
    }
    Ok(path)
}

/// What a jail binds from the work dir, and its environment.
struct Prepared {
    env: Vec<(String, String)>,
    hosts: PathBuf,
    resolv: Option<PathBuf>,
    /// (host file, path inside): the agent and, for a zygote, its own script.
    scripts: Vec<(PathBuf, &'static str)>,
}

/// Writes the work dir's files and builds the jail's environment (checked).
fn prepare(
    cfg: &SandboxConfig,
    extra: &[(&str, &str, &'static str)],
) -> Result<Prepared, SandboxError> {
    prepare_work_dir(&cfg.work_dir)?;
    let mut scripts = vec![(
        install(&cfg.work_dir, "agent.py", AGENT)?,
        "/opt/cloister/agent.py",
    )];
    for (name, content, inside) in extra {
        scripts.push((install(&cfg.work_dir, name, content)?, *inside));
    }
    if let Agent::Node { .. } = cfg.agent {
        scripts.push((
            install(&cfg.work_dir, "node_agent.js", NODE_AGENT)?,
            "/opt/cloister/node_agent.js",
        ));
    }
    let hosts = install(&cfg.work_dir, "hosts", HOSTS)?;
    let resolv = match cfg.network {
        Network::Enabled => Some(install(&cfg.work_dir, "resolv.conf", RESOLV)?),
        Network::Disabled => None,
    };
    if !cfg.python.exists() {
        return Err(SandboxError::Start(format!(
            "no interpreter at {} (build the runtime with scripts/sandbox-runtime.sh)",
            cfg.python.display()
        )));
    }
    let mut env: Vec<(String, String)> = vec![];
    let mut path = String::new();
    if let Some(rt) = &cfg.runtime_dir {
        path = format!("{}/bin:", rt.display());
        let cache = rt.join("share/cloister/matplotlib");
        if cache.is_dir() {
            env.push(("CLOISTER_MPL_CACHE".into(), cache.display().to_string()));
        }
    }
    path.push_str("/usr/local/bin:/usr/bin:/bin");
    for (k, v) in [
        ("PATH", path.as_str()),
        ("HOME", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("TERM", "dumb"),
        ("PAGER", "cat"),
        ("MPLBACKEND", "Agg"),
        ("MPLCONFIGDIR", "/tmp/.config/matplotlib"),
        ("IPYTHONDIR", "/tmp/.ipython"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    if !cfg.preload.is_empty() {
        env.push(("CLOISTER_PRELOAD".into(), cfg.preload.join(",")));
    }
    if let Agent::Node { node, modules } = &cfg.agent {
        if !node.exists() {
            return Err(SandboxError::Start(format!(
                "no Node.js at {} (install nodejs, or build the runtime with scripts/sandbox-runtime.sh --node)",
                node.display()
            )));
        }
        env.push(("CLOISTER_AGENT".into(), "node".into()));
        env.push(("CLOISTER_NODE".into(), node.display().to_string()));
        if let Some(m) = modules {
            env.push(("NODE_PATH".into(), m.display().to_string()));
        }
    }
    if let Some(sock) = &cfg.identity_socket {
        if !sock.exists() {
            return Err(SandboxError::Start(format!(
                "identity socket {} does not exist",
                sock.display()
            )));
        }
        env.push((
            "CLOISTER_IDENTITY_SOCKET".into(),
            IDENTITY_SOCKET_PATH.into(),
        ));
        env.push((
            "IDENTITY_ENDPOINT".into(),
            format!("http://127.0.0.1:{IDENTITY_PORT}/msi/token"),
        ));
        env.push(("IDENTITY_HEADER".into(), cfg.identity_header.clone()));
    }
    env.extend(cfg.env.iter().cloned());
    for (k, v) in &env {
        check_env(k, v)?;
    }
    Ok(Prepared {
        env,
        hosts,
        resolv,
        scripts,
    })
}

/// bwrap with the jail's namespaces, root file system and environment, up to (not including)
/// `--seccomp` and the command. `zygote`: `/dev` read-only (the forked sessions share it and
/// mount their own `/dev/shm` and `/dev/pts` over it) and small `/tmp` and `/mnt/data`
/// (mount points; every session mounts its own).
fn bwrap_command(cfg: &SandboxConfig, files: &Prepared, zygote: bool) -> tokio::process::Command {
    let uid = SANDBOX_UID.to_string();
    let (tmp_size, data_size) = if zygote {
        ((1u64 << 20).to_string(), (1u64 << 20).to_string())
    } else {
        (cfg.tmp_bytes.to_string(), cfg.data_bytes.to_string())
    };
    let mut cmd = tokio::process::Command::new("bwrap");
    cmd.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        &uid,
        "--gid",
        &uid,
        "--hostname",
        "sandbox",
    ]);
    if zygote {
        // bwrap makes the parents of mount points 0700, which is enough for a sandbox whose
        // every process is one uid; a zygote's sessions are uids of their own.
        for d in zygote_dirs(cfg, files) {
            cmd.args(["--perms", "0755", "--dir"]).arg(d);
        }
    }
    cmd.args(["--ro-bind", "/usr", "/usr"])
        .args([
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
        // Debian's alternatives (`awk`, `editor`, ...) are symlinks through /etc/alternatives
        // into /usr: without it `/usr/bin/awk` dangles (shell sessions need awk).
        .args(["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"])
        .arg("--ro-bind")
        .arg(&files.hosts)
        .arg("/etc/hosts")
        .args(["--proc", "/proc", "--dev", "/dev"]);
    if !zygote {
        // Forked sessions mount their own /dev/shm over the zygote's read-only /dev.
        cmd.args([
            "--size", &tmp_size, "--perms", "1777", "--tmpfs", "/dev/shm",
        ]);
    }
    // /dev's own tmpfs is read-only: nothing but the capped mounts takes a file.
    cmd.args(["--remount-ro", "/dev"])
        .args(["--size", &tmp_size, "--perms", "1777", "--tmpfs", "/tmp"])
        .args([
            "--size",
            &data_size,
            "--perms",
            "0777",
            "--tmpfs",
            "/mnt/data",
        ]);
    if let Some(rt) = &cfg.runtime_dir {
        cmd.arg("--ro-bind").arg(rt).arg(rt);
    }
    if let Some(resolv) = &files.resolv {
        cmd.arg("--ro-bind")
            .arg(resolv)
            .arg("/etc/resolv.conf")
            .args(["--ro-bind-try", "/etc/ssl", "/etc/ssl"])
            .args([
                "--ro-bind-try",
                "/etc/ca-certificates",
                "/etc/ca-certificates",
            ]);
    }
    if let Some(sock) = &cfg.identity_socket {
        cmd.arg("--ro-bind").arg(sock).arg(IDENTITY_SOCKET_PATH);
    }
    for (host, inside) in &files.scripts {
        cmd.arg("--ro-bind").arg(host).arg(inside);
    }
    // Last of the mount operations: the root (bwrap's tmpfs, holding /etc, /var, /opt, /run
    // and the mount points) becomes read-only, so the only writable paths are the size-capped
    // tmpfs mounts above; for a zygote, also the root every forked session shares.
    cmd.args(["--remount-ro", "/"]);
    cmd.args(["--chdir", "/mnt/data", "--clearenv"]);
    for (k, v) in &files.env {
        cmd.arg("--setenv").arg(k).arg(v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The directories bwrap would create, as parents of a zygote's mount points, that its
/// sessions (uids other than the zygote's) must traverse; parents first.
fn zygote_dirs(cfg: &SandboxConfig, files: &Prepared) -> Vec<PathBuf> {
    let mut dests: Vec<PathBuf> = ["/etc/hosts", "/etc/resolv.conf", "/mnt/data"]
        .iter()
        .map(PathBuf::from)
        .chain([PathBuf::from(IDENTITY_SOCKET_PATH)])
        .chain(
            files
                .scripts
                .iter()
                .map(|(_, inside)| PathBuf::from(inside)),
        )
        .collect();
    dests.extend(cfg.runtime_dir.iter().cloned());
    let mut dirs: Vec<PathBuf> = dests
        .iter()
        .flat_map(|d| {
            d.ancestors()
                .skip(1)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .filter(|d| d.parent().is_some() && !d.starts_with("/usr"))
        .collect();
    dirs.sort_by_key(|d| (d.components().count(), d.clone()));
    dirs.dedup();
    dirs
}

/// Spawns `cmd` with `fds` as its fds 3 and 4, inside `cgroup`, as host [`SANDBOX_UID`] when
/// the supervisor is root.
/// Makes `fds` the child's descriptors 3, 4, ... (without close-on-exec). Async-signal-safe
/// (fcntl and dup2 only), for pre-exec hooks.
///
/// # Safety
/// Call only between fork and exec.
pub(crate) unsafe fn place_fds(fds: &[std::os::fd::RawFd]) -> std::io::Result<()> {
    // Move every descriptor out of the way first, so that dup2 onto 3, 4, ... can neither
    // clobber another nor be a no-op that keeps close-on-exec.
    let mut high = [0; 8];
    if fds.len() > high.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: plain fcntl on a descriptor the caller owns.
        *h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *h < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, h) in (3..).zip(&high[..fds.len()]) {
        // SAFETY: plain dup2 onto a fixed descriptor number.
        if unsafe { libc::dup2(*h, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The descriptors a jail starts with: the seccomp program (fd 3) and the supervisor's
/// channel (fd 4; the supervisor keeps the other end). `cgroup` is destroyed on failure.
fn jail_fds(
    cgroup: &Cgroup,
) -> Result<
    (
        OwnedFd,
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
    SandboxError,
> {
    let made = (|| {
        let filter = seccomp::compile().map_err(SandboxError::Start)?;
        let memfd = memfd_with(&filter)?;
        let (host_end, jail_end) = std::os::unix::net::UnixStream::pair()?;
        Ok((memfd, host_end, jail_end))
    })();
    if made.is_err() {
        cgroup.destroy();
    }
    made
}

/// Parses an interpreter's (or zygote's) first line: `{"ready": true, ...}`, or why not.
fn ready_line(line: std::io::Result<Option<Vec<u8>>>) -> Result<Value, String> {
    match line {
        Ok(Some(line)) => serde_json::from_slice::<Value>(&line)
            .ok()
            .filter(|v| v["ready"] == true)
            .ok_or_else(|| String::from_utf8_lossy(&line).into_owned()),
        Ok(None) => Err("no answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The host pid of the process in `cgroup` whose pid in its own (second-level) pid namespace
/// is `ns`.
fn host_pid(cgroup: &Cgroup, ns: i32) -> Option<i32> {
    cgroup
        .pids()
        .into_iter()
        .find(|p| matches!(ns_pids(*p).as_slice(), [_, n] if *n == ns))
}

/// `drop_to`: the host uid (and gid) to become before bwrap runs (a root supervisor's
/// sandbox, see [`uids`]); None leaves the supervisor's own.
fn jail_hooks(
    cmd: &mut std::process::Command,
    fds: &[std::os::fd::RawFd],
    cgroup: &Cgroup,
    drop_to: Option<u32>,
) {
    use std::os::unix::process::CommandExt;
    let procs = cgroup.procs_paths();
    let fds = fds.to_vec();
    // SAFETY: the hook only calls fcntl, dup2, cgroup writes (open/write/close), setgroups,
    // setgid and setuid, which are async-signal-safe (no allocation, no locks), on data
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&fds)?;
            // Joining the cgroup needs root; then become the sandbox's own host uid before
            // bwrap runs (setuid from root clears every capability), so that the sandbox's user
            // namespaces belong to, and map to, an unprivileged host uid.
            Cgroup::join_self(&procs)?;
            if let Some(host) = drop_to
                && (libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(host) < 0
                    || libc::setuid(host) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn spawn_error(e: std::io::Error) -> SandboxError {
    SandboxError::Start(if e.kind() == std::io::ErrorKind::NotFound {
        "bwrap is not installed (apt-get install bubblewrap)".into()
    } else {
        format!("bwrap: {e}")
    })
}

fn spawn_jailed(
    mut cmd: tokio::process::Command,
    fds: [std::os::fd::RawFd; 2],
    cgroup: &Cgroup,
    drop_to: Option<u32>,
) -> Result<Child, SandboxError> {
    jail_hooks(cmd.as_std_mut(), &fds, cgroup, drop_to);
    cmd.spawn().map_err(spawn_error)
}

/// The pid namespace ids of a host process (`NSpid`: host first, innermost last).
fn ns_pids(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A pidfd for `pid` (close-on-exec), or None where the kernel has none (before 5.3).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

/// Set in a bwrap-started jail: the agent's first line on its channel is `{"env": {...}}`.
const ENV_ON_CHANNEL: &str = "CLOISTER_ENV_ON_CHANNEL";

/// The variables that belong to one session rather than its template (secrets among them):
/// they reach the sandbox only on its protocol channel, never through argv or an environ the
/// host can read.
fn session_env(cfg: &SandboxConfig) -> Vec<(String, String)> {
    match &cfg.identity_socket {
        Some(_) => vec![(zygote::SESSION_ENV.to_string(), cfg.identity_header.clone())],
        None => vec![],
    }
}

/// `{"env": {...}}` and a newline: the first line a sandbox reads from its channel.
pub(crate) fn env_line(env: Vec<(String, String)>) -> Vec<u8> {
    let env: serde_json::Map<String, Value> = env
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut line = json!({ "env": env }).to_string().into_bytes();
    line.push(b'\n');
    line
}

fn check_env(k: &str, v: &str) -> Result<(), SandboxError> {
    if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
        return Err(SandboxError::Start(format!(
            "invalid environment variable {k:?}"
        )));
    }
    Ok(())
}

impl Sandbox {
    /// Starts a sandbox and waits until its interpreter answers (and, for
    /// [`Network::Enabled`], until its network is up).
    /// Starts a sandbox: forked from its template's zygote when [`SandboxConfig::fork`] is set
    /// (see [`zygote`]), or as a bubblewrap process of its own. A zygote that cannot start
    /// (a kernel without nested user namespaces, say) makes this fall back to the latter.
    pub async fn start(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        if cfg.fork {
            match zygote::get(cfg).await {
                Ok((z, uid)) => return Self::start_forked(cfg, z, uid).await,
                Err(e) => {
                    tracing::warn!("sandbox zygote unavailable, starting bwrap per sandbox: {e}")
                }
            }
        }
        Self::start_bwrap(cfg).await
    }

    async fn start_forked(
        cfg: &SandboxConfig,
        z: Arc<zygote::Zygote>,
        uid: Option<uids::BlockUid>,
    ) -> Result<Sandbox, SandboxError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = Cgroup::create_in(&cfg.cgroup_parent, &id, cfg.limits)
            .map_err(|e| SandboxError::Start(format!("cgroup: {e}")))?;
        let uid = uid.map(uids::Lease::Session);
        let forked = z
            .fork(
                &cgroup,
                cfg.tmp_bytes,
                cfg.data_bytes,
                uid.as_ref().map(uids::Lease::get),
                session_env(cfg),
            )
            .await;
        let host_end = match forked {
            Ok(v) => v,
            Err(e) => {
                cgroup.destroy();
                if let Some(u) = uid
                    && cgroup.exists()
                {
                    u.leak();
                }
                return Err(e);
            }
        };
        let sbx = Sandbox::starting(id, None, Some(z), host_end, cgroup, Tail::default(), cfg)?
            .with_uid(uid);
        sbx.finish_start(cfg).await
    }

    async fn start_bwrap(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let mut files = prepare(cfg, &[])?;
        // The session's own variables (the identity binding's secret) never go on bwrap's
        // command line, which every local user can read: the agent reads them from its
        // channel first thing, as a forked session's pid 1 does.
        files.env.retain(|(k, _)| k != zygote::SESSION_ENV);
        files.env.push((ENV_ON_CHANNEL.into(), "1".into()));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let host_uid = host_uid()?;
        let cgroup = Cgroup::create_in(&cfg.cgroup_parent, &id, cfg.limits)
            .map_err(|e| SandboxError::Start(format!("cgroup: {e}")))?;
        let (memfd, mut host_end, jail_end) = jail_fds(&cgroup)?;
        if let Err(e) = std::io::Write::write_all(&mut host_end, &env_line(session_env(cfg))) {
            cgroup.destroy();
            return Err(e.into());
        }
        let mut cmd = bwrap_command(cfg, &files, false);
        cmd.args(["--seccomp", "3"])
            .arg(&cfg.python)
            .args(["-I", "-B", "/opt/cloister/agent.py"]);
        let spawned = spawn_jailed(
            cmd,
            [memfd.as_raw_fd(), jail_end.as_raw_fd()],
            &cgroup,
            host_uid.as_ref().map(uids::HostUid::get),
        );
        drop((memfd, jail_end));
        let mut child = spawned.inspect_err(|_| cgroup.destroy())?;
        let stderr = Tail::spawn(child.stderr.take());
        let sbx = Sandbox::starting(id, Some(child), None, host_end, cgroup, stderr, cfg)?
            .with_uid(host_uid.map(uids::Lease::Own));
        sbx.finish_start(cfg).await
    }

    fn with_uid(mut self, uid: Option<uids::Lease>) -> Sandbox {
        self.host_uid = uid;
        self
    }

    /// A sandbox whose interpreter has not answered yet (see [`Sandbox::finish_start`]).
    fn starting(
        id: String,
        child: Option<Child>,
        zygote: Option<Arc<zygote::Zygote>>,
        host_end: std::os::unix::net::UnixStream,
        cgroup: Cgroup,
        stderr: Tail,
        cfg: &SandboxConfig,
    ) -> Result<Sandbox, SandboxError> {
        host_end.set_nonblocking(true)?;
        let (r, w) = tokio::net::UnixStream::from_std(host_end)?.into_split();
        Ok(Sandbox {
            id,
            child,
            zygote,
            writer: w,
            reader: LineReader::new(r),
            cgroup,
            slirp: None,
            keep: vec![],
            agent_pid: None,
            agent_pidfd: None,
            flavour: String::new(),
            data_bytes: cfg.data_bytes,
            interrupt_grace: cfg.interrupt_grace,
            file_timeout: cfg.file_timeout,
            stderr,
            next: 0,
            dead: false,
            oom: false,
            host_uid: None,
        })
    }

    /// Kills the sandbox and waits for bwrap (if it has its own) to go.
    async fn abandon(&mut self) {
        self.kill();
        if let Some(c) = &mut self.child {
            let _ = c.wait().await;
        }
    }

    /// Waits for the agent's hello, finds its processes and attaches the network.
    async fn finish_start(mut self, cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let ready =
            match tokio::time::timeout(cfg.start_timeout, self.reader.next_line(MAX_SMALL_REPLY))
                .await
            {
                Ok(line) => ready_line(line),
                Err(_) => Err("no answer in time".into()),
            };
        let ready = match ready {
            Ok(v) => v,
            Err(why) => {
                self.abandon().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(SandboxError::Start(format!(
                    "the interpreter did not start ({why}): {}",
                    self.stderr.text().trim()
                )));
            }
        };
        self.flavour = ready["flavour"].as_str().unwrap_or("plain").to_string();
        let agent_ns = ready["pid"].as_i64().unwrap_or(-1) as i32;
        if let Some(outer) = self.child.as_ref().and_then(|c| c.id()) {
            self.keep.push(outer as i32);
        }
        // The sandbox's own pid namespace is the innermost one: its pid 1 (bwrap's init, or
        // the forked session's reaper) and the agent are spared by the after-exec sweep.
        for p in self.cgroup.pids() {
            let ns = ns_pids(p);
            if ns.len() < 2 {
                continue;
            }
            match ns.last() {
                Some(1) => self.keep.push(p),
                Some(n) if *n == agent_ns => {
                    self.keep.push(p);
                    self.agent_pid = Some(p);
                }
                _ => {}
            }
        }
        let Some(agent) = self.agent_pid else {
            self.abandon().await;
            return Err(SandboxError::Start(
                "the agent's host pid was not found in its cgroup".into(),
            ));
        };
        self.agent_pidfd = pidfd_open(agent);
        if cfg.network == Network::Enabled {
            match net::Slirp::start(self.agent_pid.unwrap_or(-1), cfg.start_timeout).await {
                Ok(s) => self.slirp = Some(s),
                Err(e) => {
                    self.abandon().await;
                    return Err(e);
                }
            }
        }
        Ok(self)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `ipython` (the runtime) or `plain` (no IPython importable: `exec`/`repr`).
    pub fn flavour(&self) -> &str {
        &self.flavour
    }

    /// False once the sandbox has been killed (after a crash, an OOM kill, an interrupt that
    /// did not work, or [`Sandbox::kill`]), and as soon as its agent process has exited for any
    /// other reason (its zygote was killed, someone on the host killed it): this asks the
    /// kernel (the agent's pidfd, or `/proc` where pidfds are missing), not the last I/O.
    pub fn is_alive(&self) -> bool {
        !self.dead && !self.agent_exited()
    }

    fn agent_exited(&self) -> bool {
        match (&self.agent_pidfd, self.agent_pid) {
            (Some(fd), _) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one valid descriptor we own, without waiting.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n > 0 && p.revents != 0
            }
            (None, Some(pid)) => is_zombie(pid),
            (None, None) => false,
        }
    }

    /// The agent's pid in the host's pid namespace.
    pub fn agent_pid(&self) -> Option<i32> {
        self.agent_pid
    }

    /// The sandbox's host uid (and gid) when the supervisor runs as root ([`uids`]): its own,
    /// for a forked sandbox too (one of its zygote's block, see [`zygote`]).
    pub fn host_uid(&self) -> Option<u32> {
        self.host_uid.as_ref().map(uids::Lease::get)
    }

    /// The host uid of the zygote a forked sandbox came from (a root supervisor's).
    pub fn zygote_uid(&self) -> Option<u32> {
        self.zygote.as_ref().and_then(|z| z.uid())
    }

    /// The slirp4netns helper's pid, for [`Network::Enabled`] sandboxes.
    pub fn network_helper_pid(&self) -> Option<u32> {
        self.slirp.as_ref().and_then(|s| s.pid())
    }

    fn died(&mut self) -> SandboxError {
        self.oom = self.cgroup.oom_killed();
        self.kill();
        SandboxError::Died { oom: self.oom }
    }

    fn check_alive(&mut self) -> Result<(), SandboxError> {
        if self.dead {
            return Err(SandboxError::Died { oom: self.oom });
        }
        if self.agent_exited() {
            return Err(self.died());
        }
        Ok(())
    }

    async fn send(&mut self, mut req: Value) -> Result<u64, SandboxError> {
        self.check_alive()?;
        self.next += 1;
        req["id"] = json!(self.next);
        let mut line =
            serde_json::to_vec(&req).map_err(|e| SandboxError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let io = async {
            self.writer.write_all(&line).await?;
            self.writer.flush().await
        };
        match io.await {
            Ok(()) => Ok(self.next),
            Err(_) => Err(self.died()),
        }
    }

    /// The reply to request `id` (cancel-safe: so is [`LineReader::next_line`]). Lines that
    /// are not JSON, or answer another request, are skipped: only user code writing to the
    /// channel's descriptor produces the former, a cancelled call the latter.
    /// A line longer than `cap` kills the sandbox ([`SandboxError::Protocol`]).
    async fn recv(&mut self, id: u64, cap: usize) -> Result<Value, SandboxError> {
        let line = self.recv_line(id, cap).await?;
        serde_json::from_slice(&line).map_err(|e| SandboxError::Protocol(e.to_string()))
    }

    /// The raw reply line to request `id` (see [`Sandbox::recv`]), at most `cap` bytes.
    async fn recv_line(&mut self, id: u64, cap: usize) -> Result<Vec<u8>, SandboxError> {
        loop {
            match self.reader.next_line(cap).await {
                Ok(Some(line)) => {
                    if reply_id(&line) == Some(id) {
                        return Ok(line);
                    }
                }
                Ok(None) => return Err(self.died()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(sandbox = %self.id, "{e}; stopping it");
                    self.kill();
                    return Err(SandboxError::Protocol(format!("{e}; it was stopped")));
                }
                Err(_) => return Err(self.died()),
            }
        }
    }

    /// One request with a deadline and a reply cap; on timeout the sandbox is killed.
    async fn request(
        &mut self,
        req: Value,
        timeout: Duration,
        cap: usize,
    ) -> Result<Value, SandboxError> {
        let id = self.send(req).await?;
        match tokio::time::timeout(timeout, self.recv(id, cap)).await {
            Ok(r) => r.and_then(reply_error),
            Err(_) => {
                self.kill();
                Err(SandboxError::Timeout(timeout))
            }
        }
    }

    /// Runs `code`; state persists between calls. stdout and stderr are each cut to
    /// `max_output` characters. On timeout the cell is interrupted (see the crate docs). A Node
    /// agent stops its cell at `timeout` itself (the reply has `timed_out`, and the output so
    /// far); the supervisor's interrupt then comes [`AGENT_TIMEOUT_SLACK`] later.
    pub async fn exec(
        &mut self,
        code: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecResult, SandboxError> {
        let deadline = if self.flavour == "node" {
            timeout + AGENT_TIMEOUT_SLACK
        } else {
            timeout
        };
        let req = json!({"op": "exec", "code": code, "max_output": max_output,
                         "timeout_ms": timeout.as_millis() as u64});
        self.exec_request(req, deadline, timeout, max_output).await
    }

    /// Runs a bash command (Python agent only) in `/mnt/data` or wherever the previous command
    /// of this sandbox left its working directory, with the variables it exported (see
    /// `agent.py`). The agent runs it in a process group of its own and kills that group when
    /// the command ends or at `timeout` (`timed_out`, exit code -1, the output so far); the
    /// after-exec sweep then kills whatever else the command left. `exit_code` is bash's (128+N
    /// for a command killed by signal N), or -1 with `error_name` `CommandStartError` when bash
    /// could not be started.
    pub async fn shell(
        &mut self,
        command: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecResult, SandboxError> {
        let req = json!({"op": "shell", "command": command, "max_output": max_output,
                         "timeout_ms": timeout.as_millis() as u64});
        self.exec_request(req, timeout + AGENT_TIMEOUT_SLACK, timeout, max_output)
            .await
    }

    async fn exec_request(
        &mut self,
        req: Value,
        deadline: Duration,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecResult, SandboxError> {
        let id = self.send(req).await?;
        // Dropped before the reply (the caller went away: an HTTP client that disconnected
        // mid-execution), the cell is interrupted as on a timeout rather than left to hold the
        // sandbox until its own timeout; the late reply is skipped by the next request.
        let guard = InterruptOnDrop::new(self);
        let r = self.exec_reply(id, deadline, timeout, max_output).await;
        guard.disarm();
        r
    }

    async fn exec_reply(
        &mut self,
        id: u64,
        deadline: Duration,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecResult, SandboxError> {
        let cap = exec_reply_cap(max_output);
        let line = match tokio::time::timeout(deadline, self.recv_line(id, cap)).await {
            Ok(r) => r?,
            Err(_) => {
                self.interrupt();
                match tokio::time::timeout(self.interrupt_grace, self.recv_line(id, cap)).await {
                    Ok(Ok(v))
                        if serde_json::from_slice::<RawExec>(&v).is_ok_and(|r| r.interrupted) =>
                    {
                        self.sweep().await;
                        return Err(SandboxError::Timeout(timeout));
                    }
                    Ok(Ok(v)) => v,
                    // It died under the interrupt (a Node agent whose event loop is blocked
                    // has no SIGINT handler): still the timeout; the sandbox is gone.
                    Ok(Err(SandboxError::Died { .. })) => {
                        self.kill();
                        return Err(SandboxError::Timeout(timeout));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        self.kill();
                        return Err(SandboxError::Timeout(timeout));
                    }
                }
            }
        };
        self.sweep().await;
        let reply = serde_json::from_slice::<RawExec>(&line)
            .map_err(|e| SandboxError::Protocol(e.to_string()))?;
        if let Some(e) = reply.error {
            return Err(SandboxError::Protocol(e["message"].to_string()));
        }
        reply.capped(max_output)
    }

    /// Sends SIGINT to the agent: a running cell stops with `KeyboardInterrupt`; an idle agent
    /// ignores it.
    pub fn interrupt(&self) {
        if let (Some(fd), false) = (&self.agent_pidfd, self.dead) {
            pidfd_sigint(fd.as_raw_fd(), self.agent_pid);
            return;
        }
        if let (Some(pid), false) = (self.agent_pid, self.dead) {
            // SAFETY: signalling the agent, a live process of our own sandbox.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
    }

    /// Kills every process in the cgroup but bwrap's and the agent's; then lets the agent reap
    /// the ones that were its children.
    async fn sweep(&mut self) {
        if self.dead || self.keep.is_empty() {
            return;
        }
        let mut killed = 0;
        for _ in 0..200 {
            let strays: Vec<i32> = self
                .cgroup
                .pids()
                .into_iter()
                .filter(|p| !self.keep.contains(p) && !is_zombie(*p))
                .collect();
            if strays.is_empty() {
                break;
            }
            for p in strays {
                // SAFETY: signalling a process read from our sandbox's cgroup.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
                killed += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if killed > 0 {
            tracing::debug!(sandbox = %self.id, killed, "killed background processes");
            let _ = self
                .request(json!({"op": "ping"}), self.file_timeout, MAX_SMALL_REPLY)
                .await;
        }
    }

    /// Writes `data` to `name` (relative to `/mnt/data` or absolute under it), creating parent
    /// directories and replacing an existing file atomically.
    pub async fn write_file(&mut self, name: &str, data: &[u8]) -> Result<FileEntry, SandboxError> {
        use base64::Engine as _;
        if data.len() as u64 > self.data_bytes {
            return Err(SandboxError::File {
                kind: FileErrorKind::TooLarge,
                message: format!(
                    "{} bytes exceed the {} bytes of /mnt/data",
                    data.len(),
                    self.data_bytes
                ),
            });
        }
        let mut chunks: Vec<&[u8]> = data.chunks(FILE_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            let reply = self
                .request(
                    json!({"op": "write", "path": name, "size": data.len(), "first": i == 0,
                           "last": i + 1 == n, "data": b64}),
                    self.file_timeout,
                    MAX_SMALL_REPLY,
                )
                .await?;
            if i + 1 == n {
                return entry(&reply);
            }
        }
        unreachable!("the last chunk returns")
    }

    /// Writes one piece of a file whose length need not be known up front (a streamed
    /// upload). The `first` piece opens a hidden temporary file beside `name` (replacing any
    /// unfinished one), every piece appends, and the `last` renames it into place and returns
    /// its entry; until then the old file, if any, is untouched. `size_hint` (0 when unknown) is
    /// checked against the free space of `/mnt/data` on the first piece; past it, a full
    /// `/mnt/data` fails the piece with `TooLarge`. Any other request to the sandbox, or
    /// [`Sandbox::abort_write`], drops an unfinished file.
    pub async fn write_file_piece(
        &mut self,
        name: &str,
        size_hint: u64,
        first: bool,
        last: bool,
        data: &[u8],
    ) -> Result<Option<FileEntry>, SandboxError> {
        use base64::Engine as _;
        if size_hint > self.data_bytes {
            return Err(SandboxError::File {
                kind: FileErrorKind::TooLarge,
                message: format!(
                    "{size_hint} bytes exceed the {} bytes of /mnt/data",
                    self.data_bytes
                ),
            });
        }
        let mut chunks: Vec<&[u8]> = data.chunks(FILE_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            let end = last && i + 1 == n;
            let reply = self
                .request(
                    json!({"op": "write", "path": name, "size": size_hint, "first": first && i == 0,
                           "last": end, "data": b64}),
                    self.file_timeout,
                    MAX_SMALL_REPLY,
                )
                .await?;
            if end {
                return entry(&reply).map(Some);
            }
        }
        Ok(None)
    }

    /// Drops the unfinished file of [`Sandbox::write_file_piece`], if there is one.
    pub async fn abort_write(&mut self) {
        // The agent drops an unfinished upload on any request that is not a write.
        let _ = self
            .request(json!({"op": "ping"}), self.file_timeout, MAX_SMALL_REPLY)
            .await;
    }

    /// Reads a whole file.
    pub async fn read_file(&mut self, name: &str) -> Result<Vec<u8>, SandboxError> {
        use base64::Engine as _;
        let mut out = Vec::new();
        loop {
            let reply = self
                .request(
                    json!({"op": "read", "path": name, "offset": out.len(), "length": FILE_CHUNK}),
                    self.file_timeout,
                    READ_REPLY,
                )
                .await?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(reply["data"].as_str().unwrap_or_default())
                .map_err(|e| SandboxError::Protocol(e.to_string()))?;
            if data.len() > FILE_CHUNK {
                self.kill();
                return Err(SandboxError::Protocol(format!(
                    "the sandbox sent {} bytes for a read of {FILE_CHUNK}; it was stopped",
                    data.len()
                )));
            }
            let done = data.is_empty() || reply["eof"] == true;
            out.extend_from_slice(&data);
            if done || out.len() as u64 > self.data_bytes {
                return Ok(out);
            }
        }
    }

    /// Lists a directory (`""` or `/mnt/data` for the top), depth-first when `recursive`.
    pub async fn list_files(
        &mut self,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, SandboxError> {
        let reply = self
            .request(
                json!({"op": "list", "path": path, "recursive": recursive}),
                self.file_timeout,
                MAX_LIST_REPLY,
            )
            .await?;
        serde_json::from_value(reply["entries"].clone())
            .map_err(|e| SandboxError::Protocol(e.to_string()))
    }

    /// Metadata of one file or directory (a final symlink is described, not followed).
    pub async fn stat_file(&mut self, name: &str) -> Result<FileEntry, SandboxError> {
        let reply = self
            .request(
                json!({"op": "stat", "path": name}),
                self.file_timeout,
                MAX_SMALL_REPLY,
            )
            .await?;
        entry(&reply)
    }

    /// Deletes a file, a symlink, or a directory with everything in it.
    pub async fn delete_file(&mut self, name: &str) -> Result<(), SandboxError> {
        self.request(
            json!({"op": "delete", "path": name}),
            self.file_timeout,
            MAX_SMALL_REPLY,
        )
        .await
        .map(|_| ())
    }

    /// The number of processes in the sandbox's cgroup.
    pub fn process_count(&self) -> usize {
        self.cgroup.pids().len()
    }

    /// Kills every process of the sandbox and removes its cgroup (idempotent).
    pub fn kill(&mut self) {
        if !self.dead {
            tracing::debug!(sandbox = %self.id, "killing the sandbox");
        }
        self.dead = true;
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
        self.cgroup.destroy();
        if let Some(s) = &mut self.slirp {
            s.kill();
        }
        // Its uid is free again once no process of the sandbox is left; one that could not be
        // killed keeps it for good.
        if let Some(u) = self.host_uid.take()
            && self.cgroup.exists()
        {
            u.leak();
        }
    }

    /// Stops the sandbox and removes everything it had.
    pub async fn shutdown(mut self) {
        self.abandon().await;
        if let Some(s) = &mut self.slirp {
            s.wait().await;
        }
    }

    /// True while the cgroup exists (for tests and leak checks).
    pub fn cgroup_exists(&self) -> bool {
        self.cgroup.exists()
    }
}

fn reply_error(v: Value) -> Result<Value, SandboxError> {
    let Some(e) = v.get("error") else {
        return Ok(v);
    };
    let kind = serde_json::from_value(e["kind"].clone()).unwrap_or(FileErrorKind::Other);
    let message = e["message"].as_str().unwrap_or("error").to_string();
    Err(SandboxError::File { kind, message })
}

fn entry(reply: &Value) -> Result<FileEntry, SandboxError> {
    serde_json::from_value(reply["entry"].clone())
        .map_err(|e| SandboxError::Protocol(e.to_string()))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.dead {
            self.kill();
        } else if let Some(s) = &mut self.slirp {
            s.kill();
        }
    }
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Sandbox>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn work_dirs_are_public_and_orphans_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let live = tempfile::tempdir().unwrap();
        let gone = root.path().join("gone-owner");
        let (a, b, c) = (
            root.path().join("a"),
            root.path().join("b/c"),
            root.path().join("d"),
        );
        mark_work_dir(&a, &gone).unwrap();
        mark_work_dir(&b, live.path()).unwrap();
        prepare_work_dir(&c).unwrap();
        for d in [&a, &b, &root.path().join("b"), &c] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{}", d.display());
        }
        let owner = std::fs::metadata(a.join(OWNER_FILE)).unwrap();
        assert_eq!(owner.permissions().mode() & 0o777, 0o600);
        let f = install(&c, "hosts", HOSTS).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(sweep_work_dirs(root.path()), 1);
        assert!(!a.exists());
        // b has no owner record of its own (its child does), so "b" is left alone, as is d.
        assert!(b.exists() && c.exists());
        assert_eq!(sweep_work_dirs(root.path()), 0);
    }

    /// The cgroup parent of a server whose data directory is gone goes with its work dir,
    /// groups and all; an empty server parent with no work dir at all goes too; a parent
    /// whose work dir is owned by a live directory stays.
    #[test]
    fn cgroup_parents_of_deleted_data_dirs_are_swept() {
        if !drops_privileges() || !Path::new("/sys/fs/cgroup").exists() {
            eprintln!("skipped: needs root and cgroups");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let live = tempfile::tempdir().unwrap();
        let name = |_: ()| {
            format!(
                "cloister-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        };
        let (orphan, stale, kept) = (name(()), name(()), name(()));
        mark_work_dir(&root.path().join(&orphan), &root.path().join("gone")).unwrap();
        mark_work_dir(&root.path().join(&kept), live.path()).unwrap();
        let limits = cgroup::Limits {
            memory_bytes: 64 << 20,
            pids: 16,
            cpu_percent: 50,
        };
        let child = Cgroup::create_in(&orphan, "left-behind", limits).unwrap();
        let keep = Cgroup::create_in(&kept, "running", limits).unwrap();
        Cgroup::create_in(&stale, "x", limits).unwrap().destroy();
        let present = |n: &str| cgroup::parents_named(n).contains(&n.to_string());
        assert!(present(&orphan) && present(&stale) && present(&kept));
        assert_eq!(sweep_work_dirs(root.path()), 1);
        assert!(!child.exists(), "the orphan's groups are removed");
        assert!(!present(&orphan), "the orphan's cgroup parent is removed");
        // (Other stale parents on this host may go too.)
        assert!(sweep_stale_cgroup_parents(root.path()) >= 1, "{stale}");
        assert!(
            !present(&stale),
            "an empty parent without a work dir is removed"
        );
        assert!(
            present(&kept) && keep.exists(),
            "a live server's parent stays"
        );
        keep.destroy();
        assert!(cgroup::remove_parent(&kept));
        assert!(!present(&kept));
    }
}
