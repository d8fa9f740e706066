//! Tenant-level providers: `Microsoft.Management/managementGroups`,
//! `Microsoft.Subscription/aliases`, and Cloister's own `Cloister.Identity` (managed-identity
//! bindings for `cloister run`, signing keys) and `Cloister.Directory` (tenants).

use crate::arm::{
    UAMI_TYPE, method_not_allowed, mg_json, not_found_path, ok, parse_body, scope, store_err,
};
use crate::auth::Caller;
use crate::rbac::mg_scope;
use crate::state::AppState;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cloister_core::clock::{format_rfc3339, now_secs};
use cloister_core::error::ArmError;
use cloister_core::scope::ScopeKind;
use cloister_core::{is_guid, new_guid};
use cloister_store::{ManagementGroup, Subscription, Tenant};
use serde_json::{Value, json};

type Res = Result<Response, ArmError>;

fn valid_name(n: &str, what: &str) -> Result<(), ArmError> {
    if n.is_empty()
        || n.len() > 90
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c))
    {
        return Err(ArmError::bad_request(
            "InvalidName",
            format!(
                "The {what} name '{}' is invalid: use 1-90 letters, digits, '-', '_', '.', '(' or ')'.",
                n.chars().take(100).collect::<String>()
            ),
        ));
    }
    Ok(())
}

