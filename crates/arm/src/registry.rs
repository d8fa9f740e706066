//! The provider registry and the router that turns a request path into a typed [`Route`].
//!
//! A provider registers a namespace and its types. A type's `path` is its type chain below the
//! namespace (`sessionPools`, or `service/authorizationProviders` for a child type), so child
//! types nest to any depth; a child's parent must be registered first. Each type says at which
//! level its top-level instances live ([`Level`]): under a resource group (most), a
//! subscription, the tenant (`/providers/…`), or at any scope (an extension type such as
//! `Microsoft.Authorization/roleAssignments`).
//!
//! Routing parses the path once (with [`cloister_core::scope::Scope`]), canonicalises the
//! namespace and type names to their registered casing (names keep the caller's casing), checks
//! the api-version against the type's list, and derives the authorization action:
//! `{ns}/{type}/read|write|delete`, `{ns}/{type}/{action}/action`.

use cloister_core::error::ArmError;
use cloister_core::scope::{Scope, ScopeKind};
use http::Method;

/// Where a type's top-level instances live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/…` (listable per subscription too).
    ResourceGroup,
    /// `/subscriptions/{s}/providers/{ns}/…`.
    Subscription,
    /// `/providers/{ns}/…`.
    Tenant,
    /// `{any scope}/providers/{ns}/…`: extension resources.
    Extension,
}

/// Which operations of a type are long-running (answered 201/202 with an operation to poll).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LongRunning {
    pub put: bool,
    pub patch: bool,
    pub delete: bool,
    /// Names of POST actions that are long-running.
    pub actions: Vec<String>,
}

/// One resource type of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    /// The type chain below the namespace, with its canonical casing: `sessionPools`,
    /// `service/authorizationProviders`.
    pub path: String,
    pub level: Level,
    /// The api-versions the type answers (`*`: any; see [`TypeSpec::accepts_api_version`]).
    pub api_versions: Vec<String>,
    /// Locations a new instance may be placed in; empty means any.
    pub locations: Vec<String>,
    /// POST actions on an instance: `…/{name}/{action}`.
    pub actions: Vec<String>,
    /// POST actions on the collection: `…/{type}/{action}`.
    pub collection_actions: Vec<String>,
    /// Whether instances carry ARM's `identity` block (system- and user-assigned).
    pub identity: bool,
    /// Whether each instance is itself a user-assignable managed identity (a principal made
    /// on create, its ids among the read-only properties, no `identity` block).
    pub identity_resource: bool,
    pub long_running: LongRunning,
    /// How the OpenAPI document describes the type (see [`crate::openapi`]); routing ignores it.
    pub doc: TypeDoc,
}

/// The OpenAPI description of a type: all optional, with generated defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeDoc {
    /// The path parameter naming an instance (`authorizationProviderId`); default `name` for
    /// a top-level type, `{singular}Name` for a child type.
    pub param: Option<String>,
    /// The tag its operations are grouped under; default the namespace.
    pub tag: Option<String>,
    /// What one instance is called in summaries (`session pool`); default the type name.
    pub noun: Option<String>,
    /// Summaries by operation: `get`, `put`, `patch`, `delete`, `head`, `list`,
    /// `listBySubscription`, or an action's name.
    pub summaries: Vec<(String, String)>,
    /// The JSON Schema of the resource's `properties`.
    pub properties: Option<serde_json::Value>,
}

impl TypeDoc {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn param(mut self, name: &str) -> Self {
        self.param = Some(name.to_string());
        self
    }
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = Some(tag.to_string());
        self
    }
    pub fn noun(mut self, noun: &str) -> Self {
        self.noun = Some(noun.to_string());
        self
    }
    pub fn summary(mut self, op: &str, text: &str) -> Self {
        self.summaries.push((op.to_string(), text.to_string()));
        self
    }
    pub fn properties(mut self, schema: serde_json::Value) -> Self {
        self.properties = Some(schema);
        self
    }
    /// The summary given for an operation (case-insensitive key).
    pub fn summary_of(&self, op: &str) -> Option<&str> {
        self.summaries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(op))
            .map(|(_, v)| v.as_str())
    }
}

