//! Session pools: a ready pool of started sandboxes kept at `readySessionInstances`, the
//! `identifier → session` table, `maxConcurrentSessions` enforced under one lock, and the
//! cooldown / max-alive reaper.
//!
//! Invariants:
//! - a session is created and counted against `maxConcurrentSessions` under the pool lock, so
//!   any burst allocates at most `max` sessions;
//! - a session's sandbox slot is locked from the moment the session is inserted until its
//!   sandbox has answered, so concurrent first requests for one identifier all wait for, and
//!   then reach, the same sandbox;
//! - a session leaves the table before its sandbox is shut down, so no request can reach a
//!   sandbox that is being destroyed (it sees an empty slot and allocates afresh).

use crate::cluster::Cluster;
use crate::runtime::{ExecOutcome, Instance, Runtime, SessionSpec, StartError};
use crate::spec::{Lifecycle, PoolSpec};
use cloister_store::Acquire;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub type Slot = Arc<AsyncMutex<Option<Box<dyn Instance>>>>;

/// One execution, kept so `GET executions/{id}` can answer (asynchronous runs especially).
#[derive(Debug, Clone)]
pub struct Execution {
    pub id: String,
    pub asynchronous: bool,
    /// None while running.
    pub outcome: Option<ExecOutcome>,
}

pub struct Session {
    pub identifier: String,
    pub etag: String,
    pub created_ms: i64,
    last_access_ms: AtomicI64,
    pub slot: Slot,
    executions: Mutex<VecDeque<Execution>>,
}

const KEPT_EXECUTIONS: usize = 200;

impl Session {
    fn new(identifier: &str) -> Session {
        let now = now_ms();
        Session {
            identifier: identifier.to_string(),
            etag: uuid::Uuid::new_v4().to_string(),
            created_ms: now,
            last_access_ms: AtomicI64::new(now),
            slot: Arc::new(AsyncMutex::new(None)),
            executions: Mutex::new(VecDeque::new()),
        }
    }

    pub fn touch(&self) {
        self.last_access_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_access_ms(&self) -> i64 {
        self.last_access_ms.load(Ordering::Relaxed)
    }

    pub fn record(&self, e: Execution) {
        let mut q = self.executions.lock().unwrap();
        if let Some(x) = q.iter_mut().find(|x| x.id == e.id) {
            *x = e;
            return;
        }
        if q.len() >= KEPT_EXECUTIONS {
            q.pop_front();
        }
        q.push_back(e);
    }

    pub fn execution(&self, id: &str) -> Option<Execution> {
        self.executions
            .lock()
            .unwrap()
            .iter()
            .find(|x| x.id.eq_ignore_ascii_case(id))
            .cloned()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error(
        "The session pool has reached its maximum of {0} concurrent sessions; try again when a session ends (cooldown) or delete one."
    )]
    MaxSessions(u32),
    #[error("A session could not be started: {0}")]
    Start(String),
    #[error("The session pool is being deleted.")]
    Closed,
    /// Another node allocated this identifier's session at the same moment (or this node
    /// cannot reach the store): a retry reaches the owner.
    #[error("The session is being allocated elsewhere; retry the request. {0}")]
    Contended(String),
}

struct Inner {
    ready: VecDeque<Box<dyn Instance>>,
    starting: u32,
    sessions: HashMap<String, Arc<Session>>,
}

pub struct Pool {
    pub id: String,
    spec: RwLock<PoolSpec>,
    session_spec: RwLock<SessionSpec>,
    inner: Mutex<Inner>,
    refill: Notify,
    closed: AtomicBool,
    runtime: Arc<dyn Runtime>,
    pub created_ms: i64,
    updated_ms: AtomicI64,
    /// Server-side allocation latency samples (microseconds), for the benchmark endpoint.
    alloc_us: Mutex<VecDeque<u64>>,
    started_total: AtomicU64,
    pub refill_parallelism: u32,
    /// Sandbox starts in flight across all pools: a burst of cold starts queues here instead
    /// of starving every interpreter of CPU at once.
    starts: Arc<tokio::sync::Semaphore>,
    /// Leases in the store when several nodes serve the pool (always set by the server).
    cluster: Option<Arc<Cluster>>,
    /// This node's share of `readySessionInstances` (the whole target without a cluster).
    ready_share: AtomicU64,
}

impl Pool {
    pub fn spec(&self) -> PoolSpec {
        self.spec.read().unwrap().clone()
    }

