//! The evaluator: an immutable [`Snapshot`] of everything access depends on, indexed by
//! scope, and the [`Engine`] that swaps snapshots and caches decisions.

use crate::matching::Pattern;
use crate::{Action, DenyAssignment, EVERYONE, Permission, RoleAssignment, RoleDefinition};
use arc_swap::ArcSwap;
use cloister_core::scope::{Scope, ScopeKind};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Why a [`Decision`] came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReason {
    /// Allowed by this role assignment (its id).
    Assignment(String),
    /// Denied by this deny assignment (its id).
    Deny(String),
    /// No role assignment on the scope chain grants the action.
    NoMatchingAssignment,
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::Assignment(id) => write!(f, "allowed by role assignment '{id}'"),
            DecisionReason::Deny(id) => write!(f, "denied by deny assignment '{id}'"),
            DecisionReason::NoMatchingAssignment => f.write_str("no matching role assignment"),
        }
    }
}

/// The answer to "may this principal do this action at this scope".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: DecisionReason,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

/// A permission block with its patterns prepared.
#[derive(Debug)]
struct CompiledPermission {
    actions: Vec<Pattern>,
    not_actions: Vec<Pattern>,
    data_actions: Vec<Pattern>,
    not_data_actions: Vec<Pattern>,
}

fn compile(perms: &[Permission]) -> Vec<CompiledPermission> {
    let c = |v: &[String]| v.iter().map(|p| Pattern::new(p)).collect::<Vec<_>>();
    perms
        .iter()
        .map(|p| CompiledPermission {
            actions: c(&p.actions),
            not_actions: c(&p.not_actions),
            data_actions: c(&p.data_actions),
            not_data_actions: c(&p.not_data_actions),
        })
        .collect()
}

/// Effective permission of one block = matching (data) actions minus matching not(data)
/// actions; a set of blocks permits if any block does. `action` is lowercased.
fn permits(perms: &[CompiledPermission], data: bool, action: &str) -> bool {
    let any = |list: &[Pattern]| list.iter().any(|x| x.matches_lower(action));
    perms.iter().any(|p| {
        if data {
            any(&p.data_actions) && !any(&p.not_data_actions)
        } else {
            any(&p.actions) && !any(&p.not_actions)
        }
    })
}

/// `8e3a…` or `/subscriptions/…/providers/Microsoft.Authorization/roleDefinitions/8e3a…`,
/// lowercased to the GUID.
fn role_key(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn scope_key(s: &str) -> Option<String> {
    Scope::parse(s).ok().map(|s| s.canonical())
}

/// A fast seeded hasher for the snapshot's string-keyed maps: a folded 64×64→128-bit
/// multiply per 8 bytes, seeded per process from the standard library's random state so
/// collisions cannot be precomputed. (SipHash dominated a check's cost.)
mod fasthash {
    use std::hash::{BuildHasher, Hasher, RandomState};
    use std::sync::LazyLock;

    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xD6E8_FEB8_6659_FD93;

    static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0x5eed_u64) | 1);

    #[inline]
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Seeded(u64);
    impl Default for Seeded {
        fn default() -> Self {
            Seeded(*SEED)
        }
    }
    impl BuildHasher for Seeded {
        type Hasher = Fold;
        fn build_hasher(&self) -> Fold {
            Fold(self.0)
        }
    }

    pub struct Fold(u64);
    impl Hasher for Fold {
        fn write(&mut self, bytes: &[u8]) {
            let mut h = self.0;
            let mut chunks = bytes.chunks_exact(8);
            for c in &mut chunks {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                h = fold(h ^ u64::from_le_bytes(w), K);
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut w = [0u8; 8];
                w[..rest.len()].copy_from_slice(rest);
                h = fold(h ^ u64::from_le_bytes(w), K ^ rest.len() as u64);
            }
            self.0 = h;
        }
        fn write_u8(&mut self, i: u8) {
            self.0 = fold(self.0 ^ u64::from(i), K2);
        }
        fn write_usize(&mut self, i: usize) {
            self.0 = fold(self.0 ^ i as u64, K2);
        }
        fn finish(&self) -> u64 {
            fold(self.0, K2)
        }
    }

    pub type Map<K, V> = std::collections::HashMap<K, V, Seeded>;
}
use fasthash::Map;

