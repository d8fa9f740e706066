//! The credential vault against a real store: SQLite in a temporary directory, or a fresh
//! PostgreSQL database when `CLOISTER_TEST_PG` names a server
//! (`postgres://cloister:cloister@127.0.0.1:5432`).

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_credentials::vault::{
    KeyProvider, LocalKeyProvider, RecordContext, SealedRecord, Vault, VaultError, kek_aad,
};
use cloister_crypto::MasterKey;
use cloister_store::{SecretRewrap, SecretRow, Store};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fresh PostgreSQL database when CLOISTER_TEST_PG is set (as crates/cli/tests/common).
async fn fresh_pg() -> Option<String> {
    let base = std::env::var("CLOISTER_TEST_PG")
        .ok()
        .filter(|v| !v.is_empty())?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to CLOISTER_TEST_PG");
    sqlx::Executor::execute(
        &mut c,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
    )
    .await
    .expect("create database");
    Some(format!("{base}/{name}"))
}

struct TestStore {
    dir: tempfile::TempDir,
    url: String,
    store: Store,
}

async fn new_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = match fresh_pg().await {
        Some(u) => u,
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("vault.db").display()
        ),
    };
    let store = Store::open(&url).await.unwrap();
    TestStore { dir, url, store }
}

fn local(mk: &Arc<MasterKey>) -> Arc<dyn KeyProvider> {
    Arc::new(LocalKeyProvider::new(mk.clone()))
}

/// A provider that remembers every KEK it wraps or unwraps, so tests can build records by
/// hand from the documented format.
struct Spy {
    inner: LocalKeyProvider,
    seen: Mutex<HashMap<Vec<u8>, [u8; 32]>>,
}

impl Spy {
    fn new() -> Arc<Spy> {
        Arc::new(Spy {
            inner: LocalKeyProvider::new(Arc::new(MasterKey::generate())),
            seen: Mutex::new(HashMap::new()),
        })
    }
    fn kek(&self, version: u32) -> [u8; 32] {
        self.seen.lock().unwrap()[&kek_aad(version)]
    }
}

impl KeyProvider for Spy {
    fn id(&self) -> String {
        "spy".into()
    }
    fn wrap(&self, kek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seen.lock().unwrap().insert(aad.to_vec(), *kek);
        self.inner.wrap(kek, aad)
    }
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<[u8; 32], VaultError> {
        let k = self.inner.unwrap(wrapped, aad)?;
        self.seen.lock().unwrap().insert(aad.to_vec(), k);
        Ok(k)
    }
}

fn ctx(instance: &str, provider: &str, connection: &str, field: &str) -> RecordContext {
    RecordContext::new(instance, provider, connection, field)
}

fn key(alg: &'static aws_lc_rs::aead::Algorithm, k: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(alg, k).unwrap())
}

/// Builds a record byte by byte from the documented format, with the given alg byte
/// (1 = AES-256-GCM with a 32-byte DEK, 2 = AES-128-GCM with a 16-byte DEK).
fn seal_by_hand(
    alg: u8,
    kek: &[u8; 32],
    kek_version: u32,
    (i, p, c, f): (&str, &str, &str, &str),
    plaintext: &[u8],
) -> String {
    let (aead, dek): (_, Vec<u8>) = match alg {
        1 => (&AES_256_GCM, vec![0x11; 32]),
        2 => (&AES_128_GCM, vec![0x22; 16]),
        _ => unreachable!(),
    };
    let dek_aad = format!("cloister-cred-dek/v1|{i}|{p}|{c}|{kek_version}|{alg}");
    let data_aad = format!("cloister-cred/v1|{i}|{p}|{c}|{f}");
    let (n1, n2) = ([7u8; 12], [9u8; 12]);
    let mut wrapped = dek.clone();
    key(&AES_256_GCM, kek)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(n1),
            Aad::from(dek_aad.as_bytes()),
            &mut wrapped,
        )
        .unwrap();
    let mut ct = plaintext.to_vec();
    key(aead, &dek)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(n2),
            Aad::from(data_aad.as_bytes()),
            &mut ct,
        )
        .unwrap();
    let mut b = b"CV\x01".to_vec();
    b.push(alg);
    b.extend_from_slice(&kek_version.to_be_bytes());
    b.extend_from_slice(&n1);
    b.extend_from_slice(&wrapped);
    b.extend_from_slice(&n2);
    b.extend_from_slice(&ct);
    STANDARD.encode(b)
}

