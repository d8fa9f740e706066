//! `properties.customContainerTemplate` and `properties.secrets` of a `CustomContainer` pool,
//! in every shape the API has had (`registryCredentials.registryServer` of 2024-02-02-preview
//! and `server` later; probes from 2025-02-02-preview), with explicit `null`s read as absent.
//!
//! Secrets: a request carries `{name, value}`; the provider seals each value (the store only
//! ever holds `{name, sealed}`) and GET answers names only. An entry without a value keeps the
//! sealed value the pool already has under that name (what the CLI's update path sends).

use crate::container::RuntimeClass;
use serde_json::{Map, Value, json};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeType {
    Liveness,
    Startup,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    Http {
        path: String,
        port: u16,
        host: Option<String>,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp {
        port: u16,
        host: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub kind: ProbeType,
    pub action: ProbeAction,
    pub failure_threshold: u32,
    pub initial_delay_secs: u32,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub termination_grace_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub secret_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerDef {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub cpu: Option<f64>,
    /// As given ("250Mb", "0.5Gi"), and in bytes.
    pub memory: Option<String>,
    pub memory_bytes: Option<u64>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegistryCredentials {
    pub server: String,
    pub username: Option<String>,
    pub password_secret_ref: Option<String>,
    pub identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomTemplate {
    pub containers: Vec<ContainerDef>,
    pub target_port: u16,
    pub registry: Option<RegistryCredentials>,
}

/// A pool secret as stored: its name and its value sealed by the provider (base64). `value`
/// is only ever set between parsing a request and sealing it.
#[derive(Clone, PartialEq)]
pub struct PoolSecret {
    pub name: String,
    pub value: Option<String>,
    pub sealed: Option<String>,
}

impl std::fmt::Debug for PoolSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSecret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let m = v.as_object()?;
    m.get(key)
        .or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn opt_str(v: &Value, key: &str, path: &str) -> Result<Option<String>, String> {
    match get_ci(v, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("'{path}.{key}' must be a string.")),
    }
}

fn req_str(v: &Value, key: &str, path: &str) -> Result<String, String> {
    opt_str(v, key, path)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("'{path}.{key}' is required."))
}

fn str_list(v: &Value, key: &str, path: &str) -> Result<Vec<String>, String> {
    match get_ci(v, key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("'{path}.{key}' must be an array of strings."))
            })
            .collect(),
        Some(_) => Err(format!("'{path}.{key}' must be an array of strings.")),
    }
}

fn int_in(v: &Value, key: &str, path: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
    match get_ci(v, key) {
        None => Ok(None),
        Some(x) => {
            let n = x
                .as_i64()
                .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| format!("'{path}.{key}' must be an integer."))?;
            if n < min || n > max {
                return Err(format!(
                    "'{path}.{key}' must be between {min} and {max}; got {n}."
                ));
            }
            Ok(Some(n))
        }
    }
}

fn port(v: &Value, key: &str, path: &str) -> Result<Option<u16>, String> {
    Ok(int_in(v, key, path, 1, 65535)?.map(|n| n as u16))
}

/// Memory in bytes: Kubernetes quantities (`Gi`, `Mi`, `Ki`, `G`, `M`, `K`) and the `Gb`/`Mb`
/// spellings of the API's examples (read as binary units, as Azure's ACA docs use them), or a
/// plain byte count.
pub fn parse_memory(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => 1.0,
        "ki" | "kb" | "k" => 1024.0,
        "mi" | "mb" | "m" => 1024.0 * 1024.0,
        "gi" | "gb" | "g" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tb" | "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let b = n * mult;
    (1.0..1e15).contains(&b).then_some(b as u64)
}

