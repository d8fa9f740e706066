//! The management API in Azure Resource Manager's shape: subscriptions (and aliases),
//! management groups, resource groups, resources with managed identities (user-assigned
//! identities included), and `Microsoft.Authorization` role definitions, role assignments
//! and deny assignments. Every request is authorized by one call into the RBAC evaluator.

use crate::auth::Caller;
use crate::rbac::mg_scope;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use cloister_access::{DenyAssignment, Permission, RoleDefinition};
use cloister_core::clock::{format_rfc3339, now_secs};
use cloister_core::error::ArmError;
use cloister_core::scope::{Scope, ScopeKind};
use cloister_core::{is_guid, new_guid};
use cloister_store::{ManagementGroup, Resource, ResourceGroup, RoleAssignmentRow, Subscription};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

type Res = Result<Response, ArmError>;
type Q = HashMap<String, String>;

pub const UAMI_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/subscriptions", get(list_subscriptions))
        .route("/subscriptions/{*rest}", any(dispatch))
        .route("/providers/{*rest}", any(dispatch))
}

pub fn require_api_version(q: &Q) -> Result<(), ArmError> {
    match q.get("api-version") {
        None => Err(ArmError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) => {
            let ok = v.len() >= 10
                && v.len() <= 30
                && v.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        *b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
                && (v.len() == 10
                    || v[10..].starts_with('-')
                        && v[11..].chars().all(|c| c.is_ascii_alphanumeric()));
            if ok {
                Ok(())
            } else {
                Err(ArmError::bad_request(
                    "InvalidApiVersionParameter",
                    format!(
                        "The api-version '{}' is invalid. The supported versions are dates such as '2022-04-01'.",
                        v.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
}

pub fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ArmError> {
    if body.is_empty() {
        return Err(ArmError::invalid(
            "The request content was invalid and could not be deserialized: the body is empty.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ArmError::invalid(
            "The request content was invalid and could not be deserialized: a JSON object is required.",
        )),
        Err(e) => Err(ArmError::invalid(format!(
            "The request content was invalid and could not be deserialized: {e}."
        ))),
    }
}

pub fn scope(s: &str) -> Result<Scope, ArmError> {
    Scope::parse(s).map_err(|e| ArmError::bad_request("InvalidScope", e.to_string()))
}

fn str_array(v: Option<&Value>, field: &str) -> Result<Vec<String>, ArmError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ArmError::invalid(format!("'{field}' must be an array of strings."))
                })
            })
            .collect(),
        _ => Err(ArmError::invalid(format!(
            "'{field}' must be an array of strings."
        ))),
    }
}

pub fn ok(status: StatusCode, v: Value) -> Res {
    Ok((status, Json(v)).into_response())
}

async fn list_subscriptions(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<Q>,
) -> Res {
    require_api_version(&q)?;
    let mut out = vec![];
    for s in st.store.subscription_list().await.map_err(store_err)? {
        let sc = scope(&format!("/subscriptions/{}", s.id))?;
        if st
            .rbac
            .authorize(
                &caller.object_id,
                "Microsoft.Resources/subscriptions/read",
                &sc,
            )
            .is_ok()
        {
            out.push(subscription_json(&s));
        }
    }
    ok(StatusCode::OK, json!({ "value": out }))
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": format!("/subscriptions/{}", s.id),
        "subscriptionId": s.id,
        "tenantId": s.tenant_id,
        "displayName": s.display_name,
        "state": "Enabled",
        "authorizationSource": "RoleBased",
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "Cloister", "spendingLimit": "Off"},
    })
}

pub fn store_err(e: cloister_store::StoreError) -> ArmError {
    match e {
        cloister_store::StoreError::Conflict(m) => ArmError::conflict("Conflict", m),
        cloister_store::StoreError::NotFound => {
            ArmError::not_found("NotFound", "The resource was not found.")
        }
        other => {
            tracing::error!("store: {other}");
            ArmError::internal("An internal error occurred while reading or writing state.")
        }
    }
}