    pub fn updated_ms(&self) -> i64 {
        self.updated_ms.load(Ordering::Relaxed)
    }

    pub fn ready_count(&self) -> usize {
        self.inner.lock().unwrap().ready.len()
    }

    /// Ready sandboxes being started.
    pub fn pending_count(&self) -> usize {
        self.inner.lock().unwrap().starting as usize
    }

    pub fn session_count(&self) -> usize {
        self.inner.lock().unwrap().sessions.len()
    }

    pub fn started_total(&self) -> u64 {
        self.started_total.load(Ordering::Relaxed)
    }

    /// The allocation latencies recorded so far (microseconds), oldest first.
    pub fn allocation_samples(&self) -> Vec<u64> {
        self.alloc_us.lock().unwrap().iter().copied().collect()
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .unwrap()
            .sessions
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.created_ms);
        v
    }

    pub fn get(&self, identifier: &str) -> Option<Arc<Session>> {
        self.inner.lock().unwrap().sessions.get(identifier).cloned()
    }

    /// The session for `identifier`, allocating one (from the ready pool, or started on
    /// demand if the pool is empty) if there is none. Returns the session with its sandbox
    /// slot locked.
    pub async fn session(
        self: &Arc<Self>,
        identifier: &str,
    ) -> Result<(Arc<Session>, OwnedMutexGuard<Option<Box<dyn Instance>>>), PoolError> {
        for _ in 0..5 {
            if self.closed.load(Ordering::Acquire) {
                return Err(PoolError::Closed);
            }
            let t0 = Instant::now();
            enum Found {
                Existing(Arc<Session>),
                New(
                    Arc<Session>,
                    OwnedMutexGuard<Option<Box<dyn Instance>>>,
                    Option<Box<dyn Instance>>,
                ),
                Full(u32),
            }
            let mut dead_ready = vec![];
            let found = {
                let mut inner = self.inner.lock().unwrap();
                if let Some(s) = inner.sessions.get(identifier) {
                    Found::Existing(s.clone())
                } else {
                    let max = self.spec.read().unwrap().max_concurrent;
                    if inner.sessions.len() >= max as usize {
                        Found::Full(max)
                    } else {
                        let s = Arc::new(Session::new(identifier));
                        let g = s
                            .slot
                            .clone()
                            .try_lock_owned()
                            .expect("a new session's slot is free");
                        inner.sessions.insert(identifier.to_string(), s.clone());
                        // A ready sandbox whose processes are gone (its zygote was killed,
                        // say) is never handed out: the next live one is.
                        let mut r = None;
                        while let Some(i) = inner.ready.pop_front() {
                            if i.is_alive() {
                                r = Some(i);
                                break;
                            }
                            dead_ready.push(i);
                        }
                        Found::New(s, g, r)
                    }
                }
            };
            for i in dead_ready {
                tokio::spawn(i.shutdown());
            }
            let (sess, mut guard, from_ready) = match found {
                Found::Existing(s) => {
                    s.touch();
                    let g = s.slot.clone().lock_owned().await;
                    let alive = g.as_ref().map(|i| i.is_alive());
                    match alive {
                        Some(true) => return Ok((s, g)),
                        Some(false) => {
                            // Its sandbox died between requests (killed from outside, its
                            // zygote gone): the session goes, and the identifier gets a fresh
                            // one below, as after a cooldown.
                            tracing::info!(pool = %self.id, "replacing a session whose sandbox stopped");
                            metrics::counter!("cloister_sessions_lost_total").increment(1);
                            self.delete_session(&s, Some(g)).await;
                        }
                        // Its sandbox failed to start or it was just removed: try again.
                        None => {}
                    }
                    continue;
                }
                Found::Full(max) => {
                    metrics::counter!("cloister_sessions_rejected_total").increment(1);
                    return Err(PoolError::MaxSessions(max));
                }
                Found::New(s, g, r) => (s, g, r),
            };
            if let Some(c) = &self.cluster {
                let max = self.spec.read().unwrap().max_concurrent;
                let refused = match c.acquire(&self.id, identifier, &sess.etag, max).await {
                    Ok(Acquire::Acquired) => None,
                    Ok(Acquire::Owned(l)) if l.node_id == c.node_id() => {
                        // A lease of ours with no session here: left by a release that did not
                        // reach the store. It is stale; drop it and allocate again.
                        let _ = c.release_now(&self.id, identifier, &l.sandbox_id).await;
                        Some(None)
                    }
                    Ok(Acquire::Owned(l)) => Some(Some(PoolError::Contended(format!(
                        "(owner: node {})",
                        l.node_id
                    )))),
                    Ok(Acquire::Full) => {
                        metrics::counter!("cloister_sessions_rejected_total").increment(1);
                        Some(Some(PoolError::MaxSessions(max)))
                    }
                    Err(e) => Some(Some(PoolError::Contended(e))),
                };
                if let Some(err) = refused {
                    self.forget(&sess);
                    if let Some(i) = from_ready {
                        self.inner.lock().unwrap().ready.push_front(i);
                    }
                    drop(guard);
                    match err {
                        Some(e) => return Err(e),
                        None => continue,
                    }
                }
            }
            self.refill.notify_one();
            let inst = match from_ready {
                Some(i) if i.is_alive() => {
                    let us = t0.elapsed().as_micros() as u64;
                    let mut a = self.alloc_us.lock().unwrap();
                    if a.len() >= 100_000 {
                        a.pop_front();
                    }
                    a.push_back(us);
                    metrics::histogram!("cloister_session_allocation_seconds")
                        .record(us as f64 / 1e6);
                    Ok(i)
                }
                other => {
                    if let Some(dead) = other {
                        tokio::spawn(dead.shutdown());
                    }
                    metrics::counter!("cloister_sessions_cold_started_total").increment(1);
                    let spec = self.session_spec.read().unwrap().clone();
                    let _permit = self.starts.acquire().await;
                    let r = self.runtime.start(&spec).await;
                    if r.is_ok() {
                        self.started_total.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                }
            };
            match inst {
                Ok(i) => {
                    *guard = Some(i);
                    sess.touch();
                    tracing::debug!(pool = %self.id, "session allocated");
                    return Ok((sess, guard));
                }
                Err(StartError(e)) => {
                    if self.forget(&sess) {
                        self.release_lease(&sess);
                    }
                    drop(guard);
                    return Err(PoolError::Start(e));
                }
            }
        }
        Err(PoolError::Start(
            "the session was removed repeatedly while being reached".into(),
        ))
    }

    /// Gives up the store lease of a session that has left the table.
    fn release_lease(&self, sess: &Session) {
        if let Some(c) = &self.cluster {
            c.release(&self.id, &sess.identifier, &sess.etag);
        }
    }

    /// Removes a session from the table (if it is still the one there). Its lease is the
    /// caller's to release.
    fn forget(&self, sess: &Arc<Session>) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.sessions.get(&sess.identifier) {
            Some(s) if Arc::ptr_eq(s, sess) => {
                inner.sessions.remove(&sess.identifier);
                true
            }
            _ => false,
        }
    }