fn is_tampered<T: std::fmt::Debug>(r: Result<T, VaultError>) -> bool {
    matches!(r, Err(VaultError::Tampered))
}

#[tokio::test]
async fn round_trip() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    assert_eq!(vault.versions(), vec![1]);
    assert_eq!(vault.primary_version(), 1);
    let c = ctx("inst", "github", "conn-1", "tokens");
    for pt in [
        b"".to_vec(),
        b"x".to_vec(),
        br#"{"access_token":"abc","refresh_token":"def"}"#.to_vec(),
        vec![0xa5; 64 * 1024],
    ] {
        let sealed = vault.seal(&c, &pt).unwrap();
        assert_eq!(*vault.unseal(&c, &sealed).unwrap(), pt);
        // A fresh data key and nonces every time.
        let again = vault.seal(&c, &pt).unwrap();
        assert_ne!(sealed, again);
        let (a, b) = (
            SealedRecord::decode(&sealed).unwrap(),
            SealedRecord::decode(&again).unwrap(),
        );
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert_ne!(a.data_nonce, b.data_nonce);
        assert_eq!(a.kek_version, 1);
    }
    // Contexts are case-insensitive in instance, provider and connection.
    let sealed = vault.seal(&c, b"v").unwrap();
    assert_eq!(
        *vault
            .unseal(&ctx("INST", "GitHub", "Conn-1", "tokens"), &sealed)
            .unwrap(),
        b"v"
    );

    // Through the store.
    let owner = "/inst/authorizationproviders/github/authorizations/conn-1";
    assert!(vault.get_secret(&c, owner).await.unwrap().is_none());
    vault.put_secret(&c, owner, b"first").await.unwrap();
    assert_eq!(
        *vault.get_secret(&c, owner).await.unwrap().unwrap(),
        b"first"
    );
    vault.put_secret(&c, owner, b"second").await.unwrap();
    assert_eq!(
        *vault
            .get_secret(&c, &owner.to_uppercase())
            .await
            .unwrap()
            .unwrap(),
        b"second"
    );
    let row = t.store.secret_get(owner, "tokens").await.unwrap().unwrap();
    assert_eq!(
        (
            row.instance_lc.as_str(),
            row.provider_lc.as_str(),
            row.connection_lc.as_str(),
            row.kek_version
        ),
        ("inst", "github", "conn-1", 1)
    );
    assert!(!row.blob.contains("second"));

    // The same store and master key, another process: the same ring.
    let again = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    assert_eq!(
        *again.get_secret(&c, owner).await.unwrap().unwrap(),
        b"second"
    );
    assert_eq!(vault.provider_id(), again.provider_id());
    assert!(vault.provider_id().starts_with("local:"));
}

#[tokio::test]
async fn record_layout_matches_the_documentation() {
    let t = new_store().await;
    let spy = Spy::new();
    let vault = Vault::open(t.store.clone(), spy.clone()).await.unwrap();
    let c = ctx("inst", "prov", "conn", "tokens");
    let raw = STANDARD.decode(vault.seal(&c, b"hello").unwrap()).unwrap();
    assert_eq!(&raw[..8], b"CV\x01\x01\x00\x00\x00\x01");
    assert_eq!(raw.len(), 8 + 12 + 48 + 12 + 5 + 16);
    // Open it by hand: unwrap the DEK with the KEK, then the payload with the DEK.
    let mut wrapped = raw[20..68].to_vec();
    let dek = key(&AES_256_GCM, &spy.kek(1))
        .open_in_place(
            Nonce::assume_unique_for_key(raw[8..20].try_into().unwrap()),
            Aad::from(b"cloister-cred-dek/v1|inst|prov|conn|1|1"),
            &mut wrapped,
        )
        .unwrap()
        .to_vec();
    assert_eq!(dek.len(), 32);
    let mut ct = raw[80..].to_vec();
    let pt = key(&AES_256_GCM, &dek)
        .open_in_place(
            Nonce::assume_unique_for_key(raw[68..80].try_into().unwrap()),
            Aad::from(b"cloister-cred/v1|inst|prov|conn|tokens"),
            &mut ct,
        )
        .unwrap();
    assert_eq!(pt, b"hello");
    // And a record made by hand opens with the vault.
    let by_hand = seal_by_hand(1, &spy.kek(1), 1, ("inst", "prov", "conn", "tokens"), b"hi");
    assert_eq!(*vault.unseal(&c, &by_hand).unwrap(), b"hi");
}

