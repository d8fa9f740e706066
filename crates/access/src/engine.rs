//! The evaluator: an immutable [`Snapshot`] of everything access depends on, indexed by
//! scope, and the [`Engine`] that swaps snapshots and caches decisions.

use crate::matching::wildcard_match;
use crate::{Action, DenyAssignment, EVERYONE, Permission, RoleAssignment, RoleDefinition};
use arc_swap::ArcSwap;
use cloister_core::scope::{Scope, ScopeKind};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReason {
    /// Allowed by this role assignment.
    Assignment(String),
    /// Denied by this deny assignment.
    Deny(String),
    NoMatchingAssignment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: DecisionReason,
}

/// Everything a decision needs, indexed for the scope-chain walk.
#[derive(Default)]
pub struct Snapshot {
    roles: HashMap<String, RoleDefinition>,
    by_scope: HashMap<String, Vec<RoleAssignment>>,
    deny_by_scope: HashMap<String, Vec<DenyAssignment>>,
    denies: Vec<DenyAssignment>,
    /// Transitive groups of every member that is in any group.
    groups: HashMap<String, Vec<String>>,
    /// Subscription or management group scope → parent management group scope (canonical).
    parents: HashMap<String, String>,
    assignment_count: usize,
}

fn permits(perms: &[Permission], action: &Action) -> bool {
    let any = |list: &[String], a: &str| list.iter().any(|x| wildcard_match(x, a));
    perms.iter().any(|p| match action {
        Action::Control(a) => any(&p.actions, a) && !any(&p.not_actions, a),
        Action::Data(a) => any(&p.data_actions, a) && !any(&p.not_data_actions, a),
    })
}

impl Snapshot {
    pub fn build(
        defs: Vec<RoleDefinition>,
        assignments: Vec<RoleAssignment>,
        denies: Vec<DenyAssignment>,
        memberships: Vec<(String, String)>,
        hierarchy: Vec<(String, String)>,
    ) -> Snapshot {
        let roles = defs
            .into_iter()
            .map(|d| (d.id.to_ascii_lowercase(), d))
            .collect();
        let assignment_count = assignments.len();
        let mut by_scope: HashMap<String, Vec<RoleAssignment>> = HashMap::new();
        for a in assignments {
            let key = Scope::parse(&a.scope)
                .map(|s| s.canonical())
                .unwrap_or_else(|_| a.scope.to_ascii_lowercase());
            by_scope.entry(key).or_default().push(a);
        }
        let mut deny_by_scope: HashMap<String, Vec<DenyAssignment>> = HashMap::new();
        for d in &denies {
            let key = Scope::parse(&d.scope)
                .map(|s| s.canonical())
                .unwrap_or_else(|_| d.scope.to_ascii_lowercase());
            deny_by_scope.entry(key).or_default().push(d.clone());
        }
        // Transitive closure of group membership (cycles are harmless: visited set).
        let mut direct: HashMap<String, Vec<String>> = HashMap::new();
        for (g, m) in memberships {
            direct
                .entry(m.to_ascii_lowercase())
                .or_default()
                .push(g.to_ascii_lowercase());
        }
        let mut groups = HashMap::new();
        for member in direct.keys() {
            let mut seen: HashSet<String> = HashSet::new();
            let mut q: VecDeque<String> = direct[member].iter().cloned().collect();
            while let Some(g) = q.pop_front() {
                if g != *member
                    && seen.insert(g.clone())
                    && let Some(up) = direct.get(&g)
                {
                    q.extend(up.iter().cloned());
                }
            }
            let mut v: Vec<String> = seen.into_iter().collect();
            v.sort();
            groups.insert(member.clone(), v);
        }
        let parents = hierarchy
            .into_iter()
            .filter_map(|(c, p)| {
                Some((
                    Scope::parse(&c).ok()?.canonical(),
                    Scope::parse(&p).ok()?.canonical(),
                ))
            })
            .collect();
        Snapshot {
            roles,
            by_scope,
            deny_by_scope,
            denies,
            groups,
            parents,
            assignment_count,
        }
    }