    /// Deletes a session at once: it leaves the table, then its sandbox (processes, files,
    /// cgroup) is destroyed. With `guard` the caller already holds the slot.
    pub async fn delete_session(
        &self,
        sess: &Arc<Session>,
        guard: Option<OwnedMutexGuard<Option<Box<dyn Instance>>>>,
    ) {
        let mine = self.forget(sess);
        let mut g = match guard {
            Some(g) => g,
            None => sess.slot.clone().lock_owned().await,
        };
        if let Some(inst) = g.take() {
            inst.shutdown().await;
        }
        drop(g);
        // The lease goes after the sandbox (until then no other node may start this
        // identifier's session), and before this returns: a caller that freed a slot
        // (stopSession, DELETE) can use it at once. A release the store refuses is retried
        // in the background.
        if mine
            && let Some(c) = &self.cluster
            && let Err(e) = c.release_now(&self.id, &sess.identifier, &sess.etag).await
        {
            tracing::warn!(pool = %self.id, "releasing a session lease: {e}");
            c.release(&self.id, &sess.identifier, &sess.etag);
        }
        self.refill.notify_one();
    }

    /// Deletes the session of `identifier`; false if there was none.
    pub async fn delete_identifier(&self, identifier: &str) -> bool {
        match self.get(identifier) {
            Some(s) => {
                self.delete_session(&s, None).await;
                true
            }
            None => false,
        }
    }

