//! The credential manager's resource providers.
//!
//! [`ApiManagement`] owns `Microsoft.ApiManagement`. A service instance
//! (`…/providers/Microsoft.ApiManagement/service/{name}`) is a plain ARM resource handled by
//! the framework's generic path (with an `identity` block); this provider adds its
//! read-only `gatewayUrl` and, when an instance is deleted (directly or by a cascade), deletes
//! the credential items, tokens and pending logins below it. The instance's children live in
//! the credential store, not in the resource table, and are served here, in API Management's
//! shape: `authorizationProviders/{id}`, `…/authorizations/{id}` (+ the `getLoginLinks` and
//! `confirmConsentCode` actions), `…/accessPolicies/{id}`, and `apis/{id}` for the gateway's
//! proxy. ETags on every write; `If-Match` required on DELETE; `$filter`, `$top`, `$skip`,
//! `nextLink` on lists; secrets are write-only.
//!
//! [`KeyRing`] owns `Cloister.Credentials`: the tenant-level `keys` collection (GET: the
//! vault's key ring) and its `rotate` action (a new key version; every data key re-wrapped).

use crate::manager::Credentials;
use crate::model::{
    self, Connection, Grant, MAX_CONNECTIONS, MAX_POLICIES, MAX_PROVIDERS, Provider as Settings,
};
use crate::runtime::ConnRef;
use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloister_arm::host::{method_not_allowed, not_found_path, ok, store_err};
use cloister_arm::provider::{HostOps, Platform, Provider, Request, Res};
use cloister_arm::registry::{Level, ProviderSpec, Route, RouteKind, TypeSpec};
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::{CredItem, Resource, Store};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub const NAMESPACE: &str = "Microsoft.ApiManagement";
pub const SERVICE_TYPE: &str = "Microsoft.ApiManagement/service";
const PROVIDERS_T: &str = "Microsoft.ApiManagement/service/authorizationProviders";
const CONNECTIONS_T: &str = "Microsoft.ApiManagement/service/authorizationProviders/authorizations";
const POLICIES_T: &str =
    "Microsoft.ApiManagement/service/authorizationProviders/authorizations/accessPolicies";
const APIS_T: &str = "Microsoft.ApiManagement/service/apis";

/// `Microsoft.ApiManagement`: the service instance, and the credential manager's children of
/// it (authorization providers, their authorizations with the consent actions, access
/// policies, and the gateway's APIs).
pub fn api_management_spec() -> ProviderSpec {
    let any = &["*"];
    ProviderSpec::new(NAMESPACE)
        .with_type(TypeSpec::new("service", any).with_identity())
        .with_type(TypeSpec::new("service/apis", any))
        .with_type(TypeSpec::new("service/authorizationProviders", any))
        .with_type(
            TypeSpec::new("service/authorizationProviders/authorizations", any)
                .action("getLoginLinks")
                .action("confirmConsentCode"),
        )
        .with_type(TypeSpec::new(
            "service/authorizationProviders/authorizations/accessPolicies",
            any,
        ))
}

/// `Cloister.Credentials`: the tenant-level key ring of the credential vault.
pub fn key_ring_spec() -> ProviderSpec {
    ProviderSpec::new("Cloister.Credentials")
        .routes_itself()
        .with_type(
            TypeSpec::new("keys", &["*"])
                .level(Level::Tenant)
                .collection_action("rotate"),
        )
}

/// The provider of `Microsoft.ApiManagement`.
pub struct ApiManagement {
    pub cm: Arc<Credentials>,
}

/// The provider of `Cloister.Credentials` (the vault's key ring).
pub struct KeyRing {
    pub cm: Arc<Credentials>,
}

fn is_service(id: &str) -> bool {
    Scope::parse(id)
        .ok()
        .and_then(|s| s.resource_type())
        .is_some_and(|t| t.eq_ignore_ascii_case(SERVICE_TYPE))
}

#[async_trait]
impl Provider for ApiManagement {
    fn spec(&self) -> ProviderSpec {
        crate::openapi::describe(api_management_spec())
    }

    async fn serve(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        route: &Route,
        req: &Request<'_>,
    ) -> Option<Res> {
        // The instance itself is a plain resource; actions go through the host's
        // authorization to `action` below.
        if route.type_name == SERVICE_TYPE || matches!(route.kind, RouteKind::Action(_)) {
            return None;
        }
        Some(self.child(p, route, req).await)
    }

