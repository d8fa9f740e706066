//! Cloister's cryptography, on aws-lc-rs only: the master key and envelope encryption, keyed
//! hashes for stored secrets, the private CA, JWT signing keys with certificates (`kid` =
//! `x5t`, as Entra ID publishes them), and parsing of the certificates clients upload.
//!
//! ```
//! let mk = cloister_crypto::MasterKey::generate();
//! let sealed = mk.seal(b"private key", b"kid-1");
//! assert_eq!(mk.open(&sealed, b"kid-1").unwrap(), b"private key");
//! assert!(mk.open(&sealed, b"kid-2").is_err());
//! ```

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{digest, hkdf, hmac};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("decryption failed (wrong key, wrong context, or tampered data)")]
    Decrypt,
    #[error("invalid key material: {0}")]
    Key(String),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A secret string. `Debug` is redacted and there is no `Display`, so it cannot end up in
/// a log line by accident; read it with [`Secret::expose`].
#[derive(Clone, serde::Deserialize)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn fill(buf: &mut [u8]) {
    SystemRandom::new().fill(buf).expect("system randomness");
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A client secret in Entra's style: 40 characters, a 3-character hint, `Q~`, then random.
pub fn new_client_secret() -> Secret {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    let mut b = [0u8; 38];
    fill(&mut b);
    let chars: Vec<char> = b
        .iter()
        .map(|x| ALPHA[(*x as usize) % ALPHA.len()] as char)
        .collect();
    let mut s: String = chars[..3].iter().collect();
    s.push_str("Q~");
    s.extend(&chars[3..38]);
    Secret(s)
}

/// The 256-bit master key. Everything sealed at rest is sealed under keys derived from it.
pub struct MasterKey {
    key: [u8; 32],
    /// HMAC keys derived per purpose, cached (derivation is on the token hot path).
    hmac_keys: std::sync::RwLock<std::collections::HashMap<String, hmac::Key>>,
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

const SEAL_VERSION: u8 = 1;

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut key = [0u8; 32];
        fill(&mut key);
        MasterKey {
            key,
            hmac_keys: Default::default(),
        }
    }

    pub fn from_base64(s: &str) -> Result<MasterKey> {
        let raw = STANDARD
            .decode(s.trim())
            .map_err(|e| Error::Key(format!("master key is not base64: {e}")))?;
        let key: [u8; 32] = raw
            .try_into()
            .map_err(|_| Error::Key("master key must be 32 bytes".into()))?;
        Ok(MasterKey {
            key,
            hmac_keys: Default::default(),
        })
    }

    /// Loads the key file (base64), or creates it with mode 0600 if absent.
    pub fn load_or_create(path: &Path) -> Result<MasterKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mk = Self::generate();
                let tmp = path.with_extension("tmp");
                {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(STANDARD.encode(mk.key).as_bytes())?;
                    f.sync_all()?;
                }
                // hard_link fails if another process created the file first: then use theirs.
                match std::fs::hard_link(&tmp, path) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&tmp);
                        Ok(mk)
                    }
                    Err(_) => {
                        let _ = std::fs::remove_file(&tmp);
                        Self::from_base64(&std::fs::read_to_string(path)?)
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cloister").extract(&self.key);
        let info = [info];
        let okm = prk.expand(&info, Len32).expect("hkdf length");
        let mut out = [0u8; 32];
        okm.fill(&mut out).expect("hkdf fill");
        out
    }

    fn aead(key: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("aes key"))
    }

    /// Envelope encryption: a fresh data key per record encrypts `plaintext` (AAD bound), and
    /// the data key is wrapped by the key-encryption key derived from the master key.
    /// Layout: version(1) | dek nonce(12) | wrapped dek(32+16) | data nonce(12) | ciphertext+tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let kek = Self::aead(&self.derive(b"cloister kek v1"));
        let mut dek = [0u8; 32];
        fill(&mut dek);
        let mut n1 = [0u8; NONCE_LEN];
        fill(&mut n1);
        let mut wrapped = dek.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(n1),
            Aad::from(aad),
            &mut wrapped,
        )
        .expect("seal dek");
        let mut n2 = [0u8; NONCE_LEN];
        fill(&mut n2);
        let mut ct = plaintext.to_vec();
        Self::aead(&dek)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(n2), Aad::from(aad), &mut ct)
            .expect("seal");
        let mut out = Vec::with_capacity(1 + 12 + wrapped.len() + 12 + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&n1);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&n2);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        const W: usize = 32 + 16;
        if sealed.len() < 1 + 12 + W + 12 + 16 || sealed[0] != SEAL_VERSION {
            return Err(Error::Decrypt);
        }
        let n1: [u8; 12] = sealed[1..13].try_into().map_err(|_| Error::Decrypt)?;
        let mut wrapped = sealed[13..13 + W].to_vec();
        let n2: [u8; 12] = sealed[13 + W..25 + W]
            .try_into()
            .map_err(|_| Error::Decrypt)?;
        let mut ct = sealed[25 + W..].to_vec();
        let kek = Self::aead(&self.derive(b"cloister kek v1"));
        let dek = kek
            .open_in_place(
                Nonce::assume_unique_for_key(n1),
                Aad::from(aad),
                &mut wrapped,
            )
            .map_err(|_| Error::Decrypt)?;
        let dek: [u8; 32] = dek.try_into().map_err(|_| Error::Decrypt)?;
        let pt = Self::aead(&dek)
            .open_in_place(Nonce::assume_unique_for_key(n2), Aad::from(aad), &mut ct)
            .map_err(|_| Error::Decrypt)?;
        Ok(pt.to_vec())
    }

    /// HMAC-SHA256 under a per-purpose key derived from the master key, base64url. Used to
    /// store high-entropy secrets (client secrets, codes, refresh tokens) without the secret.
    pub fn keyed_hash(&self, purpose: &str, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.hmac_key(purpose), data).as_ref())
    }

    /// Constant-time check of a keyed hash.
    pub fn verify_keyed_hash(&self, purpose: &str, data: &[u8], expected: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(expected) else {
            return false;
        };
        hmac::verify(&self.hmac_key(purpose), data, &tag).is_ok()
    }

    /// The HMAC key for a purpose, derived once (derivation is on the token hot path).
    fn hmac_key(&self, purpose: &str) -> hmac::Key {
        if let Some(k) = self
            .hmac_keys
            .read()
            .ok()
            .and_then(|m| m.get(purpose).cloned())
        {
            return k;
        }
        let k = hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive(format!("cloister hash {purpose}").as_bytes()),
        );
        if let Ok(mut m) = self.hmac_keys.write() {
            m.insert(purpose.to_string(), k.clone());
        }
        k
    }
}

