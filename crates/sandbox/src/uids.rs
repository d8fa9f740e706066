//! One host uid (and gid, the same number) per sandbox, from a configured range.
//!
//! A supervisor running as root gives every sandbox a uid of its own from
//! `CLOISTER_SANDBOX_UID_RANGE` (`FIRST-LAST`, inclusive; default [`DEFAULT_RANGE`]), mapped
//! to uid/gid [`crate::SANDBOX_UID`] inside the sandbox's user namespace. Two sandboxes thus
//! never share a uid: neither can signal, ptrace or read `/proc/PID/mem` of the other even
//! after an escape from its namespaces, a host process running as `nobody` is a stranger to
//! all of them, and the kernel counts `RLIMIT_NPROC` per sandbox.
//!
//! A uid is taken when a sandbox starts and given back when it has been killed (its cgroup
//! emptied and removed); the next allocation moves on round-robin, so a uid is not handed out
//! again at once. Several supervisors on one host (tests, several data directories) may share
//! the range: each uid in use is also held as an OFD byte-range lock (byte `uid - FIRST`) on
//! [`LOCK_FILE`], which the kernel drops when the holder exits, so they never hand out the same
//! uid at once. The range must be used by nothing else on the host (no account, no
//! `/etc/subuid` range).

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::{LazyLock, Mutex};

/// The default range: 65,536 uids that no distribution assigns, above the first `/etc/subuid`
/// ranges that `useradd` hands out (100000 + 65536 per user).
pub const DEFAULT_RANGE: (u32, u32) = (3_000_000, 3_065_535);
/// The variable that configures the range, `FIRST-LAST`.
pub const RANGE_ENV: &str = "CLOISTER_SANDBOX_UID_RANGE";
/// Where supervisors on one host record which uids are in use (root-only, 0600).
pub const LOCK_FILE: &str = "/run/cloister-sandbox-uids.lock";

/// Parses `FIRST-LAST` (inclusive, FIRST > 0, LAST < 2^32 - 1).
pub fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{RANGE_ENV}={s:?}: expected FIRST-LAST, two uids above 0");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a || b == u32::MAX || a <= crate::SANDBOX_UID && crate::SANDBOX_UID <= b {
        return Err(bad());
    }
    Ok((a, b))
}

struct Pool {
    range: Result<(u32, u32), String>,
    next: u32,
    used: HashSet<u32>,
    lock: Option<std::fs::File>,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
    let range = match std::env::var(RANGE_ENV) {
        Ok(s) => parse_range(&s),
        Err(_) => Ok(DEFAULT_RANGE),
    };
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(LOCK_FILE)
            .inspect_err(|e| {
                tracing::warn!(
                    "{LOCK_FILE}: {e}; sandbox uids are not coordinated with other processes"
                )
            })
            .ok()
    };
    Mutex::new(Pool {
        range,
        next: 0,
        used: HashSet::new(),
        lock,
    })
});

/// A host uid held for one sandbox (or zygote); given back on drop.
#[derive(Debug)]
pub struct HostUid(u32);

impl HostUid {
    pub fn get(&self) -> u32 {
        self.0
    }

    /// Never gives the uid back (for a sandbox whose processes could not all be killed).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

/// `F_OFD_SETLK` on one byte: `ty` is `F_WRLCK` or `F_UNLCK`. False if another process holds it.
fn ofd_lock(f: &std::fs::File, byte: u32, ty: i32) -> bool {
    // SAFETY: flock is plain data; fcntl reads it and does not keep the pointer.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = ty as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = byte as _;
        fl.l_len = 1;
        libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) == 0
    }
}

/// Takes a free uid of the range.
pub fn allocate() -> Result<HostUid, String> {
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let (first, last) = p.range.clone()?;
    let n = last - first + 1;
    for i in 0..n {
        let idx = (p.next.wrapping_add(i)) % n;
        let uid = first + idx;
        if p.used.contains(&uid) {
            continue;
        }
        if let Some(f) = &p.lock
            && !ofd_lock(f, idx, libc::F_WRLCK)
        {
            continue;
        }
        p.used.insert(uid);
        p.next = (idx + 1) % n;
        return Ok(HostUid(uid));
    }
    Err(format!(
        "every sandbox uid of {first}-{last} is in use ({RANGE_ENV})"
    ))
}

impl Drop for HostUid {
    fn drop(&mut self) {
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let (Ok((first, _)), Some(f)) = (&p.range, &p.lock) {
            ofd_lock(f, self.0 - first, libc::F_UNLCK);
        }
        p.used.remove(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_range("3000000-3065535"), Ok((3_000_000, 3_065_535)));
        assert_eq!(parse_range(" 200000 - 200000 "), Ok((200_000, 200_000)));
        for bad in [
            "",
            "5",
            "0-10",
            "10-5",
            "a-b",
            "60000-70000",
            "1-4294967295",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uids_are_distinct_while_held_and_reused_only_later() {
        let a = allocate().unwrap();
        let b = allocate().unwrap();
        assert_ne!(a.get(), b.get());
        let freed = a.get();
        drop(a);
        let c = allocate().unwrap();
        assert_ne!(
            c.get(),
            freed,
            "a freed uid is not handed out again at once"
        );
        assert_ne!(c.get(), b.get());
    }
}
