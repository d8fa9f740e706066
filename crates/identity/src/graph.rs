//! The directory API, in the shape of the Microsoft Graph v1.0 endpoints that manage the
//! same objects (`/v1.0/applications`, `servicePrincipals`, `users`, `groups`). Writes are
//! authorized through the RBAC evaluator with `Cloister.Directory/*` actions at the root scope.

use crate::Identity;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloister_arm::host::{parse_body, scope, store_err};
use cloister_arm::provider::{Changed, Platform};
use cloister_core::clock::format_rfc3339;
use cloister_core::error::ArmError;
use cloister_crypto::Secret;
use cloister_store::{Application, Group, ServicePrincipal, User};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

type Res = Result<Response, ArmError>;
type St = State<Arc<Graph>>;

/// Microsoft Graph's audiences: its URL and its first-party application id.
pub const GRAPH_AUDIENCES: [&str; 2] = [
    "https://graph.microsoft.com",
    "00000003-0000-0000-c000-000000000000",
];

/// What the directory API needs: the identity service, and the platform for the store,
/// authorization and cache refreshes.
pub struct Graph {
    pub id: Arc<Identity>,
    pub platform: Arc<dyn Platform>,
    /// The audiences a token for this API may carry (the management API's and Graph's).
    pub audiences: Vec<String>,
}

impl Graph {
    fn store(&self) -> &cloister_store::Store {
        self.platform.store()
    }
}

const RBAC: Changed = Changed {
    identities: false,
    principals: false,
    rbac: true,
};

/// The authenticated caller of the directory API.
pub struct Caller(cloister_arm::provider::Caller);

impl std::ops::Deref for Caller {
    type Target = cloister_arm::provider::Caller;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FromRequestParts<Arc<Graph>> for Caller {
    type Rejection = ArmError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Graph>) -> Result<Self, ArmError> {
        crate::bearer::caller(
            &st.id,
            parts.headers.get(axum::http::header::AUTHORIZATION),
            &st.audiences,
        )
        .map(Caller)
    }
}

pub fn router(st: Arc<Graph>) -> Router {
    Router::new()
        .route("/v1.0/applications", post(create_app).get(list_apps))
        .route(
            "/v1.0/applications/{id}",
            get(get_app).delete(delete_app).patch(patch_app),
        )
        .route("/v1.0/applications/{id}/addPassword", post(add_password))
        .route(
            "/v1.0/applications/{id}/removePassword",
            post(remove_password),
        )
        .route("/v1.0/applications/{id}/keyCredentials", post(add_key))
        .route("/v1.0/servicePrincipals", get(list_sps))
        .route("/v1.0/servicePrincipals/{id}", get(get_sp))
        .route(
            "/v1.0/servicePrincipals/{id}/appRoleAssignedTo",
            post(assign_app_role).get(list_app_role_assignments),
        )
        .route("/v1.0/users", post(create_user).get(list_users))
        .route("/v1.0/users/{id}", get(get_user).delete(delete_user))
        .route("/v1.0/groups", post(create_group).get(list_groups))
        .route("/v1.0/groups/{id}", get(get_group).delete(delete_group))
        .route("/v1.0/groups/{id}/members", get(list_members))
        .route("/v1.0/groups/{id}/members/$ref", post(add_member))
        .route(
            "/v1.0/groups/{id}/members/{member}/$ref",
            axum::routing::delete(remove_member),
        )
        .with_state(st)
}

fn authz(st: &Graph, c: &Caller, action: &str) -> Result<(), ArmError> {
    st.platform.authorize(
        &c.object_id,
        &format!("Cloister.Directory/{action}"),
        &scope("/")?,
    )
}

fn graph_err(code: &str, status: u16, msg: impl Into<String>) -> ArmError {
    ArmError::new(status, code, msg)
}
fn not_found(what: &str, id: &str) -> ArmError {
    graph_err(
        "Request_ResourceNotFound",
        404,
        format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present. ({what})"
        ),
    )
}

