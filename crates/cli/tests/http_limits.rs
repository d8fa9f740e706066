//! The listeners under hostile clients: slow request heads, idle and surplus connections,
//! early rejections of requests with large bodies, and upload requests larger than memory
//! should allow. Raw sockets (plain and TLS) stand in for clients that misbehave or, like
//! Python `requests`, send the whole body before they read the response.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEGACY: &str = "2024-02-02-preview";
const MIB: usize = 1 << 20;

enum Raw {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Raw {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Raw::Plain(s) => s.read(b),
            Raw::Tls(s) => s.read(b),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Raw::Plain(s) => s.write(b),
            Raw::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Raw::Plain(s) => s.flush(),
            Raw::Tls(s) => s.flush(),
        }
    }
}

impl Raw {
    fn tcp(&self) -> &TcpStream {
        match self {
            Raw::Plain(s) => s,
            Raw::Tls(s) => s.get_ref(),
        }
    }
}

fn tls_config(s: &Server, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(s.data_dir().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// A connection with the TLS handshake done (when `tls`).
fn connect(s: &Server, tls: Option<&Arc<rustls::ClientConfig>>) -> Raw {
    match tls {
        None => Raw::Plain(TcpStream::connect(("127.0.0.1", s.http_port)).unwrap()),
        Some(cfg) => {
            let tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
            let mut st = rustls::StreamOwned::new(conn, tcp);
            while st.conn.is_handshaking() {
                st.conn.complete_io(&mut st.sock).unwrap();
            }
            Raw::Tls(Box::new(st))
        }
    }
}

/// Reads a response head; returns the status and the head's text.
fn read_head(c: &mut Raw) -> std::io::Result<(u16, String)> {
    let mut buf = vec![];
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut b)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&buf)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            ));
        }
        buf.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// Whether the server closed the connection: a read sees end of file or a reset before
