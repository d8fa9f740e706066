//! CustomContainer session pools through the real server over HTTP: the test image
//! (`scripts/test-image.sh`) pushed to loopback registries (`scripts/test-registry.sh`, with
//! and without basic auth), pools created from the body `az containerapp sessionpool create
//! --container-type CustomContainer` sends, and requests through the pool's endpoint to the
//! session containers (runc; one case under runsc when this host has it).
//!
//! Needs root, runc, docker-registry, skopeo and htpasswd; the test is skipped (with a
//! message) when they are missing.

mod common;

use common::Server;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API: &str = "2025-02-02-preview";
const EXECUTOR: &str = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0";
const REG_USER: &str = "puller";
const REG_PASS: &str = "pull-secret-Xq9";

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

struct Registry {
    dir: tempfile::TempDir,
    host: String,
}

impl Registry {
    fn start(auth: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new(scripts().join("test-registry.sh"));
        c.arg("start").arg(dir.path());
        if let Some(a) = auth {
            c.arg(a);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "registry: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Registry { dir, host }
    }

    fn push(&self, repo_tag: &str, auth: Option<&str>) -> String {
        let mut c = Command::new(scripts().join("test-image.sh"));
        c.arg("push").arg(&self.host).arg(repo_tag);
        if let Some(a) = auth {
            c.arg(a);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("test-registry.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The body `az containerapp sessionpool create --container-type CustomContainer …` sends.
fn az_body(image: &str, registry: Option<&str>, extra: Value) -> Value {
    let mut secrets = vec![json!({"name": "s1", "value": "env-secret-value-77"})];
    let mut reg = Value::Null;
    if let Some(r) = registry {
        let name = format!("{}-{REG_USER}", r.replace(':', "-").replace('.', ""));
        secrets.push(json!({"name": name, "value": REG_PASS}));
        reg = json!({"server": r, "username": REG_USER, "passwordSecretRef": name});
    }
    let mut v = json!({
        "location": "local",
        "properties": {
            "poolManagementType": "Dynamic",
            "environmentId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.App/managedEnvironments/env",
            "containerType": "CustomContainer",
            "dynamicPoolConfiguration": {"lifecycleConfiguration": {
                "lifecycleType": "Timed", "cooldownPeriodInSeconds": 300, "maxAlivePeriodInSeconds": null}},
            "sessionNetworkConfiguration": {"status": "EgressDisabled"},
            "scaleConfiguration": {"maxConcurrentSessions": 3, "readySessionInstances": 1},
            "secrets": secrets,
            "customContainerTemplate": {
                "containers": [{"name": "app", "image": image,
                                "env": [{"name": "a", "value": "1"}, {"name": "b", "secretRef": "s1"}],
                                "resources": {"cpu": 0.5, "memory": "1Gi"}}],
                "ingress": {"targetPort": 8080},
                "registryCredentials": reg},
            "workloadProfileName": "Consumption",
            "managedIdentitySettings": null,
        }
    });
    merge(&mut v["properties"], &extra);
    v
}

fn merge(a: &mut Value, b: &Value) {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            if v.is_object() && a.get(k).is_some_and(|x| x.is_object()) {
                merge(a.get_mut(k).unwrap(), v);
            } else {
                a.insert(k.clone(), v.clone());
            }
        }
    }
}

struct Ctx {
    s: Server,
    admin: String,
    token: String,
}

impl Ctx {
    fn pool_id(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/cc/providers/Microsoft.App/sessionPools/{name}",
            self.s.sub()
        )
    }

    async fn put(&self, name: &str, body: Value) -> (u16, Value) {
        self.s
            .call(
                &self.admin,
                "PUT",
                &format!("{}?api-version={API}", self.pool_id(name)),
                Some(body),
            )
            .await
    }

    async fn get_pool(&self, name: &str) -> Value {
        let (st, v) = self
            .s
            .call(
                &self.admin,
                "GET",
                &format!("{}?api-version={API}", self.pool_id(name)),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Creates a pool and makes the admin its Session Executor; returns its endpoint.
    async fn pool(&self, name: &str, body: Value) -> String {
        let (st, v) = self.put(name, body).await;
        assert!(st == 201 || st == 200, "{name}: {st} {v}");
        let oid = common::claims(&self.admin)["oid"]
            .as_str()
            .unwrap()
            .to_string();
        self.s
            .assign(&self.admin, &self.pool_id(name), EXECUTOR, &oid)
            .await;
        v["properties"]["poolManagementEndpoint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn dp(
        &self,
        method: &str,
        url: &str,
        token: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .s
            .http
            .request(m, url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let h = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        (
            st,
            h,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn call(&self, method: &str, ep: &str, path: &str, id: &str) -> (u16, Value) {
        let url = format!("{ep}/{path}?identifier={id}&api-version={API}");
        let (st, _, v) = self.dp(method, &url, &self.token).await;
        (st, v)
    }
}

impl Drop for Ctx {
    /// A graceful stop (SIGTERM) lets the server stop its containers, also when a check failed.
    fn drop(&mut self) {
        self.stop_gracefully();
    }
}

impl Ctx {
    fn stop_gracefully(&mut self) {
        if let Some(c) = self.s.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.s.child = None;
            }
        }
    }
}

/// Processes whose command line names this server's container state (runc and what it runs
/// under it).
fn container_processes(s: &Server) -> usize {
    let needle = s
        .data_dir()
        .join("containers")
        .to_string_lossy()
        .to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count()
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A WebSocket echo round trip through the pool's endpoint on the plain-HTTP listener.
async fn ws_echo(s: &Server, ep: &str, token: &str, id: &str) -> String {
    let path = ep.split_once("/dynamicsessions").unwrap().1;
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.http_port))
        .await
        .unwrap();
    let req = format!(
        "GET /dynamicsessions{path}/ws?identifier={id}&api-version={API} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![];
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut b).await.unwrap(),
            1,
            "closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked text frame "hello ws".
    let payload = b"hello ws";
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
    c.write_all(&f).await.unwrap();
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    let n = (h[1] & 0x7f) as usize;
    let mut p = vec![0u8; n];
    c.read_exact(&mut p).await.unwrap();
    String::from_utf8(p).unwrap()
}

/// Runs the futures concurrently and collects their outputs.
async fn futures_join<F: std::future::Future<Output = u16>>(
    fs: impl Iterator<Item = F>,
) -> Vec<u16> {
    let mut set = vec![];
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = vec![];
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        for slot in pending.iter_mut() {
            if let Some(f) = slot
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                out.push(v);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

fn counts(pool: &Value) -> Value {
    pool["properties"]["templateUpdateStatus"]["activeTemplate"]["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_container_pools() {
    let missing: Vec<&str> = ["runc", "docker-registry", "skopeo", "htpasswd"]
        .into_iter()
        .filter(|b| !have(b))
        .collect();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !missing.is_empty() || !root {
        eprintln!("custom_pool: skipped (root: {root}, missing: {missing:?})");
        return;
    }
    let open = Registry::start(None);
    let authed = Registry::start(Some(&format!("{REG_USER}:{REG_PASS}")));
    let open_digest = open.push("cloister/test:1", None);
    let digest = authed.push("cloister/test:1", Some(&format!("{REG_USER}:{REG_PASS}")));
    let cfg = format!(
        "[custom_containers]\nenabled = true\nplain_http_registries = [\"{}\", \"{}\"]\nstartup_timeout_secs = 30\n{}",
        open.host,
        authed.host,
        if have("runsc") {
            "runsc = \"/usr/bin/runsc\"\n"
        } else {
            ""
        }
    );
    let s = Server::start_with_config(&cfg).await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "cc").await;
    let token = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    let mut cx = Ctx { s, admin, token };

    // ---- validation --------------------------------------------------------------------
    let img = format!("{}/cloister/test:1", authed.host);
    for (extra, code) in [
        (
            json!({"scaleConfiguration": {"maxConcurrentSessions": 3, "readySessionInstances": 0}}),
            "SessionPoolInvalidReadySessionInstances",
        ),
        (
            json!({"scaleConfiguration": {"maxConcurrentSessions": 3, "readySessionInstances": 3}}),
            "SessionPoolInvalidReadySessionInstances",
        ),
        (
            json!({"customContainerTemplate": {"containers": [{"image": img, "env": [{"name": "x", "secretRef": "nope"}]}]}}),
            "InvalidRequestContent",
        ),
        (
            json!({"customContainerTemplate": {"ingress": {"targetPort": null}}}),
            "InvalidRequestContent",
        ),
        (json!({"runtimeClassName": "kata"}), "InvalidRequestContent"),
        (
            json!({"customContainerTemplate": {"registryCredentials": {"server": authed.host, "username": null, "passwordSecretRef": null, "identity": "system"}}}),
            "RegistryIdentityNotSupported",
        ),
    ] {
        let (st, v) = cx
            .put("bad", az_body(&img, Some(&authed.host), extra.clone()))
            .await;
        assert_eq!(st, 400, "{extra}: {v}");
        assert_eq!(v["error"]["code"], code, "{extra}: {v}");
    }
    let (st, v) = cx
        .put("py", json!({"location": "local", "properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "OnContainerExit"}}}}))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CustomContainer"),
        "{v}"
    );
    let (st, v) = cx
        .put(
            "gpu",
            json!({"location": "local", "properties": {"containerType": "GpuBase"}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    // The CLI's follow-up GET graph /me is answered cleanly (not a 5xx).
    let (st, v) = cx.s.call(&cx.admin, "GET", "/v1.0/me", None).await;
    assert!(st < 500, "GET /v1.0/me: {st}");
    eprintln!("GET /v1.0/me (the CLI's follow-up): {st} {v}");

    // ---- a pool from the az body, image behind basic auth --------------------------------
    let t0 = Instant::now();
    let a = cx
        .pool("cpa", az_body(&img, Some(&authed.host), json!({})))
        .await;
    let pool = cx.get_pool("cpa").await;
    let text = pool.to_string();
    assert!(
        !text.contains(REG_PASS) && !text.contains("env-secret-value-77"),
        "{text}"
    );
    assert!(
        pool["properties"]["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.get("value").is_none() && x.get("sealed").is_none()),
        "{text}"
    );
    assert_eq!(pool["properties"]["provisioningState"], "Succeeded");
    // The warm instance: started and probed.
    wait_for("a ready instance", 60, async || {
        counts(&cx.get_pool("cpa").await)["readyCount"] == 1
    })
    .await;
    eprintln!("pool created → ready instance: {:?}", t0.elapsed());
    assert!(
        container_processes(&cx.s) > 0,
        "the leak check sees the containers"
    );
    let pool = cx.get_pool("cpa").await;
    assert_eq!(
        pool["properties"]["templateUpdateStatus"]["activeTemplate"]["imageDigest"],
        digest.as_str(),
        "{pool}"
    );
    // A ready pool answers at once.
    let t = Instant::now();
    let (st, v) = cx.call("POST", &a, "counter", "alice").await;
    let first = t.elapsed();
    assert_eq!((st, &v["counter"]), (200, &json!(1)), "{v}");
    eprintln!("first request to a warm session: {first:?}");
    let (_, v) = cx.call("POST", &a, "counter", "alice").await;
    assert_eq!(v["counter"], 2, "state per identifier");
    let t = Instant::now();
    let (_, v) = cx.call("POST", &a, "counter", "bobby").await;
    eprintln!(
        "second identifier (the ready pool refilling or a cold start): {:?}",
        t.elapsed()
    );
    assert_eq!(
        v["counter"], 1,
        "another identifier, another container: {v}"
    );
    // Latency through the proxy (HTTPS, TLS connection kept alive), for docs/benchmarks.md.
    let mut ms = vec![];
    for _ in 0..100 {
        let t = Instant::now();
        let (st, _) = cx.call("GET", &a, "", "alice").await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200);
    }
    ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
    eprintln!(
        "proxied GET / (n=100): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms[50], ms[95], ms[99]
    );
    // Path and query forwarded unchanged.
    let (st, _, v) = cx
        .dp(
            "GET",
            &format!("{a}/?identifier=alice&api-version={API}&x=1%202"),
            &cx.token,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["path"],
        format!("/?identifier=alice&api-version={API}&x=1%202")
    );
    assert_eq!(v["counter"], 2);
    // Authorization stripped, X-Forwarded-* added.
    let (_, v) = cx.call("GET", &a, "headers", "alice").await;
    assert!(v.get("authorization").is_none(), "{v}");
    assert_eq!(v["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(v["x-forwarded-proto"], "https", "{v}");
    assert!(
        v["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{v}"
    );
    // An unknown path is the container's own 404.
    let (st, v) = cx.call("GET", &a, "nowhere/deep", "alice").await;
    assert_eq!(
        (st, &v["path"]),
        (
            404,
            &json!(format!("/nowhere/deep?identifier=alice&api-version={API}"))
        )
    );
    // The container's own errors pass unchanged (here http.server's 501 for PUT).
    let (st, _, v) = cx
        .dp(
            "PUT",
            &format!("{a}/counter?identifier=alice&api-version={API}"),
            &cx.token,
        )
        .await;
    assert_eq!(st, 501, "{v}");
    assert!(
        v.as_str().is_some_and(|t| t.contains("Unsupported method")),
        "{v}"
    );
    // A bad or missing identifier.
    let (st, v) = cx.call("GET", &a, "", "bad%20id!").await;
    assert_eq!(st, 400, "{v}");
    let (st, _, v) = cx
        .dp("GET", &format!("{a}/?api-version={API}"), &cx.token)
        .await;
    assert_eq!(st, 400, "{v}");
    // WebSocket echo through the proxy.
    assert_eq!(ws_echo(&cx.s, &a, &cx.token, "alice").await, "hello ws");
    // Management API.
    let (st, v) = cx.call("POST", &a, ".management/getSession", "alice").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["identifier"], "alice");
    let (st, v) = cx.call("GET", &a, ".management/listSessions", "xxxx").await;
    assert_eq!(
        (st, v["value"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    // maxConcurrentSessions (3): a fourth identifier gets 429 with Retry-After.
    let (st, _) = cx.call("POST", &a, "counter", "carol").await;
    assert_eq!(st, 200);
    let (st, h, v) = cx
        .dp(
            "POST",
            &format!("{a}/counter?identifier=david&api-version={API}"),
            &cx.token,
        )
        .await;
    assert_eq!(st, 429, "{v}");
    assert!(h.get("retry-after").is_some());
    let pool = cx.get_pool("cpa").await;
    assert_eq!(counts(&pool)["allocatedCount"], 3, "{pool}");
    // stopSession frees a slot.
    let url = format!("{a}/.management/stopSession?identifier=bobby&api-version={API}");
    let r =
        cx.s.http
            .post(&url)
            .bearer_auth(&cx.token)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        r.text().await.unwrap(),
        "Session bobby in session pool cpa stopped."
    );
    let (st, _) = cx.call("POST", &a, ".management/getSession", "bobby").await;
    assert_eq!(st, 400);
    let (st, v) = cx.call("POST", &a, "counter", "david").await;
    assert_eq!((st, &v["counter"]), (200, &json!(1)), "{v}");
    // The registry password never reached the container; the env secret did.
    // (The test server does not print env; its /headers shows the request only.)

    // ---- OnContainerExit, image without auth ---------------------------------------------
    let open_img = format!("{}/cloister/test:1", open.host);
    let b = cx
        .pool(
            "cpb",
            az_body(&open_img, None, json!({"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "OnContainerExit", "cooldownPeriodInSeconds": null, "maxAlivePeriodInSeconds": 600}}})),
        )
        .await;
    let (st, v) = cx.call("POST", &b, "counter", "evelyn").await;
    assert_eq!((st, &v["counter"]), (200, &json!(1)), "{v}");
    let (st, _) = cx.call("POST", &b, "exit", "evelyn").await;
    assert_eq!(st, 200);
    wait_for("the exited session to end", 20, async || {
        cx.call("POST", &b, ".management/getSession", "evelyn")
            .await
            .0
            == 400
    })
    .await;
    let (st, v) = cx.call("POST", &b, "counter", "evelyn").await;
    assert_eq!(
        (st, &v["counter"]),
        (200, &json!(1)),
        "a fresh session: {v}"
    );
    assert_eq!(counts(&cx.get_pool("cpb").await)["crashCount"], 0);

    // maxAlivePeriodInSeconds ends an OnContainerExit session whose container keeps running.
    let h = cx
        .pool(
            "cph",
            az_body(&open_img, None, json!({"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "OnContainerExit", "maxAlivePeriodInSeconds": 2}}})),
        )
        .await;
    let (st, _) = cx.call("POST", &h, "counter", "shortlived").await;
    assert_eq!(st, 200);
    let t = Instant::now();
    wait_for("maxAlive to end the session", 20, async || {
        cx.call("POST", &h, ".management/getSession", "shortlived")
            .await
            .0
            == 400
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(10));

    // ---- the CLI: create from flags, then session show / list / stop ----------------------
    let boot = cx.s.data_dir().join("bootstrap.json");
    let (c, _, err) = cx.s.cli(&["login", "--bootstrap", boot.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let (c, out, err) = cx.s.cli(&[
        "containerapp",
        "sessionpool",
        "create",
        "-n",
        "cpcli",
        "-g",
        "cc",
        "--container-type",
        "CustomContainer",
        "--image",
        &img,
        "--target-port",
        "8080",
        "--registry-server",
        &authed.host,
        "--registry-username",
        REG_USER,
        "--registry-password",
        REG_PASS,
        "--max-sessions",
        "2",
        "--ready-sessions",
        "1",
        "--env-vars",
        "a=1",
        "--environment",
        "/subscriptions/x/resourceGroups/y/providers/Microsoft.App/managedEnvironments/env",
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(!out.contains(REG_PASS), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let cli_ep = v["properties"]["poolManagementEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let oid = common::claims(&cx.admin)["oid"]
        .as_str()
        .unwrap()
        .to_string();
    cx.s.assign(&cx.admin, &cx.pool_id("cpcli"), EXECUTOR, &oid)
        .await;
    let (st, v) = cx.call("POST", &cli_ep, "counter", "cliuser").await;
    assert_eq!((st, &v["counter"]), (200, &json!(1)), "{v}");
    let (c, out, err) = cx.s.cli(&[
        "containerapp",
        "session",
        "show",
        "-n",
        "cpcli",
        "-g",
        "cc",
        "--identifier",
        "cliuser",
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"cliuser\""), "{out}");
    let (c, out, err) =
        cx.s.cli(&["containerapp", "session", "list", "-n", "cpcli", "-g", "cc"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("\"cliuser\""), "{out}");
    let (c, out, err) = cx.s.cli(&[
        "containerapp",
        "session",
        "stop",
        "-n",
        "cpcli",
        "-g",
        "cc",
        "--identifier",
        "cliuser",
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("Session cliuser in session pool cpcli stopped."),
        "{out}"
    );

    // maxConcurrentSessions is exact under a burst: 2 slots, 6 new identifiers at once.
    let burst = (0..6).map(|i| {
        let cx = &cx;
        let ep = cli_ep.clone();
        async move {
            cx.call("POST", &ep, "counter", &format!("burst{i}"))
                .await
                .0
        }
    });
    let mut codes = futures_join(burst).await;
    codes.sort();
    assert_eq!(codes, [200, 200, 429, 429, 429, 429], "{codes:?}");

    // ---- a liveness probe that fails ends the session and counts a crash ------------------
    let f = cx
        .pool(
            "cpf",
            az_body(&open_img, None, json!({"customContainerTemplate": {"containers": [{"name": "app", "image": open_img,
                "probes": [{"type": "Liveness", "httpGet": {"path": "/missing", "port": 8080}, "failureThreshold": 2, "periodSeconds": 1}]}]}})),
        )
        .await;
    let (st, v) = cx.call("POST", &f, "counter", "lively").await;
    assert_eq!(st, 200, "{v}");
    wait_for("the unhealthy session to end", 30, async || {
        cx.call("POST", &f, ".management/getSession", "lively")
            .await
            .0
            == 400
    })
    .await;
    assert!(
        counts(&cx.get_pool("cpf").await)["crashCount"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // ---- cross-pool: an executor on pool B only cannot reach pool A ------------------------
    let (app, sp, secret) = cx.s.new_sp(&cx.admin, "cc-other").await;
    cx.s.assign(&cx.admin, &cx.pool_id("cpb"), EXECUTOR, &sp)
        .await;
    let other =
        cx.s.client_token(&app, &secret, "https://dynamicsessions.io")
            .await;
    let (st, _, _) = cx
        .dp(
            "POST",
            &format!("{b}/counter?identifier=evelyn&api-version={API}"),
            &other,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, v) = cx
        .dp(
            "POST",
            &format!("{a}/counter?identifier=alice&api-version={API}"),
            &other,
        )
        .await;
    assert_eq!(st, 403, "{v}");

    // ---- failures: wrong registry password, missing image, a container that never listens --
    let mut wrong = az_body(&img, Some(&authed.host), json!({}));
    for s in wrong["properties"]["secrets"].as_array_mut().unwrap() {
        if s["name"] != "s1" {
            s["value"] = json!("wrong-password");
        }
    }
    let c = cx.pool("cpc", wrong).await;
    let (st, v) = cx.call("POST", &c, "counter", "xxxx").await;
    assert_eq!(st, 503, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("credentials") || m.contains("nauthorized"),
        "{m}"
    );
    assert!(!m.contains("wrong-password"), "{m}");
    let pool = cx.get_pool("cpc").await;
    assert!(
        counts(&pool)["imagePullFailCount"].as_u64().unwrap() >= 1,
        "{pool}"
    );
    assert_eq!(pool["properties"]["provisioningState"], "Succeeded");

    let d = cx
        .pool(
            "cpd",
            az_body(&format!("{}/cloister/absent:1", open.host), None, json!({})),
        )
        .await;
    let (st, v) = cx.call("POST", &d, "counter", "xxxx").await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{v}"
    );
    assert!(
        counts(&cx.get_pool("cpd").await)["imagePullFailCount"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let e = cx
        .pool(
            "cpe",
            az_body(&open_img, None, json!({"customContainerTemplate": {"containers": [{"name": "app", "image": open_img, "command": ["sleep"], "args": ["3600"],
                "probes": [{"type": "Startup", "tcpSocket": {"port": 8080}, "failureThreshold": 2, "periodSeconds": 1}]}]}})),
        )
        .await;
    let (st, v) = cx.call("POST", &e, "counter", "xxxx").await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("startup probe"),
        "{v}"
    );
    assert!(
        counts(&cx.get_pool("cpe").await)["crashCount"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // ---- runsc (gVisor), one case --------------------------------------------------------
    let (st, v) = cx
        .put(
            "cpg",
            az_body(&open_img, None, json!({"runtimeClassName": "runsc"})),
        )
        .await;
    if st == 400 {
        assert_eq!(v["error"]["code"], "RuntimeClassNotAvailable", "{v}");
        eprintln!("runsc not available here: {}", v["error"]["message"]);
    } else {
        assert!(st == 201 || st == 200, "{v}");
        let oid = common::claims(&cx.admin)["oid"]
            .as_str()
            .unwrap()
            .to_string();
        cx.s.assign(&cx.admin, &cx.pool_id("cpg"), EXECUTOR, &oid)
            .await;
        let g = v["properties"]["poolManagementEndpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let t = Instant::now();
        let (st, v) = cx.call("POST", &g, "counter", "xxxx").await;
        assert_eq!((st, &v["counter"]), (200, &json!(1)), "runsc: {v}");
        eprintln!("runsc: first request (ready or cold) {:?}", t.elapsed());
    }

    // ---- the image is pinned: the tag gone from the registry changes nothing until the
    // template changes; a template change replaces the ready instance ----------------------
    let r = reqwest::Client::new()
        .delete(format!(
            "http://{}/v2/cloister/test/manifests/{open_digest}",
            open.host
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "manifest delete");
    wait_for("pool B's ready instance", 30, async || {
        counts(&cx.get_pool("cpb").await)["readyCount"] == 1
    })
    .await;
    let (st, v) = cx.call("POST", &b, "counter", "pinned1").await;
    assert_eq!((st, &v["counter"]), (200, &json!(1)), "{v}");
    let before = cx.get_pool("cpb").await;
    let mut tpl = before["properties"]["customContainerTemplate"].clone();
    tpl["containers"][0]["env"][0]["value"] = json!("2");
    let (st, v) =
        cx.s.call(
            &cx.admin,
            "PATCH",
            &format!("{}?api-version={API}", cx.pool_id("cpb")),
            Some(json!({"properties": {"customContainerTemplate": tpl}})),
        )
        .await;
    assert!(st == 200 || st == 202, "{v}");
    // The running session keeps its container; new ones need the image again, which is gone.
    let (st, v) = cx.call("POST", &b, "counter", "pinned1").await;
    assert_eq!((st, &v["counter"]), (200, &json!(2)), "{v}");
    let (st, v) = cx.call("POST", &b, "counter", "pinned2").await;
    assert_eq!(
        st, 503,
        "after the template change the image is resolved again: {v}"
    );
    let after = counts(&cx.get_pool("cpb").await);
    assert!(
        after["imagePullFailCount"].as_u64().unwrap() >= 1,
        "{after}"
    );
    assert_eq!(after["readyCount"], 0, "{after}");

    // ---- a restart: sessions are gone, pools come back with their sealed secrets ----------
    cx.stop_gracefully();
    assert_eq!(
        container_processes(&cx.s),
        0,
        "a clean stop stops every container"
    );
    cx.s.spawn().await;
    // New ports, so a new issuer and endpoint.
    cx.admin = cx.s.admin_token().await;
    cx.token =
        cx.s.client_token(
            &cx.s.admin_id(),
            &cx.s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    let a = cx.get_pool("cpa").await["properties"]["poolManagementEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = cx.call("POST", &a, "counter", "afterrestart").await;
    assert_eq!(
        (st, &v["counter"]),
        (200, &json!(1)),
        "pulled again with the unsealed password: {v}"
    );
    let (st, _) = cx.call("POST", &a, ".management/getSession", "alice").await;
    assert_eq!(st, 400, "sessions do not survive a restart");

    // ---- deleting pools stops everything -------------------------------------------------
    for p in [
        "cpa", "cpb", "cpc", "cpd", "cpe", "cpf", "cpg", "cph", "cpcli",
    ] {
        let (st, _) =
            cx.s.call(
                &cx.admin,
                "DELETE",
                &format!("{}?api-version={API}", cx.pool_id(p)),
                None,
            )
            .await;
        assert!(st == 200 || st == 202 || st == 204, "{p}: {st}");
    }
    // (403 once the pool's role assignment went with it, 404 while the pool's sessions stop.)
    wait_for("pool A gone", 30, async || {
        matches!(cx.call("POST", &a, "counter", "alice").await.0, 403 | 404)
    })
    .await;
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
