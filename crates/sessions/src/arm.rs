//! The sessions service's resource provider: `Microsoft.App/sessionPools`, kept in step with
//! the pool manager (a pool starts, changes and stops with its resource), its in-session
//! identities (a binding per pool whose secret is the sessions' `IDENTITY_HEADER`), and the
//! data plane's authorizer (Cloister tokens for the sessions audiences plus the Session
//! Executor data action).

use crate::Manager;
use crate::api::{Authorizer, endpoint};
use crate::error::DpError;
use crate::runtime::{SessionKind, SessionSpec};
use crate::spec::PoolSpec;
use cloister_arm::provider::{Platform, Provider, Write};
use cloister_arm::registry::{ProviderSpec, TypeSpec};
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_identity::Identity;
use cloister_store::{Resource, Store};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub const POOL_TYPE: &str = "Microsoft.App/sessionPools";
/// The data action the Session Executor role grants.
pub const EXECUTE: &str = "Microsoft.App/sessionPools/interpreters/execute/action";
pub const AUDIENCES: [&str; 4] = [
    "https://dynamicsessions.io",
    "https://dynamicsessions.io/",
    "https://acasessions.io",
    "https://acasessions.io/",
];

/// A pool's in-session identity binding: (principals, secret, expiry).
type PoolBinding = (Vec<String>, String, i64);

/// `Microsoft.App/sessionPools` (with ARM's identity block), with its OpenAPI description.
/// Every dated api-version is answered: clients from `2023-08-01-preview` to
/// `2025-10-02-preview` send pools of the same shape, and the fields of each version are told
/// apart by the pool's own validation.
pub fn arm_provider() -> ProviderSpec {
    crate::openapi::describe(
        ProviderSpec::new("Microsoft.App")
            .with_type(TypeSpec::new("sessionPools", &["*"]).with_identity()),
    )
}

/// The `Microsoft.App` provider.
pub struct SessionPools {
    /// The pool manager (None when this host cannot run sandboxes: pools are then only
    /// resources).
    pub manager: Option<Arc<Manager>>,
    pub identity: Arc<Identity>,
    pub store: Store,
    /// The externally visible base URL, for `poolManagementEndpoint`.
    pub public_url: String,
    /// The socket sessions reach the managed-identity endpoint through.
    pub socket: PathBuf,
    bindings: Mutex<HashMap<String, PoolBinding>>,
    /// The ETag of each pool resource the manager runs, for [`SessionPools::sync`].
    applied: Mutex<HashMap<String, String>>,
    /// Whether the last [`SessionPools::sync`] saw other nodes.
    shared: std::sync::atomic::AtomicBool,
}