pub async fn management_groups(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Res {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // providers / Microsoft.Management / managementGroups [/ name [/ subscriptions / id]]
    match segs.len() {
        3 => {
            if *method != Method::GET {
                return Err(method_not_allowed(method));
            }
            let mut out = vec![];
            for m in st.store.mg_list().await.map_err(store_err)? {
                if st
                    .rbac
                    .authorize(
                        &caller.object_id,
                        "Microsoft.Management/managementGroups/read",
                        &scope(&mg_scope(&m.name))?,
                    )
                    .is_ok()
                {
                    out.push(mg_json(st, &m));
                }
            }
            ok(StatusCode::OK, json!({ "value": out }))
        }
        4 => {
            let name = segs[3];
            valid_name(name, "management group")?;
            let sc = scope(&mg_scope(name))?;
            let existing = st.store.mg_get(name).await.map_err(store_err)?;
            match *method {
                Method::GET => {
                    st.rbac.authorize(
                        &caller.object_id,
                        "Microsoft.Management/managementGroups/read",
                        &sc,
                    )?;
                    let m = existing.ok_or_else(|| {
                        ArmError::not_found(
                            "ManagementGroupNotFound",
                            format!("The management group '{name}' was not found."),
                        )
                    })?;
                    ok(StatusCode::OK, mg_json(st, &m))
                }
                Method::PUT => {
                    let b = parse_body(body)?;
                    let props = b.get("properties").cloned().unwrap_or(json!({}));
                    let display = props
                        .get("displayName")
                        .and_then(|v| v.as_str())
                        .unwrap_or(name)
                        .to_string();
                    let parent = match props.pointer("/details/parent/id").and_then(|v| v.as_str())
                    {
                        Some(pid) => {
                            let psc = scope(pid)?;
                            if psc.kind() != ScopeKind::ManagementGroup {
                                return Err(ArmError::invalid(
                                    "'properties.details.parent.id' must be a management group id.",
                                ));
                            }
                            let p = psc.management_group().unwrap_or_default().to_string();
                            if st.store.mg_get(&p).await.map_err(store_err)?.is_none() {
                                return Err(ArmError::bad_request(
                                    "ParentManagementGroupNotFound",
                                    format!("The parent management group '{p}' was not found."),
                                ));
                            }
                            // No cycles: walk up from the parent.
                            let mut cur = Some(p.clone());
                            let mut hops = 0;
                            while let Some(c) = cur {
                                if c.eq_ignore_ascii_case(name) {
                                    return Err(ArmError::bad_request(
                                        "InvalidParent",
                                        "A management group cannot be its own ancestor.",
                                    ));
                                }
                                hops += 1;
                                if hops > 10 {
                                    return Err(ArmError::bad_request(
                                        "InvalidParent",
                                        "Management groups can be nested at most 6 levels deep.",
                                    ));
                                }
                                cur = st
                                    .store
                                    .mg_get(&c)
                                    .await
                                    .map_err(store_err)?
                                    .and_then(|m| m.parent);
                            }
                            Some(p)
                        }
                        None => None,
                    };
                    // Creating under a parent needs write on the parent (or root); updating needs write on the group.
                    let auth_scope = match (&existing, &parent) {
                        (Some(_), _) => sc.clone(),
                        (None, Some(p)) => scope(&mg_scope(p))?,
                        (None, None) => scope("/")?,
                    };
                    st.rbac.authorize(
                        &caller.object_id,
                        "Microsoft.Management/managementGroups/write",
                        &auth_scope,
                    )?;
                    let m = ManagementGroup {
                        name: existing
                            .as_ref()
                            .map(|e| e.name.clone())
                            .unwrap_or_else(|| name.to_string()),
                        display_name: display,
                        parent,
                        created_at: existing
                            .as_ref()
                            .map(|e| e.created_at)
                            .unwrap_or_else(now_secs),
                    };
                    st.store.mg_upsert(&m).await.map_err(store_err)?;
                    st.rbac.changed().await?;
                    ok(
                        if existing.is_some() {
                            StatusCode::OK
                        } else {
                            StatusCode::CREATED
                        },
                        mg_json(st, &m),
                    )
                }
                Method::DELETE => {
                    st.rbac.authorize(
                        &caller.object_id,
                        "Microsoft.Management/managementGroups/delete",
                        &sc,
                    )?;
                    match st.store.mg_delete(name).await {
                        Ok(true) => {
                            st.rbac.changed().await?;
                            Ok(StatusCode::OK.into_response())
                        }
                        Ok(false) => Ok(StatusCode::NO_CONTENT.into_response()),
                        Err(cloister_store::StoreError::Conflict(_)) => Err(ArmError::bad_request(
                            "ManagementGroupHasChildren",
                            "The management group has child groups or subscriptions; move or delete them first.",
                        )),
                        Err(e) => Err(store_err(e)),
                    }
                }
                _ => Err(method_not_allowed(method)),
            }
        }
        6 if segs[4].eq_ignore_ascii_case("subscriptions") => {
            let (name, sub_id) = (segs[3], segs[5]);
            let sc = scope(&mg_scope(name))?;
            if st.store.mg_get(name).await.map_err(store_err)?.is_none() {
                return Err(ArmError::not_found(
                    "ManagementGroupNotFound",
                    format!("The management group '{name}' was not found."),
                ));
            }
            let mut sub = st
                .store
                .subscription_get(sub_id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    ArmError::not_found(
                        "SubscriptionNotFound",
                        format!("The subscription '{sub_id}' could not be found."),
                    )
                })?;
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Management/managementGroups/subscriptions/write",
                &sc,
            )?;
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Management/managementGroups/subscriptions/write",
                &scope(&format!("/subscriptions/{}", sub.id))?,
            )?;
            match *method {
                Method::PUT => sub.management_group = Some(name.to_string()),
                Method::DELETE => sub.management_group = None,
                _ => return Err(method_not_allowed(method)),
            }
            st.store
                .subscription_upsert(&sub)
                .await
                .map_err(store_err)?;
            st.rbac.changed().await?;
            ok(
                StatusCode::OK,
                json!({
                    "id": format!("{}/subscriptions/{}", mg_scope(name), sub.id),
                    "type": "Microsoft.Management/managementGroups/subscriptions",
                    "name": sub.id,
                    "properties": {"displayName": sub.display_name, "tenant": sub.tenant_id, "parent": {"id": mg_scope(name)}, "state": "Active"},
                }),
            )
        }
        _ => Err(not_found_path(path)),
    }
}

