//! The agent's behaviour: IPython results, output capture, interrupts, plots, files, network
//! and the identity hook. Needs root and bubblewrap (and slirp4netns for the network test);
//! runs on the IPython runtime (see `common/mod.rs`). No test sends traffic anywhere but to
//! loopback: the network test only inspects the sandbox's interfaces and routes.

mod common;

use base64::Engine as _;
use cloister_sandbox::{
    DEFAULT_MAX_OUTPUT, ExecResult, FileErrorKind, Network, Sandbox, SandboxConfig, SandboxError,
};
use common::finish;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

async fn start_with(f: impl FnOnce(&mut SandboxConfig)) -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    f(&mut cfg);
    (Sandbox::start(&cfg).await.expect("sandbox starts"), dir)
}

async fn start() -> (Sandbox, tempfile::TempDir) {
    start_with(|_| {}).await
}

async fn run(s: &mut Sandbox, code: &str) -> ExecResult {
    s.exec(code, T, DEFAULT_MAX_OUTPUT).await.expect("exec")
}

fn file_err(e: SandboxError) -> FileErrorKind {
    match e {
        SandboxError::File { kind, .. } => kind,
        other => panic!("not a file error: {other:?}"),
    }
}

#[tokio::test]
async fn results_are_ipython_text_plain() {
    let (mut s, _d) = start().await;
    assert_eq!(s.flavour(), "ipython");
    let r = run(&mut s, "6*7").await;
    assert_eq!(
        (r.status.as_str(), r.result.as_deref(), r.stdout.as_str()),
        ("Succeeded", Some("42"), "")
    );
    assert_eq!(run(&mut s, "'nan'").await.result.as_deref(), Some("'nan'"));
    assert_eq!(
        run(&mut s, "float('nan')").await.result.as_deref(),
        Some("nan")
    );
    assert_eq!(run(&mut s, "None").await.result, None);
    assert_eq!(run(&mut s, "y = 3").await.result, None);
    assert_eq!(
        run(&mut s, "1;").await.result,
        None,
        "a trailing ; hides it"
    );
    let r = run(&mut s, "[d for d in range(100)]").await;
    let text = r.result.unwrap();
    assert!(text.starts_with("[0,\n 1,\n 2,\n"), "{text}");
    assert_eq!(text.lines().count(), 100);
    finish(s).await;
}

#[tokio::test]
async fn state_persists_and_output_is_captured() {
    let (mut s, _d) = start().await;
    run(&mut s, "import numpy as np\nx = np.arange(10)").await;
    assert_eq!(
        run(&mut s, "int(x.sum())").await.result.as_deref(),
        Some("45")
    );
    let r = run(
        &mut s,
        "import os, subprocess, sys\nprint('hello')\nprint('warn', file=sys.stderr)\n\
         os.write(1, b'raw\\n')\nsubprocess.run(['echo', 'from a child'])\nos.getcwd()",
    )
    .await;
    assert_eq!(r.stdout, "hello\nraw\nfrom a child\n");
    assert_eq!(r.stderr, "warn\n");
    assert_eq!(r.result.as_deref(), Some("'/mnt/data'"));
    let r = run(&mut s, "!echo bang; echo err >&2").await;
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("bang\n", "err\n"));
    assert_eq!(
        run(&mut s, "exit()\n'still here'").await.result.as_deref(),
        Some("'still here'")
    );
    finish(s).await;
}

#[tokio::test]
async fn exceptions_fail_with_a_plain_traceback() {
    let (mut s, _d) = start().await;
    let r = run(&mut s, "def f():\n    return 1/0\nf()").await;
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("ZeroDivisionError"), "{}", r.stderr);
    assert!(r.stderr.contains("----> 3 f()"), "{}", r.stderr);
    assert!(!r.stderr.contains("\x1b["), "ANSI escapes: {:?}", r.stderr);
    assert_eq!(r.result, None);
    let r = run(&mut s, "def (:").await;
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("SyntaxError"), "{}", r.stderr);
    assert!(!r.stderr.contains("\x1b["));
    // The session goes on.
    assert_eq!(run(&mut s, "2+2").await.result.as_deref(), Some("4"));
    finish(s).await;
}

