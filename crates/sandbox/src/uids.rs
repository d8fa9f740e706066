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
//!
//! A zygote (see [`crate::zygote`]) takes one uid for itself and a [`UidBlock`] of
//! contiguous uids for the sessions it forks ([`allocate_block`]): the root supervisor maps
//! the block into the zygote's user namespace, and every forked session runs as a uid of the
//! block of its own ([`BlockUid`]), given back to the block when the session has been killed.
//! The block (locked as a whole, like a single uid) is given back when the zygote and every
//! session uid taken from it are gone.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, LazyLock, Mutex};

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

/// `F_OFD_SETLK` on `len` bytes from `byte`: `ty` is `F_WRLCK` or `F_UNLCK`. False if another
/// process holds any of them.
fn ofd_lock(f: &std::fs::File, byte: u32, len: u32, ty: i32) -> bool {
    // SAFETY: flock is plain data; fcntl reads it and does not keep the pointer.
    unsafe {
        let mut fl: libc::flock = std::mem::zeroed();
        fl.l_type = ty as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = byte as _;
        fl.l_len = len as _;
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
            && !ofd_lock(f, idx, 1, libc::F_WRLCK)
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
            ofd_lock(f, self.0 - first, 1, libc::F_UNLCK);
        }
        p.used.remove(&self.0);
    }
}

/// How many uids a zygote's block holds at most: the sessions one zygote can have at once (a
/// template that needs more gets a second zygote). Smaller when the range is small, so that a
/// range holds at least eight blocks.
pub const BLOCK_LEN: u32 = 1024;

/// The length of the blocks [`allocate_block`] hands out for the configured range.
pub fn block_len() -> Result<u32, String> {
    let (first, last) = POOL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .range
        .clone()?;
    Ok(BLOCK_LEN.min((last - first + 1) / 8).max(1))
}

/// A run of contiguous host uids held for one zygote's sessions; given back (as a whole) when
/// the last reference goes, that is once the zygote and every [`BlockUid`] taken from it are
/// gone.
#[derive(Debug)]
pub struct UidBlock {
    first: u32,
    len: u32,
    /// Uids of the block in use, and where the next search starts (round-robin).
    state: Mutex<(Vec<bool>, u32)>,
}

/// One uid of a [`UidBlock`], held for one forked session; given back to the block on drop.
#[derive(Debug)]
pub struct BlockUid {
    block: Arc<UidBlock>,
    uid: u32,
}

impl UidBlock {
    /// The first uid of the block.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// How many uids the block has.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A uid of the block that no session holds, or None when every one is taken. Round-robin,
    /// so a uid given back is not handed out again at once.
    pub fn take(self: &Arc<Self>) -> Option<BlockUid> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (used, next) = &mut *st;
        for i in 0..self.len {
            let idx = (*next + i) % self.len;
            if !used[idx as usize] {
                used[idx as usize] = true;
                *next = (idx + 1) % self.len;
                return Some(BlockUid {
                    block: self.clone(),
                    uid: self.first + idx,
                });
            }
        }
        None
    }
}

impl BlockUid {
    pub fn get(&self) -> u32 {
        self.uid
    }

    /// Never gives the uid back (for a session whose processes could not all be killed); its
    /// block then stays taken too.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for BlockUid {
    fn drop(&mut self) {
        let mut st = self.block.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0[(self.uid - self.block.first) as usize] = false;
    }
}

/// Takes `len` contiguous free uids of the range (none held by a sandbox, a zygote or another
/// block, here or in another supervisor).
pub fn allocate_block(len: u32) -> Result<Arc<UidBlock>, String> {
    let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let (first, last) = p.range.clone()?;
    let n = last - first + 1;
    if len == 0 || len > n {
        return Err(format!(
            "no block of {len} uids in {first}-{last} ({RANGE_ENV})"
        ));
    }
    let mut i = 0;
    while i < n {
        let idx = (p.next.wrapping_add(i)) % n;
        i += 1;
        if idx + len > n {
            continue;
        }
        // The last uid of the run that is in use here, if any: the search goes on after it.
        if let Some(busy) = (idx..idx + len)
            .rev()
            .find(|k| p.used.contains(&(first + k)))
        {
            i += (busy - idx).min(n);
            continue;
        }
        if let Some(f) = &p.lock
            && !ofd_lock(f, idx, len, libc::F_WRLCK)
        {
            continue;
        }
        p.used.extend((idx..idx + len).map(|k| first + k));
        p.next = (idx + len) % n;
        return Ok(Arc::new(UidBlock {
            first: first + idx,
            len,
            state: Mutex::new((vec![false; len as usize], 0)),
        }));
    }
    Err(format!(
        "no {len} contiguous free sandbox uids in {first}-{last} ({RANGE_ENV})"
    ))
}

impl Drop for UidBlock {
    fn drop(&mut self) {
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let (Ok((first, _)), Some(f)) = (&p.range, &p.lock) {
            ofd_lock(f, self.first - first, self.len, libc::F_UNLCK);
        }
        for uid in self.first..self.first + self.len {
            p.used.remove(&uid);
        }
    }
}

/// The host uid a sandbox holds: its own, or one of its zygote's block.
#[derive(Debug)]
pub enum Lease {
    Own(HostUid),
    Session(BlockUid),
}

impl Lease {
    pub fn get(&self) -> u32 {
        match self {
            Lease::Own(u) => u.get(),
            Lease::Session(u) => u.get(),
        }
    }

    /// Never gives the uid back (see [`HostUid::leak`]).
    pub fn leak(self) {
        match self {
            Lease::Own(u) => u.leak(),
            Lease::Session(u) => u.leak(),
        }
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

    #[test]
    fn blocks_do_not_overlap_and_their_uids_are_distinct_while_held() {
        let single = allocate().unwrap();
        let a = allocate_block(4).unwrap();
        let b = allocate_block(4).unwrap();
        let range = |x: &UidBlock| x.first()..x.first() + x.len();
        assert!(range(&a).all(|u| !range(&b).contains(&u) && u != single.get()));
        // A uid allocated while the blocks are held is in neither.
        let other = allocate().unwrap();
        assert!(!range(&a).contains(&other.get()) && !range(&b).contains(&other.get()));
        let held: Vec<BlockUid> = (0..4).map(|_| a.take().unwrap()).collect();
        let mut uids: Vec<u32> = held.iter().map(BlockUid::get).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids, range(&a).collect::<Vec<_>>());
        assert!(a.take().is_none(), "a full block hands out nothing");
        let freed = held[1].get();
        drop(held);
        let next = a.take().unwrap();
        assert_ne!(next.get(), freed, "round-robin inside the block too");
        // The block stays taken while one of its uids is held, even once the zygote let go.
        let first = a.first();
        drop(a);
        let c = allocate_block(4).unwrap();
        assert!(!(first..first + 4).contains(&c.first()));
        drop(next);
    }
}