    fn update(&self, spec: PoolSpec, session_spec: SessionSpec) {
        let retyped = self.spec.read().unwrap().container_type != spec.container_type;
        *self.spec.write().unwrap() = spec;
        if retyped {
            // A pool replaced (PUT) with another container type: its sessions run the old
            // interpreter, so they end; their identifiers get sessions of the new type.
            let gone: Vec<_> = self
                .inner
                .lock()
                .unwrap()
                .sessions
                .drain()
                .map(|(_, s)| s)
                .collect();
            for s in gone {
                let cluster = self.cluster.clone();
                let id = self.id.clone();
                tokio::spawn(async move {
                    if let Some(i) = s.slot.lock().await.take() {
                        i.shutdown().await;
                    }
                    if let Some(c) = cluster {
                        c.release(&id, &s.identifier, &s.etag);
                    }
                });
            }
        }
        if self.cluster.is_none() {
            self.ready_share.store(
                u64::from(self.spec.read().unwrap().ready),
                Ordering::Relaxed,
            );
        }
        let changed = *self.session_spec.read().unwrap() != session_spec;
        *self.session_spec.write().unwrap() = session_spec;
        if changed {
            // Ready sandboxes were made with the old network or identity settings.
            let stale: Vec<_> = self.inner.lock().unwrap().ready.drain(..).collect();
            for i in stale {
                tokio::spawn(i.shutdown());
            }
        }
        self.updated_ms.store(now_ms(), Ordering::Relaxed);
        self.refill.notify_one();
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.refill.notify_one();
        let (ready, sessions) = {
            let mut inner = self.inner.lock().unwrap();
            let r: Vec<_> = inner.ready.drain(..).collect();
            let s: Vec<_> = inner.sessions.drain().map(|(_, s)| s).collect();
            (r, s)
        };
        for i in ready {
            i.shutdown().await;
        }
        for s in sessions {
            if let Some(i) = s.slot.lock().await.take() {
                i.shutdown().await;
            }
            self.release_lease(&s);
        }
    }

    /// Keeps the ready pool at its target. Runs until the pool is closed.
    async fn refill_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            // Ready sandboxes that died while waiting are replaced now, not found at
            // allocation time.
            let dead = {
                let mut inner = self.inner.lock().unwrap();
                let (live, dead): (VecDeque<_>, VecDeque<_>) =
                    inner.ready.drain(..).partition(|i| i.is_alive());
                inner.ready = live;
                dead
            };
            for i in dead {
                tracing::info!(pool = %self.id, "a ready sandbox stopped; replacing it");
                i.shutdown().await;
            }
            let (target, have) = {
                let inner = self.inner.lock().unwrap();
                (
                    self.ready_share.load(Ordering::Relaxed) as usize,
                    inner.ready.len() + inner.starting as usize,
                )
            };
            // Trim a ready pool that is now larger than asked.
            if have > target {
                let extra: Vec<_> = {
                    let mut inner = self.inner.lock().unwrap();
                    let n = inner.ready.len().saturating_sub(target);
                    inner.ready.drain(..n).collect()
                };
                for i in extra {
                    i.shutdown().await;
                }
            }
            if have >= target {
                tokio::select! {
                    _ = self.refill.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let n = (target - have).min(self.refill_parallelism.max(1) as usize);
            self.inner.lock().unwrap().starting += n as u32;
            let spec = self.session_spec.read().unwrap().clone();
            let mut tasks = vec![];
            for _ in 0..n {
                let rt = self.runtime.clone();
                let spec = spec.clone();
                let starts = self.starts.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = starts.acquire_owned().await;
                    rt.start(&spec).await
                }));
            }
            let mut failed = false;
            for t in tasks {
                let r = t.await;
                let mut inner = self.inner.lock().unwrap();
                inner.starting -= 1;
                match r {
                    Ok(Ok(i)) => {
                        self.started_total.fetch_add(1, Ordering::Relaxed);
                        if self.closed.load(Ordering::Acquire) {
                            drop(inner);
                            tokio::spawn(i.shutdown());
                        } else {
                            inner.ready.push_back(i);
                        }
                    }
                    Ok(Err(e)) => {
                        failed = true;
                        tracing::warn!(pool = %self.id, "ready session failed to start: {e}");
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(pool = %self.id, "ready session task: {e}");
                    }
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
        // Anything started after close.
        let ready: Vec<_> = self.inner.lock().unwrap().ready.drain(..).collect();
        for i in ready {
            i.shutdown().await;
        }
    }

    /// Sessions idle past the cooldown, or alive past `maxAlivePeriodInSeconds`, are deleted.
    /// A session busy running code is left until it is idle again.
    async fn reap(&self) {
        let spec = self.spec();
        let now = now_ms();
        let idle_ms = spec.cooldown_secs as i64 * 1000;
        let mut expired = vec![];
        for s in self.sessions() {
            let idle = spec.lifecycle == Lifecycle::Timed && now - s.last_access_ms() >= idle_ms;
            let old = spec
                .max_alive_secs
                .is_some_and(|m| now - s.created_ms >= m as i64 * 1000);
            if idle || old {
                expired.push(s);
            } else {
                // Its container ended (OnContainerExit, a failed liveness probe): the session
                // ends now, freeing its slot.
                let ended = s.slot.try_lock().is_ok_and(|g| {
                    g.as_ref()
                        .is_some_and(|i| i.addr().is_some() && !i.is_alive())
                });
                if ended {
                    expired.push(s);
                }
            }
        }
        for s in expired {
            if let Ok(g) = s.slot.clone().try_lock_owned() {
                tracing::debug!(pool = %self.id, "session expired");
                metrics::counter!("cloister_sessions_expired_total").increment(1);
                self.delete_session(&s, Some(g)).await;
            }
        }
    }
}

