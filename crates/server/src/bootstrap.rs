//! First start: the home tenant, a default subscription, the bootstrap admin service
//! principal with Owner at the root scope, the host resource with its system-assigned
//! identity, and `DATA_DIR/bootstrap.json` (mode 0600).

use crate::config::ServerConfig;
use crate::tls::write_file_0600;
use cloister_core::clock::now_secs;
use cloister_core::new_guid;
use cloister_identity::Identity;
use cloister_store::{Resource, ResourceGroup, RoleAssignmentRow, Store, Subscription, Tenant};
use serde_json::json;

pub const OWNER_ROLE_ID: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const SYSTEM_RG: &str = "cloister-system";
/// The public client the CLI signs users in with: the Azure CLI's well-known client id.
pub const CLI_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

/// What the first start decided; stable across restarts.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub tenant_id: String,
    pub subscription_id: String,
    pub admin_app_id: String,
    pub host_resource_id: String,
}

/// Ensures the home tenant and subscription exist. Runs before the identity service opens.
pub async fn ensure_tenant(store: &Store) -> anyhow::Result<(String, String)> {
    if let (Some(t), Some(s)) = (
        store.meta_get("home_tenant").await?,
        store.meta_get("default_subscription").await?,
    ) {
        return Ok((t, s));
    }
    let tenant = new_guid();
    if store.meta_insert_if_absent("home_tenant", &tenant).await? {
        let now = now_secs();
        store
            .tenant_create(&Tenant {
                id: tenant.clone(),
                display_name: "Cloister".into(),
                is_home: true,
                created_at: now,
            })
            .await?;
        let sub = new_guid();
        store
            .subscription_upsert(&Subscription {
                id: sub.clone(),
                display_name: "Cloister default".into(),
                tenant_id: tenant.clone(),
                management_group: None,
                created_at: now,
            })
            .await?;
        store.meta_set("default_subscription", &sub).await?;
        return Ok((tenant, sub));
    }
    // Another node won the race; wait for it to finish.
    for _ in 0..100 {
        if let (Some(t), Some(s)) = (
            store.meta_get("home_tenant").await?,
            store.meta_get("default_subscription").await?,
        ) {
            return Ok((t, s));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("bootstrap by another node did not complete")
}

/// Creates the admin principal and host resource if missing, and (re)writes
/// `bootstrap.json` when it is absent. A lost file gets a fresh secret: the old one cannot
/// be recovered, since only its keyed hash is stored.
pub async fn ensure_admin(
    cfg: &ServerConfig,
    store: &Store,
    id: &Identity,
    tenant: &str,
    sub: &str,
) -> anyhow::Result<Bootstrap> {
    let path = cfg.data_dir.join("bootstrap.json");
    let now = now_secs();
    let admin_app = match store.meta_get("bootstrap_app_id").await? {
        Some(a) => a,
        None => {
            let (app, sp) = id
                .create_application(tenant, "cloister-bootstrap-admin", vec![], vec![], false)
                .await
                .map_err(|e| anyhow::anyhow!("creating the bootstrap admin: {e}"))?;
            store
                .role_assignment_create(&RoleAssignmentRow {
                    id: new_guid(),
                    scope: "/".into(),
                    role_definition_id: OWNER_ROLE_ID.into(),
                    principal_id: sp.id.clone(),
                    principal_type: "ServicePrincipal".into(),
                    description: "Bootstrap administrator".into(),
                    created_by: "cloister".into(),
                    created_at: now,
                })
                .await?;
            store.meta_set("bootstrap_app_id", &app.app_id).await?;
            let _ = std::fs::remove_file(&path);
            app.app_id
        }
    };
    let host_id = format!(
        "/subscriptions/{sub}/resourceGroups/{SYSTEM_RG}/providers/{}/{}",
        cloister_identity::arm::HOST_TYPE,
        cfg.host_name
    );
    if store
        .meta_get(cloister_identity::mi::HOST_RESOURCE_KEY)
        .await?
        .as_deref()
        != Some(host_id.as_str())
    {
        store
            .rg_upsert(&ResourceGroup {
                subscription_id: sub.into(),
                name: SYSTEM_RG.into(),
                location: "local".into(),
                tags: "{}".into(),
                created_at: now,
            })
            .await?;
        if store.resource_get(&host_id).await?.is_none() {
            let sp = id.new_managed_identity(&host_id, &cfg.host_name);
            let r = Resource {
                id: host_id.clone(),
                type_: cloister_identity::arm::HOST_TYPE.into(),
                subscription_id: sub.into(),
                resource_group: SYSTEM_RG.into(),
                name: cfg.host_name.clone(),
                location: "local".into(),
                tags: "{}".into(),
                properties: "{}".into(),
                system_principal_id: Some(sp.id.clone()),
                user_identities: vec![],
                created_at: now,
                updated_at: now,
                etag: cloister_arm::conditional::new_etag(),
                created_by: String::new(),
                created_by_type: String::new(),
                modified_by: String::new(),
                modified_by_type: String::new(),
            };
            store.resource_put(&r, &[sp], &[]).await?;
        }
        store
            .meta_set(cloister_identity::mi::HOST_RESOURCE_KEY, &host_id)
            .await?;
    }
    if store.application_get(CLI_CLIENT_ID).await?.is_none() {
        let app = cloister_store::Application {
            app_id: CLI_CLIENT_ID.into(),
            object_id: new_guid(),
            tenant_id: tenant.into(),
            display_name: "Cloister CLI".into(),
            identifier_uris: vec![],
            redirect_uris: vec!["http://localhost".into()],
            public_client: true,
            app_roles: "[]".into(),
            created_at: now,
        };
        if let Err(e) = store.application_create(&app, &new_guid()).await {
            tracing::debug!("cli app: {e}");
        }
    }
    if !path.exists() {
        let (_, secret) = id
            .add_password(&admin_app, "bootstrap", 2 * 365 * 86400)
            .await
            .map_err(|e| anyhow::anyhow!("creating the bootstrap secret: {e}"))?;
        let body = json!({
            "tenantId": tenant,
            "subscriptionId": sub,
            "clientId": admin_app,
            "clientSecret": secret.expose(),
            "authority": id.authority,
            "managementEndpoint": id.management_endpoint,
            "identityEndpoint": cfg.http_base(),
            "caCertificate": cfg.data_dir.join("ca.pem"),
        });
        write_file_0600(&path, serde_json::to_string_pretty(&body)?.as_bytes())?;
        tracing::info!(path = %path.display(), "wrote bootstrap credentials");
    }
    Ok(Bootstrap {
        tenant_id: tenant.into(),
        subscription_id: sub.into(),
        admin_app_id: admin_app,
        host_resource_id: host_id,
    })
}