fn parse_probe(v: &Value, path: &str) -> Result<Probe, String> {
    if !v.is_object() {
        return Err(format!("'{path}' must be an object."));
    }
    let kind = match opt_str(v, "type", path)?.as_deref().map(str::trim) {
        Some(t) if t.eq_ignore_ascii_case("liveness") => ProbeType::Liveness,
        Some(t) if t.eq_ignore_ascii_case("startup") => ProbeType::Startup,
        Some(t) if t.eq_ignore_ascii_case("readiness") => {
            return Err(format!(
                "'{path}.type' Readiness is not supported in sessions; use Liveness or Startup."
            ));
        }
        Some(t) => {
            return Err(format!(
                "'{path}.type' must be one of Liveness, Startup; got '{t}'."
            ));
        }
        None => return Err(format!("'{path}.type' is required.")),
    };
    let http = get_ci(v, "httpGet");
    let tcp = get_ci(v, "tcpSocket");
    let action = match (http, tcp) {
        (Some(h), None) => {
            let p = format!("{path}.httpGet");
            if !h.is_object() {
                return Err(format!("'{p}' must be an object."));
            }
            let port = port(h, "port", &p)?.ok_or_else(|| format!("'{p}.port' is required."))?;
            let mut path_s = opt_str(h, "path", &p)?.unwrap_or_else(|| "/".into());
            if !path_s.starts_with('/') {
                path_s.insert(0, '/');
            }
            let https = match opt_str(h, "scheme", &p)?.as_deref().map(str::trim) {
                None => false,
                Some(s) if s.eq_ignore_ascii_case("http") => false,
                Some(s) if s.eq_ignore_ascii_case("https") => true,
                Some(s) => {
                    return Err(format!(
                        "'{p}.scheme' must be one of HTTP, HTTPS; got '{s}'."
                    ));
                }
            };
            let mut headers = vec![];
            match get_ci(h, "httpHeaders") {
                None => {}
                Some(Value::Array(a)) => {
                    for (i, x) in a.iter().enumerate() {
                        let hp = format!("{p}.httpHeaders[{i}]");
                        headers.push((
                            req_str(x, "name", &hp)?,
                            opt_str(x, "value", &hp)?.unwrap_or_default(),
                        ));
                    }
                }
                Some(_) => return Err(format!("'{p}.httpHeaders' must be an array.")),
            }
            ProbeAction::Http {
                path: path_s,
                port,
                host: opt_str(h, "host", &p)?,
                headers,
                https,
            }
        }
        (None, Some(t)) => {
            let p = format!("{path}.tcpSocket");
            if !t.is_object() {
                return Err(format!("'{p}' must be an object."));
            }
            ProbeAction::Tcp {
                port: port(t, "port", &p)?.ok_or_else(|| format!("'{p}.port' is required."))?,
                host: opt_str(t, "host", &p)?,
            }
        }
        (Some(_), Some(_)) => {
            return Err(format!(
                "'{path}' must have one of httpGet or tcpSocket, not both."
            ));
        }
        (None, None) => return Err(format!("'{path}' needs httpGet or tcpSocket.")),
    };
    if let Some(s) = int_in(v, "successThreshold", path, 1, 10)?
        && s != 1
    {
        return Err(format!(
            "'{path}.successThreshold' must be 1 for liveness and startup probes."
        ));
    }
    Ok(Probe {
        kind,
        action,
        failure_threshold: int_in(v, "failureThreshold", path, 1, 10)?.unwrap_or(3) as u32,
        initial_delay_secs: int_in(v, "initialDelaySeconds", path, 0, 60)?.unwrap_or(0) as u32,
        period_secs: int_in(v, "periodSeconds", path, 1, 240)?.unwrap_or(10) as u32,
        timeout_secs: int_in(v, "timeoutSeconds", path, 1, 240)?.unwrap_or(1) as u32,
        termination_grace_secs: int_in(v, "terminationGracePeriodSeconds", path, 0, 3600)?
            .map(|n| n as u64),
    })
}

