//! The OpenAPI 3.1 document, generated: every ARM operation of every registered type comes
//! from the [`Registry`] ([`registry_ops`]), every other surface from the crate that serves it
//! (each has an `openapi` module returning its [`Op`]s), and [`document`] wraps them in the
//! envelope with the shared schemas and error shapes.
//!
//! For a type at its [`Level`], [`registry_ops`] derives the operations the ARM host routes:
//!
//! * the item: `GET`, `PUT`, `PATCH`, `DELETE`, `HEAD` on
//!   `{level}/providers/{ns}/{type}/{name}[/{childType}/{childName}…]`, where `{level}` is
//!   `/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}`,
//!   `/subscriptions/{subscriptionId}`, nothing (tenant) or `/{scope}` (extension types);
//! * the collection: `GET` (list) on the item path without its last name, and for a top-level
//!   resource-group type the subscription-wide list `/subscriptions/{subscriptionId}/providers/{ns}/{type}`;
//! * each POST action on an item and on the collection, long-running ones answering `202`.
//!
//! An instance's path parameter is the type's [`TypeDoc::param`], else `name` for a top-level
//! type and `{singular}Name` for a child type, made unique within the path.
//!
//! Operation-status routes: a provider that answers its own status resource (say
//! `locations/operationStatuses`) registers it as a type and it is documented like any other;
//! a status route the framework itself serves is added in [`status_ops`].

use crate::registry::{Level, ProviderSpec, Registry, TypeSpec};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The error body an operation answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"code","message"}}` (ARM, Graph and the data planes).
    Arm,
    /// Entra's token-endpoint error.
    Aad,
    /// IMDS's `{"error","error_description"}`.
    Imds,
    /// App Service's `{"statusCode","message"}`.
    AppService,
    /// HTML or plain text pages.
    None,
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub content_type: String,
    /// A component schema name; none for any JSON object.
    pub schema: Option<String>,
    pub required: bool,
}

/// One documented operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// The path template (`/v1.0/users/{id}`).
    pub path: String,
    /// Lowercase HTTP method.
    pub method: String,
    pub tag: String,
    pub summary: String,
    pub errors: ErrorShape,
    /// Needs a bearer token.
    pub auth: bool,
    /// Takes `?api-version=`.
    pub api_version: bool,
    pub request: Option<Body>,
    /// The component schema of the success body.
    pub response: Option<String>,
    /// Answered 201/202 with an operation to poll.
    pub long_running: bool,
    pub operation_id: Option<String>,
}

impl Op {
    /// An operation with no error body, no authentication and no request body.
    pub fn new(method: &str, path: &str, tag: &str, summary: &str) -> Op {
        Op {
            path: path.to_string(),
            method: method.to_ascii_lowercase(),
            tag: tag.to_string(),
            summary: summary.to_string(),
            errors: ErrorShape::None,
            auth: false,
            api_version: false,
            request: None,
            response: None,
            long_running: false,
            operation_id: None,
        }
    }
    /// An ARM-shaped operation: bearer token, `api-version`, ARM's error body.
    pub fn arm(method: &str, path: &str, tag: &str, summary: &str) -> Op {
        Op::new(method, path, tag, summary)
            .errors(ErrorShape::Arm)
            .auth()
            .api_version()
    }
    pub fn errors(mut self, e: ErrorShape) -> Op {
        self.errors = e;
        self
    }
    pub fn auth(mut self) -> Op {
        self.auth = true;
        self
    }
    pub fn no_auth(mut self) -> Op {
        self.auth = false;
        self
    }
    pub fn api_version(mut self) -> Op {
        self.api_version = true;
        self
    }
    pub fn json_body(mut self, schema: Option<&str>) -> Op {
        self.request = Some(Body {
            content_type: "application/json".into(),
            schema: schema.map(str::to_string),
            required: false,
        });
        self
    }
    pub fn form_body(mut self, schema: &str) -> Op {
        self.request = Some(Body {
            content_type: "application/x-www-form-urlencoded".into(),
            schema: Some(schema.to_string()),
            required: true,
        });
        self
    }
    pub fn response(mut self, schema: &str) -> Op {
        self.response = Some(schema.to_string());
        self
    }
    pub fn long_running(mut self, yes: bool) -> Op {
        self.long_running = yes;
        self
    }
    pub fn id(mut self, operation_id: &str) -> Op {
        self.operation_id = Some(operation_id.to_string());
        self
    }
    /// The operation's identity in the document: method and path with every parameter
    /// unnamed and ASCII case folded (`/a/{x}` and `/A/{y}` are the same route).
    pub fn key(&self) -> (String, String) {
        (self.method.clone(), template_key(&self.path))
    }
}

/// A path template with its parameters unnamed and case folded.
pub fn template_key(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                "{}".to_string()
            } else {
                s.to_ascii_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The parameter names of a path template, in order.
pub fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| s.starts_with('{') && s.ends_with('}') && s.len() > 2)
        .map(|s| s[1..s.len() - 1].to_string())
        .collect()
}

/// Joins groups of operations, the first of equal [`Op::key`]s winning: put the registry's
/// operations first so that a hand-listed one for a type a provider has since registered
/// gives way to the generated one.
pub fn merge(groups: impl IntoIterator<Item = Vec<Op>>) -> Vec<Op> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for op in groups.into_iter().flatten() {
        if seen.insert(op.key()) {
            out.push(op);
        }
    }
    out
}

/// What kind of operation of a type (the keys of [`crate::registry::TypeDoc::summaries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmOpKind {
    Get,
    Put,
    Patch,
    Delete,
    Head,
    /// The collection under the parent (resource group, subscription, tenant, scope or
    /// parent resource).
    List,
    /// A top-level resource-group type's instances across a subscription.
    ListBySubscription,
    Action(String),
    CollectionAction(String),
}

