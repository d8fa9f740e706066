//! The CustomContainer side of the `Microsoft.App/sessionPools` provider: admitting a pool
//! (backend configured, runtime class available, Azure's warm-pool rule, secrets sealed), the
//! launch its sessions start from (secrets opened), and `templateUpdateStatus` in GET.
//!
//! Secrets are sealed with the server's master key (envelope encryption of
//! `cloister_crypto`), bound to the pool's id and the secret's name, and stored as
//! `{name, sealed}`; GET answers names only. Provisioning stays `Succeeded` when an image
//! cannot be pulled or containers crash: as in Azure, those are reported through
//! `templateUpdateStatus.*.status` (`imagePullFailCount`, `crashCount`) and `details`.

use crate::custom_spec::CustomLaunch;
use crate::custom_spec::parse_secrets;
use crate::spec::{ContainerType, Lifecycle, Network, PoolSpec};
use base64::Engine;
use cloister_core::error::ArmError;
use cloister_store::Resource;
use serde_json::{Value, json};
use std::sync::Arc;

fn aad(pool_id: &str, name: &str) -> Vec<u8> {
    format!(
        "cloister sessionPool secret\0{}\0{name}",
        pool_id.to_lowercase()
    )
    .into_bytes()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

const NOT_ENABLED: &str = "containerType 'CustomContainer' is not supported on this server: custom containers are not enabled (set [custom_containers] enabled = true in its configuration; it needs runc and root).";

/// What the custom-pool rules need of the provider: its pool manager (whose runtime may run
/// containers) and the master key that seals the pools' secrets.
pub(crate) struct Pools<'a> {
    pub manager: Option<&'a Arc<crate::Manager>>,
    pub mk: &'a cloister_crypto::MasterKey,
}

impl Pools<'_> {
    fn custom_enabled(&self) -> bool {
        self.manager.is_some_and(|m| m.runtime().custom().is_some())
    }
}

/// Refuses a CustomContainer pool at once (before its template is looked at) when this
/// server runs no containers.
pub(crate) fn enabled_for(
    st: &Pools<'_>,
    r: &Resource,
    props: Option<&Value>,
) -> Result<(), ArmError> {
    let named = props
        .and_then(|p| p.as_object())
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("containerType"))
                .map(|(_, v)| v)
        })
        .and_then(|v| v.as_str())
        .is_some_and(|t| ContainerType::parse(t) == Some(ContainerType::CustomContainer));
    let stored = PoolSpec::of_stored(&r.properties)
        .is_some_and(|s| s.container_type == ContainerType::CustomContainer);
    if (named || stored) && !ContainerType::CustomContainer.is_supported(st.custom_enabled()) {
        return Err(ArmError::bad_request("InvalidRequestContent", NOT_ENABLED));
    }
    Ok(())
}

/// Checks a CustomContainer pool against this server and seals its new secret values.
pub(crate) fn admit(
    st: &Pools<'_>,
    r: &Resource,
    props: Option<&Value>,
    spec: &mut PoolSpec,
) -> Result<(), ArmError> {
    let given = props
        .and_then(|p| p.as_object())
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("secrets"))
                .map(|(_, v)| v)
        })
        .is_some_and(|v| !v.is_null());
    if given {
        // Values arrive in the request; an entry without one keeps the pool's current value.
        let current: Vec<crate::custom_spec::PoolSecret> =
            serde_json::from_str::<Value>(&r.properties)
                .ok()
                .and_then(|v| v.get("secrets").cloned())
                .and_then(|v| parse_secrets(&v).ok())
                .unwrap_or_default();
        for s in &mut spec.secrets {
            match s.value.take() {
                Some(v) => {
                    s.sealed = Some(b64().encode(st.mk.seal(v.as_bytes(), &aad(&r.id, &s.name))));
                }
                None => {
                    s.sealed = current
                        .iter()
                        .find(|c| c.name == s.name)
                        .and_then(|c| c.sealed.clone());
                    if s.sealed.is_none() {
                        return Err(ArmError::bad_request(
                            "InvalidRequestContent",
                            format!("The secret '{}' has no value.", s.name),
                        ));
                    }
                }
            }
        }
    }
    if spec.container_type != ContainerType::CustomContainer {
        return Ok(());
    }
    if !ContainerType::CustomContainer.is_supported(st.custom_enabled()) {
        return Err(ArmError::bad_request("InvalidRequestContent", NOT_ENABLED));
    }
    spec.check_custom()
        .map_err(|(code, m)| ArmError::bad_request(code, m))?;
    if let Some(reg) = spec.custom.as_ref().and_then(|t| t.registry.as_ref())
        && reg.identity.is_some()
    {
        return Err(ArmError::bad_request(
            "RegistryIdentityNotSupported",
            "registryCredentials.identity is not supported by Cloister yet: give 'username' and 'passwordSecretRef' (a pool secret) instead.",
        ));
    }
    if let Some(c) = st.manager.and_then(|m| m.runtime().custom())
        && let Err(m) = c.backend().available(spec.runtime_class)
    {
        return Err(ArmError::bad_request(
            "RuntimeClassNotAvailable",
            format!(
                "runtimeClassName '{}' is not available on this server: {m}",
                spec.runtime_class.as_str()
            ),
        ));
    }
    Ok(())
}

