//! RBAC hardening (issue 8): rewriting a custom role must not escalate privilege, objects
//! of another scope are invisible through this scope's URL, and concurrent role-assignment
//! writers and revokers always get a clean answer that matches what was stored.

mod common;
use common::*;
use serde_json::{Value, json};

const API: &str = "api-version=2022-04-01";

fn role_body(name: &str, actions: &[&str], scopes: &[&str]) -> Value {
    json!({"properties": {
        "roleName": name, "description": "", "type": "CustomRole",
        "permissions": [{"actions": actions, "notActions": [], "dataActions": [], "notDataActions": []}],
        "assignableScopes": scopes,
    }})
}

fn role_url(scope: &str, id: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{id}?{API}")
}

fn ra_url(scope: &str, id: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{id}?{API}")
}

fn assign_body(role: &str, principal: &str) -> Value {
    json!({"properties": {
        "roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{role}"),
        "principalId": principal,
    }})
}

/// The reported attack: an Owner of one resource group rewrites a subscription-scoped custom
/// role that is assigned to it at the subscription, narrowing its assignable scopes to its
/// own group and widening its actions to `*`. Before the fix this answered 200 and the
/// principal could then create resource groups and role assignments at the subscription.
#[tokio::test]
async fn rewriting_a_custom_role_cannot_escalate() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let sub = format!("/subscriptions/{}", s.sub());
    let mine = format!("{sub}/resourceGroups/mine");
    s.create_rg(&admin, "mine").await;
    s.create_rg(&admin, "other").await;
    let (app, p, secret) = s.new_sp(&admin, "rg-owner").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    s.assign(&admin, &mine, OWNER, &p).await;

    let role = uuid::Uuid::new_v4().to_string();
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body("Sub Reader", &["*/read"], &[&sub])),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.assign(&admin, &sub, &role, &p).await;

    // The rewrite, through the group's URL and through the subscription's.
    for scope in [&mine, &sub] {
        let (st, v) = s
            .call(
                &tok,
                "PUT",
                &role_url(scope, &role),
                Some(role_body("Sub Reader", &["*"], &[&mine])),
            )
            .await;
        assert_eq!(st, 403, "rewrite through {scope}: {v}");
        assert_eq!(v["error"]["code"], "AuthorizationFailed", "{v}");
    }
    // Nothing changed: still a reader at the subscription, nothing more.
    let (st, v) = s.call(&admin, "GET", &role_url(&sub, &role), None).await;
    assert_eq!(st, 200);
    assert_eq!(
        v["properties"]["permissions"][0]["actions"],
        json!(["*/read"])
    );
    assert_eq!(v["properties"]["assignableScopes"], json!([sub]));
    let (st, _) = s
        .call(
            &tok,
            "PUT",
            &format!("{sub}/resourceGroups/new-one?api-version=2021-04-01"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 403, "cannot create resource groups");
    let (st, _) = s
        .call(
            &tok,
            "PUT",
            &ra_url(&sub, &uuid::Uuid::new_v4().to_string()),
            Some(assign_body(OWNER, &p)),
        )
        .await;
    assert_eq!(st, 403, "cannot assign at the subscription");
    // Deleting the subscription's role is refused too (it is assignable where p is not an
    // owner), and it is still there.
    let (st, v) = s.call(&tok, "DELETE", &role_url(&mine, &role), None).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        s.call(&admin, "GET", &role_url(&sub, &role), None).await.0,
        200
    );
}

