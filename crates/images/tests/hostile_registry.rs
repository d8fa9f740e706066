//! A registry that lies: answers crafted here byte by byte on a loopback port (a real registry
//! validates what is pushed, so these answers cannot come from one).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use cloister_images::{PullError, PullOptions};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

enum Answer {
    Fixed(u16, Vec<(String, String)>, Vec<u8>),
    /// 200 with a body that never ends.
    Endless,
}

async fn serve(routes: HashMap<String, Answer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = sock.into_split();
                let mut rd = BufReader::new(rd);
                let mut line = String::new();
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                match routes.get(&path) {
                    Some(Answer::Fixed(status, headers, body)) => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = wr.write_all(head.as_bytes()).await;
                        let _ = wr.write_all(body).await;
                    }
                    Some(Answer::Endless) => {
                        let _ = wr
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = vec![b'z'; 65536];
                        loop {
                            let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                            c.extend_from_slice(&chunk);
                            c.extend_from_slice(b"\r\n");
                            if wr.write_all(&c).await.is_err() {
                                break;
                            }
                        }
                    }
                    None => {
                        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"<script>alert(1)</script>"}]}"#;
                        let head = format!(
                            "HTTP/1.1 404 X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = wr.write_all(head.as_bytes()).await;
                        let _ = wr.write_all(body).await;
                    }
                }
                let _ = wr.shutdown().await;
            });
        }
    });
    addr
}

fn ok_json(body: Vec<u8>, media: &str) -> Answer {
    Answer::Fixed(200, vec![("content-type".into(), media.into())], body)
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, n)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

fn o(addr: &str) -> PullOptions {
    PullOptions {
        plain_http: vec![addr.to_string()],
        timeout: std::time::Duration::from_secs(30),
        max_bytes: 64 << 20,
    }
}

#[tokio::test]
async fn lies_from_a_registry_are_refused_clearly() {
    let config = serde_json::to_vec(&default_config()).unwrap();
    let cd = sha256(&config);
    let good_layer = layer(&[E::File("a", b"1")]);
    let ld = sha256(&good_layer);
    let bad_config = b"this is not json".to_vec();
    let bcd = sha256(&bad_config);
    let traversal = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:../../../../etc/passwd","size":3},"layers":[]}"#.to_vec();
    let mut routes = HashMap::new();
    routes.insert(
        "/v2/huge/manifests/1".into(),
        ok_json(vec![b' '; 5 << 20], OCI),
    );
    routes.insert("/v2/traversal/manifests/1".into(), ok_json(traversal, OCI));
    routes.insert(
        "/v2/notjson/manifests/1".into(),
        ok_json(b"{{{{".to_vec(), OCI),
    );
    // A layer that is bigger than its descriptor says (and never ends).
    routes.insert(
        "/v2/endless/manifests/1".into(),
        ok_json(manifest((&cd, config.len()), &[(&ld, 100)]), OCI),
    );
    routes.insert(
        format!("/v2/endless/blobs/{cd}"),
        ok_json(config.clone(), "application/octet-stream"),
    );
    routes.insert(format!("/v2/endless/blobs/{ld}"), Answer::Endless);
    // A config blob with the right digest that is not a config.
    routes.insert(
        "/v2/badconfig/manifests/1".into(),
        ok_json(
            manifest((&bcd, bad_config.len()), &[(&ld, good_layer.len())]),
            OCI,
        ),
    );
    routes.insert(
        format!("/v2/badconfig/blobs/{bcd}"),
        ok_json(bad_config.clone(), "application/octet-stream"),
    );
    // A server error, an auth challenge nobody knows.
    routes.insert(
        "/v2/broken/manifests/1".into(),
        Answer::Fixed(500, vec![], b"oops".to_vec()),
    );
    routes.insert(
        "/v2/weird/manifests/1".into(),
        Answer::Fixed(
            401,
            vec![("www-authenticate".into(), "Negotiate xyz".into())],
            vec![],
        ),
    );
    // An image whose declared sizes exceed max_bytes.
    routes.insert(
        "/v2/declared/manifests/1".into(),
        ok_json(manifest((&cd, config.len()), &[(&ld, 1 << 40)]), OCI),
    );
    let addr = serve(routes).await;
    let ts = TempStore::new();
    let pull = |repo: &str| {
        let (store, addr, repo) = (ts.store.clone(), addr.clone(), repo.to_string());
        async move {
            store
                .pull(&format!("{addr}/{repo}:1"), None, &o(&addr))
                .await
                .unwrap_err()
        }
    };

    let e = pull("huge").await;
    assert!(matches!(e, PullError::TooLarge { .. }), "{e:?}");
    let e = pull("traversal").await;
    assert!(
        matches!(e, PullError::Invalid(_)) && e.to_string().contains("not sha256"),
        "{e:?}"
    );
    let e = pull("notjson").await;
    assert!(matches!(e, PullError::Invalid(_)), "{e:?}");
    let started = std::time::Instant::now();
    let e = pull("endless").await;
    assert!(matches!(e, PullError::TooLarge { limit: 100, .. }), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let e = pull("badconfig").await;
    assert!(
        matches!(e, PullError::Invalid(_)) && e.to_string().contains("config"),
        "{e:?}"
    );
    let e = pull("broken").await;
    assert!(
        matches!(e, PullError::Network(_)) && e.to_string().contains("500"),
        "{e:?}"
    );
    let e = pull("weird").await;
    assert!(matches!(e, PullError::Unauthorized(_)), "{e:?}");
    let e = pull("declared").await;
    assert!(matches!(e, PullError::TooLarge { .. }), "{e:?}");
    let e = pull("missing").await;
    assert!(matches!(e, PullError::NotFound(_)), "{e:?}");
    assert!(
        !e.to_string().contains("<script>"),
        "registry text is not echoed: {e}"
    );

    assert!(ts.store.list().is_empty());
    let tmp: Vec<_> = std::fs::read_dir(ts.store.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}