/// `by`, rather than timing out.
fn closed_by(c: &mut Raw, by: Instant) -> bool {
    let mut b = [0u8; 1024];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        c.tcp().set_read_timeout(Some(left)).unwrap();
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn vm_hwm_kib(s: &Server) -> u64 {
    let pid = s.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn healthz_works(s: &Server) {
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(s.http_url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn slow_request_heads_are_closed_on_both_listeners_while_others_are_served() {
    let s = Server::start_with_config("[http]\nheader_timeout_secs = 2\n").await;
    let cfg = tls_config(&s, b"http/1.1");
    let t0 = Instant::now();
    let mut slow = vec![];
    for i in 0..200 {
        let mut c = if i < 50 {
            connect(&s, Some(&cfg))
        } else {
            connect(&s, None)
        };
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .unwrap();
        c.flush().unwrap();
        slow.push(c);
    }
    // Connections that never start the TLS handshake.
    let mut silent: Vec<Raw> = (0..10)
        .map(|_| Raw::Plain(TcpStream::connect(("127.0.0.1", s.port)).unwrap()))
        .collect();
    // Everyone else is served meanwhile.
    healthz_works(&s).await;
    let by = t0 + Duration::from_secs(6);
    let (slow, silent) = tokio::task::spawn_blocking(move || {
        let a = slow
            .iter_mut()
            .map(|c| closed_by(c, by))
            .filter(|x| *x)
            .count();
        let b = silent
            .iter_mut()
            .map(|c| closed_by(c, by))
            .filter(|x| *x)
            .count();
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(slow, 200, "every unfinished request head was cut off");
    assert_eq!(silent, 10, "every stalled TLS handshake was cut off");
    // Fresh connections: the pooled ones from the first check sat idle past the 2 s header
    // timeout, and the server rightly closed them.
    let fresh = s
        .client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = fresh.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = fresh.get(s.http_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = Server::start_with_config("[http]\nheader_timeout_secs = 30\nidle_timeout_secs = 2\n")
        .await;
    let h1 = tls_config(&s, b"http/1.1");
    let h2 = tls_config(&s, b"h2");
    let s = Arc::new(s);
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        let s = s2;
        // A kept-alive HTTP/1.1 connection after one request, on either listener.
        for tls in [None, Some(&h1)] {
            let mut c = connect(&s, tls);
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let (st, _) = read_head(&mut c).unwrap();
            assert_eq!(st, 200);
            let t = Instant::now();
            assert!(
                closed_by(&mut c, t + Duration::from_secs(5)),
                "an idle HTTP/1.1 connection stayed open (tls: {})",
                tls.is_some()
            );
            assert!(
                t.elapsed() >= Duration::from_millis(1500),
                "closed too early"
            );
        }
        // HTTP/2 over TLS that never sends a request, and h2c with prior knowledge that
        // only sends the preface (the server answers with its SETTINGS first).
        let mut c = connect(&s, Some(&h2));
        assert!(
            closed_by(&mut c, Instant::now() + Duration::from_secs(5)),
            "an idle HTTP/2 connection stayed open"
        );
        let mut c = connect(&s, None);
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        let mut frame = [0u8; 9];
        c.read_exact(&mut frame).unwrap();
        assert_eq!(frame[3], 4, "an h2c server speaks first with SETTINGS");
        assert!(
            closed_by(&mut c, Instant::now() + Duration::from_secs(5)),
            "an idle h2c connection stayed open"
        );
    })
    .await
    .unwrap();
    healthz_works(&s).await;
}

#[tokio::test]
async fn each_listener_caps_its_connections() {
    let s =
        Server::start_with_config("[http]\nmax_connections = 8\nheader_timeout_secs = 30\n").await;
    let mut held: Vec<Raw> = (0..8).map(|_| connect(&s, None)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = connect(&s, None);
    assert!(
        closed_by(&mut extra, Instant::now() + Duration::from_secs(2)),
        "a ninth connection was kept past the cap"
    );
    // The cap is per listener: HTTPS still serves.
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Held connections still work; once they go, new ones are accepted again.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_head(&mut held[0]).unwrap().0, 200);
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = reqwest::Client::new();
        if let Ok(r) = c.get(s.http_url("/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a whole request (head and body) before reading anything, as Python `requests`
/// does; returns the status the client read, or what went wrong.
fn send_all_then_read(c: &mut Raw, head: &str, body_len: usize) -> Result<u16, String> {
    c.write_all(head.as_bytes())
        .map_err(|e| format!("head: {e}"))?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        c.write_all(&chunk[..n])
            .map_err(|e| format!("body, {} bytes in: {e}", body_len - left))?;
        left -= n;
    }
    c.flush().map_err(|e| format!("flush: {e}"))?;
    read_head(c)
        .map(|(s, _)| s)
        .map_err(|e| format!("read: {e}"))
}

#[tokio::test]
async fn early_rejections_reach_the_client_as_a_status() {
    let s = Arc::new(Server::start().await);
    let h1 = tls_config(&s, b"http/1.1");
    let s2 = s.clone();
    let failures = tokio::task::spawn_blocking(move || {
        let s = s2;
        let mut failures = vec![];
        let upload = format!(
            "/dynamicsessions/subscriptions/{}/resourceGroups/rg/sessionPools/p/files/upload?api-version={LEGACY}&identifier=x",
            s.sub()
        );
        let arm = format!(
            "/subscriptions/{}/resourceGroups/big?api-version=2021-04-01",
            s.sub()
        );
        for round in 0..10 {
            for tls in [None, Some(&h1)] {
                let size = (1 + round) * MIB;
                let cases = [
                    (
                        "POST",
                        upload.as_str(),
                        "multipart/form-data; boundary=b",
                        vec![401],
                    ),
                    ("PUT", arm.as_str(), "application/json", vec![401, 413]),
                ];
                for (method, path, ct, want) in cases {
                    let mut c = connect(&s, tls);
                    let head = format!(
                        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer not-a-token\r\nContent-Type: {ct}\r\nContent-Length: {size}\r\n\r\n"
                    );
                    match send_all_then_read(&mut c, &head, size) {
                        Ok(st) if want.contains(&st) => {}
                        other => failures.push(format!(
                            "{method} {} MiB tls={}: {other:?}",
                            size / MIB,
                            tls.is_some()
                        )),
                    }
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn uploads_stream_to_the_sandbox_and_are_capped_per_request() {
    let s = Arc::new(Server::start().await);
    let (endpoint, token) = s.executor_pool("up", "uppool").await;
    let url = |p: &str| format!("{endpoint}/{p}");
    // Warm the session up so the measurements below are the upload's alone.
    let r = s
        .http
        .post(url(&format!(
            "code/execute?api-version={LEGACY}&identifier=uploader"
        )))
        .bearer_auth(&token)
        .json(&json!({"properties": {"code": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let base = vm_hwm_kib(&s);
    let t0 = Instant::now();
    // Two 32 MiB files in one request: accepted, and streamed through.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1u8; 32 * MIB]).file_name("a.bin"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![2u8; 32 * MIB]).file_name("b.bin"),
        );
    let r = s
        .http
        .post(url(&format!(
            "files/upload?api-version={LEGACY}&identifier=uploader"
        )))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let st = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 200, "{v}");
    let sizes: Vec<u64> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![32 * MIB as u64; 2], "{v}");
    let grown = vm_hwm_kib(&s).saturating_sub(base) / 1024;
    eprintln!(
        "64 MiB upload: {:?}, peak memory +{grown} MiB",
        t0.elapsed()
    );
    assert!(
        grown < 24,
        "a 64 MiB upload raised the server's peak memory by {grown} MiB"
    );
    let path = url(&format!(
        "files/upload?api-version={LEGACY}&identifier=uploader"
    ));
    let path = path
        .strip_prefix(&format!("https://127.0.0.1:{}", s.port))
        .unwrap()
        .to_string();
    let s2 = s.clone();
    let tok = token.clone();
    tokio::task::spawn_blocking(move || {
        let s = s2;
        // Six 60 MiB files declared up front: 413 before any of the body is sent.
        let mut c = connect(&s, None);
        c.write_all(format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\nContent-Type: multipart/form-data; boundary=BB\r\nContent-Length: {}\r\n\r\n", 360 * MIB + 1000).as_bytes()).unwrap();
        c.tcp().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (st, head) = read_head(&mut c).unwrap();
        assert_eq!(st, 413, "{head}");
        assert!(head.contains("RequestEntityTooLarge"), "{head}");
        // Without a token: 401, also before the body.
        let mut c = connect(&s, None);
        c.write_all(format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=BB\r\nContent-Length: {}\r\n\r\n", 100 * MIB).as_bytes()).unwrap();
        c.tcp().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_head(&mut c).unwrap().0, 401);
        // The same six files chunked (no length up front), after a 100 MiB form field:
        // 413 once the request passes the cap (in the first file), while the client is
        // still sending.
        let mut c = connect(&s, None);
        let Raw::Plain(tcp) = &c else { unreachable!() };
        let mut w = tcp.try_clone().unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\nContent-Type: multipart/form-data; boundary=BB\r\nTransfer-Encoding: chunked\r\n\r\n");
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(head.as_bytes())?;
            let mut send = |b: &[u8]| -> std::io::Result<()> {
                w.write_all(format!("{:x}\r\n", b.len()).as_bytes())?;
                w.write_all(b)?;
                w.write_all(b"\r\n")
            };
            let block = vec![7u8; MIB];
            send(b"--BB\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n")?;
            for _ in 0..100 {
                send(&block)?;
            }
            send(b"\r\n")?;
            for i in 0..6 {
                send(format!("--BB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c{i}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes())?;
                for _ in 0..60 {
                    send(&block)?;
                }
                send(b"\r\n")?;
            }
            send(b"--BB--\r\n")?;
            w.write_all(b"0\r\n\r\n")
        });
        c.tcp().set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let t = Instant::now();
        let (st, head) = read_head(&mut c).unwrap();
        eprintln!("chunked 413 after {:?}", t.elapsed());
        assert_eq!(st, 413, "{head}");
        let _ = writer.join();
        eprintln!("writer done after {:?}", t.elapsed());
    })
    .await
    .unwrap();
    let grown = vm_hwm_kib(&s).saturating_sub(base) / 1024;
    eprintln!("all uploads: {:?}, peak memory +{grown} MiB", t0.elapsed());
    assert!(
        grown < 24,
        "upload requests raised the server's peak memory by {grown} MiB"
    );
    // The session still works, and holds the files of the accepted request.
    let r = s
        .http
        .get(url(&format!(
            "files?api-version={LEGACY}&identifier=uploader"
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["filename"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"a.bin") && names.contains(&"b.bin"), "{v}");
}
