//! The host: routes every management request once and does the generic work of every
//! resource type — PUT (create or replace), PATCH (merge), GET, HEAD, DELETE and lists at
//! resource group, subscription and provider scope; ETags and conditional requests;
//! `systemData`; tags; the `identity` block and its lifecycle; long-running operations;
//! cascades — calling the owning [`Provider`]'s hooks where a type differs.
//!
//! The host knows no service's type. It owns ARM's own hierarchy (subscriptions and resource
//! groups, in [`crate::hierarchy`]) because every other resource lives in it.

use crate::provider::{Changed, HostOps, Platform, Provider, Request, Write};
use crate::registry::{ProviderSpec, Registry, RegistryError, Route, RouteKind};
pub use crate::wire::*;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::scope::{Scope, ScopeKind};
use cloister_store::{Expect, Removed, Resource, ServicePrincipal};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The registry and the providers behind it.
#[derive(Default)]
pub struct Host {
    pub registry: Registry,
    providers: Vec<Arc<dyn Provider>>,
}

/// A provider of plain types: the generic handling and nothing more.
struct Plain(ProviderSpec);

#[async_trait::async_trait]
impl Provider for Plain {
    fn spec(&self) -> ProviderSpec {
        self.0.clone()
    }
}

impl Host {
    /// Registers a provider and its types.
    pub fn register(&mut self, p: Arc<dyn Provider>) -> Result<(), RegistryError> {
        self.registry.register(p.spec())?;
        self.providers.push(p);
        Ok(())
    }

    /// Registers a namespace of plain types (no hooks).
    pub fn register_plain(&mut self, spec: ProviderSpec) -> Result<(), RegistryError> {
        self.register(Arc::new(Plain(spec)))
    }

    /// The provider of a namespace (case-insensitive).
    pub fn provider(&self, namespace: &str) -> Option<&Arc<dyn Provider>> {
        let i = self
            .registry
            .providers()
            .position(|p| p.namespace.eq_ignore_ascii_case(namespace))?;
        self.providers.get(i)
    }

    /// The provider owning a full type name or a resource id.
    fn owner_of(&self, type_or_id: &str) -> Option<&Arc<dyn Provider>> {
        let ns = match Scope::parse(type_or_id)
            .ok()
            .and_then(|s| s.resource_type())
        {
            Some(t) => t.split('/').next().map(str::to_string),
            None => type_or_id.split('/').next().map(str::to_string),
        }?;
        self.provider(&ns)
    }