impl TypeSpec {
    pub fn new(path: &str, api_versions: &[&str]) -> Self {
        TypeSpec {
            path: path.to_string(),
            level: Level::ResourceGroup,
            api_versions: api_versions.iter().map(|s| s.to_string()).collect(),
            locations: vec![],
            actions: vec![],
            collection_actions: vec![],
            identity: false,
            identity_resource: false,
            long_running: LongRunning::default(),
            doc: TypeDoc::default(),
        }
    }
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }
    pub fn locations(mut self, locations: &[&str]) -> Self {
        self.locations = locations.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn action(mut self, name: &str) -> Self {
        self.actions.push(name.to_string());
        self
    }
    pub fn collection_action(mut self, name: &str) -> Self {
        self.collection_actions.push(name.to_string());
        self
    }
    /// Instances are user-assigned managed identities themselves.
    pub fn identity_resource(mut self) -> Self {
        self.identity_resource = true;
        self
    }

    pub fn with_identity(mut self) -> Self {
        self.identity = true;
        self
    }
    pub fn long_running(mut self, lro: LongRunning) -> Self {
        self.long_running = lro;
        self
    }
    /// The type's OpenAPI description.
    pub fn doc(mut self, doc: TypeDoc) -> Self {
        self.doc = doc;
        self
    }
    fn depth(&self) -> usize {
        self.path.split('/').count()
    }
    /// Whether the type answers `v`; an `*` in the list accepts any version (the caller has
    /// checked its form), for types that follow no one api-version history.
    pub fn accepts_api_version(&self, v: &str) -> bool {
        self.api_versions.iter().any(|x| x == "*" || x == v)
    }
    /// The registered casing of an action name, if `name` is one of this type's actions.
    pub fn find_action(&self, name: &str) -> Option<&str> {
        self.actions
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }
    fn find_collection_action(&self, name: &str) -> Option<&str> {
        self.collection_actions
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }
    /// True if the given POST action (canonical name) is long-running.
    pub fn action_is_long_running(&self, name: &str) -> bool {
        self.long_running
            .actions
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name))
    }
    /// Whether `location` may hold a new instance (case- and space-insensitive, as ARM).
    pub fn allows_location(&self, location: &str) -> bool {
        let norm = |s: &str| {
            s.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        };
        self.locations.is_empty() || self.locations.iter().any(|l| norm(l) == norm(location))
    }
}

/// A provider's registration: its namespace and types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    pub namespace: String,
    pub types: Vec<TypeSpec>,
    /// The provider routes its own paths (operation endpoints, or semantics of its own): its
    /// operations are documented by the provider rather than generated from its types.
    pub routes_itself: bool,
}

impl ProviderSpec {
    pub fn new(namespace: &str) -> Self {
        ProviderSpec {
            namespace: namespace.to_string(),
            types: vec![],
            routes_itself: false,
        }
    }
    /// See [`ProviderSpec::routes_itself`].
    pub fn routes_itself(mut self) -> Self {
        self.routes_itself = true;
        self
    }
    pub fn with_type(mut self, t: TypeSpec) -> Self {
        self.types.push(t);
        self
    }
    /// Sets the OpenAPI description of the type at `path` (case-insensitive), if this
    /// provider has it: a service's `openapi` module describes the types its provider
    /// registers without touching the registration.
    pub fn describe(mut self, path: &str, doc: TypeDoc) -> Self {
        if let Some(t) = self
            .types
            .iter_mut()
            .find(|t| t.path.eq_ignore_ascii_case(path))
        {
            t.doc = doc;
        }
        self
    }
    fn find(&self, chain: &[&str]) -> Option<&TypeSpec> {
        self.types.iter().find(|t| {
            let mut p = t.path.split('/');
            chain.len() == t.depth()
                && chain
                    .iter()
                    .all(|c| p.next().is_some_and(|x| x.eq_ignore_ascii_case(c)))
        })
    }
}

/// A mistake in a registration (a bug in a provider, found at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError(pub String);

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RegistryError {}

/// All registered providers.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    providers: Vec<ProviderSpec>,
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// One resource: GET, PUT, PATCH, DELETE, HEAD.
    Item,
    /// The instances of a type under a parent scope: GET (list).
    Collection,
    /// `POST …/{name}/{action}` (the canonical action name).
    Action(String),
    /// `POST …/{type}/{action}` (the canonical action name).
    CollectionAction(String),
}

