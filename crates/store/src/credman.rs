//! Credential-manager rows: providers, connections and access policies (`cred_items`), the
//! per-connection token state used for cross-process single-flight refresh (`cred_tokens`),
//! and one-time login sessions (`cred_logins`, keyed by a hash of `state`).

use crate::{Result, Store, StoreError, i, s};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct CredItem {
    pub id: String,
    /// `provider`, `connection` or `policy`.
    pub kind: String,
    pub parent_lc: String,
    pub instance_lc: String,
    pub name: String,
    /// Non-secret properties (JSON object text).
    pub properties: String,
    pub etag: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenState {
    pub connection_lc: String,
    pub expires_at: i64,
    pub generation: i64,
    pub lease_owner: String,
    pub lease_until: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoginRow {
    pub state_hash: String,
    pub connection_lc: String,
    /// Sealed by the caller (PKCE verifier, redirect, consent).
    pub sealed: String,
    pub expires_at: i64,
    pub created_at: i64,
}

fn item(r: &AnyRow) -> Result<CredItem> {
    Ok(CredItem {
        id: s(r, "id")?,
        kind: s(r, "kind")?,
        parent_lc: s(r, "parent_lc")?,
        instance_lc: s(r, "instance_lc")?,
        name: s(r, "name")?,
        properties: s(r, "properties")?,
        etag: s(r, "etag")?,
        created_at: i(r, "created_at")?,
        updated_at: i(r, "updated_at")?,
    })
}

/// Takes the write lock at the start of a read-then-write transaction. On SQLite a deferred
/// transaction that reads first and then writes fails at once with "database is locked" if
/// another writer got in between (the busy timeout does not apply to that upgrade); a write
/// as the first statement waits for the lock instead. On PostgreSQL it is a no-op.
async fn write_lock(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query("UPDATE cred_tokens SET updated_at = updated_at WHERE connection_lc = ''")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn login(r: &AnyRow) -> Result<LoginRow> {
    Ok(LoginRow {
        state_hash: s(r, "state_hash")?,
        connection_lc: s(r, "connection_lc")?,
        sealed: s(r, "sealed")?,
        expires_at: i(r, "expires_at")?,
        created_at: i(r, "created_at")?,
    })
}

fn below(prefix: &str) -> String {
    let esc = prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("{esc}/%")
}

impl Store {
    pub async fn cred_get(&self, id: &str) -> Result<Option<CredItem>> {
        let r = sqlx::query("SELECT * FROM cred_items WHERE id_lc = $1")
            .bind(id.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(item).transpose()
    }

    /// Children of one parent of one kind, ordered by name.
    pub async fn cred_children(&self, parent: &str, kind: &str) -> Result<Vec<CredItem>> {
        let rows = sqlx::query(
            "SELECT * FROM cred_items WHERE parent_lc = $1 AND kind = $2 ORDER BY name",
        )
        .bind(parent.to_lowercase())
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(item).collect()
    }

    pub async fn cred_count(&self, parent: &str, kind: &str) -> Result<i64> {
        let r = sqlx::query("SELECT COUNT(*) FROM cred_items WHERE parent_lc = $1 AND kind = $2")
            .bind(parent.to_lowercase())
            .bind(kind)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.get::<i64, _>(0))
    }

    /// Creates or replaces an item. With `if_match`, the write happens only if the stored
    /// etag equals it (`*` matches any existing item); returns false when it did not.
    /// `limit` caps how many items of this kind the parent may hold (checked on insert).
    pub async fn cred_put(
        &self,
        it: &CredItem,
        if_match: Option<&str>,
        limit: Option<i64>,
    ) -> Result<bool> {
        let id_lc = it.id.to_lowercase();
        let mut tx = self.write_tx().await?;
        write_lock(&mut tx).await?;
        let cur: Option<String> = sqlx::query("SELECT etag FROM cred_items WHERE id_lc = $1")
            .bind(&id_lc)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        match (if_match, &cur) {
            (Some("*"), None) => return Ok(false),
            (Some(m), Some(e)) if m != "*" && m != e => return Ok(false),
            (Some(m), None) if m != "*" => return Ok(false),
            _ => {}
        }
        if cur.is_none() {
            if let Some(max) = limit {
                let n: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM cred_items WHERE parent_lc = $1 AND kind = $2",
                )
                .bind(&it.parent_lc)
                .bind(&it.kind)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
                if n >= max {
                    return Err(StoreError::Conflict(format!("limit of {max} reached")));
                }
            }
            sqlx::query(
                "INSERT INTO cred_items (id_lc, id, kind, parent_lc, instance_lc, name, properties, etag, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            )
            .bind(&id_lc)
            .bind(&it.id)
            .bind(&it.kind)
            .bind(&it.parent_lc)
            .bind(&it.instance_lc)
            .bind(&it.name)
            .bind(&it.properties)
            .bind(&it.etag)
            .bind(it.created_at)
            .bind(it.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::map_unique(e, "item exists"))?;
        } else {
            sqlx::query(
                "UPDATE cred_items SET properties = $2, etag = $3, updated_at = $4 WHERE id_lc = $1",
            )
            .bind(&id_lc)
            .bind(&it.properties)
            .bind(&it.etag)
            .bind(it.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes an item and everything below it (a provider's connections and their
    /// policies, token state and sealed secrets). With `if_match` (required by the API) the
    /// etag must match. Returns None if there was no such item, Some(false) on an etag
    /// mismatch.
    pub async fn cred_delete(&self, id: &str, if_match: &str) -> Result<Option<bool>> {
        let id_lc = id.to_lowercase();
        let mut tx = self.write_tx().await?;
        write_lock(&mut tx).await?;
        let cur: Option<String> = sqlx::query("SELECT etag FROM cred_items WHERE id_lc = $1")
            .bind(&id_lc)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        let Some(etag) = cur else { return Ok(None) };
        if if_match != "*" && if_match != etag {
            return Ok(Some(false));
        }
        let like = below(&id_lc);
        sqlx::query("DELETE FROM cred_items WHERE id_lc = $1 OR id_lc LIKE $2 ESCAPE '\\'")
            .bind(&id_lc)
            .bind(&like)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM cred_tokens WHERE connection_lc = $1 OR connection_lc LIKE $2 ESCAPE '\\'",
        )
        .bind(&id_lc)
        .bind(&like)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM cred_logins WHERE connection_lc = $1 OR connection_lc LIKE $2 ESCAPE '\\'",
        )
        .bind(&id_lc)
        .bind(&like)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(true))
    }

    /// Deletes every item of an instance (the instance resource was deleted).
    pub async fn cred_delete_instance(&self, instance: &str) -> Result<()> {
        let lc = instance.to_lowercase();
        let like = below(&lc);
        sqlx::query("DELETE FROM cred_items WHERE instance_lc = $1")
            .bind(&lc)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM cred_tokens WHERE connection_lc LIKE $1 ESCAPE '\\'")
            .bind(&like)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM cred_logins WHERE connection_lc LIKE $1 ESCAPE '\\'")
            .bind(&like)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets a connection's properties without an etag check (status changes at runtime).
    pub async fn cred_set_properties(
        &self,
        id: &str,
        properties: &str,
        etag: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cred_items SET properties = $2, etag = $3, updated_at = $4 WHERE id_lc = $1",
        )
        .bind(id.to_lowercase())
        .bind(properties)
        .bind(etag)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- token state ---------------------------------------------------------------------

    pub async fn token_state(&self, connection: &str) -> Result<Option<TokenState>> {
        let r = sqlx::query("SELECT * FROM cred_tokens WHERE connection_lc = $1")
            .bind(connection.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(TokenState {
                connection_lc: s(&r, "connection_lc")?,
                expires_at: i(&r, "expires_at")?,
                generation: i(&r, "generation")?,
                lease_owner: s(&r, "lease_owner")?,
                lease_until: i(&r, "lease_until")?,
            })
        })
        .transpose()
    }

    /// Records a new token set: bumps the generation and releases any lease.
    pub async fn token_stored(&self, connection: &str, expires_at: i64, now: i64) -> Result<i64> {
        let lc = connection.to_lowercase();
        sqlx::query(
            "INSERT INTO cred_tokens (connection_lc, expires_at, generation, lease_owner, lease_until, updated_at) VALUES ($1,$2,1,'',0,$3) ON CONFLICT (connection_lc) DO UPDATE SET expires_at = excluded.expires_at, generation = cred_tokens.generation + 1, lease_owner = '', lease_until = 0, updated_at = excluded.updated_at",
        )
        .bind(&lc)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self
            .token_state(&lc)
            .await?
            .map(|t| t.generation)
            .unwrap_or(0))
    }

    /// Takes the refresh lease of a connection if it is free (or expired, or already ours).
    /// Across processes sharing one store, exactly one holds it at a time.
    pub async fn token_lease(
        &self,
        connection: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let lc = connection.to_lowercase();
        sqlx::query(
            "INSERT INTO cred_tokens (connection_lc, expires_at, generation, lease_owner, lease_until, updated_at) VALUES ($1,0,0,'',0,$2) ON CONFLICT (connection_lc) DO NOTHING",
        )
        .bind(&lc)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let r = sqlx::query(
            "UPDATE cred_tokens SET lease_owner = $2, lease_until = $3 WHERE connection_lc = $1 AND (lease_until < $4 OR lease_owner = $2)",
        )
        .bind(&lc)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn token_release(&self, connection: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE cred_tokens SET lease_owner = '', lease_until = 0 WHERE connection_lc = $1 AND lease_owner = $2",
        )
        .bind(connection.to_lowercase())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- logins --------------------------------------------------------------------------

    pub async fn login_insert(&self, l: &LoginRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO cred_logins (state_hash, connection_lc, sealed, expires_at, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&l.state_hash)
        .bind(&l.connection_lc)
        .bind(&l.sealed)
        .bind(l.expires_at)
        .bind(l.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reads and deletes a login (one-time `state`).
    pub async fn login_take(&self, state_hash: &str) -> Result<Option<LoginRow>> {
        let mut tx = self.write_tx().await?;
        write_lock(&mut tx).await?;
        let r = sqlx::query("SELECT * FROM cred_logins WHERE state_hash = $1")
            .bind(state_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(r) = r else { return Ok(None) };
        let n = sqlx::query("DELETE FROM cred_logins WHERE state_hash = $1")
            .bind(state_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if n != 1 {
            return Ok(None);
        }
        login(&r).map(Some)
    }

    /// Reads a login without consuming it (the anti-phishing page).
    pub async fn login_peek(&self, state_hash: &str) -> Result<Option<LoginRow>> {
        let r = sqlx::query("SELECT * FROM cred_logins WHERE state_hash = $1")
            .bind(state_hash)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(login).transpose()
    }

    pub async fn login_update(&self, state_hash: &str, sealed: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE cred_logins SET sealed = $2 WHERE state_hash = $1")
            .bind(state_hash)
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Pending (unexpired) logins of a connection.
    pub async fn logins_of(&self, connection: &str, now: i64) -> Result<Vec<LoginRow>> {
        let rows =
            sqlx::query("SELECT * FROM cred_logins WHERE connection_lc = $1 AND expires_at >= $2")
                .bind(connection.to_lowercase())
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(login).collect()
    }

    pub async fn login_purge(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM cred_logins WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
