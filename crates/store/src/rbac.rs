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

/// What [`Store::role_definition_write`] does once allowed.
#[derive(Debug, Clone, Copy)]
pub enum RoleDefinitionWrite<'a> {
    /// Create or replace with this JSON body.
    Upsert(&'a str),
    /// Delete (refused while assignments use it).
    Delete,
}

impl Store {
    /// Creates or replaces custom role `id` (as `body`), or deletes it, in one write
    /// transaction that first reads the stored definition and every role assignment that
    /// uses the id, and lets `decide` refuse. So the decision sees exactly what the write
    /// changes: no assignment of the role can be created, and no other change of the role
    /// can land, between the check and the write (role assignment writes take the same
    /// lock). Returns `Ok(Ok(existed))` when written, `Ok(Err(refusal))` when `decide`
    /// refused (nothing written).
    pub async fn role_definition_write<E>(
        &self,
        id: &str,
        write: RoleDefinitionWrite<'_>,
        now: i64,
        decide: impl FnOnce(Option<&JsonRow>, &[RoleAssignmentRow]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<bool, E>> {
        let id = id.to_lowercase();
        let mut tx = self
            .write_tx_locking(&["role_definitions", "role_assignments"])
            .await?;
        let old = sqlx::query("SELECT id, body, created_at FROM role_definitions WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        let old = old.as_ref().map(jr).transpose()?;
        let used = sqlx::query("SELECT * FROM role_assignments WHERE role_definition_id = $1")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?;
        let used = used.iter().map(ra).collect::<Result<Vec<_>>>()?;
        if let Err(refusal) = decide(old.as_ref(), &used) {
            return Ok(Err(refusal));
        }
        match write {
            RoleDefinitionWrite::Upsert(body) => {
                sqlx::query(
                    "INSERT INTO role_definitions (id, body, created_at, updated_at) VALUES ($1,$2,$3,$3) ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                )
                .bind(&id)
                .bind(body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            RoleDefinitionWrite::Delete => {
                if !used.is_empty() {
                    return Err(StoreError::Conflict(
                        "role definition is in use by role assignments".into(),
                    ));
                }
                sqlx::query("DELETE FROM role_definitions WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Ok(old.is_some()))
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
    /// Inserts a role assignment. The same (scope, role, principal) twice is a conflict, as
    /// in ARM (`RoleAssignmentExists`).
    pub async fn role_assignment_create(&self, a: &RoleAssignmentRow) -> Result<()> {
        self.role_assignment_create_checked(a, |_| Ok::<(), StoreError>(()))
            .await?
    }

    /// [`Store::role_assignment_create`] after `decide` has seen the stored custom role
    /// definition the assignment uses (`None` for a built-in or missing role), in the same
    /// write transaction (serialized with [`Store::role_definition_write`]).
    pub async fn role_assignment_create_checked<E>(
        &self,
        a: &RoleAssignmentRow,
        decide: impl FnOnce(Option<&JsonRow>) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(), E>> {
        let mut tx = self
            .write_tx_locking(&["role_definitions", "role_assignments"])
            .await?;
        let role = sqlx::query("SELECT id, body, created_at FROM role_definitions WHERE id = $1")
            .bind(a.role_definition_id.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        let role = role.as_ref().map(jr).transpose()?;
        if let Err(refusal) = decide(role.as_ref()) {
            return Ok(Err(refusal));
        }
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
            return Ok(Ok(()));
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
        Ok(Ok(()))
    }
    pub async fn role_assignment_get(&self, id: &str) -> Result<Option<RoleAssignmentRow>> {
        let r = sqlx::query("SELECT * FROM role_assignments WHERE id = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(ra).transpose()
    }
    /// Deletes a role assignment, returning the row that was deleted (`None`: there was
    /// none). One statement, so a delete either happened or reports that it did not.
    pub async fn role_assignment_delete(&self, id: &str) -> Result<Option<RoleAssignmentRow>> {
        let r = sqlx::query("DELETE FROM role_assignments WHERE id = $1 RETURNING *")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(ra).transpose()
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

    /// Creates or replaces deny assignment `id` at `scope`. An id that already exists at
    /// another scope is a conflict: a PUT through one scope's URL never moves or replaces a
    /// deny assignment of another scope.
    pub async fn deny_assignment_upsert(
        &self,
        id: &str,
        scope: &str,
        body: &str,
        now: i64,
    ) -> Result<()> {
        let n = sqlx::query(
            "INSERT INTO deny_assignments (id, scope_lc, body, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (id) DO UPDATE SET body = excluded.body WHERE deny_assignments.scope_lc = excluded.scope_lc",
        )
        .bind(id.to_lowercase())
        .bind(scope.to_lowercase())
        .bind(body)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(
                "a deny assignment with this id exists at another scope".into(),
            ));
        }
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
