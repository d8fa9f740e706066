//! The Bearer token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`), as Docker Hub,
//! ACR and GHCR speak it: a token service and a gate in front of a real registry, both on
//! loopback, written here in a few lines (Debian's registry only does token auth with a JWT
//! issuer we would have to build anyway).

mod common;

use std::sync::{Arc, Mutex};

use cloister_images::{PullError, RegistryAuth};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Token requests seen: (query, the Authorization header if any).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Gate {
    addr: String,
    /// Token requests seen: (query, had basic auth).
    seen: Seen,
}

/// Starts a gate on loopback: `/token` hands out a token for user `robot` / password `pw` (and for
/// anonymous requests whose scope is a `public/` repository); `/v2/…` requires the token and
/// forwards to `upstream`. `realm` overrides the advertised realm.
async fn gate(upstream: String, realm: Option<String>) -> Gate {
    gate_with(upstream, realm, false).await
}

/// As `gate`; with `redirect_blobs`, blob requests are answered with a 307 to the upstream
/// registry itself (as registries do to their blob storage).
async fn gate_with(upstream: String, realm: Option<String>, redirect_blobs: bool) -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let realm = realm.unwrap_or_else(|| format!("http://{addr}/token"));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (upstream, realm, seen) = (upstream.clone(), realm.clone(), seen2.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                let mut line = String::new();
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                let mut auth = None;
                let mut accept = String::new();
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = Some(v.trim().to_string());
                    } else if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("accept")
                    {
                        accept = v.trim().to_string();
                    }
                }
                let repo = path
                    .strip_prefix("/v2/")
                    .and_then(|p| {
                        p.split_once("/manifests/")
                            .or_else(|| p.split_once("/blobs/"))
                    })
                    .map(|(r, _)| r.to_string())
                    .unwrap_or_default();
                let public = repo.starts_with("public/");
                let (status, headers, body) = if let Some(q) = path.strip_prefix("/token?") {
                    seen.lock().unwrap().push((q.to_string(), auth.clone()));
                    let robot = format!("Basic {}", base64_encode("robot:pw"));
                    let wants_public = q.contains("repository%3Apublic%2F");
                    let token = if auth.as_deref() == Some(robot.as_str()) {
                        Some("tok-robot")
                    } else if auth.is_none() && wants_public {
                        Some("tok-anon")
                    } else {
                        None
                    };
                    match token {
                        Some(t) => (
                            200,
                            vec![("content-type".into(), "application/json".into())],
                            format!(r#"{{"token":"{t}"}}"#).into_bytes(),
                        ),
                        None => (401, vec![], b"{}".to_vec()),
                    }
                } else if redirect_blobs
                    && path.contains("/blobs/")
                    && auth.as_deref() == Some("Bearer tok-robot")
                {
                    (
                        307,
                        vec![("location".into(), format!("http://{upstream}{path}"))],
                        Vec::new(),
                    )
                } else if auth.as_deref() == Some("Bearer tok-robot")
                    || (public && auth.as_deref() == Some("Bearer tok-anon"))
                {
                    let r = reqwest::Client::new()
                        .get(format!("http://{upstream}{path}"))
                        .header("accept", accept)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let mut hs = Vec::new();
                    for k in ["content-type", "docker-content-digest"] {
                        if let Some(v) = r.headers().get(k) {
                            hs.push((k.to_string(), v.to_str().unwrap().to_string()));
                        }
                    }
                    (status, hs, r.bytes().await.unwrap().to_vec())
                } else {
                    let challenge = format!(
                        r#"Bearer realm="{realm}",service="cloister-gate",scope="repository:{repo}:pull""#
                    );
                    (
                        401,
                        vec![("www-authenticate".into(), challenge)],
                        br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                    )
                };
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = wr.write_all(head.as_bytes()).await;
                let _ = wr.write_all(&body).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    Gate { addr, seen }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn gate_opts(g: &Gate) -> cloister_images::PullOptions {
    cloister_images::PullOptions {
        plain_http: vec![g.addr.clone()],
        timeout: std::time::Duration::from_secs(60),
        max_bytes: 1 << 30,
    }
}

#[tokio::test]
async fn bearer_tokens_with_credentials_and_anonymously() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let (digest, _) = reg
        .push_image(
            "private/app",
            "v1",
            &[layer(&[E::File("who", b"private")])],
            default_config(),
        )
        .await;
    let (pdigest, _) = reg
        .push_image(
            "public/app",
            "v1",
            &[layer(&[E::File("who", b"public")])],
            default_config(),
        )
        .await;
    let g = gate(reg.addr.clone(), None).await;
    let ts = TempStore::new();

    let robot = RegistryAuth {
        username: "robot".into(),
        password: "pw".into(),
    };
    let image = ts
        .store
        .pull(
            &format!("{}/private/app:v1", g.addr),
            Some(&robot),
            &gate_opts(&g),
        )
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(std::fs::read(image.rootfs.join("who")).unwrap(), b"private");
    {
        let seen = g.seen.lock().unwrap();
        let (q, auth) = &seen[0];
        assert!(
            q.contains("service=cloister-gate")
                && q.contains("scope=repository%3Aprivate%2Fapp%3Apull"),
            "{q}"
        );
        assert!(
            auth.as_deref().is_some_and(|a| a.starts_with("Basic ")),
            "credentials go to the realm"
        );
    }

    // Wrong password: the token service says no.
    let wrong = RegistryAuth {
        username: "robot".into(),
        password: "nope".into(),
    };
    let err = TempStore::new()
        .store
        .pull(
            &format!("{}/private/app:v1", g.addr),
            Some(&wrong),
            &gate_opts(&g),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(
        err.to_string().contains("token service") && !err.to_string().contains("nope"),
        "{err}"
    );

    // Anonymous: a token for the public repository, none for the private one.
    let g2 = gate(reg.addr.clone(), None).await;
    let anon = TempStore::new();
    let image = anon
        .store
        .pull(&format!("{}/public/app:v1", g2.addr), None, &gate_opts(&g2))
        .await
        .unwrap();
    assert_eq!(image.digest, pdigest);
    assert_eq!(std::fs::read(image.rootfs.join("who")).unwrap(), b"public");
    assert!(
        g2.seen.lock().unwrap().iter().all(|(_, a)| a.is_none()),
        "anonymous means no Authorization"
    );
    let err = anon
        .store
        .pull(
            &format!("{}/private/app:v1", g2.addr),
            None,
            &gate_opts(&g2),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("anonymous"), "{err}");
}

#[tokio::test]
async fn credentials_never_go_to_a_plain_http_realm_nobody_listed() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    reg.push_image(
        "private/app",
        "v1",
        &[layer(&[E::File("who", b"private")])],
        default_config(),
    )
    .await;
    // The realm is another loopback port, not listed as plain HTTP.
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let g = gate(reg.addr.clone(), Some(format!("http://{trap_addr}/token"))).await;
    let robot = RegistryAuth {
        username: "robot".into(),
        password: "pw".into(),
    };
    let err = TempStore::new()
        .store
        .pull(
            &format!("{}/private/app:v1", g.addr),
            Some(&robot),
            &gate_opts(&g),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("not HTTPS"), "{err}");
    // Nobody connected to the trap.
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), trap.accept()).await;
    assert!(
        accepted.is_err(),
        "the client connected to the unlisted realm"
    );
}

#[tokio::test]
async fn blob_redirects_are_followed_but_never_downgraded_to_an_unlisted_http_host() {
    require_tools!("docker-registry");
    let reg = TestRegistry::start(None);
    let (digest, _) = reg
        .push_image(
            "private/app",
            "v1",
            &[layer(&[E::File("who", b"redirected")])],
            default_config(),
        )
        .await;
    let g = gate_with(reg.addr.clone(), None, true).await;
    let robot = RegistryAuth {
        username: "robot".into(),
        password: "pw".into(),
    };
    let r = format!("{}/private/app:v1", g.addr);

    // The blob host is plain HTTP and not listed: the redirect is refused.
    let err = TempStore::new()
        .store
        .pull(&r, Some(&robot), &gate_opts(&g))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Network(_)), "{err:?}");
    assert!(err.to_string().contains("refusing a redirect"), "{err}");

    // Listed: followed.
    let mut o = gate_opts(&g);
    o.plain_http.push(reg.addr.clone());
    let ts = TempStore::new();
    let image = ts.store.pull(&r, Some(&robot), &o).await.unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(
        std::fs::read(image.rootfs.join("who")).unwrap(),
        b"redirected"
    );
}
