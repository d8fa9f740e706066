//! Composition of the ARM host: each service's providers, ARM's own hierarchy, and the plain
//! types the configuration names. One line per provider.

use crate::config::ServerConfig;
use cloister_arm::host::Host;
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
    let mut plain: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for t in &cfg.arm_types {
        let (ns, path) = t
            .split_once('/')
            .filter(|(ns, p)| ns.contains('.') && !p.is_empty())
            .ok_or_else(|| anyhow::anyhow!("arm_types: '{t}' is not Namespace/type"))?;
        let e = plain
            .entry(ns.to_ascii_lowercase())
            .or_insert_with(|| (ns.to_string(), vec![]));
        e.1.push(path.to_string());
    }
    for (_, (ns, mut paths)) in plain {
        if h.registry.provider(&ns).is_some() {
            anyhow::bail!("arm_types: the namespace '{ns}' belongs to a built-in provider");
        }
        paths.sort_by_key(|p| p.split('/').count());
        paths.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        let mut spec = ProviderSpec::new(&ns);
        for p in paths {
            spec = spec.with_type(TypeSpec::new(&p, &["*"]).with_identity());
        }
        h.register_plain(spec)
            .map_err(|e| anyhow::anyhow!("arm_types: {e}"))?;
    }
    Ok(h)
}
