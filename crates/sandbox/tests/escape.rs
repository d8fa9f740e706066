//! Hostile code against the sandbox: it must not see or touch the host, gain privileges,
//! reach the host's network, or outgrow its limits; and stopping a sandbox leaves nothing.
//! Needs root (CI runs as root) and bubblewrap; runs on the IPython runtime (see
//! `common/mod.rs`).

mod common;

use cloister_sandbox::{DEFAULT_MAX_OUTPUT, Sandbox, SandboxError};
use common::{finish, host_ids, python_as};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn start() -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.limits.memory_bytes = 192 << 20;
    cfg.tmp_bytes = 16 << 20;
    cfg.data_bytes = 16 << 20;
    cfg.limits.pids = 32;
    (Sandbox::start(&cfg).await.expect("sandbox starts"), dir)
}

async fn run(s: &mut Sandbox, code: &str) -> cloister_sandbox::ExecResult {
    s.exec(code, T, DEFAULT_MAX_OUTPUT).await.expect("exec")
}

#[tokio::test]
async fn runs_code_and_keeps_state() {
    let (mut s, _d) = start().await;
    let r = run(&mut s, "x = 20\nprint('hello')\nx + 1").await;
    assert_eq!(
        (r.status.as_str(), r.stdout.as_str(), r.result.as_deref()),
        ("Succeeded", "hello\n", Some("21"))
    );
    assert_eq!(run(&mut s, "x * 2").await.result.as_deref(), Some("40"));
    let r = run(&mut s, "1/0").await;
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("ZeroDivisionError"));
    // Writing to fd 1 directly cannot corrupt the protocol.
    let r = run(
        &mut s,
        "import os\nos.write(1, b'{\"garbage\": 1}\\n')\n'ok'",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("'ok'"));
    finish(s).await;
}

#[tokio::test]
async fn cannot_see_or_touch_the_host() {
    let (mut s, _d) = start().await;
    let code = r#"
import os
out = {}
out["uid"] = os.getuid()
out["host_dirs"] = [p for p in ["/root", "/home", "/work", "/var/log", "/var/lib/dpkg", "/etc/shadow", "/etc/passwd", "/run/systemd"] if os.path.exists(p)]
# Only the read-only runtime is bound under /var.
out["var"] = [r for r, d, f in os.walk("/var") if f and "/var/lib/cloister/runtime/" not in r + "/"]
try:
    open("/usr/evil", "w"); out["usr_writable"] = True
except OSError:
    out["usr_writable"] = False
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
try:
    os.setuid(0); out["setuid"] = True
except OSError:
    out["setuid"] = False
out["ifaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
out
"#;
    let r = run(&mut s, code).await;
    assert_eq!(r.status, "Succeeded", "{r:?}");
    let v = r
        .result
        .unwrap()
        .replace('\'', "\"")
        .replace("False", "false")
        .replace("True", "true");
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["uid"], 65534, "inside, sandboxes run as 65534");
    assert_eq!(v["host_dirs"], serde_json::json!([]), "host paths visible");
    assert_eq!(
        v["var"],
        serde_json::json!([]),
        "host files under /var visible"
    );
    assert_eq!(v["usr_writable"], false);
    assert!(
        v["pids"].as_array().unwrap().len() <= 3,
        "host processes visible: {}",
        v["pids"]
    );
    assert_eq!(v["caps"], "0000000000000000");
    assert_eq!(v["setuid"], false);
    assert_eq!(v["ifaces"], serde_json::json!(["lo"]));
    finish(s).await;
}

