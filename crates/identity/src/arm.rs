//! The identity service's resource providers: `Microsoft.ManagedIdentity/userAssignedIdentities`
//! (each instance is a managed identity: the framework makes its principal on create and
//! shows its ids), and Cloister's own tenant-level operation endpoints `Cloister.Identity`
//! (managed-identity bindings for `cloister run`, signing keys) and `Cloister.Directory`
//! (tenants).

use crate::Identity;
use axum::Router;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use cloister_arm::host::{not_found_path, ok, parse_body, scope, store_err};
use cloister_arm::provider::{HostOps, Platform, Provider, Request, Res};
use cloister_arm::registry::{Level, ProviderSpec, TypeSpec};
use cloister_core::clock::{format_rfc3339, now_secs};
use cloister_core::error::ArmError;
use cloister_core::{is_guid, new_guid};
use cloister_store::{Store, Tenant};
use serde_json::{Value, json};
use std::sync::Arc;

/// The user-assigned identity type.
pub const UAMI_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";

/// `Microsoft.ManagedIdentity/userAssignedIdentities`, with its OpenAPI description.
pub fn arm_provider() -> ProviderSpec {
    crate::openapi::describe(
        ProviderSpec::new("Microsoft.ManagedIdentity")
            .with_type(TypeSpec::new("userAssignedIdentities", &["*"]).identity_resource()),
    )
}

/// `Microsoft.ManagedIdentity`: user-assigned identities, handled by the framework's generic
/// path (a principal per instance, its ids among the read-only properties).
pub struct ManagedIdentities;

#[async_trait::async_trait]
impl Provider for ManagedIdentities {
    fn spec(&self) -> ProviderSpec {
        arm_provider()
    }
}

/// The type of the resource that carries a Cloister host's own system-assigned identity (the
/// one its IMDS endpoint answers for by default).
pub const HOST_TYPE: &str = "Cloister.Platform/hosts";

/// `Cloister.Platform`: hosts, a plain type with the identity block.
pub struct PlatformHosts;

#[async_trait::async_trait]
impl Provider for PlatformHosts {
    fn spec(&self) -> ProviderSpec {
        let (ns, t) = HOST_TYPE.split_once('/').unwrap_or_default();
        ProviderSpec::new(ns).with_type(TypeSpec::new(t, &["*"]).with_identity())
    }
}

/// `Cloister.Identity` and `Cloister.Directory`: operation endpoints at the tenant.
pub struct CloisterIdentity {
    pub id: Arc<Identity>,
    pub namespace: &'static str,
}

impl CloisterIdentity {
    pub fn identity(id: Arc<Identity>) -> Self {
        CloisterIdentity {
            id,
            namespace: "Cloister.Identity",
        }
    }
    pub fn directory(id: Arc<Identity>) -> Self {
        CloisterIdentity {
            id,
            namespace: "Cloister.Directory",
        }
    }
}

#[async_trait::async_trait]
impl Provider for CloisterIdentity {
    fn spec(&self) -> ProviderSpec {
        let t = |p: &str| TypeSpec::new(p, &["*"]).level(Level::Tenant);
        if self.namespace == "Cloister.Directory" {
            ProviderSpec::new(self.namespace)
                .routes_itself()
                .with_type(t("tenants"))
        } else {
            ProviderSpec::new(self.namespace)
                .routes_itself()
                .with_type(t("bindings"))
                .with_type(t("signingKeys").collection_action("rotate"))
        }
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
        cloister(&self.id, p, req).await
    }
}

/// The route that ends a `cloister run` binding by its secret (no bearer token: possession
/// of the secret is the authorization).
pub fn bindings_router(id: Arc<Identity>) -> Router {
    Router::new()
        .route(
            "/providers/Cloister.Identity/bindings/current",
            axum::routing::delete(delete_binding),
        )
        .with_state(id)
}

