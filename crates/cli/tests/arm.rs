//! The ARM framework through the management API: types no provider registered are refused,
//! ETags with If-Match / If-None-Match (also under concurrent writers), systemData, HEAD,
//! and list paging with `$top` / `nextLink` and `$filter`.

mod common;
use common::*;
use serde_json::{Value, json};

const API: &str = "api-version=2021-04-01";

fn widgets(s: &Server) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/arm/providers/Contoso.Widgets/widgets",
        s.sub()
    )
}

async fn raw(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = s.http.request(m, s.url(path)).bearer_auth(token);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap_or_default();
    (
        st,
        etag,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn unregistered_types_are_refused_and_nothing_is_stored() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    let rg = format!("/subscriptions/{}/resourceGroups/arm", s.sub());
    let body = json!({"location": "local", "properties": {}});
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{rg}/providers/Microsoft.SignalRService/signalR/hub1?api-version=2024-03-01"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidResourceNamespace");
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{rg}/providers/Microsoft.App/widgets/w?{API}"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidResourceType");
    // A typed list of an unknown type is refused the same way.
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("{rg}/providers/Microsoft.SignalRService/signalR?{API}"),
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s
        .call(&admin, "GET", &format!("{rg}/resources?{API}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"].as_array().unwrap().len(), 0, "{v}");
    // A registered type with the caller's casing is stored with the registered casing.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{rg}/providers/contoso.widgets/WIDGETS/MyWidget?{API}"),
            Some(body),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["type"], "Contoso.Widgets/widgets");
    assert_eq!(
        v["id"],
        format!("{rg}/providers/Contoso.Widgets/widgets/MyWidget")
    );
}

