//! The credential manager's management API, in API Management's shape, under a service
//! instance (`…/providers/Microsoft.ApiManagement/service/{name}`):
//! `authorizationProviders/{id}`, `…/authorizations/{id}` (+ `getLoginLinks`,
//! `confirmConsentCode`), `…/accessPolicies/{id}`, and `apis/{id}` for the gateway's proxy.
//! ETags on every write; `If-Match` required on DELETE; `$filter`, `$top`, `$skip`,
//! `nextLink` on lists; secrets are write-only.

use crate::arm::{scope, store_err};
use crate::state::AppState;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloister_arm::host::{Host, method_not_allowed, not_found_path};
use cloister_arm::provider::Caller;
use cloister_arm::provider::{Platform, Request};
use cloister_arm::registry::ProviderSpec;
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_credentials::model::{
    self, Connection, Grant, MAX_CONNECTIONS, MAX_POLICIES, MAX_PROVIDERS, Provider,
};
use cloister_credentials::runtime::ConnRef;
use cloister_store::CredItem;
use serde_json::{Map, Value, json};
use std::sync::{Arc, OnceLock, Weak};

type Res = Result<Response, ArmError>;

/// The credential manager's providers (`Microsoft.ApiManagement`, `Cloister.Credentials`),
/// attached to the server state once it exists.
#[derive(Default)]
pub struct CredentialManager {
    st: OnceLock<Weak<AppState>>,
}

impl CredentialManager {
    pub fn attach(&self, st: &Arc<AppState>) {
        let _ = self.st.set(Arc::downgrade(st));
    }

    fn state(&self) -> Result<Arc<AppState>, ArmError> {
        self.st.get().and_then(Weak::upgrade).ok_or_else(|| {
            ArmError::new(
                503,
                "ServiceUnavailable",
                "The server is starting or stopping.",
            )
        })
    }

    /// The `Cloister.Credentials` provider (the key ring) sharing this state.
    pub fn keys(self: &Arc<Self>) -> Arc<CredentialKeys> {
        Arc::new(CredentialKeys(self.clone()))
    }
}

#[async_trait::async_trait]
impl cloister_arm::provider::Provider for CredentialManager {
    fn spec(&self) -> ProviderSpec {
        cloister_credentials::provider::arm_provider()
    }

    /// Everything below a service instance is the credential store's.
    fn claims(&self, tail: &[&str]) -> bool {
        tail.len() > 2
    }

    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &Host,
        scope_prefix: &str,
        tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        let st = self.state()?;
        let sc = scope(scope_prefix)?;
        let (Some(sub), Some(rg)) = (sc.subscription_id(), sc.resource_group()) else {
            return Err(not_found_path(req.path));
        };
        if !tail[0].eq_ignore_ascii_case("service") {
            return Err(not_found_path(req.path));
        }
        let sub = p
            .store()
            .subscription_get(sub)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ArmError::not_found(
                    "SubscriptionNotFound",
                    format!("The subscription '{sub}' could not be found."),
                )
            })?;
        let instance = format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.ApiManagement/service/{}",
            sub.id, tail[1]
        );
        handle(
            &st,
            req.caller,
            req.method,
            req.headers,
            &instance,
            &tail[2..],
            req.raw_query,
            req.body,
        )
        .await
    }

    async fn decorate(&self, _p: &dyn Platform, r: &cloister_store::Resource, props: &mut Value) {
        if let Ok(st) = self.state()
            && cloister_arm::host::type_of(r).eq_ignore_ascii_case(SERVICE_TYPE)
        {
            props["gatewayUrl"] = json!(gateway_url(&st, &r.id));
        }
    }

    async fn removed(&self, p: &dyn Platform, ids: &[String]) {
        for r in ids {
            if r.to_ascii_lowercase()
                .contains("/providers/microsoft.apimanagement/service/")
            {
                let _ = p.store().cred_delete_instance(r).await;
            }
        }
        if let Ok(st) = self.state()
            && let Some(cm) = &st.credentials
        {
            cm.invalidate();
        }
    }
}

/// `Cloister.Credentials`: the key ring of the credential store (`keys`, `keys/rotate`).
pub struct CredentialKeys(Arc<CredentialManager>);

