//! App roles: an API application defines roles, a client is granted one, and tokens for that
//! API carry it in the `roles` claim (v2-shaped tokens for registered applications).

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn roles_claim_for_app_resources() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let (st, api) = s
        .call(
            &admin,
            "POST",
            "/v1.0/applications",
            Some(json!({"displayName": "tasks-api", "identifierUris": ["api://tasks"]})),
        )
        .await;
    assert_eq!(st, 201);
    let role_id = uuid::Uuid::new_v4().to_string();
    let (st, v) = s
        .call(&admin, "PATCH", &format!("/v1.0/applications/{}", api["id"].as_str().unwrap()), Some(json!({"appRoles": [{"id": role_id, "value": "Tasks.Read", "displayName": "Read tasks", "allowedMemberTypes": ["Application"]}]})))
        .await;
    assert_eq!(st, 204, "{v}");
    let (_, sps) = s
        .call(
            &admin,
            "GET",
            &format!(
                "/v1.0/servicePrincipals?$filter=appId eq '{}'",
                api["appId"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let api_sp = sps["value"][0]["id"].as_str().unwrap().to_string();
    let (client, client_sp, secret) = s.new_sp(&admin, "tasks-client").await;
    // Before the grant: a token, but no roles.
    let t = s.client_token(&client, &secret, "api://tasks").await;
    let c = claims(&t);
    assert_eq!(c["aud"], "api://tasks");
    assert_eq!(c["ver"], "2.0");
    assert_eq!(c["azp"], client);
    assert!(c.get("roles").is_none());
    let (st, v) = s
        .call(
            &admin,
            "POST",
            &format!("/v1.0/servicePrincipals/{api_sp}/appRoleAssignedTo"),
            Some(json!({"principalId": client_sp, "resourceId": api_sp, "appRoleId": role_id})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s.client_token(&client, &secret, "api://tasks").await;
    assert_eq!(claims(&t)["roles"], json!(["Tasks.Read"]));
    // Errors: unknown role, duplicate, user-only role for an app.
    let (st, _) = s
        .call(
            &admin,
            "POST",
            &format!("/v1.0/servicePrincipals/{api_sp}/appRoleAssignedTo"),
            Some(json!({"principalId": client_sp, "appRoleId": uuid::Uuid::new_v4()})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .call(
            &admin,
            "POST",
            &format!("/v1.0/servicePrincipals/{api_sp}/appRoleAssignedTo"),
            Some(json!({"principalId": client_sp, "appRoleId": role_id})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .call(
            &admin,
            "PATCH",
            &format!("/v1.0/applications/{}", api["id"].as_str().unwrap()),
            Some(json!({"appRoles": [{"id": "nope", "value": "x"}]})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, list) = s
        .call(
            &admin,
            "GET",
            &format!("/v1.0/servicePrincipals/{api_sp}/appRoleAssignedTo"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
}
