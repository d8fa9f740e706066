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
    // The credential manager's operations are documented: the ARM resources under a service
    // instance, the key ring, the gateway and the consent pages.
    let svc = "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}/providers/Microsoft.ApiManagement/service/{name}";
    let prov = format!("{svc}/authorizationProviders/{{authorizationProviderId}}");
    let conn = format!("{prov}/authorizations/{{authorizationId}}");
    let pol = format!("{conn}/accessPolicies/{{authorizationAccessPolicyId}}");
    let gw =
        "/gateway/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/service/{name}";
    let mut expected: Vec<(String, &str)> = vec![];
    for (item, list) in [
        (prov.clone(), format!("{svc}/authorizationProviders")),
        (conn.clone(), format!("{prov}/authorizations")),
        (pol.clone(), format!("{conn}/accessPolicies")),
        (format!("{svc}/apis/{{apiId}}"), format!("{svc}/apis")),
    ] {
        for m in ["get", "put", "delete"] {
            expected.push((item.clone(), m));
        }
        expected.push((list, "get"));
    }
    expected.extend([
        (format!("{conn}/getLoginLinks"), "post"),
        (format!("{conn}/confirmConsentCode"), "post"),
        ("/providers/Cloister.Credentials/keys".to_string(), "get"),
        (
            "/providers/Cloister.Credentials/keys/rotate".to_string(),
            "post",
        ),
        (format!("{gw}/authorizationContext"), "post"),
        (format!("{gw}/{{apiPath}}"), "get"),
        ("/credential-manager/login".to_string(), "get"),
        ("/credential-manager/login".to_string(), "post"),
        (
            "/credential-manager/redirect/{subscriptionId}/{resourceGroupName}/{name}".to_string(),
            "get",
        ),
    ]);
    for (p, m) in &expected {
        assert!(
            doc["paths"][p.as_str()][*m].is_object(),
            "{m} {p} is not documented"
        );
    }
    let sub = s.sub();
    // A real service instance behind the credential-manager paths, so that their calls reach
    // the handlers (and their validation) rather than stopping at "no such instance".
    s.create_rg(&admin, "rg").await;
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.ApiManagement/service/w1?api-version=2024-05-01"),
            Some(serde_json::json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let mut credman = 0;
    let mut checked = 0;
    // The credential manager's operations first, while the instance (and its group) exist.
    let mut ops: Vec<(&String, &String)> = paths
        .iter()
        .flat_map(|(p, o)| o.as_object().unwrap().keys().map(move |m| (p, m)))
        .collect();
    ops.sort_by_key(|(p, _)| {
        !(p.contains("Microsoft.ApiManagement") || p.starts_with("/gateway/"))
    });
    for (path, method) in ops {
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
            .replace("{executionId}", "e1")
            .replace("{authorizationProviderId}", "p1")
            .replace("{authorizationId}", "c1")
            .replace("{authorizationAccessPolicyId}", "a1")
            .replace("{apiId}", "api1")
            .replace("{apiPath}", "api1/x");
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
        if expected.iter().any(|(p, m)| p == path && m == method) {
            credman += 1;
        }
    }
    assert!(checked > 60);
    assert_eq!(
        credman,
        expected.len(),
        "every credential-manager operation was called"
    );
}