#[async_trait::async_trait]
impl cloister_arm::provider::Provider for CredentialKeys {
    fn spec(&self) -> ProviderSpec {
        use cloister_arm::registry::{Level, TypeSpec};
        ProviderSpec::new("Cloister.Credentials").with_type(
            TypeSpec::new("keys", &["*"])
                .level(Level::Tenant)
                .collection_action("rotate"),
        )
    }

    fn claims(&self, _tail: &[&str]) -> bool {
        true
    }

    async fn serve_raw(
        &self,
        p: &dyn Platform,
        _host: &Host,
        scope_prefix: &str,
        tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        let st = self.0.state()?;
        if scope_prefix != "/" {
            return Err(not_found_path(req.path));
        }
        let root = scope("/")?;
        let lc: Vec<String> = tail.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lc.iter().map(String::as_str).collect();
        let unavailable = || {
            ArmError::new(
                503,
                "ServiceUnavailable",
                "The credential manager is not running.",
            )
        };
        match (req.method.clone(), l.as_slice()) {
            (Method::POST, ["keys", "rotate"]) => {
                p.authorize(
                    &req.caller.object_id,
                    "Cloister.Credentials/keys/rotate/action",
                    &root,
                )?;
                let cm = st.credentials.as_ref().ok_or_else(unavailable)?;
                let report = crate::credentials::rotate(cm)
                    .await
                    .map_err(|e| ArmError::internal(format!("key rotation: {e}")))?;
                Ok(json_resp(StatusCode::OK, report))
            }
            (Method::GET, ["keys"]) => {
                p.authorize(
                    &req.caller.object_id,
                    "Cloister.Credentials/keys/read",
                    &root,
                )?;
                let cm = st.credentials.as_ref().ok_or_else(unavailable)?;
                Ok(json_resp(
                    StatusCode::OK,
                    crate::credentials::key_status(cm).await,
                ))
            }
            _ => Err(not_found_path(req.path)),
        }
    }
}

pub const SERVICE_TYPE: &str = "Microsoft.ApiManagement/service";
const PROVIDERS: &str = "authorizationProviders";
const CONNECTIONS: &str = "authorizations";
const POLICIES: &str = "accessPolicies";

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

/// The gateway and redirect URLs of an instance.
pub fn gateway_url(st: &AppState, instance_id: &str) -> String {
    let p: Vec<&str> = instance_id.trim_matches('/').split('/').collect();
    format!(
        "{}/gateway/subscriptions/{}/resourceGroups/{}/service/{}",
        st.cfg.public_url(),
        p.get(1).unwrap_or(&""),
        p.get(3).unwrap_or(&""),
        p.last().unwrap_or(&"")
    )
}