fn parse_container(v: &Value, path: &str) -> Result<ContainerDef, String> {
    if !v.is_object() {
        return Err(format!("'{path}' must be an object."));
    }
    let image = req_str(v, "image", path)?;
    let name = opt_str(v, "name", path)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "main".into());
    let mut env: Vec<EnvVar> = vec![];
    match get_ci(v, "env") {
        None => {}
        Some(Value::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                let p = format!("{path}.env[{i}]");
                let name = req_str(e, "name", &p)?;
                if name.contains('=') || name.contains('\0') {
                    return Err(format!("'{p}.name' must not contain '=' or NUL."));
                }
                let value = opt_str(e, "value", &p)?;
                let secret_ref = opt_str(e, "secretRef", &p)?.filter(|s| !s.trim().is_empty());
                if value.is_some() && secret_ref.is_some() {
                    return Err(format!("'{p}' has both 'value' and 'secretRef'; give one."));
                }
                if value.as_deref().is_some_and(|v| v.contains('\0')) {
                    return Err(format!("'{p}.value' must not contain NUL."));
                }
                if env.iter().any(|x| x.name == name) {
                    return Err(format!("'{p}.name' '{name}' is given twice."));
                }
                env.push(EnvVar {
                    name,
                    value,
                    secret_ref,
                });
            }
        }
        Some(_) => return Err(format!("'{path}.env' must be an array.")),
    }
    let (mut cpu, mut memory, mut memory_bytes) = (None, None, None);
    match get_ci(v, "resources") {
        None => {}
        Some(r @ Value::Object(_)) => {
            let p = format!("{path}.resources");
            if let Some(c) = get_ci(r, "cpu") {
                let c = c
                    .as_f64()
                    .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| format!("'{p}.cpu' must be a number (cores, e.g. 0.5)."))?;
                if !(c > 0.0 && c <= 64.0) {
                    return Err(format!("'{p}.cpu' must be more than 0 and at most 64."));
                }
                cpu = Some(c);
            }
            if let Some(m) = opt_str(r, "memory", &p)? {
                let b = parse_memory(&m).ok_or_else(|| {
                    format!(
                        "'{p}.memory' '{m}' is not a memory size; use e.g. 250Mb, 0.5Gi or 1Gi."
                    )
                })?;
                if b < 16 << 20 {
                    return Err(format!("'{p}.memory' must be at least 16Mi."));
                }
                memory = Some(m);
                memory_bytes = Some(b);
            }
        }
        Some(_) => return Err(format!("'{path}.resources' must be an object.")),
    }
    let mut probes: Vec<Probe> = vec![];
    match get_ci(v, "probes") {
        None => {}
        Some(Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                let p = parse_probe(x, &format!("{path}.probes[{i}]"))?;
                if probes.iter().any(|q| q.kind == p.kind) {
                    return Err(format!(
                        "'{path}.probes' has two {:?} probes; one of each type is allowed.",
                        p.kind
                    ));
                }
                probes.push(p);
            }
        }
        Some(_) => return Err(format!("'{path}.probes' must be an array.")),
    }
    Ok(ContainerDef {
        name,
        image,
        command: str_list(v, "command", path)?,
        args: str_list(v, "args", path)?,
        env,
        cpu,
        memory,
        memory_bytes,
        probes,
    })
}