async fn dispatch(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    Query(q): Query<Q>,
    headers: axum::http::HeaderMap,
    caller: Caller,
    body: Bytes,
) -> Res {
    require_api_version(&q)?;
    let path = uri.path().trim_end_matches('/').to_string();
    let lower = path.to_ascii_lowercase();
    const AUTHZ: &str = "/providers/microsoft.authorization/";
    if let Some(idx) = lower.rfind(AUTHZ) {
        let scope_str = if idx == 0 {
            "/".to_string()
        } else {
            path[..idx].to_string()
        };
        let tail: Vec<&str> = path[idx + AUTHZ.len()..].split('/').collect();
        let sc = scope(&scope_str)?;
        return match (
            tail.first().map(|s| s.to_ascii_lowercase()).as_deref(),
            tail.get(1),
            tail.len(),
        ) {
            (Some("roleassignments"), None, 1) => {
                list_role_assignments(&st, &caller, &method, &sc, &q).await
            }
            (Some("roleassignments"), Some(id), 2) => {
                role_assignment(&st, &caller, &method, &sc, id, &body).await
            }
            (Some("roledefinitions"), None, 1) => {
                list_role_definitions(&st, &caller, &method, &sc, &q).await
            }
            (Some("roledefinitions"), Some(id), 2) => {
                role_definition(&st, &caller, &method, &sc, id, &body).await
            }
            (Some("denyassignments"), None, 1) => {
                list_deny_assignments(&st, &caller, &method, &sc).await
            }
            (Some("denyassignments"), Some(id), 2) => {
                deny_assignment(&st, &caller, &method, &sc, id, &body).await
            }
            _ => Err(not_found_path(&path)),
        };
    }
    if lower.starts_with("/providers/microsoft.management/managementgroups") {
        return crate::arm_tenant::management_groups(&st, &caller, &method, &path, &body).await;
    }
    if lower.starts_with("/providers/microsoft.subscription/aliases/") {
        return crate::arm_tenant::alias(&st, &caller, &method, &path, &body).await;
    }
    if lower.starts_with("/providers/cloister.") {
        return crate::arm_tenant::cloister_provider(&st, &caller, &method, &path, &body).await;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs
        .first()
        .map(|s| s.eq_ignore_ascii_case("subscriptions"))
        != Some(true)
        || segs.len() < 2
    {
        return Err(not_found_path(&path));
    }
    let sub_id = segs[1];
    let sub = st
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
    let lc = |i: usize| segs.get(i).map(|s| s.to_ascii_lowercase());
    match (segs.len(), lc(2).as_deref()) {
        (2, _) => {
            if method != Method::GET {
                return Err(method_not_allowed(&method));
            }
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Resources/subscriptions/read",
                &scope(&path)?,
            )?;
            ok(StatusCode::OK, subscription_json(&sub))
        }
        (3, Some("resourcegroups")) => {
            if method != Method::GET {
                return Err(method_not_allowed(&method));
            }
            let mut out = vec![];
            for g in st.store.rg_list(&sub.id).await.map_err(store_err)? {
                let sc = scope(&rg_id(&sub.id, &g.name))?;
                if st
                    .rbac
                    .authorize(
                        &caller.object_id,
                        "Microsoft.Resources/subscriptions/resourceGroups/read",
                        &sc,
                    )
                    .is_ok()
                {
                    out.push(rg_json(&g));
                }
            }
            ok(StatusCode::OK, json!({ "value": out }))
        }
        (3, Some("resources")) => {
            list_resources(&st, &caller, &sub.id, None, None, (&path, &q)).await
        }
        (4, Some("resourcegroups")) => {
            resource_group(&st, &caller, &method, &sub, segs[3], &body).await
        }
        (5, Some("resourcegroups")) if lc(4).as_deref() == Some("resources") => {
            list_resources(&st, &caller, &sub.id, Some(segs[3]), None, (&path, &q)).await
        }
        (5, Some("providers")) => {
            list_resources(
                &st,
                &caller,
                &sub.id,
                None,
                Some(format!("{}/{}", segs[3], segs[4])),
                (&path, &q),
            )
            .await
        }
        (n, Some("resourcegroups"))
            if n >= 9
                && lc(4).as_deref() == Some("providers")
                && lc(5).as_deref() == Some("microsoft.apimanagement")
                && lc(6).as_deref() == Some("service") =>
        {
            let instance = format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ApiManagement/service/{}",
                sub.id, segs[3], segs[7]
            );
            crate::arm_credman::handle(
                &st,
                &caller,
                &method,
                &headers,
                &instance,
                &segs[8..],
                uri.query(),
                &body,
            )
            .await
        }
        (n, Some("resourcegroups")) if n >= 7 && lc(4).as_deref() == Some("providers") => {
            if n == 7 {
                if method != Method::GET {
                    return Err(method_not_allowed(&method));
                }
                return list_resources(
                    &st,
                    &caller,
                    &sub.id,
                    Some(segs[3]),
                    Some(format!("{}/{}", segs[5], segs[6])),
                    (&path, &q),
                )
                .await;
            }
            if n % 2 == 1 {
                return Err(not_found_path(&path));
            }
            let v = q.get("api-version").map(String::as_str).unwrap_or_default();
            crate::arm_resources::resource(&st, &caller, &method, &path, v, &headers, &body).await
        }
        _ => Err(not_found_path(&path)),
    }
}

pub fn not_found_path(path: &str) -> ArmError {
    ArmError::not_found(
        "InvalidResourceType",
        format!(
            "No route matches '{}'. Check the resource type and api-version.",
            path.chars().take(300).collect::<String>()
        ),
    )
}

pub fn method_not_allowed(m: &Method) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!("The HTTP method '{m}' is not supported for this resource."),
    )
}

pub fn rg_id(sub: &str, rg: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}")
}

fn rg_json(g: &ResourceGroup) -> Value {
    json!({
        "id": rg_id(&g.subscription_id, &g.name),
        "name": g.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": g.location,
        "tags": serde_json::from_str::<Value>(&g.tags).unwrap_or(json!({})),
        "properties": {"provisioningState": "Succeeded"},
    })
}

