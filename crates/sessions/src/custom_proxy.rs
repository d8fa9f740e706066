//! The data plane of a CustomContainer pool: every request to
//! `{poolManagementEndpoint}/{path}?{query}` (except `.management/*`, answered by the API
//! router) goes to `http://<session container>/{path}?{query}`, the query unchanged
//! (`identifier` and `api-version` included), any method, the body streamed (at most
//! [`MAX_BODY`] bytes). Hop-by-hop headers and `Authorization` are stripped (the caller's token
//! must not reach code in the session); `X-Forwarded-For/-Proto/-Host` are added. WebSocket
//! (and other) upgrades are passed through: after `101` both sides are spliced with no timeout,
//! and the session's cooldown is reset while the connection is open. Dials are retried for a
//! container that just started (200, 400, 800 ms).
//!
//! Errors are Azure's data-plane envelope: 400 for a missing or bad identifier, 429 at
//! `maxConcurrentSessions`, 503 when a session could not be started (pull failure, startup
//! probe), 502 when the container does not answer.

use crate::error::DpError;
use crate::ident::{Query, validate};
use crate::pool::{Pool, PoolError};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body forwarded to a session container.
pub const MAX_BODY: usize = 128 * 1024 * 1024;
/// How long a container may take to answer (headers) a forwarded request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(240);
const DIAL_RETRIES: [u64; 3] = [200, 400, 800];

/// A connection handed over after a `101`: the socket and the bytes already read past the
/// request head.
pub type Handoff = (Box<dyn UpgradeIo>, bytes::Bytes);
pub trait UpgradeIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> UpgradeIo for T {}

/// Put into each HTTP/1.1 request's extensions by a server that drives its connections with
/// `poll_without_shutdown` (where hyper's own upgrade machinery is off): a handler that
/// answers 101 leaves a sender here, and the server, once the 101 is written, hands the
/// connection over through it. Without one, `hyper::upgrade::on` is used.
#[derive(Clone, Default)]
pub struct UpgradeSlot(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Handoff>>>>);

impl UpgradeSlot {
    pub fn take(&self) -> Option<tokio::sync::oneshot::Sender<Handoff>> {
        self.0.lock().unwrap().take()
    }
    fn put(&self) -> tokio::sync::oneshot::Receiver<Handoff> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.0.lock().unwrap() = Some(tx);
        rx
    }
}

enum ClientSide {
    Slot(UpgradeSlot),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// What the proxy adds as `X-Forwarded-*`: the caller's address and the public scheme/host.
pub struct Forwarded {
    pub client: Option<String>,
    pub proto: String,
}

const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    for n in HOP {
        if keep_upgrade && (n == "connection" || n == "upgrade") {
            continue;
        }
        h.remove(n);
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn bad_gateway(msg: String) -> DpError {
    DpError::new(502, "SessionContainerUnreachable", msg)
}

fn pool_err(e: PoolError) -> DpError {
    crate::error::pool_err(e)
}

async fn dial(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for (i, wait) in std::iter::once(0).chain(DIAL_RETRIES).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::Error::other("connect timed out")),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("connect failed")))
}