fn app_json(
    a: &Application,
    secrets: &[cloister_store::ClientSecretRow],
    certs: &[cloister_store::ClientCertificateRow],
) -> Value {
    json!({
        "id": a.object_id,
        "appId": a.app_id,
        "displayName": a.display_name,
        "identifierUris": a.identifier_uris,
        "isFallbackPublicClient": a.public_client,
        "publicClient": {"redirectUris": if a.public_client { a.redirect_uris.clone() } else { vec![] }},
        "web": {"redirectUris": if a.public_client { vec![] } else { a.redirect_uris.clone() }},
        "createdDateTime": format_rfc3339(a.created_at),
        "appRoles": serde_json::from_str::<Value>(&a.app_roles).unwrap_or(json!([])),
        "passwordCredentials": secrets.iter().map(|s| json!({
            "keyId": s.key_id, "displayName": s.display_name, "hint": s.hint,
            "endDateTime": format_rfc3339(s.expires_at), "startDateTime": format_rfc3339(s.created_at), "secretText": null,
        })).collect::<Vec<_>>(),
        "keyCredentials": certs.iter().map(|c| json!({
            "keyId": c.key_id, "displayName": c.display_name, "customKeyIdentifier": c.thumbprint_sha1,
            "endDateTime": format_rfc3339(c.not_after), "type": "AsymmetricX509Cert", "usage": "Verify",
        })).collect::<Vec<_>>(),
    })
}

fn sp_json(sp: &ServicePrincipal) -> Value {
    json!({
        "id": sp.id, "appId": sp.app_id, "displayName": sp.display_name,
        "servicePrincipalType": if sp.kind == "ManagedIdentity" { "ManagedIdentity" } else { "Application" },
        "alternativeNames": sp.mi_resource_id.iter().collect::<Vec<_>>(),
        "appOwnerOrganizationId": sp.tenant_id,
    })
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "userPrincipalName": u.upn, "displayName": u.display_name, "createdDateTime": format_rfc3339(u.created_at)})
}

fn group_json(g: &Group) -> Value {
    json!({"id": g.id, "displayName": g.display_name, "description": g.description, "securityEnabled": true, "createdDateTime": format_rfc3339(g.created_at)})
}

fn created(v: Value) -> Res {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}
fn okv(v: Value) -> Res {
    Ok(Json(v).into_response())
}

fn uris(v: Option<&Value>) -> Result<Vec<String>, ArmError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ArmError::invalid("URI lists must hold strings."))
            })
            .collect(),
        _ => Err(ArmError::invalid("URI lists must be arrays.")),
    }
}

async fn app_by_object_id(st: &Graph, id: &str) -> Result<Application, ArmError> {
    let a = st
        .store()
        .application_by_object_id(id)
        .await
        .map_err(store_err)?;
    let a = match a {
        Some(a) => Some(a),
        None => st.store().application_get(id).await.map_err(store_err)?,
    };
    a.filter(|a| a.tenant_id == st.id.home_tenant)
        .ok_or_else(|| not_found("application", id))
}

async fn create_app(State(st): St, c: Caller, body: Bytes) -> Res {
    authz(&st, &c, "applications/write")?;
    let b = parse_body(&body)?;
    let name = b
        .get("displayName")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'displayName' is required."))?;
    let web = uris(b.get("web").and_then(|w| w.get("redirectUris")))?;
    let public = uris(b.get("publicClient").and_then(|w| w.get("redirectUris")))?;
    let is_public = b
        .get("isFallbackPublicClient")
        .and_then(|v| v.as_bool())
        .unwrap_or(!public.is_empty());
    let ids = uris(b.get("identifierUris"))?;
    let redirects: Vec<String> = web.into_iter().chain(public).collect();
    let (app, _) = st
        .id
        .create_application(&st.id.home_tenant, name, redirects, ids, is_public)
        .await
        .map_err(ArmError::from)?;
    created(app_json(&app, &[], &[]))
}

