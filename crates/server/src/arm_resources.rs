//! Resources under resource groups: any `{namespace}/{type}/{name}` (with child types),
//! with ARM's `identity` block for system- and user-assigned managed identities, and
//! `Microsoft.ManagedIdentity/userAssignedIdentities`, which is an identity itself.

use crate::arm::{
    UAMI_TYPE, after_removal, method_not_allowed, new_resource, parse_body, rg_not_found, scope,
    store_err,
};
use crate::auth::Caller;
use crate::state::AppState;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cloister_arm::registry::{Route, RouteKind};
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::scope::{Scope, ScopeKind};
use cloister_store::{Expect, Resource, ServicePrincipal};
use serde_json::{Map, Value, json};

type Res = Result<Response, ArmError>;

/// The resource type with the casing of its id.
pub fn type_of(r: &Resource) -> String {
    Scope::parse(&r.id)
        .ok()
        .and_then(|s| s.resource_type())
        .unwrap_or_else(|| r.type_.clone())
}

pub fn is_uami(t: &str) -> bool {
    t.eq_ignore_ascii_case(UAMI_TYPE)
}

pub async fn resource_json(st: &AppState, r: &Resource) -> Value {
    let t = type_of(r);
    let mut props: Value = serde_json::from_str(&r.properties).unwrap_or(json!({}));
    if is_uami(&t)
        && let Ok(Some(sp)) = st.store.sp_by_mi_resource(&r.id).await
    {
        props["tenantId"] = json!(sp.tenant_id);
        props["principalId"] = json!(sp.id);
        props["clientId"] = json!(sp.app_id);
    }
    if crate::sessions::is_pool(&t) {
        crate::sessions::decorate(st, r, &mut props);
    }
    if t.eq_ignore_ascii_case(crate::arm_credman::SERVICE_TYPE) {
        props["gatewayUrl"] = json!(crate::arm_credman::gateway_url(st, &r.id));
    }
    props["provisioningState"] = json!("Succeeded");
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "type": t,
        "location": r.location,
        "tags": serde_json::from_str::<Value>(&r.tags).unwrap_or(json!({})),
        "properties": props,
    });
    if !is_uami(&t) {
        v["identity"] = identity_json(st, r).await;
    }
    if !r.etag.is_empty() {
        v["etag"] = json!(r.etag);
    }
    v["systemData"] = system_data(r);
    v
}

/// ARM's `systemData` of a resource (the who is empty for rows written before it was kept).
fn system_data(r: &Resource) -> Value {
    use cloister_arm::system_data::{ByType, Stamp, system_data};
    let stamp = |by: &str, ty: &str, at: i64| Stamp {
        by: by.to_string(),
        by_type: ByType::parse(ty),
        at,
    };
    let mut v = system_data(
        &stamp(&r.created_by, &r.created_by_type, r.created_at),
        &stamp(&r.modified_by, &r.modified_by_type, r.updated_at),
    );
    if let Some(m) = v.as_object_mut() {
        if r.created_by.is_empty() {
            m.remove("createdBy");
            m.remove("createdByType");
        }
        if r.modified_by.is_empty() {
            m.remove("lastModifiedBy");
            m.remove("lastModifiedByType");
        }
    }
    v
}

/// Who a caller is, for `systemData`: a user by object id, an application (or managed
/// identity) by its client id.
fn stamp_of(caller: &Caller) -> (String, &'static str) {
    if caller.idtyp.eq_ignore_ascii_case("user") {
        (caller.object_id.clone(), "User")
    } else {
        (caller.app_id.clone(), "Application")
    }
}

/// A response with the resource's `ETag` header (when it has one).
fn with_etag(status: StatusCode, body: Value) -> Res {
    let etag = body
        .get("etag")
        .and_then(|e| e.as_str())
        .and_then(|e| axum::http::HeaderValue::from_str(e).ok());
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(e) = etag {
        resp.headers_mut().insert(axum::http::header::ETAG, e);
    }
    Ok(resp)
}