impl SessionPools {
    pub fn new(
        manager: Option<Arc<Manager>>,
        identity: Arc<Identity>,
        store: Store,
        public_url: String,
        socket: PathBuf,
    ) -> Self {
        SessionPools {
            manager,
            identity,
            store,
            public_url,
            socket,
            bindings: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            shared: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Brings the manager in line with the pool resources in the store, for pools written
    /// or deleted through other nodes: new and changed ones (by ETag) are applied, gone ones
    /// stopped. One listing per subscription while other nodes are alive; nothing otherwise.
    pub async fn sync(&self) -> Result<(), cloister_store::StoreError> {
        let Some(m) = &self.manager else {
            return Ok(());
        };
        // A node alone in its cluster wrote every pool itself: nothing to read. One more pass
        // runs after the last other node is gone, for what it wrote just before.
        let others = match m.cluster() {
            Some(c) => {
                let me = c.node_id().to_string();
                c.alive_nodes().await.iter().any(|n| n.id != me)
            }
            None => false,
        };
        let was = self
            .shared
            .swap(others, std::sync::atomic::Ordering::Relaxed);
        if !others && !was {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        for sub in self.store.subscription_list().await? {
            for r in self
                .store
                .resource_list(&sub.id, None, Some(POOL_TYPE))
                .await?
            {
                let key = r.id.to_lowercase();
                let known = self.applied.lock().unwrap().get(&key).cloned();
                if known.as_deref() != Some(r.etag.as_str()) {
                    apply(self, &r).await;
                }
                seen.insert(key);
            }
        }
        let gone: Vec<String> = self
            .applied
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        if !gone.is_empty() {
            removed(self, &gone).await;
        }
        Ok(())
    }

    /// Starts every stored pool (server start), and renews in-session identity bindings
    /// before they expire, re-creating lost ones (the renewal tick).
    pub async fn load_all(&self) -> Result<(), cloister_store::StoreError> {
        load_all(self).await
    }

    /// Whether this server runs CustomContainer pools (it has a container backend).
    pub fn custom_enabled(&self) -> bool {
        self.manager
            .as_ref()
            .is_some_and(|m| m.runtime().custom().is_some())
    }

    fn custom_rules(&self) -> crate::custom_arm::Pools<'_> {
        crate::custom_arm::Pools {
            manager: self.manager.as_ref(),
            mk: &self.identity.mk,
        }
    }
}

#[async_trait::async_trait]
impl Provider for SessionPools {
    fn spec(&self) -> ProviderSpec {
        arm_provider()
    }

    async fn properties(
        &self,
        _p: &dyn Platform,
        w: &Write<'_>,
    ) -> Result<Option<Value>, ArmError> {
        crate::custom_arm::enabled_for(&self.custom_rules(), w.resource, w.properties)?;
        let mut spec = prepare(w.resource, w.properties, w.patch, w.name)?;
        crate::custom_arm::admit(&self.custom_rules(), w.resource, w.properties, &mut spec)?;
        Ok(Some(spec.to_stored()))
    }

    async fn decorate(&self, _p: &dyn Platform, r: &Resource, props: &mut Value) {
        decorate(self, r, props);
    }

    async fn written(&self, _p: &dyn Platform, r: &Resource, _created: bool) {
        apply(self, r).await;
    }

    async fn removed(&self, _p: &dyn Platform, ids: &[String]) {
        removed(self, ids).await;
    }

    async fn upkeep(&self, _p: &dyn Platform) -> Result<(), ArmError> {
        load_all(self).await.map_err(|e| {
            tracing::error!("session pools: {e}");
            ArmError::internal("The session pools could not be loaded.")
        })
    }
}

pub struct TokenAuthorizer {
    pub id: Arc<Identity>,
    pub rbac: Arc<cloister_authorization::Rbac>,
}

impl Authorizer for TokenAuthorizer {
    fn authorize(&self, authorization: Option<&str>, pool_id: &str) -> Result<String, DpError> {
        let Some(h) = authorization else {
            return Err(DpError::new(
                401,
                "Unauthorized",
                "Authentication failed. The 'Authorization' header is missing; send a bearer token for https://dynamicsessions.io.",
            ));
        };
        let token = match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(DpError::new(
                    401,
                    "Unauthorized",
                    "Authentication failed. The 'Authorization' header must be 'Bearer <token>'.",
                ));
            }
        };
        let auds: Vec<String> = AUDIENCES.iter().map(|s| s.to_string()).collect();
        let claims = self.id.validate(token, &auds).map_err(|e| {
            DpError::new(
                401,
                "InvalidAuthenticationToken",
                format!("The access token is invalid: {e}. Session pools accept tokens for https://dynamicsessions.io or https://acasessions.io."),
            )
        })?;
        let sc = Scope::parse(pool_id)
            .map_err(|e| DpError::bad(format!("The pool path is not valid: {e}")))?;
        self.rbac
            .authorize_data(&claims.oid, EXECUTE, &sc)
            .map_err(|e| DpError::new(403, "PermissionDenied", e.message))?;
        Ok(claims.oid)
    }
}

