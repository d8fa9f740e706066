//! No privilege escalation through RBAC writes (issue 8 item 2).
//!
//! A random world (custom roles, role assignments to a principal `P`, a group `G` that holds
//! `P`, and others; deny assignments; a management group above one subscription) and a random
//! sequence of writes that `P` attempts: role definition PUT/DELETE, role assignment
//! PUT/DELETE. Each is decided by the same functions the server's handlers call
//! (`cloister_access::writes`), and applied only if allowed. After every step, for every
//! action and scope of the universe: if `P` now holds the action there, it either held it in
//! the initial world or held `roleAssignments/write` there or above (where it could already
//! grant anything).

use cloister_access::writes::{
    ROLE_ASSIGNMENTS_DELETE, ROLE_ASSIGNMENTS_WRITE, ROLE_DEFINITIONS_DELETE,
    ROLE_DEFINITIONS_WRITE, assignable_at,
};
use cloister_access::*;
use cloister_core::scope::Scope;
use proptest::prelude::*;

const P: &str = "p";
const G: &str = "g";
const Q: &str = "q";
const MG: &str = "/providers/Microsoft.Management/managementGroups/m";

const SCOPES: &[&str] = &[
    MG,
    "/subscriptions/s1",
    "/subscriptions/s2",
    "/subscriptions/s1/resourceGroups/a",
    "/subscriptions/s1/resourceGroups/b",
    "/subscriptions/s2/resourceGroups/c",
    "/subscriptions/s1/resourceGroups/a/providers/Microsoft.App/sessionPools/pool",
];

const CONTROL: &[&str] = &[
    ROLE_ASSIGNMENTS_WRITE,
    ROLE_ASSIGNMENTS_DELETE,
    ROLE_DEFINITIONS_WRITE,
    ROLE_DEFINITIONS_DELETE,
    "Microsoft.Authorization/denyAssignments/delete",
    "Microsoft.Resources/subscriptions/resourceGroups/write",
    "Microsoft.App/sessionPools/write",
    "Microsoft.App/sessionPools/read",
];
const DATA: &[&str] = &["Microsoft.App/sessionPools/interpreters/execute/action"];

const ACTION_PATTERNS: &[&str] = &[
    "*",
    "*/read",
    "Microsoft.Authorization/*",
    "Microsoft.Authorization/*/write",
    ROLE_ASSIGNMENTS_WRITE,
    ROLE_DEFINITIONS_WRITE,
    "Microsoft.App/*",
    "Microsoft.App/sessionPools/write",
    "Microsoft.Resources/*",
];
const DATA_PATTERNS: &[&str] = &[
    "Microsoft.App/*",
    "Microsoft.App/sessionPools/interpreters/execute/action",
];
/// Custom role ids P may name (some exist at the start, some not).
const ROLE_IDS: &[&str] = &["r0", "r1", "r2", "r3", "r4"];
const BUILTINS: &[&str] = &[
    builtin::OWNER,
    builtin::CONTRIBUTOR,
    builtin::READER,
    builtin::SESSION_EXECUTOR,
];

#[derive(Debug, Clone)]
struct World {
    roles: Vec<RoleDefinition>,
    assignments: Vec<RoleAssignment>,
    denies: Vec<DenyAssignment>,
    next_id: usize,
}

impl World {
    fn snapshot(&self) -> Snapshot {
        let mut defs = builtin_roles();
        defs.extend(self.roles.iter().cloned());
        Snapshot::build(
            defs,
            self.assignments.clone(),
            self.denies.clone(),
            vec![(G.to_string(), P.to_string())],
            vec![("/subscriptions/s1".to_string(), MG.to_string())],
        )
    }
    fn role(&self, id: &str) -> Option<RoleDefinition> {
        builtin_by_id(id)
            .cloned()
            .or_else(|| self.roles.iter().find(|r| r.id == id).cloned())
    }
    fn uses(&self, id: &str) -> Vec<RoleAssignment> {
        self.assignments
            .iter()
            .filter(|a| a.role_definition_id == id)
            .cloned()
            .collect()
    }
}

fn pick<T: Clone + std::fmt::Debug + 'static>(xs: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(xs)
}

fn perms() -> impl Strategy<Value = Vec<Permission>> {
    let block = (
        proptest::collection::vec(pick(ACTION_PATTERNS), 0..3),
        proptest::collection::vec(pick(ACTION_PATTERNS), 0..2),
        proptest::collection::vec(pick(DATA_PATTERNS), 0..2),
    )
        .prop_map(|(a, n, d)| Permission {
            actions: a.into_iter().map(String::from).collect(),
            not_actions: n.into_iter().map(String::from).collect(),
            data_actions: d.into_iter().map(String::from).collect(),
            not_data_actions: vec![],
        });
    proptest::collection::vec(block, 1..3)
}

