//! Who owns which session, across the nodes that share one store.
//!
//! A node registers itself ([`Store::node_heartbeat`]) and keeps its row alive; a session's
//! owner is a lease row per (pool, identifier) naming the node. A lease counts only while
//! its node's row has not expired, so one heartbeat renews all of a node's leases, and when a
//! node dies its sessions and its share of `maxConcurrentSessions` are freed together, within
//! the heartbeat's time to live. [`Store::lease_acquire`] checks the identifier, the live
//! count and inserts in one transaction that excludes other acquirers (SQLite's write lock;
//! a table lock on PostgreSQL), so a burst spread over every node allocates at most the
//! maximum.
//!
//! Times are milliseconds since the epoch, passed in by the caller (one clock per decision).

use crate::{Result, Store, i, s};
use sqlx::any::AnyRow;

/// A node as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    /// Where other nodes reach its internal channel (`https://host:port`).
    pub address: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// The node is alive until then.
    pub expires_at: i64,
    /// A draining node takes no new sessions.
    pub draining: bool,
    /// Sandboxes it can still start, and memory it has free (bytes), for placement.
    pub free_slots: i64,
    pub free_memory: i64,
}

impl NodeRecord {
    pub fn alive(&self, now_ms: i64) -> bool {
        self.expires_at > now_ms
    }
}

/// A session's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub pool_id: String,
    pub identifier: String,
    pub node_id: String,
    /// The owner's id for the session (its etag): a release names it.
    pub sandbox_id: String,
    pub created_at: i64,
}

/// What [`Store::lease_acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The caller's node now owns the identifier's session (a new lease).
    Acquired,
    /// A live node already owns it (possibly the caller's own).
    Owned(Lease),
    /// The pool already has `max` live sessions.
    Full,
}

fn node(r: &AnyRow) -> Result<NodeRecord> {
    Ok(NodeRecord {
        id: s(r, "id")?,
        address: s(r, "address")?,
        started_at: i(r, "started_at")?,
        heartbeat_at: i(r, "heartbeat_at")?,
        expires_at: i(r, "expires_at")?,
        draining: i(r, "draining")? != 0,
        free_slots: i(r, "free_slots")?,
        free_memory: i(r, "free_memory")?,
    })
}

fn lease(r: &AnyRow, pool_id: &str) -> Result<Lease> {
    Ok(Lease {
        pool_id: pool_id.to_string(),
        identifier: s(r, "identifier")?,
        node_id: s(r, "node_id")?,
        sandbox_id: s(r, "sandbox_id")?,
        created_at: i(r, "created_at")?,
    })
}