/// Finds a user-assigned identity by resource id, client id, principal id, or unique name.
pub async fn find_uami(store: &Store, needle: &str) -> Result<cloister_store::Resource, ArmError> {
    if needle.starts_with('/') {
        let sc = scope(needle)?;
        return store
            .resource_get(&sc.to_string())
            .await
            .map_err(store_err)?
            .filter(|r| r.type_.eq_ignore_ascii_case(UAMI_TYPE))
            .ok_or_else(|| {
                ArmError::not_found(
                    "ResourceNotFound",
                    format!("The user-assigned identity '{needle}' was not found."),
                )
            });
    }
    let mut found = vec![];
    for s in store.subscription_list().await.map_err(store_err)? {
        for r in store
            .resource_list(&s.id, None, Some(UAMI_TYPE))
            .await
            .map_err(store_err)?
        {
            if is_guid(needle) {
                if let Ok(Some(sp)) = store.sp_by_mi_resource(&r.id).await
                    && (sp.app_id.eq_ignore_ascii_case(needle)
                        || sp.id.eq_ignore_ascii_case(needle))
                {
                    found.push(r);
                }
            } else if r.name.eq_ignore_ascii_case(needle) {
                found.push(r);
            }
        }
    }
    match found.len() {
        0 => Err(ArmError::not_found(
            "ResourceNotFound",
            format!("No user-assigned identity named or with client id '{needle}' was found."),
        )),
        1 => Ok(found.remove(0)),
        _ => Err(ArmError::bad_request(
            "AmbiguousIdentity",
            format!(
                "Several identities match '{needle}': {}. Give the resource id.",
                found
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

async fn cloister(id: &Identity, p: &dyn Platform, req: &Request<'_>) -> Res {
    let (caller, method, path, body) = (req.caller, req.method, req.path, req.body);
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let root = scope("/")?;
    match (
        method.clone(),
        segs.iter()
            .skip(1)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        (Method::POST, ["cloister.identity", "bindings"]) => {
            let b = parse_body(body)?;
            let needle = b.get("identity").and_then(|v| v.as_str()).ok_or_else(|| {
                ArmError::invalid("'identity' (name, client id or resource id) is required.")
            })?;
            let ttl = b
                .get("ttlSeconds")
                .and_then(|v| v.as_i64())
                .unwrap_or(12 * 3600);
            let r = find_uami(p.store(), needle).await?;
            let sc = scope(&r.id)?;
            p.authorize(
                &caller.object_id,
                "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                &sc,
            )?;
            let sp = p
                .store()
                .sp_by_mi_resource(&r.id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| ArmError::internal("identity has no principal"))?;
            let (secret, expires) = id
                .create_binding(vec![sp.id.clone()], &caller.object_id, ttl)
                .await
                .map_err(ArmError::from)?;
            let endpoint = match &id.http_base {
                Some(h) => format!("{h}/msi/token"),
                None => format!("{}/msi/token", id.authority),
            };
            ok(
                StatusCode::CREATED,
                json!({
                    "identityEndpoint": endpoint,
                    "identityHeader": secret.expose(),
                    "expiresOn": format_rfc3339(expires),
                    "clientId": sp.app_id,
                    "principalId": sp.id,
                    "resourceId": r.id,
                }),
            )
        }
        (Method::GET, ["cloister.identity", "signingkeys"]) => {
            p.authorize(
                &caller.object_id,
                "Cloister.Identity/signingKeys/read",
                &root,
            )?;
            ok(StatusCode::OK, json!({ "value": id.keys.list() }))
        }
        (Method::POST, ["cloister.identity", "signingkeys", "rotate"]) => {
            p.authorize(
                &caller.object_id,
                "Cloister.Identity/signingKeys/action",
                &root,
            )?;
            let kid = id.keys.rotate_now().await.map_err(ArmError::from)?;
            ok(
                StatusCode::OK,
                json!({ "activeKid": kid, "value": id.keys.list() }),
            )
        }
        (Method::POST, ["cloister.directory", "tenants"]) => {
            p.authorize(&caller.object_id, "Cloister.Directory/tenants/write", &root)?;
            let b = parse_body(body)?;
            let display = b
                .get("displayName")
                .and_then(|v| v.as_str())
                .unwrap_or("tenant")
                .to_string();
            crate::directory::valid_display_name(&display).map_err(ArmError::from)?;
            let t = Tenant {
                id: new_guid(),
                display_name: display.clone(),
                is_home: false,
                created_at: now_secs(),
            };
            p.store().tenant_create(&t).await.map_err(store_err)?;
            let (app, _) = id
                .create_application(&t.id, &format!("{display}-admin"), vec![], vec![], false)
                .await
                .map_err(ArmError::from)?;
            let (_, secret) = id
                .add_password(&app.app_id, "bootstrap", 365 * 86400)
                .await
                .map_err(ArmError::from)?;
            ok(
                StatusCode::CREATED,
                json!({"tenantId": t.id, "displayName": display, "clientId": app.app_id, "clientSecret": secret.expose()}),
            )
        }
        (Method::GET, ["cloister.directory", "tenants"]) => {
            p.authorize(&caller.object_id, "Cloister.Directory/tenants/read", &root)?;
            let v: Vec<Value> = p.store().tenant_list().await.map_err(store_err)?.iter().map(|t| json!({"tenantId": t.id, "displayName": t.display_name, "isHome": t.is_home})).collect();
            ok(StatusCode::OK, json!({ "value": v }))
        }
        _ => Err(not_found_path(path)),
    }
}

/// `DELETE /providers/Cloister.Identity/bindings/current` with `X-IDENTITY-HEADER`: ends a
/// `cloister run` binding (possession of its secret is the authorization). A session pool's
/// binding is refused: its secret is readable by every session of the pool, and one
/// session must not be able to take the identity away from the others.
async fn delete_binding(
    axum::extract::State(id): axum::extract::State<Arc<Identity>>,
    headers: axum::http::HeaderMap,
) -> Res {
    let Some(secret) = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ArmError::bad_request(
            "MissingIdentityHeader",
            "X-IDENTITY-HEADER is required.",
        ));
    };
    use crate::mi::DeleteOutcome;
    match id.delete_binding(secret).await.map_err(ArmError::from)? {
        DeleteOutcome::Deleted => Ok(StatusCode::OK.into_response()),
        DeleteOutcome::NotFound => Ok(StatusCode::NO_CONTENT.into_response()),
        DeleteOutcome::Refused => Err(ArmError::new(
            403,
            "AuthorizationFailed",
            "This identity header belongs to a session pool: it ends with the pool or a change of the pool's managedIdentitySettings, not with its own secret.",
        )),
    }
}
