//! `Microsoft.Authorization`: role assignments, role definitions and deny assignments at any
//! scope (an extension provider), served from the store and checked by the RBAC engine.

use crate::engine::{Rbac, to_access};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use cloister_access::{DenyAssignment, Permission, RoleDefinition};
use cloister_arm::host::{
    method_not_allowed, not_found_path, ok, parse_body, scope, scope_exists, store_err,
};
use cloister_arm::provider::{Caller, HostOps, Platform, Provider, Request, Res};
use cloister_arm::registry::{Level, ProviderSpec, TypeSpec};
use cloister_core::clock::{format_rfc3339, now_secs};
use cloister_core::error::ArmError;
use cloister_core::is_guid;
use cloister_core::scope::Scope;
use cloister_store::RoleAssignmentRow;
use serde_json::{Value, json};
use std::sync::Arc;

type Q = std::collections::BTreeMap<String, String>;

/// The `Microsoft.Authorization` provider.
pub struct Authorization {
    pub rbac: Arc<Rbac>,
}

#[async_trait::async_trait]
impl Provider for Authorization {
    fn spec(&self) -> ProviderSpec {
        let ext = |t: &str| TypeSpec::new(t, &["*"]).level(Level::Extension);
        ProviderSpec::new("Microsoft.Authorization")
            .routes_itself()
            .with_type(ext("roleAssignments"))
            .with_type(ext("roleDefinitions"))
            .with_type(ext("denyAssignments"))
    }

    fn claims(&self, _tail: &[&str]) -> bool {
        true
    }

    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        scope_str: &str,
        tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        let st = &Ctx {
            p,
            rbac: &self.rbac,
        };
        let sc = scope(scope_str)?;
        let (caller, method, body, q) = (req.caller, req.method, req.body, req.query);
        match (
            tail.first().map(|s| s.to_ascii_lowercase()).as_deref(),
            tail.get(1),
            tail.len(),
        ) {
            (Some("roleassignments"), None, 1) => {
                list_role_assignments(st, caller, method, &sc, q).await
            }
            (Some("roleassignments"), Some(id), 2) => {
                role_assignment(st, caller, method, &sc, id, body).await
            }
            (Some("roledefinitions"), None, 1) => {
                list_role_definitions(st, caller, method, &sc, q).await
            }
            (Some("roledefinitions"), Some(id), 2) => {
                role_definition(st, caller, method, &sc, id, body).await
            }
            (Some("denyassignments"), None, 1) => {
                list_deny_assignments(st, caller, method, &sc).await
            }
            (Some("denyassignments"), Some(id), 2) => {
                deny_assignment(st, caller, method, &sc, id, body).await
            }
            _ => Err(not_found_path(req.path)),
        }
    }
}

/// What the handlers use: the platform (store, tenant) and the RBAC engine.
struct Ctx<'a> {
    p: &'a dyn Platform,
    rbac: &'a Rbac,
}

impl Ctx<'_> {
    fn home_tenant(&self) -> String {
        self.p.home_tenant()
    }
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
fn find_role<'a>(defs: &'a [RoleDefinition], guid: &str) -> Option<&'a RoleDefinition> {
    defs.iter().find(|d| d.id.eq_ignore_ascii_case(guid))
}

async fn role_assignment(
    st: &Ctx<'_>,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &[u8],
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
            scope_exists(st.p, sc).await?;
            let (kind, _) = st.p.principal_kind(principal).await?.ok_or_else(|| {
                ArmError::bad_request(
                    "PrincipalNotFound",
                    format!(
                        "Principal {principal} does not exist in the directory {}.",
                        st.home_tenant()
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
            let decided =
                st.p.store()
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
            let stored = match st.p.store().role_assignment_get(id).await {
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
            let a =
                st.p.store()
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
            let found =
                st.p.store()
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
                &to_access(&a),
            )
            .map_err(|r| st.rbac.refusal(&caller.object_id, r, false))?;
            // One statement: it either deleted the row (then access is refreshed before the
            // answer) or reports that there was nothing to delete.
            let deleted =
                st.p.store()
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
    st: &Ctx<'_>,
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
    for a in
        st.p.store()
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
    st: &Ctx<'_>,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &[u8],
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
            let decided =
                st.p.store()
                    .role_definition_write(
                        id,
                        cloister_store::RoleDefinitionWrite::Upsert(&json),
                        now_secs(),
                        |old, used| {
                            let old: Option<RoleDefinition> =
                                old.and_then(|r| serde_json::from_str(&r.body).ok());
                            let used: Vec<_> = used.iter().map(to_access).collect();
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
            let decided =
                st.p.store()
                    .role_definition_write(
                        id,
                        cloister_store::RoleDefinitionWrite::Delete,
                        now_secs(),
                        |old, used| {
                            let old: Option<RoleDefinition> =
                                old.and_then(|r| serde_json::from_str(&r.body).ok());
                            let used: Vec<_> = used.iter().map(to_access).collect();
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
    st: &Ctx<'_>,
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
    st: &Ctx<'_>,
    caller: &Caller,
    method: &Method,
    sc: &Scope,
    id: &str,
    body: &[u8],
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
            scope_exists(st.p, sc).await?;
            let body = serde_json::to_string(&d).map_err(|e| ArmError::internal(e.to_string()))?;
            match st
                .p
                .store()
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
            st.p.store()
                .deny_assignment_delete(id)
                .await
                .map_err(store_err)?;
            st.rbac.changed().await?;
            ok(StatusCode::OK, deny_json(&d))
        }
        _ => Err(method_not_allowed(method)),
    }
}

async fn list_deny_assignments(st: &Ctx<'_>, caller: &Caller, method: &Method, sc: &Scope) -> Res {
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

/// `Microsoft.Authorization`'s operations in the OpenAPI document (the provider routes them
/// itself).
pub fn ops() -> Vec<cloister_arm::openapi::Op> {
    use cloister_arm::openapi::Op;
    vec![
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/roleAssignments",
            "RBAC",
            "List role assignments at, above and below a scope ($filter=atScope() | principalId eq '…' | assignedTo('…'))",
        ),
        Op::arm(
            "put",
            "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
            "RBAC",
            "Create a role assignment",
        ),
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
            "RBAC",
            "Get a role assignment",
        ),
        Op::arm(
            "delete",
            "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}",
            "RBAC",
            "Delete a role assignment",
        ),
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/roleDefinitions",
            "RBAC",
            "List role definitions ($filter=roleName eq '…' | type eq 'CustomRole')",
        ),
        Op::arm(
            "put",
            "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
            "RBAC",
            "Create or update a custom role",
        ),
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
            "RBAC",
            "Get a role definition",
        ),
        Op::arm(
            "delete",
            "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}",
            "RBAC",
            "Delete a custom role (refused while assigned)",
        ),
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/denyAssignments",
            "RBAC",
            "List deny assignments",
        ),
        Op::arm(
            "put",
            "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
            "RBAC",
            "Create a deny assignment (Cloister extension)",
        ),
        Op::arm(
            "get",
            "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
            "RBAC",
            "Get a deny assignment",
        ),
        Op::arm(
            "delete",
            "/{scope}/providers/Microsoft.Authorization/denyAssignments/{denyAssignmentId}",
            "RBAC",
            "Delete a deny assignment",
        ),
    ]
}
