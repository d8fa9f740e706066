//! Sandboxes forked from a zygote: they are forked (three pid namespaces deep), they share the
//! zygote's pages (a session with pandas imported costs a fraction of a fresh interpreter),
//! and sessions of one zygote are as separate as bwrap-started ones: own /tmp, /mnt/data,
//! /dev/shm, /dev/pts, /proc, hostname and loopback, no capabilities, seccomp on, different
//! random streams. Needs root and bubblewrap, like the other sandbox tests.

mod common;

use cloister_sandbox::{DEFAULT_MAX_OUTPUT, ExecResult, Sandbox, SandboxConfig};
use common::finish;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn run(s: &mut Sandbox, code: &str) -> ExecResult {
    let r = s.exec(code, T, DEFAULT_MAX_OUTPUT).await.expect("exec");
    assert_eq!(r.status, "Succeeded", "{code}: {}", r.stderr);
    r
}

fn result(r: &ExecResult) -> String {
    r.result.clone().unwrap_or_default()
}

fn ns_depth(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .count()
}

/// Memory charged to the agent's memory cgroup (usage, including page cache), bytes.
fn cgroup_memory(pid: i32) -> u64 {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctl, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctl == "memory" {
            let p = format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes");
            return std::fs::read_to_string(p).unwrap().trim().parse().unwrap();
        }
        if ctl.is_empty() {
            let p = format!("/sys/fs/cgroup{path}/memory.current");
            if let Ok(s) = std::fs::read_to_string(p) {
                return s.trim().parse().unwrap();
            }
        }
    }
    panic!("no memory cgroup for {pid}: {cg}");
}

fn config(dir: &std::path::Path) -> SandboxConfig {
    let mut cfg = common::config(dir);
    cfg.fork = true;
    cfg
}

/// The host pid of the zygote serving `work_dir`: found by its script (its forks, one pid
/// namespace deeper, share its command line) and the work dir it binds.
fn zygote_pid(work_dir: &std::path::Path) -> i32 {
    let zygotes: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains("/opt/cloister/zygote.py") && !c.contains("bwrap")
            }) && ns_depth(*p) == 2 // the forked sessions are one level deeper
        })
        .filter(|p| {
            // Only this test's zygote: it binds this test's work dir.
            std::fs::read_to_string(format!("/proc/{p}/mountinfo"))
                .is_ok_and(|m| m.contains(work_dir.to_str().unwrap()))
        })
        .collect();
    assert_eq!(
        zygotes.len(),
        1,
        "one zygote for this work dir: {zygotes:?}"
    );
    zygotes[0]
}

#[tokio::test]
async fn forked_sessions_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut a = Sandbox::start(&cfg).await.expect("a starts");
    let mut b = Sandbox::start(&cfg).await.expect("b starts");
    // Forked: host, zygote and session pid namespaces.
    assert_eq!(ns_depth(a.agent_pid().unwrap()), 3);
    assert_eq!(ns_depth(b.agent_pid().unwrap()), 3);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/uid_map", a.agent_pid().unwrap()))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65534", &a.host_uid().unwrap().to_string(), "1"]
    );
    // Its own host uid (of its zygote's block), not nobody's.
    assert_ne!(a.host_uid(), Some(65534));

    // What one session writes, the other does not see.
    run(
        &mut a,
        "import os, pathlib\n\
         for p in ['/tmp/a-was-here', '/mnt/data/a-was-here', '/dev/shm/a-was-here']:\n\
         \x20   pathlib.Path(p).write_text('a')\n\
         import subprocess, sys\n\
         pty = os.openpty()\n\
         os.getpid()",
    )
    .await;
    let r = run(
        &mut b,
        "import os\n\
         [p for p in ['/tmp/a-was-here', '/mnt/data/a-was-here', '/dev/shm/a-was-here'] if os.path.exists(p)], \
         sorted(os.listdir('/dev/pts')), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), \
         os.uname().nodename",
    )
    .await;
    assert_eq!(result(&r), "([], ['ptmx'], [1, 2], 'sandbox')", "{r:?}");

    // Own loopback: a port bound in one session is free in the other.
    run(
        &mut a,
        "import socket\nsrv = socket.socket(); srv.bind(('127.0.0.1', 40404)); srv.listen(1)",
    )
    .await;
    let r = run(
        &mut b,
        "import socket\ns = socket.socket(); s.settimeout(1)\ns.connect_ex(('127.0.0.1', 40404)) != 0",
    )
    .await;
    assert_eq!(result(&r), "True", "{r:?}");

    // No capabilities, no_new_privs, the seccomp filter, writes to /dev refused.
    let r = run(
        &mut b,
        "st = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
         try:\n\
         \x20   open('/dev/evil', 'w'); dev = 'writable'\n\
         except OSError as e:\n\
         \x20   import errno; dev = errno.errorcode[e.errno]\n\
         open('/dev/null', 'w').write('fine')\n\
         [st['CapEff'].strip(), st['CapPrm'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip(), st['Seccomp'].strip(), dev]",
    )
    .await;
    assert_eq!(
        result(&r),
        "['0000000000000000', '0000000000000000', '0000000000000000', '1', '2', 'EROFS']",
        "{r:?}"
    );

    // The session's pid 1 (its reaper) holds nothing of the zygote's and cannot be inspected.
    let r = run(
        &mut b,
        "import os\n\
         def probe(p):\n\
         \x20   try:\n\
         \x20       return os.readlink(p)\n\
         \x20   except OSError as e:\n\
         \x20       return type(e).__name__\n\
         [probe('/proc/1/fd/2'), probe('/proc/1/exe')]",
    )
    .await;
    assert_eq!(
        result(&r),
        "['PermissionError', 'PermissionError']",
        "{r:?}"
    );

    // Random streams seeded after the fork: numpy's global generator and Python's differ.
    let code = "import numpy, random\n(numpy.random.randint(0, 2**31, 4).tolist(), random.getrandbits(64))";
    let ra = result(&run(&mut a, code).await);
    let rb = result(&run(&mut b, code).await);
    assert_ne!(ra, rb);
    finish(a).await;
    finish(b).await;
}