    async fn decorate(&self, _p: &dyn Platform, r: &Resource, props: &mut Value) {
        if is_service(&r.id) {
            props["gatewayUrl"] = json!(self.cm.gateway_url(&r.id));
        }
    }

    /// A created instance is served by the gateway at once (on this node; others follow as
    /// their caches expire).
    async fn written(&self, _p: &dyn Platform, r: &Resource, created: bool) {
        if created && is_service(&r.id) {
            self.cm.invalidate();
        }
    }

    async fn removed(&self, p: &dyn Platform, ids: &[String]) {
        let mut any = false;
        for id in ids.iter().filter(|id| is_service(id)) {
            if let Err(e) = p.store().cred_delete_instance(id).await {
                tracing::warn!("deleting the credential items of a removed instance: {e}");
            }
            any = true;
        }
        if any {
            self.cm.invalidate();
        }
    }

    async fn action(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        route: &Route,
        req: &Request<'_>,
    ) -> Res {
        let RouteKind::Action(a) = &route.kind else {
            return Err(not_found_path(req.path));
        };
        let at = At::of(p.store(), route).await?;
        let conn_id = at.item_id();
        let provider_id = parent_of(&conn_id);
        match a.as_str() {
            "getLoginLinks" => {
                crate::consent::login_link(&self.cm, &at.inst, &provider_id, &conn_id, req.body)
                    .await
            }
            "confirmConsentCode" => {
                crate::consent::confirm_consent_code(&self.cm, &conn_id, req.body).await
            }
            _ => Err(not_found_path(req.path)),
        }
    }
}

/// The key ring routes its two paths itself ([`Provider::claims`]): they are operations on the vault, not
/// resources; the spec still declares them (a tenant-level `keys` type with a `rotate`
/// collection action) so the registry lists what exists.
#[async_trait]
impl Provider for KeyRing {
    fn spec(&self) -> ProviderSpec {
        key_ring_spec()
    }

    fn claims(&self, _tail: &[&str]) -> bool {
        true
    }

    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &dyn HostOps,
        scope: &str,
        tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        let lc: Vec<String> = tail.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lc: Vec<&str> = lc.iter().map(String::as_str).collect();
        if scope != "/" {
            return Err(not_found_path(req.path));
        }
        let root = Scope::root();
        let who = &req.caller.object_id;
        match (req.method.clone(), lc.as_slice()) {
            (Method::POST, ["keys", "rotate"]) => {
                p.authorize(who, "Cloister.Credentials/keys/rotate/action", &root)?;
                let report = self
                    .cm
                    .rotate()
                    .await
                    .map_err(|e| ArmError::internal(format!("key rotation: {e}")))?;
                ok(StatusCode::OK, report)
            }
            (Method::GET, ["keys"]) => {
                p.authorize(who, "Cloister.Credentials/keys/read", &root)?;
                ok(StatusCode::OK, self.cm.key_status().await)
            }
            (_, ["keys"] | ["keys", "rotate"]) => Err(method_not_allowed(req.method)),
            _ => Err(not_found_path(req.path)),
        }
    }
}

/// Where a request below a service instance points: the stored instance, and the (type,
/// name) pairs below it (registered type names, the caller's names).
struct At {
    inst: Resource,
    below: Vec<(String, String)>,
}

impl At {
    /// The instance of a routed child item, action or collection (its scope is the item, or
    /// the collection's parent); `ParentResourceNotFound` when there is none.
    async fn of(store: &Store, route: &Route) -> Result<At, ArmError> {
        let sc = &route.scope;
        let path = sc.resource_path();
        let (Some(sub), Some(rg), Some((_, name))) =
            (sc.subscription_id(), sc.resource_group(), path.first())
        else {
            return Err(not_found_path(&sc.to_string()));
        };
        let instance_id = format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/{NAMESPACE}/service/{name}"
        );
        let inst = store
            .resource_get(&instance_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ArmError::not_found(
                    "ParentResourceNotFound",
                    format!("The service instance '{instance_id}' was not found."),
                )
            })?;
        Ok(At {
            inst,
            below: path[1..].to_vec(),
        })
    }

    /// The id of the item (or of the collection's parent) under the stored instance's id.
    fn item_id(&self) -> String {
        let mut id = self.inst.id.clone();
        for (t, n) in &self.below {
            id.push('/');
            id.push_str(t);
            id.push('/');
            id.push_str(n);
        }
        id
    }
}