/// The launch of a custom pool's sessions (None for other pools).
pub(crate) fn launch(st: &Pools<'_>, r: &Resource, spec: &PoolSpec) -> Option<Arc<CustomLaunch>> {
    if spec.container_type != ContainerType::CustomContainer {
        return None;
    }
    let template = spec.custom.clone()?;
    let mut secrets = vec![];
    for s in &spec.secrets {
        let opened = s
            .sealed
            .as_ref()
            .and_then(|x| b64().decode(x).ok())
            .and_then(|x| st.mk.open(&x, &aad(&r.id, &s.name)).ok())
            .and_then(|x| String::from_utf8(x).ok());
        match opened {
            Some(v) => secrets.push((s.name.clone(), v)),
            None => {
                tracing::error!(pool = %r.id, secret = %s.name, "a pool secret could not be opened")
            }
        }
    }
    let login = template.registry.as_ref().and_then(|reg| {
        let user = reg.username.clone()?;
        let name = reg.password_secret_ref.as_ref()?;
        let pw = secrets.iter().find(|(n, _)| n == name)?.1.clone();
        Some((user, pw))
    });
    Some(Arc::new(CustomLaunch {
        pool_id: r.id.clone(),
        template,
        runtime: spec.runtime_class,
        egress: spec.network == Network::EgressEnabled,
        exit_ends_session: spec.lifecycle == Lifecycle::OnContainerExit,
        secrets,
        login,
    }))
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `templateUpdateStatus{activeTemplate, desiredTemplate}` of a custom pool. A template
/// change takes effect at once (ready instances are replaced; sessions keep running the
/// containers they have), so both name the current template.
pub(crate) fn decorate(st: &Pools<'_>, r: &Resource, spec: &PoolSpec, props: &mut Value) {
    let Some(t) = &spec.custom else { return };
    let pool = st.manager.and_then(|m| m.pool(&r.id));
    let counts = st
        .manager
        .and_then(|m| m.runtime().custom())
        .and_then(|c| c.counts(&r.id))
        .unwrap_or_default();
    let (ready, pending, allocated) = pool.as_ref().map_or((0, 0, 0), |p| {
        (p.ready_count(), p.pending_count(), p.session_count())
    });
    let details = match (&counts.last_error, st.custom_enabled()) {
        (_, false) => "Custom containers are not enabled on this server.".to_string(),
        (Some(e), _) => e.clone(),
        (None, _) => String::new(),
    };
    let created = if counts.created_ms > 0 {
        counts.created_ms
    } else {
        pool.as_ref().map_or(0, |p| p.updated_ms())
    };
    let tj = t.to_json();
    let mut status = json!({
        "details": details,
        "createdTime": rfc3339_ms(created),
        "status": {
            "expectedCount": spec.ready,
            "readyCount": ready,
            "pendingCount": pending,
            "imagePullFailCount": counts.image_pull_fail,
            "crashCount": counts.crash,
            "allocatedCount": allocated,
        },
        "containers": tj["containers"],
        "ingress": tj["ingress"],
    });
    if let Some(d) = &counts.digest {
        status["imageDigest"] = json!(d);
    }
    props["templateUpdateStatus"] = json!({
        "activeTemplate": status.clone(),
        "desiredTemplate": status,
    });
}
