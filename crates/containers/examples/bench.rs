//! Start → first HTTP 200 and idle memory (PSS) per container, for bench/containers.sh.
//!
//! `bench ROOTFS runc|runsc N` starts N containers one after another from ROOTFS (the test
//! image's read-only rootfs), polling `GET /` every 2 ms from the runtime start, and stops
//! each; then starts 5 at once and reports the PSS of their processes (the runtime's
//! foreground supervisor process separately). Prints one JSON object.

use cloister_containers::{Config, Containers, Launch, Runtime};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let p = t.path().join("children");
            for c in std::fs::read_to_string(p)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(c) = c.parse() {
                    out.push(c);
                    out.extend(children(c));
                }
            }
        }
    }
    out
}

fn cgroup_procs(cg: &str) -> Vec<i32> {
    let mut v = vec![];
    for ctrl in ["memory", "pids"] {
        let p = format!("/sys/fs/cgroup/{ctrl}{cg}/cgroup.procs");
        v.extend(
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok()),
        );
    }
    v
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    serde_json::json!({"n": v.len(), "min": v[0], "median": q(0.5), "p99": q(0.99), "max": v[v.len() - 1]})
}

/// `GET /` on a fresh connection: true on a 200. The connect waits at most 50 ms: a SYN that
/// meets a namespace not yet answering is retried at once rather than by TCP's 1 s
/// retransmission (a client's pooled or slow-starting connection measured runsc's netstack
/// ≈700 ms late).
async fn http_ok(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(50),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf.starts_with(b"HTTP/1.")
        && &buf[9..12] == b"200"
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rootfs = std::path::PathBuf::from(&a[1]);
    let rt = if a[2] == "runsc" {
        Runtime::Runsc
    } else {
        Runtime::Runc
    };
    let n: usize = a[3].parse().unwrap();
    let state = tempfile::Builder::new()
        .prefix("cloister-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut cfg = Config::new(state.path());
    cfg.runsc = Some("runsc".into());
    cfg.runsc_network = match std::env::var("RUNSC_NETWORK").as_deref() {
        Ok("netstack") => Some(cloister_containers::RunscNetwork::Netstack),
        Ok("masked") => Some(cloister_containers::RunscNetwork::NetstackMaskedProc),
        Ok("host") => Some(cloister_containers::RunscNetwork::HostInNetns),
        _ => None,
    };
    let h = Containers::new(cfg).unwrap();
    let launch = Launch {
        rootfs,
        runtime: rt,
        args: ["python3", "-u", "/opt/cloister-test/server.py"]
            .map(String::from)
            .to_vec(),
        env: vec!["PORT=8080".into(), "PATH=/usr/bin:/bin".into()],
        cwd: Some("/srv".into()),
        user: Some("65534:65534".into()),
        cpu: None,
        memory_bytes: None,
        port: 8080,
        egress: false,
    };
    if std::env::var_os("BENCH_HOLD").is_some() {
        // One container for poking at by hand: prints its address, lives 15 s.
        let c = h.start(&launch).await.unwrap();
        println!("{}", c.addr());
        tokio::time::sleep(Duration::from_secs(15)).await;
        c.stop().await;
        return;
    }
    if std::env::var_os("BENCH_TRUE").is_some() {
        // Start → exit of `python3 -c pass` (no network involved).
        let mut l = launch.clone();
        let code = std::env::var("BENCH_TRUE").unwrap();
        l.args = vec![
            "python3".into(),
            "-c".into(),
            if code == "1" { "pass".into() } else { code },
        ];
        let mut v = vec![];
        for _ in 0..n {
            let t0 = Instant::now();
            let c = h.start(&l).await.unwrap();
            c.wait_exit(Duration::from_secs(30)).await;
            v.push(t0.elapsed().as_secs_f64() * 1000.0);
            eprint!("{}", c.console_tail(200));
            c.stop().await;
        }
        println!(
            "{}",
            serde_json::json!({"start_to_exit_of_python3_pass_ms": stats(v)})
        );
        return;
    }
    let (mut total, mut started, mut listening) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let t0 = Instant::now();
        let c = h.start(&launch).await.unwrap();
        started.push(t0.elapsed().as_secs_f64() * 1000.0);
        let url = c.addr().to_string();
        let mut heard = false;
        loop {
            // When the server's "listening on" line reached the console.
            if !heard && c.console_tail(4096).contains("listening on") {
                heard = true;
                listening.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            if http_ok(&url).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        total.push(t0.elapsed().as_secs_f64() * 1000.0);
        c.stop().await;
    }
    // Idle memory: 5 at once.
    let mut cs = vec![];
    for _ in 0..5 {
        let c = h.start(&launch).await.unwrap();
        let url = c.addr().to_string();
        while !http_ok(&url).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cs.push(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The runtime's foreground process is this process's child; the container's processes
    // are in its cgroup (runsc: sentry and gofer are the runtime's descendants).
    let me = std::process::id() as i32;
    let mut sup = 0;
    let mut ctr = 0;
    let mut cg_bytes = 0;
    for c in &cs {
        let mut pids: BTreeSet<i32> = cgroup_procs(&c.cgroup()).into_iter().collect();
        cg_bytes += c.memory_bytes().unwrap_or(0);
        let direct: Vec<i32> = children(me)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()?
                            .split_whitespace()
                            .nth(1)?
                            .parse()
                            .ok()
                    })
                    == Some(me)
            })
            .collect();
        for child in direct {
            let cmd = std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmd.contains(c.id()) {
                // The runtime's foreground process (runc run / runsc run) supervises; what it
                // started (runsc: sentry, gofer) counts as the container's.
                sup += pss_kib(child);
                pids.extend(children(child));
                pids.remove(&child);
            }
        }
        ctr += pids.iter().map(|p| pss_kib(*p)).sum::<u64>();
    }
    let out = serde_json::json!({
        "runtime": a[2],
        "runsc_network": h.runsc_network().map(|m| m.as_str()).unwrap_or("-"),
        "start_returned_ms": stats(started),
        "start_to_first_200_ms": stats(total),
        // When the server's "listening on" line reached the console log.
        "start_to_listening_log_ms": if listening.is_empty() { serde_json::Value::Null } else { stats(listening) },
        "idle_pss_per_container_mib": ctr as f64 / 5.0 / 1024.0,
        "runc_supervisor_pss_per_container_mib": sup as f64 / 5.0 / 1024.0,
        "memory_cgroup_per_container_mib": cg_bytes as f64 / 5.0 / 1048576.0,
    });
    for c in cs {
        c.stop().await;
    }
    println!("{out}");
}