pub fn redirect_url(st: &AppState, instance_id: &str) -> String {
    let p: Vec<&str> = instance_id.trim_matches('/').split('/').collect();
    format!(
        "{}/credential-manager/redirect/{}/{}/{}",
        st.cfg.public_url(),
        p.get(1).unwrap_or(&""),
        p.get(3).unwrap_or(&""),
        p.last().unwrap_or(&"")
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

fn list(st: &AppState, items: Vec<CredItem>, pairs: &[(String, String)], path: &str) -> Res {
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
        v["nextLink"] = json!(format!("{}{path}?{qs}", st.cfg.public_url()));
    }
    Ok(json_resp(StatusCode::OK, v))
}

/// Routes `…/service/{name}/…` below the instance. `segs` are the path segments after the
/// instance id.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    st: &AppState,
    caller: &Caller,
    method: &Method,
    headers: &HeaderMap,
    instance_id: &str,
    segs: &[&str],
    raw_query: Option<&str>,
    body: &Bytes,
) -> Res {
    let Some(cm) = &st.credentials else {
        return Err(ArmError::new(
            503,
            "ServiceUnavailable",
            "The credential manager is not running.",
        ));
    };
    let inst = st
        .store
        .resource_get(instance_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| {
            ArmError::not_found(
                "ParentResourceNotFound",
                format!("The service instance '{instance_id}' was not found."),
            )
        })?;
    let instance_id = inst.id.clone();
    let inst_lc = instance_id.to_lowercase();
    let pairs = query_pairs(raw_query);
    let lc: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lc.iter().map(String::as_str).collect();
    let full_path = format!("{instance_id}/{}", segs.join("/"));
    let sc = scope(&full_path).or_else(|_| scope(&instance_id))?;
    let act = |a: &str| st.rbac.authorize(&caller.object_id, a, &sc);
    const CONN_ACTIONS: &str =
        "Microsoft.ApiManagement/service/authorizationProviders/authorizations";
    let provider_id = |i: usize| format!("{instance_id}/{PROVIDERS}/{}", segs[i]);
    let connection_id = |i: usize| format!("{}/{CONNECTIONS}/{}", provider_id(i), segs[i + 2]);
    // Connection actions first; then every kind is a collection with items, by path shape:
    // (kind, its parent's id, the parent's kind if it must exist, the item name, its actions).
    let (kind, parent, parent_kind, name, actions) = match l.as_slice() {
        [
            "authorizationproviders",
            _,
            "authorizations",
            _,
            "getloginlinks",
        ] if method == Method::POST => {
            act(&format!("{CONN_ACTIONS}/getLoginLinks/action"))?;
            return crate::gateway::login_link(st, &inst, &provider_id(1), &connection_id(1), body)
                .await;
        }
        [
            "authorizationproviders",
            _,
            "authorizations",
            _,
            "confirmconsentcode",
        ] if method == Method::POST => {
            act(&format!("{CONN_ACTIONS}/confirmConsentCode/action"))?;
            return crate::gateway::confirm_consent_code(st, &connection_id(1), body).await;
        }
        ["authorizationproviders", rest @ ..] if rest.len() <= 1 => (
            "provider",
            instance_id.clone(),
            None,
            rest.first().map(|_| segs[1]),
            "Microsoft.ApiManagement/service/authorizationProviders".to_string(),
        ),
        ["authorizationproviders", _, "authorizations", rest @ ..] if rest.len() <= 1 => (
            "connection",
            provider_id(1),
            Some("provider"),
            rest.first().map(|_| segs[3]),
            CONN_ACTIONS.to_string(),
        ),
        [
            "authorizationproviders",
            _,
            "authorizations",
            _,
            "accesspolicies",
            rest @ ..,
        ] if rest.len() <= 1 => (
            "policy",
            connection_id(1),
            Some("connection"),
            rest.first().map(|_| segs[5]),
            format!("{CONN_ACTIONS}/accessPolicies"),
        ),
        ["apis", rest @ ..] if rest.len() <= 1 => (
            "api",
            instance_id.clone(),
            None,
            rest.first().map(|_| segs[1]),
            "Microsoft.ApiManagement/service/apis".to_string(),
        ),
        _ => return Err(not_found_path(&full_path)),
    };
    let Some(name) = name else {
        if method != Method::GET {
            return Err(method_not_allowed(method));
        }
        act(&format!("{actions}/read"))?;
        if let Some(pk) = parent_kind {
            require(st, &parent, pk).await?;
        }
        let items = st
            .store
            .cred_children(&parent, kind)
            .await
            .map_err(store_err)?;
        return list(st, items, &pairs, &full_path);
    };
    // The id with the canonical casing of its collection segments.
    let id = match kind {
        "provider" => provider_id(1),
        "connection" => connection_id(1),
        "policy" => format!("{}/{POLICIES}/{name}", connection_id(1)),
        _ => format!("{instance_id}/apis/{name}"),
    };
    match *method {
        Method::GET => {
            act(&format!("{actions}/read"))?;
            get_item(st, &id, kind).await
        }
        Method::PUT => {
            act(&format!("{actions}/write"))?;
            valid_name(name)?;
            match kind {
                "provider" => put_provider(st, cm, headers, &inst, &id, name, body).await,
                "connection" => {
                    put_connection(st, cm, headers, &inst_lc, &parent, &id, name, body).await
                }
                "policy" => put_policy(st, cm, headers, &inst_lc, &parent, &id, name, body).await,
                _ => put_api(st, cm, headers, &inst_lc, &id, name, body).await,
            }
        }
        Method::DELETE => {
            act(&format!("{actions}/delete"))?;
            delete_item(st, cm, headers, &id, kind).await
        }
        _ => Err(method_not_allowed(method)),
    }
}

async fn require(st: &AppState, id: &str, kind: &str) -> Result<CredItem, ArmError> {
    match st.store.cred_get(id).await.map_err(store_err)? {
        Some(it) if it.kind == kind => Ok(it),
        _ => Err(ArmError::not_found(
            "ResourceNotFound",
            format!("'{id}' was not found."),
        )),
    }
}