#[tokio::test]
async fn etags_guard_writes_and_system_data_says_who() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    let w = format!("{}/w1?{API}", widgets(&s));
    let body = json!({"location": "local", "properties": {"size": 1}});
    // Create only: If-None-Match: * on a new resource.
    let (st, e1, v) = raw(
        &s,
        &admin,
        "PUT",
        &w,
        &[("If-None-Match", "*")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let e1 = e1.expect("ETag header");
    assert_eq!(v["etag"], e1.as_str());
    assert_eq!(v["systemData"]["createdBy"], s.admin_id());
    assert_eq!(v["systemData"]["createdByType"], "Application");
    assert!(
        v["systemData"]["createdAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    // A second create-only PUT fails and changes nothing.
    let (st, _, v) = raw(
        &s,
        &admin,
        "PUT",
        &w,
        &[("If-None-Match", "*")],
        Some(json!({"location": "local", "properties": {"size": 2}})),
    )
    .await;
    assert_eq!(st, 412, "{v}");
    assert_eq!(v["error"]["code"], "PreconditionFailed");
    // A stale If-Match fails; the current one succeeds and yields a new ETag.
    let (st, _, _) = raw(
        &s,
        &admin,
        "PUT",
        &w,
        &[("If-Match", "\"stale\"")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 412);
    let (st, e2, v) = raw(
        &s,
        &admin,
        "PATCH",
        &w,
        &[("If-Match", &e1)],
        Some(json!({"properties": {"size": 5}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let e2 = e2.unwrap();
    assert_ne!(e1, e2);
    assert_eq!(v["properties"]["size"], 5);
    // GET returns the same ETag; If-Match: * needs the resource to exist.
    let (st, eg, _) = raw(&s, &admin, "GET", &w, &[], None).await;
    assert_eq!((st, eg.as_deref()), (200, Some(e2.as_str())));
    let (st, _, _) = raw(
        &s,
        &admin,
        "PUT",
        &format!("{}/nope?{API}", widgets(&s)),
        &[("If-Match", "*")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 412);
    // A malformed condition is a 400, not a silent write.
    let (st, _, v) = raw(
        &s,
        &admin,
        "PUT",
        &w,
        &[("If-Match", "no\"quotes")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // DELETE with a stale ETag leaves the resource; with the current one removes it.
    let (st, _, _) = raw(&s, &admin, "DELETE", &w, &[("If-Match", &e1)], None).await;
    assert_eq!(st, 412);
    let (st, _, _) = raw(&s, &admin, "HEAD", &w, &[], None).await;
    assert_eq!(st, 204);
    let (st, _, _) = raw(&s, &admin, "DELETE", &w, &[("If-Match", &e2)], None).await;
    assert_eq!(st, 200);
    let (st, _, _) = raw(&s, &admin, "HEAD", &w, &[], None).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn concurrent_conditional_writers_have_one_winner() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    let w = format!("{}/race?{API}", widgets(&s));
    let (st, e, _) = raw(
        &s,
        &admin,
        "PUT",
        &w,
        &[],
        Some(json!({"location": "local", "properties": {"n": 0}})),
    )
    .await;
    assert_eq!(st, 201);
    let e = e.unwrap();
    let mut tasks = vec![];
    for i in 1..=8 {
        let (http, url, tok, e) = (s.http.clone(), s.url(&w), admin.clone(), e.clone());
        tasks.push(tokio::spawn(async move {
            http.put(url)
                .bearer_auth(tok)
                .header("If-Match", e)
                .json(&json!({"location": "local", "properties": {"n": i}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = vec![];
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 412).count(), 7, "{codes:?}");
}

#[tokio::test]
async fn lists_page_with_next_link_and_filter() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    for i in 0..7 {
        let tags = if i % 2 == 0 {
            json!({"env": "prod"})
        } else {
            json!({"env": "dev"})
        };
        let (st, v) = s
            .call(
                &admin,
                "PUT",
                &format!("{}/w{i}?{API}", widgets(&s)),
                Some(json!({"location": "local", "tags": tags})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let mut names = vec![];
    let mut url = format!("{}?{API}&$top=3", widgets(&s));
    let mut pages = 0;
    loop {
        let (st, v) = s.call(&admin, "GET", &url, None).await;
        assert_eq!(st, 200, "{v}");
        let value = v["value"].as_array().unwrap();
        assert!(value.len() <= 3);
        names.extend(
            value
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match v["nextLink"].as_str() {
            Some(next) => {
                let base = s.url("");
                assert!(next.starts_with(base.trim_end_matches('/')), "{next}");
                url = next[base.trim_end_matches('/').len()..].to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("w{i}")).collect::<Vec<_>>());
    let rg = format!("/subscriptions/{}/resourceGroups/arm", s.sub());
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!(
                "{rg}/resources?{API}&$filter=tagName%20eq%20'env'%20and%20tagValue%20eq%20'prod'"
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"].as_array().unwrap().len(), 4, "{v}");
    let (st, v) = s
        .call(
            &admin,
            "GET",
            &format!("/subscriptions/{}/resources?{API}&$filter=resourceType%20eq%20'contoso.widgets/widgets'%20and%20name%20eq%20'W3'", s.sub()),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"][0]["name"], "w3", "{v}");
    for bad in ["$filter=name%20ne%20'x'", "$top=0", "$skipToken=forged"] {
        let (st, v) = s
            .call(&admin, "GET", &format!("{rg}/resources?{API}&{bad}"), None)
            .await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
}

/// Reader (built-in acdd72a7-3385-48ef-bd42-f606fba81ae7).
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

#[tokio::test]
async fn a_paged_list_never_shows_what_the_caller_cannot_read() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    for g in ["mine", "theirs"] {
        s.create_rg(&admin, g).await;
        for i in 0..4 {
            let (st, v) = s
                .call(
                    &admin,
                    "PUT",
                    &format!(
                        "/subscriptions/{}/resourceGroups/{g}/providers/Contoso.Widgets/widgets/{g}{i}?{API}",
                        s.sub()
                    ),
                    Some(json!({"location": "local"})),
                )
                .await;
            assert_eq!(st, 201, "{v}");
        }
    }
    let (app, sp, secret) = s.new_sp(&admin, "reader-of-one-group").await;
    s.assign(
        &admin,
        &format!("/subscriptions/{}/resourceGroups/mine", s.sub()),
        READER,
        &sp,
    )
    .await;
    let tok = s.client_token(&app, &secret, &s.mgmt()).await;
    // Page through the whole subscription, one at a time: only "mine" appears, on every page.
    let mut url = format!("/subscriptions/{}/resources?{API}&$top=1", s.sub());
    let mut seen = vec![];
    for _ in 0..20 {
        let (st, v) = s.call(&tok, "GET", &url, None).await;
        assert_eq!(st, 200, "{v}");
        for r in v["value"].as_array().unwrap() {
            seen.push(r["name"].as_str().unwrap().to_string());
        }
        match v["nextLink"].as_str() {
            Some(next) => {
                let base = s.url("");
                url = next[base.trim_end_matches('/').len()..].to_string();
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["mine0", "mine1", "mine2", "mine3"]);
    // The type-scoped list of the subscription, and the other group's lists, likewise.
    let (st, v) = s
        .call(
            &tok,
            "GET",
            &format!(
                "/subscriptions/{}/providers/Contoso.Widgets/widgets?{API}",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"].as_str().unwrap().starts_with("mine")),
        "{v}"
    );
    let (st, v) = s
        .call(
            &tok,
            "GET",
            &format!(
                "/subscriptions/{}/resourceGroups/theirs/resources?{API}",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"].as_array().unwrap().len(), 0, "{v}");
    // A single read of the other group's widget is refused, not shown.
    let (st, v) = s
        .call(
            &tok,
            "GET",
            &format!(
                "/subscriptions/{}/resourceGroups/theirs/providers/Contoso.Widgets/widgets/theirs0?{API}",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(st, 403, "{v}");
}

#[tokio::test]
async fn a_condition_header_that_is_not_ascii_is_a_bad_request() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    let id = format!("{}/w1?{API}", widgets(&s));
    let (st, _, v) = raw(
        &s,
        &admin,
        "PUT",
        &id,
        &[],
        Some(json!({"location": "local"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    // reqwest sends header bytes as given; 0xE9 is obs-text, not a valid ETag character.
    let r = s
        .http
        .put(s.url(&id))
        .bearer_auth(&admin)
        .header(
            "if-match",
            reqwest::header::HeaderValue::from_bytes(b"\"caf\xe9\"").unwrap(),
        )
        .json(&json!({"location": "local", "tags": {"x": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidCondition", "{v}");
    // Nothing was written.
    let (_, _, v) = raw(&s, &admin, "GET", &id, &[], None).await;
    assert_eq!(v["tags"], json!({}), "{v}");
}

#[tokio::test]
async fn the_identity_block_is_refused_on_a_type_that_does_not_declare_it() {
    let s = Server::start().await;
    let admin = s.admin_token().await;
    s.create_rg(&admin, "arm").await;
    // A user-assigned identity is itself an identity: no identity block.
    let ua = format!(
        "/subscriptions/{}/resourceGroups/arm/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1?{API}",
        s.sub()
    );
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &ua,
            Some(json!({"location": "local", "identity": {"type": "SystemAssigned"}})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    // A widget may not link something that is not a user-assigned identity.
    let (st, v) = s
        .call(
            &admin,
            "PUT",
            &format!("{}/w2?{API}", widgets(&s)),
            Some(json!({"location": "local", "identity": {"type": "UserAssigned", "userAssignedIdentities": {
                format!("/subscriptions/{}/resourceGroups/arm/providers/Contoso.Widgets/widgets/w9", s.sub()): {}
            }}})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidUserAssignedIdentity", "{v}");
}
