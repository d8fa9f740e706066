//! Azure RBAC through the management API: inheritance, groups, deny assignments, custom
//! roles, revocation taking effect on the next request, and ARM error bodies.

mod common;
use common::*;
use serde_json::json;

const API: &str = "api-version=2021-04-01";

#[tokio::test]
async fn reader_inherits_downward_and_revocation_is_immediate() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "rg1").await;
    s.create_rg(&admin, "rg2").await;
    let (app, sp, secret) = s.new_sp(&admin, "reader-app").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    let rg1 = format!("/subscriptions/{}/resourceGroups/rg1", s.sub());
    let rg2 = format!("/subscriptions/{}/resourceGroups/rg2", s.sub());
    // No assignment yet: 403 in ARM's shape.
    let (st, v) = s.call(&tok, "GET", &format!("{rg1}?{API}"), None).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "AuthorizationFailed");
    let ra = s.assign(&admin, &rg1, READER, &sp).await;
    assert_eq!(
        s.call(&tok, "GET", &format!("{rg1}?{API}"), None).await.0,
        200
    );
    // Inherited by a resource in the group.
    let (st, _) = s
        .call(
            &admin,
            "PUT",
            &format!("{rg1}/providers/Contoso.Widgets/widgets/w1?{API}"),
            Some(json!({"location": "local", "properties": {"size": 3}})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, w) = s
        .call(
            &tok,
            "GET",
            &format!("{rg1}/providers/Contoso.Widgets/widgets/w1?{API}"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(w["properties"]["size"], 3);
    // Not the sibling group; and Reader cannot write.
    assert_eq!(
        s.call(&tok, "GET", &format!("{rg2}?{API}"), None).await.0,
        403
    );
    assert_eq!(
        s.call(
            &tok,
            "PUT",
            &format!("{rg1}/providers/Contoso.Widgets/widgets/w2?{API}"),
            Some(json!({"location": "local"}))
        )
        .await
        .0,
        403
    );
    // Revoke: the very next request is refused.
    let id = ra["id"].as_str().unwrap();
    assert_eq!(
        s.call(
            &admin,
            "DELETE",
            &format!("{id}?api-version=2022-04-01"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call(&tok, "GET", &format!("{rg1}?{API}"), None).await.0,
        403
    );
}

#[tokio::test]
async fn nested_groups_management_groups_and_deny() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let (app, sp, secret) = s.new_sp(&admin, "member-app").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    let (_, outer) = s
        .call(
            &admin,
            "POST",
            "/v1.0/groups",
            Some(json!({"displayName": "outer"})),
        )
        .await;
    let (_, inner) = s
        .call(
            &admin,
            "POST",
            "/v1.0/groups",
            Some(json!({"displayName": "inner"})),
        )
        .await;
    let (outer, inner) = (
        outer["id"].as_str().unwrap().to_string(),
        inner["id"].as_str().unwrap().to_string(),
    );
    let add = |g: String, m: String| {
        let s = &s;
        let admin = admin.clone();
        async move {
            s.call(&admin, "POST", &format!("/v1.0/groups/{g}/members/$ref"), Some(json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{m}")}))).await.0
        }
    };
    assert_eq!(add(outer.clone(), inner.clone()).await, 204);
    assert_eq!(add(inner.clone(), sp.clone()).await, 204);
    // A cycle must not hang anything.
    assert_eq!(add(inner.clone(), outer.clone()).await, 204);
    // Management group above the subscription; Contributor for the outer group there.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            "/providers/Microsoft.Management/managementGroups/mg1?api-version=2021-04-01",
            Some(json!({"properties": {"displayName": "MG 1"}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = s.call(&admin, "PUT", &format!("/providers/Microsoft.Management/managementGroups/mg1/subscriptions/{}?api-version=2021-04-01", s.sub()), None).await;
    assert_eq!(st, 200);
    s.assign(
        &admin,
        "/providers/Microsoft.Management/managementGroups/mg1",
        CONTRIBUTOR,
        &outer,
    )
    .await;
    let rg = format!("/subscriptions/{}/resourceGroups/team?{API}", s.sub());
    let (st, v) = s
        .call(&tok, "PUT", &rg, Some(json!({"location": "local"})))
        .await;
    assert_eq!(
        st, 201,
        "transitive group membership through a management group: {v}"
    );
    // Contributor cannot grant access.
    let scope = format!("/subscriptions/{}/resourceGroups/team", s.sub());
    let (st, _) = s
        .call(&tok, "PUT", &format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01", uuid::Uuid::new_v4()), Some(json!({"properties": {"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{OWNER}"), "principalId": sp}})))
        .await;
    assert_eq!(st, 403);
    // A deny assignment wins over the role assignment.
    let deny = uuid::Uuid::new_v4();
    let (st, v) = s
        .call(&admin, "PUT", &format!("{scope}/providers/Microsoft.Authorization/denyAssignments/{deny}?api-version=2022-04-01"), Some(json!({"properties": {"denyAssignmentName": "no widgets", "permissions": [{"actions": ["Contoso.Widgets/*/write"]}], "principals": [{"id": "00000000-0000-0000-0000-000000000000", "type": "SystemDefined"}], "excludePrincipals": [{"id": s.call(&admin, "GET", &format!("/v1.0/servicePrincipals?$filter=appId eq '{}'", s.admin_id()), None).await.1["value"][0]["id"], "type": "ServicePrincipal"}]}})))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = s
        .call(
            &tok,
            "PUT",
            &format!("{scope}/providers/Contoso.Widgets/widgets/x?{API}"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 403);
    // Excluded principal is not denied.
    let (st, _) = s
        .call(
            &admin,
            "PUT",
            &format!("{scope}/providers/Contoso.Widgets/widgets/x?{API}"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201);
    // Other actions are still allowed for the member.
    assert_eq!(
        s.call(
            &tok,
            "GET",
            &format!("{scope}/providers/Contoso.Widgets/widgets/x?{API}"),
            None
        )
        .await
        .0,
        200
    );
    // Remove from the group: access is gone at once.
    let (st, _) = s
        .call(
            &admin,
            "DELETE",
            &format!("/v1.0/groups/{inner}/members/{sp}/$ref"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        s.call(&tok, "GET", &format!("{scope}?{API}"), None).await.0,
        403
    );
}

#[tokio::test]
async fn custom_roles_and_assignment_errors() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "rg").await;
    let sub = format!("/subscriptions/{}", s.sub());
    let role_id = uuid::Uuid::new_v4();
    let (st, v) = s
        .call(&admin, "PUT", &format!("{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}?api-version=2022-04-01"), Some(json!({"properties": {"roleName": "Widget Reader", "description": "reads widgets", "type": "CustomRole", "permissions": [{"actions": ["contoso.widgets/*/READ"], "notActions": [], "dataActions": [], "notDataActions": []}], "assignableScopes": [sub]}})))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, list) = s.call(&admin, "GET", &format!("{sub}/providers/Microsoft.Authorization/roleDefinitions?api-version=2022-04-01&$filter=roleName%20eq%20'Widget%20Reader'"), None).await;
    assert_eq!(st, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (app, sp, secret) = s.new_sp(&admin, "w").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    s.call(
        &admin,
        "PUT",
        &format!("{sub}/resourceGroups/rg/providers/Contoso.Widgets/widgets/a?{API}"),
        Some(json!({"location": "local"})),
    )
    .await;
    s.assign(&admin, &sub, &role_id.to_string(), &sp).await;
    assert_eq!(
        s.call(
            &tok,
            "GET",
            &format!("{sub}/resourceGroups/rg/providers/Contoso.Widgets/widgets/a?{API}"),
            None
        )
        .await
        .0,
        200,
        "case-insensitive wildcard match"
    );
    assert_eq!(
        s.call(&tok, "GET", &format!("{sub}/resourceGroups/rg?{API}"), None)
            .await
            .0,
        403
    );
    // Errors.
    let base = format!("{sub}/providers/Microsoft.Authorization/roleAssignments");
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{base}/not-a-guid?api-version=2022-04-01"),
            Some(json!({"properties": {}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("InvalidRoleAssignmentId"))
    );
    let (st, v) = s.call(&admin, "PUT", &format!("{base}/{}?api-version=2022-04-01", uuid::Uuid::new_v4()), Some(json!({"properties": {"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{}", uuid::Uuid::new_v4()), "principalId": sp}}))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("RoleDefinitionDoesNotExist"))
    );
    let (st, v) = s.call(&admin, "PUT", &format!("{base}/{}?api-version=2022-04-01", uuid::Uuid::new_v4()), Some(json!({"properties": {"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}"), "principalId": uuid::Uuid::new_v4()}}))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("PrincipalNotFound"))
    );
    let (st, v) = s.call(&admin, "PUT", &format!("{base}/{}?api-version=2022-04-01", uuid::Uuid::new_v4()), Some(json!({"properties": {"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{role_id}"), "principalId": sp}}))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("RoleAssignmentExists"))
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{base}/{}?api-version=2022-04-01", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("InvalidRequestContent"))
    );
    let (st, v) = s
        .call(&admin, "GET", &format!("{sub}/resourceGroups/rg"), None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("{sub}/resourceGroups/nope?{API}"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("ResourceGroupNotFound"))
    );
    // The role in use cannot be deleted.
    let (st, v) = s.call(&admin, "DELETE", &format!("{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}?api-version=2022-04-01"), None).await;
    assert_eq!(st, 409, "{v}");
    // Listing with a principal filter.
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("{base}?api-version=2022-04-01&$filter=principalId%20eq%20'{sp}'"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
}