/// Forwards one request to the session of its `identifier` (allocated on first use).
/// `tail` is the raw path after the pool's endpoint (starting with `/`, possibly just `/`).
pub async fn forward(
    pool: &Arc<Pool>,
    mut req: Request,
    tail: &str,
    fwd: Forwarded,
) -> Result<Response<Body>, DpError> {
    let query = req.uri().query().map(str::to_string);
    let q = Query::parse(query.as_deref());
    let identifier = q.get("identifier").ok_or_else(|| {
        DpError::validation("The 'identifier' query parameter is required: it names the session.")
            .target("identifier")
    })?;
    validate(identifier).map_err(|m| DpError::validation(m).target("identifier"))?;
    let identifier = identifier.to_string();
    let mut replaced = false;
    let (sess, addr, stream) = loop {
        let (sess, guard) = pool.session(&identifier).await.map_err(pool_err)?;
        let addr = guard
            .as_ref()
            .and_then(|i| i.addr())
            .ok_or_else(|| bad_gateway("The session has no container to forward to.".into()))?;
        drop(guard);
        match dial(addr).await {
            Ok(s) => break (sess, addr, s),
            Err(e) => {
                // A container that ended just before this request (its exit not noticed
                // yet): the session goes and the identifier gets a fresh one, once.
                let g = sess.slot.clone().lock_owned().await;
                if !replaced && g.as_ref().is_some_and(|i| !i.is_alive()) {
                    replaced = true;
                    pool.delete_session(&sess, Some(g)).await;
                    continue;
                }
                return Err(bad_gateway(format!(
                    "The session's container did not accept a connection on its target port: {e}."
                )));
            }
        }
    };
    sess.touch();

    let upgrade = is_upgrade(req.headers());
    let pq = match &query {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_string(),
    };
    let uri: Uri = pq
        .parse()
        .map_err(|_| DpError::bad("The request path cannot be forwarded."))?;
    let client_upgrade = upgrade.then(|| match req.extensions().get::<UpgradeSlot>() {
        Some(s) => ClientSide::Slot(s.clone()),
        None => ClientSide::Hyper(hyper::upgrade::on(&mut req)),
    });
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers.clone();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    strip_hop(&mut headers, upgrade);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove("x-forwarded-host");
    headers.remove("x-forwarded-proto");
    let xff = match (
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        &fwd.client,
    ) {
        (Some(prev), Some(c)) => Some(format!("{prev}, {c}")),
        (None, Some(c)) => Some(c.clone()),
        (Some(prev), None) => Some(prev.to_string()),
        (None, None) => None,
    };
    headers.remove("x-forwarded-for");
    if let Some(x) = xff.and_then(|x| HeaderValue::from_str(&x).ok()) {
        headers.insert("x-forwarded-for", x);
    }
    if let Ok(v) = HeaderValue::from_str(&fwd.proto) {
        headers.insert("x-forwarded-proto", v);
    }
    if !host.is_empty()
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        headers.insert("x-forwarded-host", v);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
    );
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(hyper::Version::HTTP_11)
        .body(http_body_util::Limited::new(body, MAX_BODY))
        .map_err(|e| DpError::bad(format!("The request cannot be forwarded: {e}")))?;
    *out.headers_mut() = headers;

    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(format!("The session's container did not answer: {e}.")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = match tokio::time::timeout(RESPONSE_TIMEOUT, send.send_request(out)).await {
        Err(_) => {
            return Err(DpError::new(
                504,
                "SessionContainerTimeout",
                format!(
                    "The session's container did not answer within {} s.",
                    RESPONSE_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| {
                s.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                    || s.to_string().contains("length limit exceeded")
            });
            if too_large {
                return Err(DpError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!("The request body is larger than {MAX_BODY} bytes."),
                ));
            }
            return Err(bad_gateway(format!(
                "The session's container did not answer: {e}."
            )));
        }
        Ok(Ok(r)) => r,
    };
    sess.touch();
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let server_upgrade =
        (switching && client_upgrade.is_some()).then(|| hyper::upgrade::on(&mut resp));
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop(&mut rparts.headers, switching);
    rparts.extensions.insert(cloister_core::error::Verbatim);
    if let (Some(cu), Some(su)) = (client_upgrade, server_upgrade) {
        let s = sess.clone();
        let client: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Handoff>> + Send>> =
            match cu {
                ClientSide::Slot(slot) => {
                    let rx = slot.put();
                    Box::pin(async move { rx.await.ok() })
                }
                ClientSide::Hyper(on) => Box::pin(async move {
                    on.await.ok().map(|u| {
                        (
                            Box::new(TokioIo::new(u)) as Box<dyn UpgradeIo>,
                            bytes::Bytes::new(),
                        )
                    })
                }),
            };
        tokio::spawn(async move {
            let (Some((mut c, early)), Ok(u)) = (client.await, su.await) else {
                return;
            };
            let mut u = TokioIo::new(u);
            if !early.is_empty() {
                use tokio::io::AsyncWriteExt;
                if u.write_all(&early).await.is_err() {
                    return;
                }
            }
            let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
            tokio::pin!(copy);
            // An open connection is activity: the cooldown is reset while it lasts.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = &mut copy => break,
                    _ = tick.tick() => s.touch(),
                }
            }
            s.touch();
        });
        return Ok(Response::from_parts(rparts, Body::empty()));
    }
    Ok(Response::from_parts(rparts, Body::new(rbody)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop(&mut h, true);
        assert!(is_upgrade(&h));
        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            !is_upgrade(&plain),
            "Upgrade without Connection: upgrade is no upgrade"
        );
    }
}