    /// The groups `principal` belongs to, directly or through other groups.
    pub fn principal_groups(&self, principal: &str) -> Vec<String> {
        self.groups
            .get(&principal.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    pub fn deny_assignments(&self) -> &[DenyAssignment] {
        &self.denies
    }

    pub fn role(&self, id: &str) -> Option<&RoleDefinition> {
        self.roles.get(&id.to_ascii_lowercase())
    }

    pub fn assignment_count(&self) -> usize {
        self.assignment_count
    }

    /// The scope and everything above it: lexical parents, then the management groups above
    /// the subscription (or management group), then `/`. Canonical strings, self first.
    pub fn chain(&self, scope: &Scope) -> Vec<String> {
        let mut out = Vec::with_capacity(8);
        let mut cur = Some(scope.clone());
        while let Some(s) = cur {
            match s.kind() {
                ScopeKind::Subscription | ScopeKind::ManagementGroup => {
                    let mut key = s.canonical();
                    out.push(key.clone());
                    let mut hops = 0;
                    while let Some(p) = self.parents.get(&key) {
                        if hops > 16 || out.contains(p) {
                            break;
                        }
                        out.push(p.clone());
                        key = p.clone();
                        hops += 1;
                    }
                    out.push("/".into());
                    break;
                }
                ScopeKind::Root => {
                    out.push("/".into());
                    break;
                }
                _ => {
                    out.push(s.canonical());
                    cur = s.parent();
                }
            }
        }
        out
    }

    /// Decides whether `principal` may perform `action` at `scope`. Deny assignments win.
    pub fn check(&self, principal: &str, action: &Action, scope: &Scope) -> Decision {
        let p = principal.to_ascii_lowercase();
        let groups = self.groups.get(&p);
        let is_me = |id: &str| {
            id.eq_ignore_ascii_case(&p)
                || groups.is_some_and(|g| g.iter().any(|x| x.eq_ignore_ascii_case(id)))
        };
        let chain = self.chain(scope);
        for (i, sc) in chain.iter().enumerate() {
            if let Some(ds) = self.deny_by_scope.get(sc) {
                for d in ds {
                    if d.does_not_apply_to_child_scopes && i > 0 {
                        continue;
                    }
                    let applies = d.principals.iter().any(|x| x == EVERYONE || is_me(x));
                    let excluded = d.exclude_principals.iter().any(|x| is_me(x));
                    if applies && !excluded && permits(&d.permissions, action) {
                        return Decision {
                            allowed: false,
                            reason: DecisionReason::Deny(d.id.clone()),
                        };
                    }
                }
            }
        }
        for sc in &chain {
            if let Some(list) = self.by_scope.get(sc) {
                for a in list {
                    if is_me(&a.principal_id)
                        && let Some(r) = self.roles.get(&a.role_definition_id.to_ascii_lowercase())
                        && permits(&r.permissions, action)
                    {
                        return Decision {
                            allowed: true,
                            reason: DecisionReason::Assignment(a.id.clone()),
                        };
                    }
                }
            }
        }
        Decision {
            allowed: false,
            reason: DecisionReason::NoMatchingAssignment,
        }
    }

    /// How many assignments a check at `scope` looks at (for benchmarks).
    pub fn assignments_on_chain(&self, scope: &Scope) -> usize {
        self.chain(scope)
            .iter()
            .map(|s| self.by_scope.get(s).map_or(0, Vec::len))
            .sum()
    }
}

type Key = (u64, String, Action, String);

/// The shared evaluator: the current snapshot plus a decision cache that a snapshot swap
/// invalidates atomically (entries are keyed by generation).
pub struct Engine {
    snapshot: ArcSwap<Snapshot>,
    generation: AtomicU64,
    cache: moka::sync::Cache<Key, Decision>,
}

impl Engine {
    pub fn new(s: Snapshot) -> Engine {
        Engine {
            snapshot: ArcSwap::from_pointee(s),
            generation: AtomicU64::new(1),
            cache: moka::sync::Cache::builder().max_capacity(200_000).build(),
        }
    }

    /// Installs a new snapshot. Once this returns, no check answers from the old one.
    pub fn replace(&self, s: Snapshot) {
        self.snapshot.store(Arc::new(s));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn check(&self, principal: &str, action: &Action, scope: &Scope) -> Decision {
        let g = self.generation.load(Ordering::SeqCst);
        let key = (
            g,
            principal.to_ascii_lowercase(),
            action.clone(),
            scope.canonical(),
        );
        if let Some(d) = self.cache.get(&key) {
            return d;
        }
        let d = self.snapshot.load().check(principal, action, scope);
        self.cache.insert(key, d.clone());
        d
    }
}

#[cfg(test)]
mod tests;
