//! Sessions across nodes: every node serving session pools registers in the store and
//! heartbeats; the owner of each identifier's session is a lease row (see
//! `cloister_store::leases`), taken when the session is allocated and given up when it ends.
//! A lease is live only while its node heartbeats, so a dead node's sessions and its share of
//! `maxConcurrentSessions` are freed within the lease time to live.
//!
//! Invariants:
//! - a node serves a session only while it holds the lease: when its heartbeat has not
//!   reached the store for most of the time to live, it stops its sessions itself (fencing),
//!   before other nodes may take them over;
//! - `maxConcurrentSessions` is counted in the store's transaction, across all nodes;
//! - a request is forwarded at most once (requests arriving on the internal channel are
//!   served where they land).

use cloister_store::{Acquire, Lease, NodeRecord, Store};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// This node's place in the cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique among the nodes on one store (default: a random id per process).
    pub id: String,
    /// Where other nodes reach this node's internal channel (`https://host:port`).
    pub address: String,
    /// A node whose heartbeat is older than this is dead: its leases lapse.
    pub lease_ttl: Duration,
    /// Sandboxes this node runs at most (for placement).
    pub max_sandboxes: u32,
}

/// Where a request for an identifier goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the session, or should allocate it.
    Here,
    /// Another node owns it (or was chosen to allocate it): its internal address.
    Node { id: String, address: String },
}

pub struct Cluster {
    store: Store,
    cfg: NodeConfig,
    started_at: i64,
    draining: AtomicBool,
    /// When the last heartbeat reached the store (ms), or 0 before the first.
    last_ok_ms: AtomicI64,
    nodes: Mutex<(Option<Instant>, Vec<NodeRecord>)>,
    /// Owners elsewhere found recently, by (pool, identifier): a forwarded session's next
    /// requests skip the store. Entries live [`ROUTE_CACHE`]; a failed forward drops one.
    routes: Mutex<std::collections::HashMap<RouteKey, (Instant, String, String)>>,
}

use cloister_core::clock::now_millis as now_ms;

/// (pool id lowercased, identifier).
type RouteKey = (String, String);

/// How long the alive-node list is reused for placement.
const NODES_CACHE: Duration = Duration::from_millis(500);
/// How long a known owner elsewhere is reused without asking the store. A stale entry is
/// harmless: the old owner, if it no longer has the session, allocates it afresh under a
/// new lease (the store still decides), and a dead one fails the forward, which drops it.
const ROUTE_CACHE: Duration = Duration::from_secs(2);
const ROUTE_CACHE_MAX: usize = 10_000;

