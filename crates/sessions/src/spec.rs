//! The `Microsoft.App/sessionPools` resource's `properties`: parsed leniently from what ARM
//! clients send (both `dynamicPoolConfiguration` forms, enum values in any case) and written
//! back in the shape the request's api-version expects.

use crate::container::RuntimeClass;
use crate::custom_spec::{CustomTemplate, PoolSecret};
use serde_json::{Map, Value, json};

/// api-versions from 2025-01-01 on use `lifecycleConfiguration`; older ones `executionType`.
pub fn uses_lifecycle_configuration(api_version: &str) -> bool {
    api_version.get(..10).unwrap_or(api_version) >= "2025-01-01"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    EgressDisabled,
    EgressEnabled,
}

/// What a pool's sessions run (`properties.containerType`). Every type the API has is named
/// here; [`ContainerType::is_supported`] says which ones this server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerType {
    /// A Python code interpreter (IPython).
    #[default]
    PythonLTS,
    /// A bash shell: `shellCommand` executions.
    Shell,
    /// A JavaScript (Node.js) interpreter with REPL semantics.
    NodeLTS,
    /// The pool's own image, reached over HTTP (needs a container backend: see
    /// [`ContainerType::is_supported`]).
    CustomContainer,
    /// A GPU-backed code interpreter (not run by this server).
    GpuBase,
}

impl ContainerType {
    pub const ALL: &'static [ContainerType] = &[
        ContainerType::PythonLTS,
        ContainerType::Shell,
        ContainerType::NodeLTS,
        ContainerType::CustomContainer,
        ContainerType::GpuBase,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerType::PythonLTS => "PythonLTS",
            ContainerType::Shell => "Shell",
            ContainerType::NodeLTS => "NodeLTS",
            ContainerType::CustomContainer => "CustomContainer",
            ContainerType::GpuBase => "GpuBase",
        }
    }

    /// The type of a wire name, matched without regard to case.
    pub fn parse(s: &str) -> Option<ContainerType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this server can run sessions of this type; `custom_enabled` says whether it has
    /// a container backend (custom containers enabled in its configuration).
    pub fn is_supported(self, custom_enabled: bool) -> bool {
        match self {
            ContainerType::PythonLTS | ContainerType::Shell | ContainerType::NodeLTS => true,
            ContainerType::CustomContainer => custom_enabled,
            ContainerType::GpuBase => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Timed,
    OnContainerExit,
}

/// Whether a managed identity is available to code inside the pool's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySetting {
    /// `system` or a user-assigned identity's resource id.
    pub identity: String,
    /// `None` (control plane only) or `Main` (also inside sessions).
    pub main: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub container_type: ContainerType,
    pub max_concurrent: u32,
    pub ready: u32,
    pub lifecycle: Lifecycle,
    pub cooldown_secs: u64,
    pub max_alive_secs: Option<u64>,
    pub network: Network,
    pub identities: Vec<IdentitySetting>,
    pub environment_id: Option<String>,
    /// `customContainerTemplate` (CustomContainer pools only).
    pub custom: Option<CustomTemplate>,
    /// `secrets`: names with sealed values (a parsed request may still hold plain values
    /// until the provider seals them).
    pub secrets: Vec<PoolSecret>,
    /// `runtimeClassName` (a Cloister extension; CustomContainer pools).
    pub runtime_class: RuntimeClass,
}

/// The default maximum lifetime of an `OnContainerExit` session (the CLI's).
pub const DEFAULT_MAX_ALIVE: u64 = 3600;

pub const MAX_SESSIONS_LIMIT: u64 = 10_000;
pub const DEFAULT_MAX_SESSIONS: u32 = 100;
pub const DEFAULT_READY: u32 = 0;
pub const DEFAULT_COOLDOWN: u64 = 300;

fn obj<'a>(v: &'a Value, key: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match get_ci(v, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("'{key}' must be an object.")),
    }
}

/// A member of an object, the key matched without regard to case.
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let m = v.as_object()?;
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn uint(v: &Value, key: &str, path: &str, max: u64) -> Result<Option<u64>, String> {
    match get_ci(v, key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => {
            let n = x
                .as_u64()
                .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| format!("'{path}' must be a non-negative integer."))?;
            if n > max {
                return Err(format!("'{path}' must be at most {max}."));
            }
            Ok(Some(n))
        }
    }
}

