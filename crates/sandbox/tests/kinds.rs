//! Shell commands and Node.js sandboxes: what they keep between requests, how they stop, and the
//! hostile-code battery of `escape.rs` adapted to each (host invisible, no privileges, no host
//! network, seccomp, pids limit), forked from a zygote and with one bwrap per sandbox.
//! Needs root (CI runs as root), bubblewrap and Node.js (the Node runtime is built on first use
//! by `scripts/sandbox-runtime.sh --node`).

mod common;

use cloister_sandbox::{
    DEFAULT_MAX_OUTPUT, DEFAULT_NODE_RUNTIME_DIR, ExecResult, Sandbox, SandboxConfig, SandboxError,
};
use common::finish;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn node_runtime() -> &'static Path {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sandbox-runtime.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .args(["--node", DEFAULT_NODE_RUNTIME_DIR])
            .status()
            .expect("run scripts/sandbox-runtime.sh --node");
        assert!(status.success(), "scripts/sandbox-runtime.sh --node failed");
    });
    Path::new(DEFAULT_NODE_RUNTIME_DIR)
}

fn limited(mut cfg: SandboxConfig, fork: bool) -> SandboxConfig {
    cfg.limits.memory_bytes = 256 << 20;
    cfg.tmp_bytes = 16 << 20;
    cfg.data_bytes = 16 << 20;
    cfg.limits.pids = 32;
    cfg.fork = fork;
    cfg
}

async fn shell_box(fork: bool) -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = limited(common::config(dir.path()), fork);
    (Sandbox::start(&cfg).await.expect("sandbox starts"), dir)
}

async fn node_box(fork: bool) -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = limited(
        SandboxConfig::new(dir.path().to_path_buf()).with_node_runtime(node_runtime()),
        fork,
    );
    let s = Sandbox::start(&cfg).await.expect("node sandbox starts");
    assert_eq!(s.flavour(), "node");
    (s, dir)
}

async fn sh(s: &mut Sandbox, cmd: &str) -> ExecResult {
    s.shell(cmd, T, DEFAULT_MAX_OUTPUT).await.expect("shell")
}

async fn js(s: &mut Sandbox, code: &str) -> ExecResult {
    s.exec(code, T, DEFAULT_MAX_OUTPUT).await.expect("exec")
}

#[tokio::test]
async fn shell_state_exit_codes_and_process_groups() {
    for fork in [true, false] {
        let (mut s, _d) = shell_box(fork).await;
        let r = sh(&mut s, "echo hi; pwd").await;
        assert_eq!(
            (r.stdout.as_str(), r.exit_code),
            ("hi\n/mnt/data\n", Some(0))
        );
        let r = sh(&mut s, "mkdir d && cd d && export A=1 B='two words'; C=3").await;
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        let r = sh(&mut s, "pwd; echo \"$A|$B|$C\"").await;
        assert_eq!(r.stdout, "/mnt/data/d\n1|two words|\n");
        // Any value survives the round trip (newlines, quotes, $, backslashes, UTF-8), and an
        // unset variable stays unset.
        let odd = r#"Q=$'line1\nline2 "dq" \'sq\' $HOME \\ \xc3\xa9'"#;
        sh(&mut s, &format!("export {odd}; unset HOME")).await;
        let r = sh(
            &mut s,
            &format!(
                "{}; [ \"$Q\" = \"$W\" ] && echo same; echo \"[${{HOME-unset}}]\"",
                odd.replacen('Q', "W", 1)
            ),
        )
        .await;
        assert_eq!(r.stdout, "same\n[unset]\n", "{r:?}");
        let r = sh(&mut s, "exit 9").await;
        assert_eq!((r.exit_code, r.status.as_str()), (Some(9), "Failed"));
        // Python code still runs in the same sandbox (a Shell session is a Python sandbox).
        assert_eq!(
            s.exec("6 * 7", T, 100).await.unwrap().result.as_deref(),
            Some("42")
        );
        // A timeout: the agent kills the process group and keeps the output.
        let t0 = Instant::now();
        let r = s
            .shell(
                "echo before; sleep 100 & sleep 100",
                Duration::from_secs(1),
                1000,
            )
            .await
            .expect("a timed-out command still answers");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(r.timed_out, "{r:?}");
        assert_eq!(
            (r.exit_code, r.error_name.as_deref(), r.stdout.as_str()),
            (Some(-1), Some("ExecutionTimeout"), "before\n")
        );
        assert!(s.is_alive());
        assert!(
            s.process_count() <= 3,
            "{} processes left",
            s.process_count()
        );
        // Nothing started in the background outlives its command.
        sh(
            &mut s,
            "sleep 100 & setsid sleep 100 & nohup sleep 100 >/dev/null 2>&1 &",
        )
        .await;
        assert!(
            s.process_count() <= 3,
            "{} processes left",
            s.process_count()
        );
        // Output is capped per stream.
        let r = s.shell("yes | head -c 50000", T, 123).await.unwrap();
        assert_eq!(r.stdout.len(), 123);
        finish(s).await;
    }
}

