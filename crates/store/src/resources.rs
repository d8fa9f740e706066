//! The ARM resource hierarchy: management groups, subscriptions, resource groups and
//! resources (with their managed identities).

use crate::rbac::below;
use crate::{Result, Store, StoreError, i, json_vec, os, s};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct ManagementGroup {
    pub name: String,
    pub display_name: String,
    /// Parent management group name, `None` for a child of the tenant root.
    pub parent: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub display_name: String,
    pub tenant_id: String,
    pub management_group: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceGroup {
    pub subscription_id: String,
    pub name: String,
    pub location: String,
    pub tags: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The ARM id with the caller's casing.
    pub id: String,
    /// Full type, e.g. `Microsoft.ManagedIdentity/userAssignedIdentities`.
    pub type_: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    /// JSON object text.
    pub tags: String,
    /// JSON object text (the `properties` of the ARM body, server-side fields included).
    pub properties: String,
    /// Principal id of the system-assigned identity, if enabled.
    pub system_principal_id: Option<String>,
    /// ARM ids of the user-assigned identities attached.
    pub user_identities: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// ETag of this version (quoted), empty for rows from before ETags.
    pub etag: String,
    /// systemData: who created and last modified the resource, and what kind of principal.
    pub created_by: String,
    pub created_by_type: String,
    pub modified_by: String,
    pub modified_by_type: String,
}

fn mg(r: &AnyRow) -> Result<ManagementGroup> {
    Ok(ManagementGroup {
        name: s(r, "name")?,
        display_name: s(r, "display_name")?,
        parent: os(r, "parent_lc")?,
        created_at: i(r, "created_at")?,
    })
}
fn sub(r: &AnyRow) -> Result<Subscription> {
    Ok(Subscription {
        id: s(r, "id")?,
        display_name: s(r, "display_name")?,
        tenant_id: s(r, "tenant_id")?,
        management_group: os(r, "management_group_lc")?,
        created_at: i(r, "created_at")?,
    })
}
fn rg(r: &AnyRow) -> Result<ResourceGroup> {
    Ok(ResourceGroup {
        subscription_id: s(r, "subscription_id")?,
        name: s(r, "name")?,
        location: s(r, "location")?,
        tags: s(r, "tags")?,
        created_at: i(r, "created_at")?,
    })
}
fn res(r: &AnyRow) -> Result<Resource> {
    Ok(Resource {
        id: s(r, "id")?,
        type_: s(r, "type_lc")?,
        subscription_id: s(r, "subscription_id")?,
        resource_group: s(r, "resource_group_lc")?,
        name: s(r, "name")?,
        location: s(r, "location")?,
        tags: s(r, "tags")?,
        properties: s(r, "properties")?,
        system_principal_id: os(r, "system_principal_id")?,
        user_identities: json_vec(r, "user_identities")?,
        created_at: i(r, "created_at")?,
        updated_at: i(r, "updated_at")?,
        etag: s(r, "etag")?,
        created_by: s(r, "created_by")?,
        created_by_type: s(r, "created_by_type")?,
        modified_by: s(r, "modified_by")?,
        modified_by_type: s(r, "modified_by_type")?,
    })
}

/// The condition of [`Store::resource_put_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Create or replace.
    Any,
    /// Create only.
    Absent,
    /// Replace only the version with this ETag.
    Etag(&'a str),
}

/// What a cascading delete removed, so callers can refresh caches.
#[derive(Debug, Default, Clone)]
pub struct Removed {
    pub resources: Vec<String>,
    pub principals: Vec<String>,
    pub role_assignments: u64,
}

impl Store {
    // ---- management groups ---------------------------------------------------------------
    pub async fn mg_upsert(&self, m: &ManagementGroup) -> Result<()> {
        sqlx::query(
            "INSERT INTO management_groups (name_lc, name, display_name, parent_lc, created_at) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (name_lc) DO UPDATE SET display_name = excluded.display_name, parent_lc = excluded.parent_lc",
        )
        .bind(m.name.to_lowercase())
        .bind(&m.name)
        .bind(&m.display_name)
        .bind(m.parent.as_ref().map(|p| p.to_lowercase()))
        .bind(m.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn mg_get(&self, name: &str) -> Result<Option<ManagementGroup>> {
        let r = sqlx::query("SELECT * FROM management_groups WHERE name_lc = $1")
            .bind(name.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(mg).transpose()
    }
    pub async fn mg_list(&self) -> Result<Vec<ManagementGroup>> {
        let rows = sqlx::query("SELECT * FROM management_groups ORDER BY name_lc")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(mg).collect()
    }
    /// Deletes an empty management group (no child groups, no subscriptions).
    pub async fn mg_delete(&self, name: &str) -> Result<bool> {
        let lc = name.to_lowercase();
        let mut tx = self.write_tx().await?;
        let child = sqlx::query("SELECT name FROM management_groups WHERE parent_lc = $1")
            .bind(&lc)
            .fetch_optional(&mut *tx)
            .await?;
        let subs = sqlx::query("SELECT id FROM subscriptions WHERE management_group_lc = $1")
            .bind(&lc)
            .fetch_optional(&mut *tx)
            .await?;
        if child.is_some() || subs.is_some() {
            return Err(StoreError::Conflict("management group has children".into()));
        }
        let n = sqlx::query("DELETE FROM management_groups WHERE name_lc = $1")
            .bind(&lc)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let scope = format!("/providers/microsoft.management/managementgroups/{lc}");
        sqlx::query("DELETE FROM role_assignments WHERE scope_lc = $1")
            .bind(&scope)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- subscriptions -------------------------------------------------------------------
    pub async fn subscription_upsert(&self, x: &Subscription) -> Result<()> {
        sqlx::query(
            "INSERT INTO subscriptions (id, display_name, tenant_id, management_group_lc, created_at) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, management_group_lc = excluded.management_group_lc",
        )
        .bind(x.id.to_lowercase())
        .bind(&x.display_name)
        .bind(&x.tenant_id)
        .bind(x.management_group.as_ref().map(|p| p.to_lowercase()))
        .bind(x.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn subscription_get(&self, id: &str) -> Result<Option<Subscription>> {
        let r = sqlx::query("SELECT * FROM subscriptions WHERE id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(sub).transpose()
    }
    pub async fn subscription_list(&self) -> Result<Vec<Subscription>> {
        let rows = sqlx::query("SELECT * FROM subscriptions ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sub).collect()
    }

    // ---- resource groups -----------------------------------------------------------------
    /// Creates or updates; returns true when it was created.
    pub async fn rg_upsert(&self, g: &ResourceGroup) -> Result<bool> {
        let existed = self.rg_get(&g.subscription_id, &g.name).await?.is_some();
        sqlx::query(
            "INSERT INTO resource_groups (subscription_id, name_lc, name, location, tags, created_at) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (subscription_id, name_lc) DO UPDATE SET tags = excluded.tags",
        )
        .bind(g.subscription_id.to_lowercase())
        .bind(g.name.to_lowercase())
        .bind(&g.name)
        .bind(&g.location)
        .bind(&g.tags)
        .bind(g.created_at)
        .execute(&self.pool)
        .await?;
        Ok(!existed)
    }
    pub async fn rg_get(&self, sub: &str, name: &str) -> Result<Option<ResourceGroup>> {
        let r = sqlx::query(
            "SELECT * FROM resource_groups WHERE subscription_id = $1 AND name_lc = $2",
        )
        .bind(sub.to_lowercase())
        .bind(name.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(rg).transpose()
    }
    pub async fn rg_list(&self, sub: &str) -> Result<Vec<ResourceGroup>> {
        let rows = sqlx::query(
            "SELECT * FROM resource_groups WHERE subscription_id = $1 ORDER BY name_lc",
        )
        .bind(sub.to_lowercase())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rg).collect()
    }
    /// Deletes a resource group with every resource in it, their system-assigned identities,
    /// and every role assignment at or below its scope, in one transaction.
    pub async fn rg_delete(&self, sub: &str, name: &str) -> Result<Option<Removed>> {
        let mut tx = self.write_tx().await?;
        let n =
            sqlx::query("DELETE FROM resource_groups WHERE subscription_id = $1 AND name_lc = $2")
                .bind(sub.to_lowercase())
                .bind(name.to_lowercase())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let scope_lc = format!(
            "/subscriptions/{}/resourcegroups/{}",
            sub.to_lowercase(),
            name.to_lowercase()
        );
        let rows = sqlx::query("SELECT * FROM resources WHERE id_lc LIKE $1 ESCAPE '\\'")
            .bind(below(&scope_lc))
            .fetch_all(&mut *tx)
            .await?;
        let mut removed = Removed::default();
        for r in &rows {
            let r = res(r)?;
            removed.resources.push(r.id.clone());
            for p in identity_principals_of(&mut tx, &r).await? {
                delete_principal(&mut tx, &p).await?;
                removed.principals.push(p);
            }
        }
        sqlx::query("DELETE FROM resources WHERE id_lc LIKE $1 ESCAPE '\\'")
            .bind(below(&scope_lc))
            .execute(&mut *tx)
            .await?;
        removed.role_assignments += delete_assignments_at_or_below(&mut tx, &scope_lc).await?;
        for p in &removed.principals {
            removed.role_assignments +=
                sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1")
                    .bind(p)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        tx.commit().await?;
        Ok(Some(removed))
    }

    // ---- resources -----------------------------------------------------------------------
    pub async fn resource_get(&self, id: &str) -> Result<Option<Resource>> {
        let r = sqlx::query("SELECT * FROM resources WHERE id_lc = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(res).transpose()
    }
    /// Resources of one type (lowercase match) in a subscription, optionally one resource group.
    pub async fn resource_list(
        &self,
        sub: &str,
        rg: Option<&str>,
        type_: Option<&str>,
    ) -> Result<Vec<Resource>> {
        let rows = sqlx::query(
            "SELECT * FROM resources WHERE subscription_id = $1 AND ($2 = '' OR resource_group_lc = $2) AND ($3 = '' OR type_lc = $3) ORDER BY id_lc",
        )
        .bind(sub.to_lowercase())
        .bind(rg.map(|x| x.to_lowercase()).unwrap_or_default())
        .bind(type_.map(|x| x.to_lowercase()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(res).collect()
    }

    /// Writes a resource and, in the same transaction, the service principals of managed
    /// identities it creates (`new_principals`) and deletes the principals it dropped
    /// (`drop_principals`, with their role assignments and memberships).
    pub async fn resource_put(
        &self,
        r: &Resource,
        new_principals: &[crate::ServicePrincipal],
        drop_principals: &[String],
    ) -> Result<()> {
        self.resource_put_if(r, new_principals, drop_principals, Expect::Any)
            .await
            .map(|_| ())
    }

    /// [`Store::resource_put`] on a condition checked by the write itself (so two writers
    /// cannot both pass it): `Absent` writes only a new row, `Etag(e)` only over a row whose
    /// ETag is `e`. Returns false, having written nothing, when the condition does not hold.
    pub async fn resource_put_if(
        &self,
        r: &Resource,
        new_principals: &[crate::ServicePrincipal],
        drop_principals: &[String],
        expect: Expect<'_>,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        for p in new_principals {
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
            .execute(&mut *tx)
            .await?;
        }
        for p in drop_principals {
            delete_principal(&mut tx, p).await?;
            sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1")
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query(
            "INSERT INTO resources (id_lc, id, type_lc, subscription_id, resource_group_lc, name, location, tags, properties, system_principal_id, user_identities, created_at, updated_at, etag, created_by, created_by_type, modified_by, modified_by_type) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18) \
             ON CONFLICT (id_lc) DO UPDATE SET tags = excluded.tags, properties = excluded.properties, system_principal_id = excluded.system_principal_id, user_identities = excluded.user_identities, updated_at = excluded.updated_at, etag = excluded.etag, modified_by = excluded.modified_by, modified_by_type = excluded.modified_by_type \
             WHERE $19 = 0 OR ($19 = 2 AND resources.etag = $20)",
        )
        .bind(r.id.to_lowercase())
        .bind(&r.id)
        .bind(r.type_.to_lowercase())
        .bind(r.subscription_id.to_lowercase())
        .bind(r.resource_group.to_lowercase())
        .bind(&r.name)
        .bind(&r.location)
        .bind(&r.tags)
        .bind(&r.properties)
        .bind(&r.system_principal_id)
        .bind(serde_json::to_string(&r.user_identities).unwrap_or_default())
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(&r.etag)
        .bind(&r.created_by)
        .bind(&r.created_by_type)
        .bind(&r.modified_by)
        .bind(&r.modified_by_type)
        .bind(match expect {
            Expect::Any => 0i64,
            Expect::Absent => 1,
            Expect::Etag(_) => 2,
        })
        .bind(match expect {
            Expect::Etag(e) => e.to_string(),
            _ => String::new(),
        })
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // The condition failed: drop the transaction (and the principals it added).
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes a resource, its child resources, the managed identities it owns (its
    /// system-assigned identity; for a user-assigned identity resource, the identity itself),
    /// their role assignments, and the role assignments at or below its scope.
    pub async fn resource_delete(&self, id: &str) -> Result<Option<Removed>> {
        let id_lc = id.to_lowercase();
        let mut tx = self.write_tx().await?;
        let mut rows =
            sqlx::query("SELECT * FROM resources WHERE id_lc = $1 OR id_lc LIKE $2 ESCAPE '\\'")
                .bind(&id_lc)
                .bind(below(&id_lc))
                .fetch_all(&mut *tx)
                .await?;
        if !rows.iter().any(|r| r.get::<String, _>("id_lc") == id_lc) {
            return Ok(None);
        }
        let mut removed = Removed::default();
        for r in rows.drain(..) {
            let r = res(&r)?;
            removed.resources.push(r.id.clone());
            for p in identity_principals_of(&mut tx, &r).await? {
                delete_principal(&mut tx, &p).await?;
                removed.role_assignments +=
                    sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1")
                        .bind(&p)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                removed.principals.push(p);
            }
        }
        sqlx::query("DELETE FROM resources WHERE id_lc = $1 OR id_lc LIKE $2 ESCAPE '\\'")
            .bind(&id_lc)
            .bind(below(&id_lc))
            .execute(&mut *tx)
            .await?;
        removed.role_assignments += delete_assignments_at_or_below(&mut tx, &id_lc).await?;
        tx.commit().await?;
        Ok(Some(removed))
    }
}

/// Principals owned by a resource: its system-assigned identity, and every managed identity
/// made for it (a user-assigned identity resource is one), whatever its type.
async fn identity_principals_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &Resource,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(p) = &r.system_principal_id {
        out.push(p.clone());
    }
    let rows = sqlx::query("SELECT id FROM service_principals WHERE lower(mi_resource_id) = $1")
        .bind(r.id.to_lowercase())
        .fetch_all(&mut **tx)
        .await?;
    for row in rows {
        let id = row.get::<String, _>(0);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

async fn delete_principal(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM service_principals WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM app_role_assignments WHERE principal_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM group_members WHERE member_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn delete_assignments_at_or_below(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    scope_lc: &str,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM role_assignments WHERE scope_lc = $1 OR scope_lc LIKE $2 ESCAPE '\\'",
    )
    .bind(scope_lc)
    .bind(below(scope_lc))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