/// base64url(SHA-1(der)): the `x5t` thumbprint.
pub fn x5t_sha1(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// The PKCE S256 code challenge of a verifier (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

/// base64url(SHA-256(der)): the `x5t#S256` thumbprint.
pub fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der).as_ref())
}

// ---- private CA ------------------------------------------------------------------------------

/// The private certificate authority that issues Cloister's server certificates.
pub struct Ca {
    cert_pem: String,
    key: rcgen::KeyPair,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate issued by the CA.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Secret,
    /// Leaf then CA certificate.
    pub chain_pem: String,
}

fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Cert(e.to_string())
}

impl Ca {
    pub fn generate(common_name: &str) -> Result<Ca> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(3650);
        let cert = p.self_signed(&key).map_err(cert_err)?;
        let cert_pem = cert.pem();
        Self::from_pem(&cert_pem, &key.serialize_pem())
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let issuer_key = rcgen::KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, issuer_key).map_err(cert_err)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> Secret {
        Secret(self.key.serialize_pem())
    }

    /// A server certificate for these names and addresses, valid `days`.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<IssuedCert> {
        let cn = dns_names.first().map(String::as_str).unwrap_or("cloister");
        self.issue(
            cn,
            dns_names,
            ips,
            days,
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A node certificate for the internal channel between Cloister nodes: usable as a TLS
    /// server certificate (the node's internal listener) and as a client certificate (its
    /// calls to other nodes); its common name is `cloister-node:<node_id>`. Server
    /// certificates of the public listeners carry no client-auth usage, so they cannot stand
    /// in for a node.
    pub fn issue_node_cert(
        &self,
        node_id: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<IssuedCert> {
        self.issue(
            &format!("{NODE_CN_PREFIX}{node_id}"),
            dns_names,
            ips,
            days,
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn issue(
        &self,
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        days: u32,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Result<IssuedCert> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut p = rcgen::CertificateParams::new(dns_names.to_vec()).map_err(cert_err)?;
        for ip in ips {
            p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
        }
        p.distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        p.extended_key_usages = usages;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days as i64);
        let cert = p.signed_by(&key, &self.issuer).map_err(cert_err)?;
        let cert_pem = cert.pem();
        Ok(IssuedCert {
            chain_pem: format!("{cert_pem}{}", self.cert_pem),
            cert_pem,
            key_pem: Secret(key.serialize_pem()),
        })
    }
}

/// The common-name prefix of node certificates ([`Ca::issue_node_cert`]).
pub const NODE_CN_PREFIX: &str = "cloister-node:";

// ---- JWT signing keys ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Es256,
    Rs256,
}

impl std::str::FromStr for SigningAlg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(SigningAlg::Es256),
            "RS256" => Ok(SigningAlg::Rs256),
            other => Err(Error::Key(format!(
                "unsupported signing algorithm '{other}' (use ES256 or RS256)"
            ))),
        }
    }
}