impl CustomTemplate {
    /// Parses `properties.customContainerTemplate` (an object; the caller treats null as
    /// absent).
    pub fn parse(v: &Value) -> Result<CustomTemplate, String> {
        let path = "properties.customContainerTemplate";
        if !v.is_object() {
            return Err(format!("'{path}' must be an object."));
        }
        let containers = match get_ci(v, "containers") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, c)| parse_container(c, &format!("{path}.containers[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(_)) | None => {
                return Err(format!(
                    "'{path}.containers' is required: one container with its 'image'."
                ));
            }
            Some(_) => return Err(format!("'{path}.containers' must be an array.")),
        };
        if containers.len() > 1 {
            return Err(format!(
                "'{path}.containers' has {} containers; Cloister runs one container per session.",
                containers.len()
            ));
        }
        let ingress = get_ci(v, "ingress");
        let target_port = match ingress {
            Some(i) if i.is_object() => port(i, "targetPort", &format!("{path}.ingress"))?,
            Some(_) => return Err(format!("'{path}.ingress' must be an object.")),
            None => None,
        }
        .ok_or_else(|| {
            format!("'{path}.ingress.targetPort' is required (the port the container serves on).")
        })?;
        let registry = match get_ci(v, "registryCredentials") {
            None => None,
            Some(r @ Value::Object(_)) => {
                let p = format!("{path}.registryCredentials");
                let server = opt_str(r, "server", &p)?
                    .or(opt_str(r, "registryServer", &p)?)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("'{p}.server' is required."))?;
                let username = opt_str(r, "username", &p)?.filter(|s| !s.is_empty());
                let password_secret_ref =
                    opt_str(r, "passwordSecretRef", &p)?.filter(|s| !s.is_empty());
                let identity = opt_str(r, "identity", &p)?.filter(|s| !s.is_empty());
                if identity.is_some() && (username.is_some() || password_secret_ref.is_some()) {
                    return Err(format!(
                        "'{p}' has both 'identity' and 'username'/'passwordSecretRef'; give one."
                    ));
                }
                if password_secret_ref.is_some() != username.is_some() {
                    return Err(format!(
                        "'{p}' needs both 'username' and 'passwordSecretRef' (or neither)."
                    ));
                }
                Some(RegistryCredentials {
                    server,
                    username,
                    password_secret_ref,
                    identity,
                })
            }
            Some(_) => return Err(format!("'{path}.registryCredentials' must be an object.")),
        };
        Ok(CustomTemplate {
            containers,
            target_port,
            registry,
        })
    }

    /// The secret names this template refers to (env `secretRef`s, `passwordSecretRef`).
    pub fn secret_refs(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for (ci, c) in self.containers.iter().enumerate() {
            for (i, e) in c.env.iter().enumerate() {
                if let Some(s) = &e.secret_ref {
                    out.push((
                        format!(
                            "properties.customContainerTemplate.containers[{ci}].env[{i}].secretRef"
                        ),
                        s.clone(),
                    ));
                }
            }
        }
        if let Some(s) = self
            .registry
            .as_ref()
            .and_then(|r| r.password_secret_ref.clone())
        {
            out.push((
                "properties.customContainerTemplate.registryCredentials.passwordSecretRef".into(),
                s,
            ));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let mut o = json!({"name": c.name, "image": c.image});
                if !c.command.is_empty() {
                    o["command"] = json!(c.command);
                }
                if !c.args.is_empty() {
                    o["args"] = json!(c.args);
                }
                if !c.env.is_empty() {
                    o["env"] = Value::Array(
                        c.env
                            .iter()
                            .map(|e| {
                                let mut x = json!({"name": e.name});
                                if let Some(v) = &e.value {
                                    x["value"] = json!(v);
                                }
                                if let Some(s) = &e.secret_ref {
                                    x["secretRef"] = json!(s);
                                }
                                x
                            })
                            .collect(),
                    );
                }
                if c.cpu.is_some() || c.memory.is_some() {
                    let mut r = Map::new();
                    if let Some(x) = c.cpu {
                        r.insert("cpu".into(), json!(x));
                    }
                    if let Some(m) = &c.memory {
                        r.insert("memory".into(), json!(m));
                    }
                    o["resources"] = Value::Object(r);
                }
                if !c.probes.is_empty() {
                    o["probes"] = Value::Array(c.probes.iter().map(probe_json).collect());
                }
                o
            })
            .collect();
        let mut v = json!({"containers": containers, "ingress": {"targetPort": self.target_port}});
        if let Some(r) = &self.registry {
            let mut o = json!({"server": r.server});
            if let Some(u) = &r.username {
                o["username"] = json!(u);
            }
            if let Some(p) = &r.password_secret_ref {
                o["passwordSecretRef"] = json!(p);
            }
            if let Some(i) = &r.identity {
                o["identity"] = json!(i);
            }
            v["registryCredentials"] = o;
        }
        v
    }
}

fn probe_json(p: &Probe) -> Value {
    let mut o = json!({
        "type": match p.kind { ProbeType::Liveness => "Liveness", ProbeType::Startup => "Startup" },
        "failureThreshold": p.failure_threshold,
        "initialDelaySeconds": p.initial_delay_secs,
        "periodSeconds": p.period_secs,
        "successThreshold": 1,
        "timeoutSeconds": p.timeout_secs,
    });
    if let Some(t) = p.termination_grace_secs {
        o["terminationGracePeriodSeconds"] = json!(t);
    }
    match &p.action {
        ProbeAction::Http {
            path,
            port,
            host,
            headers,
            https,
        } => {
            let mut h = json!({"path": path, "port": port, "scheme": if *https { "HTTPS" } else { "HTTP" }});
            if let Some(x) = host {
                h["host"] = json!(x);
            }
            if !headers.is_empty() {
                h["httpHeaders"] = Value::Array(
                    headers
                        .iter()
                        .map(|(n, v)| json!({"name": n, "value": v}))
                        .collect(),
                );
            }
            o["httpGet"] = h;
        }
        ProbeAction::Tcp { port, host } => {
            let mut t = json!({ "port": port });
            if let Some(x) = host {
                t["host"] = json!(x);
            }
            o["tcpSocket"] = t;
        }
    }
    o
}