fn role_def(id: &str, permissions: Vec<Permission>, scopes: Vec<&str>) -> RoleDefinition {
    RoleDefinition {
        id: id.to_string(),
        role_name: format!("role {id}"),
        description: String::new(),
        role_type: RoleType::CustomRole,
        permissions,
        assignable_scopes: scopes.into_iter().map(String::from).collect(),
    }
}

fn scopes_list() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(pick(SCOPES), 1..3)
}

#[derive(Debug, Clone)]
enum Op {
    PutRole {
        id: &'static str,
        permissions: Vec<Permission>,
        scopes: Vec<&'static str>,
    },
    DeleteRole {
        id: &'static str,
    },
    Assign {
        scope: &'static str,
        role: &'static str,
        principal: &'static str,
    },
    Unassign {
        index: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (pick(ROLE_IDS), perms(), scopes_list())
            .prop_map(|(id, permissions, scopes)| Op::PutRole { id, permissions, scopes }),
        1 => pick(ROLE_IDS).prop_map(|id| Op::DeleteRole { id }),
        3 => (pick(SCOPES), prop_oneof![pick(ROLE_IDS), pick(BUILTINS)], pick(&[P, G, Q][..]))
            .prop_map(|(scope, role, principal)| Op::Assign { scope, role, principal }),
        1 => (0usize..16).prop_map(|index| Op::Unassign { index }),
    ]
}

fn world() -> impl Strategy<Value = World> {
    let roles = proptest::collection::vec((perms(), scopes_list()), 0..4).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .filter_map(|(i, (p, s))| {
                let r = role_def(ROLE_IDS[i], p, s);
                validate_role_definition(&r).is_ok().then_some(r)
            })
            .collect::<Vec<_>>()
    });
    let assignments = proptest::collection::vec(
        (
            pick(SCOPES),
            prop_oneof![pick(ROLE_IDS), pick(BUILTINS)],
            pick(&[P, G, Q][..]),
        ),
        0..7,
    );
    let denies = proptest::collection::vec(
        (
            pick(SCOPES),
            proptest::collection::vec(pick(ACTION_PATTERNS), 1..3),
            pick(&[P, G, EVERYONE][..]),
            any::<bool>(),
        ),
        0..3,
    );
    (roles, assignments, denies).prop_map(|(roles, assignments, denies)| {
        let mut w = World {
            roles,
            assignments: vec![],
            denies: vec![],
            next_id: 0,
        };
        // Only assignments the handlers could have made (the role exists and is assignable
        // there); an orphan assignment of a missing role is allowed too, as left behind by a
        // race or an old version, since a later PUT of that role id must account for it.
        for (scope, role, principal) in assignments {
            let ok = match w.role(role) {
                Some(r) => assignable_at(&r, &Scope::parse(scope).unwrap()),
                None => true,
            };
            if ok {
                w.next_id += 1;
                w.assignments.push(RoleAssignment {
                    id: format!("ra{}", w.next_id),
                    scope: scope.to_string(),
                    role_definition_id: role.to_string(),
                    principal_id: principal.to_string(),
                    principal_type: "ServicePrincipal".into(),
                });
            }
        }
        for (i, (scope, actions, who, here_only)) in denies.into_iter().enumerate() {
            w.denies.push(DenyAssignment {
                id: format!("d{i}"),
                name: format!("d{i}"),
                scope: scope.to_string(),
                permissions: vec![Permission {
                    actions: actions.into_iter().map(String::from).collect(),
                    ..Default::default()
                }],
                principals: vec![who.to_string()],
                exclude_principals: vec![],
                does_not_apply_to_child_scopes: here_only,
            });
        }
        w
    })
}

/// The rule before the fix: `roleDefinitions/write` at the *new* assignable scopes only.
fn old_role_rule(
    snap: &Snapshot,
    principal: &str,
    _old: Option<&RoleDefinition>,
    new: Option<&RoleDefinition>,
    _assignments: &[RoleAssignment],
) -> Result<(), WriteRefusal> {
    let Some(new) = new else { return Ok(()) };
    for s in &new.assignable_scopes {
        let sc = Scope::parse(s).unwrap();
        if !snap
            .check(principal, &Action::control(ROLE_DEFINITIONS_WRITE), &sc)
            .allowed
        {
            return Err(WriteRefusal::Forbidden {
                action: ROLE_DEFINITIONS_WRITE.into(),
                scope: s.clone(),
            });
        }
    }
    Ok(())
}

