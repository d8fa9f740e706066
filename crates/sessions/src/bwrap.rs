//! The embedded default runtime: one bubblewrap sandbox per session (see `cloister-sandbox`).
//!
//! Python and Shell sessions share one template (the Python agent runs bash for shell commands),
//! so they fork from the same zygote; Node sessions use a template of their own (the Node
//! runtime bound, `node_agent.js` as the agent), and so a zygote of their own.

use crate::runtime::{
    ExecOutcome, ExecStatus, FileError, FileErrorKind, FileInfo, Instance, Runtime, RuntimeInfo,
    SessionKind, SessionSpec, StartError,
};
use crate::spec::Network;
use async_trait::async_trait;
use cloister_sandbox::{Sandbox, SandboxConfig, SandboxError};
use std::time::Duration;

pub struct BwrapRuntime {
    /// The template of Python and Shell sessions.
    pub cfg: SandboxConfig,
    /// The template of Node sessions: `cfg` with the Node runtime ([`BwrapRuntime::with_node_runtime`]).
    pub node_cfg: SandboxConfig,
    python: RuntimeInfo,
    shell: RuntimeInfo,
    node: RuntimeInfo,
}

impl BwrapRuntime {
    /// Node sessions use [`cloister_sandbox::DEFAULT_NODE_RUNTIME_DIR`] (or, without it, the
    /// system's `node` and no packages) unless [`BwrapRuntime::with_node_runtime`] says otherwise.
    pub fn new(cfg: SandboxConfig) -> BwrapRuntime {
        let python = RuntimeInfo {
            name: "python".into(),
            version: python_version(&cfg.python),
            packages: runtime_packages(&cfg.python),
            kernel: (
                "python3".into(),
                String::new(),
                "https://ipython.org".into(),
                "IPython's InteractiveShell inside Cloister's sandbox agent".into(),
            ),
        };
        let shell = RuntimeInfo {
            name: "bash".into(),
            version: tool_version("/bin/bash"),
            packages: {
                let mut seen = std::collections::HashSet::new();
                SHELL_TOOLS
                    .iter()
                    .filter(|(name, bin)| std::path::Path::new(bin).exists() && seen.insert(*name))
                    .map(|(name, bin)| (name.to_string(), tool_version(bin)))
                    .collect()
            },
            kernel: (
                "bash".into(),
                String::new(),
                "https://www.gnu.org/software/bash/".into(),
                "GNU bash, one process group per command, inside Cloister's sandbox agent".into(),
            ),
        };
        BwrapRuntime {
            node_cfg: cfg.clone(),
            cfg,
            python,
            shell,
            node: RuntimeInfo::default(),
        }
        .with_node_runtime(cloister_sandbox::DEFAULT_NODE_RUNTIME_DIR)
    }

    /// Node sessions run the Node runtime at `dir` (see `scripts/sandbox-runtime.sh --node`).
    pub fn with_node_runtime(mut self, dir: impl Into<std::path::PathBuf>) -> BwrapRuntime {
        let dir = dir.into();
        self.node_cfg = self.cfg.clone().with_node_runtime(&dir);
        let node = match &self.node_cfg.agent {
            cloister_sandbox::Agent::Node { node, .. } => node.clone(),
            cloister_sandbox::Agent::Python => "/usr/bin/node".into(),
        };
        self.node = RuntimeInfo {
            name: "node".into(),
            version: tool_version(&node.display().to_string()),
            packages: if self.node_cfg.runtime_dir.is_some() {
                node_packages(&dir)
            } else {
                vec![]
            },
            kernel: (
                "node".into(),
                String::new(),
                "https://nodejs.org".into(),
                "A Node.js REPL (vm, util.inspect results, top-level await) inside Cloister's sandbox agent".into(),
            ),
        };
        self
    }

    fn template(&self, kind: SessionKind) -> &SandboxConfig {
        match kind {
            SessionKind::Python | SessionKind::Shell => &self.cfg,
            SessionKind::Node => &self.node_cfg,
        }
    }
}