#[tokio::test]
async fn input_fails_at_once() {
    let (mut s, _d) = start().await;
    let t0 = Instant::now();
    let r = s
        .exec("name = input('who? ')", Duration::from_secs(10), 4096)
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("EOFError"), "{}", r.stderr);
    assert!(r.stderr.contains("not supported"), "{}", r.stderr);
    assert!(!r.stderr.contains("agent.py"), "{}", r.stderr);
    // sys.stdin is empty, not a hang either.
    assert_eq!(
        run(&mut s, "import sys\nsys.stdin.read()")
            .await
            .result
            .as_deref(),
        Some("''")
    );
    finish(s).await;
}

#[tokio::test]
async fn matplotlib_figures_become_pngs() {
    let (mut s, _d) = start().await;
    let png = |b64: &str| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        bytes.len()
    };
    let r = run(
        &mut s,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.title('t')\nplt.show()",
    )
    .await;
    assert_eq!(r.status, "Succeeded", "{r:?}");
    assert_eq!(r.stderr, "", "plt.show() must not warn");
    assert_eq!(r.images.len(), 1);
    assert!(png(&r.images[0]) > 1000);
    // A figure left open is captured at the end of the cell, and closed.
    let r = run(&mut s, "fig, ax = plt.subplots()\nax.bar([1, 2], [3, 4]);").await;
    assert_eq!((r.images.len(), r.result.as_deref()), (1, None), "{r:?}");
    png(&r.images[0]);
    let r = run(&mut s, "len(plt.get_fignums())").await;
    assert_eq!((r.images.len(), r.result.as_deref()), (0, Some("0")));
    // Two shows in one cell: two images.
    let r = run(
        &mut s,
        "for i in range(2):\n    plt.plot([i])\n    plt.show()",
    )
    .await;
    assert_eq!(r.images.len(), 2);
    finish(s).await;
}

#[tokio::test]
async fn a_timeout_interrupts_and_the_session_survives() {
    let (mut s, _d) = start().await;
    run(&mut s, "x = 41").await;
    let t0 = Instant::now();
    let e = s
        .exec("while True: pass", Duration::from_secs(1), 4096)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Timeout(_)), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(s.is_alive());
    assert_eq!(run(&mut s, "1+1").await.result.as_deref(), Some("2"));
    assert_eq!(run(&mut s, "x + 1").await.result.as_deref(), Some("42"));
    // A sleeping cell is interrupted too.
    let e = s
        .exec(
            "import time\ntime.sleep(100)",
            Duration::from_millis(500),
            4096,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Timeout(_)), "{e:?}");
    assert_eq!(run(&mut s, "x").await.result.as_deref(), Some("41"));
    finish(s).await;
}

#[tokio::test]
async fn background_processes_do_not_outlive_the_call() {
    let (mut s, _d) = start().await;
    let before = s.process_count();
    let r = run(
        &mut s,
        "import subprocess\np = subprocess.Popen(['sleep', '1000'])\n\
         q = subprocess.Popen(['sh', '-c', 'sleep 1000 & sleep 1000'])\np.pid",
    )
    .await;
    assert_eq!(r.status, "Succeeded", "{r:?}");
    assert_eq!(s.process_count(), before, "stray processes survived");
    // Seen from inside: no live sleep, and no zombie either.
    let r = run(
        &mut s,
        "import os\n[open(f'/proc/{p}/stat').read().split()[1:3] for p in os.listdir('/proc') \
         if p.isdigit() and p not in ('1', str(os.getpid()))]",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("[]"), "{r:?}");
    assert_eq!(
        run(&mut s, "p.poll() is not None").await.result.as_deref(),
        Some("True")
    );
    finish(s).await;
}

