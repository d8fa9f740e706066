//! Unpacker tests with tar streams built byte by byte (so hostile names the `tar` crate's own
//! builder would refuse can be written).

use super::*;
use proptest::prelude::*;
use std::os::unix::fs::MetadataExt;

pub(crate) enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let n = name.as_bytes();
    assert!(n.len() <= 100, "test names fit the old header");
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    let l = link.as_bytes();
    h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// A tar stream of `entries`; `trailer: false` leaves out the last padding and the end blocks.
pub(crate) fn tar_of(entries: &[E<'_>], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let count = entries.len();
    for (i, e) in entries.iter().enumerate() {
        let (h, data): (tar::Header, &[u8]) = match e {
            E::Dir(n) => (header(n, tar::EntryType::Directory, 0, ""), b""),
            E::File(n, d) => (header(n, tar::EntryType::Regular, d.len() as u64, ""), d),
            E::Sym(n, t) => (header(n, tar::EntryType::Symlink, 0, t), b""),
            E::Link(n, t) => (header(n, tar::EntryType::Link, 0, t), b""),
            E::Char(n) => (header(n, tar::EntryType::Char, 0, ""), b""),
            E::Fifo(n) => (header(n, tar::EntryType::Fifo, 0, ""), b""),
        };
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let last = i + 1 == count;
        if trailer || !last {
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    if trailer {
        out.resize(out.len() + 1024, 0);
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

struct Fx {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"host secret").unwrap();
    Fx {
        _tmp: tmp,
        root,
        outside,
    }
}

fn apply(root: &Path, entries: &[E<'_>]) -> Result<LayerStats, UnpackError> {
    let tar = tar_of(entries, true);
    apply_layer(
        &tar[..],
        Compression::None,
        root,
        &mut Budget::new(1 << 30),
        None,
    )
}

fn outside_untouched(f: &Fx) {
    let names: Vec<_> = fs::read_dir(&f.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![OsString::from("secret")],
        "something was written outside the rootfs"
    );
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"host secret");
    let parent: Vec<_> = fs::read_dir(f.root.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(parent.len(), 2, "new entries beside the rootfs: {parent:?}");
}

#[test]
fn files_dirs_links_and_metadata() {
    let f = fx();
    let stats = apply(
        &f.root,
        &[
            E::Dir("etc/"),
            E::File("etc/hostname", b"box\n"),
            E::Sym("etc/alias", "hostname"),
            E::Link("etc/hard", "etc/hostname"),
            E::Fifo("etc/pipe"),
            E::Char("dev/null"),
            E::File("./deep/er/file", b"x"),
        ],
    )
    .unwrap();
    assert_eq!(fs::read(f.root.join("etc/hostname")).unwrap(), b"box\n");
    assert_eq!(
        fs::read_link(f.root.join("etc/alias")).unwrap(),
        PathBuf::from("hostname")
    );
    let a = fs::metadata(f.root.join("etc/hostname")).unwrap();
    let b = fs::metadata(f.root.join("etc/hard")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link");
    assert_eq!(a.mode() & 0o7777, 0o644);
    assert_eq!(a.mtime(), 1_700_000_000);
    assert!(
        fs::symlink_metadata(f.root.join("etc/pipe"))
            .unwrap()
            .file_type()
            .is_fifo_like()
    );
    assert!(
        !f.root.join("dev/null").exists(),
        "device nodes are skipped"
    );
    assert_eq!(stats.skipped_devices, 1);
    assert_eq!(fs::read(f.root.join("deep/er/file")).unwrap(), b"x");
}

#[test]
fn ownership_and_special_modes_are_kept() {
    let f = fx();
    let mut out = Vec::new();
    for (name, kind, mode, uid, gid) in [
        ("home/", tar::EntryType::Directory, 0o750, 1000u64, 1001u64),
        ("home/tool", tar::EntryType::Regular, 0o4755, 0, 0),
        ("home/notes", tar::EntryType::Regular, 0o600, 1000, 1001),
        ("tmp/", tar::EntryType::Directory, 0o1777, 0, 0),
    ] {
        let mut h = header(name, kind, 0, "");
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
    }
    out.resize(out.len() + 1024, 0);
    apply_layer(
        &out[..],
        Compression::None,
        &f.root,
        &mut Budget::new(1 << 20),
        None,
    )
    .unwrap();
    let m = |p: &str| fs::symlink_metadata(f.root.join(p)).unwrap();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        assert_eq!((m("home").uid(), m("home").gid()), (1000, 1001));
        assert_eq!((m("home/notes").uid(), m("home/notes").gid()), (1000, 1001));
    }
    assert_eq!(m("home").mode() & 0o7777, 0o750);
    assert_eq!(
        m("home/tool").mode() & 0o7777,
        0o4755,
        "setuid kept (the store is mounted nosuid)"
    );
    assert_eq!(m("home/notes").mode() & 0o7777, 0o600);
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn whiteouts_and_opaque_directories() {
    let f = fx();
    apply(
        &f.root,
        &[
            E::File("a/x", b"1"),
            E::File("a/y", b"2"),
            E::File("b/z", b"3"),
            E::File("d/sub/lower", b"4"),
            E::File("keep", b"5"),
        ],
    )
    .unwrap();
    let stats = apply(
        &f.root,
        &[
            E::File("a/.wh.x", b""),
            E::File("b/new", b"6"),
            E::File("b/.wh..wh..opq", b""),
            E::File("d/sub/upper", b"7"),
            E::File("d/.wh..wh..opq", b""),
            E::File(".wh.keep", b""),
            E::File("nothere/.wh.ghost", b""),
        ],
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 5);
    assert!(!f.root.join("a/x").exists());
    assert!(f.root.join("a/y").exists());
    assert!(
        !f.root.join("b/z").exists(),
        "opaque dir hides the lower contents"
    );
    assert_eq!(
        fs::read(f.root.join("b/new")).unwrap(),
        b"6",
        "but keeps its own layer's"
    );
    assert!(
        !f.root.join("d/sub/lower").exists(),
        "opaque applies to nested lower entries"
    );
    assert!(f.root.join("d/sub/upper").exists());
    assert!(!f.root.join("keep").exists());
    assert!(
        !f.root.join("b/.wh..wh..opq").exists(),
        "markers are never materialised"
    );
    assert!(!f.root.join("nothere").join(".wh.ghost").exists());
}

#[test]
fn replacing_entries_of_another_type() {
    let f = fx();
    apply(
        &f.root,
        &[E::Dir("p/"), E::File("p/inner", b"1"), E::File("q", b"2")],
    )
    .unwrap();
    apply(&f.root, &[E::File("p", b"now a file"), E::Dir("q/")]).unwrap();
    assert_eq!(fs::read(f.root.join("p")).unwrap(), b"now a file");
    assert!(f.root.join("q").is_dir());
}

#[test]
fn dotdot_escape_is_refused() {
    let f = fx();
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../x"] {
        let err = apply(&f.root, &[E::File(name, b"pwned")]).unwrap_err();
        assert!(matches!(err, UnpackError::Hostile { .. }), "{name}: {err}");
    }
    let err = apply(&f.root, &[E::Link("l", "../outside/secret")]).unwrap_err();
    assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    outside_untouched(&f);
}

#[test]
fn absolute_names_are_contained() {
    let f = fx();
    let abs = format!("{}/pwned", f.outside.display());
    apply(
        &f.root,
        &[
            E::File(&abs, b"x"),
            E::File("/etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
        ],
    )
    .unwrap();
    assert!(f.root.join(abs.trim_start_matches('/')).exists());
    assert!(f.root.join("etc/passwd").exists());
    outside_untouched(&f);
}

#[test]
fn symlinks_pointing_outside_are_not_written_through() {
    let f = fx();
    let out = f.outside.to_str().unwrap().to_string();
    apply(
        &f.root,
        &[
            E::Sym("evil", &out),
            E::File("evil/pwned", b"x"),
            E::Sym("up", "../../../../../.."),
            E::File("up/pwned2", b"y"),
            E::Sym("rel", "../outside"),
            E::File("rel/pwned3", b"z"),
            E::Sym("secretlink", &format!("{out}/secret")),
        ],
    )
    .unwrap();
    // The writes landed inside the rootfs, where the container would see them.
    assert!(
        f.root
            .join(out.trim_start_matches('/'))
            .join("pwned")
            .exists()
    );
    assert!(f.root.join("pwned2").exists());
    assert!(f.root.join("outside/pwned3").exists());
    // A regular file over an existing symlink replaces the link.
    apply(&f.root, &[E::File("secretlink", b"overwritten?")]).unwrap();
    assert!(
        fs::symlink_metadata(f.root.join("secretlink"))
            .unwrap()
            .is_file()
    );
    // A hard link through a symlink to a host file finds nothing inside the rootfs.
    let err = apply(&f.root, &[E::Sym("h", &out), E::Link("stolen", "h/secret")]).unwrap_err();
    assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    // Hard links to directories are refused.
    let err = apply(&f.root, &[E::Dir("dd/"), E::Link("dl", "dd")]).unwrap_err();
    assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
    outside_untouched(&f);
}

#[test]
fn symlink_loops_are_refused() {
    let f = fx();
    let err = apply(
        &f.root,
        &[E::Sym("a", "b"), E::Sym("b", "a"), E::File("a/x", b"")],
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Hostile { .. }), "{err}");
}

#[test]
fn a_layer_without_trailer_is_accepted() {
    let f = fx();
    let tar = tar_of(
        &[
            E::Dir("srv/"),
            E::File("srv/index.html", b"<h1>hello from umoci insert</h1>\n"),
        ],
        false,
    );
    assert_eq!(tar.len(), 512 + 512 + 33, "no padding, no end blocks");
    apply_layer(
        &tar[..],
        Compression::None,
        &f.root,
        &mut Budget::new(1 << 20),
        None,
    )
    .unwrap();
    assert_eq!(
        fs::read(f.root.join("srv/index.html")).unwrap(),
        b"<h1>hello from umoci insert</h1>\n"
    );
}

#[test]
fn size_limits_stop_bombs() {
    let f = fx();
    let big = vec![0u8; 4 << 20];
    let tar = tar_of(&[E::File("big", &big)], true);
    let gz = gzip(&tar);
    assert!(gz.len() < 64 * 1024, "compresses well");
    let err = apply_layer(
        &gz[..],
        Compression::Gzip,
        &f.root,
        &mut Budget::new(1 << 20),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // The budget is shared by the layers of one image.
    let mut budget = Budget::new(6 << 20);
    apply_layer(&gz[..], Compression::Gzip, &f.root, &mut budget, None).unwrap();
    let err = apply_layer(&gz[..], Compression::Gzip, &f.root, &mut budget, None).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
}

#[test]
fn entry_count_is_bounded() {
    let f = fx();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"")).collect();
    let tar = tar_of(&entries, true);
    let mut budget = Budget::with_entries(1 << 20, 25);
    apply_layer(&tar[..], Compression::None, &f.root, &mut budget, None).unwrap();
    let err = apply_layer(&tar[..], Compression::None, &f.root, &mut budget, None).unwrap_err();
    assert!(
        matches!(err, UnpackError::Hostile { ref reason, .. } if reason.contains("entries")),
        "{err}"
    );
}

#[test]
fn diff_id_is_checked_over_the_decompressed_stream() {
    let f = fx();
    let tar = tar_of(&[E::File("a", b"1")], true);
    let good = format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(&SHA256, &tar).as_ref())
    );
    let gz = gzip(&tar);
    apply_layer(
        &gz[..],
        Compression::Gzip,
        &f.root,
        &mut Budget::new(1 << 20),
        Some(&good),
    )
    .unwrap();
    let bad = format!("sha256:{}", "0".repeat(64));
    let err = apply_layer(
        &gz[..],
        Compression::Gzip,
        &f.root,
        &mut Budget::new(1 << 20),
        Some(&bad),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn zstd_layers() {
    let f = fx();
    let tar = tar_of(&[E::File("z", b"zstd content")], true);
    let z =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    apply_layer(
        &z[..],
        Compression::Zstd,
        &f.root,
        &mut Budget::new(1 << 20),
        None,
    )
    .unwrap();
    assert_eq!(fs::read(f.root.join("z")).unwrap(), b"zstd content");
}

#[test]
fn garbage_is_corrupt_not_a_panic() {
    let f = fx();
    for junk in [
        &b"\x1f\x8b\x08garbage"[..],
        &[0xffu8; 700][..],
        &b"short"[..],
    ] {
        let r = apply_layer(
            junk,
            Compression::Gzip,
            &f.root,
            &mut Budget::new(1 << 20),
            None,
        );
        assert!(
            matches!(r, Err(UnpackError::Corrupt(_))) || r.is_ok(),
            "{r:?}"
        );
    }
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "..", ".", "", "c", "/", "x/..", "evil"]),
        1..6,
    )
    .prop_map(|parts| parts.join("/"))
}

#[derive(Debug, Clone)]
enum Op {
    File(String),
    Dir(String),
    Sym(String, String),
    Link(String, String),
    Wh(String),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        name_strategy().prop_map(Op::File),
        name_strategy().prop_map(Op::Dir),
        (
            name_strategy(),
            prop_oneof![
                name_strategy(),
                Just("/".to_string()),
                Just("OUTSIDE".to_string())
            ]
        )
            .prop_map(|(a, b)| Op::Sym(a, b)),
        (name_strategy(), name_strategy()).prop_map(|(a, b)| Op::Link(a, b)),
        (
            name_strategy(),
            prop::sample::select(vec!["a", "secret", "outside", "rootfs"])
        )
            .prop_map(|(n, w)| Op::Wh(format!("{n}/.wh.{w}"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the layer says, nothing outside the rootfs is created, changed or removed.
    #[test]
    fn nothing_escapes_the_root(ops in prop::collection::vec(op_strategy(), 1..12)) {
        let f = fx();
        let out = f.outside.to_str().unwrap().to_string();
        let entries: Vec<E<'_>> = ops.iter().map(|o| match o {
            Op::File(n) => E::File(n, b"data"),
            Op::Dir(n) => E::Dir(n),
            Op::Sym(n, t) => E::Sym(n, if t == "OUTSIDE" { &out } else { t }),
            Op::Link(n, t) => E::Link(n, t),
            Op::Wh(n) => E::File(n, b""),
        }).filter(|e| match e { E::File(n, _) | E::Dir(n) | E::Sym(n, _) | E::Link(n, _) => n.len() <= 100, _ => true })
        .collect();
        let _ = apply(&f.root, &entries);
        outside_untouched(&f);
        prop_assert!(f.root.is_dir());
    }
}