impl Cluster {
    pub fn new(store: Store, cfg: NodeConfig) -> Cluster {
        Cluster {
            store,
            cfg,
            started_at: now_ms(),
            draining: AtomicBool::new(false),
            last_ok_ms: AtomicI64::new(0),
            nodes: Mutex::new((None, vec![])),
            routes: Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.id
    }

    pub fn ttl(&self) -> Duration {
        self.cfg.lease_ttl
    }

    pub fn max_sandboxes(&self) -> u32 {
        self.cfg.max_sandboxes
    }

    /// A draining node takes no new sessions and keeps no ready ones.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Renews this node's row (and so all its leases). `free_slots` and `free_memory` feed
    /// placement on every node.
    pub async fn heartbeat(&self, free_slots: i64, free_memory: i64) -> Result<(), String> {
        let now = now_ms();
        let rec = NodeRecord {
            id: self.cfg.id.clone(),
            address: self.cfg.address.clone(),
            started_at: self.started_at,
            heartbeat_at: now,
            expires_at: now + self.cfg.lease_ttl.as_millis() as i64,
            draining: self.is_draining(),
            free_slots: if self.is_draining() { 0 } else { free_slots },
            free_memory,
        };
        self.store
            .node_heartbeat(&rec)
            .await
            .map_err(|e| e.to_string())?;
        self.last_ok_ms.store(now, Ordering::Release);
        Ok(())
    }

    /// Whether this node may still serve its sessions: its last heartbeat reached the store
    /// less than 80% of the time to live ago. Past that, other nodes will soon consider its
    /// leases lapsed, so it must stop its sessions first.
    pub fn fenced(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        last == 0 || now_ms() - last > (self.cfg.lease_ttl.as_millis() as i64) * 8 / 10
    }

    /// Takes the lease of a new session (`etag` names it) for this node.
    pub async fn acquire(
        &self,
        pool_id: &str,
        identifier: &str,
        etag: &str,
        max: u32,
    ) -> Result<Acquire, String> {
        if self.fenced() {
            return Err("this node has lost contact with the store".into());
        }
        self.store
            .lease_acquire(
                pool_id,
                identifier,
                &self.cfg.id,
                etag,
                u64::from(max),
                now_ms(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Gives up a lease (in the background, retried: a lease that cannot be released still
    /// lapses with the node, and a node that restarts drops its old leases).
    pub fn release(&self, pool_id: &str, identifier: &str, etag: &str) {
        let (store, node) = (self.store.clone(), self.cfg.id.clone());
        let (p, i, s) = (
            pool_id.to_string(),
            identifier.to_string(),
            etag.to_string(),
        );
        tokio::spawn(async move {
            for attempt in 0..5u64 {
                match store.lease_release(&p, &i, &node, &s).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(pool = %p, "releasing a session lease: {e}");
                        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    }
                }
            }
        });
    }

    /// Gives up a lease now (a stale lease of this node found while allocating).
    pub async fn release_now(
        &self,
        pool_id: &str,
        identifier: &str,
        etag: &str,
    ) -> Result<(), String> {
        self.store
            .lease_release(pool_id, identifier, &self.cfg.id, etag)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The live nodes, most free capacity first (cached briefly).
    pub async fn alive_nodes(&self) -> Vec<NodeRecord> {
        {
            let c = self.nodes.lock().unwrap();
            if c.0.is_some_and(|t| t.elapsed() < NODES_CACHE) {
                return c.1.clone();
            }
        }
        match self.store.nodes_alive(now_ms()).await {
            Ok(v) => {
                *self.nodes.lock().unwrap() = (Some(Instant::now()), v.clone());
                v
            }
            Err(e) => {
                tracing::warn!("listing the nodes: {e}");
                vec![]
            }
        }
    }

    /// Where a request for an identifier that this node has no session for goes: to the
    /// live owner of its lease, else (a new session) to the node with the most free
    /// capacity, this node when it is among the best or when the store cannot say.
    pub async fn route(&self, pool_id: &str, identifier: &str) -> Route {
        let key = (pool_id.to_lowercase(), identifier.to_string());
        if let Some((at, id, address)) = self.routes.lock().unwrap().get(&key)
            && at.elapsed() < ROUTE_CACHE
        {
            return Route::Node {
                id: id.clone(),
                address: address.clone(),
            };
        }
        // Alone in the cluster (as far as the last half second shows): every lease is ours,
        // so there is nothing to look up. A node that joined since is found by the lease
        // (a 503 the client retries) and by the next listing.
        let nodes = self.alive_nodes().await;
        if nodes.iter().all(|n| n.id == self.cfg.id) {
            return Route::Here;
        }
        let now = now_ms();
        match self.store.lease_owner(pool_id, identifier, now).await {
            Ok(Some(n)) if n.id == self.cfg.id => return Route::Here,
            Ok(Some(n)) => {
                let mut routes = self.routes.lock().unwrap();
                if routes.len() >= ROUTE_CACHE_MAX {
                    routes.clear();
                }
                routes.insert(key, (Instant::now(), n.id.clone(), n.address.clone()));
                return Route::Node {
                    id: n.id,
                    address: n.address,
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(pool = %pool_id, "looking up a session's owner: {e}");
                return Route::Here;
            }
        }
        let mine = nodes.iter().find(|n| n.id == self.cfg.id);
        let best = nodes.iter().filter(|n| !n.draining).max_by(|a, b| {
            (a.free_slots, a.free_memory)
                .cmp(&(b.free_slots, b.free_memory))
                // Equal capacity: prefer the smaller id, so every node picks the same.
                .then_with(|| b.id.cmp(&a.id))
        });
        match (best, mine) {
            (Some(b), Some(m)) if b.id != m.id && (m.draining || b.free_slots > m.free_slots) => {
                Route::Node {
                    id: b.id.clone(),
                    address: b.address.clone(),
                }
            }
            (Some(b), None) if b.id != self.cfg.id => Route::Node {
                id: b.id.clone(),
                address: b.address.clone(),
            },
            _ => Route::Here,
        }
    }

    /// Forgets a cached owner (a forward to it failed, or this node now holds the session).
    pub fn forget_route(&self, pool_id: &str, identifier: &str) {
        self.routes
            .lock()
            .unwrap()
            .remove(&(pool_id.to_lowercase(), identifier.to_string()));
    }

    /// Every live lease of a pool (all nodes).
    pub async fn leases(&self, pool_id: &str) -> Vec<Lease> {
        self.store
            .leases_of_pool(pool_id, now_ms())
            .await
            .unwrap_or_default()
    }

    /// This node's share of a pool's `readySessionInstances`: the target divided over the
    /// live nodes that are not draining, the remainder to the first ones by id.
    pub async fn ready_share(&self, ready: u32) -> u32 {
        if self.is_draining() {
            return 0;
        }
        let mut ids: Vec<String> = self
            .alive_nodes()
            .await
            .into_iter()
            .filter(|n| !n.draining)
            .map(|n| n.id)
            .collect();
        if !ids.contains(&self.cfg.id) {
            ids.push(self.cfg.id.clone());
        }
        ids.sort();
        let n = ids.len() as u32;
        let pos = ids.iter().position(|i| *i == self.cfg.id).unwrap_or(0) as u32;
        ready / n + u32::from(pos < ready % n)
    }

    /// Removes this node and its leases (a clean stop, after its sessions are gone).
    pub async fn leave(&self) {
        if let Err(e) = self.store.node_remove(&self.cfg.id).await {
            tracing::warn!("leaving the cluster: {e}");
        }
    }
}

/// Free memory of this host (MemAvailable, bytes).
pub fn available_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
