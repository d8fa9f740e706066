//! Credential-vault rows: the key-encryption-key ring (`cred_keks`) and the envelope-encrypted
//! secrets (`cred_secrets`). This module stores opaque strings only; sealing, opening and
//! re-wrapping are done by `cloister_credentials::vault`.

use crate::{Result, Store, i, s};
use sqlx::Row;
use sqlx::any::AnyRow;

/// One version of the key-encryption-key ring.
#[derive(Debug, Clone, PartialEq)]
pub struct KekRow {
    pub version: i64,
    /// The KEK as wrapped by the key provider (base64).
    pub wrapped: String,
    /// The id of the key provider that wrapped it.
    pub provider: String,
    pub created_at: i64,
}

/// One sealed secret: the record for `field` of `owner_lc`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRow {
    pub owner_lc: String,
    pub field: String,
    pub instance_lc: String,
    pub provider_lc: String,
    pub connection_lc: String,
    /// The KEK version in `blob`'s header.
    pub kek_version: i64,
    /// The sealed record (base64).
    pub blob: String,
    pub updated_at: i64,
}

impl SecretRow {
    /// This row's position in [`Store::secrets_with_kek_below`]'s order.
    pub fn cursor(&self) -> SecretCursor {
        SecretCursor {
            kek_version: self.kek_version,
            owner_lc: self.owner_lc.clone(),
            field: self.field.clone(),
        }
    }
}

/// A position in `(kek_version, owner_lc, field)` order, for paging through
/// [`Store::secrets_with_kek_below`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCursor {
    pub kek_version: i64,
    pub owner_lc: String,
    pub field: String,
}

/// A compare-and-swap replacement of one row's blob by its re-wrapped form.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRewrap {
    pub owner_lc: String,
    pub field: String,
    /// The row must still have this version ...
    pub old_version: i64,
    /// ... and exactly this blob, or nothing is written.
    pub old_blob: String,
    pub new_version: i64,
    pub new_blob: String,
    pub updated_at: i64,
}

fn kek(r: &AnyRow) -> Result<KekRow> {
    Ok(KekRow {
        version: i(r, "version")?,
        wrapped: s(r, "wrapped")?,
        provider: s(r, "provider")?,
        created_at: i(r, "created_at")?,
    })
}

fn secret(r: &AnyRow) -> Result<SecretRow> {
    Ok(SecretRow {
        owner_lc: s(r, "owner_lc")?,
        field: s(r, "field")?,
        instance_lc: s(r, "instance_lc")?,
        provider_lc: s(r, "provider_lc")?,
        connection_lc: s(r, "connection_lc")?,
        kek_version: i(r, "kek_version")?,
        blob: s(r, "blob")?,
        updated_at: i(r, "updated_at")?,
    })
}

const SECRET_UPSERT: &str = "INSERT INTO cred_secrets (owner_lc, field, instance_lc, provider_lc, connection_lc, kek_version, blob, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (owner_lc, field) DO UPDATE SET instance_lc = excluded.instance_lc, provider_lc = excluded.provider_lc, connection_lc = excluded.connection_lc, kek_version = excluded.kek_version, blob = excluded.blob, updated_at = excluded.updated_at";

const SECRET_CAS: &str = "UPDATE cred_secrets SET kek_version = $5, blob = $6, updated_at = $7 WHERE owner_lc = $1 AND field = $2 AND kek_version = $3 AND blob = $4";

fn cas_query(w: &SecretRewrap) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(SECRET_CAS)
        .bind(&w.owner_lc)
        .bind(&w.field)
        .bind(w.old_version)
        .bind(&w.old_blob)
        .bind(w.new_version)
        .bind(&w.new_blob)
        .bind(w.updated_at)
}

fn upsert_query(r: &SecretRow) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(SECRET_UPSERT)
        .bind(&r.owner_lc)
        .bind(&r.field)
        .bind(&r.instance_lc)
        .bind(&r.provider_lc)
        .bind(&r.connection_lc)
        .bind(r.kek_version)
        .bind(&r.blob)
        .bind(r.updated_at)
}

