//! Test helpers: the cached test image (scripts/test-image.sh) pushed to a loopback registry
//! (scripts/test-registry.sh) and pulled through the real image store, once per test binary.
#![allow(dead_code)]

use cloister_containers::{Config, Containers, Launch, RunningContainer, Runtime};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// None when the tests can run; else why they are skipped.
pub fn skip_reason() -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("skipped: the container tests need root".into());
    }
    let missing: Vec<&str> = [
        "runc",
        "ip",
        "nft",
        "skopeo",
        "docker-registry",
        "mmdebstrap",
        "umoci",
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    if !missing.is_empty() {
        // On CI these are installed by scripts/install-deps.sh: a missing tool is a failure.
        if std::env::var_os("CI").is_some() {
            panic!("missing tools on CI: {}", missing.join(", "));
        }
        return Some(format!(
            "skipped: {} not installed (scripts/install-deps.sh)",
            missing.join(", ")
        ));
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("{why}");
            return;
        }
    };
}
pub(crate) use require_root;

pub struct TestImage {
    pub rootfs: PathBuf,
    pub digest: String,
    pub user: Option<String>,
    pub cwd: Option<String>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
}

/// The test image, pulled once per test binary into a store kept under /var/tmp (re-used
/// across runs: later pulls only re-check the manifest).
pub fn image() -> &'static TestImage {
    static IMG: OnceLock<TestImage> = OnceLock::new();
    IMG.get_or_init(|| {
        std::thread::spawn(|| {
            let out = Command::new(repo_root().join("scripts/test-image.sh"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "test-image.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let reg = tempfile::tempdir().unwrap().keep();
            let out = Command::new(repo_root().join("scripts/test-registry.sh"))
                .arg("start")
                .arg(&reg)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "registry: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
            let out = Command::new(repo_root().join("scripts/test-image.sh"))
                .args(["push", &addr, "cloister/containers-test:1"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "push: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let store =
                cloister_images::ImageStore::open("/var/tmp/cloister-containers-test/images")
                    .unwrap();
            let opts = cloister_images::PullOptions {
                plain_http: vec![addr.clone()],
                ..Default::default()
            };
            let img = rt
                .block_on(store.pull(&format!("{addr}/cloister/containers-test:1"), None, &opts))
                .unwrap();
            let _ = Command::new(repo_root().join("scripts/test-registry.sh"))
                .arg("stop")
                .arg(&reg)
                .status();
            let _ = std::fs::remove_dir_all(&reg);
            let mut cmd = img.config.entrypoint.clone();
            cmd.extend(img.config.cmd.clone());
            TestImage {
                rootfs: img.rootfs,
                digest: img.digest,
                user: img.config.user,
                cwd: img.config.working_dir,
                env: img.config.env,
                cmd,
            }
        })
        .join()
        .unwrap()
    })
}

pub fn host(cfg: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Containers) {
    let dir = tempfile::Builder::new()
        .prefix("cloister-ctr-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut c = Config::new(dir.path().join("state"));
    if have("runsc") {
        c.runsc = Some("runsc".into());
    }
    cfg(&mut c);
    let h = Containers::new(c).unwrap();
    (dir, h)
}

pub fn launch(rt: Runtime) -> Launch {
    let img = image();
    Launch {
        rootfs: img.rootfs.clone(),
        runtime: rt,
        args: img.cmd.clone(),
        env: img.env.clone(),
        cwd: img.cwd.clone(),
        user: img.user.clone(),
        cpu: None,
        memory_bytes: None,
        port: 8080,
        egress: false,
    }
}

/// A launch that runs a Python snippet instead of the server.
pub fn python(rt: Runtime, code: &str) -> Launch {
    let mut l = launch(rt);
    l.args = vec!["python3".into(), "-c".into(), code.into()];
    l
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls GET / until it answers 200; returns the JSON body and how long it took.
pub async fn wait_http(c: &RunningContainer) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let url = format!("http://{}/", c.addr());
    loop {
        if let Ok(r) = client().get(&url).send().await
            && r.status() == 200
        {
            return (r.json().await.unwrap(), t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no HTTP answer from {url}; console: {}",
            c.console_tail(2000)
        );
        assert!(
            c.is_running(),
            "exited: {:?}; console: {}",
            c.exit_code(),
            c.console_tail(2000)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for a snippet container to exit; returns (code, console).
pub async fn finish(c: RunningContainer) -> (Option<i32>, String) {
    let code = c.wait_exit(Duration::from_secs(60)).await;
    let out = c.console_tail(64 << 10);
    c.stop().await;
    (code, out)
}

/// The leftovers of one container on the host, as names that still exist.
pub fn leftovers(h: &Containers, id: &str, netns: &str, cgroup: &str) -> Vec<String> {
    let mut v = vec![];
    if Path::new("/var/run/netns").join(netns).exists() {
        v.push(format!("netns {netns}"));
    }
    for ctrl in ["memory", "pids", "cpu"] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(cgroup.trim_start_matches('/'));
        if p.exists() {
            v.push(format!("cgroup {}", p.display()));
        }
    }
    let d = h.config().state_dir.join("c").join(id);
    if d.exists() {
        v.push(format!("dir {}", d.display()));
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if mi.contains(id) {
        v.push("mount".into());
    }
    v
}

pub fn veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("cld") || n.starts_with("cle"))
        .collect()
}
