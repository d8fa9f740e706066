//! ARM's own hierarchy, which every other resource lives in: subscriptions
//! (`Microsoft.Resources/subscriptions`, and `Microsoft.Subscription/aliases` that create
//! them), resource groups, the resource lists of a subscription and a group, and management
//! groups (`Microsoft.Management/managementGroups`). Authorized like every request: one call
//! with the action of the operation.

use crate::provider::{Changed, HostOps, Platform, Provider, Request, Res};
use crate::registry::{Level, ProviderSpec, TypeSpec};
use crate::wire::{
    method_not_allowed, not_found_path, ok, parse_body, rg_id, rg_not_found, scope, store_err,
};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::new_guid;
use cloister_core::scope::ScopeKind;
use cloister_store::{ManagementGroup, ResourceGroup, Subscription};
use serde_json::{Value, json};

/// The scope of a management group.
pub fn mg_scope(name: &str) -> String {
    format!("/providers/Microsoft.Management/managementGroups/{name}")
}

const RBAC: Changed = Changed {
    identities: false,
    principals: false,
    rbac: true,
};

/// `Microsoft.Management`: management groups (tenant level).
pub struct ManagementGroups;

/// `Microsoft.Subscription`: subscription aliases (tenant level).
pub struct Aliases;

#[async_trait::async_trait]
impl Provider for ManagementGroups {
    fn spec(&self) -> ProviderSpec {
        ProviderSpec::new("Microsoft.Management")
            .routes_itself()
            .with_type(TypeSpec::new("managementGroups", &["*"]).level(Level::Tenant))
            .with_type(TypeSpec::new("managementGroups/subscriptions", &["*"]).level(Level::Tenant))
    }
    fn claims(&self, _tail: &[&str]) -> bool {
        true
    }
    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        scope_prefix: &str,
        _tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        if scope_prefix != "/" {
            return Err(not_found_path(req.path));
        }
        management_groups(p, req).await
    }
}

#[async_trait::async_trait]
impl Provider for Aliases {
    fn spec(&self) -> ProviderSpec {
        ProviderSpec::new("Microsoft.Subscription")
            .routes_itself()
            .with_type(TypeSpec::new("aliases", &["*"]).level(Level::Tenant))
    }
    fn claims(&self, _tail: &[&str]) -> bool {
        true
    }
    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        scope_prefix: &str,
        _tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        if scope_prefix != "/" {
            return Err(not_found_path(req.path));
        }
        alias(p, req).await
    }
}

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

