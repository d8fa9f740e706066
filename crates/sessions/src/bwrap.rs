//! The embedded default runtime: one bubblewrap sandbox per session (see `cloister-sandbox`).

use crate::runtime::{
    ExecOutcome, ExecStatus, FileError, FileErrorKind, FileInfo, Instance, Runtime, RuntimeInfo,
    SessionSpec, StartError,
};
use crate::spec::Network;
use async_trait::async_trait;
use cloister_sandbox::{Sandbox, SandboxConfig, SandboxError};
use std::time::Duration;

pub struct BwrapRuntime {
    pub cfg: SandboxConfig,
    info: RuntimeInfo,
}

impl BwrapRuntime {
    pub fn new(cfg: SandboxConfig) -> BwrapRuntime {
        let info = RuntimeInfo {
            python_version: python_version(&cfg.python),
            packages: runtime_packages(&cfg.python),
        };
        BwrapRuntime { cfg, info }
    }
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
        let mut cfg = self.cfg.clone();
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
        // set-up (about 3 ms): a ready session is a warm one.
        if let Err(e) = sbx.exec("None", Duration::from_secs(30), 1024).await {
            sbx.shutdown().await;
            return Err(StartError(format!(
                "the interpreter failed its warm-up: {e}"
            )));
        }
        Ok(Box::new(BwrapInstance { sbx }))
    }

    fn info(&self) -> RuntimeInfo {
        self.info.clone()
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
        match self.sbx.exec(code, timeout, max_output).await {
            Ok(r) => ExecOutcome {
                status: if r.status == "Succeeded" {
                    ExecStatus::Succeeded
                } else {
                    ExecStatus::Failed
                },
                stdout: r.stdout,
                stderr: r.stderr,
                result: r.result,
                images: r.images,
                duration_ms: r.duration_ms,
            },
            Err(SandboxError::Timeout(_)) => ExecOutcome {
                status: ExecStatus::TimedOut,
                stdout: String::new(),
                stderr: String::new(),
                result: None,
                images: vec![],
                duration_ms: t0.elapsed().as_millis() as u64,
            },
            Err(e) => ExecOutcome {
                status: ExecStatus::Aborted,
                stdout: String::new(),
                stderr: match e {
                    SandboxError::Died { oom: true } => "the session ran out of memory".to_string(),
                    other => other.to_string(),
                },
                result: None,
                images: vec![],
                duration_ms: t0.elapsed().as_millis() as u64,
            },
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