#[tokio::test]
async fn aes128_records_stay_readable() {
    let t = new_store().await;
    let spy = Spy::new();
    let vault = Vault::open(t.store.clone(), spy.clone()).await.unwrap();
    let c = ctx("inst", "prov", "conn", "tokens");
    let old = seal_by_hand(
        2,
        &spy.kek(1),
        1,
        ("inst", "prov", "conn", "tokens"),
        b"legacy",
    );
    let rec = SealedRecord::decode(&old).unwrap();
    assert_eq!(rec.alg as u8, 2);
    assert_eq!(rec.wrapped_dek.len(), 32);
    assert_eq!(*vault.unseal(&c, &old).unwrap(), b"legacy");
    // Bound to its context like any record.
    assert!(is_tampered(
        vault.unseal(&ctx("inst", "prov", "other", "tokens"), &old)
    ));
    // Stored, rotated and re-wrapped: still AES-128, payload untouched, readable.
    let owner = "inst/prov/conn";
    t.store
        .secret_put(&SecretRow {
            owner_lc: owner.into(),
            field: "tokens".into(),
            instance_lc: "inst".into(),
            provider_lc: "prov".into(),
            connection_lc: "conn".into(),
            kek_version: 1,
            blob: old.clone(),
            updated_at: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        *vault.get_secret(&c, owner).await.unwrap().unwrap(),
        b"legacy"
    );
    let (v, report) = vault.rotate_and_rewrap().await.unwrap();
    assert_eq!((v, report.rewrapped, report.remaining), (2, 1, 0));
    let row = t.store.secret_get(owner, "tokens").await.unwrap().unwrap();
    let new = SealedRecord::decode(&row.blob).unwrap();
    assert_eq!((new.alg, new.kek_version), (rec.alg, 2));
    assert_eq!(
        (new.data_nonce, &new.ciphertext),
        (rec.data_nonce, &rec.ciphertext)
    );
    assert_eq!(
        *vault.get_secret(&c, owner).await.unwrap().unwrap(),
        b"legacy"
    );
    // New writes are always AES-256-GCM.
    vault.put_secret(&c, owner, b"fresh").await.unwrap();
    let row = t.store.secret_get(owner, "tokens").await.unwrap().unwrap();
    assert_eq!(SealedRecord::decode(&row.blob).unwrap().alg as u8, 1);
}

#[tokio::test]
async fn any_changed_byte_is_refused() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    vault.rotate().await.unwrap();
    vault.rotate().await.unwrap();
    assert_eq!(vault.versions(), vec![1, 2, 3]);
    let c = ctx("inst", "prov", "conn", "tokens");
    let owner = "inst/prov/conn";
    vault
        .put_secret(&c, owner, br#"{"access_token":"secret"}"#)
        .await
        .unwrap();
    let row = t.store.secret_get(owner, "tokens").await.unwrap().unwrap();
    let raw = STANDARD.decode(&row.blob).unwrap();
    let mut unknown = 0;
    for i in 0..raw.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = raw.clone();
            b[i] ^= mask;
            let blob = STANDARD.encode(&b);
            let r = vault.unseal(&c, &blob);
            match r {
                Err(VaultError::Tampered) => {}
                // The KEK-version field: a version the ring lacks cannot be authenticated, but
                // is refused all the same.
                Err(VaultError::UnknownKeyVersion(_)) if (4..8).contains(&i) => unknown += 1,
                other => panic!("byte {i} ^ {mask:#x}: {other:?}"),
            }
            assert!(
                vault.rewrap(&c, &blob).is_err(),
                "rewrap of byte {i} ^ {mask:#x}"
            );
        }
    }
    assert!(unknown > 0);
    // Version 3 -> 2 names a key the ring has: refused by authentication.
    let mut b = raw.clone();
    b[7] ^= 0x01;
    assert_eq!(b[7], 2);
    assert!(is_tampered(vault.unseal(&c, &STANDARD.encode(&b))));
    // Truncated, extended, empty, not base64, a changed base64 character.
    for bad in [
        STANDARD.encode(&raw[..raw.len() - 1]),
        STANDARD.encode([raw.as_slice(), b"x"].concat()),
        STANDARD.encode(&raw[..8]),
        String::new(),
        "%%%".to_string(),
        {
            let mut s = row.blob.clone().into_bytes();
            s[40] = if s[40] == b'A' { b'B' } else { b'A' };
            String::from_utf8(s).unwrap()
        },
    ] {
        assert!(is_tampered(vault.unseal(&c, &bad)), "{bad}");
    }
    // Changed in the store: get_secret refuses it.
    let mut b = raw.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    t.store
        .secret_put(&SecretRow {
            blob: STANDARD.encode(&b),
            ..row.clone()
        })
        .await
        .unwrap();
    assert!(is_tampered(vault.get_secret(&c, owner).await));
}