async fn list_apps(State(st): St, c: Caller) -> Res {
    authz(&st, &c, "applications/read")?;
    let mut out = vec![];
    for a in st
        .store()
        .application_list(&st.id.home_tenant)
        .await
        .map_err(store_err)?
    {
        let s = st
            .store()
            .secrets_for_app(&a.app_id)
            .await
            .map_err(store_err)?;
        let k = st
            .store()
            .certs_for_app(&a.app_id)
            .await
            .map_err(store_err)?;
        out.push(app_json(&a, &s, &k));
    }
    okv(json!({ "value": out }))
}

async fn get_app(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "applications/read")?;
    let a = app_by_object_id(&st, &id).await?;
    let s = st
        .store()
        .secrets_for_app(&a.app_id)
        .await
        .map_err(store_err)?;
    let k = st
        .store()
        .certs_for_app(&a.app_id)
        .await
        .map_err(store_err)?;
    okv(app_json(&a, &s, &k))
}

async fn patch_app(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "applications/write")?;
    let mut a = app_by_object_id(&st, &id).await?;
    let b = parse_body(&body)?;
    if let Some(n) = b.get("displayName").and_then(|v| v.as_str()) {
        crate::directory::valid_display_name(n).map_err(ArmError::from)?;
        a.display_name = n.to_string();
    }
    if let Some(w) = b.get("web").and_then(|w| w.get("redirectUris")) {
        a.redirect_uris = uris(Some(w))?;
    }
    if let Some(w) = b.get("publicClient").and_then(|w| w.get("redirectUris")) {
        a.redirect_uris = uris(Some(w))?;
        a.public_client = true;
    }
    if let Some(i) = b.get("identifierUris") {
        a.identifier_uris = uris(Some(i))?;
    }
    if let Some(r) = b.get("appRoles") {
        a.app_roles = validate_app_roles(r)?.to_string();
    }
    for u in a.redirect_uris.iter().chain(a.identifier_uris.iter()) {
        url::Url::parse(u)
            .map_err(|e| ArmError::invalid(format!("'{u}' is not a valid URI: {e}")))?;
    }
    st.store().application_update(&a).await.map_err(store_err)?;
    st.id.invalidate_client(&a.tenant_id, &a.app_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_app(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "applications/delete")?;
    let a = app_by_object_id(&st, &id).await?;
    st.store()
        .application_delete(&a.app_id)
        .await
        .map_err(store_err)?;
    st.id.invalidate_client(&a.tenant_id, &a.app_id);
    st.platform.changed(RBAC).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_password(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "applications/credentials/write")?;
    let a = app_by_object_id(&st, &id).await?;
    let b = if body.is_empty() {
        Default::default()
    } else {
        parse_body(&body)?
    };
    let pc = b.get("passwordCredential").cloned().unwrap_or(json!({}));
    let name = pc
        .get("displayName")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let lifetime = match pc.get("endDateTime").and_then(|v| v.as_str()) {
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ArmError::invalid("'endDateTime' must be an RFC 3339 timestamp."))?;
            t.unix_timestamp() - cloister_core::clock::now_secs()
        }
        None => 2 * 365 * 86400,
    };
    if lifetime <= 0 {
        return Err(ArmError::invalid("'endDateTime' must be in the future."));
    }
    let (row, secret): (_, Secret) = st
        .id
        .add_password(&a.app_id, &name, lifetime)
        .await
        .map_err(ArmError::from)?;
    okv(json!({
        "keyId": row.key_id, "displayName": row.display_name, "hint": row.hint,
        "secretText": secret.expose(), "startDateTime": format_rfc3339(row.created_at), "endDateTime": format_rfc3339(row.expires_at),
    }))
}

