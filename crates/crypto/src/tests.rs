use super::*;
use proptest::prelude::*;

#[test]
fn seal_open_roundtrip_and_tamper() {
    let mk = MasterKey::generate();
    let s = mk.seal(b"hello world", b"aad");
    assert_eq!(mk.open(&s, b"aad").unwrap(), b"hello world");
    assert!(mk.open(&s, b"other").is_err());
    for i in 0..s.len() {
        let mut t = s.clone();
        t[i] ^= 1;
        assert!(mk.open(&t, b"aad").is_err(), "byte {i} tamper undetected");
    }
    assert!(mk.open(&s[..s.len() - 1], b"aad").is_err());
    assert!(MasterKey::generate().open(&s, b"aad").is_err());
    // Each seal uses a fresh data key and nonce.
    assert_ne!(mk.seal(b"x", b"a"), mk.seal(b"x", b"a"));
}

#[test]
fn master_key_file_is_private_and_stable() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mk");
    let a = MasterKey::load_or_create(&p).unwrap();
    let b = MasterKey::load_or_create(&p).unwrap();
    assert_eq!(a.keyed_hash("x", b"1"), b.keyed_hash("x", b"1"));
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(&p, "c2hvcnQ=").unwrap();
    assert!(MasterKey::load_or_create(&p).is_err());
}

#[test]
fn keyed_hash_verifies() {
    let mk = MasterKey::generate();
    let h = mk.keyed_hash("client-secret", b"s3cret");
    assert!(mk.verify_keyed_hash("client-secret", b"s3cret", &h));
    assert!(!mk.verify_keyed_hash("client-secret", b"s3cres", &h));
    assert!(!mk.verify_keyed_hash("other", b"s3cret", &h));
    assert!(!mk.verify_keyed_hash("client-secret", b"s3cret", "!!!"));
}

#[test]
fn secrets_look_like_entra_and_never_print() {
    let s = new_client_secret();
    assert_eq!(s.expose().len(), 40);
    assert_eq!(&s.expose()[3..5], "Q~");
    assert_eq!(format!("{s:?}"), "Secret(***)");
}

fn sign_and_verify(alg: SigningAlg) {
    let k = SigningKey::generate(alg).unwrap();
    let mut h = jsonwebtoken::Header::new(k.jwt_algorithm());
    h.kid = Some(k.kid().into());
    let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
    let t = jsonwebtoken::encode(&h, &claims, k.encoding_key()).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.public_jwk()).unwrap();
    let dk = DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(k.jwt_algorithm());
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&t, &dk, &v).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(&t, k.decoding_key(), &v).unwrap();
    // Our own signer produces tokens the standard verifier accepts, with Entra's header.
    let own = k.sign_jwt(&claims).unwrap();
    let data = jsonwebtoken::decode::<serde_json::Value>(&own, &dk, &v).unwrap();
    assert_eq!(data.claims["sub"], "x");
    assert_eq!(data.header.kid.as_deref(), Some(k.kid()));
    assert_eq!(data.header.x5t.as_deref(), Some(k.kid()));
    assert!(k.public_jwk().get("d").is_none());
    // kid = x5t of the certificate in x5c.
    let der = STANDARD
        .decode(k.public_jwk()["x5c"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(k.kid(), x5t_sha1(&der));
    let mk = MasterKey::generate();
    let st = k.to_stored(&mk);
    let back = SigningKey::from_stored(&st, &mk).unwrap();
    assert_eq!(back.kid(), k.kid());
    jsonwebtoken::decode::<serde_json::Value>(&t, back.decoding_key(), &v).unwrap();
    assert!(SigningKey::from_stored(&st, &MasterKey::generate()).is_err());
}

#[test]
fn es256_keys() {
    sign_and_verify(SigningAlg::Es256);
}

#[test]
fn rs256_keys() {
    sign_and_verify(SigningAlg::Rs256);
}

#[test]
fn client_certificates_verify_rs256_and_ps256_and_thumbprints() {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let c = ClientCertificate::from_pem_or_der(cert.pem().as_bytes()).unwrap();
    assert!(c.is_rsa());
    let c2 = ClientCertificate::from_pem_or_der(STANDARD.encode(cert.der()).as_bytes()).unwrap();
    assert_eq!(c.der(), c2.der());
    let ek = EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap();
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &serde_json::json!({"a": 1}),
            &ek,
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(&t, &c.decoding_key().unwrap(), &v).unwrap();
    }
    let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der());
    assert!(thumbprint_matches(
        &c,
        &URL_SAFE_NO_PAD.encode(sha1.as_ref())
    ));
    assert!(thumbprint_matches(&c, &STANDARD.encode(sha1.as_ref())));
    let hex: String = sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    assert!(thumbprint_matches(&c, &hex));
    assert!(thumbprint_matches(&c, &c.x5t_s256_b64url()));
    assert!(!thumbprint_matches(&c, "AAAA"));
    assert!(ClientCertificate::from_pem_or_der(b"garbage").is_err());
    assert!(
        ClientCertificate::from_pem_or_der(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
        )
        .is_err()
    );
}

#[test]
fn ca_issues_server_certs() {
    let ca = Ca::generate("test ca").unwrap();
    let issued = ca
        .issue_server_cert(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 30)
        .unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
    let (_, capem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
    let (_, cacert) = x509_parser::parse_x509_certificate(&capem.contents).unwrap();
    assert_eq!(cert.issuer(), cacert.subject());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 2);
    // Reload from PEM and issue again.
    let again = Ca::from_pem(&ca.cert_pem(), ca.key_pem().expose()).unwrap();
    assert!(again.issue_server_cert(&["x".into()], &[], 1).is_ok());
}

proptest! {
    #[test]
    fn open_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mk = MasterKey::generate();
        prop_assert!(mk.open(&b, b"a").is_err());
    }
    #[test]
    fn cert_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ClientCertificate::from_pem_or_der(&b);
    }
    #[test]
    fn thumbprint_never_panics(s in ".{0,80}") {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c".into()]).unwrap().self_signed(&key).unwrap();
        let c = ClientCertificate::from_der(cert.der().to_vec()).unwrap();
        let _ = thumbprint_matches(&c, &s);
    }
}