#[tokio::test]
async fn swapped_records_are_refused() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    let a = ctx("inst", "prov", "conn-a", "tokens");
    let b = ctx("inst", "prov", "conn-b", "tokens");
    vault
        .put_secret(&a, "inst/prov/conn-a", b"A")
        .await
        .unwrap();
    vault
        .put_secret(&b, "inst/prov/conn-b", b"B")
        .await
        .unwrap();
    let ra = t
        .store
        .secret_get("inst/prov/conn-a", "tokens")
        .await
        .unwrap()
        .unwrap();
    let rb = t
        .store
        .secret_get("inst/prov/conn-b", "tokens")
        .await
        .unwrap()
        .unwrap();
    // Swap the two connections' ciphertexts in the store.
    t.store
        .secret_put(&SecretRow {
            blob: rb.blob.clone(),
            ..ra.clone()
        })
        .await
        .unwrap();
    t.store
        .secret_put(&SecretRow {
            blob: ra.blob.clone(),
            ..rb.clone()
        })
        .await
        .unwrap();
    assert!(is_tampered(vault.get_secret(&a, "inst/prov/conn-a").await));
    assert!(is_tampered(vault.get_secret(&b, "inst/prov/conn-b").await));
    // Nor can the rotation job launder them.
    assert!(is_tampered(vault.rewrap(&a, &rb.blob)));

    // Every part of the context is bound: field, connection, provider, instance.
    let base = ("inst", "prov", "conn", "tokens");
    let sealed = vault
        .seal(&ctx(base.0, base.1, base.2, base.3), b"x")
        .unwrap();
    for other in [
        ("inst", "prov", "conn", "clientSecret"),
        ("inst", "prov", "conn2", "tokens"),
        ("inst", "prov", "", "tokens"),
        ("inst", "prov2", "conn", "tokens"),
        ("inst2", "prov", "conn", "tokens"),
        ("inst|prov", "", "conn", "tokens"),
    ] {
        let c = ctx(other.0, other.1, other.2, other.3);
        assert!(is_tampered(vault.unseal(&c, &sealed)), "{other:?}");
    }
    // Two fields of one connection swapped.
    let at = ctx("inst", "prov", "conn", "access");
    let rt = ctx("inst", "prov", "conn", "refresh");
    let (sa, sr) = (
        vault.seal(&at, b"a").unwrap(),
        vault.seal(&rt, b"r").unwrap(),
    );
    assert!(is_tampered(vault.unseal(&at, &sr)));
    assert!(is_tampered(vault.unseal(&rt, &sa)));
    assert!(is_tampered(vault.rewrap(&at, &sr)));
    // '|' inside a name cannot shift the boundaries.
    let x = vault.seal(&ctx("a|b", "c", "d", "f"), b"x").unwrap();
    assert!(is_tampered(vault.unseal(&ctx("a", "b|c", "d", "f"), &x)));
}

