//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1) through the public API.

mod common;

use std::fs;
use std::io::ErrorKind;

use cloister_images::{ImageStore, PullError, RegistryAuth};
use common::*;

#[tokio::test]
async fn test_image_by_tag_and_by_digest_read_only_with_its_files_and_config() {
    require_tools!("docker-registry", "skopeo", "mmdebstrap", "umoci");
    let reg = TestRegistry::start(None);
    let digest = push_test_image(&reg, "cloister/test:1");
    let ts = TempStore::new();

    let image = ts
        .store
        .pull(&format!("{}/cloister/test:1", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    let root = &image.rootfs;
    assert!(root.join("opt/cloister-test/server.py").is_file());
    assert!(
        root.join("usr/bin/python3").exists(),
        "python3 through its symlink"
    );
    assert!(
        fs::symlink_metadata(root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "merged /usr kept as a symlink"
    );
    assert_eq!(
        image.config.cmd,
        ["python3", "-u", "/opt/cloister-test/server.py"]
    );
    assert_eq!(image.config.exposed_ports, [8080]);
    assert_eq!(image.config.user.as_deref(), Some("65534:65534"));
    assert!(image.config.env.iter().any(|e| e == "PORT=8080"));
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    // Ownership and modes came through (root-owned, setuid su kept when present).
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(root.join("etc/passwd")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o644));
    let tmp = fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);

    // Read-only, even for root.
    let err = fs::write(root.join("etc/pwned"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    let err = fs::remove_file(root.join("etc/passwd")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");

    // By digest: the same image, no second unpack.
    let again = ts
        .store
        .pull(
            &format!("{}/cloister/test@{digest}", reg.addr),
            None,
            &opts(&reg),
        )
        .await
        .unwrap();
    assert_eq!(again.rootfs, image.rootfs);
    assert_eq!(ts.store.stats().unpacks, 1);
    assert_eq!(ts.store.list().len(), 1);

    // By digest into a fresh store.
    let other = TempStore::new();
    let pinned = other
        .store
        .pull(
            &format!("{}/cloister/test@{digest}", reg.addr),
            None,
            &opts(&reg),
        )
        .await
        .unwrap();
    assert_eq!(pinned.digest, digest);
    assert!(pinned.rootfs.join("opt/cloister-test/server.py").is_file());

    // The store never hands out an image without the registry's word for this caller: with
    // the registry gone, even a digest the store has fails.
    drop(reg);
    let err = other
        .store
        .pull(
            &format!("{}/cloister/test@{digest}", pinned_host(&pinned)),
            None,
            &Default::default(),
        )
        .await;
    assert!(matches!(err, Err(PullError::Network(_))), "{err:?}");

    // Removal unmounts and deletes it, and its blobs.
    other.store.remove(&digest).unwrap();
    assert!(other.store.list().is_empty());
    assert!(!pinned.rootfs.exists());
    let blobs: Vec<_> = fs::read_dir(other.store.root().join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    // A store reopened later finds its images read-only again.
    let ts_root = ts.store.root().to_path_buf();
    ts.store.unmount_all();
    assert!(
        fs::write(image.rootfs.join("probe"), b"x").is_ok(),
        "unmounted: writable"
    );
    fs::remove_file(image.rootfs.join("probe")).unwrap();
    let reopened = ImageStore::open(&ts_root).unwrap();
    assert_eq!(reopened.list().len(), 1);
    assert!(
        fs::write(image.rootfs.join("probe"), b"x").is_err(),
        "read-only after open"
    );
    reopened.unmount_all();
}

fn pinned_host(image: &cloister_images::Image) -> String {
    image.reference.split('/').next().unwrap().to_string()
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}

#[tokio::test]
async fn basic_auth_right_wrong_and_missing_credentials() {
    require_tools!("docker-registry", "htpasswd");
    let reg = TestRegistry::start(Some(("puller", "s3cret-pw")));
    let (digest, _) = reg
        .push_image(
            "team/app",
            "v1",
            &[layer(&[E::File("app/hello.txt", b"hi")])],
            default_config(),
        )
        .await;
    let r = format!("{}/team/app:v1", reg.addr);
    let ts = TempStore::new();

    let right = RegistryAuth {
        username: "puller".into(),
        password: "s3cret-pw".into(),
    };
    let image = ts.store.pull(&r, Some(&right), &opts(&reg)).await.unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(fs::read(image.rootfs.join("app/hello.txt")).unwrap(), b"hi");

    let wrong = RegistryAuth {
        username: "puller".into(),
        password: "not-the-password".into(),
    };
    // The image is in this store now; the wrong password still gets nothing from it.
    let err = ts
        .store
        .pull(&r, Some(&wrong), &opts(&reg))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    let err = ts
        .store
        .pull(
            &format!("{}/team/app@{digest}", reg.addr),
            None,
            &opts(&reg),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Unauthorized(_)),
        "no credentials, pinned digest: {err:?}"
    );
    // Nor does another registry that merely names the digest.
    let open = TestRegistry::start(None);
    let err = ts
        .store
        .pull(
            &format!("{}/team/app@{digest}", open.addr),
            None,
            &opts(&open),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err:?}");

    let other = TempStore::new();
    let err = other
        .store
        .pull(&r, Some(&wrong), &opts(&reg))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&reg.addr) && msg.contains("wrong user name or password"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-the-password") && !format!("{err:?}").contains("not-the-password"),
        "{msg}"
    );

    let err = other.store.pull(&r, None, &opts(&reg)).await.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("needs credentials"), "{err}");
    assert!(other.store.list().is_empty());
}

#[tokio::test]
async fn missing_images_are_not_found() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    reg.push_image(
        "there/app",
        "v1",
        &[layer(&[E::File("a", b"1")])],
        default_config(),
    )
    .await;
    let ts = TempStore::new();
    let zero = format!("sha256:{}", "0".repeat(64));
    for r in [
        format!("{}/not/there:v1", reg.addr),
        format!("{}/there/app:v2", reg.addr),
        format!("{}/there/app@{zero}", reg.addr),
    ] {
        let err = ts.store.pull(&r, None, &opts(&reg)).await.unwrap_err();
        assert!(matches!(err, PullError::NotFound(_)), "{r}: {err:?}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
    let err = ts
        .store
        .pull("not a reference", None, &opts(&reg))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn a_tampered_blob_is_a_digest_mismatch() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let (_, layers) = reg
        .push_image(
            "t/app",
            "v1",
            &[layer(&[E::File("payload", &[b'A'; 4096])])],
            default_config(),
        )
        .await;
    // Flip one byte of the stored layer (same length, so only the hash can tell).
    let file = reg.blob_file(&layers[0]);
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 0xff;
    fs::write(&file, &bytes).unwrap();

    let ts = TempStore::new();
    let err = ts
        .store
        .pull(&format!("{}/t/app:v1", reg.addr), None, &opts(&reg))
        .await
        .unwrap_err();
    match &err {
        PullError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &layers[0]);
            assert_ne!(actual, expected);
        }
        other => panic!("{other:?}"),
    }
    assert!(ts.store.list().is_empty());
    let blob = ts
        .store
        .root()
        .join("blobs/sha256")
        .join(layers[0].trim_start_matches("sha256:"));
    assert!(!blob.exists(), "a bad blob is never stored");
    let tmp: Vec<_> = fs::read_dir(ts.store.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[tokio::test]
async fn a_tampered_manifest_pinned_by_digest_is_refused() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let (digest, _) = reg
        .push_image(
            "t/m",
            "v1",
            &[layer(&[E::File("a", b"1")])],
            default_config(),
        )
        .await;
    // Another manifest under the tag; asking for the old digest by tag+digest must still get the old one.
    let (other, _) = reg
        .push_image(
            "t/m",
            "v1",
            &[layer(&[E::File("b", b"2")])],
            default_config(),
        )
        .await;
    assert_ne!(digest, other);
    let ts = TempStore::new();
    let image = ts
        .store
        .pull(&format!("{}/t/m:v1@{digest}", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert!(image.rootfs.join("a").exists());
    // The manifest file in the registry's storage changed behind its digest.
    let mfile = reg.blob_file(&other);
    let mut m = fs::read(&mfile).unwrap();
    let i = m.iter().position(|&b| b == b'{').unwrap();
    m.insert(i + 1, b' ');
    fs::write(&mfile, &m).unwrap();
    let err = TempStore::new()
        .store
        .pull(&format!("{}/t/m@{other}", reg.addr), None, &opts(&reg))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn concurrent_pulls_share_one_download_and_one_unpack() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (digest, _) = reg
        .push_image(
            "c/app",
            "v1",
            &[
                layer(&[E::File("big", &big)]),
                layer(&[E::File("small", b"s")]),
            ],
            default_config(),
        )
        .await;
    let ts = TempStore::new();
    // As another process would, through a symlink to the same directory.
    let link = ts.dir.path().join("store-link");
    std::os::unix::fs::symlink(ts.store.root(), &link).unwrap();
    let second = ImageStore::open(&link).unwrap();
    let r = format!("{}/c/app:v1", reg.addr);
    let o = opts(&reg);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            ts.store.clone()
        } else {
            second.clone()
        };
        let (r, o) = (r.clone(), o.clone());
        tasks.push(tokio::spawn(async move { s.pull(&r, None, &o).await }));
    }
    let mut roots = Vec::new();
    for t in tasks {
        let image = t.await.unwrap().unwrap();
        assert_eq!(image.digest, digest);
        roots.push(image.rootfs);
    }
    roots.dedup();
    assert_eq!(roots.len(), 1);
    let (a, b) = (ts.store.stats(), second.stats());
    assert_eq!(a.unpacks + b.unpacks, 1, "{a:?} {b:?}");
    assert_eq!(
        a.blob_downloads + b.blob_downloads,
        3,
        "config and two layers, once: {a:?} {b:?}"
    );
    assert_eq!(fs::read(roots[0].join("big")).unwrap(), big);
    // One read-only mount, however many pulls.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let n = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == roots[0].to_str())
        .count();
    assert_eq!(n, 1, "{n} mounts on {}", roots[0].display());
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_across_layers() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let l1 = layer(&[
        E::Dir("etc/"),
        E::File("etc/keep", b"k"),
        E::File("etc/gone", b"g"),
        E::Dir("var/cache/"),
        E::File("var/cache/old1", b"1"),
        E::File("var/cache/sub/old2", b"2"),
        E::Sym("etc/link", "keep"),
        E::Link("etc/hard", "etc/keep"),
    ]);
    let l2 = layer(&[
        E::File("etc/.wh.gone", b""),
        E::File("etc/.wh.link", b""),
        E::Dir("var/cache/"),
        E::File("var/cache/.wh..wh..opq", b""),
        E::File("var/cache/new", b"n"),
    ]);
    let (digest, _) = reg
        .push_image("w/app", "v1", &[l1, l2], default_config())
        .await;
    let ts = TempStore::new();
    let image = ts
        .store
        .pull(&format!("{}/w/app:v1", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    let r = &image.rootfs;
    assert!(r.join("etc/keep").exists());
    assert!(!r.join("etc/gone").exists());
    assert!(
        fs::symlink_metadata(r.join("etc/link")).is_err(),
        "whiteout removes the symlink itself"
    );
    assert!(r.join("etc/hard").exists());
    assert!(
        !r.join("var/cache/old1").exists() && !r.join("var/cache/sub").exists(),
        "opaque hides lower"
    );
    assert_eq!(fs::read(r.join("var/cache/new")).unwrap(), b"n");
    assert!(!r.join("etc/.wh.gone").exists() && !r.join("var/cache/.wh..wh..opq").exists());
}

#[tokio::test]
async fn hostile_layers_are_refused_or_contained() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let ts = TempStore::new();
    let canary = ts.dir.path().join("canary");
    fs::create_dir(&canary).unwrap();
    let canary_s = canary.to_str().unwrap().to_string();

    // `..` out of the root: refused, nothing stored.
    let (_, _) = reg
        .push_image(
            "h/dotdot",
            "v1",
            &[layer(&[E::File("../../../../canary/pwned", b"x")])],
            default_config(),
        )
        .await;
    let err = ts
        .store
        .pull(&format!("{}/h/dotdot:v1", reg.addr), None, &opts(&reg))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("climbs out"), "{err}");
    assert!(ts.store.list().is_empty());

    // A symlink to a host path, then a write through it: lands inside the rootfs.
    let l = layer(&[
        E::Sym("evil", &canary_s),
        E::File("evil/pwned", b"x"),
        E::Link("stolen", "evil/../../etc/shadow"),
    ]);
    reg.push_image("h/symlink", "v1", &[l], default_config())
        .await;
    let err = ts
        .store
        .pull(&format!("{}/h/symlink:v1", reg.addr), None, &opts(&reg))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Invalid(_)),
        "the hard link to a host file is refused: {err:?}"
    );
    let l = layer(&[
        E::Sym("evil", &canary_s),
        E::File("evil/pwned", b"x"),
        E::File("/abs/file", b"y"),
    ]);
    reg.push_image("h/symlink2", "v1", &[l], default_config())
        .await;
    let image = ts
        .store
        .pull(&format!("{}/h/symlink2:v1", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert!(
        image
            .rootfs
            .join(canary_s.trim_start_matches('/'))
            .join("pwned")
            .exists()
    );
    assert!(image.rootfs.join("abs/file").exists());
    assert_eq!(
        fs::read_dir(&canary).unwrap().count(),
        0,
        "nothing written outside the rootfs"
    );

    // A gzip bomb: a small layer that inflates past max_bytes.
    let bomb = layer(&[E::File("zeros", &vec![0u8; 8 << 20])]);
    assert!(bomb.len() < 100_000);
    reg.push_image("h/bomb", "v1", &[bomb], default_config())
        .await;
    let mut o = opts(&reg);
    o.max_bytes = 2 << 20;
    let err = ts
        .store
        .pull(&format!("{}/h/bomb:v1", reg.addr), None, &o)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::TooLarge { .. }), "{err:?}");
    // And a download larger than max_bytes.
    o.max_bytes = 1000;
    // (an image already in the store needs no download, so the limit does not apply to it)
    ts.store
        .pull(&format!("{}/h/symlink2:v1", reg.addr), None, &o)
        .await
        .unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 256) as u8).collect();
    reg.push_image(
        "h/big",
        "v1",
        &[layer(&[E::File("noise", &big)])],
        default_config(),
    )
    .await;
    let err = ts
        .store
        .pull(&format!("{}/h/big:v1", reg.addr), None, &o)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64_and_plain_http_needs_listing() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let (amd, _) = reg
        .image_manifest(
            "i/app",
            &[layer(&[E::File("arch", b"amd64")])],
            default_config(),
        )
        .await;
    let mut arm_cfg = default_config();
    arm_cfg["architecture"] = "arm64".into();
    let (arm, _) = reg
        .image_manifest("i/app", &[layer(&[E::File("arch", b"arm64")])], arm_cfg)
        .await;
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let amd_d = reg.push_manifest("i/app", &sha256(&amd), mt, &amd).await;
    let arm_d = reg.push_manifest("i/app", &sha256(&arm), mt, &arm).await;
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": mt, "digest": arm_d, "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": mt, "digest": amd_d, "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_d = reg
        .push_manifest(
            "i/app",
            "multi",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .await;
    let ts = TempStore::new();
    let image = ts
        .store
        .pull(&format!("{}/i/app:multi", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(image.digest, amd_d);
    assert_eq!(fs::read(image.rootfs.join("arch")).unwrap(), b"amd64");
    // Pinned by the index digest: resolved from the store.
    let pinned = ts
        .store
        .pull(&format!("{}/i/app@{index_d}", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(pinned.digest, amd_d);
    // An arm64-only image is refused clearly.
    let err = ts
        .store
        .pull(&format!("{}/i/app@{arm_d}", reg.addr), None, &opts(&reg))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Invalid(_)) && err.to_string().contains("arm64"),
        "{err:?}"
    );

    // Docker's media types: a v2 schema 2 manifest list of v2 manifests with Docker layers.
    let dl = layer(&[E::File("arch", b"docker")]);
    let dld = reg.push_blob("i/docker", &dl).await;
    let mut dcfg = default_config();
    dcfg["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": [sha256(&gunzip(&dl))]});
    let dcfg = serde_json::to_vec(&dcfg).unwrap();
    let dcd = reg.push_blob("i/docker", &dcfg).await;
    let dm = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": dcd, "size": dcfg.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": dld, "size": dl.len()}],
    }))
    .unwrap();
    let dmt = "application/vnd.docker.distribution.manifest.v2+json";
    let dmd = reg.push_manifest("i/docker", &sha256(&dm), dmt, &dm).await;
    let dlist = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": dmt, "digest": dmd, "size": dm.len(), "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .unwrap();
    reg.push_manifest(
        "i/docker",
        "list",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &dlist,
    )
    .await;
    let image = ts
        .store
        .pull(&format!("{}/i/docker:list", reg.addr), None, &opts(&reg))
        .await
        .unwrap();
    assert_eq!(image.digest, dmd);
    assert_eq!(fs::read(image.rootfs.join("arch")).unwrap(), b"docker");

    // The same registry without listing it as plain HTTP: HTTPS only, which it does not speak.
    let err = TempStore::new()
        .store
        .pull(
            &format!("{}/i/app:multi", reg.addr),
            None,
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Network(_)), "{err:?}");
}

#[tokio::test]
async fn a_registry_that_stalls_hits_the_timeout() {
    // A loopback listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ts = TempStore::new();
    let o = cloister_images::PullOptions {
        plain_http: vec![addr.clone()],
        timeout: std::time::Duration::from_millis(600),
        max_bytes: 1 << 20,
    };
    let started = std::time::Instant::now();
    let err = ts
        .store
        .pull(&format!("{addr}/slow/app:1"), None, &o)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Network(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(listener);
}

#[test]
fn remove_refuses_bad_digests() {
    let ts = TempStore::new();
    assert_eq!(
        ts.store.remove("sha256:../../etc").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        ts.store
            .remove(&format!("sha256:{}", "a".repeat(64)))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}