#[tokio::test]
async fn a_command_that_cannot_start_says_so() {
    // A fresh sandbox (no zombies of earlier commands that the agent reaps before the next).
    let (mut s, _d) = shell_box(true).await;
    // No process left to start bash with (threads count against the pids limit, and
    // outlive their cell): CommandStartError, exit code -1; the sandbox goes on.
    let r = s
        .exec(
            "import threading, time\nfor _ in range(64):\n    try:\n        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()\n    except RuntimeError:\n        break",
            T,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(r.status, "Succeeded", "{r:?}");
    let r = sh(&mut s, "echo never").await;
    assert_eq!(
        (r.exit_code, r.error_name.as_deref(), r.stdout.as_str()),
        (Some(-1), Some("CommandStartError"), ""),
        "{r:?}"
    );
    assert!(r.error_message.unwrap().contains("could not be started"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sh(&mut s, "echo again").await.stdout, "again\n");
    finish(s).await;
}

#[tokio::test]
async fn shell_cannot_see_or_touch_the_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut s, _d) = shell_box(true).await;
    let r = sh(
        &mut s,
        &format!(
            "id -u; for p in /root /home /work /var/log /etc/shadow /etc/passwd; do test -e $p && echo visible $p; done; \
             touch /usr/evil 2>/dev/null && echo usr-writable; grep CapEff /proc/self/status; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
             unshare -U true 2>/dev/null && echo unshared; \
             (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo connected; \
             ls /proc | grep -cE '^[0-9]+$'"
        ),
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "65534", "{r:?}");
    assert_eq!(lines[1], "CapEff:\t0000000000000000", "{r:?}");
    assert_eq!(lines[2], "lo", "{r:?}");
    let procs: usize = lines[3].parse().expect("only the process count is left");
    assert!(procs <= 6, "{r:?}");
    assert_eq!(lines.len(), 4, "{r:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the host saw a connection");
    // A fork bomb: contained by the pids limit, the sandbox answers afterwards.
    let _ = s
        .shell("b() { b | b & }; b; sleep 2", Duration::from_secs(4), 1000)
        .await;
    if s.is_alive() {
        assert!(s.process_count() <= 32, "{} processes", s.process_count());
        assert_eq!(sh(&mut s, "echo alive").await.stdout, "alive\n");
    }
    finish(s).await;
}

#[tokio::test]
async fn node_is_a_repl_and_stops_at_its_timeout() {
    for fork in [true, false] {
        let (mut s, _d) = node_box(fork).await;
        let r = js(&mut s, "let x = 20; console.log('hello'); x + 1").await;
        assert_eq!(
            (r.status.as_str(), r.stdout.as_str(), r.result.as_deref()),
            ("Succeeded", "hello\n", Some("21")),
            "{r:?}"
        );
        let r = js(&mut s, "let x = 2; x * 2").await;
        assert_eq!(r.result.as_deref(), Some("4"), "let redeclared: {r:?}");
        let r = js(&mut s, "const v = await Promise.resolve(5); v").await;
        assert_eq!(r.result.as_deref(), Some("5"), "{r:?}");
        assert_eq!(js(&mut s, "v + x").await.result.as_deref(), Some("7"));
        let r = js(&mut s, "null.x").await;
        assert_eq!(
            (r.status.as_str(), r.error_name.as_deref()),
            ("Failed", Some("TypeError"))
        );
        assert!(r.stderr.contains("TypeError"), "{r:?}");
        // A synchronous loop: stopped by V8 at the timeout; the state is kept.
        let t0 = Instant::now();
        let r = s
            .exec("for (;;) {}", Duration::from_secs(1), 100)
            .await
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(r.timed_out && r.error_name.as_deref() == Some("ExecutionTimeout"));
        assert_eq!(js(&mut s, "x").await.result.as_deref(), Some("2"));
        // Files written by JavaScript are files of the sandbox.
        js(&mut s, "require('fs').writeFileSync('n.txt', 'node')").await;
        assert_eq!(s.read_file("n.txt").await.unwrap(), b"node");
        s.write_file("in/up.txt", b"up").await.unwrap();
        let r = js(
            &mut s,
            "require('fs').readFileSync('/mnt/data/in/up.txt', 'utf8')",
        )
        .await;
        assert_eq!(r.result.as_deref(), Some("'up'"));
        let names: Vec<String> = s
            .list_files("", true)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            names,
            ["/mnt/data/in", "/mnt/data/n.txt", "/mnt/data/in/up.txt"]
        );
        assert!(matches!(
            s.read_file("../etc/passwd").await,
            Err(SandboxError::File { .. })
        ));
        // A blocked event loop: the supervisor interrupts, the sandbox goes.
        let e = s
            .exec("await null; for (;;) {}", Duration::from_secs(1), 100)
            .await;
        assert!(matches!(e, Err(SandboxError::Timeout(_))), "{e:?}");
        assert!(!s.is_alive());
        finish(s).await;
    }
}

