//! The bridge between the store and the access evaluator: builds evaluator snapshots from
//! the stored role definitions, assignments, deny assignments, group memberships and the
//! management-group hierarchy, reloads after every change on this node, and notices changes
//! made by other nodes through a counter in the store.

use arc_swap::ArcSwap;
use cloister_access::{
    Action, DenyAssignment, Engine, RoleAssignment, RoleDefinition, Snapshot, WriteRefusal,
};
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::{RoleAssignmentRow, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

pub const GENERATION_KEY: &str = "rbac_generation";

pub struct Rbac {
    store: Store,
    engine: Engine,
    seen_generation: AtomicI64,
    defs: ArcSwap<Vec<RoleDefinition>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Set when a change was committed but the snapshot could not be rebuilt after it:
    /// until a rebuild succeeds, every check on this node is refused (503), so a committed
    /// revocation can never be ignored by an old snapshot.
    stale: AtomicBool,
}

/// How many times a rebuild after a change is tried before the node fails closed.
const RELOAD_ATTEMPTS: u32 = 4;

impl Rbac {
    pub async fn load(store: Store) -> anyhow::Result<Arc<Rbac>> {
        let (snap, defs) = build(&store).await?;
        let gen_now = current_generation(&store).await?;
        Ok(Arc::new(Rbac {
            store,
            engine: Engine::new(snap),
            seen_generation: AtomicI64::new(gen_now),
            defs: ArcSwap::from_pointee(defs),
            reload_lock: tokio::sync::Mutex::new(()),
            stale: AtomicBool::new(false),
        }))
    }

    /// Rebuilds the snapshot now. Called after every write that changes access, once the
    /// write has committed and before its response is sent, so the next request sees it.
    ///
    /// Never fails: the write is committed, so its answer must not be an error. The rebuild
    /// is retried; if it still fails, this node fails closed (every check answers 503 until
    /// the background poll manages a rebuild), so a committed revocation always takes effect.
    pub async fn changed(&self) -> Result<(), ArmError> {
        let mut attempt = 0;
        loop {
            match self.reload_after_change().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt + 1 < RELOAD_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(attempt, "rbac reload after a change: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(
                        "rbac reload after a change failed {RELOAD_ATTEMPTS} times: {e}; refusing every check until a reload succeeds"
                    );
                    self.stale.store(true, Ordering::SeqCst);
                    return Ok(());
                }
            }
        }
    }

    async fn reload_after_change(&self) -> anyhow::Result<()> {
        let g = self.store.bump_counter(GENERATION_KEY).await?;
        let _guard = self.reload_lock.lock().await;
        let (snap, defs) = build(&self.store).await?;
        self.defs.store(Arc::new(defs));
        self.engine.replace(snap);
        self.seen_generation.fetch_max(g, Ordering::SeqCst);
        Ok(())
    }

    /// Reloads if another node bumped the generation, or if a rebuild after a local change
    /// failed (called periodically).
    pub async fn poll(&self) -> anyhow::Result<()> {
        if self.stale.load(Ordering::SeqCst) {
            self.reload_after_change().await?;
            self.stale.store(false, Ordering::SeqCst);
            tracing::info!("rbac reloaded; checks answer again");
            return Ok(());
        }
        let g = current_generation(&self.store).await?;
        if g > self.seen_generation.load(Ordering::SeqCst) {
            let _guard = self.reload_lock.lock().await;
            let (snap, defs) = build(&self.store).await?;
            self.defs.store(Arc::new(defs));
            self.engine.replace(snap);
            self.seen_generation.fetch_max(g, Ordering::SeqCst);
        }
        Ok(())
    }

    fn fresh(&self) -> Result<(), ArmError> {
        if self.stale.load(Ordering::SeqCst) {
            return Err(ArmError::new(
                503,
                "ServiceUnavailable",
                "Access is being refreshed after a change; retry the request shortly.",
            ));
        }
        Ok(())
    }

    /// The snapshot that write decisions ([`cloister_access::writes`]) are made on; refused
    /// while this node fails closed.
    pub fn decision_snapshot(&self) -> Result<Arc<Snapshot>, ArmError> {
        self.fresh()?;
        Ok(self.engine.snapshot())
    }

    /// The ARM error for a refused write to access. `hide_scope`: the object belongs to a
    /// scope the caller addressed it through no URL of, so a 403 names neither that scope
    /// nor anything else about it.
    pub fn refusal(&self, principal: &str, r: WriteRefusal, hide_scope: bool) -> ArmError {
        match r {
            WriteRefusal::Forbidden { action, scope } => {
                metrics::counter!("cloister_authz_denied_total").increment(1);
                if hide_scope {
                    ArmError::forbidden(format!(
                        "The client '{principal}' with object id '{principal}' does not have authorization to perform action '{action}' on this object."
                    ))
                } else {
                    forbidden(principal, &action, &scope)
                }
            }
            WriteRefusal::Invalid { code, message } => ArmError::bad_request(code, message),
            WriteRefusal::Conflict { code, message } => ArmError::conflict(code, message),
        }
    }

    /// The one authorization call every handler makes.
    pub fn authorize(&self, principal: &str, action: &str, scope: &Scope) -> Result<(), ArmError> {
        self.fresh()?;
        let d = self
            .engine
            .check(principal, &Action::Control(action.to_string()), scope);
        if d.allowed {
            Ok(())
        } else {
            metrics::counter!("cloister_authz_denied_total").increment(1);
            Err(forbidden(principal, action, &scope.to_string()))
        }
    }

    /// A data-plane check (for data actions such as session execution).
    pub fn authorize_data(
        &self,
        principal: &str,
        data_action: &str,
        scope: &Scope,
    ) -> Result<(), ArmError> {
        self.fresh()?;
        let d = self
            .engine
            .check(principal, &Action::Data(data_action.to_string()), scope);
        if d.allowed {
            Ok(())
        } else {
            Err(ArmError::forbidden(format!(
                "The principal '{principal}' does not have permission to perform data action '{data_action}' over scope '{scope}'."
            )))
        }
    }

    pub fn definitions(&self) -> Arc<Vec<RoleDefinition>> {
        self.defs.load_full()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.engine.snapshot()
    }
}