async fn resource_group(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sub: &Subscription,
    name: &str,
    body: &Bytes,
) -> Res {
    let id = rg_id(&sub.id, name);
    let sc = scope(&id)?;
    let act = |a: &str| {
        st.rbac.authorize(
            &caller.object_id,
            &format!("Microsoft.Resources/subscriptions/resourceGroups/{a}"),
            &sc,
        )
    };
    match *method {
        Method::PUT => {
            act("write")?;
            let b = parse_body(body)?;
            let location = b
                .get("location")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ArmError::bad_request(
                        "LocationRequired",
                        "The location property is required for this definition.",
                    )
                })?;
            let tags = match b.get("tags") {
                None | Some(Value::Null) => json!({}),
                Some(Value::Object(m)) => Value::Object(m.clone()),
                _ => return Err(ArmError::invalid("'tags' must be an object.")),
            };
            let g = ResourceGroup {
                subscription_id: sub.id.clone(),
                name: sc.resource_group().unwrap_or(name).to_string(),
                location: location.to_string(),
                tags: tags.to_string(),
                created_at: now_secs(),
            };
            let created = st.store.rg_upsert(&g).await.map_err(store_err)?;
            let g = st
                .store
                .rg_get(&sub.id, name)
                .await
                .map_err(store_err)?
                .unwrap_or(g);
            ok(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                rg_json(&g),
            )
        }
        Method::GET | Method::HEAD => {
            act("read")?;
            match st.store.rg_get(&sub.id, name).await.map_err(store_err)? {
                Some(g) if *method == Method::GET => ok(StatusCode::OK, rg_json(&g)),
                Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                None if *method == Method::HEAD => Ok(StatusCode::NOT_FOUND.into_response()),
                None => Err(rg_not_found(name)),
            }
        }
        Method::DELETE => {
            act("delete")?;
            match st.store.rg_delete(&sub.id, name).await.map_err(store_err)? {
                Some(removed) => {
                    after_removal(st, &removed).await?;
                    Ok(StatusCode::OK.into_response())
                }
                None => Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
        _ => Err(method_not_allowed(method)),
    }
}

pub fn rg_not_found(name: &str) -> ArmError {
    ArmError::not_found(
        "ResourceGroupNotFound",
        format!("Resource group '{name}' could not be found."),
    )
}

/// Refreshes caches after a cascading delete.
pub async fn after_removal(
    st: &AppState,
    removed: &cloister_store::Removed,
) -> Result<(), ArmError> {
    st.id.invalidate_identity_sets();
    crate::sessions::removed(st, &removed.resources).await;
    for r in &removed.resources {
        if r.to_ascii_lowercase()
            .contains("/providers/microsoft.apimanagement/service/")
        {
            let _ = st.store.cred_delete_instance(r).await;
            if let Some(cm) = &st.credentials {
                cm.invalidate();
            }
        }
    }
    if !removed.principals.is_empty() || removed.role_assignments > 0 {
        st.id.invalidate_all_clients();
        st.rbac.changed().await?;
    }
    Ok(())
}

async fn list_resources(
    st: &AppState,
    caller: &Caller,
    sub: &str,
    rg: Option<&str>,
    type_: Option<String>,
    (path, q): (&str, &Q),
) -> Res {
    // A typed list names a registered type (else ARM's InvalidResourceNamespace/Type).
    let type_ = match type_ {
        Some(t) => Some(st.arm.resolve_type(&t)?.0),
        None => None,
    };
    let get = |k: &str| {
        q.iter()
            .find(|(x, _)| x.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let filter = get("$filter")
        .map(cloister_arm::filter::parse)
        .transpose()?;
    let query: std::collections::BTreeMap<String, String> =
        q.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let page = cloister_arm::paging::parse(&query)?;
    if let Some(rg) = rg
        && st.store.rg_get(sub, rg).await.map_err(store_err)?.is_none()
    {
        return Err(rg_not_found(rg));
    }
    let mut visible = vec![];
    for r in st
        .store
        .resource_list(sub, rg, type_.as_deref())
        .await
        .map_err(store_err)?
    {
        let Ok(sc) = Scope::parse(&r.id) else {
            continue;
        };
        let t = crate::arm_resources::type_of(&r);
        if let Some(f) = &filter {
            let tags: std::collections::BTreeMap<String, String> =
                serde_json::from_str::<Map<String, Value>>(&r.tags)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect();
            let subject = cloister_arm::filter::Subject {
                type_name: &t,
                name: &r.name,
                location: &r.location,
                tags: &tags,
            };
            if !f.matches(&subject) {
                continue;
            }
        }
        if st
            .rbac
            .authorize(&caller.object_id, &format!("{t}/read"), &sc)
            .is_ok()
        {
            visible.push(r);
        }
    }
    let (items, next) = cloister_arm::paging::page(visible, |r| r.id.to_lowercase(), &page);
    let mut out = Vec::with_capacity(items.len());
    for r in &items {
        out.push(crate::arm_resources::resource_json(st, r).await);
    }
    let mut body = json!({ "value": out });
    if let Some(t) = next {
        body["nextLink"] = json!(cloister_arm::paging::next_link(
            &format!("{}{path}", st.cfg.public_url()),
            &query,
            &t
        ));
    }
    ok(StatusCode::OK, body)
}

// ---- role assignments ----------------------------------------------------------------------

fn role_def_guid(s: &str) -> Option<String> {
    let last = s.trim_end_matches('/').rsplit('/').next()?;
    is_guid(last).then(|| last.to_ascii_lowercase())
}

pub fn role_assignment_json(a: &RoleAssignmentRow, sub_hint: Option<&str>) -> Value {
    let def_id = match sub_hint {
        Some(s) => format!(
            "/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{}",
            a.role_definition_id
        ),
        None => format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            a.role_definition_id
        ),
    };
    let prefix = if a.scope == "/" {
        String::new()
    } else {
        a.scope.clone()
    };
    json!({
        "id": format!("{prefix}/providers/Microsoft.Authorization/roleAssignments/{}", a.id),
        "name": a.id,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": def_id,
            "principalId": a.principal_id,
            "principalType": a.principal_type,
            "scope": a.scope,
            "description": a.description,
            "condition": null,
            "conditionVersion": null,
            "createdOn": format_rfc3339(a.created_at),
            "updatedOn": format_rfc3339(a.created_at),
            "createdBy": a.created_by,
            "updatedBy": a.created_by,
        }
    })
}