/// An id without its last `/{type}/{name}`.
fn parent_of(id: &str) -> String {
    let mut it = id.rsplitn(3, '/');
    it.next();
    it.next();
    it.next().unwrap_or_default().to_string()
}

impl ApiManagement {
    /// A child item or collection of a service instance, from the credential store.
    async fn child(&self, p: &dyn Platform, route: &Route, req: &Request<'_>) -> Res {
        p.authorize(&req.caller.object_id, &route.authz_action, &route.scope)?;
        let cm = &*self.cm;
        let kind = match route.type_name.as_str() {
            PROVIDERS_T => "provider",
            CONNECTIONS_T => "connection",
            POLICIES_T => "policy",
            APIS_T => "api",
            _ => return Err(not_found_path(req.path)),
        };
        let at = At::of(&cm.store, route).await?;
        let inst_lc = at.inst.id.to_lowercase();
        let method = req.method;
        match route.kind {
            RouteKind::Collection => {
                if *method != Method::GET {
                    return Err(method_not_allowed(method));
                }
                let parent = at.item_id();
                match kind {
                    "connection" => drop(require(&cm.store, &parent, "provider").await?),
                    "policy" => drop(require(&cm.store, &parent, "connection").await?),
                    _ => {}
                }
                let items = cm
                    .store
                    .cred_children(&parent, kind)
                    .await
                    .map_err(store_err)?;
                let segment = route.type_name.rsplit('/').next().unwrap_or_default();
                list(
                    &cm.public_url,
                    items,
                    &query_pairs(req.raw_query),
                    &format!("{parent}/{segment}"),
                )
            }
            RouteKind::Item => {
                let id = at.item_id();
                let parent = parent_of(&id);
                let name = at.below.last().map(|(_, n)| n.as_str()).unwrap_or_default();
                let headers = req.headers;
                let body = &req.body[..];
                match *method {
                    Method::GET => get_item(&cm.store, &id, kind).await,
                    Method::PUT => {
                        valid_name(name)?;
                        match kind {
                            "provider" => {
                                let tenant = p.home_tenant();
                                put_provider(cm, headers, &at.inst, &tenant, &id, name, body).await
                            }
                            "connection" => {
                                put_connection(cm, headers, &inst_lc, &parent, &id, name, body)
                                    .await
                            }
                            "policy" => {
                                put_policy(cm, headers, &inst_lc, &parent, &id, name, body).await
                            }
                            _ => put_api(cm, headers, &inst_lc, &id, name, body).await,
                        }
                    }
                    Method::DELETE => delete_item(cm, headers, &id, kind).await,
                    _ => Err(method_not_allowed(method)),
                }
            }
            _ => Err(not_found_path(req.path)),
        }
    }
}

// ---- the credential store's items, in API Management's shape ------------------------------

fn new_etag() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn with_etag(mut r: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// `If-Match` without quotes or a weak prefix.
fn if_match(h: &HeaderMap) -> Option<String> {
    h.get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

fn precondition_failed() -> ArmError {
    ArmError::new(
        412,
        "PreconditionFailed",
        "The If-Match header does not match the entity's current ETag; read it again and retry.",
    )
}

fn item_type(kind: &str) -> &'static str {
    match kind {
        "provider" => "Microsoft.ApiManagement/service/authorizationProviders",
        "connection" => "Microsoft.ApiManagement/service/authorizationProviders/authorizations",
        "policy" => {
            "Microsoft.ApiManagement/service/authorizationProviders/authorizations/accessPolicies"
        }
        _ => "Microsoft.ApiManagement/service/apis",
    }
}

fn item_json(it: &CredItem) -> Value {
    json!({
        "id": it.id,
        "type": item_type(&it.kind),
        "name": it.name,
        "properties": serde_json::from_str::<Value>(&it.properties).unwrap_or(json!({})),
    })
}

fn valid_name(n: &str) -> Result<(), ArmError> {
    let ok = !n.is_empty()
        && n.len() <= 256
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ArmError::bad_request(
            "InvalidResourceName",
            format!("'{n}' is not a valid name: use up to 256 letters, digits, '-', '_' and '.'."),
        ))
    }
}

