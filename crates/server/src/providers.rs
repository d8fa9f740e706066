//! Composition of the ARM provider registry: each service's provider, the platform's own
//! types, and the plain types the configuration names.

use crate::config::ServerConfig;
use cloister_arm::registry::{ProviderSpec, Registry, TypeSpec};
use std::collections::BTreeMap;

pub fn registry(cfg: &ServerConfig) -> anyhow::Result<Registry> {
    let mut r = Registry::default();
    let builtin = [
        cloister_sessions::provider::arm_provider(),
        cloister_identity::provider::arm_provider(),
        cloister_credentials::provider::arm_provider(),
        ProviderSpec::new("Cloister.Platform")
            .with_type(TypeSpec::new("hosts", &["*"]).with_identity()),
    ];
    for p in builtin {
        r.register(p)
            .map_err(|e| anyhow::anyhow!("provider registry: {e}"))?;
    }
    // Plain types, grouped by namespace; parents before children.
    let mut plain: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for t in &cfg.arm_types {
        // `Namespace/type:lro`: writes and deletes of the type are long-running (simulated work).
        let (t, _lro) = plain_type_marker(t);
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
        if r.provider(&ns).is_some() {
            anyhow::bail!("arm_types: the namespace '{ns}' belongs to a built-in provider");
        }
        paths.sort_by_key(|p| p.split('/').count());
        paths.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        let mut spec = ProviderSpec::new(&ns);
        for p in paths {
            spec = spec.with_type(TypeSpec::new(&p, &["*"]).with_identity());
        }
        r.register(spec)
            .map_err(|e| anyhow::anyhow!("arm_types: {e}"))?;
    }
    Ok(r)
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
