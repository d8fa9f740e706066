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

/// Runs `code` in session `identifier` of the pool at `endpoint`; returns stdout.
async fn run_in_session(
    s: &Server,
    endpoint: &str,
    token: &str,
    identifier: &str,
    code: &str,
) -> String {
    let r = s
        .http
        .post(format!(
            "{endpoint}/code/execute?api-version=2024-02-02-preview&identifier={identifier}"
        ))
        .bearer_auth(token)
        .json(&json!({"properties": {"codeInputType": "inline", "executionType": "synchronous", "code": code}}))
        .send()
        .await
        .unwrap();
    let st = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["properties"]["status"], "Success", "{v}");
    v["properties"]["stdout"].as_str().unwrap().to_string()
}

/// Deletes every identity binding row straight in the store, as an operator or a purge would.
async fn delete_binding_rows(s: &Server) -> u64 {
    sqlx::any::install_default_drivers();
    let url = match &s.store {
        Some(pg) => pg.clone(),
        None => format!(
            "sqlite://{}?mode=rw",
            s.data_dir().join("cloister.db").display()
        ),
    };
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut c, "DELETE FROM identity_bindings")
        .await
        .unwrap()
        .rows_affected()
}

/// The binding a session pool makes for its sessions' `Main` identities: its secret (the
/// `IDENTITY_HEADER` every session of the pool can read) cannot end the binding, works only
/// through the sandboxes' identity socket, and a lost binding is re-created under the same
/// secret, so the pool's sessions keep their identity.
#[tokio::test]
async fn session_code_cannot_disable_its_pools_identity() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "pmi").await;
    let uami = format!(
        "/subscriptions/{}/resourceGroups/pmi/providers/Microsoft.ManagedIdentity/userAssignedIdentities/worker",
        s.sub()
    );
    let (st, ident) = s
        .call(
            &admin,
            "PUT",
            &format!("{uami}?{MSI}"),
            Some(json!({"location": "local"})),
        )
        .await;
    assert_eq!(st, 201, "{ident}");
    let principal = ident["properties"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    let pool = format!(
        "/subscriptions/{}/resourceGroups/pmi/providers/Microsoft.App/sessionPools/withmi",
        s.sub()
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{pool}?api-version=2025-07-01"),
            Some(json!({"location": "local",
                "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami.clone(): {}}},
                "properties": {"managedIdentitySettings": [{"identity": uami, "lifecycle": "Main"}]}})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let endpoint = v["properties"]["poolManagementEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let me = claims(&admin)["oid"].as_str().unwrap().to_string();
    s.assign(&admin, &pool, "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0", &me)
        .await;
    let dp = s
        .client_token(
            &s.admin_id(),
            &s.admin_secret(),
            "https://dynamicsessions.io",
        )
        .await;
    // The code prints its header, then the object id of a fresh token (or the error).
    let code = [
        "import os, json, urllib.request",
        "h = os.environ['IDENTITY_HEADER']",
        "req = urllib.request.Request(os.environ['IDENTITY_ENDPOINT'] + '?api-version=2019-08-01&resource=https://vault.azure.net', headers={'X-IDENTITY-HEADER': h})",
        "try:",
        "    tok = json.loads(urllib.request.urlopen(req, timeout=10).read())['access_token']",
        "    import base64; p = tok.split('.')[1]; oid = json.loads(base64.urlsafe_b64decode(p + '=' * (-len(p) % 4)))['oid']",
        "except Exception as e:",
        "    oid = 'error: %s' % e",
        "print(json.dumps({'header': h, 'oid': oid}))",
    ]
    .join("\n");
    let run = |id: &'static str| {
        let (s, endpoint, dp, code) = (&s, endpoint.clone(), dp.clone(), code.clone());
        async move {
            let out = run_in_session(s, &endpoint, &dp, id, &code).await;
            serde_json::from_str::<Value>(out.trim()).unwrap()
        }
    };
    let first = run("session-a").await;
    assert_eq!(first["oid"], principal.as_str(), "{first}");
    let header = first["header"].as_str().unwrap().to_string();
    // 1. The session's secret cannot end its pool's binding.
    let r = s
        .http
        .delete(s.url("/providers/Cloister.Identity/bindings/current"))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "AuthorizationFailed", "{v}");
    // 2. Nor does it work outside the sandbox, on either listener's /msi/token.
    for url in [s.url("/msi/token"), s.http_url("/msi/token")] {
        let r = s
            .http
            .get(format!(
                "{url}?api-version=2019-08-01&resource=https://vault.azure.net"
            ))
            .header("X-IDENTITY-HEADER", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.unwrap();
        assert!(v.get("access_token").is_none(), "{v}");
    }
    // The identity still works, in that session and in another one.
    for id in ["session-a", "session-b"] {
        let v = run(id).await;
        assert_eq!(v["oid"], principal.as_str(), "{id}: {v}");
        assert_eq!(v["header"], header.as_str());
    }
    // 3. The binding row disappears behind the server's back (and its 5 s cache lapses):
    // the next token request inside a session re-creates it under the same secret.
    assert!(delete_binding_rows(&s).await >= 1);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let v = run("session-a").await;
    assert_eq!(
        v["oid"],
        principal.as_str(),
        "after the row was deleted: {v}"
    );
    let v = run("session-c").await;
    assert_eq!(v["oid"], principal.as_str(), "a new session: {v}");
    // ... and still only inside.
    let r = s
        .http
        .get(format!(
            "{}?api-version=2019-08-01&resource=https://vault.azure.net",
            s.url("/msi/token")
        ))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Deleting the pool ends its binding.
    let (st, _) = s
        .call(
            &admin,
            "DELETE",
            &format!("{pool}?api-version=2025-07-01"),
            None,
        )
        .await;
    assert!(st == 200 || st == 202 || st == 204, "{st}");
    assert_eq!(
        delete_binding_rows(&s).await,
        0,
        "the pool's binding ended with it"
    );
}