impl ArmOpKind {
    pub fn method(&self) -> &'static str {
        match self {
            ArmOpKind::Get | ArmOpKind::List | ArmOpKind::ListBySubscription => "get",
            ArmOpKind::Put => "put",
            ArmOpKind::Patch => "patch",
            ArmOpKind::Delete => "delete",
            ArmOpKind::Head => "head",
            ArmOpKind::Action(_) | ArmOpKind::CollectionAction(_) => "post",
        }
    }
    /// The key of its summary in a [`crate::registry::TypeDoc`].
    pub fn key(&self) -> &str {
        match self {
            ArmOpKind::Get => "get",
            ArmOpKind::Put => "put",
            ArmOpKind::Patch => "patch",
            ArmOpKind::Delete => "delete",
            ArmOpKind::Head => "head",
            ArmOpKind::List => "list",
            ArmOpKind::ListBySubscription => "listBySubscription",
            ArmOpKind::Action(a) | ArmOpKind::CollectionAction(a) => a,
        }
    }
}

/// One routed ARM operation of a registered type, before it is described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmOp {
    /// `Namespace/type[/child…]` in registered casing.
    pub type_name: String,
    pub kind: ArmOpKind,
    pub path: String,
}

/// The resource-group prefix of ARM paths, with the documented templates' casing.
pub const RG_PREFIX: &str = "/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}";
pub const SUB_PREFIX: &str = "/subscriptions/{subscriptionId}";

fn level_prefix(level: Level) -> &'static str {
    match level {
        Level::ResourceGroup => RG_PREFIX,
        Level::Subscription => SUB_PREFIX,
        Level::Tenant => "",
        Level::Extension => "/{scope}",
    }
}

/// `onlineEndpoints` → `onlineEndpointName`, `policies` → `policyName`.
fn derived_param(segment: &str) -> String {
    let singular = if let Some(s) = segment.strip_suffix("ies") {
        format!("{s}y")
    } else if segment.ends_with('s') && !segment.ends_with("ss") && !segment.ends_with("us") {
        segment[..segment.len() - 1].to_string()
    } else {
        segment.to_string()
    };
    format!("{singular}Name")
}

/// The item path of a type (every name a parameter), unique parameter names.
fn item_path(p: &ProviderSpec, t: &TypeSpec) -> String {
    let chain: Vec<&str> = t.path.split('/').collect();
    let mut used: BTreeSet<String> = path_params(level_prefix(t.level))
        .into_iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut out = format!("{}/providers/{}", level_prefix(t.level), p.namespace);
    for i in 0..chain.len() {
        let prefix = chain[..=i].join("/");
        let declared = p
            .types
            .iter()
            .find(|x| x.path.eq_ignore_ascii_case(&prefix))
            .and_then(|x| x.doc.param.clone());
        let base = declared.unwrap_or_else(|| {
            if i == 0 {
                "name".to_string()
            } else {
                derived_param(chain[i])
            }
        });
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.to_ascii_lowercase()) {
            name = format!("{base}{n}");
            n += 1;
        }
        out.push_str(&format!("/{}/{{{name}}}", chain[i]));
    }
    out
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(a, _)| a).unwrap_or(path)
}

/// Every operation the ARM host routes for the registered types, undescribed.
pub fn routed_ops(reg: &Registry) -> Vec<ArmOp> {
    let mut out = vec![];
    for p in reg.providers().filter(|p| !p.routes_itself) {
        for t in &p.types {
            let type_name = format!("{}/{}", p.namespace, t.path);
            let item = item_path(p, t);
            let collection = parent_of(&item).to_string();
            let mut push = |kind: ArmOpKind, path: String| {
                out.push(ArmOp {
                    type_name: type_name.clone(),
                    kind,
                    path,
                })
            };
            for k in [
                ArmOpKind::Get,
                ArmOpKind::Put,
                ArmOpKind::Patch,
                ArmOpKind::Delete,
                ArmOpKind::Head,
            ] {
                push(k, item.clone());
            }
            push(ArmOpKind::List, collection.clone());
            if t.level == Level::ResourceGroup && !t.path.contains('/') {
                push(
                    ArmOpKind::ListBySubscription,
                    format!("{SUB_PREFIX}/providers/{}/{}", p.namespace, t.path),
                );
            }
            for a in &t.actions {
                push(ArmOpKind::Action(a.clone()), format!("{item}/{a}"));
            }
            for a in &t.collection_actions {
                push(
                    ArmOpKind::CollectionAction(a.clone()),
                    format!("{collection}/{a}"),
                );
            }
        }
    }
    out
}

