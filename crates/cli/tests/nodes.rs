//! One session pool served by several nodes on one store (PostgreSQL, or one SQLite file
//! shared by processes of this machine): an identifier's calls reach one session whichever
//! node receives them, `maxConcurrentSessions` holds across nodes, a killed node's sessions
//! and share of the limit are freed within the lease time to live, and the internal channel
//! refuses callers without a node certificate.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const API: &str = "2025-10-02-preview";

/// Another node on the same store as `a` (its SQLite file when `a` has no PostgreSQL store),
/// with the same master key and public URL, and extra environment.
async fn peer(a: &Server, env: &[(&str, &str)]) -> Server {
    let mk = std::fs::read_to_string(a.dir.path().join("master.key")).unwrap();
    let store = a.store.clone().or_else(|| {
        Some(format!(
            "sqlite://{}/cloister.db?mode=rwc",
            a.dir.path().display()
        ))
    });
    let mut extra_env = vec![("CLOISTER_MASTER_KEY".to_string(), mk.trim().to_string())];
    extra_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut s = Server {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
        http_port: free_port(),
        child: None,
        store,
        boot: Value::Null,
        http: reqwest::Client::new(),
        extra_args: vec!["--public-url".into(), a.url("")],
        extra_env,
        log_file: None,
    };
    s.spawn().await;
    s
}

/// `a` started with extra environment (a first node).
async fn first(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server {
        dir,
        port: free_port(),
        http_port: free_port(),
        child: None,
        store: fresh_store().await,
        boot: Value::Null,
        http: reqwest::Client::new(),
        extra_args: vec![],
        extra_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        log_file: None,
    };
    s.spawn().await;
    s
}

/// The pool endpoint as node `n` serves it (the public URL names the first node).
fn on(n: &Server, endpoint: &str, a: &Server) -> String {
    endpoint.replacen(&a.url(""), &n.url(""), 1)
}

async fn call(
    n: &Server,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = n.http.request(m, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn exec(n: &Server, ep: &str, token: &str, id: &str, code: &str) -> (u16, Value) {
    call(
        n,
        "POST",
        &format!("{ep}/executions?api-version={API}&identifier={id}"),
        token,
        Some(json!({ "code": code })),
    )
    .await
}

fn stdout(v: &Value) -> String {
    v["result"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `listSessions` of the pool at endpoint `ep` (as node `n` serves it).
async fn list(n: &Server, ep: &str, token: &str) -> (u16, Value) {
    call(
        n,
        "GET",
        &format!("{ep}/listSessions?api-version={API}"),
        token,
        None,
    )
    .await
}

/// Waits until node `n` serves the pool (it learns of pools written elsewhere within a second).
async fn wait_for_pool(n: &Server, ep: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, v) = list(n, ep, token).await;
        if st == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "pool not served: {st} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identifier_reaches_one_session_through_every_node() {
    let a = Server::start().await;
    let b = peer(&a, &[]).await;
    let c = peer(&a, &[]).await;
    let (ep, token) = a
        .executor_pool_with(
            "nodes",
            "shared",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 10}}),
        )
        .await;
    let nodes = [&a, &b, &c];
    for n in nodes {
        wait_for_pool(n, &on(n, &ep, &a), &token).await;
    }
    // State set through one node is seen through the others, in turn.
    let (st, v) = exec(&b, &on(&b, &ep, &a), &token, "user-1", "x = 40").await;
    assert_eq!(st, 200, "{v}");
    for (k, n) in nodes.iter().cycle().take(6).enumerate() {
        let (st, v) = exec(n, &on(n, &ep, &a), &token, "user-1", "x += 1; print(x)").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(stdout(&v).trim(), (41 + k).to_string(), "{v}");
    }
    // Files uploaded through one node are listed and read through another.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"across nodes".to_vec()).file_name("n.txt"),
    );
    let r = c
        .http
        .post(format!(
            "{}/files?api-version={API}&identifier=user-1",
            on(&c, &ep, &a)
        ))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = a
        .http
        .get(format!(
            "{}/files/n.txt/content?api-version={API}&identifier=user-1",
            on(&a, &ep, &a)
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"across nodes");
    // A second identifier, then listSessions on every node shows both.
    let (st, _) = exec(&c, &on(&c, &ep, &a), &token, "user-2", "1").await;
    assert_eq!(st, 200);
    for n in nodes {
        let (st, v) = list(n, &on(n, &ep, &a), &token).await;
        assert_eq!(st, 200, "{v}");
        let mut ids: Vec<&str> = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["identifier"].as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["user-1", "user-2"], "{v}");
    }
    // Deleting through a node that does not hold the session ends it everywhere.
    let (st, v) = call(
        &b,
        "DELETE",
        &format!(
            "{}/session?api-version={API}&identifier=user-1",
            on(&b, &ep, &a)
        ),
        &token,
        None,
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {v}");
    let (st, v) = exec(
        &a,
        &on(&a, &ep, &a),
        &token,
        "user-1",
        "print('x' in globals())",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(stdout(&v).trim(), "False", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_the_nodes_allocates_at_most_the_maximum() {
    let a = Server::start().await;
    let b = peer(&a, &[]).await;
    let c = peer(&a, &[]).await;
    let (ep, token) = a
        .executor_pool_with(
            "nodes",
            "burst",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 4}}),
        )
        .await;
    wait_for_pool(&b, &on(&b, &ep, &a), &token).await;
    wait_for_pool(&c, &on(&c, &ep, &a), &token).await;
    // 300 new identifiers at once, spread over the three nodes.
    let mut tasks = vec![];
    for k in 0..300 {
        let n = [&a, &b, &c][k % 3];
        let url = format!(
            "{}/executions?api-version={API}&identifier=burst-{k}",
            on(n, &ep, &a)
        );
        let (http, token) = (n.http.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"code": "1"}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut codes = vec![];
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    let mut listed = vec![];
    for n in [&a, &b, &c] {
        listed.push(list(n, &on(n, &ep, &a), &token).await.1);
    }
    assert_eq!(ok, 4, "{codes:?} {listed:?}");
    assert!(
        codes.iter().all(|c| matches!(c, 200 | 429 | 503)),
        "{codes:?}"
    );
    let (st, v) = list(&b, &on(&b, &ep, &a), &token).await;
    assert_eq!(st, 200);
    assert_eq!(
        v["sessions"].as_array().unwrap().len(),
        4,
        "{v} {codes:?} {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_sessions_and_share_are_freed_within_the_lease() {
    // Node a advertises no free capacity, so new sessions are placed on b.
    let ttl = [("CLOISTER_LEASE_TTL", "2")];
    let a = first(&[("CLOISTER_LEASE_TTL", "2"), ("CLOISTER_MAX_SANDBOXES", "0")]).await;
    let mut b = peer(&a, &ttl).await;
    let (ep, token) = a
        .executor_pool_with(
            "nodes",
            "loss",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 1}}),
        )
        .await;
    wait_for_pool(&b, &on(&b, &ep, &a), &token).await;
    // Placement has seen b's capacity once both heartbeats are in.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (st, v) = exec(&a, &on(&a, &ep, &a), &token, "held", "y = 7").await;
    assert_eq!(st, 200, "{v}");
    // The pool is full: another identifier is refused, through either node.
    let (st, _) = exec(&a, &on(&a, &ep, &a), &token, "other", "1").await;
    assert_eq!(st, 429);
    // The session lives on b: killing b loses it, and frees the slot within the lease.
    b.kill9();
    let t0 = Instant::now();
    let freed = loop {
        let (st, v) = exec(&a, &on(&a, &ep, &a), &token, "other", "print(1)").await;
        if st == 200 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the dead node's share was not freed: {st} {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(freed < Duration::from_secs(8), "freed after {freed:?}");
    // The held identifier's session was on b: it is gone; "other" now holds the one slot.
    let (st, _) = exec(&a, &on(&a, &ep, &a), &token, "held", "print(y)").await;
    assert_eq!(st, 429);
}

