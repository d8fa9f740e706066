//! The provider interface: what a service implements, in its own crate, to own resource types;
//! and the platform interface the framework (and providers) call back into.
//!
//! A [`Provider`] declares its namespace and types ([`Provider::spec`]) and hooks into the
//! generic handling that [`crate::host::Host`] does for every type: validation and
//! normalisation of `properties`, the read-only properties it adds on every read, what to do
//! after a create, update or delete, its POST actions, and the work of a long-running
//! operation. A provider whose types live in storage of its own (the credential manager's
//! child resources, role assignments) serves those requests itself ([`Provider::serve`]), and
//! a namespace of plain operation endpoints (`/providers/Cloister.Identity/…`) claims its
//! paths ([`Provider::claims`], [`Provider::serve_raw`]).

use crate::registry::{ProviderSpec, Route};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::{Resource, ServicePrincipal, Store};
use serde_json::Value;
use std::collections::BTreeMap;

pub use crate::wire::Res;

/// The authenticated caller of the management API.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub object_id: String,
    pub tenant_id: String,
    pub app_id: String,
    pub idtyp: String,
}

/// One management request, parsed once at the edge.
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub method: &'a Method,
    /// The path without a trailing `/` and without the query.
    pub path: &'a str,
    /// The query parameters (the last of a repeated key wins).
    pub query: &'a BTreeMap<String, String>,
    /// The raw query string, for handlers that read repeated keys.
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Request<'_> {
    /// A query parameter, its key compared without case (`$filter`, `$FILTER`).
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(x, _)| x.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    pub fn api_version_opt(&self) -> Option<&str> {
        self.query.get("api-version").map(String::as_str)
    }

    pub fn api_version(&self) -> &str {
        self.query
            .get("api-version")
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// What a write or delete changed, so the platform can refresh its caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Managed identities were attached or detached (identity sets of resources).
    pub identities: bool,
    /// Principals were removed (clients and their cached tokens).
    pub principals: bool,
    /// Role assignments or definitions changed (the RBAC snapshot).
    pub rbac: bool,
}

/// What the framework and providers need from the platform they run in. `server` implements
/// it over the store, the RBAC evaluator and the identity service.
#[async_trait]
pub trait Platform: Send + Sync {
    fn store(&self) -> &Store;
    /// The one authorization call of a request: `principal` may perform `action` at `scope`.
    fn authorize(&self, principal: &str, action: &str, scope: &Scope) -> Result<(), ArmError>;
    /// The directory's home tenant id.
    fn home_tenant(&self) -> String;
    /// The externally visible base URL (`https://host:port`), no trailing `/`.
    fn public_url(&self) -> String;
    /// A new (not yet stored) service principal for a managed identity of `resource_id`.
    fn new_managed_identity(&self, resource_id: &str, name: &str) -> ServicePrincipal;
    /// The directory's kind (`User`, `Group`, `ServicePrincipal`) and display name of a
    /// principal, `None` if the directory has no such object.
    async fn principal_kind(&self, id: &str) -> Result<Option<(String, String)>, ArmError>;
    /// Refreshes what depends on identities, principals and role assignments.
    async fn changed(&self, what: Changed) -> Result<(), ArmError>;
    /// The platform as a shared handle, for work that outlives its request (the background
    /// part of a long-running operation). `None`: that work runs within the request, which
    /// then answers only when it is done.
    fn shared(&self) -> Option<std::sync::Arc<dyn Platform>> {
        None
    }
}

/// What providers may ask of the host that routed their request (the host implements it;
/// providers see only this, so no module of the framework imports another in a loop).
#[async_trait]
pub trait HostOps: Send + Sync {
    /// The registry of every provider's types.
    fn registry(&self) -> &crate::registry::Registry;
    /// The JSON of a stored resource, as the generic path answers it.
    async fn resource_json(&self, p: &dyn Platform, r: &Resource) -> Value;
    /// Tells the owning providers that resources are gone (a cascade) and refreshes caches.
    async fn after_removal(
        &self,
        p: &dyn Platform,
        removed: &cloister_store::Removed,
    ) -> Result<(), ArmError>;
    /// The generic, paged, authorized list of resources.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        p: &dyn Platform,
        req: &Request<'_>,
        sub: &str,
        rg: Option<&str>,
        type_: Option<String>,
        parent: Option<&str>,
    ) -> Res;
}

