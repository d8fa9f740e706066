//! Sandboxes forked from a zygote, so that what every session imports is in memory once.
//!
//! A Python session with pandas imported is about 67 MiB of private memory when each sandbox
//! starts its own interpreter; almost all of it is the same in every session (the
//! interpreter's heap after importing IPython, numpy and pandas). A *zygote* is one sandbox per
//! template (everything in [`SandboxConfig`] that is the same for all the sandboxes of a pool:
//! interpreter, runtime, network mode, identity socket, environment) that imports those modules
//! once and then forks a process per session. The forked sessions share the zygote's pages
//! copy-on-write (the zygote freezes its objects out of the garbage collector's reach first,
//! so that collections do not dirty them) and pay only for what they change.
//!
//! Each forked process is born in the session's own cgroup (the supervisor moves the zygote
//! there for the fork and back after it, so everything the child touches is charged to the
//! session) and jails itself further before any user code runs (`zygote.py`): a root
//! supervisor's child first becomes the session's own host uid, one of a block of uids
//! ([`crate::uids::UidBlock`]) that the supervisor mapped into the zygote's user namespace
//! (see [`map_userns`]; the zygote holds `CAP_SETUID`/`CAP_SETGID` there, and only there, for
//! this), and drops those capabilities; then it unshares
//! user, mount, pid, network, IPC, UTS and cgroup namespaces (so sessions cannot see or signal
//! each other, and each has its own loopback), maps uid 65534 to itself, mounts its own size-
//! capped `/tmp`, `/mnt/data` and `/dev/shm`, a new `devpts` instance and, as pid 1 of its pid
//! namespace, its own `/proc`; it drops every capability (bounding and ambient sets too), sets
//! `no_new_privs`, installs the same seccomp filter as a bwrap-started sandbox and forks the
//! agent. The zygote's own sandbox is bwrap's usual one with a read-only root and `/dev` (the
//! sessions share them, so nothing of theirs is writable); it never runs user code.
//!
//! Consequences, written down in `docs/security.md`: sessions of one template share the
//! zygote's address-space layout (ASLR is per zygote, not per session) and Python's string
//! hash seed; numpy's global generator is reseeded in every session (Python's `random`
//! reseeds itself after fork). If a zygote dies, every session forked from it dies with it
//! (they live in its pid namespace); the next start makes a new zygote.

use crate::cgroup::{Cgroup, Limits};
use crate::uids::{self, BlockUid, HostUid, UidBlock};
use crate::{
    SandboxConfig, SandboxError, Tail, bwrap_command, host_pid, jail_fds, jail_hooks, prepare,
    ready_line, spawn_error,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

const ZYGOTE: &str = include_str!("zygote.py");
/// What every zygote imports (the agent's IPython shell), before [`SandboxConfig::preload`]
/// and [`SandboxConfig::zygote_preload`].
const BASE_PRELOAD: &[&str] = &[
    "IPython.core.interactiveshell",
    "IPython.core.displayhook",
    "IPython.core.displaypub",
    "traitlets.config",
    // A session's first plot: zygote.py also draws one figure before it forks (see
    // `warm_matplotlib` there).
    "matplotlib",
    "matplotlib.pyplot",
];
/// The one variable that differs between the sandboxes of one zygote.
pub(crate) const SESSION_ENV: &str = "IDENTITY_HEADER";
/// A zygote with no sandbox left is stopped after this long.
const IDLE: Duration = Duration::from_secs(600);
/// The smallest block of session uids a zygote is started with (see [`Zygote::uids`]).
const MIN_BLOCK: u32 = 16;
/// After a zygote failed to start, its template uses per-sandbox bwrap for this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Plain threads and blocking descriptors, not tokio objects: a zygote outlives the runtime
/// that happened to start it (every `#[tokio::test]` has its own).
pub(crate) struct Zygote {
    key: String,
    /// [`SandboxConfig::cgroup_parent`] (see [`stop_all`]).
    parent: String,
    child: Mutex<Child>,
    /// The control channel: the stream (writes) and a reader on a clone of it.
    ctl: Mutex<(UnixStream, BufReader<UnixStream>)>,
    cgroup: Cgroup,
    /// The zygote's host pid.
    pid: i32,
    stderr: Tail,
    last_used: Mutex<Instant>,
    /// The zygote's own host uid (a root supervisor's).
    uid: Option<u32>,
    /// That uid and the block its sessions' uids come from, given back when it is dropped
    /// (the block once the last session's uid is given back too).
    ids: Option<(HostUid, Arc<UidBlock>)>,
}

/// One line from the zygote, at most 64 KiB.
fn read_line(r: &mut BufReader<UnixStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = vec![];
    let n = r.by_ref().take(1 << 16).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "an unterminated or overlong line",
        ));
    }
    line.pop();
    Ok(Some(line))
}

