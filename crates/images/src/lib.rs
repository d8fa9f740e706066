//! OCI images from a registry into a content-addressed, read-only store.
//!
//! [`ImageStore::pull`] resolves a reference (`host[:port]/repo[:tag][@sha256:…]`) over the
//! OCI distribution API, picks the linux/amd64 manifest of an index, downloads what the store
//! lacks while hashing it (every manifest, config and layer is checked against its sha256
//! digest; a size is never trusted alone), applies the layers once per manifest digest into a
//! root filesystem (whiteouts, links, ownership and modes; hostile layers refused or contained,
//! see [`unpack`]), and returns it read-only, for a runtime to use as an overlay's lower dir.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cloister_images::PullError> {
//! use cloister_images::{ImageStore, PullOptions};
//! let store = ImageStore::open("/var/lib/cloister/images").expect("store");
//! let opts = PullOptions { plain_http: vec!["127.0.0.1:5000".into()], ..PullOptions::default() };
//! let image = store.pull("127.0.0.1:5000/cloister/test:1", None, &opts).await?;
//! println!("{} at {}", image.digest, image.rootfs.display());
//! # Ok(()) }
//! ```
//!
//! Store layout under the root directory (mode 0711, owned by the server's user):
//! ```text
//! blobs/sha256/<hex>        verified blobs: manifests, indexes, configs, layers (0700 dir)
//! blobs/scopes/<hex>        the `registry/repository` pairs each blob was verified from
//! images/<hex>/image.json   what was pulled: reference, manifest digest, config, blob list
//! images/<hex>/rootfs/      the unpacked layers; a read-only, nosuid, nodev bind mount of itself
//! locks/<hex>.lock          one flock per manifest digest (across processes), locks/gc.lock
//! tmp/                      downloads and unpacks in progress (renamed into place when done)
//! ```
//! Architecture invariant: this crate knows nothing of pools, sessions or runtimes; it never
//! starts a process.

pub mod manifest;
pub mod reference;
mod registry;
pub mod unpack;

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use manifest::ImageConfig;
pub use reference::{Reference, ReferenceError};

use manifest::{Document, MAX_DOCUMENT};
use registry::Registry;

/// Credentials for a registry. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    /// A password, or a token that the registry's token service accepts as one.
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a pull may talk to registries and how much it may take.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registry hosts (`host:port` as in the reference) spoken to over plain HTTP. Every other
    /// host is HTTPS only.
    pub plain_http: Vec<String>,
    /// The whole pull (resolution, downloads, unpack) must finish within this.
    pub timeout: Duration,
    /// Upper bound on the downloaded bytes, and separately on the unpacked bytes (the
    /// decompressed tar streams and the file contents written).
    pub max_bytes: u64,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            plain_http: Vec::new(),
            timeout: Duration::from_secs(600),
            max_bytes: 8 << 30,
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference it was (first) pulled by.
    pub reference: String,
    /// The linux/amd64 manifest's digest, `sha256:<hex>` (the store's key).
    pub digest: String,
    /// The read-only root filesystem.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// Why a pull failed. Messages name the image and the registry, never a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The repository, tag or digest does not exist (or no linux/amd64 manifest).
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused the credentials, or needs some.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Connecting, TLS, timeouts, unexpected statuses.
    #[error("network: {0}")]
    Network(String),
    /// A malformed reference, manifest, config or layer (hostile layers included).
    #[error("invalid: {0}")]
    Invalid(String),
    /// More than `max_bytes`.
    #[error("too large: {what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// The local store failed (disk full, permissions).
    #[error("image store: {0}")]
    Storage(String),
}

impl From<ReferenceError> for PullError {
    fn from(e: ReferenceError) -> Self {
        PullError::Invalid(e.to_string())
    }
}

/// Counters of what this `ImageStore` value did (for status and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Blobs downloaded (not found in the store).
    pub blob_downloads: u64,
    /// Images unpacked.
    pub unpacks: u64,
}

#[derive(Serialize, Deserialize)]
struct ImageRecord {
    reference: String,
    digest: String,
    config: ImageConfig,
    /// Every blob this image needs (manifest, config, layers), for garbage collection.
    blobs: Vec<String>,
    /// `registry/repository` pairs it was verified from (see `pull`).
    #[serde(default)]
    sources: Vec<String>,
    /// The boot it was unpacked in, and whether its files are known to be on disk since
    /// (`syncfs` runs after the pull has returned, off the pull's path). An image neither
    /// synced nor from this boot may have lost data in a crash: it is unpacked again.
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    synced: bool,
}