#[tokio::test]
async fn node_cannot_see_or_touch_the_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut s, _d) = node_box(true).await;
    let code = format!(
        r#"const fs = require('fs'), os = require('os'), net = require('net');
const out = {{}};
out.uid = process.getuid();
out.host = ['/root', '/home', '/work', '/var/log', '/etc/shadow', '/etc/passwd'].filter(p => fs.existsSync(p));
try {{ fs.writeFileSync('/usr/evil', 'x'); out.usr = 'writable' }} catch (e) {{ out.usr = e.code }}
out.caps = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find(l => l.startsWith('CapEff')).split(/\s+/)[1];
out.ifaces = Object.keys(os.networkInterfaces());
out.pids = fs.readdirSync('/proc').filter(p => /^\d+$/.test(p)).length;
out.tcp = await new Promise(res => {{
  const c = net.connect({port}, '127.0.0.1', () => res('connected'));
  c.on('error', e => res(e.code));
}});
try {{ process.setuid(0); out.setuid = 'yes' }} catch (e) {{ out.setuid = e.code }}
JSON.stringify(out)"#
    );
    let r = js(&mut s, &code).await;
    assert_eq!(r.status, "Succeeded", "{r:?}");
    let text = r.result.unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim_matches('\'')).unwrap();
    assert_eq!(v["uid"], 65534);
    assert_eq!(v["host"], serde_json::json!([]));
    assert_eq!(v["usr"], "EROFS");
    assert_eq!(v["caps"], "0000000000000000");
    assert_eq!(v["ifaces"], serde_json::json!(["lo"]));
    assert!(v["pids"].as_u64().unwrap() <= 3, "{v}");
    assert_eq!(v["tcp"], "ECONNREFUSED");
    // uid 0 is not even mapped in the sandbox's user namespace.
    assert!(
        matches!(v["setuid"].as_str(), Some("EPERM" | "EINVAL")),
        "{v}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the host saw a connection");
    // Child processes: contained by the pids limit, killed after the cell.
    let r = s
        .exec(
            "const cp = require('child_process'); let n = 0; for (let i = 0; i < 200; i++) { try { cp.spawn('sleep', ['60']).on('error', () => {}); n++ } catch (e) { break } } n",
            T,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(r.status, "Succeeded", "{r:?}");
    assert!(s.process_count() <= 32, "{} processes", s.process_count());
    assert_eq!(
        js(&mut s, "'alive'").await.result.as_deref(),
        Some("'alive'")
    );
    assert!(
        s.process_count() <= 3,
        "children outlived the cell: {}",
        s.process_count()
    );
    // A memory bomb: the memory cgroup (or V8's own heap limit) ends the sandbox; nothing is
    // left of it.
    let id = s.id().to_string();
    let e = s
        .exec(
            "const hog = []; for (;;) hog.push(Buffer.alloc(1 << 20, 1))",
            T,
            1000,
        )
        .await;
    assert!(matches!(e, Err(SandboxError::Died { .. })), "{e:?}");
    assert!(!s.is_alive());
    finish(s).await;
    assert!(common::no_cgroup(&id));
}

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
                found.push(format!("{pid} {what}"));
            }
        }
    }
    found
}

/// The identity binding's secret reaches Node's `process.env` and the forwarder works, but the
/// secret is in no process's initial environment or command line.
#[tokio::test]
async fn node_gets_the_identity_secret_on_no_environ_and_forwards_the_socket() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    for fork in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("identity.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten().take(1) {
                let mut c = c;
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nfrom-host");
            }
        });
        let secret = format!("sekrit-{}", uuid::Uuid::new_v4().simple());
        let mut cfg = limited(
            SandboxConfig::new(dir.path().to_path_buf()).with_node_runtime(node_runtime()),
            fork,
        );
        cfg.identity_socket = Some(sock);
        cfg.identity_header = secret.clone();
        let mut s = Sandbox::start(&cfg).await.expect("node sandbox starts");
        let r = js(
            &mut s,
            "const t = await (await fetch(process.env.IDENTITY_ENDPOINT)).text(); [process.env.IDENTITY_HEADER, t]",
        )
        .await;
        assert_eq!(
            r.result,
            Some(format!("[ '{secret}', 'from-host' ]")),
            "fork {fork}: {r:?}"
        );
        let shown = processes_showing(&secret);
        assert!(
            shown.is_empty(),
            "fork {fork}: the secret is visible: {shown:?}"
        );
        finish(s).await;
    }
}