/// Parses the query string (raw) into pairs.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn q<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(k))
        .map(|(_, v)| v.as_str())
}

/// One `$filter` clause: `field op 'value'` or `fn(field, 'value')`.
#[derive(Debug)]
struct Clause {
    field: String,
    op: String,
    value: String,
}

fn parse_filter(f: &str) -> Result<Vec<Clause>, ArmError> {
    let bad = |m: &str| ArmError::bad_request("InvalidFilter", format!("$filter: {m} ('{f}')."));
    let mut out = vec![];
    for part in split_and(f) {
        let p = part.trim();
        if let Some(open) = p.find('(') {
            let func = p[..open].trim().to_ascii_lowercase();
            let args = p[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| bad("missing ')'"))?;
            let (a, b) = args
                .split_once(',')
                .ok_or_else(|| bad("a function takes two arguments"))?;
            let (a, b) = (a.trim(), b.trim());
            let (field, value) = if func == "substringof" {
                (b, a)
            } else {
                (a, b)
            };
            let value = unquote(value).ok_or_else(|| bad("values are quoted strings"))?;
            if !["contains", "startswith", "endswith", "substringof"].contains(&func.as_str()) {
                return Err(bad(
                    "functions are contains, startswith, endswith and substringof",
                ));
            }
            let op = if func == "substringof" {
                "contains".to_string()
            } else {
                func
            };
            out.push(Clause {
                field: field.to_string(),
                op,
                value,
            });
        } else {
            let mut it = p.splitn(3, ' ');
            let (field, op, value) = (
                it.next().unwrap_or(""),
                it.next().unwrap_or("").to_ascii_lowercase(),
                it.next().unwrap_or(""),
            );
            if !["eq", "ne", "gt", "ge", "lt", "le"].contains(&op.as_str()) {
                return Err(bad("operators are eq, ne, gt, ge, lt and le"));
            }
            let value = unquote(value.trim()).ok_or_else(|| bad("values are quoted strings"))?;
            out.push(Clause {
                field: field.to_string(),
                op,
                value,
            });
        }
    }
    for c in &out {
        let f = c.field.trim().to_ascii_lowercase();
        if !["name", "displayname", "properties/displayname"].contains(&f.as_str()) {
            return Err(bad("filter on name or displayName"));
        }
    }
    Ok(out)
}

fn split_and(f: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_q = false;
    let words: Vec<&str> = f.split(' ').collect();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if !in_q && w.eq_ignore_ascii_case("and") {
            out.push(std::mem::take(&mut cur));
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(w);
            in_q ^= w.matches('\'').count() % 2 == 1;
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(v: &str) -> Option<String> {
    let v = v.trim();
    v.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .map(|x| x.replace("''", "'"))
}

fn matches(it: &CredItem, cs: &[Clause]) -> bool {
    let props: Value = serde_json::from_str(&it.properties).unwrap_or(json!({}));
    cs.iter().all(|c| {
        let f = c.field.trim().to_ascii_lowercase();
        let have = if f == "name" {
            it.name.clone()
        } else {
            props["displayName"].as_str().unwrap_or("").to_string()
        };
        let (h, v) = (have.to_lowercase(), c.value.to_lowercase());
        match c.op.as_str() {
            "eq" => h == v,
            "ne" => h != v,
            "gt" => h > v,
            "ge" => h >= v,
            "lt" => h < v,
            "le" => h <= v,
            "contains" => h.contains(&v),
            "startswith" => h.starts_with(&v),
            "endswith" => h.ends_with(&v),
            _ => false,
        }
    })
}

fn list(public_url: &str, items: Vec<CredItem>, pairs: &[(String, String)], path: &str) -> Res {
    let filter = match q(pairs, "$filter") {
        Some(f) if !f.trim().is_empty() => parse_filter(f)?,
        _ => vec![],
    };
    let num = |k: &str, default: usize| -> Result<usize, ArmError> {
        match q(pairs, k) {
            None | Some("") => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ArmError::bad_request(
                    "InvalidParameter",
                    format!("'{k}' must be a non-negative integer."),
                )
            }),
        }
    };
    let top = num("$top", 100)?.clamp(1, 1000);
    let skip = num("$skip", 0)?;
    let all: Vec<&CredItem> = items.iter().filter(|i| matches(i, &filter)).collect();
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|i| item_json(i))
        .collect();
    let mut v = json!({"value": page, "count": all.len()});
    if skip + top < all.len() {
        let mut next: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip") && !k.eq_ignore_ascii_case("$top"))
            .cloned()
            .collect();
        next.push(("$top".into(), top.to_string()));
        next.push(("$skip".into(), (skip + top).to_string()));
        let qs: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        v["nextLink"] = json!(format!("{public_url}{path}?{qs}"));
    }
    Ok(json_resp(StatusCode::OK, v))
}

