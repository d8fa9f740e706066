//! Operations: scheduled key rotation, secrets kept out of debug logs, several nodes on one
//! PostgreSQL store.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn keys_rotate_on_schedule_with_the_published_next_key() {
    let s = Server::start_with_config(
        "[identity]\nkey_rotation_secs = 2\nkey_publish_lead_secs = 1\nkey_check_secs = 1\n",
    )
    .await;
    let first = s.admin_token().await;
    let k1 = header(&first)["kid"].as_str().unwrap().to_string();
    let jwks: serde_json::Value = s
        .http
        .get(s.url(&format!("/{}/discovery/v2.0/keys", s.tenant())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let k2 = loop {
        let t = s.admin_token().await;
        let k = header(&t)["kid"].as_str().unwrap().to_string();
        if k != k1 {
            break k;
        }
        assert!(Instant::now() < deadline, "no scheduled rotation happened");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        published.contains(&k2),
        "the key that now signs was published before it signed"
    );
    // Tokens signed by the retired key still validate.
    assert_eq!(
        s.call(&first, "GET", "/subscriptions?api-version=2022-12-01", None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let s = Server::start_logged().await;
    let admin = s.admin_token().await;
    let (app, _sp, secret) = s.new_sp(&admin, "logged").await;
    let _ = s
        .client_token(&app, &secret, "https://dynamicsessions.io")
        .await;
    // A failed attempt with a secret-like value.
    let (st, _) = s
        .token_raw(&[
            ("grant_type", "client_credentials"),
            ("client_id", &app),
            ("client_secret", "Zz9Q~wrong-secret-value-1234567890abcd"),
            ("scope", "https://dynamicsessions.io/.default"),
        ])
        .await;
    assert_eq!(st, 401);
    let (_, u) = s.call(&admin, "POST", "/v1.0/users", Some(json!({"displayName": "L", "userPrincipalName": "l@cloister.test", "passwordProfile": {"password": "hunter2-hunter2"}}))).await;
    assert!(u["id"].is_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(s.data_dir().join("server.log")).unwrap();
    assert!(
        log.contains("request"),
        "debug request logs are written: {log}"
    );
    for needle in [
        secret.as_str(),
        s.admin_secret().as_str(),
        "Zz9Q~wrong-secret-value",
        "hunter2-hunter2",
        admin.as_str(),
    ] {
        assert!(!log.contains(needle), "a secret reached the log");
    }
}

#[tokio::test]
async fn two_nodes_share_one_postgres_store() {
    if std::env::var("CLOISTER_TEST_PG")
        .map(|v| v.is_empty())
        .unwrap_or(true)
    {
        eprintln!("skipped: needs CLOISTER_TEST_PG");
        return;
    }
    let a = Server::start().await;
    let b = a.second_node().await;
    assert_eq!(a.tenant(), b.tenant(), "one tenant across nodes");
    let admin = a.admin_token().await;
    a.create_rg(&admin, "shared").await;
    let (app, sp, secret) = a.new_sp(&admin, "both").await;
    let ra = a
        .assign(
            &admin,
            &format!("/subscriptions/{}/resourceGroups/shared", a.sub()),
            READER,
            &sp,
        )
        .await;
    // A token from node A works on node B (shared keys), and B sees A's writes.
    let tok = a
        .client_token(&app, &secret, "https://management.azure.com")
        .await;
    let path = format!(
        "/subscriptions/{}/resourceGroups/shared?api-version=2021-04-01",
        a.sub()
    );
    // Node B learns of A's role assignment within about a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.call(&tok, "GET", &path, None).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "node B never saw node A's role assignment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Revoke on A: B refuses within about a second.
    let id = ra["id"].as_str().unwrap();
    assert_eq!(
        a.call(
            &admin,
            "DELETE",
            &format!("{id}?api-version=2022-04-01"),
            None
        )
        .await
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if b.call(&tok, "GET", &path, None).await.0 == 403 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B still allows a revoked assignment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sigterm(s: &Server) {
    let pid = s.child.as_ref().unwrap().id();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for the server process to exit; returns how long that took.
async fn exited_within(s: &mut Server, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
            let _ = st;
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "the server was still running {limit:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_refuses_new_work() {
    let mut s = Server::start().await;
    let (endpoint, token) = s.executor_pool("drain", "dpool").await;
    let admin = s.admin_token().await;
    let exec = |ident: &str, code: &str| {
        s.http
            .post(format!(
                "{endpoint}/code/execute?api-version=2024-02-02-preview&identifier={ident}"
            ))
            .bearer_auth(&token)
            .json(&json!({"properties": {"code": code}}))
            .send()
    };
    assert_eq!(exec("long", "1").await.unwrap().status(), 200);
    let long = tokio::spawn(exec(
        "long",
        "import time; time.sleep(4); print('finished')",
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigterm(&s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "/readyz while draining");
    assert!(r.headers().get("retry-after").is_some());
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/healthz stays up for liveness");
    let r = exec("new", "1").await.unwrap();
    assert_eq!(r.status(), 503, "new work while draining");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ServiceUnavailable", "{v}");
    assert!(v["error"]["message"].is_string());
    let r = s
        .http
        .get(s.url(&format!(
            "/subscriptions/{}?api-version=2022-12-01",
            s.sub()
        )))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "management calls while draining");
    // The execution in flight completes.
    let r = long.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["properties"]["stdout"], "finished\n", "{v}");
    // With nothing left in flight, the process ends promptly.
    let took = exited_within(&mut s, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
}

#[tokio::test]
async fn the_drain_has_a_deadline_even_with_a_hung_request() {
    let mut s = Server::start_with(&["--drain-timeout", "2"]).await;
    let admin = s.admin_token().await;
    // A request whose body never arrives keeps its handler waiting.
    let mut hung = std::net::TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    use std::io::Write;
    hung.write_all(
        format!(
            "PUT /subscriptions/{}/resourcegroups/h?api-version=2021-04-01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            s.sub()
        )
        .as_bytes(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    sigterm(&s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    exited_within(&mut s, Duration::from_secs(12)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "the drain waited for the request in flight ({took:?})"
    );
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}