#[tokio::test]
async fn the_internal_channel_refuses_callers_without_a_node_certificate() {
    let a = Server::start().await;
    let ep: Value = serde_json::from_str(
        &std::fs::read_to_string(a.dir.path().join("endpoints.json")).unwrap(),
    )
    .unwrap();
    let internal = ep["internal"]
        .as_str()
        .expect("internal address")
        .to_string();
    let pem = std::fs::read(a.dir.path().join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    // No client certificate: the handshake itself fails, nothing is served.
    let r = client
        .post(format!(
            "{internal}/dynamicsessions/subscriptions/{}/resourceGroups/g/sessionPools/p/executions?api-version={API}&identifier=x",
            a.sub()
        ))
        .header("authorization", "CloisterNode 00000000-0000-0000-0000-000000000000")
        .json(&json!({"code": "1"}))
        .send()
        .await;
    assert!(r.is_err(), "served without a node certificate: {r:?}");
    // The forwarded-caller scheme means nothing on the public listener.
    let (ep, _) = a.executor_pool("nodes", "forged").await;
    let (st, v) = call(
        &a,
        "POST",
        &format!("{ep}/executions?api-version={API}&identifier=x"),
        "ignored",
        Some(json!({"code": "1"})),
    )
    .await;
    assert_eq!(st, 401, "{v}");
    let r = a
        .http
        .post(format!("{ep}/executions?api-version={API}&identifier=x"))
        .header(
            "authorization",
            format!(
                "CloisterNode {}",
                claims(&a.admin_token().await)["oid"].as_str().unwrap()
            ),
        )
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The pool's `nodeCount` as node `n` reports it (its own sessions and ready instances).
async fn node_count(n: &Server, admin: &str, pool_id: &str) -> u64 {
    let (st, v) = n
        .call(
            admin,
            "GET",
            &format!("{pool_id}?api-version=2025-07-01"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["properties"]["nodeCount"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_instances_are_split_over_the_nodes_and_a_draining_node_hands_over() {
    let a = Server::start().await;
    let mut b = peer(&a, &[]).await;
    let (_, _token) = a
        .executor_pool_with(
            "nodes",
            "ready",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 10, "readySessionInstances": 2}}),
        )
        .await;
    let pool_id = format!(
        "/subscriptions/{}/resourceGroups/nodes/providers/Microsoft.App/sessionPools/ready",
        a.sub()
    );
    // The management audience is the shared public URL (a's), on both nodes.
    let admin = a.admin_token().await;
    // Two ready instances for the pool, one on each node.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (na, nb) = (
            node_count(&a, &admin, &pool_id).await,
            node_count(&b, &admin, &pool_id).await,
        );
        if na == 1 && nb == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "ready split: a {na}, b {nb}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // b stops (SIGTERM): it leaves the cluster, and a takes the whole ready target.
    let pid = b.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = b.child.take().map(|mut c| c.wait());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let na = node_count(&a, &admin, &pool_id).await;
        if na == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "a holds {na} after b left");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