async fn remove_password(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "applications/credentials/write")?;
    let a = app_by_object_id(&st, &id).await?;
    let b = parse_body(&body)?;
    let key = b
        .get("keyId")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'keyId' is required."))?;
    if !st
        .store()
        .secret_remove(&a.app_id, key)
        .await
        .map_err(store_err)?
    {
        return Err(not_found("passwordCredential", key));
    }
    st.id.invalidate_client(&a.tenant_id, &a.app_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Adds a certificate credential: `{"key": "<PEM or base64 DER>", "displayName": "…"}`.
async fn add_key(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "applications/credentials/write")?;
    let a = app_by_object_id(&st, &id).await?;
    let b = parse_body(&body)?;
    let key = b.get("key").and_then(|v| v.as_str()).ok_or_else(|| {
        ArmError::invalid("'key' (the certificate, PEM or base64 DER) is required.")
    })?;
    let name = b.get("displayName").and_then(|v| v.as_str()).unwrap_or("");
    let row = st
        .id
        .add_certificate(&a.app_id, name, key.as_bytes())
        .await
        .map_err(ArmError::from)?;
    created(json!({
        "keyId": row.key_id, "displayName": row.display_name, "customKeyIdentifier": row.thumbprint_sha1,
        "endDateTime": format_rfc3339(row.not_after), "type": "AsymmetricX509Cert", "usage": "Verify",
    }))
}

async fn list_sps(State(st): St, c: Caller, Query(q): Query<HashMap<String, String>>) -> Res {
    authz(&st, &c, "servicePrincipals/read")?;
    let filter_app = q.get("$filter").and_then(|f| {
        let f = f.trim();
        f.to_ascii_lowercase()
            .starts_with("appid eq")
            .then(|| f.split('\'').nth(1).map(str::to_string))
            .flatten()
    });
    let out: Vec<Value> = st
        .store()
        .sp_list(&st.id.home_tenant)
        .await
        .map_err(store_err)?
        .iter()
        .filter(|sp| {
            filter_app
                .as_ref()
                .is_none_or(|a| sp.app_id.eq_ignore_ascii_case(a))
        })
        .map(sp_json)
        .collect();
    okv(json!({ "value": out }))
}

async fn get_sp(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "servicePrincipals/read")?;
    let sp = match st.store().sp_get(&id).await.map_err(store_err)? {
        Some(s) => s,
        None => st
            .store()
            .sp_by_app_id(&id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| not_found("servicePrincipal", &id))?,
    };
    okv(sp_json(&sp))
}

