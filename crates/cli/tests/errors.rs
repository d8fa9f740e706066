//! Malformed input of every kind gets a 4xx in the right error shape, never a 5xx.

mod common;
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

#[tokio::test]
async fn malformed_requests_get_4xx() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let sub = s.sub();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "PUT",
            format!("/subscriptions/{sub}/resourcegroups/ok?api-version=2021-04-01"),
            Some("{not json"),
        ),
        (
            "PUT",
            format!("/subscriptions/{sub}/resourcegroups/ok?api-version=2021-04-01"),
            Some("[1,2]"),
        ),
        (
            "PUT",
            format!("/subscriptions/{sub}/resourcegroups/ok?api-version=2021-04-01"),
            Some("{\"location\": 5}"),
        ),
        (
            "PUT",
            format!("/subscriptions/{sub}/resourcegroups/bad%20name?api-version=2021-04-01"),
            Some("{\"location\":\"x\"}"),
        ),
        (
            "PUT",
            format!("/subscriptions/{sub}/resourcegroups/ok.?api-version=2021-04-01"),
            Some("{\"location\":\"x\"}"),
        ),
        (
            "GET",
            format!("/subscriptions/{sub}/resourcegroups/ok?api-version=yesterday"),
            None,
        ),
        (
            "GET",
            format!("/subscriptions/{sub}/resourcegroups/a/providers/X.Y?api-version=2021-04-01"),
            None,
        ),
        (
            "GET",
            "/subscriptions/does-not-exist?api-version=2021-04-01".into(),
            None,
        ),
        (
            "GET",
            format!("/subscriptions/{sub}//resourcegroups?api-version=2021-04-01"),
            None,
        ),
        (
            "PUT",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                uuid::Uuid::new_v4()
            ),
            Some("{\"properties\":{\"roleDefinitionId\":\"garbage\",\"principalId\":\"x\"}}"),
        ),
        (
            "PUT",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{}?api-version=2022-04-01",
                uuid::Uuid::new_v4()
            ),
            Some(
                "{\"properties\":{\"roleName\":\"\",\"permissions\":\"x\",\"assignableScopes\":[]}}",
            ),
        ),
        (
            "GET",
            format!(
                "/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=drop%20table"
            ),
            None,
        ),
        (
            "POST",
            "/v1.0/applications".into(),
            Some("{\"displayName\": \"\"}"),
        ),
        (
            "POST",
            "/v1.0/applications".into(),
            Some("{\"displayName\": \"x\", \"web\": {\"redirectUris\": [\"not a uri\"]}}"),
        ),
        (
            "POST",
            "/v1.0/users".into(),
            Some(
                "{\"userPrincipalName\": \"nobody\", \"passwordProfile\": {\"password\": \"short\"}}",
            ),
        ),
        ("GET", "/nothing/here".into(), None),
        ("PUT", "/v1.0/users".into(), Some("{}")),
        ("DELETE", "/healthz".into(), None),
    ];
    for (m, path, body) in cases {
        let mut r = s
            .http
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                s.url(&path),
            )
            .bearer_auth(&admin);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = r.send().await.unwrap();
        let st = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        assert!((400..500).contains(&st), "{m} {path} -> {st} {v}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{m} {path}: not ARM-shaped: {v}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_in_arm_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let admin = s.admin_token().await;
    // Announce a 2 MiB body (the limit is 1 MiB) on the plain listener and read the answer,
    // which comes before the body is sent.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.http_port))
        .await
        .unwrap();
    let req = format!(
        "PUT /subscriptions/{}/resourcegroups/big?api-version=2021-04-01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{",
        s.sub(),
        2 << 20
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("\"code\":\"RequestEntityTooLarge\""),
        "{text}"
    );
}

#[tokio::test]
async fn fuzzed_token_requests_never_5xx() {
    let s = Server::start().await;
    let url = s.url(&format!("/{}/oauth2/v2.0/token", s.tenant()));
    let http = s.http.clone();
    let bodies: Vec<Vec<u8>> = {
        let mut runner = TestRunner::new(Config {
            cases: 150,
            ..Config::default()
        });
        let strat = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "(grant_type|client_id|client_secret|scope|resource|code|refresh_token|client_assertion|client_assertion_type)=[ -~]{0,80}(&(grant_type|client_id|scope|client_secret|client_assertion)=[ -~%]{0,60}){0,5}".prop_map(|s| s.into_bytes()),
        ];
        (0..150)
            .map(|_| strat.new_tree(&mut runner).unwrap().current())
            .collect()
    };
    for b in bodies {
        let r = http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert!(
            (400..500).contains(&st),
            "body {:?} -> {st}",
            String::from_utf8_lossy(&b)
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].is_string() && v["error_codes"].is_array(), "{v}");
    }
}

#[tokio::test]
async fn fuzzed_arm_paths_and_bodies_never_5xx() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let sub = s.sub();
    let mut runner = TestRunner::new(Config {
        cases: 120,
        ..Config::default()
    });
    let seg = "[A-Za-z0-9._()\\-]{1,12}";
    let strat = (
        prop_oneof![
            Just("GET"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH"),
            Just("POST")
        ],
        proptest::collection::vec(
            prop_oneof![
                Just("resourceGroups".to_string()),
                Just("providers".to_string()),
                Just("Microsoft.Authorization".to_string()),
                Just("roleAssignments".to_string()),
                seg.prop_map(|s| s)
            ],
            0..8,
        ),
        prop_oneof![
            Just(String::new()),
            Just("{}".to_string()),
            "\\{\"[a-z]{1,8}\": ?[\\[\\]{}0-9\"a-z]{0,20}\\}"
        ],
    );
    for _ in 0..120 {
        let (m, segs, body) = strat.new_tree(&mut runner).unwrap().current();
        let path = format!(
            "/subscriptions/{sub}/{}?api-version=2022-04-01",
            segs.join("/")
        );
        let r = s
            .http
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                s.url(&path),
            )
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        assert!(st < 500, "{m} {path} {body} -> {st}");
    }
}
