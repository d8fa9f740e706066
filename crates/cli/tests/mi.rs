//! Managed identities: user-assigned identity resources, system-assigned identities on
//! resources (and their cascade on delete), the IMDS and App Service endpoints, caching, and
//! the Managed Identity Operator check behind bindings.

mod common;
use common::*;
use serde_json::{Value, json};

const MSI: &str = "api-version=2023-01-31";

async fn imds(s: &Server, query: &str, metadata: bool) -> (u16, Value) {
    let mut r = s
        .http
        .get(s.http_url(&format!("/metadata/identity/oauth2/token?{query}")));
    if metadata {
        r = r.header("Metadata", "true");
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn imds_host_identity_and_user_assigned() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    let (st, v) = imds(
        &s,
        "api-version=2018-02-01&resource=https://dynamicsessions.io",
        false,
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"], "bad_request_102");
    let (st, v) = imds(
        &s,
        "api-version=2018-02-01&resource=https://dynamicsessions.io",
        true,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for k in [
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(v[k].is_string(), "{k} must be a string: {v}");
    }
    let c = claims(v["access_token"].as_str().unwrap());
    let ttl = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert!(
        (80000..=90000).contains(&ttl),
        "MI tokens live about 24 hours: {ttl}"
    );
    assert!(
        c["xms_mirid"]
            .as_str()
            .unwrap()
            .contains("/resourcegroups/cloister-system/providers/Cloister.Platform/hosts/")
    );
    assert_eq!(c["aud"], "https://dynamicsessions.io");
    // Cached: the same token until its refresh time; bypass_cache mints a new one.
    let (_, again) = imds(
        &s,
        "api-version=2019-08-01&resource=https://dynamicsessions.io",
        true,
    )
    .await;
    assert_eq!(again["access_token"], v["access_token"]);
    let (_, fresh) = imds(
        &s,
        "api-version=2019-08-01&resource=https://dynamicsessions.io&bypass_cache=true",
        true,
    )
    .await;
    assert_ne!(fresh["access_token"], v["access_token"]);
    // Permanent errors are 400, never 404/5xx.
    assert_eq!(
        imds(&s, "resource=https://dynamicsessions.io", true)
            .await
            .0,
        400
    );
    assert_eq!(imds(&s, "api-version=2018-02-01", true).await.0, 400);
    let (st, v) = imds(
        &s,
        "api-version=2018-02-01&resource=https://unknown.example",
        true,
    )
    .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_resource")));
    let (st, v) = imds(&s, "api-version=2018-02-01&resource=https://dynamicsessions.io&client_id=00000000-0000-0000-0000-000000000009", true).await;
    assert_eq!(
        (st, v["error_description"].as_str()),
        (400, Some("Identity not found"))
    );

    // A user-assigned identity attached to the host is selectable by client_id and msi_res_id.
    s.create_rg(&admin, "ids").await;
    let uami = format!(
        "/subscriptions/{}/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/worker",
        s.sub()
    );
    let (st, u) = s
        .call(
            &admin,
            "PUT",
            &format!("{uami}?{MSI}"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201, "{u}");
    let client_id = u["properties"]["clientId"].as_str().unwrap().to_string();
    let principal = u["properties"]["principalId"].as_str().unwrap().to_string();
    let host = format!(
        "/subscriptions/{}/resourceGroups/cloister-system/providers/Cloister.Platform/hosts/local",
        s.sub()
    );
    let (st, h) = s.call(&admin, "PUT", &format!("{host}?{MSI}"), Some(json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami.clone(): {}}}}))).await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(
        h["identity"]["userAssignedIdentities"][&uami]["clientId"],
        client_id
    );
    let (st, v) = imds(
        &s,
        &format!(
            "api-version=2018-02-01&resource=https://dynamicsessions.io&client_id={client_id}"
        ),
        true,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["client_id"], client_id);
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["oid"], principal);
    assert_eq!(
        c["xms_mirid"],
        uami.replace("resourceGroups", "resourcegroups")
    );
    let (st, v) = imds(
        &s,
        &format!("api-version=2018-02-01&resource=https://dynamicsessions.io&msi_res_id={uami}"),
        true,
    )
    .await;
    assert_eq!(
        (st, v["client_id"].as_str()),
        (200, Some(client_id.as_str()))
    );
    let (st, v) = imds(
        &s,
        &format!(
            "api-version=2018-02-01&resource=https://dynamicsessions.io&object_id={principal}"
        ),
        true,
    )
    .await;
    assert_eq!(
        (st, v["client_id"].as_str()),
        (200, Some(client_id.as_str()))
    );
}