fn forbidden(principal: &str, action: &str, scope: &str) -> ArmError {
    ArmError::forbidden(format!(
        "The client '{principal}' with object id '{principal}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
    ))
}

/// A stored role assignment as the evaluator sees it.
pub fn to_access(r: &RoleAssignmentRow) -> RoleAssignment {
    RoleAssignment {
        id: r.id.clone(),
        scope: r.scope.clone(),
        role_definition_id: r.role_definition_id.clone(),
        principal_id: r.principal_id.clone(),
        principal_type: r.principal_type.clone(),
    }
}

async fn current_generation(store: &Store) -> anyhow::Result<i64> {
    Ok(store
        .meta_get(GENERATION_KEY)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

async fn build(store: &Store) -> anyhow::Result<(Snapshot, Vec<RoleDefinition>)> {
    let mut defs = cloister_access::builtin_roles();
    for row in store.role_definition_list().await? {
        match serde_json::from_str::<RoleDefinition>(&row.body) {
            Ok(d) => defs.push(d),
            Err(e) => tracing::error!(id = %row.id, "unreadable role definition: {e}"),
        }
    }
    let assignments: Vec<RoleAssignment> = store
        .role_assignment_list_all()
        .await?
        .iter()
        .map(to_access)
        .collect();
    let denies: Vec<DenyAssignment> = store
        .deny_assignment_list()
        .await?
        .into_iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect();
    let memberships = store.group_edges().await?;
    let mut hierarchy = Vec::new();
    for mg in store.mg_list().await? {
        if let Some(p) = mg.parent {
            hierarchy.push((mg_scope(&mg.name), mg_scope(&p)));
        }
    }
    for s in store.subscription_list().await? {
        if let Some(m) = s.management_group {
            hierarchy.push((format!("/subscriptions/{}", s.id), mg_scope(&m)));
        }
    }
    let snap = Snapshot::build(defs.clone(), assignments, denies, memberships, hierarchy);
    Ok((snap, defs))
}

pub fn mg_scope(name: &str) -> String {
    format!("/providers/Microsoft.Management/managementGroups/{name}")
}