/// Checks that a scope names something that exists (ARM refuses assignments on nothing).
pub async fn scope_exists(st: &AppState, sc: &Scope) -> Result<(), ArmError> {
    match sc.kind() {
        ScopeKind::Root => Ok(()),
        ScopeKind::ManagementGroup => {
            let name = sc.management_group().unwrap_or_default();
            st.store
                .mg_get(name)
                .await
                .map_err(store_err)?
                .map(|_| ())
                .ok_or_else(|| {
                    ArmError::not_found(
                        "ManagementGroupNotFound",
                        format!("The management group '{name}' was not found."),
                    )
                })
        }
        ScopeKind::Subscription => {
            let s = sc.subscription_id().unwrap_or_default();
            st.store
                .subscription_get(s)
                .await
                .map_err(store_err)?
                .map(|_| ())
                .ok_or_else(|| {
                    ArmError::not_found(
                        "SubscriptionNotFound",
                        format!("The subscription '{s}' could not be found."),
                    )
                })
        }
        ScopeKind::ResourceGroup => {
            let (s, g) = (
                sc.subscription_id().unwrap_or_default(),
                sc.resource_group().unwrap_or_default(),
            );
            st.store
                .rg_get(s, g)
                .await
                .map_err(store_err)?
                .map(|_| ())
                .ok_or_else(|| rg_not_found(g))
        }
        ScopeKind::Resource => {
            let id = sc.to_string();
            st.store
                .resource_get(&id)
                .await
                .map_err(store_err)?
                .map(|_| ())
                .ok_or_else(|| {
                    ArmError::not_found(
                        "ResourceNotFound",
                        format!("The Resource '{id}' was not found."),
                    )
                })
        }
    }
}

fn find_role<'a>(defs: &'a [RoleDefinition], guid: &str) -> Option<&'a RoleDefinition> {
    defs.iter().find(|d| d.id.eq_ignore_ascii_case(guid))
}

