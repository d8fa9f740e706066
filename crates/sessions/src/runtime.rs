//! The sandbox behind a trait: the session pool only needs "start an interpreter, run code,
//! move files, stop". The embedded default is [`crate::bwrap::BwrapRuntime`] (bubblewrap on
//! this host); a gVisor (`runsc`) or Kubernetes backend implements the same two traits.

use crate::spec::{ContainerType, Network};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;

/// Which interpreter a session runs: the pool's container type, for the types a runtime
/// executes code or commands in (a custom container is a different kind of instance, an HTTP
/// endpoint, and has no kind here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionKind {
    /// IPython: `code` is Python.
    #[default]
    Python,
    /// bash: `code` is a shell command; the outcome carries its exit code.
    Shell,
    /// Node.js with REPL semantics: `code` is JavaScript.
    Node,
}

impl SessionKind {
    /// The kind of a pool's sessions, or None for a type no runtime here runs.
    pub fn of(t: ContainerType) -> Option<SessionKind> {
        match t {
            ContainerType::PythonLTS => Some(SessionKind::Python),
            ContainerType::Shell => Some(SessionKind::Shell),
            ContainerType::NodeLTS => Some(SessionKind::Node),
            ContainerType::CustomContainer | ContainerType::GpuBase => None,
        }
    }
}

/// What a new session's sandbox needs besides the runtime's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    pub kind: SessionKind,
    pub network: Network,
    /// A host unix socket that answers managed-identity token requests for this pool
    /// (present only when the pool has identities with lifecycle `Main`).
    pub identity_socket: Option<PathBuf>,
    pub identity_header: Option<String>,
    /// A CustomContainer pool's container (template, secrets resolved); None for the
    /// interpreter kinds.
    pub custom: Option<std::sync::Arc<crate::custom_spec::CustomLaunch>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    Succeeded,
    /// The code raised; the traceback is in stderr.
    Failed,
    /// The code ran past its timeout and was interrupted (or the sandbox was stopped).
    TimedOut,
    /// The sandbox died under the code (out of memory, or the interpreter was killed).
    Aborted,
}

#[derive(Debug, Clone)]
pub struct ExecOutcome {
    pub status: ExecStatus,
    pub stdout: String,
    pub stderr: String,
    /// The IPython text/plain repr of the last expression, if it had a value.
    pub result: Option<String>,
    /// PNG images (base64) produced by the code, e.g. matplotlib figures.
    pub images: Vec<String>,
    pub duration_ms: u64,
    /// A shell command's exit code (-1 when it could not start or timed out); None for code.
    pub exit_code: Option<i32>,
    /// Why it failed, in a word (`CommandStartError`, `ExecutionTimeout`, a JavaScript error's
    /// name), and the message; None when it succeeded or nothing more is known.
    pub error_name: Option<String>,
    pub error_message: Option<String>,
}

impl ExecOutcome {
    /// An outcome with no output (the sandbox ended, timed out, or never ran the code).
    pub fn empty(status: ExecStatus, stderr: String, duration_ms: u64) -> ExecOutcome {
        ExecOutcome {
            status,
            stdout: String::new(),
            stderr,
            result: None,
            images: vec![],
            duration_ms,
            exit_code: None,
            error_name: None,
            error_message: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    /// The name relative to its directory.
    pub name: String,
    /// The directory, relative to `/mnt/data` ("" for the top level).
    pub directory: String,
    pub is_dir: bool,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: f64,
}

impl FileInfo {
    /// Path relative to `/mnt/data`.
    pub fn rel_path(&self) -> String {
        if self.directory.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.directory, self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileErrorKind {
    NotFound,
    Invalid,
    TooLarge,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    pub kind: FileErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The interpreter and packages a runtime offers for one session kind (the `metadata` API).
#[derive(Debug, Clone, Default)]
pub struct RuntimeInfo {
    /// `python`, `bash` or `node`.
    pub name: String,
    pub version: String,
    pub packages: Vec<(String, String)>,
    /// (name, version, project URL, description) of what executes the code.
    pub kernel: (String, String, String, String),
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Starts a sandbox and returns once its interpreter has answered.
    async fn start(&self, spec: &SessionSpec) -> Result<Box<dyn Instance>, StartError>;
    fn info(&self, kind: SessionKind) -> RuntimeInfo;
    /// Removes whatever a previous process of this server left behind (cgroups, processes);
    /// also called at a clean stop, once every sandbox is shut down.
    fn sweep(&self);
    /// The custom-container side of this runtime, when the server has a container backend.
    fn custom(&self) -> Option<&dyn crate::container::CustomPools> {
        None
    }
}

#[async_trait]
pub trait Instance: Send {
    /// A stable id for this sandbox (the session's `etag`).
    fn id(&self) -> &str;
    async fn exec(&mut self, code: &str, timeout: Duration, max_output: usize) -> ExecOutcome;
    async fn write_file(&mut self, path: &str, data: Vec<u8>) -> Result<FileInfo, FileError>;
    /// One piece of a streamed write: `first` starts the file, `last` puts it in place and
    /// returns its info; `size_hint` is the expected length (0 when unknown).
    async fn write_piece(
        &mut self,
        path: &str,
        size_hint: u64,
        first: bool,
        last: bool,
        data: &[u8],
    ) -> Result<Option<FileInfo>, FileError>;
    /// Drops an unfinished streamed write.
    async fn abort_write(&mut self);
    async fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FileError>;
    async fn stat_file(&mut self, path: &str) -> Result<FileInfo, FileError>;
    async fn list_files(&mut self, dir: &str, recursive: bool) -> Result<Vec<FileInfo>, FileError>;
    async fn delete_file(&mut self, path: &str) -> Result<(), FileError>;
    fn is_alive(&self) -> bool;
    /// Where a custom container serves its `targetPort` (None for interpreter sandboxes).
    fn addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// Processes currently in the sandbox (for leak checks).
    fn process_count(&self) -> usize;
    async fn shutdown(self: Box<Self>);
}
