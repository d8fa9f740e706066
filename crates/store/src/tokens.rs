//! Token-service state: signing keys, authorization codes, refresh tokens, consents and
//! managed-identity bindings. Codes, refresh tokens and binding secrets are stored only as
//! keyed hashes computed by the caller.

use crate::{Result, Store, StoreError, i, json_vec, oi, s};
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    pub cert_der: String,
    /// base64 of the sealed PKCS#8 private key.
    pub sealed_key: String,
    /// `next`, `active` or `retired`.
    pub state: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub remove_after: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthCodeRow {
    pub code_hash: String,
    pub tenant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub code_challenge: String,
    pub nonce: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRow {
    pub token_hash: String,
    pub family_id: String,
    pub tenant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub expires_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingRow {
    pub secret_hash: String,
    pub resource_id: String,
    pub principal_ids: Vec<String>,
    pub created_by: String,
    pub expires_at: i64,
    pub created_at: i64,
}

/// What redeeming a refresh token found.
#[derive(Debug, Clone, PartialEq)]
pub enum Redeem {
    Ok(RefreshTokenRow),
    /// Presented a second time: the whole family has been revoked (theft detection).
    Reused,
    Unknown,
}

fn key(r: &AnyRow) -> Result<SigningKeyRow> {
    Ok(SigningKeyRow {
        kid: s(r, "kid")?,
        alg: s(r, "alg")?,
        cert_der: s(r, "cert_der")?,
        sealed_key: s(r, "sealed_key")?,
        state: s(r, "state")?,
        created_at: i(r, "created_at")?,
        activated_at: oi(r, "activated_at")?,
        retired_at: oi(r, "retired_at")?,
        remove_after: oi(r, "remove_after")?,
    })
}
fn rt(r: &AnyRow) -> Result<RefreshTokenRow> {
    Ok(RefreshTokenRow {
        token_hash: s(r, "token_hash")?,
        family_id: s(r, "family_id")?,
        tenant_id: s(r, "tenant_id")?,
        client_id: s(r, "client_id")?,
        user_id: s(r, "user_id")?,
        scope: s(r, "scope")?,
        expires_at: i(r, "expires_at")?,
        created_at: i(r, "created_at")?,
    })
}

impl Store {
    pub async fn signing_key_insert(&self, k: &SigningKeyRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, cert_der, sealed_key, state, created_at, activated_at, retired_at, remove_after) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.cert_der)
        .bind(&k.sealed_key)
        .bind(&k.state)
        .bind(k.created_at)
        .bind(k.activated_at)
        .bind(k.retired_at)
        .bind(k.remove_after)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::map_unique(e, "key exists"))?;
        Ok(())
    }
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key).collect()
    }
    /// Promotes `next_kid` to active and retires the current active key, atomically. Returns
    /// false (and changes nothing) if `next_kid` is no longer the `next` key, so two nodes
    /// rotating at once do not both rotate.
    pub async fn signing_key_promote(
        &self,
        next_kid: &str,
        now: i64,
        remove_after: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1 AND state = 'next'")
            .bind(next_kid)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE signing_keys SET state = 'retired', retired_at = $2, remove_after = $3 WHERE state = 'active' AND kid <> $1",
        )
        .bind(next_kid)
        .bind(now)
        .bind(remove_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
    /// Drops retired keys whose every token has expired.
    pub async fn signing_keys_purge(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM signing_keys WHERE state = 'retired' AND remove_after <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    pub async fn auth_code_insert(&self, c: &AuthCodeRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, tenant_id, client_id, user_id, redirect_uri, scope, code_challenge, nonce, expires_at, used) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,0)",
        )
        .bind(&c.code_hash)
        .bind(&c.tenant_id)
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.redirect_uri)
        .bind(&c.scope)
        .bind(&c.code_challenge)
        .bind(&c.nonce)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    /// Marks a code used and returns it; `Err(Conflict)` if it was already redeemed,
    /// `Ok(None)` if unknown. Atomic, so a code is redeemed at most once.
    pub async fn auth_code_take(&self, code_hash: &str) -> Result<Option<AuthCodeRow>> {
        let r = sqlx::query(
            "UPDATE auth_codes SET used = 1 WHERE code_hash = $1 AND used = 0 RETURNING code_hash, tenant_id, client_id, user_id, redirect_uri, scope, code_challenge, nonce, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        match r {
            Some(r) => Ok(Some(AuthCodeRow {
                code_hash: s(&r, "code_hash")?,
                tenant_id: s(&r, "tenant_id")?,
                client_id: s(&r, "client_id")?,
                user_id: s(&r, "user_id")?,
                redirect_uri: s(&r, "redirect_uri")?,
                scope: s(&r, "scope")?,
                code_challenge: s(&r, "code_challenge")?,
                nonce: s(&r, "nonce")?,
                expires_at: i(&r, "expires_at")?,
            })),
            None => {
                let used = sqlx::query("SELECT used FROM auth_codes WHERE code_hash = $1")
                    .bind(code_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                if used.is_some() {
                    Err(StoreError::Conflict("code already redeemed".into()))
                } else {
                    Ok(None)
                }
            }
        }
    }
    pub async fn auth_codes_purge(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM auth_codes WHERE expires_at < $1")
            .bind(now - 3600)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn refresh_insert(&self, t: &RefreshTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, client_id, user_id, scope, expires_at, used, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8)",
        )
        .bind(&t.token_hash)
        .bind(&t.family_id)
        .bind(&t.tenant_id)
        .bind(&t.client_id)
        .bind(&t.user_id)
        .bind(&t.scope)
        .bind(t.expires_at)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    /// Redeems a refresh token once and, in the same transaction, stores its successor.
    /// A second presentation revokes the whole family.
    pub async fn refresh_rotate(
        &self,
        token_hash: &str,
        successor: impl FnOnce(&RefreshTokenRow) -> RefreshTokenRow,
    ) -> Result<Redeem> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0 RETURNING token_hash, family_id, tenant_id, client_id, user_id, scope, expires_at, created_at",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else {
            let fam = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
            return match fam {
                Some(f) => {
                    let family: String = sqlx::Row::get(&f, 0);
                    sqlx::query(
                        "UPDATE refresh_tokens SET used = 1, expires_at = 0 WHERE family_id = $1",
                    )
                    .bind(&family)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Redeem::Reused)
                }
                None => Ok(Redeem::Unknown),
            };
        };
        let row = rt(&r)?;
        let next = successor(&row);
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, client_id, user_id, scope, expires_at, used, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8)",
        )
        .bind(&next.token_hash)
        .bind(&next.family_id)
        .bind(&next.tenant_id)
        .bind(&next.client_id)
        .bind(&next.user_id)
        .bind(&next.scope)
        .bind(next.expires_at)
        .bind(next.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Redeem::Ok(row))
    }

    pub async fn consent_put(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, resource, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (user_id, client_id, resource) DO NOTHING",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(resource)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn consent_exists(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT user_id FROM consents WHERE user_id = $1 AND client_id = $2 AND resource = $3",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(resource)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    pub async fn binding_insert(&self, b: &BindingRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO identity_bindings (secret_hash, resource_id, principal_ids, created_by, expires_at, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&b.secret_hash)
        .bind(&b.resource_id)
        .bind(serde_json::to_string(&b.principal_ids).unwrap_or_default())
        .bind(&b.created_by)
        .bind(b.expires_at)
        .bind(b.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    pub async fn binding_get(&self, secret_hash: &str) -> Result<Option<BindingRow>> {
        let r = sqlx::query("SELECT * FROM identity_bindings WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        match r {
            Some(r) => Ok(Some(BindingRow {
                secret_hash: s(&r, "secret_hash")?,
                resource_id: s(&r, "resource_id")?,
                principal_ids: json_vec(&r, "principal_ids")?,
                created_by: s(&r, "created_by")?,
                expires_at: i(&r, "expires_at")?,
                created_at: i(&r, "created_at")?,
            })),
            None => Ok(None),
        }
    }
    pub async fn binding_delete(&self, secret_hash: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM identity_bindings WHERE secret_hash = $1")
                .bind(secret_hash)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }
    pub async fn bindings_purge(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM identity_bindings WHERE expires_at < $1")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