#[tokio::test]
async fn unknown_and_foreign_key_versions() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    let c = ctx("inst", "prov", "conn", "tokens");
    let sealed = vault.seal(&c, b"x").unwrap();
    let mut rec = SealedRecord::decode(&sealed).unwrap();
    rec.kek_version = 99;
    assert!(matches!(
        vault.unseal(&c, &rec.encode()),
        Err(VaultError::UnknownKeyVersion(99))
    ));
    assert!(matches!(
        vault.rewrap(&c, &rec.encode()),
        Err(VaultError::UnknownKeyVersion(99))
    ));

    // A record from another ring's version 2, opened by a ring that only has version 1.
    let other = new_store().await;
    let ov = Vault::open(other.store.clone(), local(&mk)).await.unwrap();
    assert_eq!(ov.rotate().await.unwrap(), 2);
    let foreign = ov.seal(&c, b"y").unwrap();
    assert!(matches!(
        vault.unseal(&c, &foreign),
        Err(VaultError::UnknownKeyVersion(2))
    ));
    // Same version number, different key: authentication fails.
    let foreign1 = SealedRecord {
        kek_version: 1,
        ..SealedRecord::decode(&ov.seal(&c, b"z").unwrap()).unwrap()
    };
    assert!(is_tampered(vault.unseal(&c, &foreign1.encode())));

    // The ring cannot be opened with another master key, and is never silently replaced.
    let wrong = Arc::new(MasterKey::generate());
    let err = Vault::open(t.store.clone(), local(&wrong))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VaultError::KeyProvider(_)), "{err}");
    assert_eq!(t.store.kek_list().await.unwrap().len(), 1);
    assert_eq!(*vault.unseal(&c, &sealed).unwrap(), b"x");
}

#[tokio::test]
async fn rewrap_keeps_the_payload_bytes() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    let c = ctx("inst", "prov", "conn", "tokens");
    let pt = br#"{"access_token":"at","refresh_token":"rt"}"#;
    let v1 = vault.seal(&c, pt).unwrap();
    assert_eq!(vault.rotate().await.unwrap(), 2);
    let v2 = vault.rewrap(&c, &v1).unwrap();
    let (a, b) = (
        SealedRecord::decode(&v1).unwrap(),
        SealedRecord::decode(&v2).unwrap(),
    );
    assert_eq!((a.kek_version, b.kek_version), (1, 2));
    assert_eq!(a.alg, b.alg);
    assert_eq!(a.data_nonce, b.data_nonce);
    assert_eq!(a.ciphertext, b.ciphertext);
    assert_ne!(a.wrapped_dek, b.wrapped_dek);
    assert_ne!(a.dek_nonce, b.dek_nonce);
    // The payload section of the encoded bytes is byte-for-byte the same.
    let (ra, rb) = (STANDARD.decode(&v1).unwrap(), STANDARD.decode(&v2).unwrap());
    assert_eq!(ra[68..], rb[68..]);
    assert_eq!(*vault.unseal(&c, &v2).unwrap(), pt);
    // The old version stays readable, and re-wrapping twice is harmless.
    assert_eq!(*vault.unseal(&c, &v1).unwrap(), pt);
    let v2b = vault.rewrap(&c, &v2).unwrap();
    assert_eq!(*vault.unseal(&c, &v2b).unwrap(), pt);
    // Moving a re-wrapped record to another connection is still refused.
    assert!(is_tampered(
        vault.unseal(&ctx("inst", "prov", "conn2", "tokens"), &v2)
    ));
}