/// Principals (users, groups, service principals) are interned to dense numbers at build.
type Pid = u32;

#[derive(Debug)]
struct Grant {
    /// Index into `Snapshot::assignments`.
    assignment: u32,
    principal: Pid,
    /// Index into `Snapshot::roles`; `u32::MAX` when the role does not exist (never grants).
    role: u32,
}

/// Above this many role assignments at one scope, they are also indexed by principal.
const INDEX_PRINCIPALS_ABOVE: usize = 8;

/// Role and deny assignments at one scope.
#[derive(Debug, Default)]
struct AtScope {
    grants: Vec<Grant>,
    /// Principal → indexes into `grants`; only when there are many grants.
    by_principal: Option<Map<Pid, Vec<u32>>>,
    /// Indexes into `Snapshot::compiled_denies`.
    denies: Vec<usize>,
}

#[derive(Debug)]
struct CompiledDeny {
    index: usize,
    everyone: bool,
    principals: Vec<Pid>,
    excluded: Vec<Pid>,
    perms: Vec<CompiledPermission>,
    here_only: bool,
}

#[derive(Debug)]
struct Role {
    def: RoleDefinition,
    perms: Vec<CompiledPermission>,
}

/// Everything a decision needs, immutable and indexed for the scope-chain walk.
///
/// Role and deny assignments are kept in one map keyed by canonical scope, so a check looks
/// only at the scopes on the chain of the scope asked about (the scope, its lexical parents,
/// the management groups above its subscription, and `/`): one map lookup per scope, then
/// only the assignments at that scope held by the principal or its groups. Its cost does not
/// depend on the total number of assignments.
#[derive(Debug, Default)]
pub struct Snapshot {
    roles: Vec<Role>,
    role_index: HashMap<String, usize>,
    assignments: Vec<RoleAssignment>,
    at: Map<String, AtScope>,
    denies: Vec<DenyAssignment>,
    compiled_denies: Vec<CompiledDeny>,
    /// Lowercase principal id → its number.
    pids: Map<String, Pid>,
    /// Principal number → lowercase id.
    names: Vec<String>,
    /// Principal number → every group it is in, directly or through other groups (sorted).
    groups: Vec<Box<[Pid]>>,
    /// Subscription or management group scope → parent management group scope (canonical).
    parents: HashMap<String, String>,
    /// Subscription or management group scope → every management group above it, nearest
    /// first (canonical; cycles cut).
    above: Map<String, Vec<String>>,
}

/// How many management-group hops are followed at most (Azure allows six levels below the
/// root group; this also bounds a cyclic hierarchy).
const MAX_MG_DEPTH: usize = 16;