async fn role_assignment(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &Bytes,
) -> Res {
    if !is_guid(id) {
        return Err(ArmError::bad_request(
            "InvalidRoleAssignmentId",
            format!(
                "The role assignment ID '{}' is not valid. The role assignment ID must be a GUID.",
                id.chars().take(80).collect::<String>()
            ),
        ));
    }
    match *method {
        Method::PUT => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/roleAssignments/write",
                sc,
            )?;
            let b = parse_body(body)?;
            let p = b
                .get("properties")
                .and_then(|v| v.as_object())
                .ok_or_else(|| ArmError::invalid("'properties' is required."))?;
            let rd = p
                .get("roleDefinitionId")
                .and_then(|v| v.as_str())
                .ok_or_else(|| ArmError::invalid("'properties.roleDefinitionId' is required."))?;
            let principal = p
                .get("principalId")
                .and_then(|v| v.as_str())
                .ok_or_else(|| ArmError::invalid("'properties.principalId' is required."))?;
            let description = p
                .get("description")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            if description.len() > 2048 {
                return Err(ArmError::invalid("'properties.description' is too long."));
            }
            let guid = role_def_guid(rd).ok_or_else(|| {
                ArmError::bad_request(
                    "InvalidRoleDefinitionId",
                    format!("The role definition ID '{rd}' is not valid."),
                )
            })?;
            let defs = st.rbac.definitions();
            let def = find_role(&defs, &guid).ok_or_else(|| {
                ArmError::bad_request(
                    "RoleDefinitionDoesNotExist",
                    format!("The specified role definition with ID '{guid}' does not exist."),
                )
            })?;
            if !cloister_access::writes::assignable_at(def, sc) {
                return Err(ArmError::bad_request(
                    "InvalidRoleAssignmentScope",
                    format!(
                        "The role definition '{}' is not assignable at scope '{sc}'.",
                        def.role_name
                    ),
                ));
            }
            scope_exists(st, sc).await?;
            let (kind, _) = st
                .id
                .principal_kind(principal)
                .await
                .map_err(ArmError::from)?
                .ok_or_else(|| {
                    ArmError::bad_request(
                        "PrincipalNotFound",
                        format!(
                            "Principal {principal} does not exist in the directory {}.",
                            st.id.home_tenant
                        ),
                    )
                })?;
            let principal_type = p
                .get("principalType")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or(kind);
            let row = RoleAssignmentRow {
                id: id.to_ascii_lowercase(),
                scope: sc.to_string(),
                role_definition_id: guid.clone(),
                principal_id: principal.to_ascii_lowercase(),
                principal_type,
                description,
                created_by: caller.object_id.clone(),
                created_at: now_secs(),
            };
            // The decision again, on the role as stored in the write's own transaction (a
            // concurrent rewrite of the role cannot slip between the check and the insert).
            let snap = st.rbac.decision_snapshot()?;
            let decided = st
                .store
                .role_assignment_create_checked(&row, |stored| {
                    let role = match cloister_access::builtin_by_id(&guid) {
                        Some(b) => Some(b.clone()),
                        None => stored.and_then(|r| serde_json::from_str(&r.body).ok()),
                    };
                    cloister_access::authorize_role_assignment_write(
                        &snap,
                        &caller.object_id,
                        sc,
                        &guid,
                        role.as_ref(),
                    )
                })
                .await;
            match decided {
                Ok(Ok(())) => {}
                Ok(Err(refusal)) => return Err(st.rbac.refusal(&caller.object_id, refusal, false)),
                Err(cloister_store::StoreError::Conflict(_)) => {
                    return Err(ArmError::conflict(
                        "RoleAssignmentExists",
                        "The role assignment already exists.",
                    ));
                }
                Err(e) => return Err(store_err(e)),
            }
            st.rbac.changed().await?;
            // Committed: answer 201 even if reading it back fails.
            let stored = match st.store.role_assignment_get(id).await {
                Ok(Some(r)) => r,
                _ => row,
            };
            ok(
                StatusCode::CREATED,
                role_assignment_json(&stored, sc.subscription_id()),
            )
        }
        Method::GET => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/roleAssignments/read",
                sc,
            )?;
            // An assignment is found only through its own scope's URL: another scope's
            // assignment is not found, whatever the caller may read here.
            let a = st
                .store
                .role_assignment_get(id)
                .await
                .map_err(store_err)?
                .filter(|a| same_scope(&a.scope, sc))
                .ok_or_else(ra_not_found)?;
            ok(
                StatusCode::OK,
                role_assignment_json(&a, sc.subscription_id()),
            )
        }
        Method::DELETE => {
            let found = st
                .store
                .role_assignment_get(id)
                .await
                .map_err(store_err)?
                .filter(|a| same_scope(&a.scope, sc));
            let Some(a) = found else {
                // Not here (absent, or another scope's): as ARM, 204 to a caller who may
                // delete assignments here.
                st.rbac.authorize(
                    &caller.object_id,
                    "Microsoft.Authorization/roleAssignments/delete",
                    sc,
                )?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            let snap = st.rbac.decision_snapshot()?;
            cloister_access::authorize_role_assignment_delete(
                &snap,
                &caller.object_id,
                &crate::rbac::to_access(&a),
            )
            .map_err(|r| st.rbac.refusal(&caller.object_id, r, false))?;
            // One statement: it either deleted the row (then access is refreshed before the
            // answer) or reports that there was nothing to delete.
            let deleted = st
                .store
                .role_assignment_delete(id)
                .await
                .map_err(store_err)?;
            let Some(a) = deleted else {
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            st.rbac.changed().await?;
            ok(
                StatusCode::OK,
                role_assignment_json(&a, sc.subscription_id()),
            )
        }
        _ => Err(method_not_allowed(method)),
    }
}

/// True if the stored scope string `stored` is the scope `sc` (ignoring case).
fn same_scope(stored: &str, sc: &Scope) -> bool {
    Scope::parse(stored).is_ok_and(|s| s.canonical_str() == sc.canonical_str())
}

/// True if a role definition can be seen through the URL of scope `sc`: one of its
/// assignable scopes is `sc`, above it or below it (built-ins, assignable at `/`, are seen
/// everywhere). The same rule as the list.
fn visible_at(d: &RoleDefinition, sc: &Scope) -> bool {
    d.assignable_scopes.iter().any(|a| match Scope::parse(a) {
        Ok(asc) => asc.contains(sc) || sc.is_ancestor_of(&asc),
        Err(_) => false,
    })
}

fn ra_not_found() -> ArmError {
    ArmError::not_found(
        "RoleAssignmentNotFound",
        "The role assignment does not exist.",
    )
}

/// `$filter` values ARM accepts here: `atScope()`, `principalId eq '…'`, `assignedTo('…')`.
#[derive(Default)]
struct Filter {
    at_scope: bool,
    principal: Option<String>,
    role_name: Option<String>,
    role_type: Option<String>,
}

fn parse_filter(q: &Q) -> Result<Filter, ArmError> {
    let mut f = Filter::default();
    let Some(raw) = q.get("$filter") else {
        return Ok(f);
    };
    for part in raw.split(" and ") {
        let part = part.trim();
        let quoted = |p: &str| -> Option<String> {
            let s = p.find('\'')?;
            let e = p.rfind('\'')?;
            (e > s).then(|| p[s + 1..e].to_string())
        };
        if part.eq_ignore_ascii_case("atScope()") {
            f.at_scope = true;
        } else if part.to_ascii_lowercase().starts_with("principalid eq")
            || part.to_ascii_lowercase().starts_with("assignedto(")
        {
            f.principal = Some(quoted(part).ok_or_else(bad_filter)?);
        } else if part.to_ascii_lowercase().starts_with("rolename eq") {
            f.role_name = Some(quoted(part).ok_or_else(bad_filter)?);
        } else if part.to_ascii_lowercase().starts_with("type eq") {
            f.role_type = Some(quoted(part).ok_or_else(bad_filter)?);
        } else {
            return Err(bad_filter());
        }
    }
    Ok(f)
}