async fn management_groups(p: &dyn Platform, req: &Request<'_>) -> Res {
    let (caller, method, path, body) = (req.caller, req.method, req.path, req.body);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // providers / Microsoft.Management / managementGroups [/ name [/ subscriptions / id]]
    match segs.len() {
        3 => {
            if *method != Method::GET {
                return Err(method_not_allowed(method));
            }
            let mut out = vec![];
            for m in p.store().mg_list().await.map_err(store_err)? {
                if p.authorize(
                    &caller.object_id,
                    "Microsoft.Management/managementGroups/read",
                    &scope(&mg_scope(&m.name))?,
                )
                .is_ok()
                {
                    out.push(mg_json(p, &m));
                }
            }
            ok(StatusCode::OK, json!({ "value": out }))
        }
        4 => {
            let name = segs[3];
            valid_name(name, "management group")?;
            let sc = scope(&mg_scope(name))?;
            let existing = p.store().mg_get(name).await.map_err(store_err)?;
            match *method {
                Method::GET => {
                    p.authorize(
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
                    ok(StatusCode::OK, mg_json(p, &m))
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
                            let pname = psc.management_group().unwrap_or_default().to_string();
                            if p.store().mg_get(&pname).await.map_err(store_err)?.is_none() {
                                return Err(ArmError::bad_request(
                                    "ParentManagementGroupNotFound",
                                    format!("The parent management group '{pname}' was not found."),
                                ));
                            }
                            // No cycles: walk up from the parent.
                            let mut cur = Some(pname.clone());
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
                                cur = p
                                    .store()
                                    .mg_get(&c)
                                    .await
                                    .map_err(store_err)?
                                    .and_then(|m| m.parent);
                            }
                            Some(pname)
                        }
                        None => None,
                    };
                    // Creating under a parent needs write on the parent (or root); updating needs write on the group.
                    let auth_scope = match (&existing, &parent) {
                        (Some(_), _) => sc.clone(),
                        (None, Some(p)) => scope(&mg_scope(p))?,
                        (None, None) => scope("/")?,
                    };
                    p.authorize(
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
                    p.store().mg_upsert(&m).await.map_err(store_err)?;
                    p.changed(RBAC).await?;
                    ok(
                        if existing.is_some() {
                            StatusCode::OK
                        } else {
                            StatusCode::CREATED
                        },
                        mg_json(p, &m),
                    )
                }
                Method::DELETE => {
                    p.authorize(
                        &caller.object_id,
                        "Microsoft.Management/managementGroups/delete",
                        &sc,
                    )?;
                    match p.store().mg_delete(name).await {
                        Ok(true) => {
                            p.changed(RBAC).await?;
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
            if p.store().mg_get(name).await.map_err(store_err)?.is_none() {
                return Err(ArmError::not_found(
                    "ManagementGroupNotFound",
                    format!("The management group '{name}' was not found."),
                ));
            }
            let mut sub = p
                .store()
                .subscription_get(sub_id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    ArmError::not_found(
                        "SubscriptionNotFound",
                        format!("The subscription '{sub_id}' could not be found."),
                    )
                })?;
            p.authorize(
                &caller.object_id,
                "Microsoft.Management/managementGroups/subscriptions/write",
                &sc,
            )?;
            p.authorize(
                &caller.object_id,
                "Microsoft.Management/managementGroups/subscriptions/write",
                &scope(&format!("/subscriptions/{}", sub.id))?,
            )?;
            match *method {
                Method::PUT => sub.management_group = Some(name.to_string()),
                Method::DELETE => sub.management_group = None,
                _ => return Err(method_not_allowed(method)),
            }
            p.store()
                .subscription_upsert(&sub)
                .await
                .map_err(store_err)?;
            p.changed(RBAC).await?;
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

async fn alias(p: &dyn Platform, req: &Request<'_>) -> Res {
    let (caller, method, path, body) = (req.caller, req.method, req.path, req.body);
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
            p.authorize(
                &caller.object_id,
                "Microsoft.Subscription/aliases/read",
                &scope("/")?,
            )?;
            let sub = p
                .store()
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
            p.authorize(
                &caller.object_id,
                "Microsoft.Subscription/aliases/write",
                &scope("/")?,
            )?;
            if let Some(sub) = p.store().meta_get(&key).await.map_err(store_err)? {
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
                tenant_id: p.home_tenant(),
                management_group: None,
                created_at: now_secs(),
            };
            if !p
                .store()
                .meta_insert_if_absent(&key, &sub.id)
                .await
                .map_err(store_err)?
            {
                let existing = p
                    .store()
                    .meta_get(&key)
                    .await
                    .map_err(store_err)?
                    .unwrap_or_default();
                return ok(StatusCode::OK, body_of(&existing));
            }
            p.store()
                .subscription_upsert(&sub)
                .await
                .map_err(store_err)?;
            p.changed(RBAC).await?;
            ok(StatusCode::CREATED, body_of(&sub.id))
        }
        _ => Err(method_not_allowed(method)),
    }
}

/// `GET /subscriptions`: the subscriptions the caller may read.
pub async fn list_subscriptions(p: &dyn Platform, caller: &crate::provider::Caller) -> Res {
    let mut out = vec![];
    for s in p.store().subscription_list().await.map_err(store_err)? {
        let sc = scope(&format!("/subscriptions/{}", s.id))?;
        if p.authorize(
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

/// A registered provider as ARM's Providers API shows it (`az provider show`), with each
/// type's level and actions as extra fields.
fn provider_json(sub: &str, ps: &ProviderSpec) -> Value {
    let types: Vec<Value> = ps
        .types
        .iter()
        .map(|t| {
            json!({
                "resourceType": t.path,
                "locations": t.locations,
                "apiVersions": t.api_versions,
                "capabilities": "None",
                "level": match t.level {
                    Level::ResourceGroup => "ResourceGroup",
                    Level::Subscription => "Subscription",
                    Level::Tenant => "Tenant",
                    Level::Extension => "Extension",
                },
                "actions": t.actions,
                "collectionActions": t.collection_actions,
            })
        })
        .collect();
    json!({
        "id": format!("/subscriptions/{sub}/providers/{}", ps.namespace),
        "namespace": ps.namespace,
        "registrationState": "Registered",
        "registrationPolicy": "RegistrationRequired",
        "resourceTypes": types,
    })
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
    host: &dyn HostOps,
    p: &dyn Platform,
    req: &Request<'_>,
    sub: &Subscription,
    name: &str,
) -> Res {
    let (caller, method, body) = (req.caller, req.method, req.body);
    let id = rg_id(&sub.id, name);
    let sc = scope(&id)?;
    let act = |a: &str| {
        p.authorize(
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
            let created = p.store().rg_upsert(&g).await.map_err(store_err)?;
            let g = p
                .store()
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
            match p.store().rg_get(&sub.id, name).await.map_err(store_err)? {
                Some(g) if *method == Method::GET => ok(StatusCode::OK, rg_json(&g)),
                Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                None if *method == Method::HEAD => Ok(StatusCode::NOT_FOUND.into_response()),
                None => Err(rg_not_found(name)),
            }
        }
        Method::DELETE => {
            act("delete")?;
            match p
                .store()
                .rg_delete(&sub.id, name)
                .await
                .map_err(store_err)?
            {
                Some(removed) => {
                    host.after_removal(p, &removed).await?;
                    Ok(StatusCode::OK.into_response())
                }
                None => Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
        _ => Err(method_not_allowed(method)),
    }
}

fn mg_json(p: &dyn Platform, m: &ManagementGroup) -> Value {
    json!({
        "id": mg_scope(&m.name),
        "type": "Microsoft.Management/managementGroups",
        "name": m.name,
        "properties": {
            "tenantId": p.home_tenant(),
            "displayName": m.display_name,
            "details": {"parent": m.parent.as_ref().map(|p| json!({"id": mg_scope(p), "name": p}))},
        }
    })
}

/// The paths of the hierarchy under `/subscriptions/{id}`: the subscription, its resource
/// groups, and the resource lists of a subscription, a group and a type. `None` for a path
/// below a provider (the registry's).
pub async fn serve(
    host: &dyn HostOps,
    p: &dyn Platform,
    segs: &[&str],
    req: &Request<'_>,
) -> Option<Res> {
    if !segs
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("subscriptions"))
    {
        return Some(Err(not_found_path(req.path)));
    }
    if segs.len() < 2 {
        return Some(Err(not_found_path(req.path)));
    }
    let lc = |i: usize| segs.get(i).map(|s| s.to_ascii_lowercase());
    // A resource (or a collection of a type) below a provider is the registry's, once the
    // subscription is known to exist.
    let below_provider = match (segs.len(), lc(2).as_deref()) {
        (n, Some("resourcegroups")) if n >= 6 && lc(4).as_deref() == Some("providers") => true,
        (n, Some("providers")) if n >= 5 => true,
        _ => false,
    };
    let sub_id = segs[1];
    let sub = match p.store().subscription_get(sub_id).await {
        Err(e) => return Some(Err(store_err(e))),
        Ok(None) => {
            return Some(Err(ArmError::not_found(
                "SubscriptionNotFound",
                format!("The subscription '{sub_id}' could not be found."),
            )));
        }
        Ok(Some(s)) => s,
    };
    if below_provider {
        return None;
    }
    let method = req.method;
    let r = async {
        match (segs.len(), lc(2).as_deref()) {
            (2, _) => {
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                p.authorize(
                    &req.caller.object_id,
                    "Microsoft.Resources/subscriptions/read",
                    &scope(req.path)?,
                )?;
                ok(StatusCode::OK, subscription_json(&sub))
            }
            (3, Some("resourcegroups")) => {
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                let mut out = vec![];
                for g in p.store().rg_list(&sub.id).await.map_err(store_err)? {
                    let sc = scope(&rg_id(&sub.id, &g.name))?;
                    if p.authorize(
                        &req.caller.object_id,
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
            (3, Some("resources")) => host.list(p, req, &sub.id, None, None, None).await,
            (3, Some("providers")) | (4, Some("providers")) => {
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                p.authorize(
                    &req.caller.object_id,
                    "Microsoft.Resources/subscriptions/providers/read",
                    &scope(&format!("/subscriptions/{}", sub.id))?,
                )?;
                let all: Vec<Value> = host
                    .registry()
                    .providers()
                    .map(|ps| provider_json(&sub.id, ps))
                    .collect();
                match segs.get(3) {
                    None => ok(StatusCode::OK, json!({ "value": all })),
                    Some(ns) => host
                        .registry()
                        .provider(ns)
                        .map(|ps| ok(StatusCode::OK, provider_json(&sub.id, ps)))
                        .unwrap_or_else(|| {
                            Err(ArmError::not_found(
                                "InvalidResourceNamespace",
                                format!(
                                    "The resource namespace '{}' is invalid.",
                                    ns.chars().take(100).collect::<String>()
                                ),
                            ))
                        }),
                }
            }
            (4, Some("resourcegroups")) => resource_group(host, p, req, &sub, segs[3]).await,
            (5, Some("resourcegroups")) if lc(4).as_deref() == Some("resources") => {
                host.list(p, req, &sub.id, Some(segs[3]), None, None).await
            }
            _ => Err(not_found_path(req.path)),
        }
    };
    Some(r.await)
}

/// The hierarchy's operations in the OpenAPI document (its namespaces route themselves).
pub fn ops() -> Vec<crate::openapi::Op> {
    use crate::openapi::Op;
    vec![
        Op::arm(
            "get",
            "/subscriptions",
            "ARM",
            "List subscriptions the caller can read",
        ),
        Op::arm(
            "get",
            "/subscriptions/{subscriptionId}",
            "ARM",
            "Get a subscription",
        ),
        Op::arm(
            "get",
            "/subscriptions/{subscriptionId}/resourcegroups",
            "ARM",
            "List resource groups",
        ),
        Op::arm(
            "put",
            "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
            "ARM",
            "Create or update a resource group",
        ),
        Op::arm(
            "get",
            "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
            "ARM",
            "Get a resource group",
        ),
        Op::arm(
            "delete",
            "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}",
            "ARM",
            "Delete a resource group with its resources, their identities and role assignments",
        ),
        Op::arm(
            "get",
            "/providers/Microsoft.Management/managementGroups",
            "ARM",
            "List management groups",
        ),
        Op::arm(
            "put",
            "/providers/Microsoft.Management/managementGroups/{groupId}",
            "ARM",
            "Create or update a management group (properties.details.parent.id)",
        ),
        Op::arm(
            "get",
            "/providers/Microsoft.Management/managementGroups/{groupId}",
            "ARM",
            "Get a management group",
        ),
        Op::arm(
            "delete",
            "/providers/Microsoft.Management/managementGroups/{groupId}",
            "ARM",
            "Delete an empty management group",
        ),
        Op::arm(
            "put",
            "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}",
            "ARM",
            "Move a subscription under a management group",
        ),
        Op::arm(
            "delete",
            "/providers/Microsoft.Management/managementGroups/{groupId}/subscriptions/{subscriptionId}",
            "ARM",
            "Move a subscription back to the root",
        ),
        Op::arm(
            "put",
            "/providers/Microsoft.Subscription/aliases/{aliasName}",
            "ARM",
            "Create a subscription",
        ),
        Op::arm(
            "get",
            "/providers/Microsoft.Subscription/aliases/{aliasName}",
            "ARM",
            "Get a subscription alias",
        ),
        Op::arm(
            "get",
            "/subscriptions/{subscriptionId}/providers",
            "ARM",
            "List the registered resource providers, their types, api-versions and locations",
        ),
        Op::arm(
            "get",
            "/subscriptions/{subscriptionId}/providers/{resourceProviderNamespace}",
            "ARM",
            "Get a registered resource provider",
        ),
    ]
}