/// Parses `properties.secrets` (an array; null = absent, handled by the caller).
pub fn parse_secrets(v: &Value) -> Result<Vec<PoolSecret>, String> {
    let Value::Array(a) = v else {
        return Err("'properties.secrets' must be an array of {name, value}.".into());
    };
    let mut out: Vec<PoolSecret> = vec![];
    for (i, s) in a.iter().enumerate() {
        let p = format!("properties.secrets[{i}]");
        if !s.is_object() {
            return Err(format!("'{p}' must be an object."));
        }
        let name = req_str(s, "name", &p)?;
        let ok = name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "'{p}.name' '{name}' is not valid: use lower-case letters, digits, '-' and '.', starting with a letter or digit."
            ));
        }
        if out.iter().any(|x| x.name == name) {
            return Err(format!("'{p}.name' '{name}' is given twice."));
        }
        let value = opt_str(s, "value", &p)?;
        let sealed = opt_str(s, "sealed", &p)?;
        out.push(PoolSecret {
            name,
            value,
            sealed,
        });
    }
    Ok(out)
}

/// `runtimeClassName` (a Cloister extension): `runc` (default), `runsc` or `gvisor`.
pub fn parse_runtime_class(v: &Value) -> Result<RuntimeClass, String> {
    match v {
        Value::String(s) => RuntimeClass::parse(s).ok_or_else(|| {
            format!("'properties.runtimeClassName' must be one of runc, runsc, gvisor; got '{s}'.")
        }),
        _ => Err("'properties.runtimeClassName' must be a string.".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"containers": [{"name": "c", "image": "r/i:1"}], "ingress": {"targetPort": 8080}})
    }

    #[test]
    fn memory_spellings() {
        assert_eq!(parse_memory("250Mb"), Some(250 << 20));
        assert_eq!(parse_memory("0.5Gi"), Some(512 << 20));
        assert_eq!(parse_memory("1Gi"), Some(1 << 30));
        assert_eq!(parse_memory("1gb"), Some(1 << 30));
        assert_eq!(parse_memory("2048"), Some(2048));
        for bad in ["", "Gi", "1Xb", "-1Gi", "1e3Gi", "abc"] {
            assert_eq!(parse_memory(bad), None, "{bad}");
        }
    }

    #[test]
    fn full_template_round_trips() {
        let v = json!({
            "containers": [{
                "name": "app", "image": "127.0.0.1:5000/app:1",
                "command": ["python3"], "args": ["-u", "/srv/s.py"],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "secretRef": "s1"}, {"name": "C", "value": null, "secretRef": "s2"}],
                "resources": {"cpu": 0.5, "memory": "0.5Gi"},
                "probes": [
                    {"type": "Startup", "httpGet": {"path": "health", "port": 8080, "httpHeaders": [{"name": "X", "value": "y"}]}, "failureThreshold": 5, "periodSeconds": 1},
                    {"type": "liveness", "tcpSocket": {"port": 8080}, "initialDelaySeconds": 2}
                ]
            }],
            "ingress": {"targetPort": 8080},
            "registryCredentials": {"registryServer": "127.0.0.1:5000", "username": "u", "passwordSecretRef": "reg"}
        });
        let t = CustomTemplate::parse(&v).unwrap();
        let c = &t.containers[0];
        assert_eq!(c.memory_bytes, Some(512 << 20));
        assert_eq!(c.probes.len(), 2);
        assert_eq!(c.probes[0].failure_threshold, 5);
        assert!(matches!(&c.probes[0].action, ProbeAction::Http { path, .. } if path == "/health"));
        assert_eq!(c.probes[1].period_secs, 10);
        assert_eq!(t.registry.as_ref().unwrap().server, "127.0.0.1:5000");
        let refs: Vec<String> = t.secret_refs().into_iter().map(|x| x.1).collect();
        assert_eq!(refs, ["s1", "s2", "reg"]);
        // The output uses the newer `server` name and parses back to the same template.
        let out = t.to_json();
        assert_eq!(out["registryCredentials"]["server"], "127.0.0.1:5000");
        assert_eq!(CustomTemplate::parse(&out).unwrap(), t);
    }

    #[test]
    fn nulls_are_absent() {
        let v = json!({"containers": [{"name": null, "image": "i", "command": null, "args": null, "env": null, "resources": null, "probes": null}],
                       "ingress": {"targetPort": 80}, "registryCredentials": null});
        let t = CustomTemplate::parse(&v).unwrap();
        assert_eq!(t.containers[0].name, "main");
        assert!(t.registry.is_none());
        assert!(
            parse_secrets(&json!([{"name": "a", "value": null}])).unwrap()[0]
                .value
                .is_none()
        );
    }

    #[test]
    fn bad_templates_have_clear_messages() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"containers": [{"image": "i"}]}), "targetPort"),
            (
                json!({"containers": [], "ingress": {"targetPort": 1}}),
                "containers",
            ),
            (
                json!({"containers": [{"name": "x"}], "ingress": {"targetPort": 1}}),
                "image",
            ),
            (
                json!({"containers": [{"image": "i"}, {"image": "j"}], "ingress": {"targetPort": 1}}),
                "one container",
            ),
            (
                json!({"containers": [{"image": "i"}], "ingress": {"targetPort": 70000}}),
                "targetPort",
            ),
            (
                json!({"containers": [{"image": "i", "resources": {"memory": "lots"}}], "ingress": {"targetPort": 1}}),
                "memory",
            ),
            (
                json!({"containers": [{"image": "i", "resources": {"cpu": -1}}], "ingress": {"targetPort": 1}}),
                "cpu",
            ),
            (
                json!({"containers": [{"image": "i", "env": [{"name": "A", "value": "1", "secretRef": "s"}]}], "ingress": {"targetPort": 1}}),
                "both",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Readiness", "tcpSocket": {"port": 1}}]}], "ingress": {"targetPort": 1}}),
                "Readiness",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Startup"}]}], "ingress": {"targetPort": 1}}),
                "httpGet",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Startup", "tcpSocket": {"port": 1}, "failureThreshold": 11}]}], "ingress": {"targetPort": 1}}),
                "failureThreshold",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Startup", "tcpSocket": {"port": 1}, "successThreshold": 2}]}], "ingress": {"targetPort": 1}}),
                "successThreshold",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Startup", "tcpSocket": {"port": 1}}, {"type": "Startup", "tcpSocket": {"port": 2}}]}], "ingress": {"targetPort": 1}}),
                "two",
            ),
            (
                json!({"containers": [{"image": "i", "probes": [{"type": "Startup", "httpGet": {"port": 1, "scheme": "FTP"}}]}], "ingress": {"targetPort": 1}}),
                "scheme",
            ),
            (
                json!({"containers": [{"image": "i"}], "ingress": {"targetPort": 1}, "registryCredentials": {"username": "u"}}),
                "server",
            ),
            (
                json!({"containers": [{"image": "i"}], "ingress": {"targetPort": 1}, "registryCredentials": {"server": "s", "username": "u"}}),
                "passwordSecretRef",
            ),
            (
                json!({"containers": "x", "ingress": {"targetPort": 1}}),
                "array",
            ),
        ];
        for (v, needle) in cases {
            let e = CustomTemplate::parse(&v).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
        assert!(CustomTemplate::parse(&base()).is_ok());
        for bad in [
            json!({}),
            json!([{"name": "Upper", "value": "v"}]),
            json!([{"name": "a"}, {"name": "a"}]),
        ] {
            assert!(parse_secrets(&bad).is_err(), "{bad}");
        }
        assert!(parse_runtime_class(&json!("kata")).is_err());
        assert_eq!(
            parse_runtime_class(&json!("gVisor")).unwrap(),
            RuntimeClass::Runsc
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(port in proptest::num::i64::ANY, mem in ".{0,12}", cpu in proptest::num::f64::ANY) {
            let v = json!({"containers": [{"image": "i", "resources": {"cpu": cpu, "memory": mem}}], "ingress": {"targetPort": port}});
            let _ = CustomTemplate::parse(&v);
        }
    }
}

/// What a custom pool's sessions start: its template with the secrets it names opened.
#[derive(Clone, PartialEq)]
pub struct CustomLaunch {
    pub pool_id: String,
    pub template: CustomTemplate,
    pub runtime: RuntimeClass,
    pub egress: bool,
    /// `OnContainerExit`: a container that exits with status 0 ended its session normally
    /// (not a crash).
    pub exit_ends_session: bool,
    /// The pool's secrets (name, value), for env `secretRef`s. Never logged.
    pub secrets: Vec<(String, String)>,
    /// The registry login (username, password) from `passwordSecretRef`. Never passed into
    /// the container.
    pub login: Option<(String, String)>,
}

impl fmt::Debug for CustomLaunch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomLaunch")
            .field("pool_id", &self.pool_id)
            .field("image", &self.template.containers.first().map(|c| &c.image))
            .field("runtime", &self.runtime)
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}
