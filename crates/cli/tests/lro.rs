//! Long-running operations over HTTP, with the plain long-running type the harness
//! configures (`Contoso.Slow/things:lro`): `201` + `Azure-AsyncOperation` / `Location` /
//! `Retry-After`, the status moving to `Succeeded` (or `Failed` with the provider's error),
//! the final GET, `409` for a write while an operation runs, long-running DELETE, operations
//! readable only under their own subscription and by readers of their resource, and an
//! operation interrupted by a restart ending `Failed`.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const API: &str = "api-version=2024-01-01";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";

fn thing(sub: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/slow/providers/Contoso.Slow/things/{name}")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, k: &str) -> String {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

async fn send(s: &Server, token: &str, method: &str, url: &str, body: Option<Value>) -> Answer {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let url = if url.starts_with("https://") {
        url.to_string()
    } else {
        s.url(url)
    };
    let mut r = s.http.request(m, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Polls a status URL (honouring `Retry-After`) until the operation ends.
async fn until_done(s: &Server, token: &str, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = send(s, token, "GET", url, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let st = a.body["status"].as_str().unwrap().to_string();
        if ["Succeeded", "Failed", "Canceled"].contains(&st.as_str()) {
            return a.body;
        }
        let wait: u64 = a.header("retry-after").parse().unwrap();
        assert!(
            Instant::now() < deadline,
            "the operation did not end: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// The path (and query) of one of the server's own URLs.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

#[tokio::test]
async fn a_long_running_put_answers_201_with_the_operation_and_ends_succeeded() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    let id = thing(&s.sub(), "t1");
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"provisionSeconds": 2, "size": 3}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["properties"]["provisioningState"], "Accepted");
    assert_eq!(a.body["properties"]["size"], 3);
    let status_url = a.header("azure-asyncoperation");
    let result_url = a.header("location");
    assert_eq!(a.header("retry-after"), "1");
    let base = s.url(&format!(
        "/subscriptions/{}/providers/Contoso.Slow/locations/local/",
        s.sub()
    ));
    assert!(
        status_url.starts_with(&format!("{base}operationStatuses/")),
        "{status_url}"
    );
    assert!(
        result_url.starts_with(&format!("{base}operationResults/")),
        "{result_url}"
    );
    assert!(status_url.ends_with(&format!("?{API}")));

    // While it runs: not final, the result URL answers 202 (with where to look again).
    let r = send(&s, &admin, "GET", &result_url, None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("location"), result_url);
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    let st = g.body["properties"]["provisioningState"].as_str().unwrap();
    assert!(["Accepted", "Provisioning"].contains(&st), "{st}");
    let running = send(&s, &admin, "GET", &status_url, None).await;
    assert!(["Accepted", "Provisioning"].contains(&running.body["status"].as_str().unwrap()));
    assert_eq!(running.header("retry-after"), "1");

    let done = until_done(&s, &admin, &status_url).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert!(done["startTime"].is_string() && done["endTime"].is_string());
    assert!(done.get("error").is_none());
    assert_eq!(done["id"], path_of(&status_url).split('?').next().unwrap());
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(g.body["properties"]["size"], 3);
    let r = send(&s, &admin, "GET", &result_url, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(r.body["id"], g.body["id"]);

    // An update is long-running too: 200 with the operation.
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"size": 4}})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["properties"]["provisioningState"], "Accepted");
    assert!(!a.header("azure-asyncoperation").is_empty());
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded");
}

#[tokio::test]
async fn a_failed_provision_reports_the_error_and_leaves_the_resource_failed() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    let id = thing(&s.sub(), "bad");
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"fail": "the image did not start"}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(done["error"]["code"], "ProvisioningFailed");
    assert_eq!(done["error"]["message"], "the image did not start");
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(g.body["properties"]["provisioningState"], "Failed");
    let r = send(&s, &admin, "GET", &a.header("location"), None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "ProvisioningFailed");
}

#[tokio::test]
async fn writes_while_an_operation_runs_answer_409_and_a_long_running_delete_202() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    let id = thing(&s.sub(), "busy");
    let slow = json!({"location": "local", "properties": {"provisionSeconds": 3}});
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(slow.clone()),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    for m in ["PUT", "PATCH", "DELETE"] {
        let b = send(&s, &admin, m, &format!("{id}?{API}"), Some(slow.clone())).await;
        assert_eq!(b.status, 409, "{m}: {}", b.body);
        assert_eq!(b.body["error"]["code"], "Conflict");
    }
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded");

    // DELETE: 202 with the operation; the resource is Deleting, then gone.
    let d = send(&s, &admin, "DELETE", &format!("{id}?{API}"), None).await;
    assert_eq!(d.status, 202, "{}", d.body);
    assert_eq!(d.header("retry-after"), "1");
    assert!(!d.header("location").is_empty());
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(
        g.body["properties"]["provisioningState"], "Deleting",
        "{}",
        g.body
    );
    let done = until_done(&s, &admin, &d.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded");
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(g.status, 404);
    let r = send(&s, &admin, "GET", &d.header("location"), None).await;
    assert_eq!(r.status, 204);
    let d = send(&s, &admin, "DELETE", &format!("{id}?{API}"), None).await;
    assert_eq!(d.status, 204);
}

