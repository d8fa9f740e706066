//! Role definitions (custom only; built-ins live in code), role assignments and deny
//! assignments. Bodies that the access crate owns are stored as JSON text.

use crate::{Result, Store, StoreError, i, s};
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct RoleAssignmentRow {
    pub id: String,
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JsonRow {
    pub id: String,
    pub body: String,
    pub created_at: i64,
}

fn ra(r: &AnyRow) -> Result<RoleAssignmentRow> {
    Ok(RoleAssignmentRow {
        id: s(r, "id")?,
        scope: s(r, "scope")?,
        role_definition_id: s(r, "role_definition_id")?,
        principal_id: s(r, "principal_id")?,
        principal_type: s(r, "principal_type")?,
        description: s(r, "description")?,
        created_by: s(r, "created_by")?,
        created_at: i(r, "created_at")?,
    })
}
fn jr(r: &AnyRow) -> Result<JsonRow> {
    Ok(JsonRow {
        id: s(r, "id")?,
        body: s(r, "body")?,
        created_at: i(r, "created_at")?,
    })
}

/// The `LIKE` pattern that matches every scope strictly below `scope_lc`.
pub(crate) fn below(scope_lc: &str) -> String {
    let esc = scope_lc
        .trim_end_matches('/')
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("{esc}/%")
}

impl Store {
    pub async fn role_definition_upsert(&self, id: &str, body: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO role_definitions (id, body, created_at, updated_at) VALUES ($1,$2,$3,$3) ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(id.to_lowercase())
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn role_definition_get(&self, id: &str) -> Result<Option<JsonRow>> {
        let r = sqlx::query("SELECT id, body, created_at FROM role_definitions WHERE id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(jr).transpose()
    }
    pub async fn role_definition_list(&self) -> Result<Vec<JsonRow>> {
        let rows =
            sqlx::query("SELECT id, body, created_at FROM role_definitions ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(jr).collect()
    }
    /// Deletes a custom role; refuses while assignments use it.
    pub async fn role_definition_delete(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query("SELECT id FROM role_assignments WHERE role_definition_id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        if used.is_some() {
            return Err(StoreError::Conflict(
                "role definition is in use by role assignments".into(),
            ));
        }
        let n = sqlx::query("DELETE FROM role_definitions WHERE id = $1")
            .bind(id.to_lowercase())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Inserts a role assignment. The same (scope, role, principal) twice is a conflict, as
    /// in ARM (`RoleAssignmentExists`).
    pub async fn role_assignment_create(&self, a: &RoleAssignmentRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let dup = sqlx::query(
            "SELECT id FROM role_assignments WHERE scope_lc = $1 AND role_definition_id = $2 AND principal_id = $3",
        )
        .bind(a.scope.to_lowercase())
        .bind(a.role_definition_id.to_lowercase())
        .bind(&a.principal_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = dup {
            let existing: String = sqlx::Row::get(&r, 0);
            if existing != a.id {
                return Err(StoreError::Conflict(format!(
                    "role assignment already exists: {existing}"
                )));
            }
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO role_assignments (id, scope, scope_lc, role_definition_id, principal_id, principal_type, description, created_by, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(a.id.to_lowercase())
        .bind(&a.scope)
        .bind(a.scope.to_lowercase())
        .bind(a.role_definition_id.to_lowercase())
        .bind(&a.principal_id)
        .bind(&a.principal_type)
        .bind(&a.description)
        .bind(&a.created_by)
        .bind(a.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::map_unique(e, "role assignment id exists"))?;
        tx.commit().await?;
        Ok(())
    }
    pub async fn role_assignment_get(&self, id: &str) -> Result<Option<RoleAssignmentRow>> {
        let r = sqlx::query("SELECT * FROM role_assignments WHERE id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(ra).transpose()
    }
    pub async fn role_assignment_delete(&self, id: &str) -> Result<Option<RoleAssignmentRow>> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("SELECT * FROM role_assignments WHERE id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = r.as_ref().map(ra).transpose()? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM role_assignments WHERE id = $1")
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(row))
    }
    pub async fn role_assignment_list_all(&self) -> Result<Vec<RoleAssignmentRow>> {
        let rows = sqlx::query("SELECT * FROM role_assignments ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ra).collect()
    }
    pub async fn role_assignment_count(&self) -> Result<i64> {
        let r = sqlx::query("SELECT COUNT(*) FROM role_assignments")
            .fetch_one(&self.pool)
            .await?;
        Ok(sqlx::Row::get::<i64, _>(&r, 0))
    }

    pub async fn deny_assignment_upsert(
        &self,
        id: &str,
        scope: &str,
        body: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO deny_assignments (id, scope_lc, body, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (id) DO UPDATE SET body = excluded.body, scope_lc = excluded.scope_lc",
        )
        .bind(id.to_lowercase())
        .bind(scope.to_lowercase())
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn deny_assignment_list(&self) -> Result<Vec<JsonRow>> {
        let rows =
            sqlx::query("SELECT id, body, created_at FROM deny_assignments ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(jr).collect()
    }
    pub async fn deny_assignment_delete(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM deny_assignments WHERE id = $1")
            .bind(id.to_lowercase())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}
