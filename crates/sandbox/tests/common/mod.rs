//! Shared by the integration tests: the interpreter to test with, and leak checks.
//!
//! The interpreter is `$CLOISTER_SANDBOX_PYTHON` when set (a runtime venv's `bin/python`, or a
//! plain interpreter); otherwise the default runtime, built on first use by
//! `scripts/sandbox-runtime.sh` (idempotent: a stamp check when it is already there).

#![allow(dead_code)]

use cloister_sandbox::{DEFAULT_RUNTIME_DIR, Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("CLOISTER_SANDBOX_PYTHON") {
            return PathBuf::from(p);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sandbox-runtime.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(DEFAULT_RUNTIME_DIR)
            .status()
            .expect("run scripts/sandbox-runtime.sh");
        assert!(status.success(), "scripts/sandbox-runtime.sh failed");
        Path::new(DEFAULT_RUNTIME_DIR).join("bin/python")
    })
}

/// A config for the test interpreter (a venv's runtime dir is bound read-only).
pub fn config(work: &Path) -> SandboxConfig {
    let py = python();
    let cfg = SandboxConfig::new(work.to_path_buf());
    match py.parent().and_then(Path::parent) {
        Some(dir) if dir.join("pyvenv.cfg").exists() => cfg.with_runtime(dir),
        _ => SandboxConfig {
            python: py.to_path_buf(),
            ..cfg
        },
    }
}

pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X'])),
    }
}

/// No cgroup directory of this sandbox is left in any hierarchy.
pub fn no_cgroup(id: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return true;
    };
    rd.flatten()
        .all(|c| !c.path().join("cloister").join(id).exists())
}

/// The host pids in this sandbox's cgroup (the pids controller on v1, the group on v2).
pub fn cgroup_pids(id: &str) -> Vec<i32> {
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|root| {
            Path::new(root)
                .join("cloister")
                .join(id)
                .join("cgroup.procs")
        })
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Shuts the sandbox down and checks that nothing of it is left.
pub async fn finish(s: Sandbox) {
    let id = s.id().to_string();
    let agent = s.agent_pid();
    let helper = s.network_helper_pid();
    s.shutdown().await;
    assert!(no_cgroup(&id), "cgroup of {id} left behind");
    for _ in 0..100 {
        if agent.is_none_or(gone) && helper.is_none_or(|p| gone(p as i32)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("processes left behind: agent {agent:?}, network helper {helper:?}");
}

/// The `Uid:`/`Gid:` fields (real, effective, saved, filesystem) and `Groups:` of a host
/// process, as the host sees them; None once it is gone.
pub fn host_ids(pid: i32) -> Option<(String, String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    Some((field("Uid:")?, field("Gid:")?, field("Groups:")?))
}

/// What a host process running as uid and gid `uid` (no groups, in no sandbox) can do to
/// process `pid`: open its memory, read its environment, signal it ("nothing" if none).
pub fn reach_as(uid: u32, pid: i32) -> String {
    let code = format!(
        "import os\nr = []\n\
         for what, f in [('mem', lambda: open('/proc/{pid}/mem', 'rb')), \
         ('environ', lambda: open('/proc/{pid}/environ', 'rb').read()), \
         ('signal', lambda: os.kill({pid}, 0))]:\n\
         \x20   try:\n        f(); r.append(what)\n    except OSError:\n        pass\n\
         print(','.join(r) or 'nothing')"
    );
    python_as(uid, &code)
}

/// Runs `code` with `python3 -I -c` as host uid and gid `uid` (no groups), in a process of the
/// host that is not in any sandbox; its stdout.
pub fn python_as(uid: u32, code: &str) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.args(["-I", "-c", code]);
    // SAFETY: setgroups/setgid/setuid only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setgid(uid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
