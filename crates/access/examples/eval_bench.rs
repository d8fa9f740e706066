//! Benchmark of the access evaluator (run by `bench/evaluator.sh`): decisions per second and
//! latency percentiles with 1,000 / 10,000 / 100,000 role assignments spread over many
//! subscriptions, resource groups and resources, to show that a decision's cost follows the
//! assignments on the scope chain and not the total.

use cloister_access::{Action, Engine, RoleAssignment, Snapshot, builtin_roles};
use cloister_core::scope::Scope;
use std::time::Instant;

const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CONTRIB: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";

fn world(total: usize) -> (Snapshot, Vec<(String, Scope)>) {
    // Subscriptions grow with the total (100 assignments each), so the assignments on any one
    // scope chain stay about the same while the total grows 100-fold.
    let subs = (total / 100).max(1);
    let mut a = Vec::with_capacity(total);
    for i in 0..total {
        let sub = i % subs;
        let rg = (i / subs) % 20;
        let scope = match i % 3 {
            0 => format!("/subscriptions/s{sub}"),
            1 => format!("/subscriptions/s{sub}/resourceGroups/rg{rg}"),
            _ => format!(
                "/subscriptions/s{sub}/resourceGroups/rg{rg}/providers/Contoso.Widgets/widgets/w{}",
                i % 50
            ),
        };
        let principal = if i % 4 == 0 {
            format!("g{}", i % 100)
        } else {
            format!("p{}", i % 1000)
        };
        a.push(RoleAssignment {
            id: format!("a{i}"),
            scope,
            role_definition_id: if i % 2 == 0 {
                READER.into()
            } else {
                CONTRIB.into()
            },
            principal_id: principal,
            principal_type: "User".into(),
        });
    }
    let mut memberships = vec![];
    for p in 0..1000 {
        memberships.push((format!("g{}", p % 100), format!("p{p}")));
        memberships.push((format!("g{}", (p + 7) % 100), format!("p{p}")));
    }
    // Queries: half ask as a principal that holds an assignment in that subscription.
    let queries = (0..2000)
        .map(|q| {
            let j = (q * 7919) % total;
            let sub = j % subs;
            let rg = (j / subs) % 20;
            let principal = if q % 2 == 0 {
                format!("p{}", j % 1000)
            } else {
                format!("p{}", (q * 13) % 1000)
            };
            let s = Scope::parse(&format!(
                "/subscriptions/s{sub}/resourceGroups/rg{rg}/providers/Contoso.Widgets/widgets/w{}",
                q % 50
            ))
            .unwrap();
            (principal, s)
        })
        .collect();
    (
        Snapshot::build(builtin_roles(), a, vec![], memberships, vec![]),
        queries,
    )
}

fn pct(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let actions = [
        Action::Control("Contoso.Widgets/widgets/read".into()),
        Action::Control("Contoso.Widgets/widgets/write".into()),
        Action::Control("Microsoft.Authorization/roleAssignments/write".into()),
    ];
    println!("| assignments | avg on chain | path | decisions/s | p50 | p99 | allowed |");
    println!("|---|---|---|---|---|---|---|");
    for total in [1_000usize, 10_000, 100_000] {
        let (snap, queries) = world(total);
        let on_chain: usize = queries
            .iter()
            .map(|(_, s)| snap.assignments_on_chain(s))
            .sum::<usize>()
            / queries.len();
        // Uncached path.
        let mut lat = Vec::with_capacity(200_000);
        let mut allowed = 0usize;
        let start = Instant::now();
        for round in 0..100 {
            for (i, (p, s)) in queries.iter().enumerate() {
                let t = Instant::now();
                let d = snap.check(p, &actions[(i + round) % 3], s);
                lat.push(t.elapsed().as_nanos() as u64);
                allowed += d.allowed as usize;
            }
        }
        let n = lat.len();
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "| {total} | {on_chain} | snapshot (uncached) | {rate:.0} | {:.2} µs | {:.2} µs | {:.0}% |",
            pct(lat.clone(), 0.5) as f64 / 1000.0,
            pct(lat, 0.99) as f64 / 1000.0,
            allowed as f64 * 100.0 / n as f64
        );
        // Cached engine path.
        let engine = Engine::new(snap);
        let mut lat = Vec::with_capacity(200_000);
        let start = Instant::now();
        for round in 0..100 {
            for (i, (p, s)) in queries.iter().enumerate() {
                let t = Instant::now();
                let _ = engine.check(p, &actions[(i + round) % 3], s);
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        println!(
            "| {total} | {on_chain} | engine (decision cache) | {rate:.0} | {:.2} µs | {:.2} µs | |",
            pct(lat.clone(), 0.5) as f64 / 1000.0,
            pct(lat, 0.99) as f64 / 1000.0
        );
    }
}