#[tokio::test]
async fn runs_as_an_unprivileged_host_uid_of_its_own() {
    use std::os::unix::fs::MetadataExt;
    let (mut s, _d) = start().await;
    let id = s.id().to_string();
    let agent = s.agent_pid().expect("agent pid");
    // Its own uid from the configured range (the supervisor runs as root here), not 65534.
    let uid = s
        .host_uid()
        .expect("a root supervisor gives every sandbox a host uid");
    let (first, last) = cloister_sandbox::uids::DEFAULT_RANGE;
    assert!((first..=last).contains(&uid), "{uid}");
    // A cell that keeps a child process alive for a while, during which the host looks at
    // every process in the sandbox's cgroup: the session's pid 1 (bwrap's init, or the forked
    // session's reaper), bwrap itself when it has one, the agent and the child.
    let code = "import os, subprocess, time\nopen('/tmp/mine', 'w').close()\n\
                p = subprocess.Popen(['sleep', '30'])\ntime.sleep(3)\n\
                st = os.stat('/tmp/mine')\n(st.st_uid, st.st_gid, os.getuid(), os.geteuid())";
    let watch = async {
        for _ in 0..500 {
            let seen: Vec<_> = common::cgroup_pids(&id)
                .into_iter()
                .filter_map(|p| host_ids(p).map(|ids| (p, ids)))
                .collect();
            let child_up = seen.iter().any(|(p, _)| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            });
            if child_up && seen.len() >= 3 {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cell's child never showed up in the cgroup");
    };
    let (r, seen) = tokio::join!(s.exec(code, T, DEFAULT_MAX_OUTPUT), watch);
    let r = r.expect("exec");
    // Inside, it is still 65534.
    assert_eq!(
        r.result.as_deref(),
        Some("(65534, 65534, 65534, 65534)"),
        "{r:?}"
    );
    assert!(seen.iter().any(|(p, _)| *p == agent), "{seen:?}");
    let own = format!("{uid} {uid} {uid} {uid}");
    for (pid, (uids, gids, groups)) in &seen {
        assert_eq!(uids, &own, "host uids of {pid}");
        assert_eq!(gids, &own, "host gids of {pid}");
        assert_eq!(groups, "", "supplementary groups of {pid}");
    }
    // The agent's user namespace maps 65534 to the sandbox's host uid, not to host root.
    for map in ["uid_map", "gid_map"] {
        let m = std::fs::read_to_string(format!("/proc/{agent}/{map}")).unwrap();
        assert_eq!(
            m.split_whitespace().collect::<Vec<_>>(),
            ["65534", &uid.to_string(), "1"],
            "{map}: {m}"
        );
    }
    // The file the cell created belongs to that host uid too.
    let md = std::fs::metadata(format!("/proc/{agent}/root/tmp/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, uid));
    finish(s).await;
}

/// What a host process as `uid` can do to process `pid`: open its memory, read its
/// environment, signal it.
fn reach(uid: u32, pid: i32) -> String {
    python_as(
        uid,
        &format!(
            "import os\nr = []\n\
             for what, f in [('mem', lambda: open('/proc/{pid}/mem', 'rb')), \
             ('environ', lambda: open('/proc/{pid}/environ', 'rb').read()), \
             ('signal', lambda: os.kill({pid}, 0))]:\n\
             \x20   try:\n        f(); r.append(what)\n    except OSError:\n        pass\n\
             print(','.join(r) or 'nothing')"
        ),
    )
}

#[tokio::test]
async fn sandboxes_have_distinct_uids_and_cannot_reach_each_other() {
    let (mut a, _da) = start().await;
    let (mut b, _db) = start().await;
    let (ua, ub) = (a.host_uid().unwrap(), b.host_uid().unwrap());
    assert_ne!(ua, ub);
    // Both idle, then B busy with children of its own: every host process running as A's uid
    // is one of A's (what RLIMIT_NPROC counts for A), and B's only B's.
    let busy = "import subprocess, time\nps = [subprocess.Popen(['sleep', '20']) for _ in range(6)]\n\
                time.sleep(4)\nlen(ps)";
    let (ida, idb) = (a.id().to_string(), b.id().to_string());
    let agent = a.agent_pid().unwrap();
    let check = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Every process of a sandbox runs as its uid, and none of the other's does: what
        // RLIMIT_NPROC counts for one is never the other's.
        let procs_of = |uid: u32| -> Vec<i32> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| {
                    host_ids(*p)
                        .is_some_and(|(u, _, _)| u.split(' ').next() == Some(&*uid.to_string()))
                })
                .collect()
        };
        for (id, uid, other) in [(&ida, ua, &idb), (&idb, ub, &ida)] {
            let with_uid = procs_of(uid);
            let mine = common::cgroup_pids(id);
            assert!(!mine.is_empty());
            for p in &mine {
                assert!(
                    with_uid.contains(p) || common::gone(*p),
                    "{p} of {id} is not uid {uid}"
                );
            }
            for p in common::cgroup_pids(other) {
                assert!(
                    !with_uid.contains(&p),
                    "{p} of {other} runs as {id}'s uid {uid}"
                );
            }
        }
        // A host process running as B's uid, or as nobody, gets nothing of A's agent: not its
        // memory, not its environment (the identity secret), not even a signal through.
        for uid in [ub, 65534] {
            assert_eq!(reach(uid, agent), "nothing", "as uid {uid}");
        }
    };
    let (r, ()) = tokio::join!(b.exec(busy, T, DEFAULT_MAX_OUTPUT), check);
    assert_eq!(r.expect("exec").result.as_deref(), Some("6"));
    // The agent is not dumpable (so not even its own uid outside its namespace could attach),
    // yet it still reads its own /proc/self.
    let r = run(
        &mut a,
        "import os\n(len(os.listdir('/proc/self/fd')) > 2, 'VmRSS' in open('/proc/self/status').read())",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("(True, True)"), "{r:?}");
    finish(a).await;
    finish(b).await;
}