/// A routed request.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: RouteKind,
    /// `Namespace/type[/child…]` in registered casing.
    pub type_name: String,
    pub spec: TypeSpec,
    /// The resource (item, action) or the scope the collection is under (collection and
    /// collection actions): the parent resource, resource group, subscription or `/`.
    pub scope: Scope,
    /// For items and actions: the resource id with registered casing of the keywords,
    /// namespace and types, and the caller's casing of the names.
    pub id: Option<String>,
    /// The action the caller needs, at [`Route::scope`].
    pub authz_action: String,
    pub api_version: String,
}

impl Route {
    /// Whether this request is a long-running operation of its type.
    pub fn is_long_running(&self, method: &Method) -> bool {
        let lr = &self.spec.long_running;
        match &self.kind {
            RouteKind::Item => {
                (method == Method::PUT && lr.put)
                    || (method == Method::PATCH && lr.patch)
                    || (method == Method::DELETE && lr.delete)
            }
            RouteKind::Action(a) | RouteKind::CollectionAction(a) => {
                self.spec.action_is_long_running(a)
            }
            RouteKind::Collection => false,
        }
    }
}

fn not_found_path(path: &str) -> ArmError {
    ArmError::not_found(
        "NotFound",
        format!(
            "No HTTP resource was found that matches the request URI '{}'.",
            path.chars().take(300).collect::<String>()
        ),
    )
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!("The requested resource does not support http method '{method}'."),
    )
}

impl Registry {
    /// Adds a provider. A namespace may be registered once; each type once; a child type
    /// needs its parent type registered before it; a type needs at least one api-version.
    pub fn register(&mut self, p: ProviderSpec) -> Result<(), RegistryError> {
        if p.namespace.is_empty() || !p.namespace.contains('.') || p.namespace.contains('/') {
            return Err(RegistryError(format!(
                "'{}' is not a provider namespace (Company.Service)",
                p.namespace
            )));
        }
        if self.provider(&p.namespace).is_some() {
            return Err(RegistryError(format!(
                "the namespace '{}' is registered twice",
                p.namespace
            )));
        }
        let mut seen = ProviderSpec::new(&p.namespace);
        for t in &p.types {
            let chain: Vec<&str> = t.path.split('/').collect();
            if chain.iter().any(|c| c.is_empty()) {
                return Err(RegistryError(format!("bad type path '{}'", t.path)));
            }
            if t.api_versions.is_empty() {
                return Err(RegistryError(format!(
                    "{}/{} has no api-version",
                    p.namespace, t.path
                )));
            }
            if seen.find(&chain).is_some() {
                return Err(RegistryError(format!(
                    "{}/{} is registered twice",
                    p.namespace, t.path
                )));
            }
            if chain.len() > 1 && seen.find(&chain[..chain.len() - 1]).is_none() {
                return Err(RegistryError(format!(
                    "{}/{} is registered before its parent type",
                    p.namespace, t.path
                )));
            }
            for a in &t.actions {
                if has_child_named(&p, &chain, a) {
                    return Err(RegistryError(format!(
                        "{}/{}: action '{a}' has the name of a child type",
                        p.namespace, t.path
                    )));
                }
            }
            seen.types.push(t.clone());
        }
        self.providers.push(p);
        Ok(())
    }