async fn require(store: &Store, id: &str, kind: &str) -> Result<CredItem, ArmError> {
    match store.cred_get(id).await.map_err(store_err)? {
        Some(it) if it.kind == kind => Ok(it),
        _ => Err(ArmError::not_found(
            "ResourceNotFound",
            format!("'{id}' was not found."),
        )),
    }
}

async fn get_item(store: &Store, id: &str, kind: &str) -> Res {
    let it = require(store, id, kind).await?;
    Ok(with_etag(
        json_resp(StatusCode::OK, item_json(&it)),
        &it.etag,
    ))
}

fn parse_body(body: &[u8]) -> Result<Value, ArmError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ArmError::bad_request(
            "InvalidRequestContent",
            format!("The request body is not valid JSON: {e}."),
        )
    })?;
    if !v.is_object() {
        return Err(ArmError::bad_request(
            "InvalidRequestContent",
            "The request body must be a JSON object.",
        ));
    }
    Ok(v)
}

fn limit_err(e: cloister_store::StoreError, what: &str, max: i64) -> ArmError {
    match e {
        cloister_store::StoreError::Conflict(_) => ArmError::conflict(
            "QuotaExceeded",
            format!("At most {max} {what} are allowed; delete one first."),
        ),
        other => store_err(other),
    }
}

/// Writes an item honouring `If-Match`; returns (status, etag).
async fn write(
    store: &Store,
    headers: &HeaderMap,
    it: CredItem,
    existing: &Option<CredItem>,
    limit: i64,
    what: &str,
) -> Result<(StatusCode, CredItem), ArmError> {
    let im = if_match(headers);
    let ok = store
        .cred_put(&it, im.as_deref(), Some(limit))
        .await
        .map_err(|e| limit_err(e, what, limit))?;
    if !ok {
        return Err(precondition_failed());
    }
    Ok((
        if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        it,
    ))
}

fn new_item(
    id: &str,
    kind: &str,
    parent: &str,
    inst_lc: &str,
    name: &str,
    props: Value,
    existing: &Option<CredItem>,
) -> CredItem {
    let now = now_secs();
    CredItem {
        id: existing
            .as_ref()
            .map(|e| e.id.clone())
            .unwrap_or_else(|| id.to_string()),
        kind: kind.into(),
        parent_lc: parent.to_lowercase(),
        instance_lc: inst_lc.to_string(),
        name: name.to_string(),
        properties: props.to_string(),
        etag: new_etag(),
        created_at: existing.as_ref().map(|e| e.created_at).unwrap_or(now),
        updated_at: now,
    }
}