#[tokio::test]
async fn cannot_reach_the_hosts_network() {
    // A listener on the host's loopback; the sandbox has its own network namespace.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut s, _d) = start().await;
    let r = run(&mut s, &format!("import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); r = 'connected'\nexcept OSError as e:\n    r = type(e).__name__\nr")).await;
    assert_ne!(r.result.as_deref(), Some("'connected'"), "{r:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the host saw a connection from the sandbox"
    );
    finish(s).await;
}

#[tokio::test]
async fn seccomp_refuses_dangerous_syscalls() {
    let (mut s, _d) = start().await;
    let code = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def tryit(f, *a):
    r = f(*a)
    return (r, ctypes.get_errno())
res = {
  "ptrace": tryit(libc.ptrace, 16, os.getppid(), 0, 0),
  "unshare_user": tryit(libc.unshare, 0x10000000),
  "mount": tryit(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
  "chroot": tryit(libc.chroot, b"/tmp"),
  "bpf": tryit(libc.syscall, 321, 0, 0, 0),
  "keyctl": tryit(libc.syscall, 250, 0, 0, 0),
  # io_uring runs its operations in kernel workers no filter sees: refused outright.
  "io_uring_setup": tryit(libc.syscall, 425, 8, ctypes.create_string_buffer(120)),
  # The x32 aliases of denied calls (nr | 0x40000000): refused, not passed to the kernel.
  "x32_unshare": tryit(libc.syscall, 0x40000000 | 272, 0x10000000),
  "x32_ptrace": tryit(libc.syscall, 0x40000000 | 521, 16, os.getppid(), 0, 0),
  "x32_getpid": tryit(libc.syscall, 0x40000000 | 39),
}
res
"#;
    let r = run(&mut s, code).await;
    assert_eq!(r.status, "Succeeded", "{r:?}");
    let out = r.result.unwrap();
    for name in [
        "ptrace",
        "unshare_user",
        "mount",
        "chroot",
        "bpf",
        "keyctl",
        "io_uring_setup",
        "x32_unshare",
        "x32_ptrace",
        "x32_getpid",
    ] {
        assert!(
            out.contains(&format!("'{name}': (-1, 1)")),
            "{name} was not refused with EPERM: {out}"
        );
    }
    finish(s).await;
}

#[tokio::test]
async fn fork_bomb_is_contained() {
    let (mut s, _d) = start().await;
    let code = r#"
import os, time
n = 0
err = None
try:
    for _ in range(1000):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    err = type(e).__name__
(n, err)
"#;
    let r = run(&mut s, code).await;
    let out = r.result.unwrap_or_default();
    assert!(
        out.contains("BlockingIOError"),
        "fork was not stopped: {out}"
    );
    assert!(s.process_count() <= 32, "{} processes", s.process_count());
    // The sandbox still answers.
    assert_eq!(run(&mut s, "2 + 2").await.result.as_deref(), Some("4"));
    finish(s).await;
}

#[tokio::test]
async fn memory_bomb_is_killed_and_cleaned_up() {
    let (mut s, _d) = start().await;
    let e = s
        .exec("b = b'x' * (512 << 20)\nlen(b)", T, DEFAULT_MAX_OUTPUT)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Died { oom: true }), "{e:?}");
    assert!(!s.is_alive());
    assert!(!s.cgroup_exists(), "cgroup left behind");
    assert!(s.exec("1", T, DEFAULT_MAX_OUTPUT).await.is_err());
    finish(s).await;
}