type RoleRule = fn(
    &Snapshot,
    &str,
    Option<&RoleDefinition>,
    Option<&RoleDefinition>,
    &[RoleAssignment],
) -> Result<(), WriteRefusal>;

/// Applies `op` by `P` if the rules allow it (the handler's decision, then the store's own
/// refusals). Returns whether it was applied.
fn apply(w: &mut World, op: &Op, role_rule: RoleRule) -> bool {
    let snap = w.snapshot();
    match op {
        Op::PutRole {
            id,
            permissions,
            scopes,
        } => {
            let new = role_def(id, permissions.clone(), scopes.clone());
            if validate_role_definition(&new).is_err() {
                return false;
            }
            let old = w.roles.iter().find(|r| r.id == *id).cloned();
            if role_rule(&snap, P, old.as_ref(), Some(&new), &w.uses(id)).is_err() {
                return false;
            }
            w.roles.retain(|r| r.id != *id);
            w.roles.push(new);
            true
        }
        Op::DeleteRole { id } => {
            let Some(old) = w.roles.iter().find(|r| r.id == *id).cloned() else {
                return false;
            };
            let uses = w.uses(id);
            if role_rule(&snap, P, Some(&old), None, &uses).is_err() || !uses.is_empty() {
                return false;
            }
            w.roles.retain(|r| r.id != *id);
            true
        }
        Op::Assign {
            scope,
            role,
            principal,
        } => {
            let sc = Scope::parse(scope).unwrap();
            let def = w.role(role);
            if authorize_role_assignment_write(&snap, P, &sc, role, def.as_ref()).is_err() {
                return false;
            }
            let dup = w.assignments.iter().any(|a| {
                a.scope == *scope && a.role_definition_id == *role && a.principal_id == *principal
            });
            if dup {
                return false;
            }
            w.next_id += 1;
            w.assignments.push(RoleAssignment {
                id: format!("ra{}", w.next_id),
                scope: scope.to_string(),
                role_definition_id: role.to_string(),
                principal_id: principal.to_string(),
                principal_type: "ServicePrincipal".into(),
            });
            true
        }
        Op::Unassign { index } => {
            if w.assignments.is_empty() {
                return false;
            }
            let a = w.assignments[index % w.assignments.len()].clone();
            if authorize_role_assignment_delete(&snap, P, &a).is_err() {
                return false;
            }
            w.assignments.retain(|x| x.id != a.id);
            true
        }
    }
}

fn actions() -> impl Iterator<Item = Action> {
    CONTROL
        .iter()
        .map(|a| Action::control(*a))
        .chain(DATA.iter().map(|a| Action::data(*a)))
}

/// The first (action, scope) P holds now that it could not reach from `initial`.
fn escalation(initial: &Snapshot, now: &World) -> Option<(Action, String)> {
    let now = now.snapshot();
    for s in SCOPES {
        let sc = Scope::parse(s).unwrap();
        let admin_at_or_above = initial.chain(&sc).iter().any(|t| {
            initial
                .check(
                    P,
                    &Action::control(ROLE_ASSIGNMENTS_WRITE),
                    &Scope::parse(t).unwrap(),
                )
                .allowed
        });
        if admin_at_or_above {
            continue;
        }
        for a in actions() {
            if now.check(P, &a, &sc).allowed && !initial.check(P, &a, &sc).allowed {
                return Some((a, s.to_string()));
            }
        }
    }
    None
}

fn run(w0: &World, ops: &[Op], role_rule: RoleRule) -> Result<(), String> {
    let initial = w0.snapshot();
    let mut w = w0.clone();
    for (i, op) in ops.iter().enumerate() {
        if apply(&mut w, op, role_rule)
            && let Some((a, s)) = escalation(&initial, &w)
        {
            return Err(format!(
                "after step {i} ({op:?}) P holds {a:?} at {s}\nworld: {w:#?}"
            ));
        }
    }
    Ok(())
}