    /// Runs every provider's [`Provider::upkeep`] (server start, daily tick); the first error
    /// is returned after all have run.
    pub async fn upkeep(&self, p: &dyn Platform) -> Result<(), ArmError> {
        let mut first = Ok(());
        for prov in &self.providers {
            if let Err(e) = prov.upkeep(p).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Every management request: the raw namespaces, ARM's hierarchy, then the registry.
    pub async fn handle(&self, p: &dyn Platform, req: &Request<'_>) -> Res {
        require_api_version(req.api_version_opt())?;
        let path = req.path;
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // A namespace that routes its own paths: the last `providers/{ns}` naming one.
        for i in (0..segs.len().saturating_sub(1)).rev() {
            if segs[i].eq_ignore_ascii_case("providers")
                && let Some(prov) = self.provider(segs[i + 1])
                && prov.claims(&segs[i + 2..])
            {
                let scope = format!("/{}", segs[..i].join("/"));
                return prov.serve_raw(p, self, &scope, &segs[i + 2..], req).await;
            }
        }
        if let Some(r) = crate::operations::serve(self, p, &segs, req).await {
            return r;
        }
        if let Some(r) = crate::hierarchy::serve(self, p, &segs, req).await {
            return r;
        }
        let route = self.registry.route(req.method, path, req.api_version())?;
        if let Some(prov) = self.provider(route.type_name.split('/').next().unwrap_or_default())
            && let Some(r) = prov.serve(p, self, &route, req).await
        {
            return r;
        }
        match &route.kind {
            RouteKind::Item => self.resource(p, &route, req).await,
            RouteKind::Collection => {
                if *req.method != Method::GET {
                    return Err(method_not_allowed(req.method));
                }
                let sc = &route.scope;
                let sub = sc.subscription_id().unwrap_or_default().to_string();
                let parent = (sc.kind() == ScopeKind::Resource).then(|| sc.to_string());
                self.list(
                    p,
                    req,
                    &sub,
                    sc.resource_group(),
                    Some(route.type_name.clone()),
                    parent.as_deref(),
                )
                .await
            }
            RouteKind::Action(_) | RouteKind::CollectionAction(_) => {
                p.authorize(&req.caller.object_id, &route.authz_action, &route.scope)?;
                let prov = self
                    .provider(route.type_name.split('/').next().unwrap_or_default())
                    .ok_or_else(|| not_found_path(path))?;
                if matches!(route.kind, RouteKind::Action(_)) && route.is_long_running(req.method) {
                    return crate::operations::action(p, prov.clone(), &route, req).await;
                }
                prov.action(p, self, &route, req).await
            }
        }
    }

    /// The JSON of a stored resource: canonical type, properties with the provider's
    /// read-only additions and `provisioningState`, tags, identity, etag, systemData.
    pub async fn resource_json(&self, p: &dyn Platform, r: &Resource) -> Value {
        let t = type_of(r);
        let spec = self.registry.resolve_type(&t).ok().map(|(_, s)| s.clone());
        let mut props: Value = serde_json::from_str(&r.properties).unwrap_or(json!({}));
        if !props.is_object() {
            props = json!({});
        }
        let is_identity = spec.as_ref().is_some_and(|s| s.identity_resource);
        if is_identity && let Ok(Some(sp)) = p.store().sp_by_mi_resource(&r.id).await {
            props["tenantId"] = json!(sp.tenant_id);
            props["principalId"] = json!(sp.id);
            props["clientId"] = json!(sp.app_id);
        }
        if let Some(prov) = self.owner_of(&t) {
            prov.decorate(p, r, &mut props).await;
        }
        if props.get("provisioningState").is_none() {
            props["provisioningState"] = json!("Succeeded");
        }
        let mut v = json!({
            "id": r.id,
            "name": r.name,
            "type": t,
            "location": r.location,
            "tags": serde_json::from_str::<Value>(&r.tags).unwrap_or(json!({})),
            "properties": props,
        });
        if !is_identity {
            v["identity"] = identity_json(p, r).await;
        }
        if !r.etag.is_empty() {
            v["etag"] = json!(r.etag);
        }
        v["systemData"] = system_data(r);
        v
    }

    /// Tells the owning providers that resources are gone and refreshes the caches a
    /// cascade touched.
    pub async fn after_removal(&self, p: &dyn Platform, removed: &Removed) -> Result<(), ArmError> {
        let mut by_owner: Vec<(usize, Vec<String>)> = vec![];
        for id in &removed.resources {
            let Some(prov) = self.owner_of(id) else {
                continue;
            };
            let i = self
                .providers
                .iter()
                .position(|x| Arc::ptr_eq(x, prov))
                .unwrap_or_default();
            match by_owner.iter_mut().find(|(j, _)| *j == i) {
                Some((_, ids)) => ids.push(id.clone()),
                None => by_owner.push((i, vec![id.clone()])),
            }
        }
        for (i, ids) in by_owner {
            self.providers[i].removed(p, &ids).await;
        }
        let principals = !removed.principals.is_empty() || removed.role_assignments > 0;
        p.changed(Changed {
            identities: true,
            principals,
            rbac: principals,
        })
        .await
    }

    /// Lists resources in a subscription, optionally one resource group, one type and one
    /// parent resource, with `$filter`, `$top` and `$skipToken`/`nextLink`; only those the
    /// caller may read.
    pub async fn list(
        &self,
        p: &dyn Platform,
        req: &Request<'_>,
        sub: &str,
        rg: Option<&str>,
        type_: Option<String>,
        parent: Option<&str>,
    ) -> Res {
        let type_ = match type_ {
            Some(t) => Some(self.registry.resolve_type(&t)?.0),
            None => None,
        };
        let filter = req.param("$filter").map(crate::filter::parse).transpose()?;
        let page = crate::paging::parse(req.query)?;
        if let Some(rg) = rg
            && p.store()
                .rg_get(sub, rg)
                .await
                .map_err(store_err)?
                .is_none()
        {
            return Err(rg_not_found(rg));
        }
        let parent_prefix = parent.map(|x| format!("{}/", x.to_ascii_lowercase()));
        let mut visible = vec![];
        for r in p
            .store()
            .resource_list(sub, rg, type_.as_deref())
            .await
            .map_err(store_err)?
        {
            let Ok(sc) = Scope::parse(&r.id) else {
                continue;
            };
            if let Some(pp) = &parent_prefix
                && !r.id.to_ascii_lowercase().starts_with(pp.as_str())
            {
                continue;
            }
            let t = type_of(&r);
            if let Some(f) = &filter {
                let tags: std::collections::BTreeMap<String, String> =
                    serde_json::from_str::<Map<String, Value>>(&r.tags)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| {
                            let v = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            (k, v)
                        })
                        .collect();
                let subject = crate::filter::Subject {
                    type_name: &t,
                    name: &r.name,
                    location: &r.location,
                    tags: &tags,
                };
                if !f.matches(&subject) {
                    continue;
                }
            }
            if p.authorize(&req.caller.object_id, &format!("{t}/read"), &sc)
                .is_ok()
            {
                visible.push(r);
            }
        }
        let (items, next) = crate::paging::page(visible, |r| r.id.to_lowercase(), &page);
        let mut out = Vec::with_capacity(items.len());
        for r in &items {
            out.push(self.resource_json(p, r).await);
        }
        let mut body = json!({ "value": out });
        if let Some(t) = next {
            body["nextLink"] = json!(crate::paging::next_link(
                &format!("{}{}", p.public_url(), req.path),
                req.query,
                &t
            ));
        }
        ok(StatusCode::OK, body)
    }

    /// GET, HEAD, PUT, PATCH and DELETE of one resource of a registered type.
    pub async fn resource(&self, p: &dyn Platform, route: &Route, req: &Request<'_>) -> Res {
        let sc = route.scope.clone();
        let t = route.type_name.clone();
        let id = route.id.clone().unwrap_or_else(|| sc.to_string());
        p.authorize(&req.caller.object_id, &route.authz_action, &sc)?;
        let header = |h: header::HeaderName| {
            req.headers
                .get(h)
                .map(|v| v.to_str().map(str::to_string))
                .transpose()
                .map_err(|_| {
                    ArmError::bad_request(
                        "InvalidCondition",
                        "The If-Match and If-None-Match headers must be visible ASCII.",
                    )
                })
        };
        let if_match = header(header::IF_MATCH)?;
        let if_none_match = header(header::IF_NONE_MATCH)?;
        let writes = matches!(*req.method, Method::PUT | Method::PATCH | Method::DELETE);
        if writes && !route.is_long_running(req.method) {
            crate::operations::ensure_idle(p, route, &id).await?;
        }
        match *req.method {
            Method::GET | Method::HEAD => {
                let r = p.store().resource_get(&id).await.map_err(store_err)?;
                match r {
                    Some(r) if *req.method == Method::GET => {
                        with_etag(StatusCode::OK, self.resource_json(p, &r).await)
                    }
                    Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                    None if *req.method == Method::HEAD => {
                        Ok(StatusCode::NOT_FOUND.into_response())
                    }
                    None => Err(not_found(&t, &sc)),
                }
            }
            Method::DELETE => {
                if if_match.is_some() || if_none_match.is_some() {
                    let cur = p.store().resource_get(&id).await.map_err(store_err)?;
                    crate::conditional::check(
                        if_match.as_deref(),
                        if_none_match.as_deref(),
                        cur.as_ref().map(|r| r.etag.as_str()),
                    )?;
                }
                if route.is_long_running(req.method)
                    && let Some(prov) = self.owner_of(&t)
                {
                    return crate::operations::delete(p, prov.clone(), route, req, &id).await;
                }
                match p.store().resource_delete(&id).await.map_err(store_err)? {
                    Some(removed) => {
                        self.after_removal(p, &removed).await?;
                        Ok(StatusCode::OK.into_response())
                    }
                    None => Ok(StatusCode::NO_CONTENT.into_response()),
                }
            }
            Method::PUT | Method::PATCH => {
                let cond = (if_match.as_deref(), if_none_match.as_deref());
                self.put(p, route, req, &id, cond).await
            }
            _ => Err(method_not_allowed(req.method)),
        }
    }

    async fn put(
        &self,
        p: &dyn Platform,
        route: &Route,
        req: &Request<'_>,
        id: &str,
        (if_match, if_none_match): (Option<&str>, Option<&str>),
    ) -> Res {
        let sc = &route.scope;
        let t = route.type_name.as_str();
        let patch = *req.method == Method::PATCH;
        let sub = sc.subscription_id().unwrap_or_default().to_string();
        let rg = sc.resource_group().unwrap_or_default().to_string();
        let name = sc.name().unwrap_or_default().to_string();
        let id = id.to_string();
        let store = p.store();
        if store.rg_get(&sub, &rg).await.map_err(store_err)?.is_none() {
            return Err(rg_not_found(&rg));
        }
        if let Some(parent) = sc.parent()
            && parent.kind() == ScopeKind::Resource
            && store
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
        let existing = store.resource_get(&id).await.map_err(store_err)?;
        crate::conditional::check(
            if_match,
            if_none_match,
            existing.as_ref().map(|r| r.etag.as_str()),
        )?;
        let b = parse_body(req.body)?;
        if patch && existing.is_none() {
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
            return Err(crate::registry::location_not_available(
                t,
                &route.spec,
                &location,
            ));
        }
        let mut r = existing
            .clone()
            .unwrap_or_else(|| new_resource(&id, t, &sub, &rg, &name, &location));
        match b.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => r.tags = Value::Object(m.clone()).to_string(),
            _ => return Err(ArmError::invalid("'tags' must be an object.")),
        }
        let wants_identity = b.get("identity").is_some_and(|v| {
            !v.is_null() && v.get("type").and_then(|x| x.as_str()) != Some("None")
        });
        if !route.spec.identity && !route.spec.identity_resource && wants_identity {
            return Err(ArmError::bad_request(
                "InvalidIdentity",
                format!("The resource type '{t}' does not support managed identities."),
            ));
        }
        let mut new_principals: Vec<ServicePrincipal> = vec![];
        let mut drop_principals: Vec<String> = vec![];
        if route.spec.identity_resource {
            if b.contains_key("identity") {
                return Err(ArmError::invalid(
                    "A user-assigned identity cannot itself have an 'identity' block.",
                ));
            }
            if existing.is_none() {
                new_principals.push(p.new_managed_identity(&id, &name));
            }
        } else if let Some(iv) = b.get("identity").filter(|v| !v.is_null()) {
            self.apply_identity(
                p,
                req,
                &mut r,
                iv,
                &name,
                &mut new_principals,
                &mut drop_principals,
            )
            .await?;
        }
        // Properties: the provider's own validation, else the generic rule.
        let w = Write {
            type_name: t,
            name: &name,
            resource: &r,
            properties: b.get("properties"),
            patch,
        };
        let owner = self.owner_of(t);
        let own = match owner {
            Some(prov) => prov.properties(p, &w).await?,
            None => None,
        };
        r.properties = match own {
            Some(v) => v.to_string(),
            None => generic_properties(&r.properties, b.get("properties"), patch)?,
        };
        r.updated_at = now_secs();
        let (by, by_type) = stamp_of(req.caller);
        if existing.is_none() {
            r.created_by = by.clone();
            r.created_by_type = by_type.to_string();
        }
        r.modified_by = by;
        r.modified_by_type = by_type.to_string();
        r.etag = crate::conditional::new_etag();
        let long_running = route.is_long_running(req.method) && owner.is_some();
        let op = if long_running {
            set_provisioning_state(&mut r, crate::lro::State::Accepted);
            let kind = crate::operations::write_kind(existing.is_none());
            Some(crate::operations::claim(p, route, req, &id, &r.location, kind).await?)
        } else {
            None
        };
        // The condition is checked again by the write itself, so a concurrent writer that
        // changed the resource after the check above cannot be overwritten.
        let expect = match (&existing, if_match, if_none_match) {
            (None, _, _) if if_none_match.is_some() => Expect::Absent,
            (Some(e), Some(_), _) => Expect::Etag(&e.etag),
            (Some(e), None, Some(_)) => Expect::Etag(&e.etag),
            _ => Expect::Any,
        };
        let written = match store
            .resource_put_if(&r, &new_principals, &drop_principals, expect)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                let e = store_err(e);
                if let Some(op) = &op {
                    crate::operations::abandon(p, op, &e).await;
                }
                return Err(e);
            }
        };
        if !written {
            let e = ArmError::new(
                412,
                "PreconditionFailed",
                "The resource was changed by another request; read it again and retry.",
            );
            if let Some(op) = &op {
                crate::operations::abandon(p, op, &e).await;
            }
            return Err(e);
        }
        p.changed(Changed {
            identities: true,
            principals: false,
            rbac: !drop_principals.is_empty(),
        })
        .await?;
        let stored = store
            .resource_get(&id)
            .await
            .map_err(store_err)?
            .unwrap_or(r);
        if let Some(prov) = owner {
            prov.written(p, &stored, existing.is_none()).await;
        }
        let status = if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let body = self.resource_json(p, &stored).await;
        if let (Some(op), Some(prov)) = (op, owner) {
            return crate::operations::start(
                p,
                prov.clone(),
                op,
                &stored,
                route,
                req,
                status,
                body,
            )
            .await;
        }
        with_etag(status, body)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_identity(
        &self,
        p: &dyn Platform,
        req: &Request<'_>,
        r: &mut Resource,
        iv: &Value,
        name: &str,
        new_principals: &mut Vec<ServicePrincipal>,
        drop_principals: &mut Vec<String>,
    ) -> Result<(), ArmError> {
        let (system, users) = parse_identity(iv)?;
        match (system, &r.system_principal_id) {
            (true, None) => {
                let sp = p.new_managed_identity(&r.id, name);
                r.system_principal_id = Some(sp.id.clone());
                new_principals.push(sp);
            }
            (false, Some(x)) => {
                drop_principals.push(x.clone());
                r.system_principal_id = None;
            }
            _ => {}
        }
        let mut canonical: Vec<String> = vec![];
        for u in &users {
            let usc = scope(u)?;
            let ua_type = usc
                .resource_type()
                .filter(|_| usc.kind() == ScopeKind::Resource)
                .and_then(|x| self.registry.resolve_type(&x).ok())
                .filter(|(_, s)| s.identity_resource)
                .map(|(n, _)| n);
            let Some(ua_type) = ua_type else {
                return Err(ArmError::bad_request(
                    "InvalidUserAssignedIdentity",
                    format!("'{u}' is not a user-assigned identity resource id."),
                ));
            };
            let ua = p
                .store()
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
                p.authorize(
                    &req.caller.object_id,
                    &format!("{ua_type}/assign/action"),
                    &usc,
                )
                .map_err(|e| ArmError::new(403, "LinkedAuthorizationFailed", e.message))?;
            }
            if !canonical.iter().any(|x| x.eq_ignore_ascii_case(&ua.id)) {
                canonical.push(ua.id.clone());
            }
        }
        r.user_identities = canonical;
        Ok(())
    }
}