fn enum_str<'a>(
    v: &Value,
    key: &str,
    path: &str,
    allowed: &[&'a str],
) -> Result<Option<&'a str>, String> {
    match get_ci(v, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(s.trim()))
            .copied()
            .map(Some)
            .ok_or_else(|| format!("'{path}' must be one of {}; got '{s}'.", allowed.join(", "))),
        Some(_) => Err(format!("'{path}' must be a string.")),
    }
}

impl PoolSpec {
    /// Parses `properties` from a PUT (with `base` = None) or merges a PATCH onto `base`.
    /// The spec of a stored pool resource's `properties` text (None if it does not parse).
    pub fn of_stored(properties: &str) -> Option<PoolSpec> {
        serde_json::from_str::<Value>(properties)
            .ok()
            .and_then(|v| PoolSpec::parse(&v, None).ok())
    }

    pub fn parse(props: &Value, base: Option<&PoolSpec>) -> Result<PoolSpec, String> {
        if !props.is_object() && !props.is_null() {
            return Err("'properties' must be an object.".into());
        }
        let mut s = base.cloned().unwrap_or(PoolSpec {
            container_type: ContainerType::PythonLTS,
            max_concurrent: DEFAULT_MAX_SESSIONS,
            ready: DEFAULT_READY,
            lifecycle: Lifecycle::Timed,
            cooldown_secs: DEFAULT_COOLDOWN,
            max_alive_secs: None,
            network: Network::EgressDisabled,
            identities: vec![],
            environment_id: None,
            custom: None,
            secrets: vec![],
            runtime_class: RuntimeClass::Runc,
        });
        let mut ready_given = base.is_some();
        let names: Vec<&str> = ContainerType::ALL.iter().map(|t| t.as_str()).collect();
        if let Some(name) = enum_str(props, "containerType", "properties.containerType", &names)? {
            let t = ContainerType::parse(name).expect("one of ALL");
            if t == ContainerType::GpuBase {
                return Err(format!(
                    "containerType '{name}' is not supported; Cloister runs PythonLTS, Shell, NodeLTS and CustomContainer pools."
                ));
            }
            if let Some(b) = base
                && b.container_type != t
            {
                return Err(format!(
                    "containerType cannot be changed (the pool is {}); create a new pool for {name} sessions.",
                    b.container_type.as_str()
                ));
            }
            s.container_type = t;
        }
        match enum_str(
            props,
            "poolManagementType",
            "properties.poolManagementType",
            &["Dynamic", "Manual"],
        )? {
            None | Some("Dynamic") => {}
            Some(_) => {
                return Err("poolManagementType 'Manual' cannot be created; use 'Dynamic'.".into());
            }
        }
        if let Some(sc) = obj(props, "scaleConfiguration")? {
            let sc = Value::Object(sc.clone());
            if let Some(n) = uint(
                &sc,
                "maxConcurrentSessions",
                "properties.scaleConfiguration.maxConcurrentSessions",
                MAX_SESSIONS_LIMIT,
            )? {
                if n == 0 {
                    return Err(
                        "'properties.scaleConfiguration.maxConcurrentSessions' must be at least 1."
                            .into(),
                    );
                }
                s.max_concurrent = n as u32;
            }
            if let Some(n) = uint(
                &sc,
                "readySessionInstances",
                "properties.scaleConfiguration.readySessionInstances",
                MAX_SESSIONS_LIMIT,
            )? {
                s.ready = n as u32;
                ready_given = true;
            }
        }
        if s.container_type == ContainerType::CustomContainer && !ready_given {
            // A custom pool's warm pool of started containers (the rule below needs one).
            s.ready = 1;
        }
        if s.ready > s.max_concurrent {
            return Err(format!(
                "'readySessionInstances' ({}) cannot exceed 'maxConcurrentSessions' ({}).",
                s.ready, s.max_concurrent
            ));
        }
        if let Some(d) = obj(props, "dynamicPoolConfiguration")? {
            let d = Value::Object(d.clone());
            // The older form.
            enum_str(
                &d,
                "executionType",
                "properties.dynamicPoolConfiguration.executionType",
                &["Timed"],
            )?;
            if let Some(c) = uint(
                &d,
                "cooldownPeriodInSeconds",
                "properties.dynamicPoolConfiguration.cooldownPeriodInSeconds",
                86_400,
            )? {
                s.cooldown_secs = c;
            }
            // The 2025-01-01+ form.
            if let Some(l) = obj(&d, "lifecycleConfiguration")? {
                let l = Value::Object(l.clone());
                let p = "properties.dynamicPoolConfiguration.lifecycleConfiguration";
                match enum_str(
                    &l,
                    "lifecycleType",
                    &format!("{p}.lifecycleType"),
                    &["Timed", "OnContainerExit"],
                )? {
                    Some("OnContainerExit") => s.lifecycle = Lifecycle::OnContainerExit,
                    Some(_) => s.lifecycle = Lifecycle::Timed,
                    None => {}
                }
                if let Some(c) = uint(
                    &l,
                    "cooldownPeriodInSeconds",
                    &format!("{p}.cooldownPeriodInSeconds"),
                    86_400,
                )? {
                    s.cooldown_secs = c;
                }
                if let Some(c) = uint(
                    &l,
                    "maxAlivePeriodInSeconds",
                    &format!("{p}.maxAlivePeriodInSeconds"),
                    30 * 86_400,
                )? {
                    s.max_alive_secs = if c == 0 { None } else { Some(c) };
                }
            }
        }
        if s.cooldown_secs == 0 {
            return Err("'cooldownPeriodInSeconds' must be at least 1.".into());
        }
        if let Some(n) = obj(props, "sessionNetworkConfiguration")? {
            match enum_str(
                &Value::Object(n.clone()),
                "status",
                "properties.sessionNetworkConfiguration.status",
                &["EgressDisabled", "EgressEnabled"],
            )? {
                Some("EgressEnabled") => s.network = Network::EgressEnabled,
                Some(_) => s.network = Network::EgressDisabled,
                None => {}
            }
        }
        match get_ci(props, "managedIdentitySettings") {
            None => {}
            Some(Value::Null) => s.identities.clear(),
            Some(Value::Array(items)) => {
                let mut out = vec![];
                for (i, it) in items.iter().enumerate() {
                    let p = format!("properties.managedIdentitySettings[{i}]");
                    let identity = get_ci(it, "identity")
                        .and_then(|x| x.as_str())
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .ok_or_else(|| format!("'{p}.identity' is required."))?;
                    let main = match enum_str(
                        it,
                        "lifecycle",
                        &format!("{p}.lifecycle"),
                        &["None", "Main", "Init", "All"],
                    )? {
                        None | Some("None") | Some("Init") => false,
                        Some(_) => true,
                    };
                    let identity = if identity.eq_ignore_ascii_case("system") {
                        "system".to_string()
                    } else {
                        identity.to_string()
                    };
                    if out
                        .iter()
                        .any(|x: &IdentitySetting| x.identity.eq_ignore_ascii_case(&identity))
                    {
                        return Err(format!("'{p}.identity' names '{identity}' twice."));
                    }
                    out.push(IdentitySetting { identity, main });
                }
                s.identities = out;
            }
            Some(_) => return Err("'properties.managedIdentitySettings' must be an array.".into()),
        }
        match get_ci(props, "environmentId") {
            None | Some(Value::Null) => {}
            Some(Value::String(e)) => s.environment_id = Some(e.clone()),
            Some(_) => return Err("'properties.environmentId' must be a string.".into()),
        }
        let custom = s.container_type == ContainerType::CustomContainer;
        match get_ci(props, "customContainerTemplate") {
            None | Some(Value::Null) => {}
            Some(_) if !custom => {
                return Err(format!(
                    "'properties.customContainerTemplate' is only for CustomContainer pools; this pool is {}.",
                    s.container_type.as_str()
                ));
            }
            Some(t) => s.custom = Some(CustomTemplate::parse(t)?),
        }
        match get_ci(props, "secrets") {
            None | Some(Value::Null) => {}
            // PATCH replaces the array as a whole.
            Some(v) => s.secrets = crate::custom_spec::parse_secrets(v)?,
        }
        match get_ci(props, "runtimeClassName") {
            None | Some(Value::Null) => {}
            Some(v) => s.runtime_class = crate::custom_spec::parse_runtime_class(v)?,
        }
        if custom {
            if s.custom.is_none() {
                return Err("'properties.customContainerTemplate' is required for a CustomContainer pool: its containers (image) and ingress.targetPort.".into());
            }
            if s.lifecycle == Lifecycle::OnContainerExit && s.max_alive_secs.is_none() {
                s.max_alive_secs = Some(DEFAULT_MAX_ALIVE);
            }
        } else {
            if s.lifecycle == Lifecycle::OnContainerExit {
                return Err(format!(
                    "lifecycleType 'OnContainerExit' is only for CustomContainer pools; a {} pool uses 'Timed'.",
                    s.container_type.as_str()
                ));
            }
            if s.runtime_class != RuntimeClass::Runc {
                return Err(
                    "'properties.runtimeClassName' is only for CustomContainer pools.".into(),
                );
            }
        }
        if let Some(t) = &s.custom {
            for (path, name) in t.secret_refs() {
                if !s.secrets.iter().any(|x| x.name == name) {
                    return Err(format!(
                        "'{path}' names the secret '{name}', which is not in 'properties.secrets'."
                    ));
                }
            }
        }
        Ok(s)
    }

