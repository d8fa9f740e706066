//! Dynamic sessions through the public interfaces: the `Microsoft.App/sessionPools` ARM
//! resource, and the pool's data plane (both API generations) with real bubblewrap sandboxes.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const EXECUTOR: &str = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0";
const LEGACY: &str = "2024-02-02-preview";
const CURRENT: &str = "2025-02-02-preview";
const NEWEST: &str = "2025-10-02-preview";

struct Pool {
    id: String,
    endpoint: String,
    token: String,
}

async fn make_pool(s: &Server, admin: &str, rg: &str, name: &str, props: Value) -> Pool {
    s.create_rg(admin, rg).await;
    let id = format!(
        "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.App/sessionPools/{name}",
        s.sub()
    );
    let (st, v) = s
        .call(
            admin,
            "PUT",
            &format!("{id}?api-version=2025-07-01"),
            Some(json!({"location": "local", "properties": props})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let endpoint = v["properties"]["poolManagementEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    // The bootstrap admin is Owner, which has no data actions: executing needs the
    // Session Executor role, as on Azure.
    s.assign(admin, &id, EXECUTOR, &s.admin_id_object().await)
        .await;
    let token = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    Pool {
        id,
        endpoint,
        token,
    }
}

trait AdminObject {
    async fn admin_id_object(&self) -> String;
}

impl AdminObject for Server {
    async fn admin_id_object(&self) -> String {
        let t = self.admin_token().await;
        claims(&t)["oid"].as_str().unwrap().to_string()
    }
}

async fn dp(
    s: &Server,
    p: &Pool,
    method: &str,
    path_and_query: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = s
        .http
        .request(m, format!("{}/{path_and_query}", p.endpoint))
        .bearer_auth(&p.token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        h,
    )
}

async fn legacy_exec(s: &Server, p: &Pool, id: &str, code: &str) -> Value {
    let (st, v, _) = dp(
        s,
        p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier={id}"),
        Some(json!({"properties": {"codeInputType": "inline", "executionType": "synchronous", "code": code}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["properties"].clone()
}

#[tokio::test]
async fn pool_resource_crud_and_validation() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "pools").await;
    let base = format!(
        "/subscriptions/{}/resourceGroups/pools/providers/Microsoft.App/sessionPools",
        s.sub()
    );
    // The older dynamicPoolConfiguration form, enum values in any case.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{base}/alpha?api-version=2024-03-01"),
            Some(json!({"location": "local", "properties": {
                "containerType": "pythonlts", "poolManagementType": "dynamic",
                "scaleConfiguration": {"maxConcurrentSessions": 7, "readySessionInstances": 1},
                "dynamicPoolConfiguration": {"executionType": "Timed", "cooldownPeriodInSeconds": 600}
            }})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let p = &v["properties"];
    assert_eq!(p["containerType"], "PythonLTS");
    assert_eq!(p["scaleConfiguration"]["maxConcurrentSessions"], 7);
    assert_eq!(
        p["dynamicPoolConfiguration"]["cooldownPeriodInSeconds"],
        600
    );
    assert_eq!(
        p["dynamicPoolConfiguration"]["lifecycleConfiguration"]["cooldownPeriodInSeconds"],
        600
    );
    assert_eq!(p["sessionNetworkConfiguration"]["status"], "EgressDisabled");
    assert_eq!(p["provisioningState"], "Succeeded");
    let ep = p["poolManagementEndpoint"].as_str().unwrap();
    assert!(
        ep.ends_with("/resourceGroups/pools/sessionPools/alpha"),
        "{ep}"
    );
    // The newer form, with a system-assigned identity available inside sessions.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{base}/beta?api-version=2025-07-01"),
            Some(json!({"location": "local", "identity": {"type": "SystemAssigned"}, "properties": {
                "scaleConfiguration": {"maxConcurrentSessions": 3},
                "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300, "maxAlivePeriodInSeconds": 3600}},
                "sessionNetworkConfiguration": {"status": "EgressEnabled"},
                "managedIdentitySettings": [{"identity": "system", "lifecycle": "Main"}]
            }})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert!(v["identity"]["principalId"].is_string());
    assert_eq!(
        v["properties"]["managedIdentitySettings"][0]["lifecycle"],
        "Main"
    );
    // PATCH merges.
    let (st, v) = s
        .call(
            &admin,
            "PATCH",
            &format!("{base}/alpha?api-version=2025-07-01"),
            Some(json!({"properties": {"scaleConfiguration": {"readySessionInstances": 2}}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["properties"]["scaleConfiguration"]["maxConcurrentSessions"],
        7
    );
    assert_eq!(
        v["properties"]["scaleConfiguration"]["readySessionInstances"],
        2
    );
    // Lists at resource-group and subscription level.
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("{base}?api-version=2025-07-01"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let (_, v) = s
        .call(
            &admin,
            "GET",
            &format!(
                "/subscriptions/{}/providers/Microsoft.App/sessionPools?api-version=2025-07-01",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    // Bad input: clear 400s in ARM's shape.
    for (name, props, needle) in [
        (
            "gamma",
            json!({"containerType": "CustomContainer"}),
            "not supported",
        ),
        (
            "gamma",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 0}}),
            "at least 1",
        ),
        (
            "gamma",
            json!({"scaleConfiguration": {"maxConcurrentSessions": 2, "readySessionInstances": 5}}),
            "cannot exceed",
        ),
        (
            "gamma",
            json!({"sessionNetworkConfiguration": {"status": "Wide"}}),
            "EgressDisabled",
        ),
        (
            "gamma",
            json!({"managedIdentitySettings": [{"identity": "system", "lifecycle": "Main"}]}),
            "not an identity of this session pool",
        ),
        ("Bad_Name", json!({}), "not valid"),
    ] {
        let (st, v) = s
            .call(
                &admin,
                "PUT",
                &format!("{base}/{name}?api-version=2025-07-01"),
                Some(json!({"location": "local", "properties": props})),
            )
            .await;
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    // Delete.
    let (st, _) = s
        .call(
            &admin,
            "DELETE",
            &format!("{base}/alpha?api-version=2025-07-01"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call(
            &admin,
            "GET",
            &format!("{base}/alpha?api-version=2025-07-01"),
            None,
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn data_plane_auth_is_checked() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(&s, &admin, "authrg", "authpool", json!({})).await;
    let url = format!(
        "{}/code/execute?api-version={LEGACY}&identifier=abcd",
        p.endpoint
    );
    let body = json!({"properties": {"code": "1"}});
    // No token.
    let r = s.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-ms-error-code"], "Unauthorized");
    // A token for another audience.
    let r = s
        .http
        .post(&url)
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    // A principal without Session Executor.
    let (app, sp, secret) = s.new_sp(&admin, "nobody").await;
    let t = s
        .client_token(&app, &secret, "https://dynamicsessions.io")
        .await;
    let r = s
        .http
        .post(&url)
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Granted at the resource group (inherited), with the legacy audience.
    let rg = format!("/subscriptions/{}/resourceGroups/authrg", s.sub());
    let a = s.assign(&admin, &rg, EXECUTOR, &sp).await;
    let t = s
        .client_token(&app, &secret, "https://acasessions.io")
        .await;
    let r = s
        .http
        .post(&url)
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // An unknown pool under a scope the caller holds: 404.
    let r = s
        .http
        .post(url.replace("/authpool/", "/nopool/"))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-ms-error-code"], "SessionPoolNotFound");
    // Revoked: the next request is refused.
    let (st, _) = s
        .call(
            &admin,
            "DELETE",
            &format!("{}?api-version=2022-04-01", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .http
        .post(&url)
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let _ = p.id;
}

#[tokio::test]
async fn code_interpreter_both_api_generations() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "ci",
        "interp",
        json!({"scaleConfiguration": {"maxConcurrentSessions": 10, "readySessionInstances": 2}}),
    )
    .await;
    // Legacy: typed result, state kept, print, errors as HTTP 200 with Failure.
    let r = legacy_exec(&s, &p, "user-1", "6*7").await;
    assert_eq!(r["status"], "Success");
    assert_eq!(r["result"], 42);
    for k in ["stdout", "stderr", "result", "status"] {
        assert!(r.get(k).is_some(), "legacy responses always carry {k}");
    }
    legacy_exec(&s, &p, "user-1", "x = 21").await;
    let r = legacy_exec(&s, &p, "user-1", "print('hi'); x * 2").await;
    assert_eq!(r["stdout"], "hi\n");
    assert_eq!(r["result"], 42);
    let r = legacy_exec(&s, &p, "user-1", "{'a': 'b'}").await;
    assert_eq!(r["result"], "{'a': 'b'}");
    let r = legacy_exec(&s, &p, "user-1", "1/0").await;
    assert_eq!(r["status"], "Failure");
    assert!(r["stderr"].as_str().unwrap().contains("ZeroDivisionError"));
    assert!(!r["stderr"].as_str().unwrap().contains('\u{1b}'));
    // Identifiers are per session: another identifier has no x.
    let r = legacy_exec(&s, &p, "user-2", "x").await;
    assert_eq!(r["status"], "Failure");
    assert!(r["stderr"].as_str().unwrap().contains("NameError"));
    // An identifier that is not URL-encoded (as Semantic Kernel sends it).
    let r = legacy_exec(&s, &p, "a|b(c)[d]", "3").await;
    assert_eq!(r["result"], 3);
    // Bad identifiers.
    for bad in ["abc", "has%20space", &"x".repeat(129)] {
        let (st, v, h) = dp(
            &s,
            &p,
            "POST",
            &format!("code/execute?api-version={LEGACY}&identifier={bad}"),
            Some(json!({"properties": {"code": "1"}})),
        )
        .await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "SessionRequestValidationFailed");
        assert_eq!(h["x-ms-error-code"], "SessionRequestValidationFailed");
    }
    // Current API: flat or wrapped body, PascalCase enums; 202 before 2025-10-02-preview.
    let (st, v, h) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={CURRENT}&identifier=user-1"),
        Some(json!({"codeInputType": "Inline", "executionType": "Synchronous", "code": "x + 1", "timeoutInSeconds": 30})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "Succeeded");
    assert_eq!(v["result"]["executionResult"], "22");
    assert!(h.contains_key("operation-location"));
    let (st, v, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=user-1"),
        Some(json!({"properties": {"codeInputType": "inline", "executionType": "synchronous", "code": "None"}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["executionResult"], Value::Null);
    // Asynchronous: 202 Running, then poll to Succeeded.
    let (st, v, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={CURRENT}&identifier=user-1"),
        Some(json!({"codeInputType": "inline", "executionType": "asynchronous", "code": "import time; time.sleep(1); print('done')"})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "Running");
    let eid = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v, _) = dp(
            &s,
            &p,
            "GET",
            &format!("executions/{eid}?api-version={CURRENT}&identifier=user-1"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        if v["status"] == "Succeeded" {
            assert_eq!(v["result"]["stdout"], "done\n");
            break;
        }
        assert_eq!(v["status"], "Running");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A user error is HTTP 200 + Failed; a timeout says so.
    let (st, v, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=user-1"),
        Some(json!({"code": "while True: pass", "timeoutInSeconds": 2})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "Failed");
    assert!(
        v["result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("Request timed out waiting for code execution to complete"),
        "{v}"
    );
    // Missing code: a clear 400.
    let (st, v, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=user-1"),
        Some(json!({"properties": {}})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "SessionPropertiesMissing");
    // Sessions: get, list, delete; the identifier then gets a fresh session.
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("session?api-version={NEWEST}&identifier=user-1"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["identifier"], "user-1");
    let etag = v["etag"].as_str().unwrap().to_string();
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("listSessions?api-version={NEWEST}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert!(v["sessions"].as_array().unwrap().len() >= 3);
    let (st, _, _) = dp(
        &s,
        &p,
        "DELETE",
        &format!("session?api-version={NEWEST}&identifier=user-1"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = dp(
        &s,
        &p,
        "GET",
        &format!("session?api-version={NEWEST}&identifier=user-1"),
        None,
    )
    .await;
    assert_eq!(st, 404);
    let r = legacy_exec(&s, &p, "user-1", "x").await;
    assert_eq!(r["status"], "Failure", "a deleted session's state is gone");
    let (_, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("session?api-version={NEWEST}&identifier=user-1"),
        None,
    )
    .await;
    assert_ne!(v["etag"], etag);
    // Metadata lists the runtime.
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("metadata?api-version={NEWEST}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["runtimes"][0]["name"], "python");
    let pkgs: Vec<&str> = v["preInstalledPackages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "numpy",
        "pandas",
        "matplotlib",
        "scipy",
        "scikit-learn",
        "setuptools",
    ] {
        assert!(pkgs.contains(&want), "{want} missing from {pkgs:?}");
    }
    // Unknown operations and missing api-version.
    let (st, v, h) = dp(
        &s,
        &p,
        "POST",
        &format!("python/teleport?api-version={NEWEST}&identifier=abcd"),
        None,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(h["x-ms-error-code"], "SessionRequestNotSupported");
    let (st, _, _) = dp(&s, &p, "GET", "listSessions", None).await;
    assert_eq!(st, 400);
}

async fn upload(
    s: &Server,
    p: &Pool,
    path_and_query: &str,
    name: &str,
    data: Vec<u8>,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
    );
    let r = s
        .http
        .post(format!("{}/{path_and_query}", p.endpoint))
        .bearer_auth(&p.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn files_in_both_api_generations() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(&s, &admin, "files", "fpool", json!({})).await;
    // Legacy upload with an absolute /mnt/data name (LlamaIndex, Semantic Kernel).
    let (st, v) = upload(
        &s,
        &p,
        &format!("files/upload?api-version={LEGACY}&identifier=filer"),
        "/mnt/data/data.csv",
        b"a,b\n1,2\n".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"][0]["properties"]["filename"], "data.csv");
    assert_eq!(v["value"][0]["properties"]["size"], 8);
    // Code sees it in /mnt/data.
    let r = legacy_exec(&s, &p, "filer", "open('/mnt/data/data.csv').read()").await;
    assert_eq!(r["result"], "'a,b\\n1,2\\n'");
    legacy_exec(&s, &p, "filer", "open('out.txt','w').write('made by code')").await;
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("files?api-version={LEGACY}&identifier=filer"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["filename"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"data.csv") && names.contains(&"out.txt"),
        "{v}"
    );
    let r = s
        .http
        .get(format!(
            "{}/files/content/out.txt?api-version={LEGACY}&identifier=filer",
            p.endpoint
        ))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"made by code");
    // Current API: upload into a directory, list, stat, content, delete.
    let (st, v) = upload(
        &s,
        &p,
        &format!("files?api-version={NEWEST}&identifier=filer&path=sub"),
        "cfg.yaml",
        b"a: 1".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "cfg.yaml");
    assert_eq!(v["type"], "File");
    assert_eq!(v["sizeInBytes"], 4);
    assert_eq!(v["contentType"], "application/yaml");
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("files?api-version={NEWEST}&identifier=filer&path=sub"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["value"][0]["name"], "cfg.yaml");
    let (st, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("files/sub/cfg.yaml?api-version={NEWEST}&identifier=filer"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["lastModifiedAt"].is_string());
    let r = s
        .http
        .get(format!(
            "{}/files/sub%2Fcfg.yaml/content?api-version={NEWEST}&identifier=filer",
            p.endpoint
        ))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"a: 1");
    let (st, _, _) = dp(
        &s,
        &p,
        "DELETE",
        &format!("files/sub/cfg.yaml?api-version={NEWEST}&identifier=filer"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, v, h) = dp(
        &s,
        &p,
        "GET",
        &format!("files/sub/cfg.yaml?api-version={NEWEST}&identifier=filer"),
        None,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(h["x-ms-error-code"], "FileNotFound");
    // Nothing escapes /mnt/data.
    for bad in ["../etc/passwd", "/etc/passwd"] {
        let (st, v) = upload(
            &s,
            &p,
            &format!("files?api-version={NEWEST}&identifier=filer"),
            bad,
            b"x".to_vec(),
        )
        .await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, _, _) = dp(
        &s,
        &p,
        "GET",
        &format!("files/content/..%2F..%2Fetc%2Fshadow?api-version={LEGACY}&identifier=filer"),
        None,
    )
    .await;
    assert_eq!(st, 400);
    // Another session cannot see these files.
    let (_, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("files?api-version={LEGACY}&identifier=other"),
        None,
    )
    .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0, "{v}");
    // Over 128 MB: 413.
    let (st, v) = upload(
        &s,
        &p,
        &format!("files?api-version={NEWEST}&identifier=filer"),
        "big.bin",
        vec![0u8; 128 * 1024 * 1024 + 1],
    )
    .await;
    assert_eq!(st, 413, "{v}");
}

#[tokio::test]
async fn max_concurrent_sessions_holds_under_a_burst() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "burst",
        "bpool",
        json!({"scaleConfiguration": {"maxConcurrentSessions": 50, "readySessionInstances": 5}}),
    )
    .await;
    let mut tasks = vec![];
    for i in 0..1000 {
        let http = s.http.clone();
        let url = format!(
            "{}/code/execute?api-version={LEGACY}&identifier=burst-{i:04}",
            p.endpoint
        );
        let tok = p.token.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(tok)
                .json(&json!({"properties": {"code": "1"}}))
                .timeout(Duration::from_secs(600))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, true) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        ok, 50,
        "exactly maxConcurrentSessions sessions are allocated"
    );
    assert_eq!(limited, 950);
    let (_, v, _) = dp(
        &s,
        &p,
        "GET",
        &format!("listSessions?api-version={NEWEST}"),
        None,
    )
    .await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 50);
}

#[tokio::test]
async fn idle_sessions_are_cleaned_up_after_the_cooldown() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "cool",
        "cpool",
        json!({"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 3}}}),
    )
    .await;
    legacy_exec(
        &s,
        &p,
        "sleepy",
        "import subprocess; subprocess.Popen(['sleep', '1717']); 1",
    )
    .await;
    legacy_exec(&s, &p, "busy", "y = 1").await;
    // Requests reset the timer: keep "busy" alive past the cooldown.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        legacy_exec(&s, &p, "busy", "y += 1").await;
    }
    let (st, _, _) = dp(
        &s,
        &p,
        "GET",
        &format!("session?api-version={NEWEST}&identifier=sleepy"),
        None,
    )
    .await;
    assert_eq!(st, 404, "the idle session was deleted");
    let r = legacy_exec(&s, &p, "busy", "y").await;
    assert_eq!(r["result"], 6, "the active session kept its state");
    // No sandbox process of the deleted session survives.
    let out = std::process::Command::new("pgrep")
        .args(["-f", "sleep 1717"])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "leaked: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn hostile_code_is_contained_and_reported() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(&s, &admin, "hostile", "hpool", json!({})).await;
    // Memory hog: Execution aborted; the identifier then gets a fresh, working session.
    let r = legacy_exec(&s, &p, "hogs", "x = bytearray(8 * 1024**3)").await;
    assert_eq!(r["status"], "Failure");
    assert!(
        r["stderr"].as_str().unwrap().contains("Execution aborted")
            || r["stderr"].as_str().unwrap().contains("MemoryError"),
        "{r}"
    );
    let r = legacy_exec(&s, &p, "hogs", "1+1").await;
    assert_eq!(r["result"], 2);
    // Fork bomb: contained by the pids cap; the session answers afterwards or is replaced.
    let r = legacy_exec(&s, &p, "forker", "import os\nfor _ in range(10000):\n    try:\n        os.fork()\n    except OSError:\n        break\n1").await;
    let _ = r;
    let r = legacy_exec(&s, &p, "forker", "2+2").await;
    assert_eq!(r["result"], 4);
    // Killing the interpreter: the next request gets a fresh session.
    let r = legacy_exec(
        &s,
        &p,
        "killer",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    )
    .await;
    assert_eq!(r["status"], "Failure");
    let r = legacy_exec(&s, &p, "killer", "3").await;
    assert_eq!(r["result"], 3);
    // Host files are not there.
    let r = legacy_exec(&s, &p, "reader", "open('/etc/shadow').read()").await;
    assert_eq!(r["status"], "Failure");
    let dir = s.data_dir().display().to_string();
    let r = legacy_exec(
        &s,
        &p,
        "reader",
        &format!("import os; os.path.exists({dir:?})"),
    )
    .await;
    assert_eq!(r["result"], "False");
    // Filling /tmp and /mnt/data: the writes fail, the session goes on.
    let fill = |dir: &str| {
        format!(
            "import os\ntry:\n    with open('{dir}/fill', 'wb') as f:\n        for _ in range(4096):\n            f.write(b'0' * (1 << 20)); f.flush()\n    r = 'filled'\nexcept OSError as e:\n    r = e.strerror\nos.remove('{dir}/fill')\nr"
        )
    };
    for dir in ["/tmp", "/mnt/data"] {
        let r = legacy_exec(&s, &p, "filler", &fill(dir)).await;
        assert_eq!(r["result"], "'No space left on device'", "{dir}: {r}");
    }
    let r = legacy_exec(&s, &p, "filler", "'still here'").await;
    assert_eq!(r["result"], "'still here'");
    // A flood of stdout is capped.
    let (st, v, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=flood"),
        Some(json!({"code": "print('x' * 10_000_000)", "outputStreamsMaxLength": 1000})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["result"]["stdout"].as_str().unwrap().len() <= 1100,
        "stdout capped"
    );
}

#[tokio::test]
async fn restart_leaves_no_sandboxes_behind() {
    let mut s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "restart",
        "rpool",
        json!({"scaleConfiguration": {"maxConcurrentSessions": 5, "readySessionInstances": 2}}),
    )
    .await;
    legacy_exec(
        &s,
        &p,
        "before",
        "import subprocess; subprocess.Popen(['sleep', '2001']); 1",
    )
    .await;
    s.kill9();
    // bwrap runs with --die-with-parent; the restarted server also sweeps its cgroups.
    s.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 2001"])
            .output()
            .unwrap();
        if out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox processes survived the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pool survived (it is stored) and serves again (on the new port); the old session is gone.
    // (The harness restarts on new ports, so the issuer changes: get new tokens.)
    let admin = s.admin_token().await;
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("{}?api-version=2025-07-01", p.id),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let p = Pool {
        endpoint: v["properties"]["poolManagementEndpoint"]
            .as_str()
            .unwrap()
            .to_string(),
        token: s
            .client_token(
                &s.admin_id(),
                &s.admin_secret(),
                "https://dynamicsessions.io",
            )
            .await,
        ..p
    };
    let (st, _, _) = dp(
        &s,
        &p,
        "GET",
        &format!("session?api-version={NEWEST}&identifier=before"),
        None,
    )
    .await;
    assert_eq!(st, 404);
    let r = legacy_exec(&s, &p, "after", "5").await;
    assert_eq!(r["result"], 5);
}

#[tokio::test]
async fn pool_identities_with_lifecycle_main_reach_code_in_sessions() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "mi").await;
    let uami = format!(
        "/subscriptions/{}/resourceGroups/mi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/worker",
        s.sub()
    );
    let (st, ident) = s
        .call(
            &admin,
            "PUT",
            &format!("{uami}?api-version=2023-01-31"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201, "{ident}");
    let principal = ident["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut pools = vec![];
    for (name, lifecycle) in [("withmi", "Main"), ("nomi", "None")] {
        let id = format!(
            "/subscriptions/{}/resourceGroups/mi/providers/Microsoft.App/sessionPools/{name}",
            s.sub()
        );
        let (st, v) = s
            .call(
                &admin,
                "PUT",
                &format!("{id}?api-version=2025-07-01"),
                Some(json!({"location": "local",
                    "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami.clone(): {}}},
                    "properties": {"managedIdentitySettings": [{"identity": uami, "lifecycle": lifecycle}]}})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        s.assign(&admin, &id, EXECUTOR, &s.admin_id_object().await)
            .await;
        pools.push(Pool {
            id,
            endpoint: v["properties"]["poolManagementEndpoint"]
                .as_str()
                .unwrap()
                .to_string(),
            token: s
                .client_token(
                    &s.admin_id(),
                    &s.admin_secret(),
                    "https://dynamicsessions.io",
                )
                .await,
        });
    }
    let code = [
        "import os, json, urllib.request",
        "ep = os.environ.get('IDENTITY_ENDPOINT')",
        "if ep:",
        "    req = urllib.request.Request(ep + '?api-version=2019-08-01&resource=https://vault.azure.net', headers={'X-IDENTITY-HEADER': os.environ['IDENTITY_HEADER']})",
        "    tok = json.loads(urllib.request.urlopen(req, timeout=10).read())['access_token']",
        "else:",
        "    tok = None",
        "print(tok or 'none')",
    ]
    .join("\n");
    let code = code.as_str();
    let r = legacy_exec(&s, &pools[0], "mi-user", code).await;
    assert_eq!(r["status"], "Success", "{r}");
    let tok = r["stdout"].as_str().unwrap().trim();
    let c = claims(tok);
    assert_eq!(c["oid"], principal.as_str());
    assert_eq!(c["aud"], "https://vault.azure.net");
    assert!(
        c["xms_mirid"]
            .as_str()
            .unwrap()
            .ends_with("/userAssignedIdentities/worker")
    );
    let r = legacy_exec(&s, &pools[1], "mi-user", code).await;
    assert_eq!(
        r["stdout"], "none\n",
        "lifecycle None keeps the identity out of sessions"
    );
    let _ = &pools[1].id;
}

/// A network namespace made by the test, joined to the host by a veth pair: the only
/// non-loopback addresses any network test here sends traffic to. It has a private address
/// (`addr`, 10.254.n.2) and one from a documentation range (`public`, 203.0.113.x, RFC 5737),
/// which the egress filter treats as it treats the public internet.
struct TestNetns {
    name: String,
    veth: String,
    addr: String,
    public: String,
    server: Option<std::process::Child>,
    log: std::path::PathBuf,
}

fn sh(args: &[&str]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(st.success(), "{args:?}");
}

impl TestNetns {
    fn new(dir: &std::path::Path) -> TestNetns {
        let r = uuid::Uuid::new_v4().simple().to_string();
        let n = (u32::from_str_radix(&r[..4], 16).unwrap() % 250) + 1;
        let name = format!("clt{}", &r[..8]);
        let veth = format!("vh{}", &r[..8]);
        let peer = format!("vp{}", &r[..8]);
        let addr = format!("10.254.{n}.2");
        let k = (n % 64) * 4;
        let public = format!("203.0.113.{}", k + 2);
        sh(&["ip", "netns", "add", &name]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.254.{n}.1/30"),
            "dev",
            &veth,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("203.0.113.{}/30", k + 1),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &peer,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{public}/30"),
            "dev",
            &peer,
        ]);
        sh(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", &peer, "up",
        ]);
        sh(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ]);
        let log = dir.join(format!("{name}.log"));
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        TestNetns {
            name,
            veth,
            addr,
            public,
            server: Some(server),
            log,
        }
    }

    fn hits(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(&format!("GET {path} "))
            .count()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn egress_disabled_means_no_network_and_enabled_reaches_out() {
    let s = Server::start().await;
    let ns = TestNetns::new(s.data_dir());
    // The host reaches the test's namespace (so a failure inside a sandbox is the sandbox's doing).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = reqwest::Client::new()
            .get(format!("http://{}:8080/from-host", ns.addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test namespace did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = s.admin_token().await;
    let closed = make_pool(&s, &admin, "net", "closed", json!({})).await;
    let a = ns.addr.clone();
    let code = [
        "import socket, urllib.request",
        "out = {}",
        "def attempt(name, f):",
        "    try:",
        "        f(); out[name] = 'ok'",
        "    except Exception as e:",
        "        out[name] = type(e).__name__",
        &format!("attempt('tcp', lambda: urllib.request.urlopen('http://{a}:8080/?from-closed', timeout=3))"),
        &format!("attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{a}', 53)))"),
        "attempt('dns', lambda: socket.getaddrinfo('example.com', 80))",
        "attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))",
        "attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))",
        "out['ifaces'] = sorted(n for _, n in socket.if_nameindex())",
        "out",
    ]
    .join("\n");
    let r = legacy_exec(&s, &closed, "netuser", &code).await;
    assert_eq!(r["status"], "Success", "{r}");
    let out = r["result"].as_str().unwrap().to_string();
    for k in [
        "'tcp': 'ok'",
        "'udp': 'ok'",
        "'dns': 'ok'",
        "'raw': 'ok'",
        "'packet': 'ok'",
    ] {
        assert!(!out.contains(k), "egress disabled yet {k}: {out}");
    }
    assert!(out.contains("'ifaces': ['lo']"), "{out}");
    assert_eq!(ns.hits("/?from-closed"), 0);
    // EgressEnabled: outbound through slirp4netns reaches a public-range address in the test's
    // namespace; the egress filter refuses its private address.
    let open = make_pool(
        &s,
        &admin,
        "net",
        "open",
        json!({"sessionNetworkConfiguration": {"status": "EgressEnabled"}}),
    )
    .await;
    let p = ns.public.clone();
    let code = format!(
        "import urllib.request\nurllib.request.urlopen('http://{p}:8080/?from-open', timeout=10).status"
    );
    let r = legacy_exec(&s, &open, "netuser", &code).await;
    assert_eq!(r["result"], 200, "{r}");
    assert_eq!(ns.hits("/?from-open"), 1);
    let code = format!(
        "import urllib.request\n\
         try:\n\
         \x20   urllib.request.urlopen('http://{a}:8080/?private-from-open', timeout=5); r = 'reached'\n\
         except Exception as e:\n\
         \x20   r = type(e).__name__\n\
         r"
    );
    let r = legacy_exec(&s, &open, "netuser", &code).await;
    assert_eq!(r["status"], "Success", "{r}");
    assert!(!r["result"].to_string().contains("reached"), "{r}");
    assert_eq!(
        ns.hits("/?private-from-open"),
        0,
        "the private address was reached"
    );
}

#[tokio::test]
async fn the_ready_pool_is_kept_full() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "ready",
        "rdy",
        json!({"scaleConfiguration": {"maxConcurrentSessions": 10, "readySessionInstances": 3}}),
    )
    .await;
    let node_count = || async {
        let (_, v) = s
            .call(
                &admin,
                "GET",
                &format!("{}?api-version=2025-07-01", p.id),
                None,
            )
            .await;
        v["properties"]["nodeCount"].as_u64().unwrap()
    };
    let wait_for = |want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = node_count().await;
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodeCount stayed at {n}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(3).await;
    legacy_exec(&s, &p, "taker-1", "1").await;
    legacy_exec(&s, &p, "taker-2", "1").await;
    // Two sessions taken from the pool, and the pool refilled behind them.
    wait_for(5).await;
}

/// Every process descended from `root` (not `root` itself).
fn descendants(root: u32) -> Vec<i32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let mut out: Vec<i32> = parent
        .keys()
        .copied()
        .filter(|p| {
            let mut q = *p;
            for _ in 0..64 {
                match parent.get(&q) {
                    Some(pp) if *pp == root as i32 => return true,
                    Some(pp) if *pp > 1 => q = *pp,
                    _ => return false,
                }
            }
            false
        })
        .collect();
    out.sort();
    out
}

/// SIGKILL to each of `pids` (the test server's own sandbox processes); returns once they
/// are gone (killed processes take a while to exit on a busy machine).
async fn kill9(pids: &[i32]) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg("-9");
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd.status();
    let gone = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| {
            st.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
    };
    for _ in 0..1000 {
        if pids.iter().all(gone) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("killed processes did not exit");
}

/// Every sandbox of the server (its zygote, or each sandbox's bwrap and agent) killed with
/// SIGKILL from outside: the ready sandboxes are never handed out dead, new identifiers get
/// working sessions on the first try, and file requests to a killed session are served by a
/// fresh one (never a 500).
#[tokio::test]
async fn killed_sandboxes_are_replaced_not_handed_out() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let p = make_pool(
        &s,
        &admin,
        "killed",
        "kpool",
        json!({"scaleConfiguration": {"maxConcurrentSessions": 12, "readySessionInstances": 3}}),
    )
    .await;
    let q = |path: &str, id: &str| format!("{path}?api-version={CURRENT}&identifier={id}");
    let (st, v) = upload(&s, &p, &q("files", "victim"), "a.txt", b"hello".to_vec()).await;
    assert_eq!(st, 200, "{v}");
    // The ready pool is full again before the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s
            .call(
                &admin,
                "GET",
                &format!("{}?api-version=2025-07-01", p.id),
                None,
            )
            .await;
        if v["properties"]["nodeCount"].as_u64() == Some(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ready pool did not fill: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = s.child.as_ref().unwrap().id();
    let victims = descendants(server);
    assert!(!victims.is_empty());
    kill9(&victims).await;
    // More new identifiers than there were ready sandboxes: each works on its first request.
    for i in 0..4 {
        let r = legacy_exec(&s, &p, &format!("fresh-{i}"), "6 * 7").await;
        assert_eq!(r["result"], 42, "fresh-{i}: {r}");
    }
    // The killed session's files requests: answered by a fresh session, never a 500.
    let (st, v, _) = dp(&s, &p, "GET", &q("files", "victim"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"], json!([]), "{v}");
    let (st, v, h) = dp(&s, &p, "GET", &q("files/a.txt/content", "victim"), None).await;
    assert_eq!(
        (st, h["x-ms-error-code"].to_str().unwrap()),
        (404, "FileNotFound"),
        "{v}"
    );
    let (st, v, _) = dp(&s, &p, "DELETE", &q("files/a.txt", "victim"), None).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = upload(&s, &p, &q("files", "victim"), "b.txt", b"again".to_vec()).await;
    assert_eq!(st, 200, "{v}");
    let r = legacy_exec(&s, &p, "victim", "open('/mnt/data/b.txt').read()").await;
    assert_eq!(r["result"], "'again'", "{r}");
    // A second kill, of a session between two file requests: the upload goes to a new one.
    // (A sandbox that dies *during* an upload answers 503 with Retry-After: the body is not
    // kept for a second try.)
    let before = descendants(server);
    kill9(&before).await;
    let (st, v) = upload(&s, &p, &q("files", "victim"), "c.txt", b"c".to_vec()).await;
    assert_eq!(st, 200, "{v}");
}
