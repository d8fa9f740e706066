//! `OciBackend` through the `ContainerBackend` interface: a real basic-auth registry on
//! loopback (scripts/test-registry.sh), the cached test image (scripts/test-image.sh), the
//! real image store and runc.

use cloister_sessions::container::{
    ContainerBackend, LaunchSpec, PrepareError, RegistryLogin, RuntimeClass,
};
use cloister_sessions::oci::{OciBackend, OciConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn skip() -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root");
        return true;
    }
    for t in [
        "runc",
        "docker-registry",
        "skopeo",
        "htpasswd",
        "mmdebstrap",
    ] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(std::env::var_os("CI").is_none(), "{t} missing on CI");
            eprintln!("skipped: {t} not installed");
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oci_backend_pulls_with_credentials_and_runs_a_container_that_serves_http() {
    if skip() {
        return;
    }
    let reg = tempfile::tempdir().unwrap();
    let out = Command::new(repo_root().join("scripts/test-registry.sh"))
        .arg("start")
        .arg(reg.path())
        .arg("puller:s3cret-pw")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = Command::new(repo_root().join("scripts/test-image.sh"))
        .args(["push", &addr, "team/app:1", "puller:s3cret-pw"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let d = tempfile::Builder::new()
        .prefix("cloister-oci-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut cfg = OciConfig::new(d.path().join("images"), d.path().join("containers"));
    cfg.plain_http = vec![addr.clone()];
    let backend = OciBackend::new(cfg).unwrap();
    backend.sweep();
    assert!(backend.available(RuntimeClass::Runc).is_ok());
    let reference = format!("{addr}/team/app:1");
    let bad = RegistryLogin {
        username: "puller".into(),
        password: "not-the-pw-42".into(),
    };
    match backend.prepare(&reference, Some(&bad)).await {
        Err(PrepareError::Unauthorized(m)) => assert!(!m.contains("not-the-pw-42"), "{m}"),
        other => panic!("{other:?}"),
    }
    let good = RegistryLogin {
        username: "puller".into(),
        password: "s3cret-pw".into(),
    };
    match backend
        .prepare(&format!("{addr}/team/app:missing"), Some(&good))
        .await
    {
        Err(PrepareError::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    let image = backend.prepare(&reference, Some(&good)).await.unwrap();
    assert_eq!(image.digest, pushed);
    assert_eq!(image.user.as_deref(), Some("65534:65534"));

    let mut args = image.entrypoint.clone();
    args.extend(image.cmd.clone());
    let mut env = image.env.clone();
    env.push("SECRET_VALUE=hidden".into());
    let spec = LaunchSpec {
        image: image.clone(),
        runtime: RuntimeClass::Runc,
        args,
        env,
        cpu: Some(0.5),
        memory_bytes: Some(128 << 20),
        target_port: 8080,
        egress: false,
    };
    assert!(!format!("{spec:?}").contains("hidden"));
    let c = backend.start(&spec).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let body: serde_json::Value = loop {
        if let Ok(r) = client.get(format!("http://{}/", c.addr())).send().await
            && r.status() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            c.console_tail(2000)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(body["hostname"], c.id());
    assert!(c.is_running());
    assert!(c.memory_bytes().unwrap() > 0);
    assert_eq!(c.wait_exit(Duration::from_millis(50)).await, None);
    client
        .post(format!("http://{}/exit?code=3", c.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(c.wait_exit(Duration::from_secs(10)).await, Some(3));
    assert!(c.console_tail(4096).contains("listening on 8080"));
    c.stop().await;
    assert_eq!(
        std::fs::read_dir(d.path().join("containers/c"))
            .unwrap()
            .count(),
        0
    );
    let _ = Command::new(repo_root().join("scripts/test-registry.sh"))
        .arg("stop")
        .arg(reg.path())
        .status();
    backend.images().unmount_all();
}
