//! Directory objects: tenants, users, groups, applications, service principals and their
//! credentials.

use crate::{Result, Store, StoreError, i, json_vec, os, s};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub is_home: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub tenant_id: String,
    pub upn: String,
    pub display_name: String,
    /// An argon2 PHC string; never leaves the identity crate.
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: String,
    pub tenant_id: String,
    pub display_name: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    pub app_id: String,
    pub object_id: String,
    pub tenant_id: String,
    pub display_name: String,
    pub identifier_uris: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub public_client: bool,
    /// JSON array of app roles.
    pub app_roles: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppRoleAssignmentRow {
    pub id: String,
    pub principal_id: String,
    pub resource_app_id: String,
    pub app_role_id: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
    pub tenant_id: String,
    pub display_name: String,
    /// `Application` or `ManagedIdentity`.
    pub kind: String,
    pub mi_resource_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientSecretRow {
    pub key_id: String,
    pub app_id: String,
    pub display_name: String,
    pub hint: String,
    pub secret_hash: String,
    pub expires_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertificateRow {
    pub key_id: String,
    pub app_id: String,
    pub display_name: String,
    pub thumbprint_sha1: String,
    /// Standard base64 DER.
    pub cert_der: String,
    pub not_after: i64,
    pub created_at: i64,
}

fn tenant(r: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: s(r, "id")?,
        display_name: s(r, "display_name")?,
        is_home: i(r, "is_home")? != 0,
        created_at: i(r, "created_at")?,
    })
}
fn user(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: s(r, "id")?,
        tenant_id: s(r, "tenant_id")?,
        upn: s(r, "upn")?,
        display_name: s(r, "display_name")?,
        password_hash: s(r, "password_hash")?,
        created_at: i(r, "created_at")?,
    })
}
fn group(r: &AnyRow) -> Result<Group> {
    Ok(Group {
        id: s(r, "id")?,
        tenant_id: s(r, "tenant_id")?,
        display_name: s(r, "display_name")?,
        description: s(r, "description")?,
        created_at: i(r, "created_at")?,
    })
}
fn application(r: &AnyRow) -> Result<Application> {
    Ok(Application {
        app_id: s(r, "app_id")?,
        object_id: s(r, "object_id")?,
        tenant_id: s(r, "tenant_id")?,
        display_name: s(r, "display_name")?,
        identifier_uris: json_vec(r, "identifier_uris")?,
        redirect_uris: json_vec(r, "redirect_uris")?,
        public_client: i(r, "public_client")? != 0,
        app_roles: s(r, "app_roles")?,
        created_at: i(r, "created_at")?,
    })
}

fn ara(r: &AnyRow) -> Result<AppRoleAssignmentRow> {
    Ok(AppRoleAssignmentRow {
        id: s(r, "id")?,
        principal_id: s(r, "principal_id")?,
        resource_app_id: s(r, "resource_app_id")?,
        app_role_id: s(r, "app_role_id")?,
        created_at: i(r, "created_at")?,
    })
}
fn sp(r: &AnyRow) -> Result<ServicePrincipal> {
    Ok(ServicePrincipal {
        id: s(r, "id")?,
        app_id: s(r, "app_id")?,
        tenant_id: s(r, "tenant_id")?,
        display_name: s(r, "display_name")?,
        kind: s(r, "kind")?,
        mi_resource_id: os(r, "mi_resource_id")?,
        created_at: i(r, "created_at")?,
    })
}
fn secret(r: &AnyRow) -> Result<ClientSecretRow> {
    Ok(ClientSecretRow {
        key_id: s(r, "key_id")?,
        app_id: s(r, "app_id")?,
        display_name: s(r, "display_name")?,
        hint: s(r, "hint")?,
        secret_hash: s(r, "secret_hash")?,
        expires_at: i(r, "expires_at")?,
        created_at: i(r, "created_at")?,
    })
}
fn cert(r: &AnyRow) -> Result<ClientCertificateRow> {
    Ok(ClientCertificateRow {
        key_id: s(r, "key_id")?,
        app_id: s(r, "app_id")?,
        display_name: s(r, "display_name")?,
        thumbprint_sha1: s(r, "thumbprint_sha1")?,
        cert_der: s(r, "cert_der")?,
        not_after: i(r, "not_after")?,
        created_at: i(r, "created_at")?,
    })
}