async fn create_user(State(st): St, c: Caller, body: Bytes) -> Res {
    authz(&st, &c, "users/write")?;
    let b = parse_body(&body)?;
    let upn = b
        .get("userPrincipalName")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'userPrincipalName' is required."))?;
    let name = b.get("displayName").and_then(|v| v.as_str()).unwrap_or(upn);
    let pw = b
        .get("passwordProfile")
        .and_then(|p| p.get("password"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'passwordProfile.password' is required."))?;
    match st
        .id
        .create_user(&st.id.home_tenant, upn, name, Secret::new(pw.to_string()))
        .await
    {
        Ok(u) => created(user_json(&u)),
        Err(crate::IdentityError::Store(cloister_store::StoreError::Conflict(_))) => {
            Err(graph_err(
                "Request_BadRequest",
                400,
                "Another object with the same value for property userPrincipalName already exists.",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn list_users(State(st): St, c: Caller) -> Res {
    authz(&st, &c, "users/read")?;
    let v: Vec<Value> = st
        .store()
        .user_list(&st.id.home_tenant)
        .await
        .map_err(store_err)?
        .iter()
        .map(user_json)
        .collect();
    okv(json!({ "value": v }))
}

async fn find_user(st: &Graph, id: &str) -> Result<User, ArmError> {
    let u = match st.store().user_get(id).await.map_err(store_err)? {
        Some(u) => Some(u),
        None => st
            .store()
            .user_by_upn(&st.id.home_tenant, id)
            .await
            .map_err(store_err)?,
    };
    u.ok_or_else(|| not_found("user", id))
}

async fn get_user(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "users/read")?;
    okv(user_json(&find_user(&st, &id).await?))
}

async fn delete_user(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "users/delete")?;
    let u = find_user(&st, &id).await?;
    st.store().user_delete(&u.id).await.map_err(store_err)?;
    st.platform.changed(RBAC).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_group(State(st): St, c: Caller, body: Bytes) -> Res {
    authz(&st, &c, "groups/write")?;
    let b = parse_body(&body)?;
    let name = b
        .get("displayName")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'displayName' is required."))?;
    let desc = b.get("description").and_then(|v| v.as_str()).unwrap_or("");
    let g = st
        .id
        .create_group(&st.id.home_tenant, name, desc)
        .await
        .map_err(ArmError::from)?;
    created(group_json(&g))
}

async fn list_groups(State(st): St, c: Caller) -> Res {
    authz(&st, &c, "groups/read")?;
    let v: Vec<Value> = st
        .store()
        .group_list(&st.id.home_tenant)
        .await
        .map_err(store_err)?
        .iter()
        .map(group_json)
        .collect();
    okv(json!({ "value": v }))
}

async fn find_group(st: &Graph, id: &str) -> Result<Group, ArmError> {
    st.store()
        .group_get(id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| not_found("group", id))
}

async fn get_group(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "groups/read")?;
    okv(group_json(&find_group(&st, &id).await?))
}

async fn delete_group(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "groups/delete")?;
    let g = find_group(&st, &id).await?;
    st.store().group_delete(&g.id).await.map_err(store_err)?;
    st.platform.changed(RBAC).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_members(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "groups/read")?;
    let g = find_group(&st, &id).await?;
    let mut out = vec![];
    for m in st.store().group_members(&g.id).await.map_err(store_err)? {
        let (kind, name) = st
            .id
            .principal_kind(&m)
            .await
            .map_err(ArmError::from)?
            .unwrap_or(("Unknown".into(), String::new()));
        let odata = match kind.as_str() {
            "User" => "#microsoft.graph.user",
            "Group" => "#microsoft.graph.group",
            _ => "#microsoft.graph.servicePrincipal",
        };
        out.push(json!({"@odata.type": odata, "id": m, "displayName": name}));
    }
    okv(json!({ "value": out }))
}

async fn add_member(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "groups/members/write")?;
    let g = find_group(&st, &id).await?;
    let b = parse_body(&body)?;
    let odata = b
        .get("@odata.id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'@odata.id' is required."))?;
    let member = odata
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if st
        .id
        .principal_kind(&member)
        .await
        .map_err(ArmError::from)?
        .is_none()
    {
        return Err(not_found("directoryObject", &member));
    }
    if member == g.id {
        return Err(graph_err(
            "Request_BadRequest",
            400,
            "A group cannot be a member of itself.",
        ));
    }
    if !st
        .store()
        .group_add_member(&g.id, &member)
        .await
        .map_err(store_err)?
    {
        return Err(graph_err(
            "Request_BadRequest",
            400,
            "One or more added object references already exist for the following modified properties: 'members'.",
        ));
    }
    st.platform.changed(RBAC).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_member(
    State(st): St,
    c: Caller,
    Path((id, member)): Path<(String, String)>,
) -> Res {
    authz(&st, &c, "groups/members/write")?;
    let g = find_group(&st, &id).await?;
    if !st
        .store()
        .group_remove_member(&g.id, &member.to_ascii_lowercase())
        .await
        .map_err(store_err)?
    {
        return Err(not_found("member", &member));
    }
    st.platform.changed(RBAC).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Checks an `appRoles` array: each role has a GUID `id`, a `value` without spaces, and
/// allowedMemberTypes from {Application, User}.
fn validate_app_roles(v: &Value) -> Result<Value, ArmError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ArmError::invalid("'appRoles' must be an array."))?;
    let mut out = vec![];
    let mut seen = std::collections::HashSet::new();
    for r in arr {
        let id = r
            .get("id")
            .and_then(|x| x.as_str())
            .filter(|x| cloister_core::is_guid(x))
            .ok_or_else(|| ArmError::invalid("each app role needs an 'id' that is a GUID."))?;
        let value = r
            .get("value")
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty() && x.len() <= 249 && !x.contains(char::is_whitespace))
            .ok_or_else(|| ArmError::invalid("each app role needs a 'value' without spaces."))?;
        if !seen.insert(value.to_ascii_lowercase()) {
            return Err(ArmError::invalid(format!(
                "the app role value '{value}' appears twice."
            )));
        }
        let types: Vec<String> = r
            .get("allowedMemberTypes")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["Application".into()]);
        if types.is_empty() || types.iter().any(|t| t != "Application" && t != "User") {
            return Err(ArmError::invalid(
                "allowedMemberTypes may hold 'Application' and 'User'.",
            ));
        }
        out.push(json!({
            "id": id.to_ascii_lowercase(), "value": value, "allowedMemberTypes": types,
            "displayName": r.get("displayName").and_then(|x| x.as_str()).unwrap_or(value),
            "description": r.get("description").and_then(|x| x.as_str()).unwrap_or(""),
            "isEnabled": r.get("isEnabled").and_then(|x| x.as_bool()).unwrap_or(true),
        }));
    }
    Ok(Value::Array(out))
}