#[tokio::test]
async fn output_is_capped() {
    let (mut s, _d) = start().await;
    let r = s
        .exec(
            "import os, sys\nfor i in range(100000):\n    print('x' * 100)\n\
             os.system('head -c 5000000 /dev/zero | tr \"\\\\0\" y >&2')\n'done'",
            T,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(r.status, "Succeeded");
    assert_eq!(r.stdout.chars().count(), 1000);
    assert_eq!(r.stderr, "y".repeat(1000));
    assert_eq!(r.result.as_deref(), Some("'done'"));
    let r = s.exec("print('é' * 50)", T, 10).await.unwrap();
    assert_eq!(r.stdout, "é".repeat(10));
    finish(s).await;
}

#[tokio::test]
async fn files_round_trip() {
    let (mut s, _d) = start().await;
    let e = s.write_file("a.txt", b"hello").await.unwrap();
    assert_eq!(
        (e.name.as_str(), e.path.as_str(), e.is_dir, e.size),
        ("a.txt", "/mnt/data/a.txt", false, 5)
    );
    assert!(e.modified > 1.6e9);
    let bin: Vec<u8> = (0..=255u8).cycle().take(10 << 20).collect();
    s.write_file("/mnt/data/sub/dir/b.bin", &bin).await.unwrap();
    s.write_file("empty", b"").await.unwrap();
    assert_eq!(s.read_file("sub/dir/b.bin").await.unwrap(), bin);
    assert_eq!(s.read_file("/mnt/data/a.txt").await.unwrap(), b"hello");
    assert_eq!(s.read_file("empty").await.unwrap(), b"");
    // Code sees the files and its own files are listed.
    let r = run(
        &mut s,
        "open('a.txt').read() + str(len(open('sub/dir/b.bin', 'rb').read()))",
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("'hello10485760'"));
    run(&mut s, "open('made.csv', 'w').write('1,2\\n')").await;
    let names = |v: Vec<cloister_sandbox::FileEntry>| {
        v.into_iter()
            .map(|e| format!("{}{}", e.path, if e.is_dir { "/" } else { "" }))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list_files("", false).await.unwrap()),
        [
            "/mnt/data/a.txt",
            "/mnt/data/empty",
            "/mnt/data/made.csv",
            "/mnt/data/sub/"
        ]
    );
    assert_eq!(
        names(s.list_files("/mnt/data", true).await.unwrap()),
        [
            "/mnt/data/sub/",
            "/mnt/data/a.txt",
            "/mnt/data/empty",
            "/mnt/data/made.csv",
            "/mnt/data/sub/dir/",
            "/mnt/data/sub/dir/b.bin"
        ]
    );
    assert_eq!(
        names(s.list_files("sub", false).await.unwrap()),
        ["/mnt/data/sub/dir/"]
    );
    let st = s.stat_file("sub/dir/b.bin").await.unwrap();
    assert_eq!((st.size, st.is_dir), (10 << 20, false));
    assert!(s.stat_file("sub").await.unwrap().is_dir);
    // Overwrite, then delete.
    s.write_file("a.txt", b"bye").await.unwrap();
    assert_eq!(s.read_file("a.txt").await.unwrap(), b"bye");
    s.delete_file("a.txt").await.unwrap();
    assert_eq!(
        file_err(s.read_file("a.txt").await.unwrap_err()),
        FileErrorKind::NotFound
    );
    assert_eq!(
        file_err(s.stat_file("a.txt").await.unwrap_err()),
        FileErrorKind::NotFound
    );
    assert_eq!(
        file_err(s.delete_file("a.txt").await.unwrap_err()),
        FileErrorKind::NotFound
    );
    assert_eq!(
        file_err(s.list_files("nope", false).await.unwrap_err()),
        FileErrorKind::NotFound
    );
    assert_eq!(
        file_err(s.read_file("sub").await.unwrap_err()),
        FileErrorKind::Invalid
    );
    s.delete_file("sub").await.unwrap();
    assert_eq!(
        names(s.list_files("", true).await.unwrap()),
        ["/mnt/data/empty", "/mnt/data/made.csv"]
    );
    finish(s).await;
}

#[tokio::test]
async fn files_outside_mnt_data_are_refused() {
    let (mut s, _d) = start().await;
    for name in [
        "../../etc/passwd",
        "/etc/hosts",
        "/mnt/data/../../etc/hosts",
        "/mnt/dataX/a",
        "a\0b",
    ] {
        assert_eq!(
            file_err(s.read_file(name).await.unwrap_err()),
            FileErrorKind::Invalid,
            "{name}"
        );
        assert_eq!(
            file_err(s.write_file(name, b"x").await.unwrap_err()),
            FileErrorKind::Invalid,
            "{name}"
        );
    }
    for name in ["", "/mnt/data", "."] {
        assert_eq!(
            file_err(s.delete_file(name).await.unwrap_err()),
            FileErrorKind::Invalid
        );
        assert_eq!(
            file_err(s.read_file(name).await.unwrap_err()),
            FileErrorKind::Invalid
        );
    }
    run(
        &mut s,
        "import os\nos.symlink('/etc', 'etc')\nos.symlink('/etc/hosts', 'hosts')",
    )
    .await;
    let e = s.read_file("etc/hosts").await.unwrap_err();
    assert!(e.to_string().contains("outside /mnt/data"), "{e}");
    assert_eq!(file_err(e), FileErrorKind::Invalid);
    assert_eq!(
        file_err(s.read_file("hosts").await.unwrap_err()),
        FileErrorKind::Invalid
    );
    assert_eq!(
        file_err(s.write_file("etc/x", b"x").await.unwrap_err()),
        FileErrorKind::Invalid
    );
    assert_eq!(
        file_err(s.write_file("hosts", b"x").await.unwrap_err()),
        FileErrorKind::Invalid
    );
    assert_eq!(
        file_err(s.list_files("etc", false).await.unwrap_err()),
        FileErrorKind::Invalid
    );
    // The links themselves are listed, and deleting one removes the link only.
    let listed = s.list_files("", true).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|e| !e.is_dir));
    s.delete_file("etc").await.unwrap();
    assert_eq!(
        run(&mut s, "import os\nos.path.exists('/etc/hosts')")
            .await
            .result
            .as_deref(),
        Some("True")
    );
    finish(s).await;
}

