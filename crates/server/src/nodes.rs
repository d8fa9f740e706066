//! The internal channel between Cloister nodes that serve one store's session pools.
//!
//! Each node listens on an internal HTTPS address with a node certificate from the private
//! CA (client and server usage) and requires the same of its callers (mutual TLS): public
//! server certificates carry no client-auth usage, and a caller without a certificate from the
//! CA is refused in the handshake. A request for a session that another node owns is sent
//! there by [`NodeForwarder`]: method, path, query, headers (the caller's `Authorization`
//! and hop-by-hop headers removed) and the body, streamed both ways; the caller was
//! authorized once, at the node that received the request, and the owner serves it as that
//! caller without forwarding it again.

use crate::config::ServerConfig;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloister_crypto::Ca;
use cloister_sessions::Manager;
use cloister_sessions::api::{Authorizer, DataPlane, Forwarder};
use cloister_sessions::cluster::{Cluster, NodeConfig};
use cloister_sessions::error::DpError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The scheme of the `Authorization` header on the internal channel: the caller's object id,
/// as authorized by the forwarding node. Only a peer that passed mutual TLS can send it.
const FORWARDED_SCHEME: &str = "CloisterNode ";

/// What [`start`] sets up: the forwarder for the public data plane, and the internal
/// listener to serve.
pub struct Node {
    pub forwarder: Arc<NodeForwarder>,
    pub listener: tokio::net::TcpListener,
    pub acceptor: TlsAcceptor,
    pub address: String,
}

/// Joins the cluster: binds the internal listener, issues this node's certificate, and
/// registers the node (its first heartbeat) before any pool is loaded.
pub async fn start(
    cfg: &ServerConfig,
    ca: &Ca,
    store: cloister_store::Store,
    manager: &Arc<Manager>,
) -> anyhow::Result<Node> {
    let c = &cfg.cluster;
    let listener = tokio::net::TcpListener::bind(c.internal_listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding the internal listener {}: {e}", c.internal_listen))?;
    let local = listener.local_addr()?;
    let address = c
        .internal_url
        .clone()
        .unwrap_or_else(|| format!("https://{local}"))
        .trim_end_matches('/')
        .to_string();
    let node_id = match &c.node_id {
        Some(id) => id.clone(),
        None => stable_node_id(&cfg.data_dir)?,
    };
    let issued = node_cert(cfg, ca, &node_id, &local, &address)?;
    let acceptor = internal_acceptor(ca, &issued)?;
    let client = client(ca, &issued)?;
    let cluster = Arc::new(Cluster::new(
        store,
        NodeConfig {
            id: node_id.clone(),
            address: address.clone(),
            lease_ttl: Duration::from_secs(c.lease_ttl_secs.max(1)),
            max_sandboxes: c.max_sandboxes,
        },
    ));
    manager
        .join(cluster)
        .await
        .map_err(|e| anyhow::anyhow!("joining the cluster: {e}"))?;
    tracing::info!(node = %node_id, %address, "serving the internal channel");
    Ok(Node {
        forwarder: Arc::new(NodeForwarder { client }),
        listener,
        acceptor,
        address,
    })
}

/// The node id kept in `DATA_DIR/node.id`: a node restarted on its data directory comes back
/// as itself, so its first heartbeat drops the leases of its previous process at once
/// (instead of other nodes forwarding to the dead process until its leases lapse).
fn stable_node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Ok(s.to_string());
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::tls::write_file_0600(&path, id.as_bytes())?;
    Ok(id)
}

fn node_cert(
    cfg: &ServerConfig,
    ca: &Ca,
    node_id: &str,
    local: &SocketAddr,
    address: &str,
) -> anyhow::Result<cloister_crypto::IssuedCert> {
    let mut names = vec!["localhost".to_string()];
    names.extend(cfg.tls_names.iter().cloned());
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    if !local.ip().is_unspecified() && !ips.contains(&local.ip()) {
        ips.push(local.ip());
    }
    if let Ok(u) = url::Url::parse(address) {
        match u.host() {
            Some(url::Host::Domain(d)) => names.push(d.to_string()),
            Some(url::Host::Ipv4(a)) if !ips.contains(&IpAddr::V4(a)) => ips.push(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) if !ips.contains(&IpAddr::V6(a)) => ips.push(IpAddr::V6(a)),
            _ => {}
        }
    }
    Ok(ca.issue_node_cert(node_id, &names, &ips, 397)?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Ca) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
        roots.add(c?)?;
    }
    Ok(roots)
}

/// TLS for the internal listener: this node's certificate, and a client certificate from
/// the CA with client-auth usage required of every caller.
fn internal_acceptor(ca: &Ca, issued: &cloister_crypto::IssuedCert) -> anyhow::Result<TlsAcceptor> {
    let certs =
        rustls_pemfile::certs(&mut issued.chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut issued.key_pem.expose().as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("issued key is not PEM"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn client(ca: &Ca, issued: &cloister_crypto::IssuedCert) -> anyhow::Result<reqwest::Client> {
    let pem = format!("{}{}", issued.key_pem.expose(), issued.chain_pem);
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?])
        .identity(reqwest::Identity::from_pem(pem.as_bytes())?)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(50))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1), and those the
/// internal channel replaces.
fn skip_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !skip_header(k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

pub struct NodeForwarder {
    client: reqwest::Client,
}

#[async_trait::async_trait]
impl Forwarder for NodeForwarder {
    async fn forward(&self, address: &str, caller: &str, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{address}{pq}");
        let mut headers = HeaderMap::new();
        copy_headers(&parts.headers, &mut headers);
        let Ok(auth) = HeaderValue::from_str(&format!("{FORWARDED_SCHEME}{caller}")) else {
            return DpError::new(
                500,
                "InternalServerError",
                "The caller id is not a header value.",
            )
            .into_response();
        };
        headers.insert(header::AUTHORIZATION, auth);
        let r = self
            .client
            .request(parts.method, &url)
            .headers(headers)
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await;
        match r {
            Ok(resp) => {
                let mut out = Response::builder().status(resp.status());
                if let Some(h) = out.headers_mut() {
                    copy_headers(resp.headers(), h);
                }
                out.body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
            }
            Err(e) => {
                tracing::warn!(%address, "forwarding to the session's node: {e}");
                let mut d = DpError::new(
                    503,
                    "SessionNodeUnavailable",
                    "The node that holds this session did not answer; retry the request.",
                );
                d.retry_after = Some(1);
                d.into_response()
            }
        }
    }
}

/// The internal channel's authorizer: the forwarding node already authorized the caller;
/// mutual TLS already proved the peer is a node.
struct Forwarded;

impl Authorizer for Forwarded {
    fn authorize(&self, authorization: Option<&str>, _pool_id: &str) -> Result<String, DpError> {
        authorization
            .and_then(|a| a.strip_prefix(FORWARDED_SCHEME))
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                DpError::new(
                    401,
                    "Unauthorized",
                    "The internal channel serves forwarded requests only.",
                )
            })
    }
}

/// The internal channel's routes: the session data plane, served where it lands.
pub fn router(manager: Arc<Manager>, public_url: String) -> axum::Router {
    let dp = Arc::new(DataPlane {
        manager,
        auth: Arc::new(Forwarded),
        public_url,
        forward: None,
    });
    cloister_sessions::api::router(dp).layer(axum::extract::DefaultBodyLimit::disable())
}
