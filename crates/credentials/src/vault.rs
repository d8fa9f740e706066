//! The token store's encryption: envelope encryption with a versioned key-encryption-key
//! (KEK) ring.
//!
//! # Layers
//!
//! 1. **Data key (DEK)**: every [`Vault::seal`] draws a fresh random 256-bit key and a fresh
//!    96-bit nonce and encrypts the plaintext with AES-256-GCM. A DEK encrypts exactly one
//!    record once, so nonce wear-out never arises for DEKs.
//! 2. **Key-encryption key (KEK)**: the DEK is wrapped (AES-256-GCM, random nonce) by the
//!    ring's *primary* KEK — the highest version in table `cred_keks`. Old versions stay in the
//!    ring so records wrapped under them remain readable until the rotation job re-wraps them.
//! 3. **Key provider** ([`KeyProvider`]): each KEK is stored only wrapped by the provider.
//!    The embedded default is [`LocalKeyProvider`], backed by Cloister's master key
//!    ([`cloister_crypto::MasterKey`], from `CLOISTER_MASTER_KEY` or `DATA_DIR/master.key`).
//!    The vault asks the provider to unwrap each KEK version once, when it loads the ring, and
//!    keeps the unwrapped KEKs in memory only.
//!
//! # Record format
//!
//! A sealed record is stored as standard base64 (TEXT) of:
//!
//! ```text
//! offset  size  field
//! 0       2     magic "CV"
//! 2       1     format version = 1
//! 3       1     alg: 1 = AES-256-GCM (32-byte DEK; all writes), 2 = AES-128-GCM (16-byte
//!               DEK; read, and re-wrapped, but never written)
//! 4       4     KEK version, u32 big-endian (>= 1)
//! 8       12    DEK-wrap nonce
//! 20      K+16  wrapped DEK: AES-256-GCM(KEK, DEK) ciphertext (K = 32 or 16) and tag
//! ..      12    data nonce
//! ..      n+16  AES-GCM(DEK, plaintext) ciphertext and tag
//! ```
//!
//! Associated data (the `|`-joined parts are escaped: `\` becomes `\\` and `|` becomes `\|`,
//! so no two contexts give the same string; instance, provider and connection are
//! lower-cased, as they are in the store's `_lc` columns):
//!
//! - data AEAD: `cloister-cred/v1|{instance}|{provider}|{connection}|{field}`
//! - DEK wrap:  `cloister-cred-dek/v1|{instance}|{provider}|{connection}|{kek_version}|{alg}`
//! - KEK wrap by the provider: `cloister-cred-kek/v1|{kek_version}`
//!
//! The DEK wrap binds the record to its instance, provider, connection, KEK version and
//! algorithm; the data AEAD binds it to its instance, provider, connection and field. Copying
//! a blob to another connection, provider, instance or field, or changing any byte of it,
//! makes [`Vault::unseal`] fail with [`VaultError::Tampered`]. (A changed KEK-version field
//! that names a version the ring does not have gives [`VaultError::UnknownKeyVersion`]:
//! without the key there is nothing to authenticate the header with.) The KEK version is
//! bound by the DEK wrap rather than by the data AEAD so that re-wrapping leaves the payload
//! bytes untouched. What AEAD cannot detect is a row rolled back to an *earlier* blob of the
//! same record.
//!
//! # Rotation
//!
//! [`Vault::rotate`] adds a KEK version (a fresh random key, wrapped by the provider) which
//! becomes the primary; [`Vault::rewrap_all`] then walks the records still under older
//! versions in batches and, for each, unwraps the DEK with the old KEK and wraps it with the
//! primary ([`Vault::rewrap`]) — the 32 DEK bytes are re-encrypted, never the payload. Each
//! batch is written in one transaction with a compare-and-swap on `(kek_version, blob)`, so
//! the job is idempotent and resumable: stopping it anywhere (process killed, task cancelled)
//! leaves every row either as it was or fully re-wrapped, both readable, and running it again
//! finishes the work. A record written concurrently by another writer is never overwritten.
//! [`Vault::pending_rewrap`] counts the rows still to do (a metric), and
//! [`Vault::rotate_if_due`] implements the monthly schedule ([`DEFAULT_ROTATION_INTERVAL`]).
//! Old KEK versions stay in the ring (as AWS KMS keeps old backing keys), so a record that a
//! lagging node wrote under an old version stays readable.
//!
//! Several nodes may share one store: versions are inserted with `ON CONFLICT DO NOTHING`,
//! [`Vault::reload`] picks up versions another node added, and [`Vault::get_secret`] reloads
//! by itself when it meets a version newer than any it knows.
//!
//! # Plugging in an outside KMS
//!
//! Implement [`KeyProvider`] with the KMS's wrap/unwrap (or encrypt/decrypt) operations on
//! the 32-byte KEK, passing `aad` as the KMS's associated data / encryption context, and give
//! it to [`Vault::open`]:
//!
//! ```ignore
//! struct AwsKms { client: aws_sdk_kms::Client, key_id: String, rt: tokio::runtime::Handle }
//!
//! impl KeyProvider for AwsKms {
//!     fn id(&self) -> String { format!("aws-kms:{}", self.key_id) }
//!     fn wrap(&self, kek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
//!         // KMS Encrypt(KeyId, Plaintext = kek, EncryptionContext = {"cloister": aad})
//!         // -> CiphertextBlob
//!     }
//!     fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<[u8; 32], VaultError> {
//!         // KMS Decrypt(CiphertextBlob = wrapped, EncryptionContext = {"cloister": aad})
//!         // -> Plaintext (exactly 32 bytes, else VaultError::KeyProvider)
//!     }
//! }
//! ```
//!
//! Rules for an implementation: `unwrap(wrap(k, aad), aad)` must return `k`, and must fail
//! when `aad` differs; the wrapped form may be any bytes (the vault stores it base64); the
//! plaintext KEK must never be persisted or logged. The methods may block (network calls):
//! the vault calls them on Tokio's blocking pool, and only when it loads the ring, reloads it,
//! or rotates — never per record. PKCS#11 (`C_WrapKey`/`C_UnwrapKey` or
//! `C_Encrypt`/`C_Decrypt`), Vault transit (`encrypt`/`decrypt` with `context`), Azure Key
//! Vault (`wrapKey`/`unwrapKey`) and GCP KMS fit the same shape. `id()` is recorded with
//! each KEK version, so a ring can hold versions wrapped by different providers while moving
//! from one to another; the vault uses one provider at a time, so moving means re-wrapping
//! the old versions' KEKs, or rotating and re-wrapping every record.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_crypto::MasterKey;
use cloister_store::{KekRow, SecretCursor, SecretRewrap, SecretRow, Store, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use zeroize::Zeroizing;

/// The first two bytes of every sealed record.
pub const MAGIC: [u8; 2] = *b"CV";
/// The record format this module writes.
pub const FORMAT_VERSION: u8 = 1;
/// Header: magic, format version, alg, KEK version.
pub const HEADER_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// How often [`Vault::rotate_if_due`] rotates by default: monthly (30 days).
pub const DEFAULT_ROTATION_INTERVAL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Rows per transaction in [`Vault::rotate_and_rewrap`].
pub const DEFAULT_REWRAP_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Authentication failed: the record was altered, is malformed, or belongs to another
    /// instance, provider, connection or field.
    #[error("sealed record refused: it was altered, is malformed, or belongs to another record")]
    Tampered,
    /// The record names a KEK version that the ring does not have.
    #[error("sealed record is wrapped under key version {0}, which the key ring does not have")]
    UnknownKeyVersion(u32),
    /// The key provider could not wrap or unwrap a KEK (wrong master key, KMS unreachable...).
    #[error("key provider: {0}")]
    KeyProvider(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, VaultError>;

// ---- key providers ---------------------------------------------------------------------------

/// Wraps and unwraps the 32-byte key-encryption keys. See the module documentation for how
/// to implement one for an outside KMS.
pub trait KeyProvider: Send + Sync {
    /// A stable name for this provider and key, recorded with each KEK version it wraps.
    fn id(&self) -> String;
    /// Encrypts `kek`, authenticating `aad`.
    fn wrap(&self, kek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>>;
    /// Reverses [`KeyProvider::wrap`]; fails if `wrapped` or `aad` differ.
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<[u8; 32]>;
}

/// The embedded key provider: KEKs are sealed under Cloister's master key.
pub struct LocalKeyProvider {
    mk: Arc<MasterKey>,
    id: String,
}

impl LocalKeyProvider {
    pub fn new(mk: Arc<MasterKey>) -> LocalKeyProvider {
        // A fingerprint (a keyed hash of nothing) tells master keys apart in `cred_keks`
        // without revealing anything about the key.
        let fp = mk.keyed_hash("cred-vault-provider-id", b"");
        LocalKeyProvider {
            id: format!("local:{}", &fp[..fp.len().min(16)]),
            mk,
        }
    }

    /// The master key from `CLOISTER_MASTER_KEY` (base64) if set, else from
    /// `DATA_DIR/master.key` (created with mode 0600 if absent) — as the server loads it.
    pub fn from_env_or_file(data_dir: &Path) -> Result<LocalKeyProvider> {
        let mk = match std::env::var("CLOISTER_MASTER_KEY") {
            Ok(v) if !v.is_empty() => MasterKey::from_base64(&v)
                .map_err(|e| VaultError::KeyProvider(format!("CLOISTER_MASTER_KEY: {e}")))?,
            _ => MasterKey::load_or_create(&data_dir.join("master.key"))
                .map_err(|e| VaultError::KeyProvider(format!("master key: {e}")))?,
        };
        Ok(LocalKeyProvider::new(Arc::new(mk)))
    }
}

impl KeyProvider for LocalKeyProvider {
    fn id(&self) -> String {
        self.id.clone()
    }
    fn wrap(&self, kek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>> {
        Ok(self.mk.seal(kek, aad))
    }
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<[u8; 32]> {
        let pt = Zeroizing::new(self.mk.open(wrapped, aad).map_err(|_| {
            VaultError::KeyProvider(
                "the master key cannot unwrap this key (a different master key?)".into(),
            )
        })?);
        pt.as_slice()
            .try_into()
            .map_err(|_| VaultError::KeyProvider("unwrapped key is not 32 bytes".into()))
    }
}

// ---- record context and format ---------------------------------------------------------------

/// What a sealed record belongs to; it is bound into the record's associated data, so the
/// same context must be given to open it. `connection` is `""` for provider-level secrets.
/// Instance, provider and connection are compared case-insensitively (lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordContext {
    pub instance: String,
    pub provider: String,
    pub connection: String,
    pub field: String,
}

fn push_part(out: &mut String, part: &str) {
    out.push('|');
    for ch in part.chars() {
        if ch == '|' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
}

impl RecordContext {
    pub fn new(
        instance: impl Into<String>,
        provider: impl Into<String>,
        connection: impl Into<String>,
        field: impl Into<String>,
    ) -> RecordContext {
        RecordContext {
            instance: instance.into().to_lowercase(),
            provider: provider.into().to_lowercase(),
            connection: connection.into().to_lowercase(),
            field: field.into(),
        }
    }

    fn ids(&self, prefix: &str) -> String {
        let mut s = String::from(prefix);
        push_part(&mut s, &self.instance.to_lowercase());
        push_part(&mut s, &self.provider.to_lowercase());
        push_part(&mut s, &self.connection.to_lowercase());
        s
    }

    /// Associated data of the payload AEAD.
    pub fn data_aad(&self) -> Vec<u8> {
        let mut s = self.ids("cloister-cred/v1");
        push_part(&mut s, &self.field);
        s.into_bytes()
    }

    /// Associated data of the DEK wrap.
    pub fn dek_aad(&self, kek_version: u32, alg: Alg) -> Vec<u8> {
        let mut s = self.ids("cloister-cred-dek/v1");
        s.push_str(&format!("|{kek_version}|{}", alg as u8));
        s.into_bytes()
    }
}

/// Associated data with which the provider wraps KEK `version`.
pub fn kek_aad(version: u32) -> Vec<u8> {
    format!("cloister-cred-kek/v1|{version}").into_bytes()
}

/// The payload algorithm of a record (the DEK wrap is always AES-256-GCM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alg {
    Aes256Gcm = 1,
    Aes128Gcm = 2,
}

impl Alg {
    pub fn from_byte(b: u8) -> Option<Alg> {
        match b {
            1 => Some(Alg::Aes256Gcm),
            2 => Some(Alg::Aes128Gcm),
            _ => None,
        }
    }
    /// DEK length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Alg::Aes256Gcm => 32,
            Alg::Aes128Gcm => 16,
        }
    }
    fn aead(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Alg::Aes256Gcm => &AES_256_GCM,
            Alg::Aes128Gcm => &AES_128_GCM,
        }
    }
}