#[tokio::test]
async fn large_files_fit_and_too_large_ones_are_refused() {
    let (mut s, _d) = start().await;
    let big = vec![7u8; 130 << 20];
    let t0 = Instant::now();
    s.write_file("big.bin", &big)
        .await
        .expect("a 130 MB upload fits");
    let up = t0.elapsed();
    let t0 = Instant::now();
    assert_eq!(s.read_file("big.bin").await.unwrap().len(), big.len());
    eprintln!("130 MiB: write {up:?}, read {:?}", t0.elapsed());
    // Larger than the whole volume: refused before anything is sent.
    let e = s
        .write_file("huge.bin", &vec![0u8; 300 << 20])
        .await
        .unwrap_err();
    assert_eq!(file_err(e), FileErrorKind::TooLarge);
    // Larger than what is left: refused by the agent, nothing left behind.
    let e = s
        .write_file("more.bin", &vec![0u8; 150 << 20])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("free"), "{e}");
    assert_eq!(file_err(e), FileErrorKind::TooLarge);
    let listed = s.list_files("", false).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    // Code that fills the disk gets ENOSPC, not an OOM kill (memory > data + tmp).
    let r = run(
        &mut s,
        "f = open('fill', 'wb')\nfor _ in range(200):\n    f.write(b'0' * (1 << 20))\n    f.flush()",
    )
    .await;
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("No space left"), "{}", r.stderr);
    assert!(s.is_alive());
    finish(s).await;
}

#[tokio::test]
async fn plain_python_works_without_ipython() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SandboxConfig::new(dir.path().to_path_buf());
    let mut s = Sandbox::start(&cfg).await.unwrap();
    assert_eq!(s.flavour(), "plain");
    let r = run(&mut s, "x = 6\nprint('hi')\nx * 7").await;
    assert_eq!(
        (r.stdout.as_str(), r.result.as_deref()),
        ("hi\n", Some("42"))
    );
    assert_eq!(run(&mut s, "'nan'").await.result.as_deref(), Some("'nan'"));
    let r = run(&mut s, "1/0").await;
    assert_eq!(r.status, "Failed");
    assert!(r.stderr.contains("ZeroDivisionError"));
    assert!(!r.stderr.contains("agent.py"), "{}", r.stderr);
    let r = run(&mut s, "input()").await;
    assert!(r.stderr.contains("EOFError"));
    let e = s
        .exec("while True: pass", Duration::from_secs(1), 100)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Timeout(_)));
    assert_eq!(run(&mut s, "x").await.result.as_deref(), Some("6"));
    s.write_file("f", b"1").await.unwrap();
    assert_eq!(
        run(&mut s, "open('f').read()").await.result.as_deref(),
        Some("'1'")
    );
    finish(s).await;
}

#[tokio::test]
async fn network_enabled_gets_a_routed_tap_disabled_only_loopback() {
    const PROBE: &str = r#"
import fcntl, socket, struct
ifaces = sorted(n for _, n in socket.if_nameindex())
routes = [l.split()[:3] for l in open('/proc/net/route').readlines()[1:]]
addr = None
if 'tap0' in ifaces:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'tap0'))[20:24])
(ifaces, routes, addr, open('/etc/resolv.conf').read().split() if 'tap0' in ifaces else None)
"#;
    let (mut s, _d) = start_with(|c| c.network = Network::Enabled).await;
    assert!(s.network_helper_pid().is_some());
    let r = run(&mut s, PROBE).await;
    assert_eq!(
        r.result.as_deref(),
        Some(
            "(['lo', 'tap0'],\n [['tap0', '00000000', '0202000A'], ['tap0', '0002000A', '00000000']],\n \
             '10.0.2.100',\n ['nameserver', '10.0.2.3'])"
        ),
        "{r:?}"
    );
    finish(s).await;
    let (mut s, _d) = start().await;
    assert!(s.network_helper_pid().is_none());
    let r = run(&mut s, PROBE).await;
    assert_eq!(
        r.result.as_deref(),
        Some("(['lo'], [], None, None)"),
        "{r:?}"
    );
    finish(s).await;
}