/// `POST /v1.0/servicePrincipals/{id}/appRoleAssignedTo`: grants `principalId` an app role
/// of the resource application whose service principal is `{id}`.
async fn assign_app_role(State(st): St, c: Caller, Path(id): Path<String>, body: Bytes) -> Res {
    authz(&st, &c, "servicePrincipals/appRoleAssignedTo/write")?;
    let resource = st
        .store()
        .sp_get(&id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| not_found("servicePrincipal", &id))?;
    let b = parse_body(&body)?;
    let principal = b
        .get("principalId")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'principalId' is required."))?
        .to_ascii_lowercase();
    let role = b
        .get("appRoleId")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ArmError::invalid("'appRoleId' is required."))?
        .to_ascii_lowercase();
    if let Some(r) = b.get("resourceId").and_then(|v| v.as_str())
        && !r.eq_ignore_ascii_case(&resource.id)
    {
        return Err(graph_err(
            "Request_BadRequest",
            400,
            "'resourceId' must be the service principal in the URL.",
        ));
    }
    let app = st
        .store()
        .application_get(&resource.app_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| not_found("application", &resource.app_id))?;
    let roles: Value = serde_json::from_str(&app.app_roles).unwrap_or(json!([]));
    let Some(def) = roles
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"].as_str() == Some(role.as_str())))
    else {
        return Err(graph_err(
            "Request_BadRequest",
            400,
            format!(
                "Permission being assigned was not found on application '{}'.",
                app.app_id
            ),
        ));
    };
    let (kind, _) = st
        .id
        .principal_kind(&principal)
        .await
        .map_err(ArmError::from)?
        .ok_or_else(|| not_found("principal", &principal))?;
    let wanted = if kind == "User" {
        "User"
    } else {
        "Application"
    };
    if !def["allowedMemberTypes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t == wanted))
    {
        return Err(graph_err(
            "Request_BadRequest",
            400,
            format!("The app role does not allow members of type {wanted}."),
        ));
    }
    let row = cloister_store::AppRoleAssignmentRow {
        id: cloister_core::new_guid(),
        principal_id: principal.clone(),
        resource_app_id: app.app_id.clone(),
        app_role_id: role.clone(),
        created_at: cloister_core::clock::now_secs(),
    };
    match st.store().app_role_assignment_create(&row).await {
        Ok(()) => {}
        Err(cloister_store::StoreError::Conflict(m)) => {
            return Err(graph_err("Request_BadRequest", 400, m));
        }
        Err(e) => return Err(store_err(e)),
    }
    created(
        json!({"id": row.id, "principalId": principal, "principalType": kind, "resourceId": resource.id, "appRoleId": role, "createdDateTime": format_rfc3339(row.created_at)}),
    )
}

async fn list_app_role_assignments(State(st): St, c: Caller, Path(id): Path<String>) -> Res {
    authz(&st, &c, "servicePrincipals/read")?;
    let resource = st
        .store()
        .sp_get(&id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| not_found("servicePrincipal", &id))?;
    let v: Vec<Value> = st.store().app_role_assignments_to(&resource.app_id)
        .await
        .map_err(store_err)?
        .iter()
        .map(|r| json!({"id": r.id, "principalId": r.principal_id, "resourceId": resource.id, "appRoleId": r.app_role_id, "createdDateTime": format_rfc3339(r.created_at)}))
        .collect();
    okv(json!({ "value": v }))
}
