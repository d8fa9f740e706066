//! Benchmark of the access evaluator (run by `bench/evaluator.sh`).
//!
//! Builds snapshots with 1,000 / 10,000 / 100,000 role assignments spread over many
//! subscriptions, resource groups and resources (plus a management-group hierarchy, a few
//! deny assignments and nested group memberships), then times a mix of allowed and denied
//! decisions on resource scopes, both uncached ([`Snapshot::check`]) and through the
//! [`Engine`]'s decision cache. The number of assignments on any one scope chain stays about
//! the same while the total grows 100-fold, which is what the table shows: the cost follows
//! the chain, not the total.

use cloister_access::builtin::{CONTRIBUTOR, OWNER, READER, SESSION_EXECUTOR};
use cloister_access::{
    Action, DenyAssignment, EVERYONE, Engine, Permission, RoleAssignment, Snapshot, builtin_roles,
};
use cloister_core::scope::Scope;
use std::hint::black_box;
use std::time::Instant;

const USERS: usize = 2_000;
const GROUPS: usize = 200;
const RGS_PER_SUB: usize = 10;
const RES_PER_RG: usize = 10;
const MGS: usize = 10;
const QUERIES: usize = 2_000;
const ROUNDS: usize = 50;

fn mg(i: usize) -> String {
    format!("/providers/Microsoft.Management/managementGroups/mg{i}")
}
fn rg_scope(sub: usize, rg: usize) -> String {
    format!("/subscriptions/sub-{sub}/resourceGroups/rg{rg}")
}
fn res_scope(sub: usize, rg: usize, r: usize) -> String {
    format!(
        "{}/providers/Microsoft.App/sessionPools/pool{r}",
        rg_scope(sub, rg)
    )
}

/// A tiny deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as usize
    }
    fn below(&mut self, n: usize) -> usize {
        self.next() % n
    }
}

fn world(total: usize) -> (Snapshot, Vec<(String, Action, Scope)>) {
    // ~100 assignments per subscription: subscriptions grow with the total.
    let subs = (total / 100).max(1);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ total as u64);
    let roles = [READER, CONTRIBUTOR, OWNER, SESSION_EXECUTOR];
    let mut assignments = Vec::with_capacity(total);
    // A handful at the management groups and the root (constant, inherited everywhere below).
    for m in 0..MGS {
        assignments.push(RoleAssignment {
            id: format!("mg-a{m}"),
            scope: mg(m),
            role_definition_id: READER.into(),
            principal_id: format!("g{}", m * 7 % GROUPS),
            principal_type: "Group".into(),
        });
    }
    while assignments.len() < total {
        let i = assignments.len();
        let sub = rng.below(subs);
        let rg = rng.below(RGS_PER_SUB);
        let scope = match rng.below(10) {
            0 => format!("/subscriptions/sub-{sub}"),
            1..=3 => rg_scope(sub, rg),
            _ => res_scope(sub, rg, rng.below(RES_PER_RG)),
        };
        let (principal_id, principal_type) = if rng.below(4) == 0 {
            (format!("g{}", rng.below(GROUPS)), "Group")
        } else {
            (format!("user-{}", rng.below(USERS)), "User")
        };
        assignments.push(RoleAssignment {
            id: format!("a{i}"),
            scope,
            role_definition_id: roles[rng.below(roles.len())].into(),
            principal_id,
            principal_type: principal_type.into(),
        });
    }
    // Every user is in three groups; groups nest two levels (g_i in g_{i/10}).
    let mut memberships = Vec::new();
    for u in 0..USERS {
        for k in 0..3 {
            memberships.push((
                format!("g{}", (u * 3 + k * 71) % GROUPS),
                format!("user-{u}"),
            ));
        }
    }
    for g in 10..GROUPS {
        memberships.push((format!("g{}", g / 10), format!("g{g}")));
    }
    // Subscriptions sit in mg0..mg9, which sit in mg-root's children chain mg_i -> mg_{i/3}.
    let mut hierarchy = Vec::new();
    for s in 0..subs {
        hierarchy.push((format!("/subscriptions/sub-{s}"), mg(s % MGS)));
    }
    for m in 1..MGS {
        hierarchy.push((mg(m), mg(m / 3)));
    }
    // Deny deletes to everyone but g1 in a few subscriptions.
    let denies = (0..subs.min(20))
        .map(|s| DenyAssignment {
            id: format!("deny-{s}"),
            name: format!("no-delete-{s}"),
            scope: format!("/subscriptions/sub-{}", s * 7 % subs),
            permissions: vec![Permission {
                actions: vec!["*/delete".into()],
                ..Default::default()
            }],
            principals: vec![EVERYONE.into()],
            exclude_principals: vec!["g1".into()],
            does_not_apply_to_child_scopes: false,
        })
        .collect();

    let actions = [
        Action::control("Microsoft.App/sessionPools/read"),
        Action::control("Microsoft.App/sessionPools/write"),
        Action::control("Microsoft.App/sessionPools/delete"),
        Action::control("Microsoft.Authorization/roleAssignments/write"),
        Action::data("Microsoft.App/sessionPools/interpreters/execute/action"),
    ];
    // Half of the queries come from a principal holding an assignment on the scope (or its
    // group), the rest from random users.
    let mut queries = Vec::with_capacity(QUERIES);
    for q in 0..QUERIES {
        let (principal, scope) = if q % 2 == 0 {
            let a = &assignments[MGS + rng.below(total.saturating_sub(MGS).max(1))];
            let principal = if a.principal_type == "Group" {
                let g: usize = a.principal_id[1..].parse().unwrap();
                // some user in that group, if any, else a user
                (0..USERS)
                    .find(|u| (0..3).any(|k| (u * 3 + k * 71) % GROUPS == g))
                    .map_or("user-0".to_string(), |u| format!("user-{u}"))
            } else {
                a.principal_id.clone()
            };
            let sc = Scope::parse(&a.scope).unwrap();
            let sc = if sc.kind() == cloister_core::scope::ScopeKind::Resource {
                sc
            } else {
                // a resource below the assignment's scope
                let sub = sc.subscription_id().unwrap().to_string();
                let rg = sc.resource_group().map_or(0, |r| r[2..].parse().unwrap());
                let sub: usize = sub[4..].parse().unwrap();
                Scope::parse(&res_scope(sub, rg, rng.below(RES_PER_RG))).unwrap()
            };
            (principal, sc)
        } else {
            let sc = res_scope(
                rng.below(subs),
                rng.below(RGS_PER_SUB),
                rng.below(RES_PER_RG),
            );
            (
                format!("user-{}", rng.below(USERS)),
                Scope::parse(&sc).unwrap(),
            )
        };
        queries.push((principal, actions[q % actions.len()].clone(), scope));
    }
    let snap = Snapshot::build(builtin_roles(), assignments, denies, memberships, hierarchy);
    (snap, queries)
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