enum Slot {
    Ready(Arc<Zygote>),
    Failed(Instant, String),
}

/// One cell per template, so that one template's zygote starting (a second or two) never
/// holds up another's sandboxes.
type Cell = Arc<tokio::sync::Mutex<Option<Slot>>>;

static ZYGOTES: LazyLock<Mutex<HashMap<String, Cell>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Everything that must be the same for two sandboxes to share a zygote. Not the identity
/// binding's secret (`IDENTITY_HEADER`): that goes to each forked child on its own channel
/// (see [`Zygote::fork`]), so pools that differ only in their identities share a zygote.
fn key(cfg: &SandboxConfig) -> String {
    let desc = format!(
        "{:?}",
        (
            &cfg.agent,
            &cfg.python,
            &cfg.runtime_dir,
            &cfg.work_dir,
            cfg.network,
            &cfg.identity_socket,
            &cfg.env,
            &cfg.preload,
            &cfg.zygote_preload,
            &cfg.cgroup_parent,
        )
    );
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    desc.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The zygote for `cfg`'s template, started if there is none (or it died), and the host uid
/// of the session about to be forked from it (a root supervisor's; see [`Zygote::take_uid`]).
/// A zygote whose block of uids is all taken keeps serving its sessions, but the next one is
/// forked from a new zygote of the template, with a block of its own.
pub(crate) async fn get(
    cfg: &SandboxConfig,
) -> Result<(Arc<Zygote>, Option<BlockUid>), SandboxError> {
    let key = key(cfg);
    let cell = {
        let mut map = ZYGOTES.lock().unwrap_or_else(|e| e.into_inner());
        // Stop zygotes that no sandbox has used for a while (a deleted pool's, say), and
        // forget old failures. A cell that is busy (a zygote starting) stays.
        map.retain(|k, cell| {
            let Ok(slot) = cell.try_lock() else {
                return true;
            };
            match &*slot {
                Some(Slot::Ready(z)) => {
                    *k == key
                        || Arc::strong_count(z) > 1
                        || z.last_used
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .elapsed()
                            < IDLE
                }
                Some(Slot::Failed(at, _)) => at.elapsed() < RETRY_AFTER,
                None => *k == key,
            }
        });
        map.entry(key.clone()).or_default().clone()
    };
    let mut slot = cell.lock().await;
    match &*slot {
        Some(Slot::Ready(z)) if z.alive() => match z.take_uid() {
            Ok(uid) => {
                *z.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                return Ok((z.clone(), uid));
            }
            Err(()) => tracing::info!(zygote = %z.key, "every uid of the zygote's block is taken"),
        },
        Some(Slot::Failed(at, why)) if at.elapsed() < RETRY_AFTER => {
            return Err(SandboxError::Start(why.clone()));
        }
        _ => {}
    }
    match Zygote::start(cfg, key).await {
        Ok(z) => {
            let z = Arc::new(z);
            *slot = Some(Slot::Ready(z.clone()));
            // A fresh block: never full.
            let uid = z
                .take_uid()
                .map_err(|()| SandboxError::Start("a zygote's block of uids is empty".into()))?;
            Ok((z, uid))
        }
        Err(e) => {
            *slot = Some(Slot::Failed(Instant::now(), e.to_string()));
            Err(e)
        }
    }
}

/// Stops every zygote whose sandboxes live under `cgroup_parent` and removes its cgroup, then
/// the parent group itself if nothing else is left in it: a server's clean stop, once its
/// sandboxes are gone (a sandbox still running from one of these zygotes dies with it). A
/// zygote still starting is left alone. Returns how many were stopped.
pub fn stop_all(cgroup_parent: &str) -> usize {
    let cells: Vec<Cell> = {
        let map = ZYGOTES.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    };
    let mut stopped = vec![];
    for cell in cells {
        let Ok(mut slot) = cell.try_lock() else {
            continue;
        };
        if let Some(Slot::Ready(z)) = &*slot
            && z.parent == cgroup_parent
        {
            z.retire();
            z.cgroup.destroy();
            stopped.push(z.key.clone());
            *slot = None;
        }
    }
    ZYGOTES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|k, _| !stopped.contains(k));
    crate::cgroup::remove_empty_parent(cgroup_parent);
    stopped.len()
}

