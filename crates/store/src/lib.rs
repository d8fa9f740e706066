//! Cloister's persistence. One [`Store`] over sqlx's `Any` driver runs the same SQL on the
//! embedded SQLite file (default) and on PostgreSQL (`--store postgres://…`). All SQL in
//! Cloister lives in this crate; callers get plain row structs.
//!
//! The schema uses only TEXT and BIGINT so that one migration set serves both engines.
//!
//! ```no_run
//! # async fn f() -> Result<(), cloister_store::StoreError> {
//! let store = cloister_store::Store::open("sqlite:///tmp/state.db?mode=rwc").await?;
//! store.meta_set("hello", "world").await?;
//! assert_eq!(store.meta_get("hello").await?.as_deref(), Some("world"));
//! # Ok(()) }
//! ```

mod credentials;
mod credman;
mod directory;
mod leases;
mod operations;
mod rbac;
mod resources;
mod tokens;

pub use credentials::*;
pub use credman::*;
pub use directory::*;
pub use leases::*;
pub use operations::*;
pub use rbac::*;
pub use resources::*;
pub use tokens::*;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid store URL: {0}")]
    BadUrl(String),
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn map_unique(e: sqlx::Error, what: &str) -> StoreError {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(what.to_string());
        }
        StoreError::Backend(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The handle to Cloister's state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// Connections for state that a crash may lose and that is rebuilt anyway (session
    /// leases and node heartbeats): on SQLite they commit without waiting for fsync
    /// (`synchronous=NORMAL`, still crash-safe for the process, only a power loss may drop
    /// the last commits); on PostgreSQL the same pool as `pool`.
    pub(crate) volatile: AnyPool,
    /// SQLite: one connection used on the caller's own thread for the one statement on a
    /// session's hot path (see `leases::InlineLeases`); `None` on PostgreSQL or in memory.
    pub(crate) inline: Option<std::sync::Arc<crate::leases::InlineLeases>>,
    backend: Backend,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) the store at `url` and applies migrations.
    /// `sqlite://PATH?mode=rwc` or `postgres://user:pass@host:port/db`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(format!(
                "'{}' is neither sqlite: nor postgres://",
                redact_url(url)
            )));
        };
        if backend == Backend::Sqlite
            && let Some(path) = sqlite_path(url)
        {
            private_db_files(&path, url.contains("mode=rwc"))?;
        }
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        opts = match backend {
            // A file's connections do not go stale: no ping before each use (a round trip to
            // the connection's thread every time).
            Backend::Sqlite => opts
                .max_connections(8)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL with synchronous=FULL: every acknowledged commit is on disk before
                        // the caller hears about it, so kill -9 loses nothing acknowledged.
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=10000").await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => opts.max_connections(16),
        };
        let pool = opts.connect(url).await?;
        MIGRATOR.run(&pool).await?;
        let volatile = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(30))
                    .max_connections(4)
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode=WAL").await?;
                            conn.execute("PRAGMA synchronous=NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout=10000").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Backend::Postgres => pool.clone(),
        };
        let inline = match (backend, sqlite_path(url)) {
            (Backend::Sqlite, Some(path)) => {
                crate::leases::InlineLeases::open(&path).map(std::sync::Arc::new)
            }
            _ => None,
        };
        Ok(Store {
            pool,
            volatile,
            inline,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round-trips a trivial query; used by `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn meta_get(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    pub async fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts `key` only if absent; returns true when this call inserted it. Used to make
    /// first-start bootstrap safe when several nodes start at once.
    pub async fn meta_insert_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Increments a counter in `meta` and returns the new value. The RBAC engine uses one
    /// to learn that another node changed assignments.
    ///
    /// One statement (an upsert that returns the new value), so there is no read-then-write
    /// window: concurrent bumps never lose an increment (PostgreSQL) and never ask SQLite to
    /// upgrade a read transaction, which it refuses with "database is locked" whatever the
    /// busy timeout. Retried while SQLite reports busy.
    pub async fn bump_counter(&self, key: &str) -> Result<i64> {
        let mut attempt = 0;
        loop {
            let r = sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, '1') ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) RETURNING value",
            )
            .bind(key)
            .fetch_one(&self.pool)
            .await;
            match r {
                Ok(row) => {
                    let v: String = row.get(0);
                    return v
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("counter {key}: '{v}'")));
                }
                Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(busy_backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then writes cannot upgrade
    /// once another connection has committed, and SQLite answers "database is locked" at
    /// once, without waiting out `busy_timeout`. With the lock taken first, waiting for it
    /// honours the busy timeout, and the begin is retried a few times more if it still
    /// reports busy. On PostgreSQL it is a plain `BEGIN`, then `SHARE ROW EXCLUSIVE` locks on
    /// `pg_lock_tables` (this mode conflicts with itself and with every write to the table,
    /// so check-then-write sequences on those tables are serialized, as on SQLite).
    pub(crate) async fn write_tx_locking(
        &self,
        pg_lock_tables: &[&str],
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.write_tx_on(&self.pool, pg_lock_tables).await
    }

    /// [`Store::write_tx_locking`] on the given pool (`pool` or `volatile`).
    pub(crate) async fn write_tx_on(
        &self,
        pool: &AnyPool,
        pg_lock_tables: &[&str],
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => {
                let mut attempt = 0;
                loop {
                    match pool.begin_with("BEGIN IMMEDIATE").await {
                        Ok(tx) => return Ok(tx),
                        Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                            attempt += 1;
                            tokio::time::sleep(busy_backoff(attempt)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Backend::Postgres => {
                let mut tx = pool.begin().await?;
                for t in pg_lock_tables {
                    debug_assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE"
                    )))
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(tx)
            }
        }
    }

    /// [`Store::write_tx_locking`] without table locks: every transaction in the store that
    /// writes begins here.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.write_tx_locking(&[]).await
    }
}

/// How many more times a write is tried when SQLite still reports busy after its busy
/// timeout.
const BUSY_RETRIES: u32 = 5;

fn busy_backoff(attempt: u32) -> Duration {
    Duration::from_millis(20 * u64::from(attempt))
}

/// SQLite's SQLITE_BUSY (5) or SQLITE_LOCKED (6) and their extended codes.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let code_busy = db
        .code()
        .and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6));
    code_busy || db.message().contains("database is locked")
}

/// The file of a `sqlite:` URL (`sqlite://PATH?…`, `sqlite:PATH`), or None for an in-memory
/// database.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// The database holds sealed secrets, hashes of every credential and the audit of who may do
/// what: it and its `-wal`/`-shm` files are the owner's only (0600), whatever the umask.
/// SQLite creates `-wal` and `-shm` with the mode of the database file, so creating that
/// file 0600 before SQLite does (and tightening files an older version left 0644) covers all
/// three.
fn private_db_files(db: &std::path::Path, create: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| {
        StoreError::BadUrl(format!("preparing the database file {}: {e}", db.display()))
    };
    if create && !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(io)?;
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if let Ok(m) = std::fs::symlink_metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    Ok(())
}

/// Hides the password in a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
    {
        let user = creds.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

pub(crate) fn s(row: &AnyRow, col: &str) -> Result<String> {
    row.try_get::<String, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}
pub(crate) fn os(row: &AnyRow, col: &str) -> Result<Option<String>> {
    row.try_get::<Option<String>, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}
pub(crate) fn i(row: &AnyRow, col: &str) -> Result<i64> {
    row.try_get::<i64, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}
pub(crate) fn oi(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    row.try_get::<Option<i64>, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}
pub(crate) fn json_vec(row: &AnyRow, col: &str) -> Result<Vec<String>> {
    serde_json::from_str(&s(row, col)?).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A number no other call in this process returns.
    pub fn unique() -> u64 {
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// A store on a fresh SQLite file, and one on a fresh PostgreSQL database when
    /// CLOISTER_TEST_PG is set: each test runs on every store it gets.
    pub async fn stores(tag: &str) -> Vec<crate::Store> {
        let dir = std::env::temp_dir().join(format!(
            "cloister-store-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = vec![
            crate::Store::open(&format!("sqlite://{}/s.db?mode=rwc", dir.display()))
                .await
                .unwrap(),
        ];
        if let Ok(base) = std::env::var("CLOISTER_TEST_PG")
            && !base.is_empty()
        {
            out.push(fresh_pg(&base).await);
        }
        out
    }

    /// A store on a fresh database of the PostgreSQL server at `base`.
    pub async fn fresh_pg(base: &str) -> crate::Store {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let name = format!(
            "s_{}_{}_{}",
            std::process::id(),
            unique(),
            cloister_core::clock::now_millis()
        );
        let mut c = sqlx::AnyConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("connect to CLOISTER_TEST_PG");
        sqlx::Executor::execute(
            &mut c,
            sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
        )
        .await
        .expect("create database");
        crate::Store::open(&format!("{base}/{name}")).await.unwrap()
    }
}
