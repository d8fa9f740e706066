//! Applies image layers (tar, optionally gzip or zstd compressed) to a root filesystem
//! directory, the way an overlay of the layers would look: whiteouts (`.wh.<name>`) delete what
//! lower layers wrote, an opaque marker (`.wh..wh..opq`) hides a directory's lower contents.
//!
//! A layer is hostile input. What it can do and cannot:
//! * Entry names are cleaned lexically; a name whose `..` climbs above the root is refused,
//!   an absolute name is taken relative to the root (as GNU tar and docker do).
//! * Every directory in an entry's path is resolved *inside* the root: a symlink met on the
//!   way is followed the way the container will see it (absolute targets start at the root,
//!   `..` stops at the root), so `evil -> /etc` followed by `evil/passwd` writes the rootfs's
//!   own `etc/passwd`, never the host's. The final component is never followed: an existing
//!   entry there is replaced, not written through.
//! * Hard links must name a non-directory that already exists inside the root (resolved the same way).
//! * Device nodes are skipped (sessions get their devices from the runtime); fifos are made.
//! * Sizes are bounded: the decompressed tar stream and the bytes written to files each count
//!   against the pull's `max_bytes`, so a gzip bomb or a sparse-file bomb stops at the limit;
//!   an image has at most [`MAX_ENTRIES`] entries (inode exhaustion).
//! * The unpacker runs in a private temporary directory that only it writes, so nothing can
//!   change a path between its check and its use.
//! * A stream without the end-of-archive blocks (and without the last entry's padding) is
//!   accepted (umoci `insert` writes such layers, containers.md P5); the layer's digest was
//!   already verified, so the bytes are exactly what the image's author published.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use aws_lc_rs::digest::{Context, SHA256};

use crate::manifest::Compression;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tried something the unpacker refuses (path escape, bad link, ...).
    #[error("layer entry {path:?} refused: {reason}")]
    Hostile { path: String, reason: String },
    /// The layer is bigger than the limit once decompressed or written.
    #[error("the layers are larger than the limit of {limit} bytes once unpacked")]
    TooLarge { limit: u64 },
    /// The decompressed layer does not hash to the config's `diff_id`.
    #[error("layer content is {actual} but the image config's diff_id says {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    /// Not a tar stream (or a broken compression stream).
    #[error("the layer is not a valid tar stream: {0}")]
    Corrupt(String),
    /// The local file system failed.
    #[error("writing the root filesystem: {0}")]
    Io(#[from] io::Error),
}

/// Byte budgets shared by all layers of one image.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u64,
    stream_left: u64,
    files_left: u64,
    entries_left: u64,
}

/// Most entries (files, directories, links, whiteouts) all layers of one image may have.
pub const MAX_ENTRIES: u64 = 1_000_000;

impl Budget {
    /// `limit` bounds the decompressed tar streams and, separately, the bytes written to files.
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            stream_left: limit,
            files_left: limit,
            entries_left: MAX_ENTRIES,
        }
    }

    #[cfg(test)]
    fn with_entries(limit: u64, entries: u64) -> Budget {
        Budget {
            entries_left: entries,
            ..Budget::new(limit)
        }
    }
}

/// What one layer did.
#[derive(Debug, Default, Clone)]
pub struct LayerStats {
    pub entries: u64,
    pub file_bytes: u64,
    pub whiteouts: u64,
    pub skipped_devices: u64,
}

/// Applies one layer from `reader` to `root` (which must exist). `expected_diff_id`, when
/// given, is checked against the sha256 of the whole decompressed stream.
pub fn apply_layer<R: Read>(
    reader: R,
    compression: Compression,
    root: &Path,
    budget: &mut Budget,
    expected_diff_id: Option<&str>,
) -> Result<LayerStats, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    // Trust the bytes over the media type (some registries label layers loosely).
    let head = buffered.fill_buf()?;
    let detected = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        let _ = compression; // a tar labelled as compressed, or the other way round
        Compression::None
    };
    let decoded: Box<dyn Read + '_> = match detected {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(buffered)
                .map_err(|e| UnpackError::Corrupt(format!("zstd: {e}")))?,
        ),
    };
    let tracking = Tracking {
        inner: decoded,
        hasher: Context::new(&SHA256),
        left: budget.stream_left,
        exceeded: false,
    };
    let mut archive = tar::Archive::new(ZeroPadAtEof {
        inner: tracking,
        pos: 0,
        pad: None,
    });
    let mut state = LayerState {
        created: HashSet::new(),
        dir_times: Vec::new(),
        stats: LayerStats::default(),
    };
    let result = apply_entries(&mut archive, root, budget, &mut state);
    let mut tracking = archive.into_inner().inner;
    if tracking.exceeded {
        return Err(UnpackError::TooLarge {
            limit: budget.limit,
        });
    }
    result?;
    // The diff_id covers the whole stream, including anything after the end-of-archive blocks.
    io::copy(&mut tracking, &mut io::sink()).map_err(|e| {
        if tracking.exceeded {
            UnpackError::TooLarge {
                limit: budget.limit,
            }
        } else {
            UnpackError::Corrupt(e.to_string())
        }
    })?;
    if tracking.exceeded {
        return Err(UnpackError::TooLarge {
            limit: budget.limit,
        });
    }
    budget.stream_left = tracking.left;
    let actual = format!("sha256:{}", hex::encode(tracking.hasher.finish().as_ref()));
    if let Some(expected) = expected_diff_id
        && expected != actual
    {
        return Err(UnpackError::DiffIdMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    for (dir, mtime) in state.dir_times.iter().rev() {
        let _ = set_mtime(dir, *mtime);
    }
    Ok(state.stats)
}

struct LayerState {
    /// Every path this layer created or replaced (an opaque marker keeps these).
    created: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, u64)>,
    stats: LayerStats,
}