pub async fn alias(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Res {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.len() != 4 {
        return Err(not_found_path(path));
    }
    let name = segs[3];
    valid_name(name, "alias")?;
    let key = format!("subscription_alias:{}", name.to_ascii_lowercase());
    let body_of = |sub: &str| {
        json!({
            "id": format!("/providers/Microsoft.Subscription/aliases/{name}"),
            "name": name,
            "type": "Microsoft.Subscription/aliases",
            "properties": {"subscriptionId": sub, "provisioningState": "Succeeded"},
        })
    };
    match *method {
        Method::GET => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Subscription/aliases/read",
                &scope("/")?,
            )?;
            let sub = st
                .store
                .meta_get(&key)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    ArmError::not_found(
                        "AliasNotFound",
                        format!("The alias '{name}' was not found."),
                    )
                })?;
            ok(StatusCode::OK, body_of(&sub))
        }
        Method::PUT => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Subscription/aliases/write",
                &scope("/")?,
            )?;
            if let Some(sub) = st.store.meta_get(&key).await.map_err(store_err)? {
                return ok(StatusCode::OK, body_of(&sub));
            }
            let b = parse_body(body)?;
            let display = b
                .get("properties")
                .and_then(|p| p.get("displayName"))
                .and_then(|v| v.as_str())
                .unwrap_or(name)
                .to_string();
            let sub = Subscription {
                id: new_guid(),
                display_name: display,
                tenant_id: st.id.home_tenant.clone(),
                management_group: None,
                created_at: now_secs(),
            };
            if !st
                .store
                .meta_insert_if_absent(&key, &sub.id)
                .await
                .map_err(store_err)?
            {
                let existing = st
                    .store
                    .meta_get(&key)
                    .await
                    .map_err(store_err)?
                    .unwrap_or_default();
                return ok(StatusCode::OK, body_of(&existing));
            }
            st.store
                .subscription_upsert(&sub)
                .await
                .map_err(store_err)?;
            st.rbac.changed().await?;
            ok(StatusCode::CREATED, body_of(&sub.id))
        }
        _ => Err(method_not_allowed(method)),
    }
}

