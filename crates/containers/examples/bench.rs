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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut total, mut started) = (vec![], vec![]);
    for _ in 0..n {
        let t0 = Instant::now();
        let c = h.start(&launch).await.unwrap();
        started.push(t0.elapsed().as_secs_f64() * 1000.0);
        let url = format!("http://{}/", c.addr());
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
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
        let url = format!("http://{}/", c.addr());
        while client
            .get(&url)
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
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
        "idle_pss_per_container_mib": ctr as f64 / 5.0 / 1024.0,
        "runc_supervisor_pss_per_container_mib": sup as f64 / 5.0 / 1024.0,
        "memory_cgroup_per_container_mib": cg_bytes as f64 / 5.0 / 1048576.0,
    });
    for c in cs {
        c.stop().await;
    }
    println!("{out}");
}