/// Holding roleDefinitions/write at every assignable scope is not enough to widen a role
/// that is assigned: the caller must also be able to write role assignments where each
/// assignment of it is. Narrowing needs no more than roleDefinitions/write; an admin can
/// widen; and no rewrite may leave an assignment outside the assignable scopes.
#[tokio::test]
async fn widening_an_assigned_role_needs_authority_where_it_is_assigned() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let sub = format!("/subscriptions/{}", s.sub());
    let mine = format!("{sub}/resourceGroups/mine");
    s.create_rg(&admin, "mine").await;
    let (app, p, secret) = s.new_sp(&admin, "role-writer").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    s.assign(&admin, &mine, OWNER, &p).await;
    // A role author at the subscription who cannot grant access there.
    let author = uuid::Uuid::new_v4().to_string();
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&sub, &author),
            Some(role_body(
                "Role Author",
                &[
                    "Microsoft.Authorization/roleDefinitions/write",
                    "Microsoft.Authorization/roleDefinitions/read",
                ],
                &[&sub],
            )),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.assign(&admin, &sub, &author, &p).await;

    let role = uuid::Uuid::new_v4().to_string();
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body(
                "Widgets",
                &["Contoso.Widgets/*/read", "Contoso.Widgets/*/write"],
                &[&sub],
            )),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    s.assign(&admin, &sub, &role, &p).await;

    // Widening: refused, the assignment at the subscription is out of p's reach.
    let (st, v) = s
        .call(
            &tok,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body("Widgets", &["*"], &[&sub])),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "AuthorizationFailed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("roleAssignments/write"),
        "{v}"
    );
    // Narrowing: allowed with roleDefinitions/write alone.
    let (st, v) = s
        .call(
            &tok,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body("Widgets", &["Contoso.Widgets/*/read"], &[&sub])),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Shrinking the assignable scopes below an existing assignment: refused, even for the
    // admin.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body("Widgets", &["Contoso.Widgets/*/read"], &[&mine])),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "RoleDefinitionHasAssignments");
    // The admin may widen.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&sub, &role),
            Some(role_body("Widgets", &["Contoso.Widgets/*"], &[&sub])),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// A Reader of group A cannot read group B's role assignment, role definition or deny