#[tokio::test]
async fn compare_and_swap_never_loses_a_newer_write() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    let c = ctx("inst", "prov", "conn", "tokens");
    vault.put_secret(&c, "o", b"old").await.unwrap();
    let read = t.store.secret_get("o", "tokens").await.unwrap().unwrap();
    let lagging = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    vault.rotate().await.unwrap();
    let rewrapped = vault.rewrap(&c, &read.blob).unwrap();
    // A lagging node (still on version 1) writes a new token after the job read the row.
    assert_eq!(lagging.primary_version(), 1);
    lagging.put_secret(&c, "o", b"new").await.unwrap();
    let lagging_row = t.store.secret_get("o", "tokens").await.unwrap().unwrap();
    let w = SecretRewrap {
        owner_lc: "o".into(),
        field: "tokens".into(),
        old_version: read.kek_version,
        old_blob: read.blob.clone(),
        new_version: 2,
        new_blob: rewrapped,
        updated_at: 1,
    };
    assert!(!t.store.secret_rewrap(&w).await.unwrap());
    // In a batch, only the unchanged row is written.
    let c2 = ctx("inst", "prov", "conn2", "tokens");
    let r2 = lagging.sealed_row(&c2, "o2", b"two").unwrap();
    let dup = lagging.sealed_row(&c2, "o2", b"dup").unwrap();
    t.store.secret_put_many(&[dup, r2.clone()]).await.unwrap();
    let w2 = SecretRewrap {
        owner_lc: "o2".into(),
        field: "tokens".into(),
        old_version: 1,
        old_blob: r2.blob.clone(),
        new_version: 2,
        new_blob: vault.rewrap(&c2, &r2.blob).unwrap(),
        updated_at: 1,
    };
    assert_eq!(
        t.store.secret_rewrap_many(&[w, w2.clone()]).await.unwrap(),
        1
    );
    assert_eq!(t.store.secret_rewrap_many(&[w2]).await.unwrap(), 0);
    assert_eq!(*vault.get_secret(&c2, "o2").await.unwrap().unwrap(), b"two");
    assert_eq!(*vault.get_secret(&c, "o").await.unwrap().unwrap(), b"new");
    // The job then moves the newer row.
    let report = vault.rewrap_all(10).await.unwrap();
    assert_eq!((report.rewrapped, report.remaining), (1, 0));
    let row = t.store.secret_get("o", "tokens").await.unwrap().unwrap();
    assert_eq!(row.kek_version, 2);
    assert_ne!(row.blob, lagging_row.blob);
    assert_eq!(*vault.get_secret(&c, "o").await.unwrap().unwrap(), b"new");
}

#[tokio::test]
async fn nodes_share_the_ring() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    // Two nodes starting at once create one version 1.
    let (a, b) = tokio::join!(
        Vault::open(t.store.clone(), local(&mk)),
        Vault::open(t.store.clone(), local(&mk))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(t.store.kek_list().await.unwrap().len(), 1);
    let c = ctx("i", "p", "c", "tokens");
    assert_eq!(*b.unseal(&c, &a.seal(&c, b"1").unwrap()).unwrap(), b"1");
    // A rotates; B learns version 2 on its own when it meets a record under it.
    assert_eq!(a.rotate().await.unwrap(), 2);
    a.put_secret(&c, "i/p/c", b"2").await.unwrap();
    assert_eq!(b.primary_version(), 1);
    assert_eq!(*b.get_secret(&c, "i/p/c").await.unwrap().unwrap(), b"2");
    assert_eq!(b.primary_version(), 2);
    // B rotating now adds 3 (it re-reads the ring first).
    assert_eq!(b.rotate().await.unwrap(), 3);
    a.reload().await.unwrap();
    assert_eq!(a.versions(), vec![1, 2, 3]);
    // Monthly schedule: not due right after a rotation; due with a zero interval.
    assert_eq!(
        a.rotate_if_due(cloister_credentials::vault::DEFAULT_ROTATION_INTERVAL)
            .await
            .unwrap(),
        None
    );
    assert_eq!(a.rotate_if_due(Duration::ZERO).await.unwrap(), Some(4));
    assert_eq!(a.pending_rewrap().await.unwrap(), 1);
    let rows = t.store.kek_list().await.unwrap();
    assert!(rows.iter().all(|r| r.provider == a.provider_id()));
}