/// Validates and normalises a pool's `properties` on PUT/PATCH; returns the stored text.
fn prepare(
    r: &Resource,
    props: Option<&Value>,
    patch: bool,
    name: &str,
) -> Result<PoolSpec, ArmError> {
    let ok_name = (2..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok_name {
        return Err(ArmError::bad_request(
            "InvalidResourceName",
            format!(
                "The session pool name '{name}' is not valid: use 2-63 lower-case letters, digits and hyphens, starting with a letter."
            ),
        ));
    }
    let base = if patch {
        serde_json::from_str::<Value>(&r.properties)
            .ok()
            .and_then(|v| PoolSpec::parse(&v, None).ok())
    } else {
        None
    };
    let empty = json!({});
    let spec = PoolSpec::parse(props.unwrap_or(&empty), base.as_ref())
        .map_err(|m| ArmError::bad_request("InvalidRequestContent", m))?;
    for i in &spec.identities {
        let known = if i.identity == "system" {
            r.system_principal_id.is_some()
        } else {
            r.user_identities
                .iter()
                .any(|u| u.eq_ignore_ascii_case(&i.identity))
        };
        if !known {
            return Err(ArmError::bad_request(
                "InvalidManagedIdentitySettings",
                format!(
                    "managedIdentitySettings names '{}', which is not an identity of this session pool; add it to the pool's 'identity' block first.",
                    i.identity
                ),
            ));
        }
    }
    Ok(spec)
}

pub(crate) fn spec_of(r: &Resource) -> Option<PoolSpec> {
    PoolSpec::of_stored(&r.properties)
}

/// The pool's properties as returned: both `dynamicPoolConfiguration` forms, the
/// data-plane endpoint and the provisioning state.
fn decorate(pools: &SessionPools, r: &Resource, props: &mut Value) {
    if let Some(spec) = spec_of(r) {
        // Secrets: names only (to_stored would carry their sealed values).
        let mut p = spec.to_properties("9999-12-31");
        p["dynamicPoolConfiguration"]["executionType"] = json!("Timed");
        p["dynamicPoolConfiguration"]["cooldownPeriodInSeconds"] = json!(spec.cooldown_secs);
        *props = p;
    }
    props["poolManagementEndpoint"] = json!(endpoint(&pools.public_url, &r.id));
    props["nodeCount"] = json!(0);
    if let Some(p) = pools.manager.as_ref().and_then(|m| m.pool(&r.id)) {
        props["nodeCount"] = json!(p.session_count() + p.ready_count());
    }
    if let Some(spec) = spec_of(r) {
        crate::custom_arm::decorate(&pools.custom_rules(), r, &spec, props);
    }
}

/// Binding lifetime for a pool's in-session identities; renewed well before it ends.
const BINDING_TTL: i64 = 7 * 86400;

/// The sandbox settings of a pool: its network, and, when some of its identities have
/// lifecycle `Main`, a binding to exactly those identities whose secret is the
/// `IDENTITY_HEADER` inside its sessions.
async fn session_spec(st: &SessionPools, r: &Resource, spec: &PoolSpec) -> SessionSpec {
    let mut ss = SessionSpec {
        // A stored pool always has a type the runtime runs (PoolSpec::parse refuses others).
        kind: SessionKind::of(spec.container_type).unwrap_or_default(),
        network: spec.network,
        identity_socket: None,
        identity_header: None,
        custom: crate::custom_arm::launch(&st.custom_rules(), r, spec),
    };
    let mut principals = vec![];
    for i in spec.identities.iter().filter(|i| i.main) {
        if i.identity == "system" {
            if let Some(p) = &r.system_principal_id {
                principals.push(p.clone());
            }
        } else if let Ok(Some(sp)) = st.store.sp_by_mi_resource(&i.identity).await {
            principals.push(sp.id);
        }
    }
    if principals.is_empty() {
        let gone = st.bindings.lock().unwrap().remove(&r.id.to_lowercase());
        if let Some((_, old, _)) = gone
            && let Err(e) = st.identity.forget_session_binding(&old).await
        {
            tracing::warn!(pool = %r.id, "ending the previous identity binding: {e}");
        }
        return ss;
    }
    principals.sort();
    let key = r.id.to_lowercase();
    // One secret per pool and set of identities, for the life of this process: the binding
    // under it is kept alive (re-created if deleted, purged or expired), so the sessions
    // holding it keep their identities. A new set of identities gets a new secret and the old
    // binding ends.
    let known = st.bindings.lock().unwrap().get(&key).cloned();
    let secret = match known {
        Some((p, s, _)) if p == principals => s,
        other => {
            if let Some((_, old, _)) = other
                && let Err(e) = st.identity.forget_session_binding(&old).await
            {
                tracing::warn!(pool = %r.id, "ending the previous identity binding: {e}");
            }
            cloister_crypto::random_token(32)
        }
    };
    match st
        .identity
        .keep_session_binding(&r.id, principals.clone(), &secret, BINDING_TTL)
        .await
    {
        Ok(exp) => {
            st.bindings
                .lock()
                .unwrap()
                .insert(key, (principals, secret.clone(), exp));
        }
        Err(e) => {
            tracing::error!(pool = %r.id, "identity binding for sessions: {e}");
            return ss;
        }
    }
    ss.identity_socket = Some(st.socket.clone());
    ss.identity_header = Some(secret);
    ss
}

/// Brings the running pool in line with the stored resource.
async fn apply(st: &SessionPools, r: &Resource) {
    if st.manager.is_none() {
        return;
    }
    if let Some(spec) = spec_of(r) {
        if spec.container_type == crate::spec::ContainerType::CustomContainer
            && !st.custom_enabled()
        {
            tracing::warn!(pool = %r.id, "a CustomContainer pool is stored, but custom containers are not enabled on this server; it has no sessions");
            return;
        }
        let ss = session_spec(st, r, &spec).await;
        if let Some(m) = &st.manager {
            m.upsert(&r.id, spec, ss);
        }
        st.applied
            .lock()
            .unwrap()
            .insert(r.id.to_lowercase(), r.etag.clone());
    }
}

/// Stops pools whose resources are gone.
async fn removed(st: &SessionPools, ids: &[String]) {
    let Some(m) = &st.manager else { return };
    for id in ids {
        st.applied.lock().unwrap().remove(&id.to_lowercase());
        m.remove(id).await;
        let gone = st.bindings.lock().unwrap().remove(&id.to_lowercase());
        if let Some((_, secret, _)) = gone
            && let Err(e) = st.identity.forget_session_binding(&secret).await
        {
            tracing::warn!(pool = %id, "ending the identity binding of a deleted pool: {e}");
        }
    }
}

/// Starts every stored pool (server start).
async fn load_all(st: &SessionPools) -> Result<(), cloister_store::StoreError> {
    if st.manager.is_none() {
        return Ok(());
    }
    for sub in st.store.subscription_list().await? {
        for r in st
            .store
            .resource_list(&sub.id, None, Some(POOL_TYPE))
            .await?
        {
            apply(st, &r).await;
        }
    }
    Ok(())
}