/// Sessions forked from one zygote each run as a host uid of their own, from the zygote's
/// block (not the zygote's uid, not each other's): every process of a session has it (real,
/// effective, saved and file system uid and gid, no groups), its user namespace maps 65534 to
/// it, a host process running as one session's uid can reach neither the other session nor the
/// zygote, and a uid is handed out again only after its session ended.
#[tokio::test]
async fn forked_sessions_have_host_uids_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let a = Sandbox::start(&cfg).await.expect("a starts");
    let mut b = Sandbox::start(&cfg).await.expect("b starts");
    let zygote = zygote_pid(dir.path());
    let smaps = std::fs::read_to_string(format!("/proc/{zygote}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "zygote: Rss {}, AnonHugePages {}",
        field("Rss:"),
        field("AnonHugePages:")
    );
    let zuid: u32 = common::host_ids(zygote)
        .unwrap()
        .0
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(a.zygote_uid(), Some(zuid));
    assert_eq!(b.zygote_uid(), Some(zuid), "one zygote for both");
    let (ua, ub) = (a.host_uid().unwrap(), b.host_uid().unwrap());
    let (first, last) = cloister_sandbox::uids::DEFAULT_RANGE;
    for u in [ua, ub] {
        assert!((first..=last).contains(&u), "{u}");
        assert_ne!(u, zuid, "a session does not run as its zygote's uid");
    }
    assert_ne!(ua, ub, "two sessions of one zygote have distinct host uids");
    // The zygote's namespace maps 65534 to the zygote's uid and its block one to one, nothing
    // else; the zygote can switch uids in it (CAP_SETUID, CAP_SETGID) and do nothing more.
    let zmap = std::fs::read_to_string(format!("/proc/{zygote}/uid_map")).unwrap();
    let zmap: Vec<Vec<u32>> = zmap
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(zmap.len(), 2, "{zmap:?}");
    assert_eq!(zmap[0], [65534, zuid, 1]);
    let (bfirst, blen) = (zmap[1][1], zmap[1][2]);
    assert_eq!(zmap[1][0], bfirst, "one to one");
    let block = bfirst..bfirst + blen;
    assert!(block.contains(&ua) && block.contains(&ub) && !block.contains(&zuid));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{zygote}/gid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        std::fs::read_to_string(format!("/proc/{zygote}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    );
    let status = std::fs::read_to_string(format!("/proc/{zygote}/status")).unwrap();
    for cap in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let v = status.lines().find_map(|l| l.strip_prefix(cap)).unwrap();
        assert_eq!(v.trim(), "00000000000000c0", "{cap} of the zygote");
    }

    // Each agent's user namespace maps 65534 to its session's own uid.
    for (s, u) in [(&a, ua), (&b, ub)] {
        for map in ["uid_map", "gid_map"] {
            let m =
                std::fs::read_to_string(format!("/proc/{}/{map}", s.agent_pid().unwrap())).unwrap();
            assert_eq!(
                m.split_whitespace().collect::<Vec<_>>(),
                ["65534", &u.to_string(), "1"],
                "{map}: {m}"
            );
        }
    }

    // While B runs children of its own, every process of each session (pid 1, agent,
    // children) runs as that session's uid, and a host process as A's uid can signal or read
    // nothing of B's nor of the zygote (nor B's uid anything of A's).
    let busy = "import subprocess, time\n\
                ps = [subprocess.Popen(['sleep', '20']) for _ in range(3)]\n\
                time.sleep(6)\nlen(ps)";
    let (ida, idb) = (a.id().to_string(), b.id().to_string());
    let (agent_a, agent_b) = (a.agent_pid().unwrap(), b.agent_pid().unwrap());
    let sleeper = || {
        common::cgroup_pids(&idb).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    };
    let check = async {
        for _ in 0..500 {
            if common::cgroup_pids(&idb).len() >= 5 && sleeper().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (id, u) in [(&ida, ua), (&idb, ub)] {
            let pids = common::cgroup_pids(id);
            assert!(pids.len() >= 2, "{id}: {pids:?}");
            let own = format!("{u} {u} {u} {u}");
            for p in pids {
                if let Some((uids, gids, groups)) = common::host_ids(p) {
                    assert_eq!(
                        (&*uids, &*gids, &*groups),
                        (&*own, &*own, ""),
                        "{p} of {id}"
                    );
                }
            }
        }
        let child = sleeper().expect("B's children are up");
        for p in common::cgroup_pids(&idb).into_iter().chain([zygote]) {
            assert_eq!(common::reach_as(ua, p), "nothing", "A's uid reaches {p}");
        }
        assert_eq!(common::reach_as(ub, agent_a), "nothing");
        // Its own uid does reach a process of its own that is dumpable (a cell's child):
        // the check above is about the uid, not a broken probe.
        assert!(common::reach_as(ub, child).contains("signal"));
    };
    let (r, ()) = tokio::join!(b.exec(busy, T, DEFAULT_MAX_OUTPUT), check);
    assert_eq!(r.expect("exec").result.as_deref(), Some("3"));
    assert!(!common::gone(agent_b));

    // A's uid is not handed out again while A lives, nor at once after it ended.
    finish(a).await;
    let mut c = Sandbox::start(&cfg).await.expect("c starts");
    assert_eq!(c.zygote_uid(), Some(zuid));
    let uc = c.host_uid().unwrap();
    assert!(uc != ua && uc != ub && uc != zuid, "{uc}: a {ua}, b {ub}");
    assert_eq!(result(&run(&mut c, "6*7").await), "42");
    finish(b).await;
    finish(c).await;
}

/// The memory a forked session with pandas imported costs itself (its cgroup's charge) is a
/// fraction of what a bwrap-started interpreter costs (about 67 MiB, docs/benchmarks.md).
#[tokio::test]
async fn forked_sessions_share_the_zygotes_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut sessions = vec![];
    for _ in 0..3 {
        let mut s = Sandbox::start(&cfg).await.expect("starts");
        run(
            &mut s,
            "import pandas as pd\npd.DataFrame({'a': [1, 2, 3]}).sum().a",
        )
        .await;
        sessions.push(s);
    }
    // Nothing a session touches is charged to the zygote: its group does not grow with them.
    let zygote = zygote_pid(dir.path());
    let smaps = std::fs::read_to_string(format!("/proc/{zygote}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "zygote: Rss {}, AnonHugePages {}",
        field("Rss:"),
        field("AnonHugePages:")
    );
    let before = cgroup_memory(zygote);
    for _ in 0..5 {
        let mut s = Sandbox::start(&cfg).await.expect("starts");
        run(
            &mut s,
            "import pandas as pd\npd.DataFrame({'a': [1, 2, 3]}).sum().a",
        )
        .await;
        sessions.push(s);
    }
    let after = cgroup_memory(zygote);
    eprintln!(
        "zygote group: {} KiB before 5 more sessions, {} KiB after",
        before >> 10,
        after >> 10
    );
    assert!(
        after < before + (2 << 20),
        "the zygote's group grew by {} KiB for 5 sessions",
        (after - before) >> 10
    );
    for s in &sessions {
        let used = cgroup_memory(s.agent_pid().unwrap());
        eprintln!("forked session with pandas: {} KiB charged", used >> 10);
        assert!(
            used < 40 << 20,
            "a forked session is charged {} MiB",
            used >> 20
        );
    }

    let mut direct = SandboxConfig {
        fork: false,
        ..config(dir.path())
    };
    direct.preload = vec!["numpy".into(), "pandas".into()];
    let mut s = Sandbox::start(&direct).await.expect("bwrap-started");
    assert_eq!(
        ns_depth(s.agent_pid().unwrap()),
        2,
        "fork: false starts bwrap"
    );
    run(&mut s, "import pandas").await;
    let own = cgroup_memory(s.agent_pid().unwrap());
    eprintln!(
        "bwrap-started session with pandas: {} KiB charged",
        own >> 10
    );
    for f in sessions {
        finish(f).await;
    }
    finish(s).await;
}

/// A zygote serves at most as many sessions as its block has uids: the next one comes from a
/// second zygote of the template, with a block of its own, while the first keeps serving its
/// sessions and stops once they are gone.
#[tokio::test]
async fn a_full_zygote_gets_a_second_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.zygote_sessions = 2;
    let mut a = Sandbox::start(&cfg).await.expect("a starts");
    let b = Sandbox::start(&cfg).await.expect("b starts");
    let first = zygote_pid(dir.path());
    let mut c = Sandbox::start(&cfg).await.expect("c starts");
    let (za, zc) = (a.zygote_uid().unwrap(), c.zygote_uid().unwrap());
    assert_eq!(b.zygote_uid(), Some(za));
    assert_ne!(za, zc, "c comes from a second zygote");
    let uids = [
        a.host_uid().unwrap(),
        b.host_uid().unwrap(),
        c.host_uid().unwrap(),
    ];
    assert!(
        uids[0] != uids[1] && uids[1] != uids[2] && uids[0] != uids[2],
        "{uids:?}"
    );
    assert!(!uids.contains(&za) && !uids.contains(&zc), "{uids:?}");
    assert_eq!(result(&run(&mut a, "6*7").await), "42");
    assert_eq!(result(&run(&mut c, "6*7").await), "42");
    // The first zygote stops with its last session.
    finish(a).await;
    finish(b).await;
    assert!(
        common::gone(first),
        "the first zygote outlived its sessions"
    );
    let d = Sandbox::start(&cfg).await.expect("d starts");
    assert_eq!(d.zygote_uid(), Some(zc));
    finish(c).await;
    finish(d).await;
}

/// A dead zygote takes its sessions with it (they live in its pid namespace); the next start
/// makes a new one.
#[tokio::test]
async fn a_dead_zygote_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut a = Sandbox::start(&cfg).await.expect("starts");
    run(&mut a, "1").await;
    let zygote = zygote_pid(dir.path());
    let smaps = std::fs::read_to_string(format!("/proc/{zygote}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "zygote: Rss {}, AnonHugePages {}",
        field("Rss:"),
        field("AnonHugePages:")
    );
    // SAFETY: killing the test's own zygote.
    unsafe { libc::kill(zygote, libc::SIGKILL) };
    let agent = a.agent_pid().unwrap();
    for _ in 0..500 {
        if common::gone(agent) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = a.exec("1", T, DEFAULT_MAX_OUTPUT).await;
    assert!(r.is_err(), "the session died with its zygote: {r:?}");
    let mut b = Sandbox::start(&cfg).await.expect("a new zygote");
    assert_eq!(result(&run(&mut b, "6*7").await), "42");
    finish(b).await;
}

/// Pools that differ only in their identity binding share a zygote; each session gets its own
/// secret, on its own channel: the zygote never holds one.
#[tokio::test]
async fn identity_secrets_go_to_each_session_not_to_the_zygote() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("identity.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let with = |secret: &str| {
        let mut cfg = config(dir.path());
        cfg.identity_socket = Some(sock.clone());
        cfg.identity_header = secret.to_string();
        cfg
    };
    let mut a = Sandbox::start(&with("secret-of-pool-a"))
        .await
        .expect("a starts");
    let mut b = Sandbox::start(&with("secret-of-pool-b"))
        .await
        .expect("b starts");
    let code = "import os\nos.environ['IDENTITY_HEADER'], os.environ['IDENTITY_ENDPOINT']";
    let ra = result(&run(&mut a, code).await);
    let rb = result(&run(&mut b, code).await);
    assert!(
        ra.starts_with("('secret-of-pool-a', 'http://127.0.0.1:42356/"),
        "{ra}"
    );
    assert!(
        rb.starts_with("('secret-of-pool-b', 'http://127.0.0.1:42356/"),
        "{rb}"
    );
    let zygote = zygote_pid(dir.path()); // one zygote for both
    let environ = std::fs::read(format!("/proc/{zygote}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("secret-of-pool"), "{environ}");
    assert!(environ.contains("IDENTITY_ENDPOINT="), "{environ}");
    finish(a).await;
    finish(b).await;
}

/// The cgroup directories under `parent`, in every hierarchy (the parent itself included).
fn groups_under(parent: &str) -> Vec<std::path::PathBuf> {
    let mut found = vec![];
    for root in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup",
    ] {
        let base = std::path::Path::new(root).join(parent);
        if base.is_dir() {
            found.push(base.clone());
            for e in std::fs::read_dir(&base).unwrap().flatten() {
                if e.path().is_dir() {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn a_clean_stop_leaves_no_zygote_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let parent = format!("cloister-test-{}", &uuid_like()[..12]);
    cfg.cgroup_parent = parent.clone();
    let mut s = Sandbox::start(&cfg).await.expect("sandbox starts");
    assert_eq!(result(&run(&mut s, "1 + 1").await), "2");
    finish(s).await;
    // The zygote's own group is all that is left, until the clean stop.
    assert!(
        groups_under(&parent).iter().any(|g| g
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("zygote-")),
        "{:?}",
        groups_under(&parent)
    );
    assert_eq!(cloister_sandbox::zygote::stop_all(&parent), 1);
    assert_eq!(groups_under(&parent), Vec::<std::path::PathBuf>::new());
    // A later start makes a new zygote.
    let mut s = Sandbox::start(&cfg).await.expect("sandbox starts again");
    assert_eq!(result(&run(&mut s, "2 + 2").await), "4");
    finish(s).await;
    cloister_sandbox::zygote::stop_all(&parent);
    assert_eq!(groups_under(&parent), Vec::<std::path::PathBuf>::new());
}

/// utime + stime (and, with `reaped`, cutime + cstime) of /proc/PID/stat, seconds.
fn proc_ticks(pid: &str, reaped: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<f64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t = f[11] + f[12] + if reaped { f[13] + f[14] } else { 0.0 };
    t / hz
}

/// CPU time of every thread of a live process (/proc/PID/task/*/schedstat), seconds.
fn schedstat_s(pid: i32) -> f64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    rd.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn uuid_like() -> String {
    format!(
        "{:016x}{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        std::process::id()
    )
}

/// Fork start times and memory per forked session (not in CI):
/// `cargo test -p cloister-sandbox --test zygote -- --ignored --nocapture measure`
#[tokio::test]
#[ignore]
async fn measure_fork_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    if let Ok(v) = std::env::var("CLOISTER_ZYGOTE_HUGEPAGES") {
        cfg.env.push(("CLOISTER_ZYGOTE_HUGEPAGES".into(), v));
    }
    let t0 = std::time::Instant::now();
    let first = Sandbox::start(&cfg).await.expect("starts");
    let zygote_ms = t0.elapsed().as_millis();
    let (mut times, mut charged, mut sessions) = (vec![], vec![], vec![]);
    let zygote = zygote_pid(dir.path());
    let smaps = std::fs::read_to_string(format!("/proc/{zygote}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "zygote: Rss {}, AnonHugePages {}",
        field("Rss:"),
        field("AnonHugePages:")
    );
    let (sup0, zyg0) = (
        proc_ticks("self", false),
        proc_ticks(&zygote.to_string(), true),
    );
    let mut session_cpu = 0.0;
    for _ in 0..40 {
        let t0 = std::time::Instant::now();
        let mut s = Sandbox::start(&cfg).await.expect("starts");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        // The session's own processes so far (its pid 1 and the agent, once started).
        let agent = s.agent_pid().unwrap();
        session_cpu += schedstat_s(agent) + schedstat_s(parent_pid(agent));
        run(
            &mut s,
            "import pandas as pd\npd.DataFrame({'a': [1]}).sum().a",
        )
        .await;
        charged.push(cgroup_memory(s.agent_pid().unwrap()) >> 10);
        sessions.push(s);
    }
    let n = times.len() as f64;
    let supervisor = (proc_ticks("self", false) - sup0) / n * 1e3;
    let zyg = (proc_ticks(&zygote.to_string(), true) - zyg0) / n * 1e3;
    eprintln!(
        "CPU per forked start, ms (including each session's first exec): supervisor {supervisor:.1}, \
         zygote and the reaped first child {zyg:.1}, session pid 1 + agent {:.1}; total {:.1}",
        session_cpu / n * 1e3,
        supervisor + zyg + session_cpu / n * 1e3
    );
    times.sort_by(f64::total_cmp);
    charged.sort();
    eprintln!(
        "zygote + first session {zygote_ms} ms; fork start ms p50 {:.1} p90 {:.1} max {:.1}; \
         charged KiB p50 {} max {}",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1],
        charged[charged.len() / 2],
        charged[charged.len() - 1]
    );
    finish(first).await;
    for s in sessions {
        finish(s).await;
    }
}