#[tokio::test]
async fn code_that_ignores_interrupts_is_killed_and_leaves_nothing() {
    let (mut s, _d) = start().await;
    let t0 = std::time::Instant::now();
    let e = s
        .exec(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            Duration::from_secs(1),
            DEFAULT_MAX_OUTPUT,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Timeout(_)), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(!s.is_alive());
    assert_eq!(s.process_count(), 0);
    assert!(!s.cgroup_exists());
    finish(s).await;
}

#[tokio::test]
async fn the_protocol_channel_cannot_be_abused_against_the_supervisor() {
    let (mut s, _d) = start().await;
    // Finding the channel and writing junk lines to it changes nothing.
    let r = run(
        &mut s,
        "import os\nfd = [int(f) for f in os.listdir('/proc/self/fd') if int(f) >= 100][0]\n\
         os.write(fd, b'junk\\n{\"id\": 999}\\n')\n'ok'",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("'ok'"));
    assert_eq!(run(&mut s, "1 + 1").await.result.as_deref(), Some("2"));
    // An endless line kills the sandbox, not the supervisor's memory.
    let e = s
        .exec(
            "chunk = b'x' * (1 << 20)\nwhile True:\n    os.write(fd, chunk)",
            T,
            DEFAULT_MAX_OUTPUT,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Protocol(_)), "{e:?}");
    assert!(!s.is_alive());
    finish(s).await;
}

// --- cross-session persistence ---------------------------------------------------------------
//
// Sessions of one template (forked from one zygote by default; one bwrap each with
// CLOISTER_SANDBOX_ZYGOTE=0) must not leave anything for each other: the root and every path
// outside a session's own size-capped /tmp, /mnt/data and /dev/shm are read-only, and what is
// written to those is gone with the session.