fn bad_filter() -> ArmError {
    ArmError::bad_request(
        "InvalidFilterInQueryString",
        "The $filter is not supported. Use atScope(), principalId eq '{id}', assignedTo('{id}'), roleName eq '{name}' or type eq '{type}'.",
    )
}

async fn list_role_assignments(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    q: &Q,
) -> Res {
    if *method != Method::GET {
        return Err(method_not_allowed(method));
    }
    st.rbac.authorize(
        &caller.object_id,
        "Microsoft.Authorization/roleAssignments/read",
        sc,
    )?;
    let f = parse_filter(q)?;
    let groups = match &f.principal {
        Some(p) => st.rbac.snapshot().principal_groups(p),
        None => vec![],
    };
    let mut out = vec![];
    for a in st
        .store
        .role_assignment_list_all()
        .await
        .map_err(store_err)?
    {
        let Ok(asc) = Scope::parse(&a.scope) else {
            continue;
        };
        let above_or_at = asc.canonical() == sc.canonical() || asc.is_ancestor_of(sc);
        let below = sc.is_ancestor_of(&asc);
        if !(above_or_at || (!f.at_scope && below)) {
            continue;
        }
        if let Some(p) = &f.principal
            && !a.principal_id.eq_ignore_ascii_case(p)
            && !groups
                .iter()
                .any(|g| g.eq_ignore_ascii_case(&a.principal_id))
        {
            continue;
        }
        out.push(role_assignment_json(&a, sc.subscription_id()));
    }
    ok(StatusCode::OK, json!({ "value": out }))
}

// ---- role definitions ----------------------------------------------------------------------

pub fn role_definition_json(d: &RoleDefinition, sc: &Scope) -> Value {
    let prefix = match sc.subscription_id() {
        Some(s) => format!("/subscriptions/{s}"),
        None => String::new(),
    };
    json!({
        "id": format!("{prefix}/providers/Microsoft.Authorization/roleDefinitions/{}", d.id),
        "name": d.id,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": d.role_name,
            "type": d.role_type.to_string(),
            "description": d.description,
            "assignableScopes": d.assignable_scopes,
            "permissions": d.permissions.iter().map(|p| json!({
                "actions": p.actions, "notActions": p.not_actions,
                "dataActions": p.data_actions, "notDataActions": p.not_data_actions,
            })).collect::<Vec<_>>(),
        }
    })
}

fn permissions_from(v: Option<&Value>) -> Result<Vec<Permission>, ArmError> {
    let arr = v
        .and_then(|v| v.as_array())
        .ok_or_else(|| ArmError::invalid("'properties.permissions' must be an array."))?;
    arr.iter()
        .map(|p| {
            Ok(Permission {
                actions: str_array(p.get("actions"), "actions")?,
                not_actions: str_array(p.get("notActions"), "notActions")?,
                data_actions: str_array(p.get("dataActions"), "dataActions")?,
                not_data_actions: str_array(p.get("notDataActions"), "notDataActions")?,
            })
        })
        .collect()
}