impl Store {
    // ---- tenants -------------------------------------------------------------------------
    pub async fn tenant_create(&self, t: &Tenant) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (id, display_name, is_home, created_at) VALUES ($1,$2,$3,$4)",
        )
        .bind(&t.id)
        .bind(&t.display_name)
        .bind(t.is_home as i64)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::map_unique(e, "tenant exists"))?;
        Ok(())
    }
    pub async fn tenant_get(&self, id: &str) -> Result<Option<Tenant>> {
        let r = sqlx::query("SELECT * FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(tenant).transpose()
    }
    pub async fn tenant_list(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant).collect()
    }

    // ---- users ---------------------------------------------------------------------------
    pub async fn user_create(&self, u: &User) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, tenant_id, upn_lc, upn, display_name, password_hash, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&u.id)
        .bind(&u.tenant_id)
        .bind(u.upn.to_lowercase())
        .bind(&u.upn)
        .bind(&u.display_name)
        .bind(&u.password_hash)
        .bind(u.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::map_unique(e, "a user with this userPrincipalName exists"))?;
        Ok(())
    }
    pub async fn user_get(&self, id: &str) -> Result<Option<User>> {
        let r = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(user).transpose()
    }
    pub async fn user_by_upn(&self, tenant_id: &str, upn: &str) -> Result<Option<User>> {
        let r = sqlx::query("SELECT * FROM users WHERE upn_lc = $1 AND tenant_id = $2")
            .bind(upn.to_lowercase())
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(user).transpose()
    }
    pub async fn user_list(&self, tenant_id: &str) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT * FROM users WHERE tenant_id = $1 ORDER BY upn_lc")
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user).collect()
    }
    pub async fn user_delete(&self, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM group_members WHERE member_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM app_role_assignments WHERE principal_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- groups --------------------------------------------------------------------------
    pub async fn group_create(&self, g: &Group) -> Result<()> {
        sqlx::query("INSERT INTO groups_ (id, tenant_id, display_name, description, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&g.id)
            .bind(&g.tenant_id)
            .bind(&g.display_name)
            .bind(&g.description)
            .bind(g.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    pub async fn group_get(&self, id: &str) -> Result<Option<Group>> {
        let r = sqlx::query("SELECT * FROM groups_ WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(group).transpose()
    }
    pub async fn group_list(&self, tenant_id: &str) -> Result<Vec<Group>> {
        let rows = sqlx::query("SELECT * FROM groups_ WHERE tenant_id = $1 ORDER BY display_name")
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group).collect()
    }
    pub async fn group_delete(&self, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 OR member_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM groups_ WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
    /// Adds a member; returns false if it was already one.
    pub async fn group_add_member(&self, group_id: &str, member_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO group_members (group_id, member_id) VALUES ($1,$2) ON CONFLICT (group_id, member_id) DO NOTHING",
        )
        .bind(group_id)
        .bind(member_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
    pub async fn group_remove_member(&self, group_id: &str, member_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND member_id = $2")
            .bind(group_id)
            .bind(member_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
    pub async fn group_members(&self, group_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT member_id FROM group_members WHERE group_id = $1 ORDER BY member_id",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }
    /// Every (group, member) edge; the RBAC engine computes transitive membership from these.
    pub async fn group_edges(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT group_id, member_id FROM group_members")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    // ---- applications and service principals ---------------------------------------------
    /// Creates an application and its service principal in one transaction.
    pub async fn application_create(&self, a: &Application, sp_id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO applications (app_id, object_id, tenant_id, display_name, identifier_uris, redirect_uris, public_client, created_at, app_roles) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(&a.app_id)
        .bind(&a.object_id)
        .bind(&a.tenant_id)
        .bind(&a.display_name)
        .bind(serde_json::to_string(&a.identifier_uris).unwrap_or_default())
        .bind(serde_json::to_string(&a.redirect_uris).unwrap_or_default())
        .bind(a.public_client as i64)
        .bind(a.created_at)
        .bind(&a.app_roles)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::map_unique(e, "application exists"))?;
        sqlx::query(
            "INSERT INTO service_principals (id, app_id, tenant_id, display_name, kind, mi_resource_id, created_at) VALUES ($1,$2,$3,$4,'Application',NULL,$5)",
        )
        .bind(sp_id)
        .bind(&a.app_id)
        .bind(&a.tenant_id)
        .bind(&a.display_name)
        .bind(a.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::map_unique(e, "service principal exists"))?;
        tx.commit().await?;
        Ok(())
    }
    pub async fn application_update(&self, a: &Application) -> Result<()> {
        sqlx::query(
            "UPDATE applications SET display_name=$2, identifier_uris=$3, redirect_uris=$4, public_client=$5, app_roles=$6 WHERE app_id=$1",
        )
        .bind(&a.app_id)
        .bind(&a.display_name)
        .bind(serde_json::to_string(&a.identifier_uris).unwrap_or_default())
        .bind(serde_json::to_string(&a.redirect_uris).unwrap_or_default())
        .bind(a.public_client as i64)
        .bind(&a.app_roles)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn application_get(&self, app_id: &str) -> Result<Option<Application>> {
        let r = sqlx::query("SELECT * FROM applications WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(application).transpose()
    }
    pub async fn application_by_object_id(&self, object_id: &str) -> Result<Option<Application>> {
        let r = sqlx::query("SELECT * FROM applications WHERE object_id = $1")
            .bind(object_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(application).transpose()
    }
    pub async fn application_list(&self, tenant_id: &str) -> Result<Vec<Application>> {
        let rows =
            sqlx::query("SELECT * FROM applications WHERE tenant_id = $1 ORDER BY display_name")
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(application).collect()
    }
    /// Deletes an application with its service principal, credentials and memberships.
    /// Returns the deleted service principal's id.
    pub async fn application_delete(&self, app_id: &str) -> Result<Option<String>> {
        let mut tx = self.write_tx().await?;
        let sp_id: Option<String> =
            sqlx::query("SELECT id FROM service_principals WHERE app_id = $1")
                .bind(app_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get(0));
        let n = sqlx::query("DELETE FROM applications WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        if n.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM service_principals WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM client_secrets WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM client_certificates WHERE app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        if let Some(id) = &sp_id {
            sqlx::query("DELETE FROM group_members WHERE member_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM app_role_assignments WHERE principal_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM app_role_assignments WHERE resource_app_id = $1")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sp_id)
    }

    pub async fn sp_create(&self, p: &ServicePrincipal) -> Result<()> {
        sqlx::query(
            "INSERT INTO service_principals (id, app_id, tenant_id, display_name, kind, mi_resource_id, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&p.id)
        .bind(&p.app_id)
        .bind(&p.tenant_id)
        .bind(&p.display_name)
        .bind(&p.kind)
        .bind(&p.mi_resource_id)
        .bind(p.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::map_unique(e, "service principal exists"))?;
        Ok(())
    }
    pub async fn sp_get(&self, id: &str) -> Result<Option<ServicePrincipal>> {
        let r = sqlx::query("SELECT * FROM service_principals WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(sp).transpose()
    }
    pub async fn sp_by_app_id(&self, app_id: &str) -> Result<Option<ServicePrincipal>> {
        let r = sqlx::query("SELECT * FROM service_principals WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(sp).transpose()
    }
    pub async fn sp_by_mi_resource(&self, resource_id: &str) -> Result<Option<ServicePrincipal>> {
        let r = sqlx::query("SELECT * FROM service_principals WHERE lower(mi_resource_id) = $1")
            .bind(resource_id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(sp).transpose()
    }
    pub async fn sp_list(&self, tenant_id: &str) -> Result<Vec<ServicePrincipal>> {
        let rows = sqlx::query(
            "SELECT * FROM service_principals WHERE tenant_id = $1 ORDER BY display_name",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sp).collect()
    }

    // ---- app role assignments ------------------------------------------------------------
    pub async fn app_role_assignment_create(&self, a: &AppRoleAssignmentRow) -> Result<()> {
        let dup = sqlx::query("SELECT id FROM app_role_assignments WHERE principal_id = $1 AND resource_app_id = $2 AND app_role_id = $3")
            .bind(&a.principal_id)
            .bind(&a.resource_app_id)
            .bind(&a.app_role_id)
            .fetch_optional(&self.pool)
            .await?;
        if dup.is_some() {
            return Err(StoreError::Conflict(
                "the app role is already assigned to this principal".into(),
            ));
        }
        sqlx::query("INSERT INTO app_role_assignments (id, principal_id, resource_app_id, app_role_id, created_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&a.id)
            .bind(&a.principal_id)
            .bind(&a.resource_app_id)
            .bind(&a.app_role_id)
            .bind(a.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    /// App role ids held by `principal_id` on the application `resource_app_id`.
    pub async fn app_roles_of(
        &self,
        principal_id: &str,
        resource_app_id: &str,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT app_role_id FROM app_role_assignments WHERE principal_id = $1 AND resource_app_id = $2")
            .bind(principal_id)
            .bind(resource_app_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }
    pub async fn app_role_assignments_to(
        &self,
        resource_app_id: &str,
    ) -> Result<Vec<AppRoleAssignmentRow>> {
        let rows = sqlx::query(
            "SELECT * FROM app_role_assignments WHERE resource_app_id = $1 ORDER BY created_at",
        )
        .bind(resource_app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ara).collect()
    }
    pub async fn app_role_assignment_delete(&self, id: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM app_role_assignments WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    // ---- credentials ---------------------------------------------------------------------
    pub async fn secret_add(&self, c: &ClientSecretRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO client_secrets (key_id, app_id, display_name, hint, secret_hash, expires_at, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&c.key_id)
        .bind(&c.app_id)
        .bind(&c.display_name)
        .bind(&c.hint)
        .bind(&c.secret_hash)
        .bind(c.expires_at)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn secrets_for_app(&self, app_id: &str) -> Result<Vec<ClientSecretRow>> {
        let rows =
            sqlx::query("SELECT * FROM client_secrets WHERE app_id = $1 ORDER BY created_at")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(secret).collect()
    }
    pub async fn secret_remove(&self, app_id: &str, key_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM client_secrets WHERE app_id = $1 AND key_id = $2")
            .bind(app_id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
    pub async fn cert_add(&self, c: &ClientCertificateRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO client_certificates (key_id, app_id, display_name, thumbprint_sha1, cert_der, not_after, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&c.key_id)
        .bind(&c.app_id)
        .bind(&c.display_name)
        .bind(&c.thumbprint_sha1)
        .bind(&c.cert_der)
        .bind(c.not_after)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn certs_for_app(&self, app_id: &str) -> Result<Vec<ClientCertificateRow>> {
        let rows =
            sqlx::query("SELECT * FROM client_certificates WHERE app_id = $1 ORDER BY created_at")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(cert).collect()
    }
    pub async fn cert_remove(&self, app_id: &str, key_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM client_certificates WHERE app_id = $1 AND key_id = $2")
            .bind(app_id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
