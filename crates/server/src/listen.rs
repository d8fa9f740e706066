//! The accept loops of both listeners (HTTPS, and the optional plain HTTP one) and the
//! server's drain on SIGTERM.
//!
//! * A connection cap per listener: past [`Limits::max_connections`] open connections, a new
//!   one is closed as soon as it is accepted.
//! * Timeouts: the TLS handshake and each HTTP/1.1 request head (including the wait for the
//!   next request on a kept-alive connection) must finish within the header timeout; a
//!   connection of either protocol with no request in flight for the idle timeout is closed.
//! * A lingering close: when a connection ends while the client may still be sending (a
//!   response that left the request body unread, such as an early 401 or 413), the server
//!   half-closes its side and reads and discards what follows for a bounded time, so the
//!   client reads the status instead of a reset that would take the response with it.
//! * Draining: [`Drain`] counts requests in flight; once started, every request except
//!   `/healthz` and `/metrics` gets 503 with `Retry-After` (so does `/readyz`), and the caller
//!   waits for the count to reach zero, with a deadline.

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cloister_core::error::ArmError;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connection limits of a listener (see [`crate::config::HttpConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub linger: Duration,
    pub linger_bytes: u64,
}

impl Limits {
    pub fn from_config(c: &crate::config::HttpConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(c.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs.max(1)),
            max_connections: c.max_connections.max(1),
            linger: Duration::from_secs(c.linger_secs),
            linger_bytes: c.linger_bytes,
        }
    }
}

/// `Retry-After` (seconds) of the 503s a draining server answers.
pub const DRAIN_RETRY_AFTER: u64 = 5;

/// Shutdown state shared by the listeners, their connections and the [`gate`] middleware.
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    connections: AtomicUsize,
    changed: Notify,
    stop: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            changed: Notify::new(),
            stop: watch::channel(false).0,
        })
    }

    /// From now on new work gets 503 with `Retry-After`; requests already running go on.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests (other than probes) being served.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves when no request is in flight.
    pub async fn idle(&self) {
        self.wait_zero(&self.in_flight).await
    }

    /// Stops accepting and asks every open connection to close once its response is out.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves when every connection has closed.
    pub async fn closed(&self) {
        self.wait_zero(&self.connections).await
    }

    async fn wait_zero(&self, n: &AtomicUsize) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if n.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn count(self: &Arc<Self>, n: fn(&Drain) -> &AtomicUsize) -> Counted {
        n(self).fetch_add(1, Ordering::SeqCst);
        Counted {
            drain: self.clone(),
            n,
        }
    }
}

/// Holds one unit of a [`Drain`] counter while alive.
struct Counted {
    drain: Arc<Drain>,
    n: fn(&Drain) -> &AtomicUsize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if (self.n)(&self.drain).fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drain.changed.notify_waiters();
        }
    }
}

fn unavailable(version: Version) -> Response {
    let mut r = ArmError::new(
        503,
        "ServiceUnavailable",
        "The server is shutting down and takes no new work; retry later.",
    )
    .into_response();
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(DRAIN_RETRY_AFTER));
    h.insert(
        "x-ms-error-code",
        HeaderValue::from_static("ServiceUnavailable"),
    );
    if version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The outermost middleware: counts requests in flight, answers 503 while draining, and
/// marks `Connection: close` on an HTTP/1 response that left its request body unread (the
/// connection cannot carry another request; the client learns it from the response).
pub async fn gate(State(drain): State<Arc<Drain>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(req).await;
    }
    let version = req.version();
    if path == "/readyz" {
        if drain.is_draining() {
            return unavailable(version);
        }
        return next.run(req).await;
    }
    // Count first, then look at the flag: a request either is counted before the drain
    // reads the count, or sees the flag.
    let _counted = drain.count(|d| &d.in_flight);
    if drain.is_draining() {
        return unavailable(version);
    }
    let (parts, body) = req.into_parts();
    let done = Arc::new(AtomicBool::new(
        http_body::Body::is_end_stream(&body) || version >= Version::HTTP_2,
    ));
    let body = Body::new(Tracked {
        inner: body,
        done: done.clone(),
    });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !done.load(Ordering::SeqCst) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that notes when it has been read to the end.
struct Tracked {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::SeqCst);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream: plain TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath (for the lingering read, which needs no decryption).
    fn into_tcp(self) -> TcpStream;
}

impl Stream for TcpStream {
    fn into_tcp(self) -> TcpStream {
        self
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_tcp(self) -> TcpStream {
        self.into_inner().0
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until [`Drain::stop`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Arc<Limits>,
    drain: Arc<Drain>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop = drain.stop.subscribe();
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("cloister_http_connections_refused_total", "listener" => scheme)
                .increment(1);
            tracing::debug!(%peer, "connection cap reached; closing a new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, limits, drain) = (tls.clone(), app.clone(), limits.clone(), drain.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _open = drain.count(|d| &d.connections);
            let handshake_by = tokio::time::Instant::now() + limits.header_timeout;
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) =
                        tokio::time::timeout_at(handshake_by, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                    connection(s, h2, peer, app, &limits, &drain).await
                }
                None => {
                    let Some(h2) = sniff_h2c(&tcp, handshake_by).await else {
                        return;
                    };
                    connection(tcp, h2, peer, app, &limits, &drain).await
                }
            }
        });
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection speaks HTTP/2 with prior knowledge (`None`: the client sent
/// nothing conclusive in time, or went away).
async fn sniff_h2c(tcp: &TcpStream, by: tokio::time::Instant) -> Option<bool> {
    let mut buf = [0u8; 24];
    let mut pause = Duration::from_millis(2);
    loop {
        let n = tokio::time::timeout_at(by, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface so far: wait for more (peek returns at once while the
        // bytes it saw are still unread).
        if tokio::time::Instant::now() + pause > by {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    active: AtomicUsize,
    /// Milliseconds after `epoch` when a request last ended (or the connection opened).
    last: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(
            now.saturating_sub(self.last.load(Ordering::SeqCst)),
        ))
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .last
            .store(self.0.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

type RespFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Resolves when the connection should be asked to close: idle too long, or the server stops.
async fn close_wanted(act: &Activity, idle: Duration, stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match act.idle_for() {
            Some(d) if d >= idle => return,
            Some(d) => idle - d,
            None => idle,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn connection<S: Stream>(
    io: S,
    h2: bool,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    drain: &Drain,
) {
    let act = Arc::new(Activity {
        active: AtomicUsize::new(0),
        last: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    // A handler that answered 101 (the custom-container proxy) takes the connection over.
    let upgrade_slot = cloister_sessions::custom_proxy::UpgradeSlot::default();
    let svc = {
        let act = act.clone();
        let slot = upgrade_slot.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if !h2 {
                req.extensions_mut().insert(slot.clone());
            }
            act.active.fetch_add(1, Ordering::SeqCst);
            let busy = Busy(act.clone());
            let app = app.clone();
            Box::pin(async move {
                let r = app.oneshot(req.map(Body::new)).await;
                drop(busy);
                r
            }) as RespFuture
        })
    };
    let mut stop = drain.stop.subscribe();
    // After the connection was asked to close, the longest it may take to finish.
    let mut cut_at: Option<tokio::time::Instant> = None;
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        let conn = b.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = close_wanted(&act, limits.idle_timeout, &mut stop), if cut_at.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // GOAWAY lets streams in flight finish; an idle connection (one that may
                    // not even have finished its handshake, which hyper lets run) gets a
                    // second to go.
                    let grace = if act.active.load(Ordering::SeqCst) == 0 {
                        Duration::from_secs(1)
                    } else {
                        limits.header_timeout
                    };
                    cut_at = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until(cut_at) => return,
            }
        }
    }
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut conn = b.serve_connection(TokioIo::new(io), svc);
    let ended = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = close_wanted(&act, limits.idle_timeout, &mut stop), if cut_at.is_none() => {
                Pin::new(&mut conn).graceful_shutdown();
                cut_at = Some(tokio::time::Instant::now() + limits.header_timeout);
            }
            _ = sleep_until(cut_at) => return,
        }
    };
    if let Err(e) = &ended
        && e.is_timeout()
    {
        // A request head that never finished: nothing to deliver, just close.
        return;
    }
    let parts = conn.into_parts();
    if ended.is_ok()
        && let Some(to) = upgrade_slot.take()
    {
        // Upgraded (101): the bytes read past the request head go along with the socket.
        let _ = to.send((Box::new(parts.io.into_inner()), parts.read_buf));
        return;
    }
    linger(parts.io.into_inner(), limits).await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Closes a connection without losing what was sent: flush and half-close (TLS: after
/// close_notify), then read and discard until the client closes too, or the linger bounds
/// pass. Closing a socket with unread input makes the kernel send a reset, and a reset can
/// destroy the response before the client reads it.
async fn linger<S: Stream>(mut io: S, limits: &Limits) {
    if !matches!(
        tokio::time::timeout(limits.header_timeout, io.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let mut tcp = io.into_tcp();
    let until = tokio::time::Instant::now() + limits.linger;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while total < limits.linger_bytes {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n as u64,
            _ => return,
        }
    }
}
