//! Test helpers: a real registry (Debian's docker-registry) on loopback through
//! scripts/test-registry.sh, a small OCI push client for images built in the test, and a raw
//! tar writer for layers the `tar` crate's builder would refuse to write.
#![allow(dead_code, unused_macros, unused_imports)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The tools the registry tests need; `None` when present, else why the test is skipped.
pub fn missing_tools(tools: &[&str]) -> Option<String> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .unwrap()
                .status
                .success()
        })
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "skipped: {} not installed (scripts/install-deps.sh installs them)",
            missing.join(", ")
        ))
    }
}

macro_rules! require_tools {
    ($($t:expr),*) => {
        if let Some(why) = common::missing_tools(&[$($t),*]) {
            eprintln!("{why}");
            return;
        }
    };
}
pub(crate) use require_tools;

/// A registry process for one test; stopped on drop.
pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub auth: Option<(String, String)>,
}

impl TestRegistry {
    pub fn start(auth: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(repo_root().join("scripts/test-registry.sh"));
        cmd.arg("start").arg(dir.path());
        if let Some((u, p)) = auth {
            cmd.arg(format!("{u}:{p}"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "registry start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        TestRegistry {
            dir,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// The registry's stored copy of a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    fn req(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        }
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let c = self.client();
        let r = self
            .req(c.post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "start upload: {}", r.text().await.unwrap());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(c.put(format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "finish upload: {}",
            r.text().await.unwrap()
        );
        digest
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .req(self.client().put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            )))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "push manifest: {}",
            r.text().await.unwrap()
        );
        sha256(body)
    }

    /// Pushes an image of gzip layers with a config; returns (manifest digest, layer digests).
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        config: serde_json::Value,
    ) -> (String, Vec<String>) {
        let (m, digests) = self.image_manifest(repo, layers, config).await;
        let d = self
            .push_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", &m)
            .await;
        (d, digests)
    }

    pub async fn image_manifest(
        &self,
        repo: &str,
        layers: &[Vec<u8>],
        mut config: serde_json::Value,
    ) -> (Vec<u8>, Vec<String>) {
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, l).await;
            diff_ids.push(sha256(&gunzip(l)));
            descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": l.len()}));
            digests.push(d);
        }
        if config.get("rootfs").is_none() {
            config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
        }
        let cfg = serde_json::to_vec(&config).unwrap();
        let cd = self.push_blob(repo, &cfg).await;
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": descs,
        });
        (serde_json::to_vec(&m).unwrap(), digests)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/test-registry.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

pub fn default_config() -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/app"], "Env": ["A=1"], "WorkingDir": "/", "ExposedPorts": {"8080/tcp": {}}}
    })
}

pub fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
    )
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
}

/// A tar stream written header by header (names are not checked: hostile ones are the point).
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, b"", ""),
            E::File(n, d) => (n, tar::EntryType::Regular, d, ""),
            E::Sym(n, t) => (n, tar::EntryType::Symlink, b"", t),
            E::Link(n, t) => (n, tar::EntryType::Link, b"", t),
        };
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn layer(entries: &[E<'_>]) -> Vec<u8> {
    gzip(&tar_of(entries))
}

pub fn opts(reg: &TestRegistry) -> cloister_images::PullOptions {
    cloister_images::PullOptions {
        plain_http: vec![reg.addr.clone()],
        timeout: std::time::Duration::from_secs(120),
        max_bytes: 1 << 30,
    }
}

/// A store in a temp dir whose read-only mounts are removed when the test ends.
pub struct TempStore {
    pub store: cloister_images::ImageStore,
    pub dir: tempfile::TempDir,
}

#[allow(clippy::new_without_default)]
impl TempStore {
    pub fn new() -> TempStore {
        let dir = tempfile::tempdir().unwrap();
        let store = cloister_images::ImageStore::open(dir.path().join("store")).unwrap();
        TempStore { store, dir }
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        self.store.unmount_all();
    }
}

/// The test image (scripts/test-image.sh, cached), pushed to `reg`; returns its digest.
pub fn push_test_image(reg: &TestRegistry, repo_tag: &str) -> String {
    let mut cmd = Command::new(repo_root().join("scripts/test-image.sh"));
    cmd.arg("push").arg(&reg.addr).arg(repo_tag);
    if let Some((u, p)) = &reg.auth {
        cmd.arg(format!("{u}:{p}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "test-image.sh push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