impl SigningAlg {
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::Rs256 => "RS256",
        }
    }
}

/// What is stored for a signing key: the private key sealed under the master key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub cert_der_b64: String,
    pub sealed_private_key: Vec<u8>,
}

/// A JWT signing key with its self-signed certificate.
pub struct SigningKey {
    /// The parsed private key, built once: parsing and checking a PKCS#8 key costs as much as
    /// a signature, so it must not happen per token.
    signer: Signer,
    /// `base64url(header JSON)`: the same for every token this key signs.
    header_b64: String,
    alg: SigningAlg,
    kid: String,
    cert_der: Vec<u8>,
    pkcs8_der: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    /// A new key (RSA-2048 or P-256) and self-signed certificate. RSA generation takes
    /// 60-150 ms: call it off the async runtime.
    pub fn generate(alg: SigningAlg) -> Result<SigningKey> {
        let key = match alg {
            SigningAlg::Es256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            SigningAlg::Rs256 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(cert_err)?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Cloister token signing");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(730);
        let cert = p.self_signed(&key).map_err(cert_err)?;
        Self::from_parts(alg, key.serialize_der(), cert.der().to_vec())
    }

    fn from_parts(alg: SigningAlg, pkcs8_der: Vec<u8>, cert_der: Vec<u8>) -> Result<SigningKey> {
        let kid = x5t_sha1(&cert_der);
        let signer = match alg {
            SigningAlg::Es256 => Signer::Ec(
                aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &pkcs8_der,
                )
                .map_err(|e| Error::Key(format!("P-256 key: {e}")))?,
            ),
            SigningAlg::Rs256 => Signer::Rsa(
                aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&pkcs8_der)
                    .map_err(|e| Error::Key(format!("RSA key: {e}")))?,
            ),
        };
        let header_b64 = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"typ": "JWT", "alg": alg.name(), "kid": kid, "x5t": kid})
                .to_string(),
        );
        let encoding = match alg {
            SigningAlg::Es256 => EncodingKey::from_ec_der(&pkcs8_der),
            SigningAlg::Rs256 => EncodingKey::from_rsa_pem(pkcs8_pem(&pkcs8_der).as_bytes())
                .map_err(|e| Error::Key(e.to_string()))?,
        };
        let parsed = ClientCertificate::from_der(cert_der.clone())?;
        let decoding = parsed.decoding_key()?;
        let mut jwk = serde_json::json!({
            "kty": if alg == SigningAlg::Es256 { "EC" } else { "RSA" },
            "use": "sig", "kid": kid, "x5t": kid, "alg": alg.name(),
            "x5c": [STANDARD.encode(&cert_der)],
        });
        match &parsed.key {
            PublicKey::Rsa { n, e } => {
                jwk["n"] = serde_json::json!(URL_SAFE_NO_PAD.encode(n));
                jwk["e"] = serde_json::json!(URL_SAFE_NO_PAD.encode(e));
            }
            PublicKey::Ec { x, y } => {
                jwk["crv"] = serde_json::json!("P-256");
                jwk["x"] = serde_json::json!(URL_SAFE_NO_PAD.encode(x));
                jwk["y"] = serde_json::json!(URL_SAFE_NO_PAD.encode(y));
            }
        }
        Ok(SigningKey {
            signer,
            header_b64,
            alg,
            kid,
            cert_der,
            pkcs8_der,
            encoding,
            decoding,
            jwk,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWT whose header is
    /// `{"typ":"JWT","alg":…,"kid":…,"x5t":…}` (Entra's header; `x5t` = `kid`).
    pub fn sign_jwt(&self, claims: &serde_json::Value) -> Result<String> {
        let mut out = String::with_capacity(1024);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut out);
        let sig = match &self.signer {
            Signer::Ec(k) => k
                .sign(&SystemRandom::new(), out.as_bytes())
                .map_err(|e| Error::Key(format!("signing: {e}")))?
                .as_ref()
                .to_vec(),
            Signer::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    out.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| Error::Key(format!("signing: {e}")))?;
                sig
            }
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut out);
        Ok(out)
    }
    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.cert_der)
    }
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }
    pub fn jwt_algorithm(&self) -> Algorithm {
        match self.alg {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::Rs256 => Algorithm::RS256,
        }
    }
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
    /// The public JWK as published in the JWKS (no private parts).
    pub fn public_jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    pub fn to_stored(&self, mk: &MasterKey) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            alg: self.alg.name().into(),
            cert_der_b64: STANDARD.encode(&self.cert_der),
            sealed_private_key: mk.seal(&self.pkcs8_der, self.kid.as_bytes()),
        }
    }

    pub fn from_stored(st: &StoredKey, mk: &MasterKey) -> Result<SigningKey> {
        let alg: SigningAlg = st.alg.parse()?;
        let pkcs8 = mk.open(&st.sealed_private_key, st.kid.as_bytes())?;
        let cert = STANDARD
            .decode(&st.cert_der_b64)
            .map_err(|e| Error::Key(e.to_string()))?;
        let k = Self::from_parts(alg, pkcs8, cert)?;
        if k.kid != st.kid {
            return Err(Error::Key(
                "stored kid does not match the certificate".into(),
            ));
        }
        Ok(k)
    }
}

