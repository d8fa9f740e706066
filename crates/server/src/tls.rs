//! The private CA (created on first start, shared through the store, its certificate
//! written to `DATA_DIR/ca.pem`) and the server certificate it issues. The accept loops are
//! in [`crate::listen`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloister_crypto::{Ca, MasterKey};
use cloister_store::Store;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

const CA_CERT_KEY: &str = "ca_cert_pem";
const CA_KEY_KEY: &str = "ca_key_sealed";

/// Loads the CA from the store or creates it, and writes its certificate to `ca.pem`.
pub async fn load_or_create_ca(
    store: &Store,
    mk: &MasterKey,
    data_dir: &Path,
) -> anyhow::Result<Ca> {
    let ca = match (
        store.meta_get(CA_CERT_KEY).await?,
        store.meta_get(CA_KEY_KEY).await?,
    ) {
        (Some(cert), Some(sealed)) => {
            let key = mk
                .open(&STANDARD.decode(sealed)?, b"cloister ca key")
                .map_err(|e| anyhow::anyhow!("cannot open the CA key (wrong master key?): {e}"))?;
            Ca::from_pem(&cert, std::str::from_utf8(&key)?)?
        }
        _ => {
            let ca = Ca::generate("Cloister Private CA")?;
            let sealed =
                STANDARD.encode(mk.seal(ca.key_pem().expose().as_bytes(), b"cloister ca key"));
            // Two nodes starting at once: the first insert wins, the other re-reads.
            if store.meta_insert_if_absent(CA_KEY_KEY, &sealed).await? {
                store.meta_set(CA_CERT_KEY, &ca.cert_pem()).await?;
                ca
            } else {
                return Box::pin(load_or_create_ca(store, mk, data_dir)).await;
            }
        }
    };
    write_file_0600(&data_dir.join("ca.pem"), ca.cert_pem().as_bytes())?;
    Ok(ca)
}

/// Writes a file atomically with mode 0600.
pub fn write_file_0600(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A rustls acceptor with a fresh server certificate from the CA.
pub fn acceptor(
    ca: &Ca,
    listen: &SocketAddr,
    extra_names: &[String],
) -> anyhow::Result<TlsAcceptor> {
    let mut names = vec!["localhost".to_string()];
    names.extend(extra_names.iter().cloned());
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    let issued = ca.issue_server_cert(&names, &ips, 397)?;
    let certs =
        rustls_pemfile::certs(&mut issued.chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut issued.key_pem.expose().as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("issued key is not PEM"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
