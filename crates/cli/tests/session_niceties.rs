//! Session niceties found when framework clients were tried, through the server's HTTP
//! interface with real sandboxes: percent-encoded multipart file names (RFC 7578 section 4.2,
//! and RFC 5987's `filename*`), multipart uploads labelled `application/json`, and a
//! synchronous execution whose client disconnected being interrupted instead of holding the
//! session until its timeout.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LEGACY: &str = "2024-02-02-preview";
const NEWEST: &str = "2025-10-02-preview";

/// POSTs a hand-made multipart body with this Content-Type.
async fn raw_upload(
    s: &Server,
    endpoint: &str,
    token: &str,
    path_and_query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{endpoint}/{path_and_query}"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
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

fn multipart(boundary: &str, disposition: &str, data: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/csv\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

async fn exec(s: &Server, endpoint: &str, token: &str, id: &str, code: &str) -> Value {
    let r = s
        .http
        .post(format!(
            "{endpoint}/code/execute?api-version={LEGACY}&identifier={id}"
        ))
        .bearer_auth(token)
        .json(&json!({"properties": {"codeInputType": "inline", "executionType": "synchronous", "code": code}}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 200, "{v}");
    v["properties"].clone()
}

#[tokio::test]
async fn multipart_names_are_decoded_and_json_labelled_multipart_is_accepted() {
    let s = Server::start().await;
    let (ep, tok) = s.executor_pool("nice", "files").await;
    let files = format!("files?api-version={NEWEST}&identifier=uploader");
    let legacy = format!("files/upload?api-version={LEGACY}&identifier=uploader");

    // RFC 7578 4.2: a percent-encoded file name is stored decoded.
    let body = multipart(
        "XyZ123",
        r#"form-data; name="file"; filename="my%20file.csv""#,
        b"a,b\n1,2\n",
    );
    let (st, v) = raw_upload(
        &s,
        &ep,
        &tok,
        &files,
        "multipart/form-data; boundary=XyZ123",
        body,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "my file.csv");

    // RFC 5987's filename* wins over the plain fallback.
    let body = multipart(
        "b0undary",
        r#"form-data; name="file"; filename="resume.txt"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"#,
        b"cv",
    );
    let (st, v) = raw_upload(
        &s,
        &ep,
        &tok,
        &legacy,
        "multipart/form-data; boundary=b0undary",
        body,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"][0]["properties"]["filename"], "résumé.txt");

    // A multipart body labelled application/json: the boundary comes from the body.
    let body = multipart(
        "----formdata-json-7d1",
        r#"form-data; name="file"; filename="labelled.csv""#,
        b"x\n1\n",
    );
    let (st, v) = raw_upload(&s, &ep, &tok, &files, "application/json", body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "labelled.csv");
    assert_eq!(v["sizeInBytes"], 4);

    // Code sees all three under their decoded names.
    let r = exec(
        &s,
        &ep,
        &tok,
        "uploader",
        "import os\nsorted(os.listdir('/mnt/data'))",
    )
    .await;
    assert_eq!(
        r["result"], "['labelled.csv', 'my file.csv', 'résumé.txt']",
        "{r}"
    );
    let r = exec(
        &s,
        &ep,
        &tok,
        "uploader",
        "open('/mnt/data/my file.csv').read()",
    )
    .await;
    assert_eq!(r["result"], "'a,b\\n1,2\\n'");

    // JSON that is not multipart is still refused as before, with Azure's error shape.
    let (st, v) = raw_upload(
        &s,
        &ep,
        &tok,
        &files,
        "application/json",
        br#"{"file": "nope"}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 415, "{v}");
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    // A decoded name that would leave /mnt/data is refused, not written.
    let body = multipart(
        "b",
        r#"form-data; name="file"; filename="%2E%2E%2Fescape.txt""#,
        b"x",
    );
    let (st, v) = raw_upload(
        &s,
        &ep,
        &tok,
        &files,
        "multipart/form-data; boundary=b",
        body,
    )
    .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn a_disconnected_clients_execution_is_interrupted() {
    let s = Server::start().await;
    let (ep, tok) = s.executor_pool("nice", "drop").await;
    let r = exec(&s, &ep, &tok, "sleepy", "x = 41").await;
    assert_eq!(r["status"], "Success", "{r}");

    // A client that gives up after 1 s and drops its connection.
    let pem = std::fs::read(s.dir.path().join("ca.pem")).unwrap();
    let impatient = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = impatient
        .post(format!(
            "{ep}/code/execute?api-version={LEGACY}&identifier=sleepy"
        ))
        .bearer_auth(&tok)
        .json(
            &json!({"properties": {"codeInputType": "inline", "executionType": "synchronous",
                       "code": "import time\ntime.sleep(60)"}}),
        )
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()), "the client timed out");
    // The same session answers the next execution well before the sleep would have ended,
    // with its state intact.
    let r = exec(&s, &ep, &tok, "sleepy", "x + 1").await;
    let waited = t0.elapsed();
    eprintln!(
        "the next execution answered {} ms after the first began",
        waited.as_millis()
    );
    assert_eq!(r["result"], 42, "{r}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}