proptest! {
    // ESCALATION_CASES=100000 for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("ESCALATION_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(768),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_sequence_of_allowed_writes_escalates(w in world(), ops in proptest::collection::vec(op(), 1..8)) {
        if let Err(e) = run(&w, &ops, authorize_role_definition_write) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The reported attack, on the model: the invariant catches it under the old rule and the
/// current rule refuses it.
#[test]
fn the_reported_rewrite_escalates_under_the_old_rule_only() {
    let rg = "/subscriptions/s1/resourceGroups/a";
    let w = World {
        roles: vec![role_def(
            "r0",
            vec![Permission {
                actions: vec!["*/read".into()],
                ..Default::default()
            }],
            vec!["/subscriptions/s1"],
        )],
        assignments: vec![
            RoleAssignment {
                id: "owner".into(),
                scope: rg.into(),
                role_definition_id: builtin::OWNER.into(),
                principal_id: P.into(),
                principal_type: "ServicePrincipal".into(),
            },
            RoleAssignment {
                id: "sub-reader".into(),
                scope: "/subscriptions/s1".into(),
                role_definition_id: "r0".into(),
                principal_id: P.into(),
                principal_type: "ServicePrincipal".into(),
            },
        ],
        denies: vec![],
        next_id: 0,
    };
    let rewrite = [Op::PutRole {
        id: "r0",
        permissions: vec![Permission {
            actions: vec!["*".into()],
            ..Default::default()
        }],
        scopes: vec![rg],
    }];
    let old = run(&w, &rewrite, old_role_rule);
    assert!(
        old.as_ref()
            .is_err_and(|e| e.contains("/subscriptions/s1") && e.contains("step 0")),
        "{old:?}"
    );
    assert_eq!(run(&w, &rewrite, authorize_role_definition_write), Ok(()));
    let mut w2 = w.clone();
    assert!(!apply(
        &mut w2,
        &rewrite[0],
        authorize_role_definition_write
    ));
}

/// The property test also finds escalations under the old rule on its own (so its worlds
/// are rich enough to matter).
#[test]
fn random_search_finds_the_old_rule_unsound() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = (world(), proptest::collection::vec(op(), 1..8));
    let found = (0..4000).position(|_| {
        let (w, ops) = strat.new_tree(&mut runner).unwrap().current();
        run(&w, &ops, old_role_rule).is_err()
    });
    assert!(found.is_some(), "no escalation found under the old rule");
    eprintln!(
        "old rule: first escalation after {:?} random cases",
        found.map(|n| n + 1)
    );
}

/// Azure's rule alone (`roleDefinitions/write` at the old and new assignable scopes) is not
/// enough: a role author who cannot grant access widens a role assigned to itself. The
/// random search finds that too; the extra condition (authority where the role is assigned)
/// is what closes it.
#[test]
fn before_and_after_scopes_alone_are_not_enough() {
    fn scopes_only(
        snap: &Snapshot,
        principal: &str,
        old: Option<&RoleDefinition>,
        new: Option<&RoleDefinition>,
        _assignments: &[RoleAssignment],
    ) -> Result<(), WriteRefusal> {
        authorize_role_definition_write(snap, principal, old, new, &[])
    }
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = (world(), proptest::collection::vec(op(), 1..8));
    let found = (0..20000).position(|_| {
        let (w, ops) = strat.new_tree(&mut runner).unwrap().current();
        run(&w, &ops, scopes_only).is_err()
    });
    eprintln!(
        "scopes-only rule: first escalation after {:?} random cases",
        found.map(|n| n + 1)
    );
    assert!(
        found.is_some(),
        "no escalation found under the scopes-only rule"
    );
}

proptest! {
    /// `covers(old, new)` (which lets a narrowing through without authority where the role
    /// is assigned) is sound: whatever `new` permits, `old` permits, as the evaluator sees it.
    #[test]
    fn covers_is_sound(old in perms(), new in perms()) {
        prop_assume!(cloister_access::writes::covers(&old, &new));
        let sc = Scope::parse("/subscriptions/s1").unwrap();
        let assign = |id: &str, role: &str, who: &str| RoleAssignment {
            id: id.into(),
            scope: "/subscriptions/s1".into(),
            role_definition_id: role.into(),
            principal_id: who.into(),
            principal_type: "ServicePrincipal".into(),
        };
        let snap = Snapshot::build(
            vec![role_def("old", old, vec!["/subscriptions/s1"]), role_def("new", new, vec!["/subscriptions/s1"])],
            vec![assign("a1", "old", "o"), assign("a2", "new", "n")],
            vec![],
            vec![],
            vec![],
        );
        let probes = CONTROL.iter().chain(ACTION_PATTERNS).map(|a| Action::control(*a))
            .chain(DATA.iter().chain(DATA_PATTERNS).map(|a| Action::data(*a)))
            .chain(["Microsoft.App/x/read", "Microsoft.Resources/y/write", "Other.Thing/z/read"].map(Action::control));
        for a in probes {
            if snap.check("n", &a, &sc).allowed {
                prop_assert!(snap.check("o", &a, &sc).allowed, "{:?}", a);
            }
        }
    }
}