impl Store {
    /// Registers `n` or renews it: address, capacity, draining and `expires_at` are replaced.
    /// A node whose row had already expired comes back with none of its old leases (they
    /// were for sandboxes of a process that is gone): they are deleted here.
    pub async fn node_heartbeat(&self, n: &NodeRecord) -> Result<()> {
        // The common case, a live node renewing itself: one row update, no table lock (so a
        // heartbeat never queues behind a burst of allocations).
        let renewed = sqlx::query(
            "UPDATE nodes SET address = $3, heartbeat_at = $4, expires_at = $5, draining = $6, free_slots = $7, free_memory = $8 \
             WHERE id = $1 AND started_at = $2 AND expires_at > $4",
        )
        .bind(&n.id)
        .bind(n.started_at)
        .bind(&n.address)
        .bind(n.heartbeat_at)
        .bind(n.expires_at)
        .bind(i64::from(n.draining))
        .bind(n.free_slots)
        .bind(n.free_memory)
        .execute(&self.volatile)
        .await?
        .rows_affected();
        if renewed > 0 {
            return Ok(());
        }
        let mut tx = self
            .write_tx_on(&self.volatile, &["nodes", "session_leases"])
            .await?;
        let prev = sqlx::query("SELECT expires_at, started_at FROM nodes WHERE id = $1")
            .bind(&n.id)
            .fetch_optional(&mut *tx)
            .await?;
        let restarted = match &prev {
            Some(r) => i(r, "expires_at")? <= n.heartbeat_at || i(r, "started_at")? != n.started_at,
            None => true,
        };
        if restarted {
            sqlx::query("DELETE FROM session_leases WHERE node_id = $1")
                .bind(&n.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(&n.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO nodes (id, address, started_at, heartbeat_at, expires_at, draining, free_slots, free_memory) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(&n.id)
        .bind(&n.address)
        .bind(n.started_at)
        .bind(n.heartbeat_at)
        .bind(n.expires_at)
        .bind(i64::from(n.draining))
        .bind(n.free_slots)
        .bind(n.free_memory)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a node and its leases at once (a clean stop).
    pub async fn node_remove(&self, id: &str) -> Result<()> {
        let mut tx = self.write_tx_on(&self.volatile, &[]).await?;
        for q in [
            "DELETE FROM session_leases WHERE node_id = $1",
            "DELETE FROM nodes WHERE id = $1",
        ] {
            sqlx::query(q).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn node_get(&self, id: &str) -> Result<Option<NodeRecord>> {
        let r = sqlx::query("SELECT * FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.volatile)
            .await?;
        r.as_ref().map(node).transpose()
    }

    /// The nodes alive at `now_ms`, most free slots first (then most free memory, then id).
    pub async fn nodes_alive(&self, now_ms: i64) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM nodes WHERE expires_at > $1 ORDER BY free_slots DESC, free_memory DESC, id",
        )
        .bind(now_ms)
        .fetch_all(&self.volatile)
        .await?;
        rows.iter().map(node).collect()
    }

    /// Takes the session of `identifier` in `pool_id` for `node_id`, unless a live node owns
    /// it already or the pool has `max` live sessions. A lease whose node is dead is replaced.
    pub async fn lease_acquire(
        &self,
        pool_id: &str,
        identifier: &str,
        node_id: &str,
        sandbox_id: &str,
        max: u64,
        now_ms: i64,
    ) -> Result<Acquire> {
        let pool = pool_id.to_lowercase();
        if let Some(inline) = &self.inline
            && inline.try_acquire(&pool, identifier, node_id, sandbox_id, max, now_ms)
        {
            return Ok(Acquire::Acquired);
        }
        let mut tx = self
            .write_tx_on(&self.volatile, &["session_leases"])
            .await?;
        let cur = sqlx::query(
            "SELECT l.identifier, l.node_id, l.sandbox_id, l.created_at, n.expires_at \
             FROM session_leases l LEFT JOIN nodes n ON n.id = l.node_id \
             WHERE l.pool_id_lc = $1 AND l.identifier = $2",
        )
        .bind(&pool)
        .bind(identifier)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = &cur {
            let expires: Option<i64> = sqlx::Row::try_get(r, "expires_at")?;
            if expires.is_some_and(|e| e > now_ms) {
                return Ok(Acquire::Owned(lease(r, pool_id)?));
            }
            sqlx::query("DELETE FROM session_leases WHERE pool_id_lc = $1 AND identifier = $2")
                .bind(&pool)
                .bind(identifier)
                .execute(&mut *tx)
                .await?;
        }
        let live = sqlx::query(
            "SELECT COUNT(*) AS n FROM session_leases l JOIN nodes n ON n.id = l.node_id \
             WHERE l.pool_id_lc = $1 AND n.expires_at > $2",
        )
        .bind(&pool)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        if u64::try_from(i(&live, "n")?).unwrap_or(0) >= max {
            return Ok(Acquire::Full);
        }
        sqlx::query(
            "INSERT INTO session_leases (pool_id_lc, identifier, node_id, sandbox_id, created_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&pool)
        .bind(identifier)
        .bind(node_id)
        .bind(sandbox_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Acquire::Acquired)
    }

    /// Gives up the lease the node holds for one sandbox (session deleted, cooled down, or its
    /// start failed). Naming the sandbox makes a late release harmless: it never removes a
    /// newer lease of the same identifier. Returns whether there was one.
    pub async fn lease_release(
        &self,
        pool_id: &str,
        identifier: &str,
        node_id: &str,
        sandbox_id: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx_on(&self.volatile, &[]).await?;
        let n = sqlx::query(
            "DELETE FROM session_leases WHERE pool_id_lc = $1 AND identifier = $2 AND node_id = $3 AND sandbox_id = $4",
        )
        .bind(pool_id.to_lowercase())
        .bind(identifier)
        .bind(node_id)
        .bind(sandbox_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The live owner of an identifier's session, if any.
    pub async fn lease_get(
        &self,
        pool_id: &str,
        identifier: &str,
        now_ms: i64,
    ) -> Result<Option<Lease>> {
        let r = sqlx::query(
            "SELECT l.identifier, l.node_id, l.sandbox_id, l.created_at FROM session_leases l \
             JOIN nodes n ON n.id = l.node_id \
             WHERE l.pool_id_lc = $1 AND l.identifier = $2 AND n.expires_at > $3",
        )
        .bind(pool_id.to_lowercase())
        .bind(identifier)
        .bind(now_ms)
        .fetch_optional(&self.volatile)
        .await?;
        r.as_ref().map(|r| lease(r, pool_id)).transpose()
    }

    /// The live node that owns an identifier's session, if any (one query).
    pub async fn lease_owner(
        &self,
        pool_id: &str,
        identifier: &str,
        now_ms: i64,
    ) -> Result<Option<NodeRecord>> {
        let r = sqlx::query(
            "SELECT n.* FROM session_leases l JOIN nodes n ON n.id = l.node_id \
             WHERE l.pool_id_lc = $1 AND l.identifier = $2 AND n.expires_at > $3",
        )
        .bind(pool_id.to_lowercase())
        .bind(identifier)
        .bind(now_ms)
        .fetch_optional(&self.volatile)
        .await?;
        r.as_ref().map(node).transpose()
    }

    /// Every live lease of a pool, by identifier.
    pub async fn leases_of_pool(&self, pool_id: &str, now_ms: i64) -> Result<Vec<Lease>> {
        let rows = sqlx::query(
            "SELECT l.identifier, l.node_id, l.sandbox_id, l.created_at FROM session_leases l \
             JOIN nodes n ON n.id = l.node_id \
             WHERE l.pool_id_lc = $1 AND n.expires_at > $2 ORDER BY l.identifier",
        )
        .bind(pool_id.to_lowercase())
        .bind(now_ms)
        .fetch_all(&self.volatile)
        .await?;
        rows.iter().map(|r| lease(r, pool_id)).collect()
    }

    /// Deletes the leases of nodes dead before `now_ms`, and node rows dead for longer than
    /// `keep_ms`. Returns the number of leases removed. Liveness never depends on this (a dead
    /// node's leases already do not count); it only keeps the tables small.
    pub async fn leases_sweep(&self, now_ms: i64, keep_ms: i64) -> Result<u64> {
        let mut tx = self
            .write_tx_on(&self.volatile, &["session_leases"])
            .await?;
        let n = sqlx::query(
            "DELETE FROM session_leases WHERE node_id NOT IN (SELECT id FROM nodes WHERE expires_at > $1)",
        )
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM nodes WHERE expires_at <= $1")
            .bind(now_ms - keep_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stores() -> Vec<Store> {
        crate::tests_support::stores("leases").await
    }

    fn n(id: &str, now: i64, ttl: i64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            address: format!("https://{id}.internal:9443"),
            started_at: 1,
            heartbeat_at: now,
            expires_at: now + ttl,
            draining: false,
            free_slots: 10,
            free_memory: 1 << 30,
        }
    }

    const POOL: &str = "/subscriptions/S/resourceGroups/g/providers/Microsoft.App/sessionPools/P";

    #[tokio::test]
    async fn one_owner_per_identifier_and_the_owner_is_reported() {
        for st in stores().await {
            st.node_heartbeat(&n("a", 1000, 10_000)).await.unwrap();
            st.node_heartbeat(&n("b", 1000, 10_000)).await.unwrap();
            assert_eq!(
                st.lease_acquire(POOL, "u1", "a", "sbx-1", 10, 1001)
                    .await
                    .unwrap(),
                Acquire::Acquired
            );
            // The pool id is matched without regard to case, as ARM ids are.
            match st
                .lease_acquire(&POOL.to_uppercase(), "u1", "b", "sbx-2", 10, 1002)
                .await
                .unwrap()
            {
                Acquire::Owned(l) => {
                    assert_eq!(l.node_id, "a");
                    assert_eq!(l.sandbox_id, "sbx-1");
                }
                other => panic!("{other:?}"),
            }
            // Identifiers are case-sensitive.
            assert_eq!(
                st.lease_acquire(POOL, "U1", "b", "sbx-3", 10, 1002)
                    .await
                    .unwrap(),
                Acquire::Acquired
            );
            // Only the holder's release of that very sandbox removes the lease.
            assert!(!st.lease_release(POOL, "u1", "b", "sbx-1").await.unwrap());
            assert!(!st.lease_release(POOL, "u1", "a", "sbx-old").await.unwrap());
            assert!(st.lease_release(POOL, "u1", "a", "sbx-1").await.unwrap());
            assert_eq!(st.lease_get(POOL, "u1", 1003).await.unwrap(), None);
            assert_eq!(st.leases_of_pool(POOL, 1003).await.unwrap().len(), 1);
        }
    }

    /// SQLite's inline path takes only the plain case and never waits: with the database's
    /// write lock held elsewhere it gives way, and the transaction then takes the lease once
    /// the lock is free; an existing or a dead node's lease and a full pool are left to the
    /// transaction, which still answers them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inline_path_takes_only_the_plain_case_and_never_waits() {
        let st = stores().await.remove(0);
        let inline = st
            .inline
            .clone()
            .expect("a SQLite file store has the inline connection");
        st.node_heartbeat(&n("a", 1000, 10_000)).await.unwrap();
        st.node_heartbeat(&n("dead", 1000, 1)).await.unwrap();
        let pool = POOL.to_lowercase();
        assert!(inline.try_acquire(&pool, "x", "a", "x1", 2, 1001));
        assert!(
            !inline.try_acquire(&pool, "x", "a", "x2", 2, 1001),
            "an existing lease"
        );
        // Through the store: the owner is reported, as before.
        assert!(matches!(
            st.lease_acquire(POOL, "x", "a", "x3", 2, 1002).await.unwrap(),
            Acquire::Owned(l) if l.sandbox_id == "x1"
        ));
        // A dead node's lease: not inline, but the transaction replaces it.
        st.lease_acquire(POOL, "y", "dead", "y0", 5, 1000)
            .await
            .unwrap();
        assert!(!inline.try_acquire(&pool, "y", "a", "y1", 5, 1003));
        assert_eq!(
            st.lease_acquire(POOL, "y", "a", "y1", 5, 1003)
                .await
                .unwrap(),
            Acquire::Acquired
        );
        // Full (x and y live on a): refused inline and by the transaction.
        assert!(!inline.try_acquire(&pool, "z", "a", "z1", 2, 1004));
        assert_eq!(
            st.lease_acquire(POOL, "z", "a", "z1", 2, 1004)
                .await
                .unwrap(),
            Acquire::Full
        );
        // Another writer holds the lock: the inline path gives way at once...
        let mut tx = st.write_tx_on(&st.volatile, &[]).await.unwrap();
        let t = std::time::Instant::now();
        assert!(!inline.try_acquire(&pool, "w", "a", "w1", 10, 1005));
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        // ... and the store's answer waits for the lock instead of failing.
        let st2 = st.clone();
        let waiting =
            tokio::spawn(async move { st2.lease_acquire(POOL, "w", "a", "w1", 10, 1005).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), Acquire::Acquired);
        assert_eq!(st.leases_of_pool(POOL, 1006).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_dead_nodes_leases_stop_counting_and_are_taken_over() {
        for st in stores().await {
            st.node_heartbeat(&n("a", 1000, 10_000)).await.unwrap();
            st.node_heartbeat(&n("b", 1000, 100_000)).await.unwrap();
            for id in ["x", "y"] {
                assert_eq!(
                    st.lease_acquire(POOL, id, "a", id, 2, 1001).await.unwrap(),
                    Acquire::Acquired
                );
            }
            assert_eq!(
                st.lease_acquire(POOL, "z", "b", "z1", 2, 1002)
                    .await
                    .unwrap(),
                Acquire::Full
            );
            // a stops heartbeating: at 11_000 its leases lapse.
            assert_eq!(
                st.lease_acquire(POOL, "z", "b", "z2", 2, 11_000)
                    .await
                    .unwrap(),
                Acquire::Acquired
            );
            assert_eq!(
                st.lease_acquire(POOL, "x", "b", "x2", 2, 11_001)
                    .await
                    .unwrap(),
                Acquire::Acquired
            );
            assert_eq!(
                st.lease_get(POOL, "x", 11_002)
                    .await
                    .unwrap()
                    .unwrap()
                    .node_id,
                "b"
            );
            // y's stale row is swept; a's node row is kept for keep_ms.
            assert_eq!(st.leases_sweep(11_003, 60_000).await.unwrap(), 1);
            assert!(st.node_get("a").await.unwrap().is_some());
            // b is still alive and keeps its two leases.
            assert_eq!(st.leases_of_pool(POOL, 11_004).await.unwrap().len(), 2);
            st.leases_sweep(200_000, 60_000).await.unwrap();
            assert!(st.node_get("a").await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_restarted_node_comes_back_without_its_old_leases() {
        for st in stores().await {
            st.node_heartbeat(&n("a", 1000, 10_000)).await.unwrap();
            st.lease_acquire(POOL, "x", "a", "x1", 5, 1001)
                .await
                .unwrap();
            // Renewed in time by the same process: leases kept.
            st.node_heartbeat(&n("a", 5000, 10_000)).await.unwrap();
            assert!(st.lease_get(POOL, "x", 5001).await.unwrap().is_some());
            // Same id, new process (another started_at): its old sandboxes are gone.
            let mut again = n("a", 6000, 10_000);
            again.started_at = 2;
            st.node_heartbeat(&again).await.unwrap();
            assert!(st.lease_get(POOL, "x", 6001).await.unwrap().is_none());
            let alive = st.nodes_alive(6001).await.unwrap();
            assert_eq!(alive.len(), 1);
            assert!(alive[0].alive(6001));
        }
    }

    /// Many acquirers on several nodes at once: exactly `max` leases are granted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_concurrent_burst_over_nodes_never_exceeds_the_maximum() {
        for st in stores().await {
            for id in ["a", "b", "c"] {
                st.node_heartbeat(&n(id, 1000, 1_000_000)).await.unwrap();
            }
            let mut tasks = Vec::new();
            for k in 0..60 {
                let st = st.clone();
                tasks.push(tokio::spawn(async move {
                    let node = ["a", "b", "c"][k % 3];
                    st.lease_acquire(POOL, &format!("id-{k}"), node, "s", 10, 2000)
                        .await
                        .unwrap()
                }));
            }
            let mut acquired = 0;
            for t in tasks {
                if t.await.unwrap() == Acquire::Acquired {
                    acquired += 1;
                }
            }
            assert_eq!(acquired, 10);
            assert_eq!(st.leases_of_pool(POOL, 2001).await.unwrap().len(), 10);
        }
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// Prints what one allocation's lease costs on a SQLite file (run with --ignored).
    #[tokio::test]
    #[ignore]
    async fn lease_acquire_and_release_cost() {
        let dir = std::env::temp_dir().join(format!("cloister-lease-cost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Store::open(&format!("sqlite://{}/s.db?mode=rwc", dir.display()))
            .await
            .unwrap();
        let now = 1_000;
        st.node_heartbeat(&NodeRecord {
            id: "a".into(),
            address: "https://a".into(),
            started_at: 1,
            heartbeat_at: now,
            expires_at: i64::MAX / 2,
            draining: false,
            free_slots: 1,
            free_memory: 1,
        })
        .await
        .unwrap();
        let (mut acq, mut rel) = (vec![], vec![]);
        for k in 0..300 {
            let id = format!("id-{k}");
            let t = std::time::Instant::now();
            st.lease_acquire("p", &id, "a", &id, 1000, now)
                .await
                .unwrap();
            acq.push(t.elapsed().as_micros());
            let t = std::time::Instant::now();
            st.lease_release("p", &id, "a", &id).await.unwrap();
            rel.push(t.elapsed().as_micros());
        }
        acq.sort();
        rel.sort();
        println!(
            "acquire p50 {} us p99 {} us; release p50 {} us p99 {} us",
            acq[150], acq[297], rel[150], rel[297]
        );
    }
}

/// The usual case of [`Store::lease_acquire`] on SQLite (no lease for the identifier yet, room
/// in the pool) as one statement on a connection of its own, run on the caller's thread.
///
/// Why: allocating a session from the ready pool was 0.01 ms before sessions were leased in
/// the store and 0.4 ms after, nearly all of it two thread hand-offs (to the pool's
/// connection thread and back), each a wake-up of an idle core on a quiet machine; the
/// statement itself takes tens of microseconds. It never waits: the connection has no busy
/// timeout and never checkpoints (`wal_autocheckpoint=0`; the pool's connections do), and
/// when its lock is taken, the database is busy, or the statement inserts nothing (a lease
/// exists, the pool is full, an error), the caller goes on to the transaction, which tells the
/// cases apart. A write statement takes SQLite's write lock before it reads, so the check and
/// the insert are one atomic step, exactly as in that transaction. Commits are
/// `synchronous=NORMAL`, as the lease pool's are: leases are rebuilt after a crash anyway.
pub(crate) struct InlineLeases {
    conn: std::sync::Mutex<rusqlite::Connection>,
}

impl InlineLeases {
    pub(crate) fn open(path: &std::path::Path) -> Option<InlineLeases> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.pragma_update(None, "journal_mode", "WAL").ok()?;
        conn.pragma_update(None, "synchronous", "NORMAL").ok()?;
        conn.pragma_update(None, "wal_autocheckpoint", 0).ok()?;
        conn.busy_timeout(std::time::Duration::ZERO).ok()?;
        Some(InlineLeases {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// Whether the lease was taken (false: the caller must take the slow path).
    fn try_acquire(
        &self,
        pool_lc: &str,
        identifier: &str,
        node_id: &str,
        sandbox_id: &str,
        max: u64,
        now_ms: i64,
    ) -> bool {
        let Ok(conn) = self.conn.try_lock() else {
            return false;
        };
        let n = conn
            .prepare_cached(
                "INSERT INTO session_leases (pool_id_lc, identifier, node_id, sandbox_id, created_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5 \
                 WHERE NOT EXISTS (SELECT 1 FROM session_leases WHERE pool_id_lc = ?1 AND identifier = ?2) \
                 AND (SELECT COUNT(*) FROM session_leases l JOIN nodes n ON n.id = l.node_id \
                      WHERE l.pool_id_lc = ?1 AND n.expires_at > ?5) < ?6",
            )
            .and_then(|mut st| {
                st.execute(rusqlite::params![
                    pool_lc,
                    identifier,
                    node_id,
                    sandbox_id,
                    now_ms,
                    i64::try_from(max).unwrap_or(i64::MAX)
                ])
            });
        matches!(n, Ok(1))
    }
}