    /// The rule Azure applies to custom pools' warm pools: `1 <= readySessionInstances <
    /// maxConcurrentSessions`. Returns the error code and message.
    pub fn check_custom(&self) -> Result<(), (&'static str, String)> {
        if self.container_type == ContainerType::CustomContainer
            && !(self.ready >= 1 && self.ready < self.max_concurrent)
        {
            return Err((
                "SessionPoolInvalidReadySessionInstances",
                format!(
                    "For a CustomContainer pool 'readySessionInstances' ({}) must be at least 1 and less than 'maxConcurrentSessions' ({}).",
                    self.ready, self.max_concurrent
                ),
            ));
        }
        Ok(())
    }

    /// The stored/returned `properties` (without the read-only, per-request fields).
    pub fn to_properties(&self, api_version: &str) -> Value {
        let dynamic = if uses_lifecycle_configuration(api_version) {
            let mut l = json!({
                "lifecycleType": match self.lifecycle { Lifecycle::Timed => "Timed", Lifecycle::OnContainerExit => "OnContainerExit" },
                "cooldownPeriodInSeconds": self.cooldown_secs,
            });
            if let Some(m) = self.max_alive_secs {
                l["maxAlivePeriodInSeconds"] = json!(m);
            }
            json!({ "lifecycleConfiguration": l })
        } else {
            json!({"executionType": "Timed", "cooldownPeriodInSeconds": self.cooldown_secs})
        };
        let mut v = json!({
            "containerType": self.container_type.as_str(),
            "poolManagementType": "Dynamic",
            "scaleConfiguration": {
                "maxConcurrentSessions": self.max_concurrent,
                "readySessionInstances": self.ready,
            },
            "dynamicPoolConfiguration": dynamic,
            "sessionNetworkConfiguration": {
                "status": match self.network { Network::EgressDisabled => "EgressDisabled", Network::EgressEnabled => "EgressEnabled" },
            },
        });
        if !self.identities.is_empty() {
            v["managedIdentitySettings"] = Value::Array(
                self.identities
                    .iter()
                    .map(|i| json!({"identity": i.identity, "lifecycle": if i.main { "Main" } else { "None" }}))
                    .collect(),
            );
        }
        if let Some(e) = &self.environment_id {
            v["environmentId"] = json!(e);
        }
        if let Some(t) = &self.custom {
            v["customContainerTemplate"] = t.to_json();
            v["runtimeClassName"] = json!(self.runtime_class.as_str());
        }
        if !self.secrets.is_empty() {
            // Names only: values are write-only.
            v["secrets"] = Value::Array(
                self.secrets
                    .iter()
                    .map(|x| json!({"name": x.name}))
                    .collect(),
            );
        }
        v
    }

