//! The bridge between the store and the access evaluator: builds evaluator snapshots from
//! the stored role definitions, assignments, deny assignments, group memberships and the
//! management-group hierarchy, reloads after every change on this node, and notices changes
//! made by other nodes through a counter in the store.

use arc_swap::ArcSwap;
use cloister_access::{Action, DenyAssignment, Engine, RoleAssignment, RoleDefinition, Snapshot};
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub const GENERATION_KEY: &str = "rbac_generation";

pub struct Rbac {
    store: Store,
    engine: Engine,
    seen_generation: AtomicI64,
    defs: ArcSwap<Vec<RoleDefinition>>,
    reload_lock: tokio::sync::Mutex<()>,
}

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
        }))
    }

    /// Rebuilds the snapshot now. Called after every write that changes access, before the
    /// write's response is sent, so the next request sees it.
    pub async fn changed(&self) -> Result<(), ArmError> {
        self.reload_after_change().await.map_err(|e| {
            tracing::error!("rbac reload: {e}");
            ArmError::internal(
                "The change was saved but access could not be refreshed; retry the request.",
            )
        })
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

    /// Reloads if another node bumped the generation (called periodically).
    pub async fn poll(&self) -> anyhow::Result<()> {
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

    /// The one authorization call every handler makes.
    pub fn authorize(&self, principal: &str, action: &str, scope: &Scope) -> Result<(), ArmError> {
        let d = self
            .engine
            .check(principal, &Action::Control(action.to_string()), scope);
        if d.allowed {
            Ok(())
        } else {
            metrics::counter!("cloister_authz_denied_total").increment(1);
            Err(ArmError::forbidden(format!(
                "The client '{principal}' with object id '{principal}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
            )))
        }
    }

    /// A data-plane check (for data actions such as session execution).
    pub fn authorize_data(
        &self,
        principal: &str,
        data_action: &str,
        scope: &Scope,
    ) -> Result<(), ArmError> {
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
        .into_iter()
        .map(|r| RoleAssignment {
            id: r.id,
            scope: r.scope,
            role_definition_id: r.role_definition_id,
            principal_id: r.principal_id,
            principal_type: r.principal_type,
        })
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