impl ImageRecord {
    fn trusted(&self) -> bool {
        self.synced || (!self.boot_id.is_empty() && self.boot_id == boot_id())
    }
}

fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// The content-addressed image store. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    blob_downloads: AtomicU64,
    unpacks: AtomicU64,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating) a store at `root`, and re-establishes the read-only mounts of the
    /// images already in it (they do not survive a reboot).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<ImageStore> {
        let root: PathBuf = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        fs::create_dir_all(&root)?;
        // The mount table names resolved paths; so must we (a symlinked root would otherwise
        // stack a new bind mount on every check).
        let root = fs::canonicalize(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711))?;
        for (dir, mode) in [
            ("blobs/sha256", 0o700),
            ("blobs/scopes", 0o700),
            ("images", 0o711),
            ("locks", 0o700),
            ("tmp", 0o700),
        ] {
            let p = root.join(dir);
            fs::create_dir_all(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
        fs::set_permissions(root.join("blobs"), fs::Permissions::from_mode(0o700))?;
        // Leftovers of removals and of downloads that died more than a day ago.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            let day = Duration::from_secs(86_400);
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a > day);
                if name.starts_with("removed.") || (name.starts_with("blob.") && old) {
                    let _ = if e.path().is_dir() {
                        fs::remove_dir_all(e.path())
                    } else {
                        fs::remove_file(e.path())
                    };
                }
            }
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                root,
                blob_downloads: AtomicU64::new(0),
                unpacks: AtomicU64::new(0),
            }),
        };
        if let Ok(entries) = fs::read_dir(store.inner.root.join("images")) {
            for e in entries.flatten() {
                let hex = e.file_name().to_string_lossy().to_string();
                if reference::is_sha256_digest(&format!("sha256:{hex}"))
                    && store.read_record(&hex).is_none()
                {
                    let _lock = mount::flock(
                        &store.inner.root.join("locks").join(format!("{hex}.lock")),
                        true,
                    )?;
                    if let Err(e) = store.discard_untrusted(&hex) {
                        tracing::warn!(digest = %hex, error = %e, "cannot discard an incomplete image");
                    }
                }
            }
        }
        for image in store.list() {
            if let Err(e) = mount::make_read_only(&image.rootfs) {
                tracing::warn!(rootfs = %image.rootfs.display(), error = %e, "cannot make an image's rootfs read-only");
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            blob_downloads: self.inner.blob_downloads.load(Ordering::Relaxed),
            unpacks: self.inner.unpacks.load(Ordering::Relaxed),
        }
    }

    /// Resolves `reference`, pulls what is missing, verifies every blob's digest, unpacks the
    /// layers once per image digest into a read-only rootfs, and returns it. Concurrent pulls
    /// of the same image (in this process or others on the same root) share one download and
    /// one unpack.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        opts: &PullOptions,
    ) -> Result<Image, PullError> {
        let r = Reference::parse(reference)?;
        match tokio::time::timeout(opts.timeout, self.pull_inner(&r, auth, opts)).await {
            Ok(result) => result,
            Err(_) => Err(PullError::Network(format!(
                "pulling {r} timed out after {:?}",
                opts.timeout
            ))),
        }
    }

    async fn pull_inner(
        &self,
        r: &Reference,
        auth: Option<&RegistryAuth>,
        opts: &PullOptions,
    ) -> Result<Image, PullError> {
        let reference = r.to_string();
        // Every pull asks the registry for the manifest with the caller's credentials, even
        // when the store has the image: that is what proves this caller may have it.
        let mut reg = Registry::new(
            r.api_host(),
            &r.repository,
            auth,
            &opts.plain_http,
            opts.timeout,
        )?;
        let scope = format!("{}/{}", r.registry.to_ascii_lowercase(), r.repository);
        let mut budget_left = opts.max_bytes;

        let fetched = reg.manifest(r.manifest_ref(), MAX_DOCUMENT).await?;
        let mut digest = sha256_of(&fetched.bytes);
        if let Some(pinned) = &r.digest
            && *pinned != digest
        {
            return Err(PullError::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: pinned.clone(),
                actual: digest,
            });
        }
        let mut blobs = Vec::new();
        let mut doc = manifest::parse_document(&fetched.bytes, fetched.content_type.as_deref())
            .map_err(PullError::Invalid)?;
        let mut manifest_bytes = fetched.bytes;
        if let Document::Index(list) = &doc {
            self.store_blob_bytes(&digest, &manifest_bytes, &scope)?;
            blobs.push(digest.clone());
            let chosen = manifest::pick_platform(list).ok_or_else(|| {
                PullError::NotFound(format!("{reference} has no linux/amd64 image"))
            })?;
            let want = chosen.digest.clone();
            if chosen.size > MAX_DOCUMENT {
                return Err(PullError::TooLarge {
                    what: format!("manifest {want}"),
                    limit: MAX_DOCUMENT,
                });
            }
            let inner = reg.manifest(&want, MAX_DOCUMENT).await?;
            let got = sha256_of(&inner.bytes);
            if got != want {
                return Err(PullError::DigestMismatch {
                    what: format!("manifest of {reference}"),
                    expected: want,
                    actual: got,
                });
            }
            doc = manifest::parse_document(&inner.bytes, inner.content_type.as_deref())
                .map_err(PullError::Invalid)?;
            if matches!(doc, Document::Index(_)) {
                return Err(PullError::Invalid(format!(
                    "{reference}: an index inside an index is not supported"
                )));
            }
            digest = got;
            manifest_bytes = inner.bytes;
        }
        let Document::Manifest { config, layers } = doc else {
            unreachable!("indexes were resolved above")
        };
        let hex = digest.trim_start_matches("sha256:").to_string();

        if let Some(image) = self.local_image(&hex, &scope, &reference) {
            return Ok(image);
        }

        // One puller per digest; the others wait here and then find the image in place.
        let lock = self.lock(&format!("{hex}.lock"), true).await?;
        let gc = self.lock("gc.lock", false).await?;
        if let Some(image) = self.local_image(&hex, &scope, &reference) {
            return Ok(image);
        }
        self.store_blob_bytes(&digest, &manifest_bytes, &scope)?;
        blobs.push(digest.clone());

        let declared: u64 = layers
            .iter()
            .map(|l| l.size)
            .sum::<u64>()
            .saturating_add(config.size);
        if declared > opts.max_bytes {
            return Err(PullError::TooLarge {
                what: format!("image {reference} ({declared} bytes)"),
                limit: opts.max_bytes,
            });
        }
        let config_path = self
            .fetch_blob(
                &mut reg,
                &config.digest,
                config.size,
                &mut budget_left,
                &scope,
            )
            .await?;
        blobs.push(config.digest.clone());
        let config_bytes = fs::read(&config_path).map_err(storage)?;
        let (image_config, diff_ids) =
            manifest::parse_config(&config_bytes).map_err(PullError::Invalid)?;
        if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
            return Err(PullError::Invalid(format!(
                "{reference}: the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let mut layer_files = Vec::new();
        for l in &layers {
            let path = self
                .fetch_blob(&mut reg, &l.digest, l.size, &mut budget_left, &scope)
                .await?;
            blobs.push(l.digest.clone());
            layer_files.push((path, l.compression));
        }

        // Unpacked already for another registry or repository: this caller has now shown it
        // can fetch every blob of it from its own, so the image gains that source.
        if let Some(mut record) = self.read_record(&hex) {
            if !record.sources.contains(&scope) {
                record.sources.push(scope.clone());
                self.write_record(&hex, &record)?;
            }
            let mut image = self.image_of(&hex, record);
            image.reference = reference;
            mount::make_read_only(&image.rootfs).map_err(|e| PullError::Storage(e.to_string()))?;
            return Ok(image);
        }

        self.discard_untrusted(&hex).map_err(storage)?;

        // Unpack on a blocking thread that owns the lock: a cancelled pull cannot release it
        // while the rootfs is half written.
        let store = self.clone();
        let record = ImageRecord {
            reference: reference.clone(),
            digest: digest.clone(),
            config: image_config,
            blobs,
            sources: vec![scope],
            boot_id: boot_id().to_string(),
            synced: false,
        };
        let max = opts.max_bytes;
        tokio::task::spawn_blocking(move || {
            let _held = (lock, gc);
            store.unpack_image(&hex, &record, &layer_files, &diff_ids, max)
        })
        .await
        .map_err(|e| PullError::Storage(format!("the unpack task failed: {e}")))?
    }

    fn unpack_image(
        &self,
        hex: &str,
        record: &ImageRecord,
        layers: &[(PathBuf, manifest::Compression)],
        diff_ids: &[String],
        max: u64,
    ) -> Result<Image, PullError> {
        let tmp_root = self.inner.root.join("tmp");
        // Leftovers of a crashed unpack of this digest (we hold its lock, so nobody is using them).
        if let Ok(entries) = fs::read_dir(&tmp_root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{hex}."))
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let work = tmp_root.join(format!("{hex}.{}", std::process::id()));
        let rootfs = work.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(storage)?;
        fs::set_permissions(&work, fs::Permissions::from_mode(0o711)).map_err(storage)?;
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).map_err(storage)?;
        let result = (|| -> Result<PathBuf, PullError> {
            let mut budget = unpack::Budget::new(max);
            for (i, (path, compression)) in layers.iter().enumerate() {
                let file = File::open(path).map_err(storage)?;
                let diff_id = diff_ids.get(i).map(String::as_str);
                unpack::apply_layer(file, *compression, &rootfs, &mut budget, diff_id).map_err(
                    |e| match e {
                        unpack::UnpackError::TooLarge { limit } => PullError::TooLarge {
                            what: format!("{} unpacked", record.reference),
                            limit,
                        },
                        unpack::UnpackError::DiffIdMismatch { expected, actual } => {
                            PullError::DigestMismatch {
                                what: format!("layer {} of {} (diff_id)", i + 1, record.reference),
                                expected,
                                actual,
                            }
                        }
                        unpack::UnpackError::Io(e) => {
                            PullError::Storage(format!("unpacking {}: {e}", record.reference))
                        }
                        other => PullError::Invalid(format!(
                            "layer {} of {}: {other}",
                            i + 1,
                            record.reference
                        )),
                    },
                )?;
            }
            let json =
                serde_json::to_vec_pretty(record).map_err(|e| PullError::Storage(e.to_string()))?;
            fs::write(work.join("image.json"), json).map_err(storage)?;
            let dest = self.inner.root.join("images").join(hex);
            fs::rename(&work, &dest).map_err(storage)?;
            Ok(dest)
        })();
        let dest = match result {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        self.inner.unpacks.fetch_add(1, Ordering::Relaxed);
        // Make it durable off the pull's path (syncfs waits for every dirty page of the file
        // system, other writers' too); until then the record says it is from this boot only.
        let store = self.clone();
        let hex_owned = hex.to_string();
        std::thread::spawn(move || {
            let lock = store
                .inner
                .root
                .join("locks")
                .join(format!("{hex_owned}.lock"));
            if mount::syncfs(&store.inner.root.join("images").join(&hex_owned)).is_ok()
                && let Ok(_held) = mount::flock(&lock, true)
                && let Some(mut rec) = store.read_record(&hex_owned)
                && !rec.synced
            {
                rec.synced = true;
                let _ = store.write_record(&hex_owned, &rec);
            }
        });
        let rootfs = dest.join("rootfs");
        mount::make_read_only(&rootfs).map_err(|e| {
            PullError::Storage(format!("making {} read-only: {e}", rootfs.display()))
        })?;
        tracing::info!(image = %record.reference, digest = %record.digest, "image unpacked");
        Ok(Image {
            reference: record.reference.clone(),
            digest: record.digest.clone(),
            rootfs,
            config: record.config.clone(),
        })
    }

    /// The image with this manifest digest, when the store has it for `scope` (the
    /// registry/repository it was verified from).
    fn local_image(&self, hex: &str, scope: &str, reference: &str) -> Option<Image> {
        let record = self.read_record(hex)?;
        if !record.sources.iter().any(|s| s == scope) {
            return None;
        }
        let mut image = self.image_of(hex, record);
        image.reference = reference.to_string();
        match mount::make_read_only(&image.rootfs) {
            Ok(()) => Some(image),
            Err(e) => {
                tracing::warn!(rootfs = %image.rootfs.display(), error = %e, "cannot make an image's rootfs read-only");
                None
            }
        }
    }

    /// The record of a complete image (see `ImageRecord::trusted`).
    fn read_record(&self, hex: &str) -> Option<ImageRecord> {
        self.read_record_raw(hex).filter(ImageRecord::trusted)
    }

    fn read_record_raw(&self, hex: &str) -> Option<ImageRecord> {
        let dir = self.inner.root.join("images").join(hex);
        serde_json::from_slice(&fs::read(dir.join("image.json")).ok()?).ok()
    }

    /// Deletes an image directory whose record is missing or untrusted (the caller holds the
    /// digest's lock).
    fn discard_untrusted(&self, hex: &str) -> io::Result<()> {
        let dir = self.inner.root.join("images").join(hex);
        if !dir.exists() || self.read_record(hex).is_some() {
            return Ok(());
        }
        tracing::warn!(digest = %hex, "discarding an image that may not have reached the disk before a crash");
        mount::unmount(&dir.join("rootfs"))?;
        let doomed = self
            .inner
            .root
            .join("tmp")
            .join(format!("removed.{hex}.{}", rand_suffix()));
        fs::rename(&dir, &doomed)?;
        fs::remove_dir_all(&doomed)
    }

    fn write_record(&self, hex: &str, record: &ImageRecord) -> Result<(), PullError> {
        let dir = self.inner.root.join("images").join(hex);
        let tmp = dir.join(format!("image.json.{}", rand_suffix()));
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| PullError::Storage(e.to_string()))?;
        fs::write(&tmp, json).map_err(storage)?;
        fs::rename(&tmp, dir.join("image.json")).map_err(storage)
    }

    fn image_of(&self, hex: &str, rec: ImageRecord) -> Image {
        let rootfs = self.inner.root.join("images").join(hex).join("rootfs");
        Image {
            reference: rec.reference,
            digest: rec.digest,
            rootfs,
            config: rec.config,
        }
    }

    fn read_image(&self, hex: &str) -> Option<Image> {
        let rec = self.read_record(hex)?;
        Some(self.image_of(hex, rec))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner
            .root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn scopes_path(&self, digest: &str) -> PathBuf {
        self.inner
            .root
            .join("blobs/scopes")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Whether the blob is in the store and was verified from `scope`.
    fn blob_in_scope(&self, digest: &str, scope: &str) -> bool {
        self.blob_path(digest).exists()
            && fs::read_to_string(self.scopes_path(digest))
                .is_ok_and(|s| s.lines().any(|l| l == scope))
    }

    fn add_scope(&self, digest: &str, scope: &str) -> Result<(), PullError> {
        use std::io::Write;
        if self.blob_in_scope(digest, scope) {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scopes_path(digest))
            .map_err(storage)?;
        f.write_all(format!("{scope}\n").as_bytes())
            .map_err(storage)
    }

    fn store_blob_bytes(&self, digest: &str, bytes: &[u8], scope: &str) -> Result<(), PullError> {
        let path = self.blob_path(digest);
        if !path.exists() {
            let tmp = self.inner.root.join("tmp").join(format!(
                "blob.{}.{}",
                digest.trim_start_matches("sha256:"),
                rand_suffix()
            ));
            fs::write(&tmp, bytes).map_err(storage)?;
            fs::rename(&tmp, &path).map_err(storage)?;
        }
        self.add_scope(digest, scope)
    }

    /// Returns the path of a verified blob, downloading it unless the store has it from the
    /// same registry and repository (a blob known from elsewhere is fetched again: having
    /// its digest proves nothing about access to it).
    async fn fetch_blob(
        &self,
        reg: &mut Registry,
        digest: &str,
        limit: u64,
        budget_left: &mut u64,
        scope: &str,
    ) -> Result<PathBuf, PullError> {
        let path = self.blob_path(digest);
        if self.blob_in_scope(digest, scope) {
            return Ok(path);
        }
        let tmp = self.inner.root.join("tmp").join(format!(
            "blob.{}.{}",
            digest.trim_start_matches("sha256:"),
            rand_suffix()
        ));
        let result = reg
            .blob_to_file(digest, &tmp, limit.min(*budget_left))
            .await;
        let (actual, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if actual != digest {
            let _ = fs::remove_file(&tmp);
            return Err(PullError::DigestMismatch {
                what: format!("blob {digest}"),
                expected: digest.to_string(),
                actual,
            });
        }
        *budget_left = budget_left.saturating_sub(size);
        if path.exists() {
            let _ = fs::remove_file(&tmp); // the same bytes, as the hash says
        } else {
            fs::rename(&tmp, &path).map_err(storage)?;
        }
        self.add_scope(digest, scope)?;
        self.inner.blob_downloads.fetch_add(1, Ordering::Relaxed);
        Ok(path)
    }

    async fn lock(&self, name: &str, exclusive: bool) -> Result<File, PullError> {
        let path = self.inner.root.join("locks").join(name);
        tokio::task::spawn_blocking(move || mount::flock(&path, exclusive))
            .await
            .map_err(|e| PullError::Storage(format!("lock task: {e}")))?
            .map_err(storage)
    }

    /// The image with this manifest digest, when the store has it (no registry check: for
    /// status and GC, not for handing an image to a new caller; `pull` is for that).
    pub fn get(&self, digest: &str) -> Option<Image> {
        if !reference::is_sha256_digest(digest) {
            return None;
        }
        self.read_image(digest.trim_start_matches("sha256:"))
    }

    /// Images present.
    pub fn list(&self) -> Vec<Image> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(self.inner.root.join("images")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(image) = self.read_image(&name) {
                    out.push(image);
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Removes an image (its rootfs and the blobs no other image uses). The caller makes
    /// sure no session still uses it.
    pub fn remove(&self, digest: &str) -> io::Result<()> {
        if !reference::is_sha256_digest(digest) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "digest must be sha256:<64 hex>",
            ));
        }
        let hex = digest.trim_start_matches("sha256:");
        let _lock = mount::flock(
            &self.inner.root.join("locks").join(format!("{hex}.lock")),
            true,
        )?;
        let _gc = mount::flock(&self.inner.root.join("locks/gc.lock"), true)?;
        let dir = self.inner.root.join("images").join(hex);
        let rec: Option<ImageRecord> = fs::read(dir.join("image.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if !dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no image {digest} in the store"),
            ));
        }
        mount::unmount(&dir.join("rootfs"))?;
        let doomed = self
            .inner
            .root
            .join("tmp")
            .join(format!("removed.{hex}.{}", rand_suffix()));
        fs::rename(&dir, &doomed)?;
        fs::remove_dir_all(&doomed)?;
        if let Some(rec) = rec {
            let mut keep = HashSet::new();
            for e in fs::read_dir(self.inner.root.join("images"))?.flatten() {
                if let Ok(b) = fs::read(e.path().join("image.json"))
                    && let Ok(other) = serde_json::from_slice::<ImageRecord>(&b)
                {
                    keep.extend(other.blobs);
                }
            }
            for b in rec.blobs {
                if !keep.contains(&b) && reference::is_sha256_digest(&b) {
                    let _ = fs::remove_file(self.blob_path(&b));
                    let _ = fs::remove_file(self.scopes_path(&b));
                }
            }
        }
        Ok(())
    }

    /// Removes the read-only mounts of every image (at shutdown, or before deleting the
    /// store's directory). `open` puts them back.
    pub fn unmount_all(&self) {
        for image in self.list() {
            let _ = mount::unmount(&image.rootfs);
        }
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
    )
}

fn storage(e: io::Error) -> PullError {
    PullError::Storage(e.to_string())
}

fn rand_suffix() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

mod mount {
    //! Read-only bind mounts, flock and syncfs (libc; Linux only).
    use std::ffi::CString;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cstr(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    }

    /// Whether `path` is a mount point (from /proc/self/mountinfo).
    fn is_mount_point(path: &Path) -> io::Result<bool> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let want = path.as_os_str().as_bytes();
        Ok(info.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape(mp).as_slice() == want)
        }))
    }

    fn unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// Makes `dir` a read-only, nosuid, nodev bind mount of itself (idempotent).
    pub fn make_read_only(dir: &Path) -> io::Result<()> {
        if is_mount_point(dir)? {
            return Ok(());
        }
        let c = cstr(dir)?;
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let flags =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            return Err(e);
        }
        Ok(())
    }

    /// Detaches the mount at `dir`, if there is one.
    pub fn unmount(dir: &Path) -> io::Result<()> {
        while is_mount_point(dir)? {
            let c = cstr(dir)?;
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// An exclusive or shared flock on `path` (created), held while the file stays open.
    pub fn flock(path: &Path, exclusive: bool) -> io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(f);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    pub fn syncfs(path: &Path) -> io::Result<()> {
        let f = File::open(path)?;
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