    /// The canonical stored form: every field, in the newest shape, secrets with their sealed
    /// values.
    pub fn to_stored(&self) -> Value {
        let mut v = self.to_properties("9999-12-31");
        if !self.secrets.is_empty() {
            v["secrets"] = Value::Array(
                self.secrets
                    .iter()
                    .map(|x| {
                        let mut o = json!({"name": x.name});
                        if let Some(s) = &x.sealed {
                            o["sealed"] = json!(s);
                        }
                        o
                    })
                    .collect(),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dynamic_forms() {
        let old = PoolSpec::parse(
            &json!({"dynamicPoolConfiguration": {"executionType": "timed", "cooldownPeriodInSeconds": 600}}),
            None,
        )
        .unwrap();
        assert_eq!(old.cooldown_secs, 600);
        let new = PoolSpec::parse(
            &json!({"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 900, "maxAlivePeriodInSeconds": 3600}}}),
            None,
        )
        .unwrap();
        assert_eq!((new.cooldown_secs, new.max_alive_secs), (900, Some(3600)));
        let back = PoolSpec::parse(&new.to_stored(), None).unwrap();
        assert_eq!(back, new);
        assert_eq!(
            new.to_properties("2024-03-01")["dynamicPoolConfiguration"]["cooldownPeriodInSeconds"],
            900
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            json!({"containerType": "CustomContainer"}),
            json!({"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "OnContainerExit"}}}),
            json!({"customContainerTemplate": {"containers": [{"image": "i"}], "ingress": {"targetPort": 1}}}),
            json!({"runtimeClassName": "runsc"}),
            json!({"scaleConfiguration": {"maxConcurrentSessions": 0}}),
            json!({"scaleConfiguration": {"maxConcurrentSessions": 2, "readySessionInstances": 3}}),
            json!({"scaleConfiguration": {"maxConcurrentSessions": -1}}),
            json!({"sessionNetworkConfiguration": {"status": "Open"}}),
            json!({"managedIdentitySettings": [{"lifecycle": "Main"}]}),
            json!({"dynamicPoolConfiguration": "x"}),
        ] {
            assert!(PoolSpec::parse(&bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_types() {
        for (name, t) in [
            ("PythonLTS", ContainerType::PythonLTS),
            ("shell", ContainerType::Shell),
            ("NODELTS", ContainerType::NodeLTS),
        ] {
            let p = PoolSpec::parse(&json!({ "containerType": name }), None).unwrap();
            assert_eq!(p.container_type, t);
            assert_eq!(PoolSpec::parse(&p.to_stored(), None).unwrap(), p);
            assert_eq!(p.to_stored()["containerType"], t.as_str());
        }
        for bad in ["GpuBase", "Ruby", ""] {
            let e = PoolSpec::parse(&json!({ "containerType": bad }), None).unwrap_err();
            assert!(e.contains("containerType"), "{e}");
        }
        let shell = PoolSpec::parse(&json!({"containerType": "Shell"}), None).unwrap();
        // A PATCH without containerType keeps it; one that changes it is refused.
        let same = PoolSpec::parse(
            &json!({"scaleConfiguration": {"maxConcurrentSessions": 3}}),
            Some(&shell),
        )
        .unwrap();
        assert_eq!(same.container_type, ContainerType::Shell);
        assert!(PoolSpec::parse(&json!({"containerType": "NodeLTS"}), Some(&shell)).is_err());
    }

    #[test]
    fn patch_merges() {
        let base = PoolSpec::parse(
            &json!({"scaleConfiguration": {"maxConcurrentSessions": 5, "readySessionInstances": 2}}),
            None,
        )
        .unwrap();
        let p = PoolSpec::parse(
            &json!({"scaleConfiguration": {"readySessionInstances": 4}}),
            Some(&base),
        )
        .unwrap();
        assert_eq!((p.max_concurrent, p.ready), (5, 4));
    }

    fn custom_props() -> Value {
        json!({
            "containerType": "CustomContainer",
            "scaleConfiguration": {"maxConcurrentSessions": 10, "readySessionInstances": 5},
            "secrets": [{"name": "s1", "value": "v1"}, {"name": "reg", "value": "pw"}],
            "customContainerTemplate": {
                "containers": [{"name": "c", "image": "r/i:1", "env": [{"name": "B", "secretRef": "s1"}]}],
                "ingress": {"targetPort": 8080},
                "registryCredentials": {"server": "r", "username": "u", "passwordSecretRef": "reg"}
            },
            "workloadProfileName": "Consumption",
            "managedIdentitySettings": null
        })
    }

    #[test]
    fn custom_pools() {
        let p = PoolSpec::parse(&custom_props(), None).unwrap();
        assert_eq!(p.container_type, ContainerType::CustomContainer);
        assert_eq!(p.custom.as_ref().unwrap().target_port, 8080);
        assert!(p.check_custom().is_ok());
        // GET view: names only; stored form: sealed values (here none yet) and no plain ones.
        let view = p.to_properties("2025-10-02-preview");
        assert_eq!(view["secrets"], json!([{"name": "s1"}, {"name": "reg"}]));
        assert!(!p.to_stored().to_string().contains("\"v1\""));
        assert_eq!(view["runtimeClassName"], "runc");
        // OnContainerExit: custom pools only, maxAlive defaults to the CLI's 3600.
        let mut v = custom_props();
        v["dynamicPoolConfiguration"] = json!({"lifecycleConfiguration": {"lifecycleType": "OnContainerExit", "maxAlivePeriodInSeconds": null, "cooldownPeriodInSeconds": null}});
        let e = PoolSpec::parse(&v, None).unwrap();
        assert_eq!(
            (e.lifecycle, e.max_alive_secs),
            (Lifecycle::OnContainerExit, Some(DEFAULT_MAX_ALIVE))
        );
        // PATCH replaces secrets wholesale; a secretRef to a dropped secret is refused.
        let e = PoolSpec::parse(
            &json!({"secrets": [{"name": "reg", "value": "pw2"}]}),
            Some(&p),
        )
        .unwrap_err();
        assert!(e.contains("'s1'"), "{e}");
        let q = PoolSpec::parse(
            &json!({"secrets": [{"name": "s1"}, {"name": "reg"}, {"name": "new", "value": "x"}]}),
            Some(&p),
        )
        .unwrap();
        assert_eq!(q.secrets.len(), 3);
        // null = absent: a PATCH with secrets null keeps them.
        let q = PoolSpec::parse(
            &json!({"secrets": null, "customContainerTemplate": null}),
            Some(&p),
        )
        .unwrap();
        assert_eq!((q.secrets.len(), q.custom.is_some()), (2, true));
        // The warm-pool rule.
        for (max, ready) in [(10, 0), (10, 10), (1, 0)] {
            let mut v = custom_props();
            v["scaleConfiguration"] =
                json!({"maxConcurrentSessions": max, "readySessionInstances": ready});
            let p = PoolSpec::parse(&v, None).unwrap();
            assert_eq!(
                p.check_custom().unwrap_err().0,
                "SessionPoolInvalidReadySessionInstances"
            );
        }
        let mut v = custom_props();
        v["scaleConfiguration"] = Value::Null;
        assert_eq!(PoolSpec::parse(&v, None).unwrap().ready, 1);
        // Templates only for custom pools; runtimeClassName too; GpuBase refused.
        assert!(PoolSpec::parse(&json!({"containerType": "PythonLTS", "customContainerTemplate": custom_props()["customContainerTemplate"]}), None).is_err());
        assert!(PoolSpec::parse(&json!({"containerType": "GpuBase"}), None).is_err());
        assert!(ContainerType::CustomContainer.is_supported(true));
        assert!(!ContainerType::CustomContainer.is_supported(false));
        assert!(!ContainerType::GpuBase.is_supported(true));
        // A stored pool (values sealed) reads back the same.
        let mut sealed = p.clone();
        for x in &mut sealed.secrets {
            x.value = None;
            x.sealed = Some(format!("sealed-{}", x.name));
        }
        assert_eq!(PoolSpec::parse(&sealed.to_stored(), None).unwrap(), sealed);
    }
}