    /// The provider of a namespace (case-insensitive).
    pub fn provider(&self, namespace: &str) -> Option<&ProviderSpec> {
        self.providers
            .iter()
            .find(|p| p.namespace.eq_ignore_ascii_case(namespace))
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderSpec> {
        self.providers.iter()
    }

    /// The registration of a full type name `Namespace/type[/child…]`, with its canonical
    /// name, or ARM's error for a namespace or type nobody registered.
    pub fn resolve_type(&self, full: &str) -> Result<(String, &TypeSpec), ArmError> {
        let mut parts = full.split('/');
        let ns = parts.next().unwrap_or_default();
        let chain: Vec<&str> = parts.collect();
        let p = self.provider(ns).ok_or_else(|| unknown_namespace(ns))?;
        let t = p
            .find(&chain)
            .ok_or_else(|| unknown_type(&p.namespace, &chain.join("/")))?;
        Ok((format!("{}/{}", p.namespace, t.path), t))
    }

    /// Routes a request path (no query string) with its api-version.
    pub fn route(&self, method: &Method, path: &str, api_version: &str) -> Result<Route, ArmError> {
        let path = path.trim_end_matches('/');
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // The `providers` segment that starts this request's resource part: the last one whose
        // namespace is registered with an extension type, else the first.
        let provider_positions: Vec<usize> = segs
            .iter()
            .enumerate()
            .filter(|(i, s)| s.eq_ignore_ascii_case("providers") && *i + 1 < segs.len())
            .map(|(i, _)| i)
            .collect();
        let Some(&first) = provider_positions.first() else {
            return Err(not_found_path(path));
        };
        let pos = provider_positions
            .iter()
            .rev()
            .copied()
            .find(|&i| {
                self.provider(segs[i + 1])
                    .is_some_and(|p| p.types.iter().any(|t| t.level == Level::Extension))
            })
            .unwrap_or(first);
        let prefix = if pos == 0 {
            "/".to_string()
        } else {
            format!("/{}", segs[..pos].join("/"))
        };
        let base = Scope::parse(&prefix)
            .map_err(|e| ArmError::bad_request("InvalidResourceId", e.to_string()))?;
        let ns = segs[pos + 1];
        let provider = self.provider(ns).ok_or_else(|| unknown_namespace(ns))?;
        let rest = &segs[pos + 2..];
        if rest.is_empty() || rest.iter().any(|s| s.is_empty()) {
            return Err(not_found_path(path));
        }
        // Type chain and names: t1/n1/t2/n2/…, maybe with a trailing collection or action.
        let pairs = rest.len() / 2;
        let chain: Vec<&str> = rest.iter().step_by(2).copied().collect();
        let (kind, type_chain): (RouteKind, Vec<&str>) = if rest.len().is_multiple_of(2) {
            let last = rest[rest.len() - 1];
            let coll_action = (method == Method::POST)
                .then(|| provider.find(&chain))
                .flatten()
                .and_then(|t| t.find_collection_action(last));
            match coll_action {
                Some(a) => (RouteKind::CollectionAction(a.to_string()), chain.clone()),
                None => (RouteKind::Item, chain.clone()),
            }
        } else {
            let last = rest[rest.len() - 1];
            if provider.find(&chain).is_some() {
                (RouteKind::Collection, chain.clone())
            } else if pairs > 0
                && let Some(t) = provider.find(&chain[..pairs])
                && let Some(a) = t.find_action(last)
            {
                if method != Method::POST {
                    return Err(method_not_allowed(method));
                }
                (RouteKind::Action(a.to_string()), chain[..pairs].to_vec())
            } else if pairs > 0
                && provider.find(&chain[..pairs]).is_some()
                && method == Method::POST
            {
                let t = provider.find(&chain[..pairs]).unwrap();
                return Err(ArmError::bad_request(
                    "InvalidResourceType",
                    format!(
                        "The resource type '{}/{}' has no action '{last}'.",
                        provider.namespace, t.path
                    ),
                ));
            } else {
                return Err(unknown_type(&provider.namespace, &chain.join("/")));
            }
        };
        let spec = provider
            .find(&type_chain)
            .ok_or_else(|| unknown_type(&provider.namespace, &type_chain.join("/")))?;
        let level_ok = match spec.level {
            Level::ResourceGroup => {
                base.kind() == ScopeKind::ResourceGroup
                    || (base.kind() == ScopeKind::Subscription
                        && kind == RouteKind::Collection
                        && type_chain.len() == 1)
            }
            Level::Subscription => base.kind() == ScopeKind::Subscription,
            Level::Tenant => base.kind() == ScopeKind::Root,
            Level::Extension => true,
        };
        if !level_ok {
            return Err(not_found_path(path));
        }
        let type_name = format!("{}/{}", provider.namespace, spec.path);
        if !spec.accepts_api_version(api_version) {
            return Err(no_registered_provider(&type_name, spec, api_version));
        }
        // The canonical id of the resource (items, actions) or of the collection's parent.
        let canon_types: Vec<&str> = spec.path.split('/').collect();
        let names: Vec<&str> = rest.iter().skip(1).step_by(2).copied().collect();
        let keyword_prefix = canonical_prefix(&base);
        let build = |n: usize| {
            let mut id = format!(
                "{}/providers/{}",
                keyword_prefix.trim_end_matches('/'),
                provider.namespace
            );
            for i in 0..n {
                id.push('/');
                id.push_str(canon_types[i]);
                id.push('/');
                id.push_str(names[i]);
            }
            id
        };
        let (scope, id) = match &kind {
            // An extension resource is not itself a scope: it is authorized where it is attached.
            RouteKind::Item | RouteKind::Action(_) if spec.level == Level::Extension => {
                (base.clone(), Some(build(canon_types.len())))
            }
            RouteKind::Item | RouteKind::Action(_) => {
                let id = build(canon_types.len());
                let sc = Scope::parse(&id)
                    .map_err(|e| ArmError::bad_request("InvalidResourceId", e.to_string()))?;
                (sc, Some(id))
            }
            RouteKind::Collection | RouteKind::CollectionAction(_) => {
                let sc = if canon_types.len() > 1 {
                    Scope::parse(&build(canon_types.len() - 1))
                        .map_err(|e| ArmError::bad_request("InvalidResourceId", e.to_string()))?
                } else {
                    base.clone()
                };
                (sc, None)
            }
        };
        let authz_action = match &kind {
            RouteKind::Action(a) | RouteKind::CollectionAction(a) => {
                format!("{type_name}/{a}/action")
            }
            _ => match *method {
                Method::GET | Method::HEAD => format!("{type_name}/read"),
                Method::PUT | Method::PATCH if kind == RouteKind::Item => {
                    format!("{type_name}/write")
                }
                Method::DELETE if kind == RouteKind::Item => format!("{type_name}/delete"),
                _ => return Err(method_not_allowed(method)),
            },
        };
        Ok(Route {
            kind,
            type_name,
            spec: spec.clone(),
            scope,
            id,
            authz_action,
            api_version: api_version.to_string(),
        })
    }
}

fn has_child_named(p: &ProviderSpec, chain: &[&str], action: &str) -> bool {
    p.types.iter().any(|t| {
        let c: Vec<&str> = t.path.split('/').collect();
        c.len() == chain.len() + 1
            && c[..chain.len()]
                .iter()
                .zip(chain)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            && c[chain.len()].eq_ignore_ascii_case(action)
    })
}

/// `/subscriptions/{s}/resourceGroups/{g}` etc. with ARM's keyword casing.
fn canonical_prefix(base: &Scope) -> String {
    match base.kind() {
        ScopeKind::Root => "/".to_string(),
        ScopeKind::ManagementGroup => format!(
            "/providers/Microsoft.Management/managementGroups/{}",
            base.management_group().unwrap_or_default()
        ),
        ScopeKind::Subscription => {
            format!(
                "/subscriptions/{}",
                base.subscription_id().unwrap_or_default()
            )
        }
        ScopeKind::ResourceGroup => format!(
            "/subscriptions/{}/resourceGroups/{}",
            base.subscription_id().unwrap_or_default(),
            base.resource_group().unwrap_or_default()
        ),
        ScopeKind::Resource => base.to_string(),
    }
}

fn unknown_namespace(ns: &str) -> ArmError {
    let ns: String = ns.chars().take(100).collect();
    ArmError::bad_request(
        "InvalidResourceNamespace",
        format!("The resource namespace '{ns}' is invalid."),
    )
}

fn unknown_type(ns: &str, t: &str) -> ArmError {
    let t: String = t.chars().take(200).collect();
    ArmError::bad_request(
        "InvalidResourceType",
        format!("The resource type '{t}' could not be found in the namespace '{ns}'."),
    )
}

fn no_registered_provider(type_name: &str, spec: &TypeSpec, api_version: &str) -> ArmError {
    let v: String = api_version.chars().take(40).collect();
    let locations = if spec.locations.is_empty() {
        "all locations".to_string()
    } else {
        spec.locations.join(", ")
    };
    ArmError::bad_request(
        "NoRegisteredProviderFound",
        format!(
            "No registered resource provider found for API version '{v}' and type '{type_name}'. \
             The supported api-versions are '{}'. The supported locations are '{locations}'.",
            spec.api_versions.join(", ")
        ),
    )
}

/// ARM's answer to a PUT with a location the type does not offer.
pub fn location_not_available(type_name: &str, spec: &TypeSpec, location: &str) -> ArmError {
    let l: String = location.chars().take(60).collect();
    ArmError::bad_request(
        "LocationNotAvailableForResourceType",
        format!(
            "The provided location '{l}' is not available for resource type '{type_name}'. \
             List of available regions for the resource type is '{}'.",
            spec.locations.join(",")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        let mut r = Registry::default();
        r.register(
            ProviderSpec::new("Microsoft.App").with_type(
                TypeSpec::new("sessionPools", &["2024-02-02-preview", "2025-01-01"])
                    .locations(&["westus", "East US"])
                    .with_identity()
                    .collection_action("checkNameAvailability"),
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
            ProviderSpec::new("Microsoft.Authorization").with_type(
                TypeSpec::new("roleAssignments", &["2022-04-01"]).level(Level::Extension),
            ),
        )
        .unwrap();
        r
    }

    const RG: &str = "/subscriptions/s1/resourceGroups/g1";

    #[test]
    fn items_collections_actions() {
        let r = reg();
        let ml = "providers/Microsoft.MachineLearningServices/workspaces/w";
        let it = r
            .route(
                &Method::PUT,
                &format!("{RG}/{ml}/onlineendpoints/E1/deployments/blue"),
                "2024-04-01",
            )
            .unwrap();
        assert_eq!(it.kind, RouteKind::Item);
        assert_eq!(
            it.type_name,
            "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
        );
        assert_eq!(
            it.id.as_deref(),
            Some(
                "/subscriptions/s1/resourceGroups/g1/providers/Microsoft.MachineLearningServices/workspaces/w/onlineEndpoints/E1/deployments/blue"
            )
        );
        assert!(it.authz_action.ends_with("/deployments/write"));
        let c = r
            .route(
                &Method::GET,
                &format!("{RG}/{ml}/onlineEndpoints/e1/deployments"),
                "2024-04-01",
            )
            .unwrap();
        assert_eq!(c.kind, RouteKind::Collection);
        assert_eq!(
            c.scope.to_string().to_ascii_lowercase(),
            format!("{RG}/{ml}/onlineEndpoints/e1").to_ascii_lowercase()
        );
        let a = r
            .route(
                &Method::POST,
                &format!("{RG}/{ml}/onlineEndpoints/e1/LISTKEYS"),
                "2024-04-01",
            )
            .unwrap();
        assert_eq!(a.kind, RouteKind::Action("listKeys".into()));
        assert_eq!(
            a.authz_action,
            "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/listKeys/action"
        );
        assert!(!a.is_long_running(&Method::POST));
        let rk = r
            .route(
                &Method::POST,
                &format!("{RG}/{ml}/onlineEndpoints/e1/regenerateKeys"),
                "2024-04-01",
            )
            .unwrap();
        assert!(rk.is_long_running(&Method::POST));
        assert!(!it.spec.long_running.put);
        // GET of an action is not allowed.
        let e = r
            .route(
                &Method::GET,
                &format!("{RG}/{ml}/onlineEndpoints/e1/listKeys"),
                "2024-04-01",
            )
            .unwrap_err();
        assert_eq!(e.status, 405);
        let ca = r
            .route(
                &Method::POST,
                &format!("{RG}/providers/Microsoft.App/sessionPools/checkNameAvailability"),
                "2025-01-01",
            )
            .unwrap();
        assert_eq!(
            ca.kind,
            RouteKind::CollectionAction("checkNameAvailability".into())
        );
        // The same path with GET is an item named checkNameAvailability.
        let g = r
            .route(
                &Method::GET,
                &format!("{RG}/providers/Microsoft.App/sessionPools/checkNameAvailability"),
                "2025-01-01",
            )
            .unwrap();
        assert_eq!(g.kind, RouteKind::Item);
    }

    #[test]
    fn levels() {
        let r = reg();
        let sub = r
            .route(
                &Method::GET,
                "/subscriptions/s1/providers/microsoft.app/sessionpools",
                "2025-01-01",
            )
            .unwrap();
        assert_eq!(sub.kind, RouteKind::Collection);
        assert_eq!(sub.scope.kind(), ScopeKind::Subscription);
        assert_eq!(
            r.route(
                &Method::GET,
                "/subscriptions/s1/providers/Microsoft.App/sessionPools/p",
                "2025-01-01"
            )
            .unwrap_err()
            .status,
            404
        );
        let st = r
            .route(
                &Method::GET,
                "/subscriptions/s1/providers/Microsoft.MachineLearningServices/locations/westus/mfeOperationsStatus/oe:1:2",
                "2024-04-01",
            )
            .unwrap();
        assert_eq!(st.kind, RouteKind::Item);
        let ext = r
            .route(
                &Method::PUT,
                &format!("{RG}/providers/Microsoft.App/sessionPools/p/providers/Microsoft.Authorization/roleAssignments/x"),
                "2022-04-01",
            )
            .unwrap();
        assert_eq!(ext.type_name, "Microsoft.Authorization/roleAssignments");
        assert_eq!(ext.scope.kind(), ScopeKind::Resource);
        assert!(
            ext.id
                .unwrap()
                .ends_with("/providers/Microsoft.Authorization/roleAssignments/x")
        );
        let root = r
            .route(
                &Method::GET,
                "/providers/Microsoft.Authorization/roleAssignments",
                "2022-04-01",
            )
            .unwrap();
        assert!(root.scope.is_root());
    }

    #[test]
    fn refusals() {
        let r = reg();
        let e = r
            .route(
                &Method::PUT,
                &format!("{RG}/providers/Microsoft.SignalRService/signalR/x"),
                "2024-03-01",
            )
            .unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (400, "InvalidResourceNamespace")
        );
        let e = r
            .route(
                &Method::PUT,
                &format!("{RG}/providers/Microsoft.App/widgets/x"),
                "2025-01-01",
            )
            .unwrap_err();
        assert_eq!(e.code, "InvalidResourceType");
        let e = r
            .route(
                &Method::PUT,
                &format!("{RG}/providers/Microsoft.App/sessionPools/x"),
                "2019-01-01",
            )
            .unwrap_err();
        assert_eq!(e.code, "NoRegisteredProviderFound");
        assert!(
            e.message.contains("2024-02-02-preview, 2025-01-01"),
            "{}",
            e.message
        );
        assert!(e.message.contains("westus, East US"), "{}", e.message);
        let e = r
            .route(
                &Method::POST,
                &format!("{RG}/providers/Microsoft.App/sessionPools/x/explode"),
                "2025-01-01",
            )
            .unwrap_err();
        assert_eq!(e.code, "InvalidResourceType");
        let (name, spec) = r.resolve_type("microsoft.app/SESSIONPOOLS").unwrap();
        assert_eq!(name, "Microsoft.App/sessionPools");
        assert!(spec.allows_location("eastus"));
        assert!(!spec.allows_location("mars"));
        assert_eq!(
            location_not_available(&name, spec, "mars").code,
            "LocationNotAvailableForResourceType"
        );
    }

    #[test]
    fn registration_mistakes() {
        let mut r = reg();
        assert!(r.register(ProviderSpec::new("microsoft.app")).is_err());
        assert!(
            r.register(
                ProviderSpec::new("Contoso.X").with_type(TypeSpec::new("a/b", &["2020-01-01"]))
            )
            .is_err()
        );
        assert!(
            r.register(ProviderSpec::new("Contoso.Y").with_type(TypeSpec::new("a", &[])))
                .is_err()
        );
        assert!(
            r.register(
                ProviderSpec::new("Contoso.Z")
                    .with_type(TypeSpec::new("a", &["2020-01-01"]).action("b"))
                    .with_type(TypeSpec::new("a/b", &["2020-01-01"]))
            )
            .is_err(),
            "an action may not have the name of a child type"
        );
    }

    proptest::proptest! {
        /// Any path routes to an answer or an ARM error, never a panic; a routed item's id
        /// routes again to the same type.
        #[test]
        fn route_never_panics(segs in proptest::collection::vec("[A-Za-z0-9._-]{0,12}", 0..12), post in proptest::bool::ANY) {
            let r = reg();
            let path = format!("/{}", segs.join("/"));
            let m = if post { Method::POST } else { Method::GET };
            if let Ok(route) = r.route(&m, &path, "2025-01-01")
                && let Some(id) = &route.id
                && route.kind == RouteKind::Item
            {
                let again = r.route(&Method::GET, id, "2025-01-01").unwrap();
                proptest::prop_assert_eq!(again.type_name, route.type_name);
            }
        }
    }
}