/// Tools a Shell session finds on its PATH (the host's `/usr`, bound read-only), listed with
/// their versions in the pool's `metadata`.
const SHELL_TOOLS: &[(&str, &str)] = &[
    ("coreutils", "/usr/bin/ls"),
    ("grep", "/usr/bin/grep"),
    ("sed", "/usr/bin/sed"),
    ("gawk", "/usr/bin/gawk"),
    ("git", "/usr/bin/git"),
    ("git", "/usr/local/bin/git"),
    ("curl", "/usr/bin/curl"),
    ("python3", "/usr/bin/python3"),
    ("node", "/usr/bin/node"),
];

/// The first version-looking word of `BIN --version`'s first line ("unknown" if none).
fn tool_version(bin: &str) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_string();
            line.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
                .map(|w| w.trim_start_matches('v'))
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The pinned dependencies of the Node runtime (its `package.json`: exact versions).
fn node_packages(dir: &std::path::Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
        return vec![];
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = v["dependencies"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The pinned packages of the runtime (the list `scripts/sandbox-runtime.sh` installs), or
/// none when the sandbox runs the plain system interpreter.
fn runtime_packages(python: &std::path::Path) -> Vec<(String, String)> {
    if python.starts_with("/usr") {
        return vec![];
    }
    include_str!("../../sandbox/runtime-requirements.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once("=="))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn python_version(python: &std::path::Path) -> String {
    std::process::Command::new(python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

struct BwrapInstance {
    sbx: Sandbox,
    kind: SessionKind,
}

fn file_error(e: SandboxError) -> FileError {
    match e {
        SandboxError::File { kind, message } => FileError {
            kind: match kind {
                cloister_sandbox::FileErrorKind::NotFound => FileErrorKind::NotFound,
                cloister_sandbox::FileErrorKind::Invalid => FileErrorKind::Invalid,
                cloister_sandbox::FileErrorKind::TooLarge => FileErrorKind::TooLarge,
                _ => FileErrorKind::Other,
            },
            message,
        },
        other => FileError {
            kind: FileErrorKind::Other,
            message: other.to_string(),
        },
    }
}

fn info(e: cloister_sandbox::FileEntry) -> FileInfo {
    let rel = e
        .path
        .strip_prefix("/mnt/data")
        .unwrap_or(&e.path)
        .trim_start_matches('/')
        .to_string();
    let directory = match rel.rsplit_once('/') {
        Some((d, _)) => d.to_string(),
        None => String::new(),
    };
    FileInfo {
        name: e.name,
        directory,
        is_dir: e.is_dir,
        size: e.size,
        modified: e.modified,
    }
}

#[async_trait]
impl Runtime for BwrapRuntime {
    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Instance>, StartError> {
        let mut cfg = self.template(spec.kind).clone();
        cfg.network = match spec.network {
            Network::EgressDisabled => cloister_sandbox::Network::Disabled,
            Network::EgressEnabled => cloister_sandbox::Network::Enabled,
        };
        cfg.identity_socket = spec.identity_socket.clone();
        cfg.identity_header = spec.identity_header.clone().unwrap_or_default();
        let mut sbx = Sandbox::start(&cfg)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        // One throwaway cell, so the first real request does not pay IPython's first-run
        // set-up (about 3 ms): a ready session is a warm one. (A shell command starts a fresh
        // bash anyway; Node's first cell compiles little.)
        let warm = match spec.kind {
            SessionKind::Python => Some("None"),
            SessionKind::Node => Some("undefined"),
            SessionKind::Shell => None,
        };
        if let Some(code) = warm
            && let Err(e) = sbx.exec(code, Duration::from_secs(30), 1024).await
        {
            sbx.shutdown().await;
            return Err(StartError(format!(
                "the interpreter failed its warm-up: {e}"
            )));
        }
        Ok(Box::new(BwrapInstance {
            sbx,
            kind: spec.kind,
        }))
    }

    fn info(&self, kind: SessionKind) -> RuntimeInfo {
        match kind {
            SessionKind::Python => self.python.clone(),
            SessionKind::Shell => self.shell.clone(),
            SessionKind::Node => self.node.clone(),
        }
    }

    fn sweep(&self) {
        cloister_sandbox::zygote::stop_all(&self.cfg.cgroup_parent);
        cloister_sandbox::cgroup::sweep(&self.cfg.cgroup_parent);
    }
}

#[async_trait]
impl Instance for BwrapInstance {
    fn id(&self) -> &str {
        self.sbx.id()
    }

    async fn exec(&mut self, code: &str, timeout: Duration, max_output: usize) -> ExecOutcome {
        let t0 = std::time::Instant::now();
        let r = match self.kind {
            SessionKind::Shell => self.sbx.shell(code, timeout, max_output).await,
            SessionKind::Python | SessionKind::Node => {
                self.sbx.exec(code, timeout, max_output).await
            }
        };
        let shell = self.kind == SessionKind::Shell;
        match r {
            Ok(r) => ExecOutcome {
                status: if r.timed_out {
                    ExecStatus::TimedOut
                } else if r.status == "Succeeded" {
                    ExecStatus::Succeeded
                } else {
                    ExecStatus::Failed
                },
                stdout: r.stdout,
                stderr: r.stderr,
                result: r.result,
                images: r.images,
                duration_ms: r.duration_ms,
                exit_code: if shell {
                    Some(r.exit_code.unwrap_or(-1))
                } else {
                    None
                },
                error_name: r.error_name,
                error_message: r.error_message,
            },
            Err(SandboxError::Timeout(t)) => ExecOutcome {
                exit_code: shell.then_some(-1),
                error_name: Some("ExecutionTimeout".into()),
                error_message: Some(format!(
                    "the execution ran longer than {} s and was stopped",
                    t.as_secs()
                )),
                ..ExecOutcome::empty(
                    ExecStatus::TimedOut,
                    String::new(),
                    t0.elapsed().as_millis() as u64,
                )
            },
            Err(e) => {
                let stderr = match e {
                    SandboxError::Died { oom: true } => "the session ran out of memory".to_string(),
                    other => other.to_string(),
                };
                ExecOutcome {
                    exit_code: shell.then_some(-1),
                    ..ExecOutcome::empty(
                        ExecStatus::Aborted,
                        stderr,
                        t0.elapsed().as_millis() as u64,
                    )
                }
            }
        }
    }

    async fn write_file(&mut self, path: &str, data: Vec<u8>) -> Result<FileInfo, FileError> {
        self.sbx
            .write_file(path, &data)
            .await
            .map(info)
            .map_err(file_error)
    }

    async fn write_piece(
        &mut self,
        path: &str,
        size_hint: u64,
        first: bool,
        last: bool,
        data: &[u8],
    ) -> Result<Option<FileInfo>, FileError> {
        self.sbx
            .write_file_piece(path, size_hint, first, last, data)
            .await
            .map(|e| e.map(info))
            .map_err(file_error)
    }

    async fn abort_write(&mut self) {
        self.sbx.abort_write().await
    }

    async fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FileError> {
        self.sbx.read_file(path).await.map_err(file_error)
    }

    async fn stat_file(&mut self, path: &str) -> Result<FileInfo, FileError> {
        self.sbx.stat_file(path).await.map(info).map_err(file_error)
    }

    async fn list_files(&mut self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>, FileError> {
        self.sbx
            .list_files(dir, recursive)
            .await
            .map(|v| v.into_iter().map(info).collect())
            .map_err(file_error)
    }

    async fn delete_file(&mut self, path: &str) -> Result<(), FileError> {
        self.sbx.delete_file(path).await.map_err(file_error)
    }

    fn is_alive(&self) -> bool {
        self.sbx.is_alive()
    }

    fn process_count(&self) -> usize {
        self.sbx.process_count()
    }

    async fn shutdown(self: Box<Self>) {
        self.sbx.shutdown().await;
    }
}