#[tokio::test]
async fn system_assigned_identity_goes_with_its_resource() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "apps").await;
    let res = format!(
        "/subscriptions/{}/resourceGroups/apps/providers/Contoso.Web/sites/site1",
        s.sub()
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{res}?{MSI}"),
            Some(json!({"location": "local", "identity": {"type": "SystemAssigned"}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let pid = v["identity"]["principalId"].as_str().unwrap().to_string();
    assert_eq!(v["identity"]["tenantId"], s.tenant());
    let scope = format!("/subscriptions/{}/resourceGroups/apps", s.sub());
    s.assign(&admin, &scope, READER, &pid).await;
    async fn list(s: &Server, admin: &str, scope: &str, pid: &str) -> usize {
        s.call(admin, "GET", &format!("{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId%20eq%20'{pid}'"), None).await.1["value"].as_array().unwrap().len()
    }
    assert_eq!(list(&s, &admin, &scope, &pid).await, 1);
    let (st, _) = s
        .call(&admin, "DELETE", &format!("{res}?{MSI}"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        list(&s, &admin, &scope, &pid).await,
        0,
        "the identity's role assignments go with it"
    );
    let (st, _) = s
        .call(
            &admin,
            "GET",
            &format!("/v1.0/servicePrincipals/{pid}"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    // Disabling the identity (identity: None) also removes it.
    let (_, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{res}?{MSI}"),
            Some(json!({"location": "local", "identity": {"type": "SystemAssigned"}})),
        )
        .await;
    let pid2 = v["identity"]["principalId"].as_str().unwrap().to_string();
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{res}?{MSI}"),
            Some(json!({"identity": {"type": "None"}})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["identity"]["type"], "None");
    assert_eq!(
        s.call(
            &admin,
            "GET",
            &format!("/v1.0/servicePrincipals/{pid2}"),
            None
        )
        .await
        .0,
        404
    );
    // User-assigned identities are deleted only explicitly.
    let uami = format!(
        "/subscriptions/{}/resourceGroups/apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1",
        s.sub()
    );
    let (_, u) = s
        .call(
            &admin,
            "PUT",
            &format!("{uami}?{MSI}"),
            Some(json!({"location": "local"})),
        )
        .await;
    let (st, _) = s.call(&admin, "PUT", &format!("{res}?{MSI}"), Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uami.clone(): {}}}}))).await;
    assert_eq!(st, 200);
    s.call(&admin, "DELETE", &format!("{res}?{MSI}"), None)
        .await;
    let (st, still) = s.call(&admin, "GET", &format!("{uami}?{MSI}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(
        still["properties"]["principalId"],
        u["properties"]["principalId"]
    );
}

#[tokio::test]
async fn bindings_need_managed_identity_operator() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "ids").await;
    let uami = format!(
        "/subscriptions/{}/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/job",
        s.sub()
    );
    let (_, u) = s
        .call(
            &admin,
            "PUT",
            &format!("{uami}?{MSI}"),
            Some(json!({"location": "local"})),
        )
        .await;
    let (app, sp, secret) = s.new_sp(&admin, "runner").await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    let bind = "/providers/Cloister.Identity/bindings?api-version=2024-01-01";
    let (st, v) = s
        .call(&tok, "POST", bind, Some(json!({"identity": "job"})))
        .await;
    assert_eq!(st, 403, "{v}");
    s.assign(&admin, &uami, MI_OPERATOR, &sp).await;
    let (st, b) = s
        .call(&tok, "POST", bind, Some(json!({"identity": "job"})))
        .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["clientId"], u["properties"]["clientId"]);
    let header = b["identityHeader"].as_str().unwrap();
    let ep = b["identityEndpoint"].as_str().unwrap();
    let r = s
        .http
        .get(format!(
            "{ep}?resource=https://vault.azure.net&api-version=2019-08-01"
        ))
        .header("X-IDENTITY-HEADER", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["expires_on"].is_string());
    assert_eq!(v["client_id"], u["properties"]["clientId"]);
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["xms_mirid"],
        uami.replace("resourceGroups", "resourcegroups")
    );
    // Wrong secret: 400 with App Service's error shape.
    let r = s
        .http
        .get(format!(
            "{ep}?resource=https://vault.azure.net&api-version=2019-08-01"
        ))
        .header("X-IDENTITY-HEADER", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["statusCode"], 400);
    // Ending the binding ends access.
    let r = s
        .http
        .delete(s.url("/providers/Cloister.Identity/bindings/current"))
        .header("X-IDENTITY-HEADER", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .get(format!(
            "{ep}?resource=https://vault.azure.net&api-version=2019-08-01"
        ))
        .header("X-IDENTITY-HEADER", header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