pub(crate) fn conn_ref(
    inst_lc: &str,
    provider: &CredItem,
    conn_lc: &str,
    conn_props: &Value,
) -> Option<ConnRef> {
    let p = Settings::from_properties(&serde_json::from_str(&provider.properties).ok()?)?;
    Some(ConnRef {
        instance_lc: inst_lc.to_string(),
        provider_lc: provider.id.to_lowercase(),
        connection_lc: conn_lc.to_lowercase(),
        provider: p,
        parameters: conn_props["parameters"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    })
}

async fn put_provider(
    cm: &Credentials,
    headers: &HeaderMap,
    inst: &Resource,
    home_tenant: &str,
    id: &str,
    name: &str,
    body: &[u8],
) -> Res {
    let b = parse_body(body)?;
    let inst_lc = inst.id.to_lowercase();
    let existing = cm.store.cred_get(id).await.map_err(store_err)?;
    let (p, secret) = model::parse_provider(&b["properties"], &cm.public_url, home_tenant)
        .map_err(|m| ArmError::bad_request("ValidationError", m))?;
    if existing.is_none() && secret.is_none() {
        return Err(ArmError::bad_request(
            "ValidationError",
            "The grant parameters need 'clientSecret' when a provider is created.",
        ));
    }
    if let Some(e) = &existing
        && let Some(old) =
            Settings::from_properties(&serde_json::from_str(&e.properties).unwrap_or(json!({})))
        && old.grant != p.grant
    {
        return Err(ArmError::bad_request(
            "ValidationError",
            "A provider's grant type cannot change; delete it and create a new one.",
        ));
    }
    let props = p.to_properties(&cm.redirect_url(&inst.id));
    let it = new_item(id, "provider", &inst_lc, &inst_lc, name, props, &existing);
    // The secret first: a provider never exists without one.
    if let Some(s) = &secret {
        let c = ConnRef {
            instance_lc: inst_lc.clone(),
            provider_lc: id.to_lowercase(),
            connection_lc: String::new(),
            provider: p.clone(),
            parameters: Map::new(),
        };
        cm.runtime
            .put_client_secret(&c, true, s)
            .await
            .map_err(|e| ArmError::internal(e.to_string()))?;
    }
    let (status, it) = write(
        &cm.store,
        headers,
        it,
        &existing,
        MAX_PROVIDERS,
        "credential providers per instance",
    )
    .await?;
    cm.invalidate();
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

#[allow(clippy::too_many_arguments)]
async fn put_connection(
    cm: &Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    parent: &str,
    id: &str,
    name: &str,
    body: &[u8],
) -> Res {
    let b = parse_body(body)?;
    let provider = require(&cm.store, parent, "provider").await?;
    let p =
        Settings::from_properties(&serde_json::from_str(&provider.properties).unwrap_or(json!({})))
            .ok_or_else(|| ArmError::internal("The provider's stored settings are unreadable."))?;
    let existing = cm.store.cred_get(id).await.map_err(store_err)?;
    let (c, secret): (Connection, Option<String>) =
        model::parse_connection(&b["properties"], p.grant)
            .map_err(|m| ArmError::bad_request("ValidationError", m))?;
    let props = match p.grant {
        Grant::AuthorizationCode => {
            // Keep a connected connection connected across an update of its parameters.
            match existing
                .as_ref()
                .and_then(|e| serde_json::from_str::<Value>(&e.properties).ok())
            {
                Some(old) if old["status"] == "Connected" => {
                    model::connection_properties(&c, "Connected", None)
                }
                _ => model::connection_properties(
                    &c,
                    "Error",
                    Some(("Unauthenticated", "This connection is not authenticated.")),
                ),
            }
        }
        Grant::ClientCredentials => model::connection_properties(
            &c,
            "Error",
            Some(("Unauthenticated", "No token has been obtained yet.")),
        ),
    };
    let it = new_item(
        id,
        "connection",
        parent,
        inst_lc,
        name,
        props.clone(),
        &existing,
    );
    let conn = conn_ref(inst_lc, &provider, id, &props)
        .ok_or_else(|| ArmError::internal("provider settings"))?;
    if let Some(s) = &secret {
        cm.runtime
            .put_client_secret(&conn, false, s)
            .await
            .map_err(|e| ArmError::internal(e.to_string()))?;
    }
    let (status, mut it) = write(
        &cm.store,
        headers,
        it,
        &existing,
        MAX_CONNECTIONS,
        "connections per provider",
    )
    .await?;
    cm.invalidate();
    if p.grant == Grant::ClientCredentials {
        // Fetch the first token now, so a wrong secret or URL shows at once in `status`.
        let (status_s, err) = match cm.runtime.connect(&conn).await {
            Ok(()) => ("Connected", None),
            Err(e) => (
                "Error",
                Some(("TokenRequestFailed".to_string(), e.to_string())),
            ),
        };
        let props = model::connection_properties(
            &c,
            status_s,
            err.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        it.properties = props.to_string();
        it.etag = new_etag();
        cm.store
            .cred_set_properties(&it.id, &it.properties, &it.etag, now_secs())
            .await
            .map_err(store_err)?;
    }
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

#[allow(clippy::too_many_arguments)]
async fn put_policy(
    cm: &Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    parent: &str,
    id: &str,
    name: &str,
    body: &[u8],
) -> Res {
    let b = parse_body(body)?;
    require(&cm.store, parent, "connection").await?;
    let p = model::parse_policy(&b["properties"])
        .map_err(|m| ArmError::bad_request("ValidationError", m))?;
    let existing = cm.store.cred_get(id).await.map_err(store_err)?;
    let it = new_item(
        id,
        "policy",
        parent,
        inst_lc,
        name,
        p.to_properties(),
        &existing,
    );
    let (status, it) = write(
        &cm.store,
        headers,
        it,
        &existing,
        MAX_POLICIES,
        "access policies per connection",
    )
    .await?;
    cm.invalidate();
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

async fn put_api(
    cm: &Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    id: &str,
    name: &str,
    body: &[u8],
) -> Res {
    let b = parse_body(body)?;
    let props = b["properties"].as_object().cloned().unwrap_or_default();
    let path = props
        .get("path")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    let service_url = props
        .get("serviceUrl")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    if path.is_empty()
        || path.contains("..")
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(ArmError::bad_request(
            "ValidationError",
            "'properties.path' is required: letters, digits, '-', '_', '.', '/'.",
        ));
    }
    if !(service_url.starts_with("http://") || service_url.starts_with("https://")) {
        return Err(ArmError::bad_request(
            "ValidationError",
            "'properties.serviceUrl' must be an absolute http(s) URL.",
        ));
    }
    let pol = props.get("authorizationPolicy").and_then(|v| v.as_object()).ok_or_else(|| {
        ArmError::bad_request(
            "ValidationError",
            "'properties.authorizationPolicy' {providerId, authorizationId, identityType} names the connection whose token is attached.",
        )
    })?;
    let g = |k: &str| {
        pol.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (provider_id, authorization_id) = (g("providerId"), g("authorizationId"));
    let identity_type = match g("identityType").to_ascii_lowercase().as_str() {
        "" | "managed" => "managed",
        "jwt" => "jwt",
        other => {
            return Err(ArmError::bad_request(
                "ValidationError",
                format!("identityType must be managed or jwt; got '{other}'."),
            ));
        }
    };
    if provider_id.is_empty() || authorization_id.is_empty() {
        return Err(ArmError::bad_request(
            "ValidationError",
            "authorizationPolicy needs providerId and authorizationId.",
        ));
    }
    let existing = cm.store.cred_get(id).await.map_err(store_err)?;
    for other in cm
        .store
        .cred_children(inst_lc, "api")
        .await
        .map_err(store_err)?
    {
        let op: Value = serde_json::from_str(&other.properties).unwrap_or(json!({}));
        if !other.id.eq_ignore_ascii_case(id) && op["path"].as_str() == Some(path.as_str()) {
            return Err(ArmError::conflict(
                "Conflict",
                format!("API '{}' already uses path '{path}'.", other.name),
            ));
        }
    }
    let stored = json!({
        "path": path,
        "serviceUrl": service_url,
        "displayName": props.get("displayName").and_then(|v| v.as_str()).unwrap_or(name),
        "authorizationPolicy": {"providerId": provider_id, "authorizationId": authorization_id, "identityType": identity_type},
    });
    let it = new_item(id, "api", inst_lc, inst_lc, name, stored, &existing);
    let (status, it) = write(&cm.store, headers, it, &existing, 1000, "APIs per instance").await?;
    cm.invalidate();
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

async fn delete_item(cm: &Credentials, headers: &HeaderMap, id: &str, kind: &str) -> Res {
    let Some(m) = if_match(headers) else {
        return Err(ArmError::new(
            428,
            "PreconditionRequired",
            "DELETE needs an If-Match header: the entity's ETag, or * to delete whatever version is there.",
        ));
    };
    match cm.store.cred_get(id).await.map_err(store_err)? {
        Some(it) if it.kind == kind => {}
        _ => return Ok(StatusCode::NO_CONTENT.into_response()),
    }
    match cm.store.cred_delete(id, &m).await.map_err(store_err)? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(false) => Err(precondition_failed()),
        Some(true) => {
            if kind == "provider" || kind == "connection" {
                let _ = cm.vault.delete_owner_tree(&id.to_lowercase()).await;
            }
            cm.invalidate();
            cm.runtime.forget(&id.to_lowercase());
            Ok(StatusCode::OK.into_response())
        }
    }
}