/// Why bytes are not a well-formed record (reported by [`SealedRecord::parse`];
/// [`Vault::unseal`] turns all of these into [`VaultError::Tampered`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not base64")]
    NotBase64,
    #[error("too short")]
    TooShort,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedFormat(u8),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlg(u8),
    #[error("key version 0")]
    ZeroKeyVersion,
}

/// A parsed sealed record (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub alg: Alg,
    pub kek_version: u32,
    pub dek_nonce: [u8; NONCE_LEN],
    /// Wrapped DEK and its tag (`alg.key_len() + 16` bytes).
    pub wrapped_dek: Vec<u8>,
    pub data_nonce: [u8; NONCE_LEN],
    /// Payload ciphertext and its tag (at least 16 bytes).
    pub ciphertext: Vec<u8>,
}

impl SealedRecord {
    /// Parses the binary form. Never panics; checks structure only (authentication happens
    /// when the record is opened).
    pub fn parse(b: &[u8]) -> std::result::Result<SealedRecord, RecordError> {
        if b.len() < HEADER_LEN {
            return Err(RecordError::TooShort);
        }
        if b[0..2] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        if b[2] != FORMAT_VERSION {
            return Err(RecordError::UnsupportedFormat(b[2]));
        }
        let alg = Alg::from_byte(b[3]).ok_or(RecordError::UnsupportedAlg(b[3]))?;
        let kek_version = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if kek_version == 0 {
            return Err(RecordError::ZeroKeyVersion);
        }
        let wrapped_len = alg.key_len() + TAG_LEN;
        let min = HEADER_LEN + NONCE_LEN + wrapped_len + NONCE_LEN + TAG_LEN;
        if b.len() < min {
            return Err(RecordError::TooShort);
        }
        let mut at = HEADER_LEN;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let mut dek_nonce = [0u8; NONCE_LEN];
        dek_nonce.copy_from_slice(take(NONCE_LEN));
        let wrapped_dek = take(wrapped_len).to_vec();
        let mut data_nonce = [0u8; NONCE_LEN];
        data_nonce.copy_from_slice(take(NONCE_LEN));
        let ciphertext = b[at..].to_vec();
        Ok(SealedRecord {
            alg,
            kek_version,
            dek_nonce,
            wrapped_dek,
            data_nonce,
            ciphertext,
        })
    }