/// Finds a user-assigned identity by resource id, client id, principal id, or unique name.
pub async fn find_uami(st: &AppState, needle: &str) -> Result<cloister_store::Resource, ArmError> {
    if needle.starts_with('/') {
        let sc = scope(needle)?;
        return st
            .store
            .resource_get(&sc.to_string())
            .await
            .map_err(store_err)?
            .filter(|r| crate::arm_resources::is_uami(&r.type_))
            .ok_or_else(|| {
                ArmError::not_found(
                    "ResourceNotFound",
                    format!("The user-assigned identity '{needle}' was not found."),
                )
            });
    }
    let mut found = vec![];
    for s in st.store.subscription_list().await.map_err(store_err)? {
        for r in st
            .store
            .resource_list(&s.id, None, Some(UAMI_TYPE))
            .await
            .map_err(store_err)?
        {
            if is_guid(needle) {
                if let Ok(Some(sp)) = st.store.sp_by_mi_resource(&r.id).await
                    && (sp.app_id.eq_ignore_ascii_case(needle)
                        || sp.id.eq_ignore_ascii_case(needle))
                {
                    found.push(r);
                }
            } else if r.name.eq_ignore_ascii_case(needle) {
                found.push(r);
            }
        }
    }
    match found.len() {
        0 => Err(ArmError::not_found(
            "ResourceNotFound",
            format!("No user-assigned identity named or with client id '{needle}' was found."),
        )),
        1 => Ok(found.remove(0)),
        _ => Err(ArmError::bad_request(
            "AmbiguousIdentity",
            format!(
                "Several identities match '{needle}': {}. Give the resource id.",
                found
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

pub async fn cloister_provider(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Res {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let root = scope("/")?;
    match (
        method.clone(),
        segs.iter()
            .skip(1)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        (Method::POST, ["cloister.credentials", "keys", "rotate"]) => {
            st.rbac.authorize(
                &caller.object_id,
                "Cloister.Credentials/keys/rotate/action",
                &root,
            )?;
            let cm = st.credentials.as_ref().ok_or_else(|| {
                ArmError::new(
                    503,
                    "ServiceUnavailable",
                    "The credential manager is not running.",
                )
            })?;
            let report = crate::credentials::rotate(cm)
                .await
                .map_err(|e| ArmError::internal(format!("key rotation: {e}")))?;
            crate::arm::ok(axum::http::StatusCode::OK, report)
        }
        (Method::GET, ["cloister.credentials", "keys"]) => {
            st.rbac
                .authorize(&caller.object_id, "Cloister.Credentials/keys/read", &root)?;
            let cm = st.credentials.as_ref().ok_or_else(|| {
                ArmError::new(
                    503,
                    "ServiceUnavailable",
                    "The credential manager is not running.",
                )
            })?;
            crate::arm::ok(
                axum::http::StatusCode::OK,
                crate::credentials::key_status(cm).await,
            )
        }
        (Method::POST, ["cloister.identity", "bindings"]) => {
            let b = parse_body(body)?;
            let needle = b.get("identity").and_then(|v| v.as_str()).ok_or_else(|| {
                ArmError::invalid("'identity' (name, client id or resource id) is required.")
            })?;
            let ttl = b
                .get("ttlSeconds")
                .and_then(|v| v.as_i64())
                .unwrap_or(12 * 3600);
            let r = find_uami(st, needle).await?;
            let sc = scope(&r.id)?;
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                &sc,
            )?;
            let sp = st
                .store
                .sp_by_mi_resource(&r.id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| ArmError::internal("identity has no principal"))?;
            let (secret, expires) = st
                .id
                .create_binding(vec![sp.id.clone()], &caller.object_id, ttl)
                .await
                .map_err(ArmError::from)?;
            let endpoint = match &st.id.http_base {
                Some(h) => format!("{h}/msi/token"),
                None => format!("{}/msi/token", st.id.authority),
            };
            ok(
                StatusCode::CREATED,
                json!({
                    "identityEndpoint": endpoint,
                    "identityHeader": secret.expose(),
                    "expiresOn": format_rfc3339(expires),
                    "clientId": sp.app_id,
                    "principalId": sp.id,
                    "resourceId": r.id,
                }),
            )
        }
        (Method::GET, ["cloister.identity", "signingkeys"]) => {
            st.rbac.authorize(
                &caller.object_id,
                "Cloister.Identity/signingKeys/read",
                &root,
            )?;
            ok(StatusCode::OK, json!({ "value": st.id.keys.list() }))
        }
        (Method::POST, ["cloister.identity", "signingkeys", "rotate"]) => {
            st.rbac.authorize(
                &caller.object_id,
                "Cloister.Identity/signingKeys/action",
                &root,
            )?;
            let kid = st.id.keys.rotate_now().await.map_err(ArmError::from)?;
            ok(
                StatusCode::OK,
                json!({ "activeKid": kid, "value": st.id.keys.list() }),
            )
        }
        (Method::POST, ["cloister.directory", "tenants"]) => {
            st.rbac
                .authorize(&caller.object_id, "Cloister.Directory/tenants/write", &root)?;
            let b = parse_body(body)?;
            let display = b
                .get("displayName")
                .and_then(|v| v.as_str())
                .unwrap_or("tenant")
                .to_string();
            cloister_identity::directory::valid_display_name(&display).map_err(ArmError::from)?;
            let t = Tenant {
                id: new_guid(),
                display_name: display.clone(),
                is_home: false,
                created_at: now_secs(),
            };
            st.store.tenant_create(&t).await.map_err(store_err)?;
            let (app, _) = st
                .id
                .create_application(&t.id, &format!("{display}-admin"), vec![], vec![], false)
                .await
                .map_err(ArmError::from)?;
            let (_, secret) = st
                .id
                .add_password(&app.app_id, "bootstrap", 365 * 86400)
                .await
                .map_err(ArmError::from)?;
            ok(
                StatusCode::CREATED,
                json!({"tenantId": t.id, "displayName": display, "clientId": app.app_id, "clientSecret": secret.expose()}),
            )
        }
        (Method::GET, ["cloister.directory", "tenants"]) => {
            st.rbac
                .authorize(&caller.object_id, "Cloister.Directory/tenants/read", &root)?;
            let v: Vec<Value> = st.store.tenant_list().await.map_err(store_err)?.iter().map(|t| json!({"tenantId": t.id, "displayName": t.display_name, "isHome": t.is_home})).collect();
            ok(StatusCode::OK, json!({ "value": v }))
        }
        _ => Err(not_found_path(path)),
    }
}

/// `DELETE /providers/Cloister.Identity/bindings/current` with `X-IDENTITY-HEADER`: ends a
/// `cloister run` binding (possession of its secret is the authorization). A session pool's
/// binding is refused: its secret is readable by every session of the pool, and one
/// session must not be able to take the identity away from the others.
pub async fn delete_binding(
    axum::extract::State(st): axum::extract::State<std::sync::Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Res {
    let Some(secret) = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ArmError::bad_request(
            "MissingIdentityHeader",
            "X-IDENTITY-HEADER is required.",
        ));
    };
    use cloister_identity::mi::DeleteOutcome;
    match st.id.delete_binding(secret).await.map_err(ArmError::from)? {
        DeleteOutcome::Deleted => Ok(StatusCode::OK.into_response()),
        DeleteOutcome::NotFound => Ok(StatusCode::NO_CONTENT.into_response()),
        DeleteOutcome::Refused => Err(ArmError::new(
            403,
            "AuthorizationFailed",
            "This identity header belongs to a session pool: it ends with the pool or a change of the pool's managedIdentitySettings, not with its own secret.",
        )),
    }
}