/// A template whose sandboxes differ only in their identity secret, as pools that differ only
/// in their identities do: an identity socket (a listener nobody answers) in the work dir.
fn identity_template(
    dir: &std::path::Path,
) -> (
    cloister_sandbox::SandboxConfig,
    std::os::unix::net::UnixListener,
) {
    use std::os::unix::fs::PermissionsExt;
    let mut cfg = common::config(dir);
    cfg.limits.memory_bytes = 192 << 20;
    cfg.tmp_bytes = 16 << 20;
    cfg.data_bytes = 16 << 20;
    cfg.limits.pids = 32;
    cloister_sandbox::prepare_work_dir(dir).unwrap();
    let sock = dir.join("identity.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    cfg.identity_socket = Some(sock);
    (cfg, listener)
}

async fn start_with_secret(cfg: &cloister_sandbox::SandboxConfig, secret: &str) -> Sandbox {
    let mut cfg = cfg.clone();
    cfg.identity_header = secret.into();
    Sandbox::start(&cfg).await.expect("sandbox starts")
}

fn py_list(r: &cloister_sandbox::ExecResult) -> Vec<String> {
    let out = r.result.clone().unwrap_or_default();
    serde_json::from_str::<Vec<String>>(&out.trim_matches('\'').replace("\\'", "'"))
        .unwrap_or_else(|e| panic!("{e}: {out} {}", r.stderr))
}

/// Every path outside the session's own mounts that session code might plant something in.
const ROOT_PATHS: &[&str] = &[
    "/etc/ld.so.preload",
    "/etc/cloister-planted",
    "/cloister-planted",
    "/var/cloister-planted",
    "/opt/cloister-planted",
    "/opt/cloister/cloister-planted",
    "/run/cloister-planted",
    "/run/cloister/cloister-planted",
    "/mnt/cloister-planted",
    "/usr/cloister-planted",
    "/dev/cloister-planted",
    "/home/cloister-planted",
    "/root/cloister-planted",
    "/srv/cloister-planted",
];

#[tokio::test]
async fn a_session_cannot_plant_ld_so_preload_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _listener) = identity_template(dir.path());
    let mut a = start_with_secret(&cfg, "secret-of-pool-a").await;
    // Pool A's session compiles nothing (any file would do as the payload) and tries every
    // root path, making missing directories where it can.
    let code = format!(
        r#"
import os, json
planted = []
for p in {paths:?}:
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write("/tmp/evil.so\n")
        planted.append(p)
    except OSError:
        pass
json.dumps(planted)
"#,
        paths = ROOT_PATHS
    );
    let r = run(&mut a, &code).await;
    let planted = py_list(&r);
    // Pool C's session, same template, another identity, running while A's still lives.
    let mut c = start_with_secret(&cfg, "secret-of-pool-c").await;
    let check = format!(
        "import os, json, subprocess\nsubprocess.run(['/bin/true'])\n\
         json.dumps([p for p in {paths:?} if os.path.exists(p)])",
        paths = ROOT_PATHS
    );
    let seen = py_list(&run(&mut c, &check).await);
    assert_eq!(
        seen,
        Vec::<String>::new(),
        "session C sees what session A planted"
    );
    assert_eq!(
        planted,
        Vec::<String>::new(),
        "session A could write outside its own mounts"
    );
    finish(a).await;
    // And after A is gone, a new session sees nothing either.
    let mut d = start_with_secret(&cfg, "secret-of-pool-d").await;
    assert_eq!(py_list(&run(&mut d, &check).await), Vec::<String>::new());
    finish(c).await;
    finish(d).await;
}

/// Lists, from inside a session, every mount point and top-level directory that takes a new
/// file, with the file system type and size option of the mount it lands on; plants a file
/// named `marker` in each.
const SCAN: &str = r#"
import os, json
marker = MARKER
mounts = {}
for line in open("/proc/self/mountinfo"):
    pre, post = line.split(" - ")
    mp = pre.split()[4].replace("\\040", " ")
    fstype, _src, opts = post.split()[:3]
    mounts[mp] = (fstype, opts)
def mount_of(path):
    path = os.path.realpath(path)
    best = "/"
    for mp in mounts:
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return best
cands = set(mounts) | {"/"}
for top in os.listdir("/"):
    p = "/" + top
    if os.path.isdir(p) and not os.path.islink(p) and top not in ("proc", "sys"):
        cands.add(p)
        for sub in os.listdir(p) if top not in ("usr",) else []:
            if os.path.isdir(os.path.join(p, sub)) and not os.path.islink(os.path.join(p, sub)):
                cands.add(os.path.join(p, sub))
writable = []
for d in sorted(cands):
    if not os.path.isdir(d) or d.startswith("/proc") or d.startswith("/sys"):
        continue
    f = os.path.join(d, marker)
    try:
        with open(f, "w") as fh:
            fh.write("x")
    except OSError:
        continue
    mp = mount_of(f)
    fstype, opts = mounts.get(mp, ("?", ""))
    size = [o for o in opts.split(",") if o.startswith("size=")]
    writable.append([d, mp, fstype, size[0] if size else ""])