impl Snapshot {
    /// Builds a snapshot.
    ///
    /// * `defs`: role definitions (built-in and custom), keyed by their GUID `id`;
    /// * `assignments`: role assignments; `role_definition_id` may be the GUID or a full
    ///   role definition resource id. Assignments whose scope does not parse never apply;
    /// * `denies`: deny assignments;
    /// * `memberships`: `(group id, member id)` edges; members may be groups (nesting, cycles
    ///   allowed);
    /// * `hierarchy`: `(child, parent)` where child is a subscription or management group
    ///   scope and parent a management group scope.
    ///
    /// Ids are compared ignoring ASCII case.
    pub fn build(
        defs: Vec<RoleDefinition>,
        assignments: Vec<RoleAssignment>,
        denies: Vec<DenyAssignment>,
        memberships: Vec<(String, String)>,
        hierarchy: Vec<(String, String)>,
    ) -> Snapshot {
        let mut roles = Vec::with_capacity(defs.len());
        let mut role_index = HashMap::with_capacity(defs.len());
        for def in defs {
            // A later definition with the same id replaces an earlier one.
            let perms = compile(&def.permissions);
            let key = role_key(&def.id);
            match role_index.get(&key) {
                Some(&i) => roles[i] = Role { def, perms },
                None => {
                    role_index.insert(key, roles.len());
                    roles.push(Role { def, perms });
                }
            }
        }

        let mut pids: Map<String, Pid> = Map::default();
        let mut names: Vec<String> = Vec::new();
        let mut intern = |id: &str| -> Pid {
            let id = id.to_ascii_lowercase();
            if let Some(&p) = pids.get(&id) {
                return p;
            }
            let p = names.len() as Pid;
            names.push(id.clone());
            pids.insert(id, p);
            p
        };

        let mut at: Map<String, AtScope> = Map::default();
        for (i, a) in assignments.iter().enumerate() {
            let Some(key) = scope_key(&a.scope) else {
                continue;
            };
            at.entry(key).or_default().grants.push(Grant {
                assignment: i as u32,
                principal: intern(&a.principal_id),
                role: role_index
                    .get(&role_key(&a.role_definition_id))
                    .map_or(u32::MAX, |&r| r as u32),
            });
        }
        for entry in at.values_mut() {
            if entry.grants.len() > INDEX_PRINCIPALS_ABOVE {
                let mut idx: Map<Pid, Vec<u32>> = Map::default();
                for (i, g) in entry.grants.iter().enumerate() {
                    idx.entry(g.principal).or_default().push(i as u32);
                }
                entry.by_principal = Some(idx);
            }
        }

        let mut compiled_denies = Vec::with_capacity(denies.len());
        for (i, d) in denies.iter().enumerate() {
            let Some(key) = scope_key(&d.scope) else {
                continue;
            };
            at.entry(key)
                .or_default()
                .denies
                .push(compiled_denies.len());
            compiled_denies.push(CompiledDeny {
                index: i,
                everyone: d.principals.iter().any(|p| p == EVERYONE),
                principals: d.principals.iter().map(|p| intern(p)).collect(),
                excluded: d.exclude_principals.iter().map(|p| intern(p)).collect(),
                perms: compile(&d.permissions),
                here_only: d.does_not_apply_to_child_scopes,
            });
        }

        // Transitive closure of group membership; the visited set makes cycles harmless.
        let mut direct: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (g, m) in memberships {
            let (g, m) = (intern(&g), intern(&m));
            direct.entry(m).or_default().push(g);
        }
        let mut groups: Vec<Box<[Pid]>> = vec![Box::default(); names.len()];
        for (&member, first) in &direct {
            let mut seen: HashSet<Pid> = HashSet::new();
            let mut q: VecDeque<Pid> = first.iter().copied().collect();
            while let Some(g) = q.pop_front() {
                if g != member
                    && seen.insert(g)
                    && let Some(up) = direct.get(&g)
                {
                    q.extend(up.iter().copied());
                }
            }
            let mut v: Vec<Pid> = seen.into_iter().collect();
            v.sort_unstable();
            groups[member as usize] = v.into_boxed_slice();
        }

        let parents: HashMap<String, String> = hierarchy
            .into_iter()
            .filter_map(|(c, p)| {
                let (c, p) = (Scope::parse(&c).ok()?, Scope::parse(&p).ok()?);
                let child_ok = matches!(
                    c.kind(),
                    ScopeKind::Subscription | ScopeKind::ManagementGroup
                );
                (child_ok && p.kind() == ScopeKind::ManagementGroup)
                    .then(|| (c.canonical(), p.canonical()))
            })
            .collect();
        let mut above = Map::default();
        for child in parents.keys() {
            let mut chain: Vec<String> = Vec::new();
            let mut key = child;
            while let Some(p) = parents.get(key) {
                if p == child || chain.contains(p) || chain.len() >= MAX_MG_DEPTH {
                    break;
                }
                chain.push(p.clone());
                key = p;
            }
            above.insert(child.clone(), chain);
        }

        Snapshot {
            roles,
            role_index,
            assignments,
            at,
            denies,
            compiled_denies,
            pids,
            names,
            groups,
            parents,
            above,
        }
    }

    /// The groups `principal` belongs to, directly or through other groups (lowercase,
    /// sorted).
    pub fn principal_groups(&self, principal: &str) -> Vec<String> {
        let Some(&p) = self.pids.get(&principal.to_ascii_lowercase()) else {
            return vec![];
        };
        let mut v: Vec<String> = self.groups[p as usize]
            .iter()
            .map(|&g| self.names[g as usize].clone())
            .collect();
        v.sort_unstable();
        v
    }

    pub fn deny_assignments(&self) -> &[DenyAssignment] {
        &self.denies
    }

    /// Every role assignment, as given to [`Snapshot::build`].
    pub fn assignments(&self) -> &[RoleAssignment] {
        &self.assignments
    }