impl Store {
    /// Adds a KEK version. Returns false (and changes nothing) if the version exists, e.g.
    /// because another node created or rotated the ring at the same moment.
    pub async fn kek_insert(&self, k: &KekRow) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO cred_keks (version, wrapped, provider, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (version) DO NOTHING",
        )
        .bind(k.version)
        .bind(&k.wrapped)
        .bind(&k.provider)
        .bind(k.created_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every KEK version, lowest first.
    pub async fn kek_list(&self) -> Result<Vec<KekRow>> {
        let rows = sqlx::query("SELECT * FROM cred_keks ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(kek).collect()
    }

    /// How many stored secrets are still wrapped under a KEK version below `version` (the
    /// rotation job's backlog when `version` is the primary).
    pub async fn kek_count_below(&self, version: i64) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM cred_secrets WHERE kek_version < $1")
            .bind(version)
            .fetch_one(&self.pool)
            .await?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// Inserts or replaces the secret `(owner_lc, field)`.
    pub async fn secret_put(&self, row: &SecretRow) -> Result<()> {
        upsert_query(row).execute(&self.pool).await?;
        Ok(())
    }

    /// [`Store::secret_put`] for many rows in one transaction: all or none. When a key
    /// appears more than once, the last row wins.
    pub async fn secret_put_many(&self, rows: &[SecretRow]) -> Result<()> {
        let mut last = std::collections::HashMap::new();
        for (n, r) in rows.iter().enumerate() {
            last.insert((r.owner_lc.as_str(), r.field.as_str()), n);
        }
        let rows: Vec<&SecretRow> = rows
            .iter()
            .enumerate()
            .filter(|(n, r)| last[&(r.owner_lc.as_str(), r.field.as_str())] == *n)
            .map(|(_, r)| r)
            .collect();
        let mut tx = self.write_tx().await?;
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO cred_secrets (owner_lc, field, instance_lc, provider_lc, connection_lc, kek_version, blob, updated_at) VALUES {} ON CONFLICT (owner_lc, field) DO UPDATE SET instance_lc = excluded.instance_lc, provider_lc = excluded.provider_lc, connection_lc = excluded.connection_lc, kek_version = excluded.kek_version, blob = excluded.blob, updated_at = excluded.updated_at",
                placeholders(chunk.len(), 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(&r.owner_lc)
                    .bind(&r.field)
                    .bind(&r.instance_lc)
                    .bind(&r.provider_lc)
                    .bind(&r.connection_lc)
                    .bind(r.kek_version)
                    .bind(&r.blob)
                    .bind(r.updated_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn secret_get(&self, owner_lc: &str, field: &str) -> Result<Option<SecretRow>> {
        let r = sqlx::query("SELECT * FROM cred_secrets WHERE owner_lc = $1 AND field = $2")
            .bind(owner_lc)
            .bind(field)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(secret).transpose()
    }

    /// Every secret of one owner, by field.
    pub async fn secrets_of(&self, owner_lc: &str) -> Result<Vec<SecretRow>> {
        let rows = sqlx::query("SELECT * FROM cred_secrets WHERE owner_lc = $1 ORDER BY field")
            .bind(owner_lc)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(secret).collect()
    }

    /// Deletes one secret; true if it existed.
    pub async fn secret_delete(&self, owner_lc: &str, field: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM cred_secrets WHERE owner_lc = $1 AND field = $2")
            .bind(owner_lc)
            .bind(field)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes the secrets of `owner` and of everything below it (ids that continue with
    /// `owner + "/"`): deleting a provider deletes its connections' secrets too, but not
    /// those of a sibling whose name merely starts the same. Returns how many were deleted.
    pub async fn secret_delete_owner(&self, owner: &str) -> Result<u64> {
        let owner = owner.to_lowercase();
        let below = format!("{owner}/");
        let r = sqlx::query(
            "DELETE FROM cred_secrets WHERE owner_lc = $1 OR substr(owner_lc, 1, CAST($3 AS INTEGER)) = $2",
        )
        .bind(&owner)
        .bind(&below)
        .bind(below.chars().count() as i64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Deletes every secret bound to one service instance.
    pub async fn secret_delete_instance(&self, instance: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM cred_secrets WHERE instance_lc = $1")
            .bind(instance.to_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Up to `limit` secrets whose KEK version is below `version`, in
    /// `(kek_version, owner_lc, field)` order, starting after `after`. Rows the caller
    /// re-wraps leave the range, so paging from `None` again also works; the cursor lets a
    /// caller step past rows it could not re-wrap.
    pub async fn secrets_with_kek_below(
        &self,
        version: i64,
        after: Option<&SecretCursor>,
        limit: u32,
    ) -> Result<Vec<SecretRow>> {
        let rows = match after {
            None => sqlx::query(
                "SELECT * FROM cred_secrets WHERE kek_version < $1 ORDER BY kek_version, owner_lc, field LIMIT $2",
            )
            .bind(version)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?,
            Some(c) => sqlx::query(
                "SELECT * FROM cred_secrets WHERE kek_version < $1 AND (kek_version > $2 OR (kek_version = $2 AND (owner_lc > $3 OR (owner_lc = $3 AND field > $4)))) ORDER BY kek_version, owner_lc, field LIMIT $5",
            )
            .bind(version)
            .bind(c.kek_version)
            .bind(&c.owner_lc)
            .bind(&c.field)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(secret).collect()
    }

    /// Replaces a row's blob by its re-wrapped form if the row still has the old version and
    /// the old blob (compare-and-swap): a secret written meanwhile by another writer, or a
    /// row another rotation job already did, is left alone. True if this call wrote.
    pub async fn secret_rewrap(&self, w: &SecretRewrap) -> Result<bool> {
        let r = cas_query(w).execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    /// [`Store::secret_rewrap`] for a batch, in one transaction (one statement per 100
    /// rows). Returns how many rows were written (the others had changed meanwhile).
    pub async fn secret_rewrap_many(&self, batch: &[SecretRewrap]) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut n = 0;
        for chunk in batch.chunks(CHUNK) {
            // VALUES columns are named column1..column7 on both SQLite and PostgreSQL.
            let sql = format!(
                "UPDATE cred_secrets SET kek_version = v.column5, blob = v.column6, updated_at = v.column7 FROM (VALUES {}) AS v WHERE cred_secrets.owner_lc = v.column1 AND cred_secrets.field = v.column2 AND cred_secrets.kek_version = v.column3 AND cred_secrets.blob = v.column4",
                placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for w in chunk {
                q = q
                    .bind(&w.owner_lc)
                    .bind(&w.field)
                    .bind(w.old_version)
                    .bind(&w.old_blob)
                    .bind(w.new_version)
                    .bind(&w.new_blob)
                    .bind(w.updated_at);
            }
            n += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }
}

/// Rows per multi-row statement (8 columns: 800 parameters, far below both engines' limits).
const CHUNK: usize = 100;

/// `($1,$2,..,$cols),($cols+1,..)`: `rows` tuples of numbered placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push_str(&format!("${}", r * cols + c + 1));
        }
        s.push(')');
    }
    s
}