/// A create or update of a resource, as handed to [`Provider::properties`].
pub struct Write<'a> {
    /// The registered type name (`Microsoft.App/sessionPools`).
    pub type_name: &'a str,
    /// The resource's own name (the last segment of its id).
    pub name: &'a str,
    /// The resource as it will be stored, with location, tags and identity applied and the
    /// properties of the current version (empty object for a new resource).
    pub resource: &'a Resource,
    /// The `properties` of the request body, if any.
    pub properties: Option<&'a Value>,
    /// PATCH (merge into the current properties) rather than PUT (replace).
    pub patch: bool,
}

/// A service's resource provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The namespace, its types, api-versions, locations, actions and long-running operations.
    fn spec(&self) -> ProviderSpec;

    /// Serves a request that the registry routed to one of this provider's types, when the
    /// provider keeps those resources itself. `None` leaves it to the generic handling.
    async fn serve(
        &self,
        _p: &dyn Platform,
        _host: &dyn HostOps,
        _route: &Route,
        _req: &Request<'_>,
    ) -> Option<Res> {
        None
    }

    /// Whether this provider routes the path under its namespace itself (operation endpoints
    /// that are not resources, types with semantics of their own, or everything below one of
    /// its resources). `tail` is the path's segments after `providers/{namespace}`.
    fn claims(&self, _tail: &[&str]) -> bool {
        false
    }

    /// Serves a path under `{scope}/providers/{namespace}/…` that [`Provider::claims`].
    /// `scope` is the part of the path before `/providers/{namespace}` (`/` for the tenant) and
    /// `tail` the segments after the namespace.
    async fn serve_raw(
        &self,
        _p: &dyn Platform,
        _host: &dyn HostOps,
        _scope: &str,
        _tail: &[&str],
        req: &Request<'_>,
    ) -> Res {
        Err(crate::wire::not_found_path(req.path))
    }

    /// Validates and normalises the `properties` to store. `None`: the generic rule (an
    /// object, merged on PATCH, read-only fields dropped).
    async fn properties(
        &self,
        _p: &dyn Platform,
        _w: &Write<'_>,
    ) -> Result<Option<Value>, ArmError> {
        Ok(None)
    }

    /// Adds the read-only properties of a resource to its `properties` on every read
    /// (endpoints, counts). `provisioningState` is the framework's.
    async fn decorate(&self, _p: &dyn Platform, _r: &Resource, _props: &mut Value) {}

    /// After a create or update was stored.
    async fn written(&self, _p: &dyn Platform, _r: &Resource, _created: bool) {}

    /// After resources of this provider's namespace were deleted (directly or by a cascade
    /// from a parent or a resource group).
    async fn removed(&self, _p: &dyn Platform, _ids: &[String]) {}

    /// A POST action on one of this provider's resources or collections. The caller is
    /// already authorized for the route's action.
    async fn action(
        &self,
        _p: &dyn Platform,
        _host: &dyn HostOps,
        route: &Route,
        _req: &Request<'_>,
    ) -> Res {
        Err(ArmError::bad_request(
            "InvalidResourceType",
            format!(
                "The resource type '{}' has no such action.",
                route.type_name
            ),
        ))
    }

    /// The work of a long-running create or update, run after the resource is stored with
    /// `provisioningState` `Accepted`. The resource is `Succeeded` when it returns `Ok`,
    /// `Failed` (with the error) otherwise.
    async fn provision(&self, _p: &dyn Platform, _r: &Resource) -> Result<(), ArmError> {
        Ok(())
    }

    /// At server start, and again on the platform's daily upkeep tick: bring what runs in
    /// step with the stored resources (start pools, renew bindings).
    async fn upkeep(&self, _p: &dyn Platform) -> Result<(), ArmError> {
        Ok(())
    }

    /// The work of a long-running delete, run after the resource is marked `Deleting` and
    /// before it is removed. An error keeps the resource, `Failed`, and fails the operation.
    async fn deprovision(&self, _p: &dyn Platform, _r: &Resource) -> Result<(), ArmError> {
        Ok(())
    }

    /// The work of a long-running POST action on a resource (an action the type lists in
    /// `LongRunning::actions`), run after the caller was answered `202`. Its `Some` value is
    /// the operation's result, which the result URL answers when the operation succeeded.
    async fn run_action(
        &self,
        _p: &dyn Platform,
        _r: &Resource,
        action: &str,
        _body: &Value,
    ) -> Result<Option<Value>, ArmError> {
        Err(ArmError::bad_request(
            "InvalidResourceType",
            format!("The action '{action}' is not long-running here."),
        ))
    }
}
