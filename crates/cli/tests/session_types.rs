//! Shell and NodeLTS session pools through the public interfaces: the `Microsoft.App/sessionPools`
//! resource with `containerType` `Shell` / `NodeLTS`, and their data planes (both API
//! generations) with real sandboxes: bash in the same jail as Python sessions, and Node.js.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const EXECUTOR: &str = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0";
const LEGACY: &str = "2024-02-02-preview";
const CURRENT: &str = "2025-02-02-preview";
const NEWEST: &str = "2025-10-02-preview";

struct Pool {
    endpoint: String,
    token: String,
}

async fn make_pool(s: &Server, rg: &str, name: &str, props: Value) -> Pool {
    let (endpoint, token) = s.executor_pool_with(rg, name, props).await;
    Pool { endpoint, token }
}

async fn dp(
    s: &Server,
    p: &Pool,
    method: &str,
    path_and_query: &str,
    body: Option<Value>,
) -> (u16, Value) {
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
    let text = r.text().await.unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST executions` (2025-10-02-preview: 200) with a flat body.
async fn run(s: &Server, p: &Pool, id: &str, body: Value) -> Value {
    let (st, v) = dp(
        s,
        p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier={id}"),
        Some(body),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn sh(s: &Server, p: &Pool, id: &str, cmd: &str) -> Value {
    run(s, p, id, json!({ "shellCommand": cmd })).await
}

async fn js(s: &Server, p: &Pool, id: &str, code: &str) -> Value {
    run(s, p, id, json!({ "code": code })).await
}

fn out(v: &Value) -> &str {
    v["result"]["stdout"].as_str().unwrap_or_default()
}

async fn upload(s: &Server, p: &Pool, id: &str, name: &str, data: &[u8]) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_string()),
    );
    let r = s
        .http
        .post(format!(
            "{}/files?api-version={CURRENT}&identifier={id}",
            p.endpoint
        ))
        .bearer_auth(&p.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

async fn download(s: &Server, p: &Pool, id: &str, name: &str) -> (u16, Vec<u8>) {
    let r = s
        .http
        .get(format!(
            "{}/files/{name}/content?api-version={CURRENT}&identifier={id}",
            p.endpoint
        ))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// The Node runtime the server's NodeLTS sessions use (built once; a stamp check after that).
/// It must be there before the server starts: the runtime is chosen then.
fn node_runtime() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/sandbox-runtime.sh");
        let ok = std::process::Command::new("bash")
            .arg(&script)
            .arg("--node")
            .status()
            .expect("run scripts/sandbox-runtime.sh --node")
            .success();
        assert!(ok, "scripts/sandbox-runtime.sh --node failed");
    });
}

fn shell_pool() -> Value {
    json!({
        "containerType": "Shell", "poolManagementType": "Dynamic",
        "scaleConfiguration": {"maxConcurrentSessions": 10, "readySessionInstances": 1},
        "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300}},
        "sessionNetworkConfiguration": {"status": "EgressDisabled"}
    })
}

fn node_pool() -> Value {
    let mut v = shell_pool();
    v["containerType"] = json!("NodeLTS");
    v
}

#[tokio::test]
async fn pool_types_on_the_resource() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "types").await;
    let base = format!(
        "/subscriptions/{}/resourceGroups/types/providers/Microsoft.App/sessionPools",
        s.sub()
    );
    for (name, t) in [("sh", "shell"), ("js", "NodeLTS")] {
        let (st, v) = s
            .call(
                &admin,
                "PUT",
                &format!("{base}/{name}?api-version=2025-02-02-preview"),
                Some(json!({"location": "local", "properties": {"containerType": t}})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let want = if t == "shell" { "Shell" } else { "NodeLTS" };
        assert_eq!(v["properties"]["containerType"], want);
        let (_, v) = s
            .call(
                &admin,
                "GET",
                &format!("{base}/{name}?api-version=2025-07-01"),
                None,
            )
            .await;
        assert_eq!(v["properties"]["containerType"], want);
    }
    // A PATCH may not change the type; CustomContainer is refused with a clear message.
    let (st, v) = s
        .call(
            &admin,
            "PATCH",
            &format!("{base}/sh?api-version=2025-07-01"),
            Some(json!({"properties": {"containerType": "PythonLTS"}})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be changed")
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{base}/custom?api-version=2025-07-01"),
            Some(json!({"location": "local", "properties": {"containerType": "CustomContainer"}})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidRequestContent");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CustomContainer")
    );
}

#[tokio::test]
async fn shell_pool_runs_commands_with_state_exit_codes_and_timeouts() {
    let s = Server::start().await;
    let p = make_pool(&s, "shell", "bash", shell_pool()).await;
    // Both body shapes; the exit code as the status string and as an integer.
    let v = sh(&s, &p, "sh-one", "echo hello; pwd").await;
    assert_eq!(v["status"], "0", "{v}");
    assert_eq!(v["exitCode"], 0);
    assert_eq!(out(&v), "hello\n/mnt/data\n");
    assert!(v["result"]["executionTimeInMilliseconds"].is_u64());
    assert!(v.get("errorName").is_none(), "{v}");
    let (st, v) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={CURRENT}&identifier=sh-one"),
        Some(
            json!({"properties": {"codeInputType": "inline", "executionType": "synchronous",
                    "shellCommand": "echo wrapped", "timeoutInSeconds": 60}}),
        ),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!((v["status"].as_str(), out(&v)), (Some("0"), "wrapped\n"));
    // The working directory and exported variables persist; unexported ones and functions do not.
    let v = sh(
        &s,
        &p,
        "sh-one",
        "mkdir -p sub && cd sub && export FOO=bar && BAZ=local && f() { :; }",
    )
    .await;
    assert_eq!(v["status"], "0", "{v}");
    let v = sh(
        &s,
        &p,
        "sh-one",
        "pwd; echo \"$FOO-$BAZ\"; type f >/dev/null 2>&1 || echo nofunc",
    )
    .await;
    assert_eq!(out(&v), "/mnt/data/sub\nbar-\nnofunc\n", "{v}");
    let v = sh(&s, &p, "sh-one", "unset FOO; cd /tmp").await;
    assert_eq!(v["status"], "0");
    let v = sh(&s, &p, "sh-one", "echo \"[$FOO]\"; pwd").await;
    assert_eq!(out(&v), "[]\n/tmp\n", "{v}");
    // Another identifier has none of it.
    let v = sh(&s, &p, "sh-two", "echo \"[$FOO]\"; pwd; ls /mnt/data").await;
    assert_eq!(out(&v), "[]\n/mnt/data\n", "{v}");
    // Exit codes and stderr.
    let v = sh(&s, &p, "sh-one", "echo oops >&2; exit 3").await;
    assert_eq!(
        (v["status"].as_str(), v["exitCode"].as_i64()),
        (Some("3"), Some(3))
    );
    assert_eq!(v["result"]["stderr"], "oops\n");
    let v = sh(&s, &p, "sh-one", "ls /nonexistent").await;
    assert_eq!(v["exitCode"], 2);
    assert!(
        v["result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("No such file")
    );
    let v = sh(&s, &p, "sh-one", "kill -9 $$").await;
    assert_eq!(v["status"], "137", "{v}");
    let v = sh(&s, &p, "sh-one", "if then fi").await;
    assert_eq!(v["status"], "2", "a syntax error is bash's exit 2: {v}");
    // The state survives a failed command (its own changes are kept, as bash would).
    let v = sh(&s, &p, "sh-one", "pwd").await;
    assert_eq!(out(&v), "/tmp\n");
    // A timeout kills the whole process group, a background child included, and keeps the
    // output so far.
    let t0 = Instant::now();
    let v = run(
        &s,
        &p,
        "sh-one",
        json!({"shellCommand": "sleep 300 & echo started; sleep 300", "timeoutInSeconds": 1}),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        (v["status"].as_str(), v["exitCode"].as_i64()),
        (Some("-1"), Some(-1)),
        "{v}"
    );
    assert_eq!(v["errorName"], "ExecutionTimeout");
    assert!(v["errorMessage"].as_str().unwrap().contains("1 s"));
    assert_eq!(out(&v), "started\n");
    let none = "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$'";
    let v = sh(&s, &p, "sh-one", none).await;
    assert_eq!(out(&v), "0\n", "no sleep survives its timeout: {v}");
    // Background jobs end with their command too, even one that made a session of its own.
    let v = sh(&s, &p, "sh-one", "sleep 300 & setsid sleep 300 & echo bg").await;
    assert_eq!(out(&v), "bg\n");
    let v = sh(&s, &p, "sh-one", none).await;
    assert_eq!(out(&v), "0\n", "{v}");
    // Output caps: the new API's default 4096 characters, or outputStreamsMaxLength.
    let v = sh(&s, &p, "sh-one", "head -c 100000 /dev/zero | tr '\\0' a").await;
    assert_eq!(out(&v).len(), 4096);
    let v = run(
        &s,
        &p,
        "sh-one",
        json!({"shellCommand": "head -c 100000 /dev/zero | tr '\\0' b >&2", "outputStreamsMaxLength": 1000}),
    )
    .await;
    assert_eq!(v["result"]["stderr"].as_str().unwrap().len(), 1000);
    // The tools a shell agent needs are there.
    let v = sh(
        &s,
        &p,
        "tools",
        "for t in bash base64 grep sed awk mktemp mkdir mv git curl; do command -v $t >/dev/null || echo missing $t; done; \
         echo aGk= | base64 -d; echo; f=$(mktemp) && echo ok > $f && cat $f; \
         git init -q repo && cd repo && git -c user.email=a@b -c user.name=n commit -q --allow-empty -m x && git log --oneline | wc -l",
    )
    .await;
    assert_eq!(out(&v), "hi\nok\n1\n", "{v}");
    // Asynchronous: Running, then the exit code.
    let (st, v) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={CURRENT}&identifier=sh-one"),
        Some(json!({"shellCommand": "sleep 0.3; exit 4", "executionType": "Asynchronous"})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "Running");
    let op = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let (st, v) = dp(
            &s,
            &p,
            "GET",
            &format!("executions/{op}?api-version={CURRENT}&identifier=sh-one"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        if v["status"] != "Running" {
            break v;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (done["status"].as_str(), done["exitCode"].as_i64()),
        (Some("4"), Some(4))
    );
}

#[tokio::test]
async fn shell_pool_requests_files_metadata_and_legacy_api() {
    let s = Server::start().await;
    let p = make_pool(&s, "shellio", "bashio", shell_pool()).await;
    // Wrong-type and malformed requests: clear 400s.
    for (body, target) in [
        (json!({"code": "print(1)"}), "code"),
        (json!({"shellCommand": ""}), "shellCommand"),
        (json!({"shellCommand": 7}), "shellCommand"),
        (json!({}), "shellCommand"),
        (
            json!({"shellCommand": "ls", "timeoutInSeconds": 0}),
            "timeoutInSeconds",
        ),
    ] {
        let (st, v) = dp(
            &s,
            &p,
            "POST",
            &format!("executions?api-version={NEWEST}&identifier=sh-io"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["target"], target, "{v}");
        assert!(v["error"]["message"].is_string());
    }
    // The legacy API: shellCommand in the legacy shape (plus exitCode); code is refused.
    let (st, v) = dp(
        &s,
        &p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier=sh-io"),
        Some(json!({"properties": {"codeInputType": "inline", "executionType": "synchronous", "shellCommand": "echo legacy; exit 5"}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let pr = &v["properties"];
    assert_eq!(
        (
            pr["status"].as_str(),
            pr["stdout"].as_str(),
            pr["exitCode"].as_i64()
        ),
        (Some("Failure"), Some("legacy\n"), Some(5)),
        "{v}"
    );
    assert_eq!(pr["result"], "");
    let (st, _) = dp(
        &s,
        &p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier=sh-io"),
        Some(json!({"properties": {"code": "1+1"}})),
    )
    .await;
    assert_eq!(st, 400);
    // Files: uploaded ones are there for commands, and what commands write can be downloaded.
    let up = upload(&s, &p, "sh-io", "in.txt", b"line one\nline two\n").await;
    assert_eq!(up["name"], "in.txt");
    let v = sh(
        &s,
        &p,
        "sh-io",
        "grep -c line in.txt; sed -n 2p /mnt/data/in.txt > out.txt",
    )
    .await;
    assert_eq!(out(&v), "2\n", "{v}");
    assert_eq!(
        download(&s, &p, "sh-io", "out.txt").await,
        (200, b"line two\n".to_vec())
    );
    let (st, v) = dp(
        &s,
        &p,
        "GET",
        &format!("files?api-version={CURRENT}&identifier=sh-io"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["in.txt", "out.txt"]);
    // Metadata: bash and the tools.
    let (st, v) = dp(
        &s,
        &p,
        "GET",
        &format!("metadata?api-version={CURRENT}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["runtimes"][0]["name"], "bash");
    assert!(
        v["runtimes"][0]["version"]
            .as_str()
            .unwrap()
            .starts_with('5')
    );
    let pkgs: Vec<&str> = v["preInstalledPackages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for t in ["coreutils", "grep", "sed", "git", "curl"] {
        assert!(pkgs.contains(&t), "{t} in {pkgs:?}");
    }
}

#[tokio::test]
async fn node_pool_is_a_repl_with_state_errors_async_and_files() {
    node_runtime();
    let s = Server::start().await;
    let p = make_pool(&s, "node", "js", node_pool()).await;
    // The documented legacy call and response (executionResult, and result for Python clients).
    let (st, v) = dp(
        &s,
        &p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier=test"),
        Some(
            json!({"properties": {"codeInputType": "inline", "executionType": "synchronous",
                    "code": "console.log(\"hello-world\")"}}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let pr = &v["properties"];
    assert_eq!(pr["status"], "Success", "{v}");
    assert_eq!(pr["stdout"], "hello-world\n");
    assert_eq!(pr["stderr"], "");
    assert_eq!(pr["executionResult"], "");
    assert_eq!(pr["result"], "");
    let (_, v) = dp(
        &s,
        &p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier=test"),
        Some(json!({"properties": {"code": "let x = 6; x * 7"}})),
    )
    .await;
    assert_eq!(v["properties"]["result"], 42, "{v}");
    assert_eq!(v["properties"]["executionResult"], "42");
    // State, and a re-run cell's let/const/class redeclaration.
    for _ in 0..2 {
        let v = js(
            &s,
            &p,
            "test",
            "let x = 1; const y = {a: [1, 'two']}; class K {}; y",
        )
        .await;
        assert_eq!(v["status"], "Succeeded", "{v}");
        assert_eq!(v["result"]["executionResult"], "{ a: [ 1, 'two' ] }");
    }
    let v = js(&s, &p, "test", "x + 1").await;
    assert_eq!(v["result"]["executionResult"], "2");
    let v = js(&s, &p, "test", "var u; function f() { return 3 }").await;
    assert_eq!(
        v["result"]["executionResult"],
        Value::Null,
        "undefined has no value"
    );
    // console.error to stderr; process.stdout.write to stdout.
    let v = js(
        &s,
        &p,
        "test",
        "console.error('warn', 1); process.stdout.write('raw'); f()",
    )
    .await;
    assert_eq!(
        (out(&v), v["result"]["stderr"].as_str()),
        ("raw", Some("warn 1\n"))
    );
    assert_eq!(v["result"]["executionResult"], "3");
    // Top-level await, its declarations kept.
    let v = js(
        &s,
        &p,
        "test",
        "const r = await new Promise(res => setTimeout(() => res('done'), 20));\nr.toUpperCase()",
    )
    .await;
    assert_eq!(v["result"]["executionResult"], "'DONE'", "{v}");
    let v = js(&s, &p, "test", "r").await;
    assert_eq!(v["result"]["executionResult"], "'done'");
    // Errors: Failed, the stack in stderr, errorName/errorMessage.
    let v = js(
        &s,
        &p,
        "test",
        "function g() { throw new TypeError('boom') }\ng()",
    )
    .await;
    assert_eq!(v["status"], "Failed");
    assert_eq!(
        (v["errorName"].as_str(), v["errorMessage"].as_str()),
        (Some("TypeError"), Some("boom"))
    );
    let err = v["result"]["stderr"].as_str().unwrap();
    assert!(
        err.contains("TypeError: boom") && err.contains("at g"),
        "{err}"
    );
    assert!(
        !err.contains("node_agent"),
        "the agent's frames are hidden: {err}"
    );
    let v = js(&s, &p, "test", "let = ;").await;
    assert_eq!(v["errorName"], "SyntaxError");
    let v = js(&s, &p, "test", "await Promise.reject(new RangeError('no'))").await;
    assert_eq!(
        (v["status"].as_str(), v["errorName"].as_str()),
        (Some("Failed"), Some("RangeError"))
    );
    let (_, v) = dp(
        &s,
        &p,
        "POST",
        &format!("code/execute?api-version={LEGACY}&identifier=test"),
        Some(json!({"properties": {"code": "nope()"}})),
    )
    .await;
    assert_eq!(v["properties"]["status"], "Failure");
    assert!(
        v["properties"]["stderr"]
            .as_str()
            .unwrap()
            .contains("ReferenceError")
    );
    // Timeouts: a synchronous loop and a promise that never settles stop the cell, and the
    // session keeps its state.
    for code in ["while (true) {}", "await new Promise(() => {})"] {
        let t0 = Instant::now();
        let v = run(&s, &p, "test", json!({"code": code, "timeoutInSeconds": 1})).await;
        assert!(t0.elapsed() < Duration::from_secs(8), "{code}");
        assert_eq!(v["status"], "Failed", "{code}: {v}");
        assert_eq!(v["errorName"], "ExecutionTimeout");
        let v = js(&s, &p, "test", "x").await;
        assert_eq!(
            v["result"]["executionResult"], "1",
            "state kept after {code}"
        );
    }
    // A loop after an await blocks the event loop: the sandbox is killed and the identifier
    // gets a fresh session.
    let v = run(
        &s,
        &p,
        "test",
        json!({"code": "await null; while (true) {}", "timeoutInSeconds": 1}),
    )
    .await;
    assert_eq!(v["status"], "Failed", "{v}");
    assert_eq!(v["errorName"], "ExecutionTimeout");
    let v = js(&s, &p, "test", "typeof x").await;
    assert_eq!(v["result"]["executionResult"], "'undefined'", "{v}");
    // Preinstalled packages.
    let v = js(
        &s,
        &p,
        "pkgs",
        "const _ = require('lodash'); [_.chunk([1, 2, 3], 2), typeof require('axios').get, require('dayjs')(0).year() > 1960]",
    )
    .await;
    assert_eq!(
        v["result"]["executionResult"], "[ [ [ 1, 2 ], [ 3 ] ], 'function', true ]",
        "{v}"
    );
    // Files both ways.
    upload(&s, &p, "pkgs", "in.json", br#"{"n": 41}"#).await;
    let v = js(
        &s,
        &p,
        "pkgs",
        "const fs = require('fs'); const n = JSON.parse(fs.readFileSync('/mnt/data/in.json', 'utf8')).n; fs.writeFileSync('out.txt', String(n + 1)); n",
    )
    .await;
    assert_eq!(v["result"]["executionResult"], "41", "{v}");
    assert_eq!(
        download(&s, &p, "pkgs", "out.txt").await,
        (200, b"42".to_vec())
    );
    // Output caps.
    let v = js(&s, &p, "pkgs", "console.log('a'.repeat(100000))").await;
    assert_eq!(out(&v).len(), 4096);
    // Wrong-type requests.
    let (st, v) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=pkgs"),
        Some(json!({"shellCommand": "ls"})),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("NodeLTS"));
    // Metadata: node and the pinned packages.
    let (st, v) = dp(
        &s,
        &p,
        "GET",
        &format!("metadata?api-version={CURRENT}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["runtimes"][0]["name"], "node");
    let version = v["runtimes"][0]["version"].as_str().unwrap();
    assert!(version.chars().next().unwrap().is_ascii_digit(), "{v}");
    let pkgs = v["preInstalledPackages"].as_array().unwrap();
    assert!(
        pkgs.iter()
            .any(|p| p["name"] == "lodash" && p["version"] == "4.18.1"),
        "{v}"
    );
}

/// A TCP listener on the host's loopback, answering anything.
async fn host_listener() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = c
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nreached")
                .await;
        }
    });
    port
}

#[tokio::test]
async fn hostile_shell_and_node_sessions_are_contained() {
    node_runtime();
    let s = Server::start().await;
    let shp = make_pool(&s, "hostile", "hsh", shell_pool()).await;
    let jsp = make_pool(&s, "hostile", "hjs", node_pool()).await;
    let port = host_listener().await;
    // A session's files, /tmp and variables do not outlive it: the identifier's next session,
    // and every other session, starts clean.
    let v = sh(
        &s,
        &shp,
        "sess-a",
        "echo secret > /mnt/data/mine; echo t > /tmp/mine; export LEAK=1; echo $$",
    )
    .await;
    assert_eq!(v["status"], "0");
    let clean = "ls -A /mnt/data; test -e /tmp/mine && echo tmp-leak; echo \"[$LEAK]\"";
    let v = sh(
        &s,
        &shp,
        "sess-b",
        &format!("{clean}; ls /proc/[0-9]*/root/mnt/data 2>/dev/null | grep -c mine"),
    )
    .await;
    assert_eq!(out(&v), "[]\n0\n", "{v}");
    let (st, _) = dp(
        &s,
        &shp,
        "DELETE",
        &format!("session?api-version={CURRENT}&identifier=sess-a"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let v = sh(&s, &shp, "sess-a", clean).await;
    assert_eq!(out(&v), "[]\n", "{v}");
    let v = js(
        &s,
        &jsp,
        "sess-a",
        "globalThis.leak = 1; require('fs').writeFileSync('/mnt/data/mine', 'x'); 0",
    )
    .await;
    assert_eq!(v["status"], "Succeeded");
    let (st, _) = dp(
        &s,
        &jsp,
        "DELETE",
        &format!("session?api-version={CURRENT}&identifier=sess-a"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let v = js(
        &s,
        &jsp,
        "sess-a",
        "[typeof leak, require('fs').readdirSync('/mnt/data').length]",
    )
    .await;
    assert_eq!(v["result"]["executionResult"], "[ 'undefined', 0 ]", "{v}");
    // Other sessions' processes are invisible (own pid namespace), and only this one's uid runs.
    let v = sh(&s, &shp, "sess-b", "ls /proc | grep -cE '^[0-9]+$'").await;
    let n: u32 = out(&v).trim().parse().unwrap();
    assert!(n <= 6, "only the session's own processes: {v}");
    // The host's listeners (a test listener, the server itself) are unreachable without egress.
    let hp = s.http_port;
    let v = sh(
        &s,
        &shp,
        "sess-b",
        &format!("curl -s -m 3 http://127.0.0.1:{port}/; echo rc=$?; curl -s -m 3 http://127.0.0.1:{hp}/; echo rc=$?"),
    )
    .await;
    assert!(!out(&v).contains("reached"), "{v}");
    assert_eq!(
        out(&v).matches("rc=7").count(),
        2,
        "connection refused both times: {v}"
    );
    let v = js(
        &s,
        &jsp,
        "sess-b",
        &format!("await fetch('http://127.0.0.1:{port}/').then(r => r.text(), e => 'blocked: ' + (e.cause && e.cause.code))"),
    )
    .await;
    assert_eq!(
        v["result"]["executionResult"], "'blocked: ECONNREFUSED'",
        "{v}"
    );
    let v = js(
        &s,
        &jsp,
        "sess-b",
        "[require('os').networkInterfaces().lo !== undefined, Object.keys(require('os').networkInterfaces()).length]",
    )
    .await;
    assert_eq!(
        v["result"]["executionResult"], "[ true, 1 ]",
        "loopback only: {v}"
    );
    // Host files are not there.
    let dir = s.data_dir().display().to_string();
    let v = sh(
        &s,
        &shp,
        "sess-b",
        &format!("cat /etc/shadow; test -e {dir} && echo visible; id -u"),
    )
    .await;
    assert_eq!(out(&v), "65534\n", "{v}");
    let v = js(
        &s,
        &jsp,
        "sess-b",
        &format!("require('fs').existsSync({dir:?})"),
    )
    .await;
    assert_eq!(v["result"]["executionResult"], "false");
    // A fork bomb is contained by the pids limit; the session (or its replacement) answers.
    let v = run(
        &s,
        &shp,
        "bomber",
        json!({"shellCommand": "b() { b | b & }; b", "timeoutInSeconds": 5}),
    )
    .await;
    let _ = v;
    let v = sh(&s, &shp, "bomber", "echo alive").await;
    assert_eq!(out(&v), "alive\n", "{v}");
    let v = run(
        &s,
        &jsp,
        "bomber",
        json!({"code": "const cp = require('child_process'); let n = 0; try { for (;;) { cp.spawn('sleep', ['60']); n++ } } catch (e) {} n", "timeoutInSeconds": 5}),
    )
    .await;
    let _ = v;
    let v = js(&s, &jsp, "bomber", "'alive'").await;
    assert_eq!(v["result"]["executionResult"], "'alive'", "{v}");
    // Killing the interpreter: the next request gets a fresh session.
    let v = js(&s, &jsp, "killer", "process.kill(process.pid, 'SIGKILL')").await;
    assert_eq!(v["status"], "Failed");
    let v = js(&s, &jsp, "killer", "1 + 1").await;
    assert_eq!(v["result"]["executionResult"], "2");
    // A shell that tries to kill the agent it runs under only ends its own session.
    let v = sh(&s, &shp, "killer", "kill -9 $PPID; sleep 1; echo after").await;
    assert_ne!(out(&v), "after\n", "{v}");
    let v = sh(&s, &shp, "killer", "echo fresh").await;
    assert_eq!(out(&v), "fresh\n");
}

#[tokio::test]
async fn a_pool_replaced_with_another_type_starts_over() {
    node_runtime();
    let s = Server::start().await;
    let p = make_pool(&s, "retype", "flip", shell_pool()).await;
    let v = sh(
        &s,
        &p,
        "keeper",
        "echo from-shell > /mnt/data/left.txt; echo ok",
    )
    .await;
    assert_eq!(out(&v), "ok\n");
    // A PUT (not a PATCH) may change the type: the pool's sessions end with their interpreter.
    let admin = s.admin_token().await;
    let id = format!(
        "/subscriptions/{}/resourceGroups/retype/providers/Microsoft.App/sessionPools/flip",
        s.sub()
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{id}?api-version=2025-07-01"),
            Some(json!({"location": "local", "properties": node_pool()})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["properties"]["containerType"], "NodeLTS");
    let v = js(
        &s,
        &p,
        "keeper",
        "[process.version.startsWith('v'), require('fs').existsSync('/mnt/data/left.txt')]",
    )
    .await;
    assert_eq!(v["result"]["executionResult"], "[ true, false ]", "{v}");
    let (st, _) = dp(
        &s,
        &p,
        "POST",
        &format!("executions?api-version={NEWEST}&identifier=keeper"),
        Some(json!({"shellCommand": "ls"})),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn pool_identities_reach_shell_and_node_sessions() {
    node_runtime();
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "typesmi").await;
    let uami = format!(
        "/subscriptions/{}/resourceGroups/typesmi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/worker",
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
    let oid = claims(&admin)["oid"].as_str().unwrap().to_string();
    let token = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    let mut pools = vec![];
    for (name, t) in [("mish", "Shell"), ("mijs", "NodeLTS")] {
        let id = format!(
            "/subscriptions/{}/resourceGroups/typesmi/providers/Microsoft.App/sessionPools/{name}",
            s.sub()
        );
        let (st, v) = s
            .call(
                &admin,
                "PUT",
                &format!("{id}?api-version=2025-07-01"),
                Some(json!({"location": "local",
                    "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami.clone(): {}}},
                    "properties": {"containerType": t,
                        "managedIdentitySettings": [{"identity": uami, "lifecycle": "Main"}]}})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        s.assign(&admin, &id, EXECUTOR, &oid).await;
        pools.push(Pool {
            endpoint: v["properties"]["poolManagementEndpoint"]
                .as_str()
                .unwrap()
                .to_string(),
            token: token.clone(),
        });
    }
    let v = sh(
        &s,
        &pools[0],
        "mi-user",
        "curl -sf -H \"X-IDENTITY-HEADER: $IDENTITY_HEADER\" \"$IDENTITY_ENDPOINT?api-version=2019-08-01&resource=https://vault.azure.net\"",
    )
    .await;
    assert_eq!(v["status"], "0", "{v}");
    let tok: Value = serde_json::from_str(out(&v)).unwrap();
    let c = claims(tok["access_token"].as_str().unwrap());
    assert_eq!(
        (c["oid"].as_str(), c["aud"].as_str()),
        (Some(principal.as_str()), Some("https://vault.azure.net"))
    );
    let v = js(
        &s,
        &pools[1],
        "mi-user",
        "const r = await fetch(process.env.IDENTITY_ENDPOINT + '?api-version=2019-08-01&resource=https://vault.azure.net', {headers: {'X-IDENTITY-HEADER': process.env.IDENTITY_HEADER}});\n(await r.json()).access_token",
    )
    .await;
    assert_eq!(v["status"], "Succeeded", "{v}");
    let tok = v["result"]["executionResult"]
        .as_str()
        .unwrap()
        .trim_matches('\'')
        .to_string();
    assert_eq!(claims(&tok)["oid"], principal.as_str());
}