async fn identity_json(st: &AppState, r: &Resource) -> Value {
    let kind = match (
        r.system_principal_id.is_some(),
        !r.user_identities.is_empty(),
    ) {
        (true, true) => "SystemAssigned, UserAssigned",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (false, false) => return json!({"type": "None"}),
    };
    let mut v = json!({"type": kind});
    if let Some(p) = &r.system_principal_id {
        v["principalId"] = json!(p);
        v["tenantId"] = json!(st.id.home_tenant);
    }
    if !r.user_identities.is_empty() {
        let mut m = Map::new();
        for ua in &r.user_identities {
            let (pid, cid) = match st.store.sp_by_mi_resource(ua).await {
                Ok(Some(sp)) => (json!(sp.id), json!(sp.app_id)),
                _ => (Value::Null, Value::Null),
            };
            m.insert(ua.clone(), json!({"principalId": pid, "clientId": cid}));
        }
        v["userAssignedIdentities"] = Value::Object(m);
    }
    v
}

/// The requested identity block: (system-assigned wanted, user-assigned identity ids).
fn parse_identity(v: &Value) -> Result<(bool, Vec<String>), ArmError> {
    let t = v
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ArmError::invalid("'identity.type' is required."))?;
    let parts: Vec<String> = t
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    let mut system = false;
    let mut user = false;
    for p in &parts {
        match p.as_str() {
            "none" => {}
            "systemassigned" => system = true,
            "userassigned" => user = true,
            _ => {
                return Err(ArmError::bad_request(
                    "InvalidIdentityType",
                    format!(
                        "The identity type '{t}' is not valid. Use None, SystemAssigned, UserAssigned or 'SystemAssigned, UserAssigned'."
                    ),
                ));
            }
        }
    }
    let mut ids = vec![];
    match v.get("userAssignedIdentities") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                if !val.is_null() {
                    ids.push(k.clone());
                }
            }
        }
        _ => {
            return Err(ArmError::invalid(
                "'identity.userAssignedIdentities' must be an object.",
            ));
        }
    }
    if user && ids.is_empty() {
        return Err(ArmError::bad_request(
            "BadRequest",
            "The identity type includes UserAssigned but no userAssignedIdentities were given.",
        ));
    }
    if !user && !ids.is_empty() {
        return Err(ArmError::bad_request(
            "BadRequest",
            "userAssignedIdentities may only be given with an identity type that includes UserAssigned.",
        ));
    }
    Ok((system, ids))
}