/// The generic rule for `properties`: an object; PATCH merges into the current ones; the
/// read-only fields a caller may echo back are dropped.
fn generic_properties(
    current: &str,
    props: Option<&Value>,
    patch: bool,
) -> Result<String, ArmError> {
    match props {
        None | Some(Value::Null) => Ok(current.to_string()),
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            for k in ["provisioningState", "principalId", "clientId", "tenantId"] {
                m.remove(k);
            }
            if patch {
                let mut cur: Map<String, Value> = serde_json::from_str(current).unwrap_or_default();
                cur.extend(m);
                Ok(Value::Object(cur).to_string())
            } else {
                Ok(Value::Object(m).to_string())
            }
        }
        _ => Err(ArmError::invalid("'properties' must be an object.")),
    }
}

/// ARM's `systemData` of a resource (the who is empty for rows written before it was kept).
fn system_data(r: &Resource) -> Value {
    use crate::system_data::{ByType, Stamp, system_data};
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

async fn identity_json(p: &dyn Platform, r: &Resource) -> Value {
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
    if let Some(x) = &r.system_principal_id {
        v["principalId"] = json!(x);
        v["tenantId"] = json!(p.home_tenant());
    }
    if !r.user_identities.is_empty() {
        let mut m = Map::new();
        for ua in &r.user_identities {
            let (pid, cid) = match p.store().sp_by_mi_resource(ua).await {
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

#[async_trait::async_trait]
impl HostOps for Host {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    async fn resource_json(&self, p: &dyn Platform, r: &Resource) -> Value {
        Host::resource_json(self, p, r).await
    }
    async fn after_removal(&self, p: &dyn Platform, removed: &Removed) -> Result<(), ArmError> {
        Host::after_removal(self, p, removed).await
    }
    async fn list(
        &self,
        p: &dyn Platform,
        req: &Request<'_>,
        sub: &str,
        rg: Option<&str>,
        type_: Option<String>,
        parent: Option<&str>,
    ) -> Res {
        Host::list(self, p, req, sub, rg, type_, parent).await
    }
}

/// Who a caller is, for `systemData`: a user by object id, an application (or managed
/// identity) by its client id.
pub fn stamp_of(caller: &crate::provider::Caller) -> (String, &'static str) {
    if caller.idtyp.eq_ignore_ascii_case("user") {
        (caller.object_id.clone(), "User")
    } else {
        (caller.app_id.clone(), "Application")
    }
}

/// That a scope exists: the root, a management group, a subscription, a resource group or a
/// resource.
pub async fn scope_exists(p: &dyn Platform, sc: &Scope) -> Result<(), ArmError> {
    let store = p.store();
    match sc.kind() {
        ScopeKind::Root => Ok(()),
        ScopeKind::ManagementGroup => {
            let name = sc.management_group().unwrap_or_default();
            store
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
            store
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
            store
                .rg_get(s, g)
                .await
                .map_err(store_err)?
                .map(|_| ())
                .ok_or_else(|| rg_not_found(g))
        }
        ScopeKind::Resource => {
            let id = sc.to_string();
            store
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