async fn role_definition(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &Bytes,
) -> Res {
    if !is_guid(id) {
        return Err(ArmError::bad_request(
            "InvalidRoleDefinitionId",
            format!(
                "The role definition ID '{}' is not a GUID.",
                id.chars().take(80).collect::<String>()
            ),
        ));
    }
    let defs = st.rbac.definitions();
    let existing = find_role(&defs, id).cloned();
    // A role whose assignable scopes are unrelated to this URL's scope is another scope's:
    // not found here (GET, DELETE), and a refused PUT does not name its scope.
    let hidden = existing.as_ref().is_some_and(|d| !visible_at(d, sc));
    match *method {
        Method::GET => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/roleDefinitions/read",
                sc,
            )?;
            let d = existing.filter(|_| !hidden).ok_or_else(|| {
                ArmError::not_found(
                    "RoleDefinitionDoesNotExist",
                    format!("The role definition '{id}' could not be found."),
                )
            })?;
            ok(StatusCode::OK, role_definition_json(&d, sc))
        }
        Method::PUT => {
            if existing
                .as_ref()
                .is_some_and(|d| d.role_type == cloister_access::RoleType::BuiltInRole)
            {
                return Err(ArmError::bad_request(
                    "RoleDefinitionIsBuiltIn",
                    "Built-in role definitions cannot be changed.",
                ));
            }
            let b = parse_body(body)?;
            let p = b
                .get("properties")
                .and_then(|v| v.as_object())
                .ok_or_else(|| ArmError::invalid("'properties' is required."))?;
            let def = RoleDefinition {
                id: id.to_ascii_lowercase(),
                role_name: p
                    .get("roleName")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
                description: p
                    .get("description")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
                role_type: cloister_access::RoleType::CustomRole,
                permissions: permissions_from(p.get("permissions"))?,
                assignable_scopes: str_array(p.get("assignableScopes"), "assignableScopes")?,
            };
            cloister_access::validate_role_definition(&def)
                .map_err(|e| ArmError::bad_request("InvalidRoleDefinition", e.to_string()))?;
            if defs.iter().any(|d| {
                d.role_name.eq_ignore_ascii_case(&def.role_name) && !d.id.eq_ignore_ascii_case(id)
            }) {
                return Err(ArmError::conflict(
                    "RoleDefinitionWithSameNameExists",
                    format!(
                        "A role definition named '{}' already exists.",
                        def.role_name
                    ),
                ));
            }
            let json =
                serde_json::to_string(&def).map_err(|e| ArmError::internal(e.to_string()))?;
            // The decision is made in the write's transaction, on the stored definition and
            // every assignment of it (see cloister_access::writes).
            let snap = st.rbac.decision_snapshot()?;
            let decided = st
                .store
                .role_definition_write(
                    id,
                    cloister_store::RoleDefinitionWrite::Upsert(&json),
                    now_secs(),
                    |old, used| {
                        let old: Option<RoleDefinition> =
                            old.and_then(|r| serde_json::from_str(&r.body).ok());
                        let used: Vec<_> = used.iter().map(crate::rbac::to_access).collect();
                        cloister_access::authorize_role_definition_write(
                            &snap,
                            &caller.object_id,
                            old.as_ref(),
                            Some(&def),
                            &used,
                        )
                    },
                )
                .await
                .map_err(store_err)?;
            let existed = decided.map_err(|r| st.rbac.refusal(&caller.object_id, r, hidden))?;
            st.rbac.changed().await?;
            ok(
                if existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                role_definition_json(&def, sc),
            )
        }
        Method::DELETE => {
            let Some(d) = existing.filter(|_| !hidden) else {
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            if d.role_type == cloister_access::RoleType::BuiltInRole {
                return Err(ArmError::bad_request(
                    "RoleDefinitionIsBuiltIn",
                    "Built-in role definitions cannot be deleted.",
                ));
            }
            let snap = st.rbac.decision_snapshot()?;
            let decided = st
                .store
                .role_definition_write(
                    id,
                    cloister_store::RoleDefinitionWrite::Delete,
                    now_secs(),
                    |old, used| {
                        let old: Option<RoleDefinition> =
                            old.and_then(|r| serde_json::from_str(&r.body).ok());
                        let used: Vec<_> = used.iter().map(crate::rbac::to_access).collect();
                        cloister_access::authorize_role_definition_write(
                            &snap,
                            &caller.object_id,
                            old.as_ref(),
                            None,
                            &used,
                        )
                    },
                )
                .await;
            match decided {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(StatusCode::NO_CONTENT.into_response()),
                Ok(Err(r)) => return Err(st.rbac.refusal(&caller.object_id, r, false)),
                Err(cloister_store::StoreError::Conflict(m)) => {
                    return Err(ArmError::conflict("RoleDefinitionHasAssignments", m));
                }
                Err(e) => return Err(store_err(e)),
            }
            st.rbac.changed().await?;
            ok(StatusCode::OK, role_definition_json(&d, sc))
        }
        _ => Err(method_not_allowed(method)),
    }
}

async fn list_role_definitions(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    q: &Q,
) -> Res {
    if *method != Method::GET {
        return Err(method_not_allowed(method));
    }
    st.rbac.authorize(
        &caller.object_id,
        "Microsoft.Authorization/roleDefinitions/read",
        sc,
    )?;
    let f = parse_filter(q)?;
    let out: Vec<Value> = st
        .rbac
        .definitions()
        .iter()
        .filter(|d| {
            f.role_name
                .as_ref()
                .is_none_or(|n| d.role_name.eq_ignore_ascii_case(n))
        })
        .filter(|d| {
            f.role_type
                .as_ref()
                .is_none_or(|t| d.role_type.to_string().eq_ignore_ascii_case(t))
        })
        .filter(|d| {
            d.assignable_scopes.iter().any(|a| match Scope::parse(a) {
                Ok(asc) => {
                    asc.canonical() == sc.canonical()
                        || asc.is_ancestor_of(sc)
                        || sc.is_ancestor_of(&asc)
                }
                Err(_) => false,
            })
        })
        .map(|d| role_definition_json(d, sc))
        .collect();
    ok(StatusCode::OK, json!({ "value": out }))
}

// ---- deny assignments ----------------------------------------------------------------------

fn deny_json(d: &DenyAssignment) -> Value {
    let prefix = if d.scope == "/" {
        String::new()
    } else {
        d.scope.clone()
    };
    json!({
        "id": format!("{prefix}/providers/Microsoft.Authorization/denyAssignments/{}", d.id),
        "name": d.id,
        "type": "Microsoft.Authorization/denyAssignments",
        "properties": {
            "denyAssignmentName": d.name,
            "scope": d.scope,
            "permissions": d.permissions.iter().map(|p| json!({
                "actions": p.actions, "notActions": p.not_actions,
                "dataActions": p.data_actions, "notDataActions": p.not_data_actions,
            })).collect::<Vec<_>>(),
            "principals": d.principals.iter().map(|p| json!({"id": p, "type": if p == "00000000-0000-0000-0000-000000000000" { "SystemDefined" } else { "Principal" }})).collect::<Vec<_>>(),
            "excludePrincipals": d.exclude_principals.iter().map(|p| json!({"id": p, "type": "Principal"})).collect::<Vec<_>>(),
            "doNotApplyToChildScopes": d.does_not_apply_to_child_scopes,
            "isSystemProtected": false,
        }
    })
}

fn principal_ids(v: Option<&Value>, field: &str) -> Result<Vec<String>, ArmError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                p.get("id")
                    .and_then(|x| x.as_str())
                    .filter(|x| is_guid(x))
                    .map(|x| x.to_ascii_lowercase())
                    .ok_or_else(|| {
                        ArmError::invalid(format!(
                            "each entry of '{field}' needs an 'id' that is a GUID."
                        ))
                    })
            })
            .collect(),
        _ => Err(ArmError::invalid(format!("'{field}' must be an array."))),
    }
}