async fn get_item(st: &AppState, id: &str, kind: &str) -> Res {
    let it = require(st, id, kind).await?;
    Ok(with_etag(
        json_resp(StatusCode::OK, item_json(&it)),
        &it.etag,
    ))
}

fn parse_body(body: &Bytes) -> Result<Value, ArmError> {
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
    st: &AppState,
    headers: &HeaderMap,
    it: CredItem,
    existing: &Option<CredItem>,
    limit: i64,
    what: &str,
) -> Result<(StatusCode, CredItem), ArmError> {
    let im = if_match(headers);
    let ok = st
        .store
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

pub fn conn_ref(
    inst_lc: &str,
    provider: &CredItem,
    conn_lc: &str,
    conn_props: &Value,
) -> Option<ConnRef> {
    let p = Provider::from_properties(&serde_json::from_str(&provider.properties).ok()?)?;
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
    st: &AppState,
    cm: &crate::credentials::Credentials,
    headers: &HeaderMap,
    inst: &cloister_store::Resource,
    id: &str,
    name: &str,
    body: &Bytes,
) -> Res {
    let b = parse_body(body)?;
    let inst_lc = inst.id.to_lowercase();
    let existing = st.store.cred_get(id).await.map_err(store_err)?;
    let (p, secret) =
        model::parse_provider(&b["properties"], &st.cfg.public_url(), &st.id.home_tenant)
            .map_err(|m| ArmError::bad_request("ValidationError", m))?;
    if existing.is_none() && secret.is_none() {
        return Err(ArmError::bad_request(
            "ValidationError",
            "The grant parameters need 'clientSecret' when a provider is created.",
        ));
    }
    if let Some(e) = &existing
        && let Some(old) =
            Provider::from_properties(&serde_json::from_str(&e.properties).unwrap_or(json!({})))
        && old.grant != p.grant
    {
        return Err(ArmError::bad_request(
            "ValidationError",
            "A provider's grant type cannot change; delete it and create a new one.",
        ));
    }
    let props = p.to_properties(&redirect_url(st, &inst.id));
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
        st,
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
    st: &AppState,
    cm: &crate::credentials::Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    parent: &str,
    id: &str,
    name: &str,
    body: &Bytes,
) -> Res {
    let b = parse_body(body)?;
    let provider = require(st, parent, "provider").await?;
    let p =
        Provider::from_properties(&serde_json::from_str(&provider.properties).unwrap_or(json!({})))
            .ok_or_else(|| ArmError::internal("The provider's stored settings are unreadable."))?;
    let existing = st.store.cred_get(id).await.map_err(store_err)?;
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
        st,
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
        st.store
            .cred_set_properties(&it.id, &it.properties, &it.etag, now_secs())
            .await
            .map_err(store_err)?;
    }
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

#[allow(clippy::too_many_arguments)]
async fn put_policy(
    st: &AppState,
    cm: &crate::credentials::Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    parent: &str,
    id: &str,
    name: &str,
    body: &Bytes,
) -> Res {
    let b = parse_body(body)?;
    require(st, parent, "connection").await?;
    let p = model::parse_policy(&b["properties"])
        .map_err(|m| ArmError::bad_request("ValidationError", m))?;
    let existing = st.store.cred_get(id).await.map_err(store_err)?;
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
        st,
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
    st: &AppState,
    cm: &crate::credentials::Credentials,
    headers: &HeaderMap,
    inst_lc: &str,
    id: &str,
    name: &str,
    body: &Bytes,
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
    let existing = st.store.cred_get(id).await.map_err(store_err)?;
    for other in st
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
    let (status, it) = write(st, headers, it, &existing, 1000, "APIs per instance").await?;
    cm.invalidate();
    Ok(with_etag(json_resp(status, item_json(&it)), &it.etag))
}

async fn delete_item(
    st: &AppState,
    cm: &crate::credentials::Credentials,
    headers: &HeaderMap,
    id: &str,
    kind: &str,
) -> Res {
    let Some(m) = if_match(headers) else {
        return Err(ArmError::new(
            428,
            "PreconditionRequired",
            "DELETE needs an If-Match header: the entity's ETag, or * to delete whatever version is there.",
        ));
    };
    match st.store.cred_get(id).await.map_err(store_err)? {
        Some(it) if it.kind == kind => {}
        _ => return Ok(StatusCode::NO_CONTENT.into_response()),
    }
    match st.store.cred_delete(id, &m).await.map_err(store_err)? {
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