enum Signer {
    Ec(aws_lc_rs::signature::EcdsaKeyPair),
    Rsa(aws_lc_rs::signature::RsaKeyPair),
}

// ---- client certificates ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { x: Vec<u8>, y: Vec<u8> },
}

/// A certificate a client registered, used to verify its `client_assertion` JWTs.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    der: Vec<u8>,
    key: PublicKey,
    not_before: i64,
    not_after: i64,
}

impl ClientCertificate {
    /// Accepts PEM, raw DER, or base64 DER.
    pub fn from_pem_or_der(input: &[u8]) -> Result<ClientCertificate> {
        let text = std::str::from_utf8(input).ok().map(str::trim);
        if let Some(t) = text
            && t.contains("-----BEGIN CERTIFICATE-----")
        {
            let (_, pem) = x509_parser::pem::parse_x509_pem(t.as_bytes()).map_err(cert_err)?;
            return Self::from_der(pem.contents);
        }
        if let Some(t) = text {
            let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            if let Ok(der) = STANDARD.decode(&compact) {
                return Self::from_der(der);
            }
        }
        Self::from_der(input.to_vec())
    }

    pub fn from_der(der: Vec<u8>) -> Result<ClientCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(cert_err)?;
        let spki = cert.public_key();
        let key = match spki.parsed().map_err(cert_err)? {
            x509_parser::public_key::PublicKey::RSA(r) => PublicKey::Rsa {
                n: strip_zeros(r.modulus).to_vec(),
                e: strip_zeros(r.exponent).to_vec(),
            },
            x509_parser::public_key::PublicKey::EC(p) => {
                let d = p.data();
                if d.len() != 65 || d[0] != 4 {
                    return Err(Error::Cert(
                        "only uncompressed P-256 EC keys are supported".into(),
                    ));
                }
                PublicKey::Ec {
                    x: d[1..33].to_vec(),
                    y: d[33..65].to_vec(),
                }
            }
            _ => {
                return Err(Error::Cert(
                    "the certificate's key must be RSA or EC P-256".into(),
                ));
            }
        };
        let v = cert.validity();
        let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
        drop(cert);
        Ok(ClientCertificate {
            der,
            key,
            not_before,
            not_after,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }
    pub fn x5t_sha1_b64url(&self) -> String {
        x5t_sha1(&self.der)
    }
    pub fn x5t_s256_b64url(&self) -> String {
        x5t_s256(&self.der)
    }
    pub fn not_before(&self) -> i64 {
        self.not_before
    }
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
    pub fn is_rsa(&self) -> bool {
        matches!(self.key, PublicKey::Rsa { .. })
    }

    pub fn decoding_key(&self) -> Result<DecodingKey> {
        match &self.key {
            PublicKey::Rsa { n, e } => Ok(DecodingKey::from_rsa_raw_components(n, e)),
            PublicKey::Ec { x, y } => DecodingKey::from_ec_components(
                &URL_SAFE_NO_PAD.encode(x),
                &URL_SAFE_NO_PAD.encode(y),
            )
            .map_err(|e| Error::Key(e.to_string())),
        }
    }
}

/// PEM ("PRIVATE KEY") text of a PKCS#8 DER key.
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let mut s = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END PRIVATE KEY-----\n");
    s
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[i..]
}

/// Does a presented `x5t` / `x5t#S256` value name this certificate? Accepts base64url and
/// standard base64 (with or without padding) and, for SHA-1, the hex thumbprint.
pub fn thumbprint_matches(cert: &ClientCertificate, presented: &str) -> bool {
    let p = presented.trim();
    let candidates = [
        URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok(),
        STANDARD.decode(p).ok(),
        STANDARD_NO_PAD.decode(p).ok(),
        URL_SAFE.decode(p).ok(),
        decode_hex(p),
    ];
    let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &cert.der);
    let sha256 = digest::digest(&digest::SHA256, &cert.der);
    candidates.iter().flatten().any(|d| {
        aws_lc_rs::constant_time::verify_slices_are_equal(d, sha1.as_ref()).is_ok()
            || aws_lc_rs::constant_time::verify_slices_are_equal(d, sha256.as_ref()).is_ok()
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;

/// Hex SHA-256 of `data` (for names derived from paths; not for secrets).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}