/// Every pool of this server.
pub struct Manager {
    runtime: Arc<dyn Runtime>,
    pools: RwLock<HashMap<String, Arc<Pool>>>,
    pub refill_parallelism: u32,
    starts: Arc<tokio::sync::Semaphore>,
    cluster: std::sync::OnceLock<Arc<Cluster>>,
}

/// Sandbox starts allowed at once (per server).
pub const CONCURRENT_STARTS: usize = 4;

impl Manager {
    pub fn new(runtime: Arc<dyn Runtime>) -> Arc<Manager> {
        runtime.sweep();
        let m = Arc::new(Manager {
            runtime,
            pools: RwLock::new(HashMap::new()),
            refill_parallelism: 2,
            starts: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_STARTS)),
            cluster: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&m);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            loop {
                t.tick().await;
                let Some(m) = weak.upgrade() else { break };
                let pools: Vec<_> = m.pools.read().unwrap().values().cloned().collect();
                drop(m);
                for p in pools {
                    p.reap().await;
                }
            }
        });
        m
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The cluster this node serves pools in, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Joins the cluster: sessions are leased in the store from now on. Call before any
    /// pool is created. Returns once the first heartbeat is written, and keeps beating.
    pub async fn join(self: &Arc<Self>, cluster: Arc<Cluster>) -> Result<(), String> {
        debug_assert!(self.pools.read().unwrap().is_empty());
        if self.cluster.set(cluster.clone()).is_err() {
            return Err("already in a cluster".into());
        }
        self.beat(&cluster).await?;
        let weak = Arc::downgrade(self);
        let period = (cluster.ttl() / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(period);
            loop {
                t.tick().await;
                let Some(m) = weak.upgrade() else { break };
                let t0 = Instant::now();
                if let Err(e) = m.beat(&cluster).await {
                    tracing::warn!("session leases: heartbeat failed: {e}");
                }
                if t0.elapsed() > period {
                    tracing::warn!(
                        took_ms = t0.elapsed().as_millis() as u64,
                        "session leases: slow heartbeat"
                    );
                }
                if cluster.fenced() {
                    m.fence().await;
                }
            }
        });
        Ok(())
    }

    /// One heartbeat, then every pool's share of its ready target.
    async fn beat(&self, c: &Cluster) -> Result<(), String> {
        let pools: Vec<_> = self.pools.read().unwrap().values().cloned().collect();
        let used: usize = pools
            .iter()
            .map(|p| p.session_count() + p.ready_count())
            .sum();
        let free = i64::from(c.max_sandboxes()) - used as i64;
        c.heartbeat(free.max(0), crate::cluster::available_memory())
            .await?;
        for p in pools {
            let ready = p.spec.read().unwrap().ready;
            let share = u64::from(c.ready_share(ready).await);
            if p.ready_share.swap(share, Ordering::Relaxed) != share {
                p.refill.notify_one();
            }
        }
        Ok(())
    }

    /// This node lost the store for most of a lease's life: other nodes will take its
    /// sessions over, so it stops them first.
    async fn fence(&self) {
        let pools: Vec<_> = self.pools.read().unwrap().values().cloned().collect();
        for p in pools {
            let n = p.session_count();
            if n > 0 {
                tracing::error!(pool = %p.id, sessions = n, "lost contact with the store; stopping this node's sessions");
            }
            for s in p.sessions() {
                p.delete_session(&s, None).await;
            }
        }
    }

    /// Stops taking new sessions and ready instances (SIGTERM): other nodes take over.
    pub async fn drain(&self) {
        if let Some(c) = self.cluster.get() {
            c.set_draining();
            if let Err(e) = self.beat(c).await {
                tracing::warn!("session leases: {e}");
            }
        }
    }

    pub fn pool(&self, id: &str) -> Option<Arc<Pool>> {
        self.pools.read().unwrap().get(&id.to_lowercase()).cloned()
    }

    /// Creates or updates a pool.
    pub fn upsert(&self, id: &str, spec: PoolSpec, session_spec: SessionSpec) -> Arc<Pool> {
        let key = id.to_lowercase();
        if let Some(p) = self.pools.read().unwrap().get(&key) {
            p.update(spec, session_spec);
            return p.clone();
        }
        let mut pools = self.pools.write().unwrap();
        if let Some(p) = pools.get(&key) {
            p.update(spec, session_spec);
            return p.clone();
        }
        let now = now_ms();
        let p = Arc::new(Pool {
            id: id.to_string(),
            spec: RwLock::new(spec),
            session_spec: RwLock::new(session_spec),
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                starting: 0,
                sessions: HashMap::new(),
            }),
            refill: Notify::new(),
            closed: AtomicBool::new(false),
            runtime: self.runtime.clone(),
            created_ms: now,
            updated_ms: AtomicI64::new(now),
            alloc_us: Mutex::new(VecDeque::new()),
            started_total: AtomicU64::new(0),
            refill_parallelism: self.refill_parallelism,
            starts: self.starts.clone(),
            cluster: self.cluster.get().cloned(),
            ready_share: AtomicU64::new(0),
        });
        match &p.cluster {
            None => p
                .ready_share
                .store(u64::from(p.spec.read().unwrap().ready), Ordering::Relaxed),
            Some(c) => {
                let (p, c) = (p.clone(), c.clone());
                tokio::spawn(async move {
                    let ready = p.spec.read().unwrap().ready;
                    let share = c.ready_share(ready).await;
                    p.ready_share.store(u64::from(share), Ordering::Relaxed);
                    p.refill.notify_one();
                });
            }
        }
        pools.insert(key, p.clone());
        tokio::spawn(p.clone().refill_loop());
        p
    }

    /// Deletes a pool and every sandbox it had.
    pub async fn remove(&self, id: &str) {
        let p = self.pools.write().unwrap().remove(&id.to_lowercase());
        if let Some(p) = p {
            p.close().await;
        }
        if let Some(c) = self.runtime.custom() {
            c.forget(id);
        }
    }

    /// Removes every pool whose id starts with `prefix` (a deleted resource group).
    pub async fn remove_below(&self, prefix: &str) {
        let prefix = prefix.to_lowercase();
        let ids: Vec<String> = self
            .pools
            .read()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for id in ids {
            self.remove(&id).await;
        }
    }

    pub fn pool_ids(&self) -> Vec<String> {
        self.pools
            .read()
            .unwrap()
            .values()
            .map(|p| p.id.clone())
            .collect()
    }

    /// Stops every sandbox (server shutdown).
    pub async fn shutdown(&self) {
        let pools: Vec<_> = self
            .pools
            .write()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in pools {
            p.close().await;
        }
        if let Some(c) = self.cluster.get() {
            c.leave().await;
        }
        // The sandboxes are gone; so go their zygotes and cgroups.
        self.runtime.sweep();
    }
}