/// Framework-served operation-status routes. None yet: the long-running work adds its
/// status route here (`GET …/operationStatuses/{operationId}` answering
/// [`crate::lro`]'s status body), so that every long-running type documents where it is polled.
pub fn status_ops(_reg: &Registry) -> Vec<Op> {
    vec![]
}

/// The component schema name of a type (`Microsoft.App.sessionPools`).
pub fn type_schema_name(type_name: &str) -> String {
    type_name.replace('/', ".")
}

fn pascal(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn describe(reg: &Registry, op: &ArmOp) -> Op {
    let (_, spec) = reg
        .resolve_type(&op.type_name)
        .expect("routed_ops names registered types");
    let (ns, path) = op.type_name.split_once('/').unwrap_or((&op.type_name, ""));
    let doc = &spec.doc;
    let noun = doc
        .noun
        .clone()
        .unwrap_or_else(|| format!("`{}` resource", op.type_name));
    let parent_noun = path
        .rsplit_once('/')
        .and_then(|(parent, _)| reg.resolve_type(&format!("{ns}/{parent}")).ok())
        .map(|(name, t)| t.doc.noun.clone().unwrap_or_else(|| format!("`{name}`")));
    let list_where = match (spec.level, &parent_noun) {
        (_, Some(pn)) => format!("of a {pn}"),
        (Level::ResourceGroup, None) => "of a resource group".to_string(),
        (Level::Subscription, None) => "of a subscription".to_string(),
        (Level::Tenant, None) => "of the tenant".to_string(),
        (Level::Extension, None) => "at a scope".to_string(),
    };
    let lr = &spec.long_running;
    let long_running = match &op.kind {
        ArmOpKind::Put => lr.put,
        ArmOpKind::Patch => lr.patch,
        ArmOpKind::Delete => lr.delete,
        ArmOpKind::Action(a) | ArmOpKind::CollectionAction(a) => spec.action_is_long_running(a),
        _ => false,
    };
    let default = match &op.kind {
        ArmOpKind::Get => format!("Get a {noun}"),
        ArmOpKind::Put if spec.identity => format!(
            "Create or update a {noun} (ARM's `identity` block: system- and user-assigned identities)"
        ),
        ArmOpKind::Put => format!("Create or update a {noun}"),
        ArmOpKind::Patch => format!("Update a {noun} (merge)"),
        ArmOpKind::Delete if spec.identity => format!(
            "Delete a {noun}, its child resources, its system-assigned identity and the role assignments at it"
        ),
        ArmOpKind::Delete => format!("Delete a {noun} and its child resources"),
        ArmOpKind::Head => format!("Whether a {noun} exists"),
        ArmOpKind::List => {
            format!("List the {noun} instances {list_where} ($filter, $top, nextLink)")
        }
        ArmOpKind::ListBySubscription => {
            format!("List the {noun} instances of a subscription ($filter, $top, nextLink)")
        }
        ArmOpKind::Action(a) => format!("The `{a}` action of a {noun}"),
        ArmOpKind::CollectionAction(a) => format!("The `{a}` action on the {noun} collection"),
    };
    let summary = doc
        .summary_of(op.kind.key())
        .map(str::to_string)
        .unwrap_or(default);
    let tag = doc.tag.clone().unwrap_or_else(|| ns.to_string());
    let schema = if doc.properties.is_some() {
        type_schema_name(&op.type_name)
    } else {
        "ArmResource".to_string()
    };
    let chain: String = path.split('/').map(pascal).collect::<Vec<_>>().join("");
    let verb = match &op.kind {
        ArmOpKind::Get => "Get".to_string(),
        ArmOpKind::Put => "CreateOrUpdate".to_string(),
        ArmOpKind::Patch => "Update".to_string(),
        ArmOpKind::Delete => "Delete".to_string(),
        ArmOpKind::Head => "CheckExistence".to_string(),
        ArmOpKind::List => "List".to_string(),
        ArmOpKind::ListBySubscription => "ListBySubscription".to_string(),
        ArmOpKind::Action(a) => pascal(a),
        ArmOpKind::CollectionAction(a) => format!("Collection{}", pascal(a)),
    };
    let mut o = Op::arm(op.kind.method(), &op.path, &tag, &summary)
        .long_running(long_running)
        .id(&format!("{}_{chain}_{verb}", ns.replace('.', "")));
    o = match &op.kind {
        ArmOpKind::Put | ArmOpKind::Patch => o.json_body(Some(&schema)).response(&schema),
        ArmOpKind::Get => o.response(&schema),
        ArmOpKind::List | ArmOpKind::ListBySubscription => o.response("ArmResourceList"),
        ArmOpKind::Action(_) | ArmOpKind::CollectionAction(_) => o.json_body(None),
        ArmOpKind::Delete | ArmOpKind::Head => o,
    };
    o
}

/// Every ARM operation of every registered type, described.
pub fn registry_ops(reg: &Registry) -> Vec<Op> {
    let mut ops: Vec<Op> = routed_ops(reg).iter().map(|o| describe(reg, o)).collect();
    ops.extend(status_ops(reg));
    ops
}

/// The component schemas the registered types declare (their `properties`).
pub fn registry_schemas(reg: &Registry) -> Vec<(String, Value)> {
    let mut out = vec![];
    for p in reg.providers() {
        for t in &p.types {
            if let Some(props) = &t.doc.properties {
                out.push((
                    type_schema_name(&format!("{}/{}", p.namespace, t.path)),
                    json!({"allOf": [
                        {"$ref": "#/components/schemas/ArmResource"},
                        {"type": "object", "properties": {"properties": props}},
                    ]}),
                ));
            }
        }
    }
    out
}

fn error_schema(e: ErrorShape) -> Option<&'static str> {
    match e {
        ErrorShape::Arm => Some("#/components/schemas/ArmError"),
        ErrorShape::Aad => Some("#/components/schemas/AadError"),
        ErrorShape::Imds => Some("#/components/schemas/ImdsError"),
        ErrorShape::AppService => Some("#/components/schemas/AppServiceError"),
        ErrorShape::None => None,
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn fallback_operation_id(o: &Op) -> String {
    let mut s = o.method.clone();
    for seg in o.path.split('/').filter(|s| !s.is_empty()) {
        s.push('_');
        s.extend(
            seg.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '$'),
        );
    }
    s
}

fn operation(o: &Op) -> Value {
    let mut params: Vec<Value> = path_params(&o.path)
        .into_iter()
        .map(|name| {
            let mut p = json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
            if name == "scope" {
                p["description"] = json!("A scope: `subscriptions/{id}`, `subscriptions/{id}/resourceGroups/{name}`, a resource id, a management group, or empty for the tenant root");
                p["x-ms-skip-url-encoding"] = json!(true);
            }
            p
        })
        .collect();
    if o.api_version {
        params.push(json!({"name": "api-version", "in": "query", "required": true, "schema": {"type": "string", "example": "2022-04-01"}}));
    }
    let ok = match &o.response {
        Some(s) => {
            json!({"description": "Success", "content": {"application/json": {"schema": schema_ref(s)}}})
        }
        None => json!({"description": "Success"}),
    };
    let mut responses = Map::new();
    responses.insert("200".into(), ok.clone());
    if o.api_version && o.method == "put" {
        responses.insert("201".into(), {
            let mut c = ok.clone();
            c["description"] = json!("Created");
            c
        });
    }
    if o.long_running {
        let headers = json!({
            "Azure-AsyncOperation": {"description": "The operation-status URL to poll", "schema": {"type": "string"}},
            "Location": {"description": "The URL answering 202 until the operation ends, then its result", "schema": {"type": "string"}},
            "Retry-After": {"description": "Seconds to wait between polls", "schema": {"type": "integer"}},
        });
        let code = if o.method == "put" { "201" } else { "202" };
        responses.insert(
            code.into(),
            json!({"description": "Accepted: a long-running operation", "headers": headers}),
        );
    }
    if let Some(s) = error_schema(o.errors) {
        responses.insert("4XX".into(), json!({"description": "Client error", "content": {"application/json": {"schema": {"$ref": s}}}}));
    }
    let mut entry = json!({
        "tags": [o.tag],
        "summary": o.summary,
        "operationId": o.operation_id.clone().unwrap_or_else(|| fallback_operation_id(o)),
        "parameters": params,
        "responses": responses,
    });
    if o.auth {
        entry["security"] = json!([{"bearer": []}]);
    }
    if o.long_running {
        entry["x-ms-long-running-operation"] = json!(true);
    }
    let body = o.request.clone().or_else(|| {
        matches!(o.method.as_str(), "put" | "patch" | "post").then(|| Body {
            content_type: "application/json".into(),
            schema: None,
            required: false,
        })
    });
    if let Some(b) = body {
        let schema = b
            .schema
            .as_deref()
            .map(schema_ref)
            .unwrap_or_else(|| json!({"type": "object"}));
        entry["requestBody"] =
            json!({"required": b.required, "content": {b.content_type: {"schema": schema}}});
    }
    entry
}

/// The whole document: the operations (first of equal keys wins, see [`merge`]) and the
/// component schemas their crates contribute beside the shared ones.
pub fn document(ops: &[Op], schemas: &[(String, Value)]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for o in merge([ops.to_vec()]) {
        let mut entry = operation(&o);
        // Unique operation ids, whatever the contributors chose.
        let base = entry["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut id = base.clone();
        let mut n = 2;
        while !ids.insert(id.clone()) {
            id = format!("{base}_{n}");
            n += 1;
        }
        entry["operationId"] = json!(id);
        paths
            .entry(o.path.clone())
            .or_default()
            .insert(o.method.clone(), entry);
    }
    let mut components = Map::new();
    for (k, v) in shared_schemas() {
        components.insert(k, v);
    }
    for (k, v) in schemas {
        components.insert(k.clone(), v.clone());
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cloister", "version": env!("CARGO_PKG_VERSION"), "description": "Cloister's identity and access plane: an Entra-compatible token service, managed-identity endpoints, an ARM-shaped management API with Azure RBAC, and a Graph-shaped directory API. The ARM operations are generated from the provider registry."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": components,
        }
    })
}

