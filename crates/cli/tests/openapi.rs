//! The OpenAPI document describes every operation, and every documented operation exists:
//! calling it never falls through to the router's "no API matches" fallback.

mod common;
use common::*;

#[tokio::test]
async fn every_documented_operation_is_served() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let doc: serde_json::Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 40);
    let sub = s.sub();
    let mut checked = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{tenant}", &s.tenant())
                .replace("{subscriptionId}", &sub)
                .replace("{resourceGroupName}", "rg")
                .replace("{namespace}", "Contoso.Widgets")
                .replace("{type}", "widgets")
                .replace("{name}", "w1")
                .replace("{scope}", &format!("/subscriptions/{sub}"))
                .replace("//", "/")
                .replace("{roleAssignmentId}", "00000000-0000-0000-0000-0000000000aa")
                .replace("{roleDefinitionId}", "00000000-0000-0000-0000-0000000000bb")
                .replace("{denyAssignmentId}", "00000000-0000-0000-0000-0000000000cc")
                .replace("{groupId}", "mg-x")
                .replace("{aliasName}", "alias-x")
                .replace("{id}", "00000000-0000-0000-0000-0000000000dd")
                .replace("{memberId}", "00000000-0000-0000-0000-0000000000ee")
                .replace("{fileName}", "f.txt")
                .replace("{executionId}", "e1");
            let sep = if concrete.contains('?') { '&' } else { '?' };
            let url = s.url(&format!("{concrete}{sep}api-version=2022-04-01"));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s
                .http
                .request(m, &url)
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(st < 500, "{method} {path} -> {st} {body}");
            assert!(
                !body.contains("No API matches"),
                "{method} {path} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked > 60);
}
