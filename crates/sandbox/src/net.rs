//! Outbound networking for [`Network::Enabled`](crate::Network::Enabled) sandboxes, through
//! slirp4netns (user-mode TCP/IP; no bridge, no veth, no host routing changes).
//!
//! Every sandbox has its own network namespace either way. For an enabled one the supervisor
//! starts, once the agent is up,
//!
//! ```text
//! slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox --enable-seccomp \
//!             --userns-path=/proc/self/fd/5 --ready-fd=3 --exit-fd=4 <agent pid> tap0
//! ```
//!
//! which gives the sandbox `tap0` = 10.0.2.100/24, a default route via 10.0.2.2 and a DNS
//! forwarder at 10.0.2.3 (the sandbox's `/etc/resolv.conf` points there).
//! `--disable-host-loopback` stops 10.0.2.2 from reaching the host's 127.0.0.1.
//!
//! Why `--userns-path`: bwrap (run unprivileged, as host uid 65534) nests two user namespaces:
//! the outer one, which owns the network namespace and maps its root to bwrap's host uid so
//! that bwrap can set up `/dev`, and an inner one that maps uid 65534. slirp4netns would join
//! the agent's (inner) user namespace and then lack the right to enter a network namespace
//! owned by its parent, so the supervisor hands it the owner (found with `NS_GET_USERNS`) as
//! fd 5. slirp4netns itself runs as host root, which holds every capability in both (they
//! descend from the initial user namespace), so it can join them, and can open
//! `/dev/net/tun` (0600 on hosts without udev's rule). Its group is
//! [`crate::egress::HELPER_GID`] and no other: that is what the egress filter matches its
//! sockets by.
//!
//! slirp4netns runs outside the sandbox's cgroup, so the after-exec sweep never touches it. It
//! exits when the write end of its exit pipe closes: when the sandbox is dropped or killed,
//! or when the supervisor process dies for any reason.
//!
//! **Egress is filtered** ([`crate::egress`]): the host's own addresses, private, link-local
//! (cloud metadata) and other non-public ranges are refused; the public internet and the
//! host's DNS resolvers are not.

use crate::{SandboxError, Tail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// `NS_GET_USERNS` from `<linux/nsfs.h>`: the user namespace owning a namespace.
const NS_GET_USERNS: u64 = 0xb701;

pub(crate) struct Slirp {
    child: tokio::process::Child,
    exit: Option<OwnedFd>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors that we take ownership of below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are valid and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The user namespace that owns `pid`'s network namespace.
fn netns_owner(pid: i32) -> std::io::Result<OwnedFd> {
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor (or -1).
    let fd = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The ioctl's descriptor is not close-on-exec; make it so (the pre-exec hook dups it).
    // SAFETY: plain fcntl on our own descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

impl Slirp {
    /// Connects the network namespace of `pid` to the outside and waits until it is up.
    pub(crate) async fn start(pid: i32, timeout: Duration) -> Result<Slirp, SandboxError> {
        let err = |m: String| SandboxError::Start(format!("network: {m}"));
        let gid = crate::drops_privileges().then_some(crate::egress::HELPER_GID);
        if let Some(gid) = gid {
            crate::egress::ensure(gid)?;
        } else if crate::egress::enabled() {
            return Err(err(
                "the egress filter needs a supervisor running as root (or \
                 CLOISTER_EGRESS_FILTER=off)"
                    .into(),
            ));
        }
        let userns = netns_owner(pid).map_err(|e| err(format!("network namespace: {e}")))?;
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let fds = [ready_w.as_raw_fd(), exit_r.as_raw_fd(), userns.as_raw_fd()];
        let mut cmd = tokio::process::Command::new("slirp4netns");
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            "--userns-path=/proc/self/fd/5",
            "--ready-fd=3",
            "--exit-fd=4",
        ])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        // SAFETY: only fcntl, dup2, setgroups and setgid (async-signal-safe) on descriptors
        // and ids prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                crate::place_fds(&fds)?;
                // The egress filter matches the helper's sockets by their group.
                if let Some(gid) = gid
                    && (libc::setgroups(0, std::ptr::null()) < 0 || libc::setgid(gid) < 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err("slirp4netns is not installed (apt-get install slirp4netns)".into())
            } else {
                err(format!("slirp4netns: {e}"))
            }
        })?;
        drop((ready_w, exit_r, userns));
        let tail = Tail::spawn(child.stderr.take());
        let mut slirp = Slirp {
            child,
            exit: Some(exit_w),
        };
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(timeout, ready.read(&mut byte)).await {
            Ok(Ok(1)) => Ok(slirp),
            other => {
                slirp.kill();
                let _ = slirp.child.wait().await;
                let why = match other {
                    Err(_) => "did not come up in time".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "exited".to_string(),
                };
                Err(err(format!("slirp4netns {why}: {}", tail.text().trim())))
            }
        }
    }

    pub(crate) fn kill(&mut self) {
        self.exit = None;
        let _ = self.child.start_kill();
    }

    pub(crate) async fn wait(&mut self) {
        let _ = self.child.wait().await;
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