fn corrupt(e: io::Error) -> UnpackError {
    UnpackError::Corrupt(e.to_string())
}

fn hostile(path: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Hostile {
        path: path.to_string_lossy().chars().take(200).collect(),
        reason: reason.into(),
    }
}

fn apply_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
    budget: &mut Budget,
    st: &mut LayerState,
) -> Result<(), UnpackError> {
    let am_root = unsafe { libc::geteuid() } == 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        st.stats.entries += 1;
        if budget.entries_left == 0 {
            return Err(UnpackError::Hostile {
                path: String::new(),
                reason: format!("the image has more than {MAX_ENTRIES} entries"),
            });
        }
        budget.entries_left -= 1;
        let raw: PathBuf = entry.path().map_err(corrupt)?.into_owned();
        let comps = clean(&raw)?;
        let kind = entry.header().entry_type();
        // Whiteouts.
        if let Some(last) = comps.last() {
            let name = last.as_bytes();
            if let Some(rest) = name.strip_prefix(b".wh.") {
                st.stats.whiteouts += 1;
                let parent = &comps[..comps.len() - 1];
                if rest == b".wh..opq" {
                    let dir = resolve(root, parent, true, &raw)?;
                    let dir = root.join(&dir);
                    ensure_dir(&dir, st)?;
                    purge_lower(&dir, &st.created)?;
                } else if rest.starts_with(b".wh.") {
                    // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                } else {
                    if rest.is_empty() || rest == b"." || rest == b".." {
                        return Err(hostile(&raw, "a whiteout must name an entry"));
                    }
                    match resolve(root, parent, false, &raw) {
                        Ok(dir) => remove_any(&root.join(dir).join(OsStr::from_bytes(rest)))?,
                        Err(UnpackError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
        }
        let header = entry.header();
        let mode = header.mode().map_err(corrupt)? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(corrupt)?)
            .map_err(|_| hostile(&raw, "uid out of range"))?;
        let gid = u32::try_from(header.gid().map_err(corrupt)?)
            .map_err(|_| hostile(&raw, "gid out of range"))?;
        let mtime = header.mtime().unwrap_or(0);
        let xattrs = xattrs_of(&mut entry);

        if comps.is_empty() {
            // The root itself ("./" or "/"): only its metadata can change.
            if kind == tar::EntryType::Directory {
                set_owner_mode(root, uid, gid, mode, am_root)?;
                st.dir_times.push((root.to_path_buf(), mtime));
            }
            continue;
        }
        let parent = resolve(root, &comps[..comps.len() - 1], true, &raw)?;
        let dest = root.join(parent).join(comps.last().unwrap());
        for dir in implicit_dirs(root, &dest) {
            st.created.insert(dir);
        }
        match kind {
            tar::EntryType::Directory => {
                let meta = fs::symlink_metadata(&dest);
                match meta {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&dest)?;
                        fs::create_dir(&dest)?;
                    }
                    Err(_) => fs::create_dir(&dest)?,
                }
                set_owner_mode(&dest, uid, gid, mode, am_root)?;
                apply_xattrs(&dest, &xattrs);
                st.dir_times.push((dest.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_any(&dest)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&dest)?;
                let written = copy_limited(&mut entry, &mut f, budget)?;
                st.stats.file_bytes += written;
                if am_root {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
                }
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                drop(f);
                apply_xattrs(&dest, &xattrs);
                let _ = set_mtime(&dest, mtime);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| hostile(&raw, "a symlink without a target"))?
                    .into_owned();
                if target.as_os_str().is_empty() {
                    return Err(hostile(&raw, "a symlink without a target"));
                }
                remove_any(&dest)?;
                // The target is stored as written: it is resolved by the kernel inside the
                // container, whose root is this directory. Cloister itself never follows it.
                std::os::unix::fs::symlink(&target, &dest)?;
                if am_root {
                    std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))?;
                }
                let _ = set_mtime(&dest, mtime);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| hostile(&raw, "a hard link without a target"))?
                    .into_owned();
                let tcomps = clean(&target)?;
                if tcomps.is_empty() {
                    return Err(hostile(&raw, "a hard link to the root"));
                }
                let tparent =
                    resolve(root, &tcomps[..tcomps.len() - 1], false, &target).map_err(|_| {
                        hostile(
                            &raw,
                            format!("hard link target {:?} is not in the image", target),
                        )
                    })?;
                let tpath = root.join(tparent).join(tcomps.last().unwrap());
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if m.is_dir() => return Err(hostile(&raw, "a hard link to a directory")),
                    Ok(_) => {}
                    Err(_) => {
                        return Err(hostile(
                            &raw,
                            format!("hard link target {:?} is not in the image", target),
                        ));
                    }
                }
                if tpath == dest {
                    continue;
                }
                remove_any(&dest)?;
                fs::hard_link(&tpath, &dest)?;
            }
            tar::EntryType::Fifo => {
                remove_any(&dest)?;
                let c = cstr(&dest)?;
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                set_owner_mode(&dest, uid, gid, mode, am_root)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                st.stats.skipped_devices += 1;
                continue;
            }
            _ => continue, // global PAX headers and vendor types carry no file
        }
        st.created.insert(dest);
    }
    Ok(())
}