#[tokio::test]
async fn identity_requests_reach_the_host_socket() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("identity.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    {
        // bwrap and the agent run as uid 65534: they must reach and connect to the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    // A tiny HTTP responder: echoes the request line and the X-IDENTITY-HEADER it got.
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        let mut secret = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("x-identity-header")
            {
                secret = v.trim().to_string();
            }
        }
        let body =
            serde_json::json!({"access_token": "tok", "request": first.trim(), "header": secret})
                .to_string();
        let mut w = conn;
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let (mut s, _d) = start_with(|c| {
        c.identity_socket = Some(sock.clone());
        c.identity_header = "s3cret".into();
        c.env = vec![("FOO".into(), "bar".into())];
    })
    .await;
    let r = run(
        &mut s,
        r#"
import json, os, urllib.request
url = os.environ['IDENTITY_ENDPOINT'] + '?api-version=2019-08-01&resource=https://vault.azure.net'
req = urllib.request.Request(url, headers={'X-IDENTITY-HEADER': os.environ['IDENTITY_HEADER']})
body = json.loads(urllib.request.urlopen(req, timeout=10).read())
(os.environ['FOO'], os.environ['IDENTITY_ENDPOINT'], body['access_token'], body['header'], body['request'].split()[1])
"#,
    )
    .await;
    assert_eq!(
        r.result.as_deref(),
        Some(
            "('bar',\n 'http://127.0.0.1:42356/msi/token',\n 'tok',\n 's3cret',\n \
             '/msi/token?api-version=2019-08-01&resource=https://vault.azure.net')"
        ),
        "{r:?}"
    );
    server.join().unwrap();
    finish(s).await;
}

#[tokio::test]
async fn an_agent_that_exits_is_reported_dead() {
    let (mut s, _d) = start().await;
    let e = s.exec("import os\nos._exit(3)", T, 100).await.unwrap_err();
    assert!(matches!(e, SandboxError::Died { oom: false }), "{e:?}");
    assert!(!s.is_alive());
    assert!(!s.cgroup_exists());
    assert!(matches!(
        s.read_file("x").await.unwrap_err(),
        SandboxError::Died { .. }
    ));
    finish(s).await;
}

/// `cargo test -p cloister-sandbox --test agent -- --ignored --nocapture measure`
#[tokio::test]
#[ignore]
async fn measure_start_and_rss() {
    for preload in [vec![], vec!["numpy"], vec!["numpy", "pandas"]] {
        let mut times = vec![];
        let mut rss = vec![];
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = common::config(dir.path());
            cfg.preload = preload.iter().map(|s| s.to_string()).collect();
            let t0 = Instant::now();
            let mut s = Sandbox::start(&cfg).await.unwrap();
            times.push(t0.elapsed().as_millis());
            run(&mut s, "1+1").await;
            let pid = s.agent_pid().unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            rss.push(
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .unwrap()
                    .trim()
                    .to_string(),
            );
            finish(s).await;
        }
        eprintln!("preload {preload:?}: start ms {times:?}, agent RSS {rss:?}");
    }
    let mut times = vec![];
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = common::config(dir.path());
        cfg.network = Network::Enabled;
        let t0 = Instant::now();
        let s = Sandbox::start(&cfg).await.unwrap();
        times.push(t0.elapsed().as_millis());
        finish(s).await;
    }
    eprintln!("network enabled (numpy preloaded): start ms {times:?}");
    let (mut s, _d) = start().await;
    let mut lat = vec![];
    for _ in 0..300 {
        let t0 = Instant::now();
        run(&mut s, "1+1").await;
        lat.push(t0.elapsed().as_micros());
    }
    lat.sort();
    eprintln!(
        "exec 1+1 round trip: p50 {} us, p99 {} us",
        lat[150], lat[297]
    );
    let data = vec![1u8; 64 << 20];
    let t0 = Instant::now();
    s.write_file("x", &data).await.unwrap();
    let w = t0.elapsed();
    let t0 = Instant::now();
    s.read_file("x").await.unwrap();
    eprintln!("64 MiB file: write {w:?}, read {:?}", t0.elapsed());
    finish(s).await;
}