/// assignment by id through group A's URL; an Owner of A cannot delete B's through A's URL.
#[tokio::test]
async fn objects_of_another_scope_are_not_found_through_this_scope() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let sub = format!("/subscriptions/{}", s.sub());
    let a = format!("{sub}/resourceGroups/a");
    let b = format!("{sub}/resourceGroups/b");
    s.create_rg(&admin, "a").await;
    s.create_rg(&admin, "b").await;
    let (app, reader, secret) = s.new_sp(&admin, "reader-a").await;
    let rtok = s.client_token(&app, &secret, &s.mgmt()).await;
    s.assign(&admin, &a, READER, &reader).await;
    let (app, owner, secret) = s.new_sp(&admin, "owner-a").await;
    let otok = s.client_token(&app, &secret, &s.mgmt()).await;
    s.assign(&admin, &a, OWNER, &owner).await;
    let (_, victim, _) = s.new_sp(&admin, "in-b").await;
    let theirs = s.assign(&admin, &b, READER, &victim).await;
    let theirs = theirs["name"].as_str().unwrap().to_string();

    // Role assignment by id.
    for tok in [&rtok, &otok] {
        let (st, v) = s.call(tok, "GET", &ra_url(&a, &theirs), None).await;
        assert_eq!(st, 404, "{v}");
        assert_eq!(v["error"]["code"], "RoleAssignmentNotFound");
    }
    let (st, v) = s.call(&otok, "DELETE", &ra_url(&a, &theirs), None).await;
    assert_eq!(st, 204, "answered as for an id that is not here: {v}");
    assert_eq!(
        s.call(&admin, "GET", &ra_url(&b, &theirs), None).await.0,
        200,
        "still there"
    );

    // Role definition assignable only in B.
    let role = uuid::Uuid::new_v4().to_string();
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &role_url(&b, &role),
            Some(role_body("B only", &["*/read"], &[&b])),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.call(&rtok, "GET", &role_url(&a, &role), None).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "RoleDefinitionDoesNotExist");
    let (st, v) = s.call(&otok, "DELETE", &role_url(&a, &role), None).await;
    assert_eq!(st, 204, "{v}");
    let (st, v) = s
        .call(
            &otok,
            "PUT",
            &role_url(&a, &role),
            Some(role_body("B only", &["*"], &[&a])),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    assert!(
        !v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resourceGroups/b"),
        "the refusal does not name the other scope: {v}"
    );
    assert_eq!(
        s.call(&admin, "GET", &role_url(&b, &role), None).await.0,
        200
    );
    // Built-in roles are visible everywhere.
    assert_eq!(
        s.call(&rtok, "GET", &role_url(&a, READER), None).await.0,
        200
    );

    // Deny assignment in B.
    let deny = uuid::Uuid::new_v4().to_string();
    let deny_url = |scope: &str| {
        format!("{scope}/providers/Microsoft.Authorization/denyAssignments/{deny}?{API}")
    };
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &deny_url(&b),
            Some(json!({"properties": {"denyAssignmentName": "b", "permissions": [{"actions": ["Contoso.Widgets/*/write"]}], "principals": [{"id": owner, "type": "ServicePrincipal"}]}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.call(&rtok, "GET", &deny_url(&a), None).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.call(&otok, "DELETE", &deny_url(&a), None).await;
    assert_eq!(st, 204, "{v}");
    // Owner of A cannot move B's deny assignment (which binds it) into A by reusing its id.
    let (st, v) = s
        .call(
            &otok,
            "PUT",
            &deny_url(&a),
            Some(json!({"properties": {"denyAssignmentName": "mine", "permissions": [{"actions": ["Nothing/x/read"]}], "principals": [{"id": owner, "type": "ServicePrincipal"}]}})),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = s.call(&admin, "GET", &deny_url(&b), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["properties"]["denyAssignmentName"], "b");
}

/// 8 tasks, each with its own principal, create and revoke Reader assignments on one group
/// at once. Before the fix most answers on SQLite were 500 ("database is locked"), many of
/// them for writes that had committed, and revoked principals kept their access. Now every
/// answer is 2xx, an acknowledged DELETE means the principal's next request is refused, and
/// the stored assignments are exactly the acknowledged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_assignment_writers_and_revokers() {
    const TASKS: usize = 8;
    const ROUNDS: usize = 12;
    let s = std::sync::Arc::new(Server::start().await);
    let admin = s.admin_token().await;
    let rg = format!("/subscriptions/{}/resourceGroups/busy", s.sub());
    s.create_rg(&admin, "busy").await;
    let mut principals = vec![];
    for t in 0..TASKS {
        let (app, sp, secret) = s.new_sp(&admin, &format!("busy-{t}")).await;
        let tok = s.client_token(&app, &secret, &s.mgmt()).await;
        principals.push((sp, tok));
    }
    let mut tasks = vec![];
    for (t, (sp, tok)) in principals.into_iter().enumerate() {
        let (s, admin, rg) = (s.clone(), admin.clone(), rg.clone());
        tasks.push(tokio::spawn(async move {
            let mut kept: Option<String> = None;
            for round in 0..ROUNDS {
                let id = uuid::Uuid::new_v4().to_string();
                let (st, v) = s
                    .call(
                        &admin,
                        "PUT",
                        &ra_url(&rg, &id),
                        Some(assign_body(READER, &sp)),
                    )
                    .await;
                assert_eq!(st, 201, "task {t} round {round} PUT: {v}");
                let (st, v) = s
                    .call(&tok, "GET", &format!("{rg}?api-version=2021-04-01"), None)
                    .await;
                assert_eq!(st, 200, "task {t} round {round}: granted access works: {v}");
                // Keep the last one of odd tasks; revoke everything else.
                if t % 2 == 1 && round == ROUNDS - 1 {
                    kept = Some(id);
                    continue;
                }
                let (st, v) = s.call(&admin, "DELETE", &ra_url(&rg, &id), None).await;
                assert_eq!(st, 200, "task {t} round {round} DELETE: {v}");
                let (st, v) = s
                    .call(&tok, "GET", &format!("{rg}?api-version=2021-04-01"), None)
                    .await;
                assert_eq!(
                    st, 403,
                    "task {t} round {round}: an acknowledged revocation takes effect: {v}"
                );
            }
            (sp, tok, kept)
        }));
    }
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!(
                "{rg}/providers/Microsoft.Authorization/roleAssignments?{API}&$filter=atScope()"
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut stored: Vec<String> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["properties"]["scope"].as_str() == Some(rg.as_str()))
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    stored.sort();
    let mut acknowledged: Vec<String> = results.iter().filter_map(|r| r.2.clone()).collect();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "stored assignments are exactly the acknowledged ones"
    );
    for (sp, tok, kept) in &results {
        let st = s
            .call(tok, "GET", &format!("{rg}?api-version=2021-04-01"), None)
            .await
            .0;
        assert_eq!(st, if kept.is_some() { 200 } else { 403 }, "{sp}");
    }
}