    /// Base64, then [`SealedRecord::parse`].
    pub fn decode(b64: &str) -> std::result::Result<SealedRecord, RecordError> {
        let raw = STANDARD
            .decode(b64.trim())
            .map_err(|_| RecordError::NotBase64)?;
        Self::parse(&raw)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + 2 * NONCE_LEN + self.wrapped_dek.len() + self.ciphertext.len(),
        );
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.alg as u8);
        out.extend_from_slice(&self.kek_version.to_be_bytes());
        out.extend_from_slice(&self.dek_nonce);
        out.extend_from_slice(&self.wrapped_dek);
        out.extend_from_slice(&self.data_nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// The stored (base64) form.
    pub fn encode(&self) -> String {
        STANDARD.encode(self.to_bytes())
    }
}

// ---- crypto helpers ---------------------------------------------------------------------------

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    b
}

fn aead_key(alg: Alg, key: &[u8]) -> Result<LessSafeKey> {
    Ok(LessSafeKey::new(
        UnboundKey::new(alg.aead(), key).map_err(|_| VaultError::Tampered)?,
    ))
}

/// Wraps `dek` under `kek` (AES-256-GCM, fresh nonce): (nonce, ciphertext+tag).
fn wrap_dek(kek: &LessSafeKey, dek: &[u8], aad: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
    let nonce = random::<NONCE_LEN>();
    let mut buf = dek.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .expect("AES-GCM seal of a key");
    (nonce, buf)
}