#[tokio::test]
async fn an_operation_is_readable_only_in_its_subscription_and_by_readers_of_its_resource() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    // Subscription B, owned by an intruder who has nothing in A.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            "/providers/Microsoft.Subscription/aliases/bee?api-version=2021-10-01",
            Some(json!({"properties": {"displayName": "B"}})),
        )
        .await;
    assert!(st == 200 || st == 201, "{v}");
    let sub_b = v["properties"]["subscriptionId"]
        .as_str()
        .unwrap()
        .to_string();
    let (app, sp, secret) = s.new_sp(&admin, "intruder").await;
    s.assign(&admin, &format!("/subscriptions/{sub_b}"), OWNER, &sp)
        .await;
    let intruder = s.client_token(&app, &secret, &s.mgmt()).await;

    let id = thing(&s.sub(), "secret");
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"provisionSeconds": 1}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let status_path = path_of(&a.header("azure-asyncoperation"));
    let result_path = path_of(&a.header("location"));
    let op_id = status_path
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // A's operation asked for under B (where the intruder is Owner): not found.
    for p in [&status_path, &result_path] {
        let moved = p.replace(&s.sub(), &sub_b);
        let b = send(&s, &intruder, "GET", &moved, None).await;
        assert_eq!(b.status, 404, "{moved}: {}", b.body);
        assert_eq!(b.body["error"]["code"], "OperationNotFound");
        // Under A itself: the intruder may not read the resource, so not its operation.
        let b = send(&s, &intruder, "GET", p, None).await;
        assert_eq!(b.status, 403, "{p}: {}", b.body);
        assert!(b.body.get("status").is_none());
    }
    // A Reader of the resource group follows the operation.
    let (rapp, rsp, rsecret) = s.new_sp(&admin, "reader").await;
    s.assign(
        &admin,
        &format!("/subscriptions/{}/resourceGroups/slow", s.sub()),
        READER,
        &rsp,
    )
    .await;
    let reader = s.client_token(&rapp, &rsecret, &s.mgmt()).await;
    let done = until_done(&s, &reader, &status_path).await;
    assert_eq!(done["status"], "Succeeded");
    // An unknown operation id: ARM's not-found envelope.
    let unknown = status_path.replace(&op_id, &uuid::Uuid::new_v4().to_string());
    let b = send(&s, &admin, "GET", &unknown, None).await;
    assert_eq!(b.status, 404, "{}", b.body);
    assert_eq!(b.body["error"]["code"], "OperationNotFound");
    assert!(b.body["error"]["message"].is_string());
}

#[tokio::test]
async fn an_operation_interrupted_by_a_restart_ends_failed_and_frees_its_resource() {
    let mut s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    let id = thing(&s.sub(), "interrupted");
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"provisionSeconds": 60}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let status_path = path_of(&a.header("azure-asyncoperation"));
    s.kill9();
    s.spawn().await;
    let admin = s.admin_token().await;
    let started = Instant::now();
    let done = until_done(&s, &admin, &status_path).await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(done["error"]["code"], "OperationInterrupted");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(
        g.body["properties"]["provisioningState"], "Failed",
        "{}",
        g.body
    );
    // The resource can be written again.
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {}})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded");
}

#[tokio::test]
async fn a_long_running_action_answers_202_and_its_result_url_the_result() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "slow").await;
    let id = thing(&s.sub(), "act");
    // No such resource yet: the action is refused before any operation starts.
    let a = send(&s, &admin, "POST", &format!("{id}/restart?{API}"), None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = send(
        &s,
        &admin,
        "PUT",
        &format!("{id}?{API}"),
        Some(json!({"location": "local", "properties": {"provisionSeconds": 3}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let a = send(
        &s,
        &admin,
        "POST",
        &format!("{id}/restart?{API}"),
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.header("location").contains("/operationResults/"));
    assert!(
        a.header("azure-asyncoperation")
            .contains("/operationStatuses/")
    );
    // While it runs the result URL answers 202, and a write to the resource 409.
    let r = send(&s, &admin, "GET", &a.header("location"), None).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let w = send(
        &s,
        &admin,
        "PATCH",
        &format!("{id}?{API}"),
        Some(json!({"tags": {"x": "1"}})),
    )
    .await;
    assert_eq!(w.status, 409, "{}", w.body);
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    let r = send(&s, &admin, "GET", &a.header("location"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["restarted"], "act");
    assert_eq!(r.body["body"]["reason"], "test");
    // The action leaves the resource's provisioning state as it was.
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(g.body["properties"]["provisioningState"], "Succeeded");
    // A caller without the action's permission is refused before anything runs.
    let (app, sp, secret) = s.new_sp(&admin, "reader-only").await;
    s.assign(&admin, &format!("/subscriptions/{}", s.sub()), READER, &sp)
        .await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    let a = send(&s, &tok, "POST", &format!("{id}/restart?{API}"), None).await;
    assert_eq!(a.status, 403, "{}", a.body);
    // A failing action reports its error; the resource stays Succeeded.
    let a = send(
        &s,
        &admin,
        "PATCH",
        &format!("{id}?{API}"),
        Some(json!({"properties": {"failAction": "the restart failed"}})),
    )
    .await;
    assert!(a.status == 200 || a.status == 202, "{}", a.body);
    if !a.header("azure-asyncoperation").is_empty() {
        until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    }
    let a = send(&s, &admin, "POST", &format!("{id}/restart?{API}"), None).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let done = until_done(&s, &admin, &a.header("azure-asyncoperation")).await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(done["error"]["message"], "the restart failed");
    let g = send(&s, &admin, "GET", &format!("{id}?{API}"), None).await;
    assert_eq!(g.body["properties"]["provisioningState"], "Succeeded");
}
