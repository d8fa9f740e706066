//! Per-sandbox cgroups on cgroup v1 (this machine: memory, pids and cpu controllers each in
//! their own hierarchy) or v2 (one unified hierarchy). The supervisor creates the group,
//! writes the limits, moves the sandbox's first process in before it execs (so every
//! descendant is inside), and kills and removes the group on every exit path.

use std::ffi::CString;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// The parent group when none is configured.
pub const DEFAULT_PARENT: &str = "cloister";

/// Kills every process in every group under `parent` and removes the groups: what a server
/// that was killed (SIGKILL, power loss) left behind. Returns how many groups were removed.
pub fn sweep(parent: &str) -> usize {
    let bases = parent_dirs(parent);
    let mut removed = 0;
    for base in &bases {
        let Ok(rd) = std::fs::read_dir(base) else {
            continue;
        };
        for e in rd.flatten() {
            let dir = e.path();
            if !dir.is_dir() {
                continue;
            }
            for _ in 0..50 {
                let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    // SAFETY: plain kill(2) on a pid read from the group.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The directories of cgroup parent `parent` (one per controller on v1); none for a name
/// that is not a single path segment.
fn parent_dirs(parent: &str) -> Vec<PathBuf> {
    if parent.is_empty() || parent.contains('/') || parent.contains("..") {
        return vec![];
    }
    match detect() {
        Layout::V1 => ["memory", "pids", "cpu"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(parent))
            .collect(),
        Layout::V2 => vec![Path::new(ROOT).join(parent)],
    }
}

/// [`sweep`]s the cgroup parent `parent` and then removes the parent itself: what a server
/// that will not come back (its data directory is gone) left. True when none of it remains.
pub fn remove_parent(parent: &str) -> bool {
    let dirs = parent_dirs(parent);
    if dirs.is_empty() {
        return false;
    }
    sweep(parent);
    let mut gone = true;
    for d in &dirs {
        if d.exists() && std::fs::remove_dir(d).is_err() {
            gone = false;
        }
    }
    gone
}

/// Removes the cgroup parent `parent` if it has no groups (nothing is killed). True when none
/// of it remains.
pub fn remove_empty_parent(parent: &str) -> bool {
    let dirs = parent_dirs(parent);
    let mut gone = !dirs.is_empty();
    for d in &dirs {
        if d.exists() && std::fs::remove_dir(d).is_err() {
            gone = false;
        }
    }
    gone
}

/// The names of the cgroup parents directly under the hierarchy's root (the memory
/// controller's on v1) that start with `prefix`.
pub fn parents_named(prefix: &str) -> Vec<String> {
    let base = match detect() {
        Layout::V1 => Path::new(ROOT).join("memory"),
        Layout::V2 => PathBuf::from(ROOT),
    };
    let Ok(rd) = std::fs::read_dir(base) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

pub fn detect() -> Layout {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// Limits for one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Percent of one CPU (100 = one core).
    pub cpu_percent: u32,
}

/// One sandbox's cgroup (one directory per controller on v1).
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` paths, prepared for the pre-exec hook (no allocation after fork).
    procs: Vec<CString>,
}

impl Cgroup {
    pub fn create(name: &str, limits: Limits) -> std::io::Result<Cgroup> {
        Self::create_in(DEFAULT_PARENT, name, limits)
    }

    /// Creates the group under `parent` (one parent per server, so a restarted server can
    /// [`sweep`] what its previous process left without touching anyone else's).
    pub fn create_in(parent: &str, name: &str, limits: Limits) -> std::io::Result<Cgroup> {
        let layout = detect();
        let dirs: Vec<PathBuf> = match layout {
            Layout::V1 => ["memory", "pids", "cpu"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(parent).join(name))
                .collect(),
            Layout::V2 => {
                let parent = Path::new(ROOT).join(parent);
                std::fs::create_dir_all(&parent)?;
                let _ = std::fs::write(
                    Path::new(ROOT).join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                vec![parent.join(name)]
            }
        };
        for d in &dirs {
            std::fs::create_dir_all(d)?;
        }
        let cg = Cgroup {
            procs: dirs
                .iter()
                .filter_map(|d| {
                    CString::new(d.join("cgroup.procs").to_string_lossy().as_bytes()).ok()
                })
                .collect(),
            dirs,
        };
        match layout {
            Layout::V1 => {
                std::fs::write(
                    cg.dirs[0].join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                let _ = std::fs::write(
                    cg.dirs[0].join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
                std::fs::write(cg.dirs[1].join("pids.max"), limits.pids.to_string())?;
                std::fs::write(cg.dirs[2].join("cpu.cfs_period_us"), "100000")?;
                std::fs::write(
                    cg.dirs[2].join("cpu.cfs_quota_us"),
                    (limits.cpu_percent as u64 * 1000).to_string(),
                )?;
            }
            Layout::V2 => {
                std::fs::write(
                    cg.dirs[0].join("memory.max"),
                    limits.memory_bytes.to_string(),
                )?;
                let _ = std::fs::write(cg.dirs[0].join("memory.swap.max"), "0");
                std::fs::write(cg.dirs[0].join("pids.max"), limits.pids.to_string())?;
                std::fs::write(
                    cg.dirs[0].join("cpu.max"),
                    format!("{} 100000", limits.cpu_percent as u64 * 1000),
                )?;
            }
        }
        Ok(cg)
    }

    /// Paths for the pre-exec hook.
    pub fn procs_paths(&self) -> Vec<CString> {
        self.procs.clone()
    }

    /// Moves the calling process into the group. Async-signal-safe: only open/write/close.
    ///
    /// # Safety
    /// Call only between fork and exec (it is meant for `pre_exec`).
    pub unsafe fn join_self(paths: &[CString]) -> std::io::Result<()> {
        for p in paths {
            // SAFETY: plain syscalls on a prepared, NUL-terminated path.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if r != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (a host pid) into the group, in every hierarchy.
    pub fn add(&self, pid: i32) -> std::io::Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// The pids currently in the group.
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dirs.get(1).or(self.dirs.first()) else {
            return vec![];
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// True if the memory controller recorded an OOM kill.
    pub fn oom_killed(&self) -> bool {
        let d = &self.dirs[0];
        if let Ok(s) = std::fs::read_to_string(d.join("memory.events")) {
            return s
                .lines()
                .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"));
        }
        std::fs::read_to_string(d.join("memory.oom_control"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"))
            })
            .unwrap_or(false)
    }

    /// Kills every process in the group and removes it.
    pub fn destroy(&self) {
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: sending a signal to a pid read from our own cgroup.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }
}