#[tokio::test]
async fn deleting_an_owner_deletes_what_is_below_it() {
    let t = new_store().await;
    let mk = Arc::new(MasterKey::generate());
    let vault = Vault::open(t.store.clone(), local(&mk)).await.unwrap();
    let p = "/s/x/service/inst/authorizationproviders/prov";
    let put = |owner: String, conn: &'static str, field: &'static str| {
        let vault = vault.clone();
        async move {
            let c = ctx("/s/x/service/inst", "prov", conn, field);
            vault.put_secret(&c, &owner, b"s").await.unwrap();
        }
    };
    put(p.into(), "", "clientSecret").await;
    put(format!("{p}/authorizations/a"), "a", "tokens").await;
    put(format!("{p}/authorizations/a"), "a", "clientSecret").await;
    put(format!("{p}/authorizations/b"), "b", "tokens").await;
    put(format!("{p}2"), "", "clientSecret").await;
    put(format!("{p}2/authorizations/a"), "a", "tokens").await;
    assert_eq!(vault.delete_owner_tree(&p.to_uppercase()).await.unwrap(), 4);
    assert!(t.store.secrets_of(p).await.unwrap().is_empty());
    assert_eq!(t.store.secrets_of(&format!("{p}2")).await.unwrap().len(), 1);
    assert_eq!(
        t.store
            .secrets_of(&format!("{p}2/authorizations/a"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        vault
            .delete_secret(&format!("{p}2"), "clientSecret")
            .await
            .unwrap()
    );
    assert_eq!(
        t.store
            .secret_delete_instance("/S/X/SERVICE/INST")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn key_provider_from_file() {
    if std::env::var("CLOISTER_MASTER_KEY").is_ok_and(|v| !v.is_empty()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = LocalKeyProvider::from_env_or_file(dir.path()).unwrap();
    assert!(dir.path().join("master.key").exists());
    let b = LocalKeyProvider::from_env_or_file(dir.path()).unwrap();
    assert_eq!(a.id(), b.id());
    let w = a.wrap(&[5; 32], b"aad").unwrap();
    assert_eq!(b.unwrap(&w, b"aad").unwrap(), [5; 32]);
    assert!(b.unwrap(&w, b"other").is_err());
}

// ---- rotation over 10,000 connections, killed part-way and resumed ----------------------------

const N: usize = 10_000;

fn conn(i: usize) -> (RecordContext, String) {
    let (inst, prov) = (format!("inst-{}", i % 3), format!("prov-{}", i % 7));
    let owner = format!("{inst}/{prov}/conn-{i}");
    (ctx(&inst, &prov, &format!("conn-{i}"), "tokens"), owner)
}

fn token(i: usize, generation: u32) -> Vec<u8> {
    format!(
        r#"{{"access_token":"at-{i}-{generation}-{}","refresh_token":"rt-{i}"}}"#,
        "x".repeat(i % 64)
    )
    .into_bytes()
}

fn index_of(row: &SecretRow) -> usize {
    row.connection_lc["conn-".len()..].parse().unwrap()
}

/// Checks every stored row: exactly N, each readable with its expected plaintext.
/// Returns how many rows are on each version.
async fn verify_all(
    vault: &Vault,
    store: &Store,
    expected: &HashMap<usize, Vec<u8>>,
) -> HashMap<i64, usize> {
    let rows = store
        .secrets_with_kek_below(i64::MAX, None, 2 * N as u32)
        .await
        .unwrap();
    assert_eq!(rows.len(), N, "rows lost or added");
    let mut versions = HashMap::new();
    for row in &rows {
        let i = index_of(row);
        let (c, owner) = conn(i);
        assert_eq!(row.owner_lc, owner);
        assert_eq!(
            SealedRecord::decode(&row.blob).unwrap().kek_version as i64,
            row.kek_version
        );
        let pt = vault
            .unseal(&c, &row.blob)
            .unwrap_or_else(|e| panic!("row {i}: {e}"));
        assert_eq!(*pt, expected[&i], "row {i}");
        *versions.entry(row.kek_version).or_insert(0) += 1;
    }
    versions
}

/// Runs in a child process (spawned by the test below, which kills it): re-wraps with small
/// batches until killed.
#[tokio::test]
#[ignore = "helper process for rotation_over_10000_connections_killed_and_resumed"]
async fn rewrap_child_process() {
    let Ok(url) = std::env::var("CV_CHILD_STORE") else {
        return;
    };
    let key = std::env::var("CV_CHILD_KEY").unwrap();
    let mk = Arc::new(MasterKey::load_or_create(Path::new(&key)).unwrap());
    let store = Store::open(&url).await.unwrap();
    let vault = Vault::open(store, local(&mk)).await.unwrap();
    vault.rewrap_all(20).await.unwrap();
}

async fn wait_for_pending(
    store: &Store,
    below: i64,
    at_most: u64,
    mut finished: impl FnMut() -> bool,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = store.kek_count_below(below).await.unwrap();
        if p <= at_most {
            return p;
        }
        assert!(!finished(), "the job ended before it could be interrupted");
        assert!(Instant::now() < deadline, "no progress: {p} pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_over_10000_connections_killed_and_resumed() {
    let started = Instant::now();
    let TestStore {
        dir,
        url,
        store: first,
    } = new_store().await;
    let key_path = dir.path().join("master.key");
    let mk = Arc::new(MasterKey::load_or_create(&key_path).unwrap());
    let vault = Vault::open(first.clone(), local(&mk)).await.unwrap();
    let mut expected = HashMap::new();
    let mut rows = Vec::with_capacity(1000);
    for i in 0..N {
        let (c, owner) = conn(i);
        rows.push(vault.sealed_row(&c, &owner, &token(i, 0)).unwrap());
        expected.insert(i, token(i, 0));
        if rows.len() == 1000 {
            first.secret_put_many(&rows).await.unwrap();
            rows.clear();
        }
    }
    let sealed_at = started.elapsed();
    assert_eq!(vault.rotate().await.unwrap(), 2);
    assert_eq!(vault.pending_rewrap().await.unwrap(), N as u64);

    // 1. The re-wrap job runs in another process, which is killed (SIGKILL) part-way.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "rewrap_child_process",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("CV_CHILD_STORE", &url)
        .env("CV_CHILD_KEY", &key_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_pending(&first, 2, (N - 2_000) as u64, || {
        child.try_wait().unwrap().is_some()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = started.elapsed();

    // 2. Restart: a new store handle and a new vault with the key from the file.
    drop(vault);
    drop(first);
    let store = Store::open(&url).await.unwrap();
    let mk = Arc::new(MasterKey::load_or_create(&key_path).unwrap());
    let vault = Vault::open(store.clone(), local(&mk)).await.unwrap();
    let pending = vault.pending_rewrap().await.unwrap();
    assert!(
        pending > 0 && pending < N as u64,
        "{pending} pending after the kill"
    );
    // Half-done is a consistent state: every record is readable, on version 1 or 2.
    let versions = verify_all(&vault, &store, &expected).await;
    assert_eq!(versions[&1] as u64, pending);
    assert_eq!(versions[&1] + versions[&2], N);

    // 3. Rotate again before that finished, and run the job in a task that is aborted
    //    part-way, while a lagging node (still on version 2) keeps writing new tokens.
    let lagging = Vault::open(store.clone(), local(&mk)).await.unwrap();
    assert_eq!(vault.rotate().await.unwrap(), 3);
    let job = tokio::spawn({
        let vault = vault.clone();
        async move { vault.rewrap_all(25).await }
    });
    let writer = tokio::spawn({
        let lagging = lagging.clone();
        async move {
            for i in (0..N).step_by(37) {
                let (c, owner) = conn(i);
                lagging.put_secret(&c, &owner, &token(i, 1)).await.unwrap();
            }
        }
    });
    wait_for_pending(&store, 3, (N - 2_500) as u64, || job.is_finished()).await;
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    writer.await.unwrap();
    for i in (0..N).step_by(37) {
        expected.insert(i, token(i, 1));
    }
    let aborted_at = started.elapsed();
    let pending = store.kek_count_below(3).await.unwrap();
    assert!(
        pending > 0 && pending < N as u64,
        "{pending} pending after the abort"
    );

    // 4. Resume on a fresh vault (another restart): the job finishes and nothing is lost.
    drop(vault);
    let vault = Vault::open(store.clone(), local(&mk)).await.unwrap();
    let report = vault.rewrap_all(500).await.unwrap();
    assert_eq!(report.target_version, 3);
    assert_eq!(report.remaining, 0);
    assert_eq!(report.skipped, 0);
    // (`pending` may count a batch whose commit the abort did not stop.)
    assert!(report.rewrapped <= pending);
    assert_eq!(vault.pending_rewrap().await.unwrap(), 0);
    let versions = verify_all(&vault, &store, &expected).await;
    assert_eq!(versions.get(&3), Some(&N));
    // Running it again does nothing.
    let again = vault.rewrap_all(500).await.unwrap();
    assert_eq!((again.rewrapped, again.remaining), (0, 0));
    eprintln!(
        "10k rotation: sealed+stored {:?}, child killed at {:?}, task aborted at {:?}, done at {:?} ({:?})",
        sealed_at,
        killed_at,
        aborted_at,
        started.elapsed(),
        store.backend()
    );
}