/// The entry's name as normal components. Leading `/` and `.` are dropped; `..` pops a
/// component and is refused when nothing is left to pop (an escape attempt).
fn clean(raw: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut out: Vec<OsString> = Vec::new();
    for c in raw.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(hostile(raw, "the path climbs out of the root with '..'"));
                }
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Ok(out)
}

/// Resolves directory components inside `root` (see the module docs), creating missing
/// directories when `create`. Returns the resolved path relative to `root`.
fn resolve(
    root: &Path,
    comps: &[OsString],
    create: bool,
    raw: &Path,
) -> Result<PathBuf, UnpackError> {
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        if c.is_empty() || c == "." {
            continue;
        }
        let path = root.join(&cur).join(&c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(hostile(raw, "too many levels of symbolic links"));
                }
                let target = fs::read_link(&path)?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut parts: Vec<OsString> = Vec::new();
                for tc in target.components() {
                    match tc {
                        Component::Normal(n) => parts.push(n.to_os_string()),
                        Component::ParentDir => parts.push(OsString::from("..")),
                        _ => {}
                    }
                }
                for p in parts.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            Ok(m) if m.is_dir() => cur.push(&c),
            Ok(_) => return Err(hostile(raw, "a parent of the entry is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Err(UnpackError::Io(e));
                }
                fs::create_dir(&path)?;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
                cur.push(&c);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cur)
}

/// Directories between `root` and `dest` (they exist now; the opaque purge must keep them).
fn implicit_dirs(root: &Path, dest: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = dest.parent();
    while let Some(d) = p {
        if d == root || !d.starts_with(root) {
            break;
        }
        out.push(d.to_path_buf());
        p = d.parent();
    }
    out
}

fn ensure_dir(dir: &Path, st: &mut LayerState) -> Result<(), UnpackError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UnpackError::Corrupt(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(_) => {
            fs::create_dir(dir)?;
            st.created.insert(dir.to_path_buf());
            Ok(())
        }
    }
}

/// Removes every child of `dir` this layer did not create; recurses into kept directories.
fn purge_lower(dir: &Path, created: &HashSet<PathBuf>) -> Result<(), UnpackError> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let path = child.path();
        if !created.contains(&path) {
            remove_any(&path)?;
        } else if child.file_type()?.is_dir() {
            purge_lower(&path, created)?;
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (never following a symlink); absent is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32, am_root: bool) -> io::Result<()> {
    if am_root {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn copy_limited(
    from: &mut impl Read,
    to: &mut File,
    budget: &mut Budget,
) -> Result<u64, UnpackError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(corrupt)?;
        if n == 0 {
            return Ok(total);
        }
        if n as u64 > budget.files_left {
            return Err(UnpackError::TooLarge {
                limit: budget.limit,
            });
        }
        budget.files_left -= n as u64;
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let c = cstr(path)?;
    let secs = i64::try_from(mtime).unwrap_or(0) as libc::time_t;
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// PAX `SCHILY.xattr.*` records (file capabilities such as ping's `security.capability`).
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                // SELinux labels belong to the host's policy, not to the image.
                if name != b"security.selinux" && out.len() < 64 {
                    out.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    out
}

fn apply_xattrs(path: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    if xattrs.is_empty() {
        return;
    }
    let Ok(p) = cstr(path) else { return };
    for (name, value) in xattrs {
        let Ok(n) = CString::new(name.clone()) else {
            continue;
        };
        // Best effort: a file system without xattrs (or a non-root unpack) just lacks them.
        unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            );
        }
    }
}

/// Hashes and counts the decompressed stream; refuses to go past the budget.
struct Tracking<R> {
    inner: R,
    hasher: Context,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Tracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::other("the layer exceeds the size limit"));
        }
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// At the end of the inner stream, supplies the zero padding of the last block and the two
/// zero blocks of the end-of-archive marker (a missing trailer, containers.md P5).
struct ZeroPadAtEof<R> {
    inner: R,
    pos: u64,
    pad: Option<u64>,
}

impl<R: Read> Read for ZeroPadAtEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pad.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            self.pad = Some((512 - self.pos % 512) % 512 + 1024);
        }
        let left = self.pad.as_mut().unwrap();
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