    /// A role definition by GUID (or full role definition id), ignoring case.
    pub fn role(&self, id: &str) -> Option<&RoleDefinition> {
        self.role_index
            .get(&role_key(id))
            .map(|&i| &self.roles[i].def)
    }

    /// Every role definition.
    pub fn roles(&self) -> impl Iterator<Item = &RoleDefinition> {
        self.roles.iter().map(|r| &r.def)
    }

    pub fn assignment_count(&self) -> usize {
        self.assignments.len()
    }

    /// The management group a subscription or management group sits in, if known.
    pub fn parent_management_group(&self, scope: &Scope) -> Option<Scope> {
        Scope::parse(self.parents.get(scope.canonical_str())?).ok()
    }

    /// The canonical keys a check at `scope` visits, self first: the scope and its lexical
    /// parents, then the management groups above the subscription (or management group),
    /// then `/`.
    fn walk<'a>(&'a self, scope: &'a Scope) -> impl Iterator<Item = &'a str> + 'a {
        let lexical = scope.ancestor_keys().take_while(|k| *k != "/");
        // The subscription or management group at the top of the lexical chain.
        let top = scope.ancestor_keys().filter(|k| *k != "/").last();
        let mgs = top
            .and_then(|t| self.above.get(t))
            .into_iter()
            .flatten()
            .map(String::as_str);
        lexical.chain(mgs).chain(std::iter::once("/"))
    }

    /// [`Snapshot::walk`] as owned strings.
    pub fn chain(&self, scope: &Scope) -> Vec<String> {
        self.walk(scope).map(str::to_string).collect()
    }

    /// How many role assignments a check at `scope` can look at: those on its chain.
    pub fn assignments_on_chain(&self, scope: &Scope) -> usize {
        self.walk(scope)
            .map(|s| self.at.get(s).map_or(0, |a| a.grants.len()))
            .sum()
    }

    /// Role assignments made exactly at `scope`.
    pub fn assignments_at(&self, scope: &Scope) -> Vec<&RoleAssignment> {
        self.at
            .get(scope.canonical_str())
            .map(|a| {
                a.grants
                    .iter()
                    .map(|g| &self.assignments[g.assignment as usize])
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Role assignments that apply at `scope`: those at the scope and those inherited from
    /// every scope above it (including management groups), nearest first.
    pub fn assignments_for(&self, scope: &Scope) -> Vec<&RoleAssignment> {
        self.walk(scope)
            .filter_map(|k| self.at.get(k))
            .flat_map(|a| {
                a.grants
                    .iter()
                    .map(|g| &self.assignments[g.assignment as usize])
            })
            .collect()
    }

    /// Decides whether `principal` may perform `action` at `scope`.
    ///
    /// Deny assignments on the chain that apply to the principal (directly, through a group,
    /// or as Everyone) and do not exclude it win. Otherwise the first role assignment on the
    /// chain (nearest scope first) held by the principal or one of its groups whose role
    /// permits the action allows it. One pass over the chain, one map lookup per scope.
    pub fn check(&self, principal: &str, action: &Action, scope: &Scope) -> Decision {
        // A principal that holds nothing and is in no group has no number; it can still be
        // denied as Everyone.
        let me: Option<Pid> = self.pids.get(&principal.to_ascii_lowercase()).copied();
        let groups: &[Pid] = me.map_or(&[], |p| &self.groups[p as usize]);
        let is_me = |id: Pid| Some(id) == me || groups.binary_search(&id).is_ok();
        let data = action.is_data();
        let act = action.as_str().to_ascii_lowercase();
        let grants = |g: &Grant| {
            self.roles
                .get(g.role as usize)
                .is_some_and(|r| permits(&r.perms, data, &act))
        };
        let identities = usize::from(me.is_some()) + groups.len();

        let mut allowed_by: Option<usize> = None;
        for (depth, key) in self.walk(scope).enumerate() {
            let Some(at) = self.at.get(key) else {
                continue;
            };
            for &i in &at.denies {
                let d = &self.compiled_denies[i];
                let denied = (depth == 0 || !d.here_only)
                    && (d.everyone || d.principals.iter().any(|&p| is_me(p)))
                    && !d.excluded.iter().any(|&p| is_me(p))
                    && permits(&d.perms, data, &act);
                if denied {
                    return Decision {
                        allowed: false,
                        reason: DecisionReason::Deny(self.denies[d.index].id.clone()),
                    };
                }
            }
            if allowed_by.is_some() || identities == 0 {
                continue;
            }
            let found = match &at.by_principal {
                Some(idx) if at.grants.len() > identities => me
                    .iter()
                    .chain(groups)
                    .filter_map(|id| idx.get(id))
                    .flatten()
                    .map(|&i| &at.grants[i as usize])
                    .find(|g| grants(g)),
                _ => at.grants.iter().find(|g| is_me(g.principal) && grants(g)),
            };
            allowed_by = found.map(|g| g.assignment as usize);
        }
        match allowed_by {
            Some(i) => Decision {
                allowed: true,
                reason: DecisionReason::Assignment(self.assignments[i].id.clone()),
            },
            None => Decision {
                allowed: false,
                reason: DecisionReason::NoMatchingAssignment,
            },
        }
    }
}

/// The decision cache's default size (entries).
pub const DEFAULT_CACHE_CAPACITY: u64 = 100_000;

struct Current {
    generation: u64,
    snapshot: Arc<Snapshot>,
}

/// The shared evaluator for the server: the current [`Snapshot`] plus a decision cache.
///
/// Cached decisions are keyed by the generation of the snapshot that computed them, and a
/// check reads the generation and the snapshot together (one atomic load). So once
/// [`Engine::replace`] returns, every check that starts afterwards sees the new snapshot and
/// can never hit a decision cached from an older one, even if a check that raced with the
/// replace stores its (old-generation) result late.
pub struct Engine {
    current: ArcSwap<Current>,
    replace_lock: Mutex<()>,
    cache: moka::sync::Cache<String, Decision, fasthash::Seeded>,
}

impl Engine {
    pub fn new(s: Snapshot) -> Engine {
        Engine::with_cache_capacity(s, DEFAULT_CACHE_CAPACITY)
    }

    /// An engine whose decision cache holds at most `capacity` entries (0 disables it).
    pub fn with_cache_capacity(s: Snapshot, capacity: u64) -> Engine {
        Engine {
            current: ArcSwap::from_pointee(Current {
                generation: 1,
                snapshot: Arc::new(s),
            }),
            replace_lock: Mutex::new(()),
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(fasthash::Seeded::default()),
        }
    }

    /// Installs a new snapshot and drops every cached decision. Once this returns, no check
    /// answers from an older snapshot.
    pub fn replace(&self, s: Snapshot) {
        self.replace_arc(Arc::new(s))
    }

    /// [`Engine::replace`] with a shared snapshot.
    pub fn replace_arc(&self, snapshot: Arc<Snapshot>) {
        let _serial = self
            .replace_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = self.current.load().generation + 1;
        self.current.store(Arc::new(Current {
            generation,
            snapshot,
        }));
        self.cache.invalidate_all();
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load().snapshot.clone()
    }

    /// Starts at 1 and grows by one with every [`Engine::replace`].
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// [`Snapshot::check`] on the current snapshot, through the decision cache.
    pub fn check(&self, principal: &str, action: &Action, scope: &Scope) -> Decision {
        let cur = self.current.load();
        let key = cache_key(cur.generation, principal, action, scope);
        if let Some(d) = self.cache.get(&key) {
            return d;
        }
        let d = cur.snapshot.check(principal, action, scope);
        self.cache.insert(key, d.clone());
        d
    }
}

/// `generation:len:principal` + `c|d` + `len:action` + scope, lowercased: unambiguous because
/// every part but the last is length-prefixed.
fn cache_key(generation: u64, principal: &str, action: &Action, scope: &Scope) -> String {
    use std::fmt::Write;
    let a = action.as_str();
    let sc = scope.canonical_str();
    let mut k = String::with_capacity(principal.len() + a.len() + sc.len() + 32);
    let _ = write!(k, "{generation}:{}:", principal.len());
    k.extend(principal.chars().map(|c| c.to_ascii_lowercase()));
    k.push(if action.is_data() { 'd' } else { 'c' });
    let _ = write!(k, "{}:", a.len());
    k.extend(a.chars().map(|c| c.to_ascii_lowercase()));
    k.push_str(sc);
    k
}

#[cfg(test)]
mod tests;