json.dumps(writable)
"#;

#[tokio::test]
async fn every_writable_mount_is_private_capped_and_gone_with_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _listener) = identity_template(dir.path());
    let marker = "cloister-scan-marker";
    let mut a = start_with_secret(&cfg, "secret-one").await;
    let r = run(&mut a, &SCAN.replace("MARKER", &format!("{marker:?}"))).await;
    let out = r.result.clone().unwrap_or_default();
    let writable: Vec<(String, String, String, String)> =
        serde_json::from_str(out.trim_matches('\''))
            .unwrap_or_else(|e| panic!("{e}: {out} {}", r.stderr));
    // 16 MiB caps, as tmpfs reports them (in KiB).
    let capped = "size=16384k";
    let mut mounts: Vec<&str> = vec![];
    for (dir, mp, fstype, size) in &writable {
        assert!(
            ["/tmp", "/mnt/data", "/dev/shm"].contains(&mp.as_str()),
            "{dir} is writable and on {mp} ({fstype}), not one of the session's own mounts: {writable:?}"
        );
        assert_eq!(
            (fstype.as_str(), size.as_str()),
            ("tmpfs", capped),
            "{dir} on {mp}"
        );
        mounts.push(mp);
    }
    for own in ["/tmp", "/mnt/data", "/dev/shm"] {
        assert!(mounts.contains(&own), "{own} is not writable: {writable:?}");
    }
    // Nothing of it reaches the next session of the template, during or after this one.
    let look = format!(
        "import os, json\njson.dumps([d for d in {dirs:?} if os.path.exists(os.path.join(d, {marker:?}))])",
        dirs = writable.iter().map(|w| w.0.clone()).collect::<Vec<_>>()
    );
    let mut b = start_with_secret(&cfg, "secret-two").await;
    assert_eq!(py_list(&run(&mut b, &look).await), Vec::<String>::new());
    finish(a).await;
    let mut c = start_with_secret(&cfg, "secret-three").await;
    assert_eq!(py_list(&run(&mut c, &look).await), Vec::<String>::new());
    finish(b).await;
    finish(c).await;
}

/// Every process on the host whose command line or environment holds `needle`.
fn processes_showing(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        for what in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(format!("/proc/{pid}/{what}"))
                && String::from_utf8_lossy(&b).contains(needle)
            {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                found.push(format!(
                    "{pid} {what}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
    }
    found
}

/// The identity binding's secret reaches the sandbox's `os.environ`, and no host-visible
/// argv or environ of any process (the supervisor, bwrap, the agent, slirp4netns, zygotes)
/// holds it: with a zygote and without.
#[tokio::test]
async fn secrets_are_on_no_command_line_or_environ() {
    use std::os::unix::fs::PermissionsExt;
    for fork in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("identity.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let secret = format!("sekrit-{}", uuid::Uuid::new_v4().simple());
        let mut cfg = common::config(dir.path());
        cfg.fork = fork;
        cfg.network = cloister_sandbox::Network::Enabled;
        cfg.identity_socket = Some(sock.clone());
        cfg.identity_header = secret.clone();
        let mut s = Sandbox::start(&cfg).await.expect("sandbox starts");
        assert!(s.network_helper_pid().is_some());
        let r = run(&mut s, "import os\nos.environ['IDENTITY_HEADER']").await;
        assert_eq!(r.result, Some(format!("'{secret}'")), "fork {fork}: {r:?}");
        // A subprocess the session starts itself inherits it (inside the sandbox, by design).
        let r = run(
            &mut s,
            "import subprocess\nsubprocess.run(['sh', '-c', 'echo $IDENTITY_HEADER'], capture_output=True, text=True).stdout.strip()",
        )
        .await;
        assert_eq!(r.result, Some(format!("'{secret}'")), "fork {fork}: {r:?}");
        let shown = processes_showing(&secret);
        assert!(
            shown.is_empty(),
            "fork {fork}: the secret is visible: {shown:#?}"
        );
        finish(s).await;
    }
}