async fn deny_assignment(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &Bytes,
) -> Res {
    if !is_guid(id) {
        return Err(ArmError::bad_request(
            "InvalidDenyAssignmentId",
            "The deny assignment ID must be a GUID.",
        ));
    }
    // Found only through its own scope's URL.
    let find = || {
        let snap = st.rbac.snapshot();
        snap.deny_assignments()
            .iter()
            .find(|d| d.id.eq_ignore_ascii_case(id) && same_scope(&d.scope, sc))
            .cloned()
    };
    match *method {
        Method::PUT => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/denyAssignments/write",
                sc,
            )?;
            let b = parse_body(body)?;
            let p = b
                .get("properties")
                .and_then(|v| v.as_object())
                .ok_or_else(|| ArmError::invalid("'properties' is required."))?;
            let d = DenyAssignment {
                id: id.to_ascii_lowercase(),
                name: p
                    .get("denyAssignmentName")
                    .and_then(|v| v.as_str())
                    .unwrap_or(id)
                    .to_string(),
                scope: sc.to_string(),
                permissions: permissions_from(p.get("permissions"))?,
                principals: principal_ids(p.get("principals"), "principals")?,
                exclude_principals: principal_ids(p.get("excludePrincipals"), "excludePrincipals")?,
                does_not_apply_to_child_scopes: p
                    .get("doNotApplyToChildScopes")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            };
            if d.principals.is_empty() {
                return Err(ArmError::invalid(
                    "'properties.principals' must name at least one principal (or Everyone: 00000000-0000-0000-0000-000000000000).",
                ));
            }
            scope_exists(st, sc).await?;
            let body = serde_json::to_string(&d).map_err(|e| ArmError::internal(e.to_string()))?;
            match st
                .store
                .deny_assignment_upsert(id, &d.scope, &body, now_secs())
                .await
            {
                Ok(()) => {}
                Err(cloister_store::StoreError::Conflict(m)) => {
                    return Err(ArmError::conflict("DenyAssignmentExists", m));
                }
                Err(e) => return Err(store_err(e)),
            }
            st.rbac.changed().await?;
            ok(StatusCode::CREATED, deny_json(&d))
        }
        Method::GET => {
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/denyAssignments/read",
                sc,
            )?;
            let d = find().ok_or_else(|| {
                ArmError::not_found(
                    "DenyAssignmentNotFound",
                    "The deny assignment does not exist.",
                )
            })?;
            ok(StatusCode::OK, deny_json(&d))
        }
        Method::DELETE => {
            let Some(d) = find() else {
                st.rbac.authorize(
                    &caller.object_id,
                    "Microsoft.Authorization/denyAssignments/delete",
                    sc,
                )?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            st.rbac.authorize(
                &caller.object_id,
                "Microsoft.Authorization/denyAssignments/delete",
                &scope(&d.scope)?,
            )?;
            st.store
                .deny_assignment_delete(id)
                .await
                .map_err(store_err)?;
            st.rbac.changed().await?;
            ok(StatusCode::OK, deny_json(&d))
        }
        _ => Err(method_not_allowed(method)),
    }
}

async fn list_deny_assignments(st: &AppState, caller: &Caller, method: &Method, sc: &Scope) -> Res {
    if *method != Method::GET {
        return Err(method_not_allowed(method));
    }
    st.rbac.authorize(
        &caller.object_id,
        "Microsoft.Authorization/denyAssignments/read",
        sc,
    )?;
    let snap = st.rbac.snapshot();
    let out: Vec<Value> = snap
        .deny_assignments()
        .iter()
        .filter(|d| match Scope::parse(&d.scope) {
            Ok(dsc) => {
                dsc.canonical() == sc.canonical()
                    || dsc.is_ancestor_of(sc)
                    || sc.is_ancestor_of(&dsc)
            }
            Err(_) => false,
        })
        .map(deny_json)
        .collect();
    ok(StatusCode::OK, json!({ "value": out }))
}

pub fn mg_json(st: &AppState, m: &ManagementGroup) -> Value {
    json!({
        "id": mg_scope(&m.name),
        "type": "Microsoft.Management/managementGroups",
        "name": m.name,
        "properties": {
            "tenantId": st.id.home_tenant,
            "displayName": m.display_name,
            "details": {"parent": m.parent.as_ref().map(|p| json!({"id": mg_scope(p), "name": p}))},
        }
    })
}

pub fn new_resource(
    id: &str,
    type_: &str,
    sub: &str,
    rg: &str,
    name: &str,
    location: &str,
) -> Resource {
    let now = now_secs();
    Resource {
        id: id.to_string(),
        type_: type_.to_string(),
        subscription_id: sub.to_string(),
        resource_group: rg.to_string(),
        name: name.to_string(),
        location: location.to_string(),
        tags: "{}".into(),
        properties: "{}".into(),
        system_principal_id: None,
        user_identities: vec![],
        created_at: now,
        updated_at: now,
        etag: String::new(),
        created_by: String::new(),
        created_by_type: String::new(),
        modified_by: String::new(),
        modified_by_type: String::new(),
    }
}

pub fn guid() -> String {
    new_guid()
}
