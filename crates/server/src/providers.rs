//! Composition of the ARM host: each service's providers, ARM's own hierarchy, and the plain
//! types the configuration names. One line per provider.

use crate::config::ServerConfig;
use cloister_arm::host::Host;
use cloister_arm::operations::SimulatedWork;
use cloister_arm::registry::{ProviderSpec, TypeSpec};
use cloister_authorization::Rbac;
use cloister_identity::Identity;
use cloister_sessions::arm::SessionPools;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn host(
    cfg: &ServerConfig,
    id: &Arc<Identity>,
    rbac: &Arc<Rbac>,
    pools: &Arc<SessionPools>,
    credentials: &Arc<cloister_credentials::Credentials>,
) -> anyhow::Result<Host> {
    use cloister_arm::provider::Provider;
    let mut h = Host::default();
    let builtin: Vec<Arc<dyn Provider>> = vec![
        Arc::new(cloister_arm::hierarchy::ManagementGroups),
        Arc::new(cloister_arm::hierarchy::Aliases),
        Arc::new(cloister_authorization::arm::Authorization { rbac: rbac.clone() }),
        Arc::new(cloister_identity::arm::ManagedIdentities),
        Arc::new(cloister_identity::arm::PlatformHosts),
        Arc::new(cloister_identity::arm::CloisterIdentity::identity(
            id.clone(),
        )),
        Arc::new(cloister_identity::arm::CloisterIdentity::directory(
            id.clone(),
        )),
        pools.clone(),
        Arc::new(cloister_credentials::arm::ApiManagement {
            cm: credentials.clone(),
        }),
        Arc::new(cloister_credentials::arm::KeyRing {
            cm: credentials.clone(),
        }),
    ];
    for p in builtin {
        h.register(p)
            .map_err(|e| anyhow::anyhow!("provider registry: {e}"))?;
    }
    // Plain types, grouped by namespace; parents before children.
    let mut plain: BTreeMap<String, (String, Vec<(String, bool)>)> = BTreeMap::new();
    for t in &cfg.arm_types {
        // `Namespace/type:lro`: writes and deletes of the type are long-running (simulated work).
        let (t, lro) = plain_type_marker(t);
        let (ns, path) = t
            .split_once('/')
            .filter(|(ns, p)| ns.contains('.') && !p.is_empty())
            .ok_or_else(|| anyhow::anyhow!("arm_types: '{t}' is not Namespace/type"))?;
        let e = plain
            .entry(ns.to_ascii_lowercase())
            .or_insert_with(|| (ns.to_string(), vec![]));
        e.1.push((path.to_string(), lro));
    }
    for (_, (ns, mut paths)) in plain {
        if h.registry.provider(&ns).is_some() {
            anyhow::bail!("arm_types: the namespace '{ns}' belongs to a built-in provider");
        }
        paths.sort_by_key(|(p, _)| p.split('/').count());
        paths.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
        let any_lro = paths.iter().any(|(_, lro)| *lro);
        let mut spec = ProviderSpec::new(&ns);
        for (p, lro) in paths {
            let mut ts = TypeSpec::new(&p, &["*"]).with_identity();
            if lro {
                ts = ts
                    .action(SimulatedWork::ACTION)
                    .long_running(SimulatedWork::long_running());
            }
            spec = spec.with_type(ts);
        }
        let r = if any_lro {
            h.register(Arc::new(SimulatedWork(spec)))
        } else {
            h.register_plain(spec)
        };
        r.map_err(|e| anyhow::anyhow!("arm_types: {e}"))?;
    }
    Ok(h)
}

/// A plain type of `arm_types` and whether it carries the long-running marker (`:lro`,
/// any casing): `Contoso.Slow/things:lro` is the type `Contoso.Slow/things` whose PUT, PATCH
/// and DELETE are long-running operations (`cloister_arm::operations::SimulatedWork`).
pub fn plain_type_marker(t: &str) -> (&str, bool) {
    match t.len().checked_sub(4).filter(|&i| t.is_char_boundary(i)) {
        Some(i) if t[i..].eq_ignore_ascii_case(":lro") => (&t[..i], true),
        _ => (t, false),
    }
}