impl Zygote {
    async fn start(cfg: &SandboxConfig, key: String) -> Result<Zygote, SandboxError> {
        let mut files = prepare(cfg, &[("zygote.py", ZYGOTE, "/opt/cloister/zygote.py")])?;
        // Per session, never in the zygote (whose memory every fork copies).
        files.env.retain(|(k, _)| k != SESSION_ENV);
        // A Node template's sessions exec Node at once: its zygote imports nothing.
        let base: &[&str] = match cfg.agent {
            crate::Agent::Python => BASE_PRELOAD,
            crate::Agent::Node { .. } => &[],
        };
        let mut preload: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        preload.extend(cfg.preload.iter().cloned());
        preload.extend(cfg.zygote_preload.iter().cloned());
        files
            .env
            .push(("CLOISTER_ZYGOTE_PRELOAD".into(), preload.join(",")));
        // The zygote holds the shared pages (charged here, not to the sessions) and forks; its
        // children stay in this group only until the supervisor moves them.
        let limits = Limits {
            // Its own heap, plus the pages it copies on write after each fork (~100 KiB a
            // session, freed when the sessions that still share the old copies end).
            memory_bytes: cfg.limits.memory_bytes.max(2 << 30),
            pids: 256,
            cpu_percent: 100,
        };
        let cgroup = Cgroup::create_in(
            &cfg.cgroup_parent,
            &format!(
                "zygote-{key}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            limits,
        )
        .map_err(|e| SandboxError::Start(format!("cgroup: {e}")))?;
        let (memfd, host_end, jail_end) = jail_fds(&cgroup)?;
        // A root supervisor's zygote runs as a host uid of its own, and its sessions each as a
        // uid of a block of its own (see `uids`); otherwise all run as the supervisor's uid.
        let ids = match Self::uids(cfg.zygote_sessions) {
            Ok(ids) => ids,
            Err(e) => {
                cgroup.destroy();
                return Err(e);
            }
        };
        let mut cmd = bwrap_command(cfg, &files, true);
        // The user namespace bwrap makes for the zygote is left unmapped until the supervisor
        // has mapped the zygote's uid and its sessions' block into it (see `map_userns`);
        // CAP_SETUID/CAP_SETGID in that namespace (and nowhere else) let the zygote make each
        // child a uid of the block.
        let (block_r, block_w) = pipe().inspect_err(|_| cgroup.destroy())?;
        let (info_r, info_w) = pipe().inspect_err(|_| cgroup.destroy())?;
        if ids.is_some() {
            cmd.args(["--unshare-user", "--userns-block-fd", "5", "--info-fd", "6"])
                .args(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]);
        }
        cmd.arg(&cfg.python)
            .args(["-I", "-B", "/opt/cloister/zygote.py"]);
        let mut cmd = std::mem::replace(cmd.as_std_mut(), std::process::Command::new("true"));
        let mut fds = vec![memfd.as_raw_fd(), jail_end.as_raw_fd()];
        if ids.is_some() {
            fds.extend([block_r.as_raw_fd(), info_w.as_raw_fd()]);
        }
        jail_hooks(&mut cmd, &fds, &cgroup, ids.as_ref().map(|(u, _)| u.get()));
        let spawned = cmd.spawn().map_err(spawn_error);
        drop((memfd, jail_end, block_r, info_w));
        let mut child = spawned.inspect_err(|_| cgroup.destroy())?;
        let stderr = Tail::spawn_thread(child.stderr.take());
        let reader = BufReader::new(host_end.try_clone()?);
        let timeout = cfg.start_timeout.max(Duration::from_secs(60));
        host_end.set_read_timeout(Some(timeout))?;
        let maps = ids.as_ref().map(|(u, b)| (u.get(), b.first(), b.len()));
        let block_w = std::fs::File::from(block_w);
        let (ready, host_end, mut reader, block_w) = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mapped = match maps {
                Some((own, first, len)) => map_userns(info_r, &block_w, own, first, len),
                None => Ok(()),
            };
            let ready = match mapped {
                Ok(()) => ready_line(read_line(&mut reader)),
                Err(e) => Err(format!("its user namespace could not be mapped: {e}")),
            };
            (ready, host_end, reader, block_w)
        })
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))?;
        if let Err(why) = ready {
            // bwrap goes on when the block pipe closes, mapped or not: it is killed first.
            let _ = child.kill();
            drop(block_w);
            let _ = child.wait();
            cgroup.destroy();
            std::thread::sleep(Duration::from_millis(20));
            return Err(SandboxError::Start(format!(
                "the zygote did not start ({why}): {}",
                stderr.text().trim()
            )));
        }
        drop(block_w);
        let ready = ready.unwrap_or_default();
        let ns = ready["pid"].as_i64().unwrap_or(-1) as i32;
        let Some(pid) = host_pid(&cgroup, ns) else {
            let _ = child.kill();
            let _ = child.wait();
            cgroup.destroy();
            return Err(SandboxError::Start(
                "the zygote's host pid was not found".into(),
            ));
        };
        host_end.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)));
        tracing::info!(zygote = %key, "sandbox zygote started");
        Ok(Zygote {
            key,
            parent: cfg.cgroup_parent.clone(),
            child: Mutex::new(child),
            ctl: Mutex::new((host_end, reader)),
            cgroup,
            pid,
            stderr,
            last_used: Mutex::new(Instant::now()),
            uid: ids.as_ref().map(|(u, _)| u.get()),
            ids,
        })
    }

    /// Kills the zygote (and with it the sandboxes forked from it), so that [`get`] replaces it.
    fn retire(&self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }

    pub(crate) fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// A root supervisor's uid for a zygote and the block for its sessions; None otherwise.
    fn uids(sessions: u32) -> Result<Option<(HostUid, Arc<UidBlock>)>, SandboxError> {
        let Some(own) = crate::host_uid()? else {
            return Ok(None);
        };
        // With the range crowded (many templates, or many servers on one host), a smaller
        // block: down to MIN_BLOCK sessions per zygote, then none (bwrap per sandbox).
        let mut len = uids::block_len()
            .map_err(SandboxError::Start)?
            .min(sessions)
            .max(1);
        loop {
            match uids::allocate_block(len) {
                Ok(block) => return Ok(Some((own, block))),
                Err(e) if len <= MIN_BLOCK => return Err(SandboxError::Start(e)),
                Err(_) => len = (len / 2).max(MIN_BLOCK),
            }
        }
    }

    /// A uid of the zygote's block for a new session: Ok(None) for a supervisor that is not
    /// root (the sessions run as its uid), Err when every uid of the block is taken.
    fn take_uid(&self) -> Result<Option<BlockUid>, ()> {
        match &self.ids {
            None => Ok(None),
            Some((_, block)) => block.take().map(Some).ok_or(()),
        }
    }

    fn alive(&self) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(c.try_wait(), Ok(None))
    }

    /// Forks a session into `cgroup`: returns the supervisor's end of its channel. The
    /// zygote itself is moved into the session's group for the fork and back afterwards, so
    /// the child is born there and everything it touches from its first instruction on
    /// (copy-on-write copies included) is charged to the session, never to the zygote.
    /// `env` (the session's own variables, secrets among them) is written to the child on its
    /// channel, so it never passes through the zygote's memory, which later forks copy.
    /// `uid`: the session's host uid, of the zygote's block ([`Zygote::take_uid`]), which the
    /// child becomes before anything else.
    pub(crate) async fn fork(
        self: &Arc<Self>,
        cgroup: &Cgroup,
        tmp_bytes: u64,
        data_bytes: u64,
        uid: Option<u32>,
        env: Vec<(String, String)>,
    ) -> Result<UnixStream, SandboxError> {
        let z = self.clone();
        let cgroup = cgroup.clone();
        tokio::task::spawn_blocking(move || {
            let mut chan = z.fork_blocking(&cgroup, tmp_bytes, data_bytes, uid)?;
            std::io::Write::write_all(&mut chan, &crate::env_line(env))
                .map_err(|e| SandboxError::Start(format!("the forked sandbox vanished: {e}")))?;
            Ok(chan)
        })
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))?
    }

    fn fork_blocking(
        &self,
        cgroup: &Cgroup,
        tmp_bytes: u64,
        data_bytes: u64,
        uid: Option<u32>,
    ) -> Result<UnixStream, SandboxError> {
        let dead = |why: String| {
            SandboxError::Start(format!(
                "zygote {}: {why} {}",
                self.key,
                self.stderr.text().trim()
            ))
        };
        let (host_end, jail_end) = UnixStream::pair()?;
        let line = format!(
            "{}\n",
            json!({"op": "spawn", "tmp": tmp_bytes, "data": data_bytes, "uid": uid})
        );
        let reply = {
            let mut ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
            cgroup
                .add(self.pid)
                .map_err(|e| dead(format!("cgroup: {e}")))?;
            let sent = sendmsg_fd(ctl.0.as_raw_fd(), line.as_bytes(), jail_end.as_raw_fd());
            drop(jail_end);
            let reply = match sent {
                Ok(n) if n == line.len() => read_line(&mut ctl.1),
                Ok(n) => Err(std::io::Error::other(format!("short write ({n} bytes)"))),
                Err(e) => Err(e),
            };
            let back = self.cgroup.add(self.pid);
            match (reply, back) {
                (Ok(Some(line)), Ok(())) => {
                    serde_json::from_slice::<Value>(&line).unwrap_or_default()
                }
                (Ok(None), _) => {
                    self.retire();
                    return Err(dead("exited".into()));
                }
                (Err(e), _) => {
                    // A zygote that stops answering is not trusted again: the next start
                    // makes a new one.
                    self.retire();
                    return Err(dead(format!("the control channel failed ({e})")));
                }
                (_, Err(e)) => return Err(dead(format!("cgroup: {e}"))),
            }
        };
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if reply["pid"].as_i64().is_none() {
            return Err(dead(format!("could not fork: {}", reply["error"])));
        }
        Ok(host_end)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Ok(c) = self.child.get_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cgroup.destroy();
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors of ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The zygote's user namespace maps, as written by the (root) supervisor: 65534 to the
/// zygote's own host uid and, one to one, its sessions' block (uid and gid alike; the block
/// never holds 65534, see `uids::parse_range`).
fn userns_map(own: u32, first: u32, len: u32) -> String {
    format!("{} {own} 1\n{first} {first} {len}\n", crate::SANDBOX_UID)
}

/// Reads bwrap's `--info-fd` report (its child's host pid, the process that unshared the
/// zygote's user namespace), writes that namespace's maps ([`userns_map`], `setgroups` denied)
/// and lets bwrap go on (`--userns-block-fd`).
fn map_userns(
    info: OwnedFd,
    mut block: &std::fs::File,
    own: u32,
    first: u32,
    len: u32,
) -> std::io::Result<()> {
    let mut text = vec![];
    // bwrap writes the report and closes its end; if it fails first, this ends early.
    std::fs::File::from(info)
        .take(1 << 16)
        .read_to_end(&mut text)?;
    let pid = serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| v["child-pid"].as_i64())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "bwrap reported {:?}",
                String::from_utf8_lossy(&text)
            ))
        })?;
    let map = userns_map(own, first, len);
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
    std::io::Write::write_all(&mut block, b"1")
}

/// Sends `bytes` with `fd` attached (SCM_RIGHTS).
fn sendmsg_fd(sock: RawFd, bytes: &[u8], fd: RawFd) -> std::io::Result<usize> {
    let fd_len = std::mem::size_of::<RawFd>() as u32;
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, the
    // control buffer is large enough and aligned for one cmsghdr carrying one descriptor.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}