/// Times `f` over every query `ROUNDS` times: throughput from an untimed pass, latencies
/// from a pass that reads the clock around each call.
fn measure(
    queries: &[(String, Action, Scope)],
    f: impl Fn(&str, &Action, &Scope) -> bool,
) -> (f64, u64, u64, f64) {
    // Warm-up (and, for the engine, fills the cache).
    let mut allowed = 0usize;
    for (p, a, s) in queries {
        allowed += f(p, a, s) as usize;
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for (p, a, s) in queries {
            black_box(f(black_box(p), a, s));
        }
    }
    let rate = (ROUNDS * queries.len()) as f64 / start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(ROUNDS * queries.len());
    for _ in 0..ROUNDS {
        for (p, a, s) in queries {
            let t = Instant::now();
            black_box(f(black_box(p), a, s));
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    lat.sort_unstable();
    (
        rate,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        allowed as f64 * 100.0 / queries.len() as f64,
    )
}

fn main() {
    println!(
        "| total assignments | build | assignments on chain (avg / max) | path | decisions/s | p50 | p99 | allowed |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|");
    for total in [1_000usize, 10_000, 100_000] {
        let t = Instant::now();
        let (snap, queries) = world(total);
        let built = t.elapsed();
        let chain: Vec<usize> = queries
            .iter()
            .map(|(_, _, s)| snap.assignments_on_chain(s))
            .collect();
        let avg = chain.iter().sum::<usize>() as f64 / chain.len() as f64;
        let max = chain.iter().max().copied().unwrap_or(0);
        let (rate, p50, p99, allowed) = measure(&queries, |p, a, s| snap.check(p, a, s).allowed);
        println!(
            "| {total} | {} ms | {avg:.1} / {max} | Snapshot::check (uncached) | {rate:.0} | {} | {} | {allowed:.0}% |",
            built.as_millis(),
            fmt_ns(p50),
            fmt_ns(p99)
        );
        let engine = Engine::new(snap);
        let (rate, p50, p99, allowed) = measure(&queries, |p, a, s| engine.check(p, a, s).allowed);
        println!(
            "| {total} | | | Engine::check (cached) | {rate:.0} | {} | {} | {allowed:.0}% |",
            fmt_ns(p50),
            fmt_ns(p99)
        );
    }
    println!();
    println!(
        "{} queries × {ROUNDS} rounds per row, one thread; actions cycle read / write / delete / roleAssignments write / execute data action; \
         p50/p99 include ~20-30 ns of clock reads; build = generating and indexing the snapshot.",
        QUERIES
    );
}