pub async fn resource(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    api_version: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Res {
    // One parse of the path: the registered type (refusing what no provider registers),
    // the canonical id and the action to authorize.
    let route = st.arm.route(method, path, api_version)?;
    if route.kind != RouteKind::Item {
        return Err(method_not_allowed(method));
    }
    let sc = route.scope.clone();
    let t = route.type_name.clone();
    let id = route.id.clone().unwrap_or_else(|| sc.to_string());
    st.rbac
        .authorize(&caller.object_id, &route.authz_action, &sc)?;
    let header = |h: axum::http::HeaderName| {
        headers
            .get(h)
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
    };
    let (if_match, if_none_match) = (
        header(axum::http::header::IF_MATCH),
        header(axum::http::header::IF_NONE_MATCH),
    );
    match *method {
        Method::GET | Method::HEAD => {
            let r = st.store.resource_get(&id).await.map_err(store_err)?;
            match r {
                Some(r) if *method == Method::GET => {
                    with_etag(StatusCode::OK, resource_json(st, &r).await)
                }
                Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                None if *method == Method::HEAD => Ok(StatusCode::NOT_FOUND.into_response()),
                None => Err(not_found(&t, &sc)),
            }
        }
        Method::DELETE => {
            if if_match.is_some() || if_none_match.is_some() {
                let cur = st.store.resource_get(&id).await.map_err(store_err)?;
                cloister_arm::conditional::check(
                    if_match.as_deref(),
                    if_none_match.as_deref(),
                    cur.as_ref().map(|r| r.etag.as_str()),
                )?;
            }
            match st.store.resource_delete(&id).await.map_err(store_err)? {
                Some(removed) => {
                    after_removal(st, &removed).await?;
                    Ok(StatusCode::OK.into_response())
                }
                None => Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
        Method::PUT | Method::PATCH => {
            let cond = (if_match.as_deref(), if_none_match.as_deref());
            put(st, caller, method, &route, &id, cond, body).await
        }
        _ => Err(method_not_allowed(method)),
    }
}

fn not_found(t: &str, sc: &Scope) -> ArmError {
    ArmError::not_found(
        "ResourceNotFound",
        format!(
            "The Resource '{t}/{}' under resource group '{}' was not found.",
            sc.name().unwrap_or_default(),
            sc.resource_group().unwrap_or_default()
        ),
    )
}

async fn put(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    route: &Route,
    id: &str,
    (if_match, if_none_match): (Option<&str>, Option<&str>),
    body: &Bytes,
) -> Res {
    let sc = &route.scope;
    let t = route.type_name.as_str();
    let sub = sc.subscription_id().unwrap_or_default().to_string();
    let rg = sc.resource_group().unwrap_or_default().to_string();
    let id = id.to_string();
    if st
        .store
        .rg_get(&sub, &rg)
        .await
        .map_err(store_err)?
        .is_none()
    {
        return Err(rg_not_found(&rg));
    }
    if let Some(parent) = sc.parent()
        && parent.kind() == ScopeKind::Resource
        && st
            .store
            .resource_get(&parent.to_string())
            .await
            .map_err(store_err)?
            .is_none()
    {
        return Err(ArmError::not_found(
            "ParentResourceNotFound",
            format!(
                "Can not perform requested operation on nested resource. Parent resource '{parent}' not found."
            ),
        ));
    }
    let existing = st.store.resource_get(&id).await.map_err(store_err)?;
    cloister_arm::conditional::check(
        if_match,
        if_none_match,
        existing.as_ref().map(|r| r.etag.as_str()),
    )?;
    let b = parse_body(body)?;
    if *method == Method::PATCH && existing.is_none() {
        return Err(not_found(t, sc));
    }
    let location = match (b.get("location"), &existing) {
        (Some(Value::String(l)), _) if !l.is_empty() => l.clone(),
        (None | Some(Value::Null), Some(e)) => e.location.clone(),
        (None | Some(Value::Null), None) => {
            return Err(ArmError::bad_request(
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
        _ => return Err(ArmError::invalid("'location' must be a non-empty string.")),
    };
    if existing.is_none() && !route.spec.allows_location(&location) {
        return Err(cloister_arm::registry::location_not_available(
            t,
            &route.spec,
            &location,
        ));
    }
    let mut r = existing.clone().unwrap_or_else(|| {
        new_resource(&id, t, &sub, &rg, sc.name().unwrap_or_default(), &location)
    });
    match b.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => r.tags = Value::Object(m.clone()).to_string(),
        _ => return Err(ArmError::invalid("'tags' must be an object.")),
    }
    // Session pools validate and normalise their own properties below.
    match b.get("properties").filter(|_| !crate::sessions::is_pool(t)) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            for k in ["provisioningState", "principalId", "clientId", "tenantId"] {
                m.remove(k);
            }
            if *method == Method::PATCH {
                let mut cur: Map<String, Value> =
                    serde_json::from_str(&r.properties).unwrap_or_default();
                cur.extend(m);
                r.properties = Value::Object(cur).to_string();
            } else {
                r.properties = Value::Object(m).to_string();
            }
        }
        _ => return Err(ArmError::invalid("'properties' must be an object.")),
    }
    r.updated_at = now_secs();
    let (by, by_type) = stamp_of(caller);
    if existing.is_none() {
        r.created_by = by.clone();
        r.created_by_type = by_type.to_string();
    }
    r.modified_by = by;
    r.modified_by_type = by_type.to_string();
    r.etag = cloister_arm::conditional::new_etag();
    if !route.spec.identity
        && !is_uami(t)
        && b.get("identity")
            .is_some_and(|v| !v.is_null() && v.get("type").and_then(|x| x.as_str()) != Some("None"))
    {
        return Err(ArmError::bad_request(
            "InvalidIdentity",
            format!("The resource type '{t}' does not support managed identities."),
        ));
    }
    let pool = crate::sessions::is_pool(t);
    let mut new_principals: Vec<ServicePrincipal> = vec![];
    let mut drop_principals: Vec<String> = vec![];
    if is_uami(t) {
        if b.contains_key("identity") {
            return Err(ArmError::invalid(
                "A user-assigned identity cannot itself have an 'identity' block.",
            ));
        }
        if existing.is_none() {
            new_principals.push(
                st.id
                    .new_managed_identity(&id, sc.name().unwrap_or_default()),
            );
        }
    } else if let Some(iv) = b.get("identity").filter(|v| !v.is_null()) {
        let (system, users) = parse_identity(iv)?;
        match (system, &r.system_principal_id) {
            (true, None) => {
                let sp = st
                    .id
                    .new_managed_identity(&id, sc.name().unwrap_or_default());
                r.system_principal_id = Some(sp.id.clone());
                new_principals.push(sp);
            }
            (false, Some(p)) => {
                drop_principals.push(p.clone());
                r.system_principal_id = None;
            }
            _ => {}
        }
        let mut canonical = vec![];
        for u in &users {
            let usc = scope(u)?;
            if usc.kind() != ScopeKind::Resource
                || !usc.resource_type().is_some_and(|x| is_uami(&x))
            {
                return Err(ArmError::bad_request(
                    "InvalidUserAssignedIdentity",
                    format!("'{u}' is not a user-assigned identity resource id."),
                ));
            }
            let ua = st
                .store
                .resource_get(&usc.to_string())
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    ArmError::bad_request(
                        "InvalidUserAssignedIdentity",
                        format!("The user-assigned identity '{u}' was not found."),
                    )
                })?;
            let already = r
                .user_identities
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&ua.id));
            if !already {
                st.rbac
                    .authorize(
                        &caller.object_id,
                        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                        &usc,
                    )
                    .map_err(|e| ArmError::new(403, "LinkedAuthorizationFailed", e.message))?;
            }
            if !canonical
                .iter()
                .any(|x: &String| x.eq_ignore_ascii_case(&ua.id))
            {
                canonical.push(ua.id.clone());
            }
        }
        r.user_identities = canonical;
    }
    if pool {
        r.properties = crate::sessions::prepare(
            &r,
            b.get("properties"),
            *method == Method::PATCH,
            sc.name().unwrap_or_default(),
        )?;
    }
    // The condition is checked again by the write itself, so a concurrent writer that
    // changed the resource after the check above cannot be overwritten.
    let expect = match (&existing, if_match, if_none_match) {
        (None, _, _) if if_none_match.is_some() => Expect::Absent,
        (Some(e), Some(_), _) => Expect::Etag(&e.etag),
        (Some(e), None, Some(_)) => Expect::Etag(&e.etag),
        _ => Expect::Any,
    };
    let written = st
        .store
        .resource_put_if(&r, &new_principals, &drop_principals, expect)
        .await
        .map_err(store_err)?;
    if !written {
        return Err(ArmError::new(
            412,
            "PreconditionFailed",
            "The resource was changed by another request; read it again and retry.",
        ));
    }
    st.id.invalidate_identity_sets();
    if !drop_principals.is_empty() {
        st.rbac.changed().await?;
    }
    let stored = st
        .store
        .resource_get(&id)
        .await
        .map_err(store_err)?
        .unwrap_or(r);
    if pool {
        crate::sessions::apply(st, &stored).await;
    }
    with_etag(
        if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        resource_json(st, &stored).await,
    )
}