// ---- the vault --------------------------------------------------------------------------------

struct Kek {
    key: LessSafeKey,
    created_at: i64,
}

#[derive(Default)]
struct Ring {
    keks: BTreeMap<u32, Arc<Kek>>,
}

impl Ring {
    fn primary(&self) -> Option<(u32, &Arc<Kek>)> {
        self.keks.iter().next_back().map(|(v, k)| (*v, k))
    }
}

/// What [`Vault::rewrap_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewrapReport {
    /// The primary version records were moved to.
    pub target_version: u32,
    /// Rows this run re-wrapped.
    pub rewrapped: u64,
    /// Rows that could not be re-wrapped (tampered, or under a version the ring lacks); they
    /// are left as they were and logged.
    pub skipped: u64,
    /// Rows another writer changed between read and write (left alone).
    pub raced: u64,
    /// Rows still under a version below `target_version` when the run ended.
    pub remaining: u64,
}

/// The credential vault: seals and opens records, stores them in `cred_secrets`, and
/// rotates the KEK ring. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    provider: Arc<dyn KeyProvider>,
    ring: RwLock<Ring>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Vault {
    /// Loads the KEK ring from the store, unwrapping every version with `provider`, and
    /// creates version 1 if the ring is empty. Fails if any version cannot be unwrapped
    /// (for example a different master key): never silently starts a new ring.
    pub async fn open(store: Store, provider: Arc<dyn KeyProvider>) -> Result<Vault> {
        let vault = Vault {
            inner: Arc::new(Inner {
                store,
                provider,
                ring: RwLock::new(Ring::default()),
            }),
        };
        vault.reload().await?;
        if vault.ring().keks.is_empty() {
            vault.add_version(1).await?;
            vault.reload().await?;
        }
        Ok(vault)
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.inner.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The provider's id.
    pub fn provider_id(&self) -> String {
        self.inner.provider.id()
    }

    /// The primary (highest) KEK version: new records are wrapped under it.
    pub fn primary_version(&self) -> u32 {
        self.ring().primary().map(|(v, _)| v).unwrap_or(0)
    }

    /// Every KEK version this vault holds, lowest first.
    pub fn versions(&self) -> Vec<u32> {
        self.ring().keks.keys().copied().collect()
    }

    /// Re-reads the ring from the store: picks up versions another node added (unwrapping
    /// only those not already held) and drops versions no longer stored.
    pub async fn reload(&self) -> Result<()> {
        let rows = self.inner.store.kek_list().await?;
        let held: BTreeMap<u32, Arc<Kek>> = self.ring().keks.clone();
        let mut keks = BTreeMap::new();
        for row in rows {
            let version = u32::try_from(row.version)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| {
                    VaultError::KeyProvider(format!("invalid KEK version {}", row.version))
                })?;
            if let Some(k) = held.get(&version) {
                keks.insert(version, k.clone());
                continue;
            }
            let wrapped = STANDARD.decode(&row.wrapped).map_err(|_| {
                VaultError::KeyProvider(format!("KEK version {version} is not base64"))
            })?;
            let provider = self.inner.provider.clone();
            let kek = tokio::task::spawn_blocking(move || {
                provider
                    .unwrap(&wrapped, &kek_aad(version))
                    .map(Zeroizing::new)
            })
            .await
            .map_err(|e| VaultError::KeyProvider(format!("key provider task: {e}")))?
            .map_err(|e| {
                VaultError::KeyProvider(format!(
                    "KEK version {version} (wrapped by '{}'; this provider is '{}'): {e}",
                    row.provider,
                    self.inner.provider.id()
                ))
            })?;
            let key = aead_key(Alg::Aes256Gcm, kek.as_slice())?;
            keks.insert(
                version,
                Arc::new(Kek {
                    key,
                    created_at: row.created_at,
                }),
            );
        }
        self.inner
            .ring
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .keks = keks;
        Ok(())
    }

    /// Creates KEK `version` in the store. False if it already existed.
    async fn add_version(&self, version: u32) -> Result<bool> {
        let kek = Zeroizing::new(random::<32>());
        let provider = self.inner.provider.clone();
        let kek2 = kek.clone();
        let wrapped = tokio::task::spawn_blocking(move || provider.wrap(&kek2, &kek_aad(version)))
            .await
            .map_err(|e| VaultError::KeyProvider(format!("key provider task: {e}")))??;
        let created_at = now();
        let inserted = self
            .inner
            .store
            .kek_insert(&KekRow {
                version: version as i64,
                wrapped: STANDARD.encode(wrapped),
                provider: self.inner.provider.id(),
                created_at,
            })
            .await?;
        if inserted {
            let key = aead_key(Alg::Aes256Gcm, kek.as_slice())?;
            self.inner
                .ring
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .keks
                .insert(version, Arc::new(Kek { key, created_at }));
        }
        Ok(inserted)
    }

    /// Adds a KEK version (a fresh random key wrapped by the provider) and makes it the
    /// primary. Returns the new primary version. If another node rotated at the same moment,
    /// its version is adopted instead of adding a second one.
    pub async fn rotate(&self) -> Result<u32> {
        self.reload().await?;
        let next = self.primary_version() + 1;
        if !self.add_version(next).await? {
            self.reload().await?;
        }
        let v = self.primary_version();
        tracing::info!(version = v, "credential vault: key-encryption key rotated");
        Ok(v)
    }

    /// When the primary version was created (unix seconds).
    pub fn primary_created_at(&self) -> Option<i64> {
        self.ring().primary().map(|(_, k)| k.created_at)
    }

    /// Rotates if the primary is older than `interval` (re-reading the ring first, so that
    /// nodes sharing a store rotate once). Returns the new version if it rotated.
    pub async fn rotate_if_due(&self, interval: Duration) -> Result<Option<u32>> {
        self.reload().await?;
        let due = match self.primary_created_at() {
            Some(t) => now().saturating_sub(t) >= interval.as_secs() as i64,
            None => true,
        };
        if due {
            Ok(Some(self.rotate().await?))
        } else {
            Ok(None)
        }
    }

    fn seal_versioned(&self, ctx: &RecordContext, plaintext: &[u8]) -> Result<(u32, String)> {
        let ring = self.ring();
        let (version, kek) = ring
            .primary()
            .ok_or_else(|| VaultError::KeyProvider("the key ring is empty".into()))?;
        let alg = Alg::Aes256Gcm;
        let dek = Zeroizing::new(random::<32>());
        let (dek_nonce, wrapped_dek) =
            wrap_dek(&kek.key, dek.as_slice(), &ctx.dek_aad(version, alg));
        drop(ring);
        let data_nonce = random::<NONCE_LEN>();
        let mut ciphertext = plaintext.to_vec();
        aead_key(alg, dek.as_slice())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(data_nonce),
                Aad::from(ctx.data_aad()),
                &mut ciphertext,
            )
            .map_err(|_| VaultError::Tampered)?;
        let rec = SealedRecord {
            alg,
            kek_version: version,
            dek_nonce,
            wrapped_dek,
            data_nonce,
            ciphertext,
        };
        Ok((version, rec.encode()))
    }

    /// Seals `plaintext` for `ctx` with a fresh AES-256-GCM data key wrapped under the
    /// primary KEK. Returns the base64 record.
    pub fn seal(&self, ctx: &RecordContext, plaintext: &[u8]) -> Result<String> {
        Ok(self.seal_versioned(ctx, plaintext)?.1)
    }

    /// Unwraps a record's DEK (authenticating the header and the context without the field).
    fn unwrap_dek(&self, ctx: &RecordContext, rec: &SealedRecord) -> Result<Zeroizing<Vec<u8>>> {
        let ring = self.ring();
        let kek = ring
            .keks
            .get(&rec.kek_version)
            .ok_or(VaultError::UnknownKeyVersion(rec.kek_version))?;
        let mut buf = Zeroizing::new(rec.wrapped_dek.clone());
        let dek = kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(rec.dek_nonce),
                Aad::from(ctx.dek_aad(rec.kek_version, rec.alg)),
                &mut buf,
            )
            .map_err(|_| VaultError::Tampered)?;
        if dek.len() != rec.alg.key_len() {
            return Err(VaultError::Tampered);
        }
        Ok(Zeroizing::new(dek.to_vec()))
    }

    fn open_payload(
        ctx: &RecordContext,
        rec: &SealedRecord,
        dek: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(rec.ciphertext.clone());
        let n = aead_key(rec.alg, dek)?
            .open_in_place(
                Nonce::assume_unique_for_key(rec.data_nonce),
                Aad::from(ctx.data_aad()),
                &mut buf,
            )
            .map_err(|_| VaultError::Tampered)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens a record sealed for `ctx`. [`VaultError::Tampered`] if it is malformed, altered
    /// or bound to another context; [`VaultError::UnknownKeyVersion`] if its KEK version is
    /// not in the ring.
    pub fn unseal(&self, ctx: &RecordContext, sealed: &str) -> Result<Zeroizing<Vec<u8>>> {
        let rec = SealedRecord::decode(sealed).map_err(|_| VaultError::Tampered)?;
        let dek = self.unwrap_dek(ctx, &rec)?;
        Self::open_payload(ctx, &rec, &dek)
    }

    /// Re-wraps a record's DEK under the primary KEK. The payload (data nonce, ciphertext and
    /// tag) is copied unchanged; it is checked first, so a tampered record is refused rather
    /// than re-wrapped.
    pub fn rewrap(&self, ctx: &RecordContext, sealed: &str) -> Result<String> {
        Ok(self.rewrap_versioned(ctx, sealed)?.1)
    }

    fn rewrap_versioned(&self, ctx: &RecordContext, sealed: &str) -> Result<(u32, String)> {
        let rec = SealedRecord::decode(sealed).map_err(|_| VaultError::Tampered)?;
        let dek = self.unwrap_dek(ctx, &rec)?;
        drop(Self::open_payload(ctx, &rec, &dek)?);
        let ring = self.ring();
        let (version, kek) = ring
            .primary()
            .ok_or_else(|| VaultError::KeyProvider("the key ring is empty".into()))?;
        let (dek_nonce, wrapped_dek) =
            wrap_dek(&kek.key, dek.as_slice(), &ctx.dek_aad(version, rec.alg));
        drop(ring);
        let out = SealedRecord {
            kek_version: version,
            dek_nonce,
            wrapped_dek,
            ..rec
        };
        Ok((version, out.encode()))
    }

    /// The store row for `plaintext` sealed for `ctx`, owned by `owner` (not yet written; for
    /// bulk writes with [`Store::secret_put_many`]).
    pub fn sealed_row(
        &self,
        ctx: &RecordContext,
        owner: &str,
        plaintext: &[u8],
    ) -> Result<SecretRow> {
        let (version, blob) = self.seal_versioned(ctx, plaintext)?;
        Ok(SecretRow {
            owner_lc: owner.to_lowercase(),
            field: ctx.field.clone(),
            instance_lc: ctx.instance.to_lowercase(),
            provider_lc: ctx.provider.to_lowercase(),
            connection_lc: ctx.connection.to_lowercase(),
            kek_version: version as i64,
            blob,
            updated_at: now(),
        })
    }

    /// Seals and stores `plaintext` as field `ctx.field` of `owner`, replacing any previous
    /// value.
    pub async fn put_secret(
        &self,
        ctx: &RecordContext,
        owner: &str,
        plaintext: &[u8],
    ) -> Result<()> {
        let row = self.sealed_row(ctx, owner, plaintext)?;
        self.inner.store.secret_put(&row).await?;
        Ok(())
    }

    /// Reads and opens field `ctx.field` of `owner`; `None` if there is none. Reloads the
    /// ring once if the record names a version newer than any this vault holds.
    pub async fn get_secret(
        &self,
        ctx: &RecordContext,
        owner: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let Some(row) = self
            .inner
            .store
            .secret_get(&owner.to_lowercase(), &ctx.field)
            .await?
        else {
            return Ok(None);
        };
        match self.unseal(ctx, &row.blob) {
            Err(VaultError::UnknownKeyVersion(v)) if v > self.primary_version() => {
                self.reload().await?;
                self.unseal(ctx, &row.blob).map(Some)
            }
            r => r.map(Some),
        }
    }

    /// Deletes one secret; true if it existed.
    pub async fn delete_secret(&self, owner: &str, field: &str) -> Result<bool> {
        Ok(self
            .inner
            .store
            .secret_delete(&owner.to_lowercase(), field)
            .await?)
    }

    /// Deletes the secrets of `owner` and of everything below it (`owner/...`): deleting a
    /// provider deletes its connections' secrets. Returns how many were deleted.
    pub async fn delete_owner_tree(&self, owner: &str) -> Result<u64> {
        Ok(self.inner.store.secret_delete_owner(owner).await?)
    }

    /// How many stored records are still wrapped under a version below this vault's primary
    /// (the rotation backlog, for metrics; [`Vault::reload`] first to measure against a
    /// version another node added).
    pub async fn pending_rewrap(&self) -> Result<u64> {
        Ok(self
            .inner
            .store
            .kek_count_below(self.primary_version() as i64)
            .await?)
    }

    /// Moves every record under an older KEK version to the primary, `batch` rows per
    /// transaction (compare-and-swap per row). Idempotent and resumable: see the module
    /// documentation. Re-reads the ring first so the newest version is the target.
    pub async fn rewrap_all(&self, batch: usize) -> Result<RewrapReport> {
        self.reload().await?;
        let target = self.primary_version();
        let batch = batch.clamp(1, 100_000) as u32;
        let mut report = RewrapReport {
            target_version: target,
            ..Default::default()
        };
        let mut cursor: Option<SecretCursor> = None;
        loop {
            let rows = self
                .inner
                .store
                .secrets_with_kek_below(target as i64, cursor.as_ref(), batch)
                .await?;
            let Some(last) = rows.last() else { break };
            cursor = Some(last.cursor());
            let at = now();
            let mut writes = Vec::with_capacity(rows.len());
            for row in &rows {
                let ctx = RecordContext {
                    instance: row.instance_lc.clone(),
                    provider: row.provider_lc.clone(),
                    connection: row.connection_lc.clone(),
                    field: row.field.clone(),
                };
                match self.rewrap_versioned(&ctx, &row.blob) {
                    Ok((version, blob)) => writes.push(SecretRewrap {
                        owner_lc: row.owner_lc.clone(),
                        field: row.field.clone(),
                        old_version: row.kek_version,
                        old_blob: row.blob.clone(),
                        new_version: version as i64,
                        new_blob: blob,
                        updated_at: at,
                    }),
                    Err(e) => {
                        report.skipped += 1;
                        tracing::warn!(
                            owner = %row.owner_lc,
                            field = %row.field,
                            kek_version = row.kek_version,
                            error = %e,
                            "credential vault: record not re-wrapped"
                        );
                    }
                }
            }
            if !writes.is_empty() {
                let n = self.inner.store.secret_rewrap_many(&writes).await?;
                report.rewrapped += n;
                report.raced += writes.len() as u64 - n;
            }
        }
        report.remaining = self.inner.store.kek_count_below(target as i64).await?;
        tracing::info!(
            target_version = report.target_version,
            rewrapped = report.rewrapped,
            skipped = report.skipped,
            raced = report.raced,
            remaining = report.remaining,
            "credential vault: re-wrap finished"
        );
        Ok(report)
    }

    /// [`Vault::rotate`] then [`Vault::rewrap_all`] with [`DEFAULT_REWRAP_BATCH`]: the CLI's
    /// on-demand rotation and the monthly job.
    pub async fn rotate_and_rewrap(&self) -> Result<(u32, RewrapReport)> {
        let v = self.rotate().await?;
        Ok((v, self.rewrap_all(DEFAULT_REWRAP_BATCH).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SealedRecord {
        SealedRecord {
            alg: Alg::Aes256Gcm,
            kek_version: 7,
            dek_nonce: [1; 12],
            wrapped_dek: vec![2; 48],
            data_nonce: [3; 12],
            ciphertext: vec![4; 20],
        }
    }

    #[test]
    fn layout() {
        let b = sample().to_bytes();
        assert_eq!(&b[..8], b"CV\x01\x01\x00\x00\x00\x07");
        assert_eq!(b.len(), 8 + 12 + 48 + 12 + 20);
        assert_eq!(SealedRecord::parse(&b).unwrap(), sample());
        assert_eq!(SealedRecord::decode(&sample().encode()).unwrap(), sample());
    }

    #[test]
    fn parse_errors() {
        let b = sample().to_bytes();
        assert_eq!(SealedRecord::parse(&[]), Err(RecordError::TooShort));
        assert_eq!(SealedRecord::parse(&b[..95]), Err(RecordError::TooShort));
        // The shortest AES-256 record: empty plaintext (tag only).
        assert!(SealedRecord::parse(&b[..96]).is_ok());
        let mut x = b.clone();
        x[0] = b'X';
        assert_eq!(SealedRecord::parse(&x), Err(RecordError::BadMagic));
        let mut x = b.clone();
        x[2] = 2;
        assert_eq!(
            SealedRecord::parse(&x),
            Err(RecordError::UnsupportedFormat(2))
        );
        let mut x = b.clone();
        x[3] = 3;
        assert_eq!(SealedRecord::parse(&x), Err(RecordError::UnsupportedAlg(3)));
        let mut x = b.clone();
        x[7] = 0;
        assert_eq!(SealedRecord::parse(&x), Err(RecordError::ZeroKeyVersion));
        // alg 2 has a 32-byte wrapped DEK, so the same bytes split differently.
        let mut x = b;
        x[3] = 2;
        let r = SealedRecord::parse(&x).unwrap();
        assert_eq!(
            (r.alg, r.wrapped_dek.len(), r.ciphertext.len()),
            (Alg::Aes128Gcm, 32, 36)
        );
        assert_eq!(
            SealedRecord::decode("not base64!"),
            Err(RecordError::NotBase64)
        );
    }

    #[test]
    fn aad_is_unambiguous_and_case_folded() {
        let a = RecordContext::new("a|b", "c", "d", "f");
        let b = RecordContext::new("a", "b|c", "d", "f");
        assert_ne!(a.data_aad(), b.data_aad());
        assert_ne!(a.dek_aad(1, Alg::Aes256Gcm), b.dek_aad(1, Alg::Aes256Gcm));
        let c = RecordContext::new("a\\", "|c", "d", "f");
        let d = RecordContext::new("a\\|", "c", "d", "f");
        assert_ne!(c.data_aad(), d.data_aad());
        let lit = RecordContext {
            instance: "Inst".into(),
            provider: "Prov".into(),
            connection: "Conn".into(),
            field: "tokens".into(),
        };
        assert_eq!(
            lit.data_aad(),
            RecordContext::new("inst", "prov", "conn", "tokens").data_aad()
        );
        assert_eq!(lit.data_aad(), b"cloister-cred/v1|inst|prov|conn|tokens");
        assert_eq!(
            lit.dek_aad(3, Alg::Aes256Gcm),
            b"cloister-cred-dek/v1|inst|prov|conn|3|1"
        );
        assert_eq!(kek_aad(12), b"cloister-cred-kek/v1|12");
    }

    fn arb_record() -> impl Strategy<Value = SealedRecord> {
        (
            any::<bool>(),
            1u32..,
            any::<[u8; 12]>(),
            any::<[u8; 12]>(),
            proptest::collection::vec(any::<u8>(), 16..200),
            any::<u8>(),
        )
            .prop_map(|(aes256, kek_version, n1, n2, ciphertext, fill)| {
                let alg = if aes256 {
                    Alg::Aes256Gcm
                } else {
                    Alg::Aes128Gcm
                };
                SealedRecord {
                    alg,
                    kek_version,
                    dek_nonce: n1,
                    wrapped_dek: vec![fill; alg.key_len() + 16],
                    data_nonce: n2,
                    ciphertext,
                }
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SealedRecord::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_header_like_input(
            alg in any::<u8>(), fmt in 0u8..3, ver in any::<u32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut b = b"CV".to_vec();
            b.push(fmt);
            b.push(alg);
            b.extend_from_slice(&ver.to_be_bytes());
            b.extend_from_slice(&rest);
            if let Ok(r) = SealedRecord::parse(&b) {
                prop_assert_eq!(r.to_bytes(), b);
            }
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,200}") {
            let _ = SealedRecord::decode(&s);
        }

        #[test]
        fn round_trip(r in arb_record()) {
            prop_assert_eq!(SealedRecord::parse(&r.to_bytes()).unwrap(), r.clone());
            prop_assert_eq!(SealedRecord::decode(&r.encode()).unwrap(), r.clone());
            // Any truncation into the fixed part is refused, never misread.
            let b = r.to_bytes();
            let min = HEADER_LEN + 2 * NONCE_LEN + r.alg.key_len() + 2 * TAG_LEN;
            for n in 0..min {
                prop_assert!(SealedRecord::parse(&b[..n]).is_err());
            }
        }
    }
}