/// The schemas every document has: the error shapes and ARM's resource envelope.
fn shared_schemas() -> Vec<(String, Value)> {
    vec![
        (
            "ArmError".into(),
            json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "target": {"type": "string"}}}}}),
        ),
        (
            "AadError".into(),
            json!({"type": "object", "required": ["error", "error_description", "error_codes"], "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}, "error_codes": {"type": "array", "items": {"type": "integer"}}, "timestamp": {"type": "string"}, "trace_id": {"type": "string"}, "correlation_id": {"type": "string"}, "error_uri": {"type": "string"}}}),
        ),
        (
            "ImdsError".into(),
            json!({"type": "object", "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}}}),
        ),
        (
            "AppServiceError".into(),
            json!({"type": "object", "properties": {"statusCode": {"type": "integer"}, "message": {"type": "string"}}}),
        ),
        (
            "SystemData".into(),
            json!({"type": "object", "properties": {"createdBy": {"type": "string"}, "createdByType": {"type": "string"}, "createdAt": {"type": "string", "format": "date-time"}, "lastModifiedBy": {"type": "string"}, "lastModifiedByType": {"type": "string"}, "lastModifiedAt": {"type": "string", "format": "date-time"}}}),
        ),
        (
            "ManagedServiceIdentity".into(),
            json!({"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["None", "SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned"]}, "principalId": {"type": "string"}, "tenantId": {"type": "string"}, "userAssignedIdentities": {"type": "object", "additionalProperties": {"type": ["object", "null"], "properties": {"principalId": {"type": "string"}, "clientId": {"type": "string"}}}}}}),
        ),
        (
            "ArmResource".into(),
            json!({"type": "object", "properties": {"id": {"type": "string", "readOnly": true}, "name": {"type": "string", "readOnly": true}, "type": {"type": "string", "readOnly": true}, "location": {"type": "string"}, "tags": {"type": "object", "additionalProperties": {"type": "string"}}, "etag": {"type": "string", "readOnly": true}, "identity": {"$ref": "#/components/schemas/ManagedServiceIdentity"}, "systemData": {"$ref": "#/components/schemas/SystemData"}, "properties": {"type": "object"}}}),
        ),
        (
            "ArmResourceList".into(),
            json!({"type": "object", "properties": {"value": {"type": "array", "items": {"$ref": "#/components/schemas/ArmResource"}}, "nextLink": {"type": ["string", "null"]}}}),
        ),
    ]
}

/// Checks a document's shape against OpenAPI 3.1's rules that a generator can break: version
/// and info, paths that start with `/`, no two paths that are the same route, known methods,
/// every `{param}` of a path declared once as a required path parameter (and none declared
/// that the path lacks), unique operation ids, responses on every operation, and `$ref`s that
/// resolve to a component schema. Returns every problem found.
pub fn check(doc: &Value) -> Result<(), Vec<String>> {
    let mut errs = vec![];
    if doc["openapi"] != "3.1.0" {
        errs.push("openapi is not 3.1.0".to_string());
    }
    if !doc["info"]["title"].is_string() || !doc["info"]["version"].is_string() {
        errs.push("info.title and info.version are required".to_string());
    }
    let schemas = doc["components"]["schemas"].as_object();
    let mut refs = vec![];
    collect_refs(doc, &mut refs);
    for r in refs {
        let ok = r
            .strip_prefix("#/components/schemas/")
            .is_some_and(|n| schemas.is_some_and(|s| s.contains_key(n)));
        if !ok {
            errs.push(format!("$ref {r} does not resolve"));
        }
    }
    let Some(paths) = doc["paths"].as_object() else {
        errs.push("paths is not an object".to_string());
        return Err(errs);
    };
    let mut keys: BTreeMap<String, &String> = BTreeMap::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, item) in paths {
        if !path.starts_with('/') {
            errs.push(format!("{path}: does not start with /"));
        }
        if let Some(other) = keys.insert(template_key(path), path) {
            errs.push(format!("{path} and {other} are the same route"));
        }
        let declared_in_path = path_params(path);
        let unique: BTreeSet<&String> = declared_in_path.iter().collect();
        if unique.len() != declared_in_path.len() {
            errs.push(format!("{path}: a parameter name repeats"));
        }
        let Some(item) = item.as_object() else {
            errs.push(format!("{path}: not an object"));
            continue;
        };
        for (m, op) in item {
            if !METHODS.contains(&m.as_str()) {
                errs.push(format!("{path}: unknown method {m}"));
                continue;
            }
            match op["operationId"].as_str() {
                Some(id) if !ids.insert(id.to_string()) => {
                    errs.push(format!("{m} {path}: operationId {id} repeats"))
                }
                Some(_) => {}
                None => errs.push(format!("{m} {path}: no operationId")),
            }
            if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
                errs.push(format!("{m} {path}: no responses"));
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: Vec<&Value> = params.iter().filter(|p| p["in"] == "path").collect();
            for name in &declared_in_path {
                let n = in_path
                    .iter()
                    .filter(|p| p["name"] == name.as_str())
                    .count();
                let required = in_path
                    .iter()
                    .any(|p| p["name"] == name.as_str() && p["required"] == true);
                if n != 1 || !required {
                    errs.push(format!(
                        "{m} {path}: {{{name}}} is not declared once as a required path parameter"
                    ));
                }
            }
            for p in &in_path {
                let n = p["name"].as_str().unwrap_or_default();
                if !declared_in_path.iter().any(|d| d == n) {
                    errs.push(format!("{m} {path}: path parameter {n} is not in the path"));
                }
            }
            let mut seen = BTreeSet::new();
            for p in &params {
                if !seen.insert((p["name"].to_string(), p["in"].to_string())) {
                    errs.push(format!("{m} {path}: parameter {} repeats", p["name"]));
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref"
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Whether a documented path template matches a concrete path (`{scope}` matching any number
/// of segments, every other parameter one; literal segments compared case-insensitively).
pub fn template_matches(template: &str, path: &str) -> bool {
    fn go(t: &[&str], p: &[&str]) -> bool {
        match (t.first(), p.first()) {
            (None, None) => true,
            (Some(&"{scope}"), _) => (0..=p.len()).any(|i| go(&t[1..], &p[i..])),
            (Some(ts), Some(ps)) => {
                let param = ts.starts_with('{') && ts.ends_with('}');
                (param && !ps.is_empty() || ts.eq_ignore_ascii_case(ps)) && go(&t[1..], &p[1..])
            }
            _ => false,
        }
    }
    let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    go(&t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{LongRunning, RouteKind, TypeDoc};
    use http::Method;

    fn reg() -> Registry {
        let mut r = Registry::default();
        r.register(
            ProviderSpec::new("Microsoft.App").with_type(
                TypeSpec::new("sessionPools", &["2025-01-01"])
                    .with_identity()
                    .collection_action("checkNameAvailability")
                    .doc(
                        TypeDoc::new()
                            .noun("session pool")
                            .tag("Session pools")
                            .summary("delete", "Delete a session pool and every session in it")
                            .properties(json!({"type": "object"})),
                    ),
            ),
        )
        .unwrap();
        r.register(
            ProviderSpec::new("Microsoft.MachineLearningServices")
                .with_type(TypeSpec::new("workspaces", &["2024-04-01"]))
                .with_type(
                    TypeSpec::new("workspaces/onlineEndpoints", &["2024-04-01"])
                        .action("listKeys")
                        .action("regenerateKeys")
                        .long_running(LongRunning {
                            put: true,
                            delete: true,
                            actions: vec!["regenerateKeys".into()],
                            ..Default::default()
                        }),
                )
                .with_type(TypeSpec::new(
                    "workspaces/onlineEndpoints/deployments",
                    &["2024-04-01"],
                ))
                .with_type(TypeSpec::new("locations", &["2024-04-01"]).level(Level::Subscription))
                .with_type(
                    TypeSpec::new("locations/mfeOperationsStatus", &["2024-04-01"])
                        .level(Level::Subscription),
                ),
        )
        .unwrap();
        r.register(
            ProviderSpec::new("Microsoft.Authorization")
                .with_type(
                    TypeSpec::new("roleAssignments", &["2022-04-01"]).level(Level::Extension),
                )
                .describe("ROLEASSIGNMENTS", TypeDoc::new().param("roleAssignmentId")),
        )
        .unwrap();
        r
    }

    /// A tenant-level type whose child repeats its name and asks for the same parameter.
    /// (Not in [`reg`]: the router routes no tenant-level item but management groups yet, as
    /// `Scope` parses no other `/providers/…` id.)
    fn tenant_reg() -> Registry {
        let mut r = Registry::default();
        r.register(
            ProviderSpec::new("Contoso.Tenant")
                .with_type(TypeSpec::new("things", &["*"]).level(Level::Tenant))
                .with_type(
                    TypeSpec::new("things/things", &["*"])
                        .level(Level::Tenant)
                        .doc(TypeDoc::new().param("name")),
                ),
        )
        .unwrap();
        r
    }

    /// A concrete path for a template: every parameter a name, `{scope}` a resource group.
    fn concrete(template: &str) -> String {
        let mut out = String::new();
        for seg in template.trim_start_matches('/').split('/') {
            out.push('/');
            match seg {
                "{scope}" => out.push_str("subscriptions/s1/resourceGroups/g1"),
                s if s.starts_with('{') => out.push_str("x1"),
                s => out.push_str(s),
            }
        }
        out
    }

    /// Every operation the router accepts for a registered type, enumerated from the
    /// registrations themselves (not from [`routed_ops`]), is in the document; and every
    /// generated ARM operation routes to the kind it documents.
    #[test]
    fn every_routed_operation_is_documented() {
        let r = reg();
        let doc = document(&registry_ops(&r), &registry_schemas(&r));
        let paths = doc["paths"].as_object().unwrap();
        let documented = |method: &str, path: &str| {
            paths
                .iter()
                .any(|(t, o)| o.get(method).is_some() && template_matches(t, path))
        };
        let mut n = 0;
        for p in r.providers() {
            for t in &p.types {
                let chain: Vec<&str> = t.path.split('/').collect();
                let prefix = match t.level {
                    Level::ResourceGroup => "/subscriptions/s1/resourceGroups/g1",
                    Level::Subscription => "/subscriptions/s1",
                    Level::Tenant => "",
                    Level::Extension => {
                        "/subscriptions/s1/resourceGroups/g1/providers/Microsoft.App/sessionPools/p1"
                    }
                };
                let mut item = format!("{prefix}/providers/{}", p.namespace);
                for (i, c) in chain.iter().enumerate() {
                    item.push_str(&format!("/{c}/n{i}"));
                }
                let coll = parent_of(&item).to_string();
                let mut expect: Vec<(&str, String)> = ["get", "put", "patch", "delete", "head"]
                    .iter()
                    .map(|m| (*m, item.clone()))
                    .collect();
                expect.push(("get", coll.clone()));
                if t.level == Level::ResourceGroup && chain.len() == 1 {
                    expect.push((
                        "get",
                        format!("/subscriptions/s1/providers/{}/{}", p.namespace, t.path),
                    ));
                }
                for a in &t.actions {
                    expect.push(("post", format!("{item}/{a}")));
                }
                for a in &t.collection_actions {
                    expect.push(("post", format!("{coll}/{a}")));
                }
                for (m, path) in expect {
                    let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
                    let v = t.api_versions[0].replace('*', "2020-01-01");
                    if let Err(e) = r.route(&method, &path, &v) {
                        panic!("the router refuses {m} {path}: {}", e.message);
                    }
                    assert!(
                        documented(m, &path),
                        "{m} {path} is routed but not documented"
                    );
                    n += 1;
                }
            }
        }
        assert!(n > 40, "{n}");
        // The other way: each generated operation routes, to the kind of operation it says.
        for o in routed_ops(&r) {
            let path = concrete(&o.path);
            let method = Method::from_bytes(o.kind.method().to_uppercase().as_bytes()).unwrap();
            let (_, spec) = r.resolve_type(&o.type_name).unwrap();
            let v = spec.api_versions[0].replace('*', "2020-01-01");
            let route = r
                .route(&method, &path, &v)
                .unwrap_or_else(|e| panic!("{} {path}: {}", o.kind.method(), e.message));
            assert_eq!(route.type_name, o.type_name, "{path}");
            let kind = match &o.kind {
                ArmOpKind::List | ArmOpKind::ListBySubscription => RouteKind::Collection,
                ArmOpKind::Action(a) => RouteKind::Action(a.clone()),
                ArmOpKind::CollectionAction(a) => RouteKind::CollectionAction(a.clone()),
                _ => RouteKind::Item,
            };
            assert_eq!(route.kind, kind, "{path}");
        }
    }

    #[test]
    fn templates_parameters_and_descriptions() {
        let r = reg();
        let ops = registry_ops(&r);
        let has = |m: &str, p: &str| ops.iter().any(|o| o.method == m && o.path == p);
        let pool = format!("{RG_PREFIX}/providers/Microsoft.App/sessionPools/{{name}}");
        assert!(has("put", &pool));
        assert!(has("head", &pool));
        assert!(has(
            "get",
            "/subscriptions/{subscriptionId}/providers/Microsoft.App/sessionPools"
        ));
        assert!(has(
            "post",
            &format!("{RG_PREFIX}/providers/Microsoft.App/sessionPools/checkNameAvailability")
        ));
        let ep = format!(
            "{RG_PREFIX}/providers/Microsoft.MachineLearningServices/workspaces/{{name}}/onlineEndpoints/{{onlineEndpointName}}"
        );
        assert!(has("get", &format!("{ep}/deployments/{{deploymentName}}")));
        assert!(has("get", &format!("{ep}/deployments")));
        assert!(has(
            "get",
            "/subscriptions/{subscriptionId}/providers/Microsoft.MachineLearningServices/locations/{name}/mfeOperationsStatus/{mfeOperationsStatusName}"
        ));
        assert!(has(
            "put",
            "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentId}"
        ));
        let t = registry_ops(&tenant_reg());
        assert!(t.iter().any(|o| o.method == "get"
            && o.path == "/providers/Contoso.Tenant/things/{name}/things/{name2}"));
        assert!(
            t.iter()
                .any(|o| o.method == "get" && o.path == "/providers/Contoso.Tenant/things")
        );
        let find = |m: &str, p: &str| {
            ops.iter()
                .find(|o| o.method == m && o.path == p)
                .unwrap()
                .clone()
        };
        let rk = find("post", &format!("{ep}/regenerateKeys"));
        assert!(rk.long_running);
        assert!(!find("post", &format!("{ep}/listKeys")).long_running);
        assert!(find("put", &ep).long_running);
        assert!(!find("patch", &ep).long_running);
        let d = find("delete", &pool);
        assert_eq!(d.summary, "Delete a session pool and every session in it");
        assert_eq!(d.tag, "Session pools");
        assert!(find("get", &pool).summary.contains("session pool"));
        assert_eq!(
            find("get", &pool).response.as_deref(),
            Some("Microsoft.App.sessionPools")
        );
        let doc = document(&ops, &registry_schemas(&r));
        assert!(doc["components"]["schemas"]["Microsoft.App.sessionPools"].is_object());
        let put = &doc["paths"][ep.as_str()]["put"];
        assert!(put["responses"]["201"]["headers"]["Azure-AsyncOperation"].is_object());
        assert_eq!(put["x-ms-long-running-operation"], true);
        assert!(
            doc["paths"][format!("{ep}/regenerateKeys").as_str()]["post"]["responses"]["202"]
                .is_object()
        );
    }

    #[test]
    fn the_document_has_openapi_31_shape() {
        let r = reg();
        let mut ops = registry_ops(&r);
        ops.push(Op::new("get", "/healthz", "Operations", "Liveness"));
        ops.push(
            Op::new("post", "/{tenant}/oauth2/token", "Token service", "v1")
                .errors(ErrorShape::Aad)
                .form_body("ArmError"),
        );
        let doc = document(&ops, &registry_schemas(&r));
        check(&doc).unwrap();
        // And the checker finds what it is for.
        let mut bad = doc.clone();
        bad["paths"]["/healthz"]["get"]["parameters"] =
            json!([{"name": "x", "in": "path", "required": true}]);
        bad["paths"]["/a/{x}"] = json!({"get": {"operationId": "Microsoft_Get", "responses": {"200": {"description": "ok"}}}});
        bad["paths"]["/A/{y}"] = json!({"get": {"operationId": "o2", "parameters": [{"name": "y", "in": "path", "required": true}], "responses": {"200": {"description": "ok"}}, "requestBody": {"$ref": "#/components/schemas/Nope"}}});
        let e = check(&bad).unwrap_err().join("\n");
        assert!(e.contains("path parameter x is not in the path"), "{e}");
        assert!(e.contains("{x} is not declared"), "{e}");
        assert!(e.contains("same route"), "{e}");
        assert!(e.contains("does not resolve"), "{e}");
    }

    #[test]
    fn merge_keeps_the_first_of_one_route() {
        let a = Op::arm("get", "/providers/X.Y/keys/{name}", "a", "generated");
        let b = Op::arm("GET", "/providers/x.y/KEYS/{keyId}", "b", "by hand");
        let c = Op::arm("delete", "/providers/x.y/KEYS/{keyId}", "b", "by hand");
        let m = merge([vec![a.clone()], vec![b, c.clone()]]);
        assert_eq!(m, vec![a, c]);
        let doc = document(&m, &[]);
        // Operation ids stay unique even when contributors repeat one.
        let ops = vec![
            Op::new("get", "/a", "t", "s").id("same"),
            Op::new("get", "/b", "t", "s").id("same"),
        ];
        check(&document(&ops, &[])).unwrap();
        assert!(doc["paths"]["/providers/X.Y/keys/{name}"]["get"].is_object());
    }

    #[test]
    fn template_matching() {
        assert!(template_matches(
            "/{scope}/providers/A.B/c",
            "/providers/A.B/c"
        ));
        assert!(template_matches(
            "/{scope}/providers/A.B/c/{n}",
            "/subscriptions/s/resourceGroups/g/providers/a.b/C/x"
        ));
        assert!(!template_matches("/a/{n}", "/a"));
        assert!(!template_matches("/a/{n}", "/a/b/c"));
        assert_eq!(derived_param("onlineEndpoints"), "onlineEndpointName");
        assert_eq!(derived_param("policies"), "policyName");
        assert_eq!(
            derived_param("mfeOperationsStatus"),
            "mfeOperationsStatusName"
        );
    }
}
