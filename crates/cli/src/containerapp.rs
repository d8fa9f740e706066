//! `cloister containerapp sessionpool …` and `cloister containerapp session code-interpreter …`,
//! shaped like the Azure CLI's `az containerapp` commands.

use crate::profile::Session;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

/// The newest api-version, the one with Shell and NodeLTS pools (as the Azure CLI sends).
const POOL_API: &str = "2025-10-02-preview";
const DATA_API: &str = "2025-02-02-preview";

#[derive(Subcommand)]
pub enum ContainerappCmd {
    /// Session pools (like `az containerapp sessionpool`).
    #[command(subcommand)]
    Sessionpool(PoolCmd),
    /// Sessions in a pool (like `az containerapp session`).
    #[command(subcommand)]
    Session(SessionCmd),
}

#[derive(Args, Clone)]
pub struct PoolRef {
    #[arg(short = 'n', long)]
    name: String,
    #[arg(short = 'g', long)]
    resource_group: String,
    #[arg(long)]
    subscription: Option<String>,
}

#[derive(Args)]
pub struct PoolSettings {
    /// PythonLTS (the code interpreter, the default), Shell, NodeLTS or CustomContainer.
    #[arg(long)]
    container_type: Option<String>,
    /// maxConcurrentSessions.
    #[arg(long)]
    max_sessions: Option<u32>,
    /// readySessionInstances.
    #[arg(long)]
    ready_sessions: Option<u32>,
    /// Seconds a session may idle before it is deleted.
    #[arg(long)]
    cooldown_period: Option<u64>,
    /// Seconds a session may live at most.
    #[arg(long)]
    max_alive_period: Option<u64>,
    /// EgressDisabled (default) or EgressEnabled.
    #[arg(long)]
    network_status: Option<String>,
    /// User-assigned identity resource ids to attach.
    #[arg(long, num_args = 1..)]
    mi_user_assigned: Vec<String>,
    /// Give the pool a system-assigned identity.
    #[arg(long)]
    mi_system_assigned: bool,
    /// Identities (`system` or a resource id) whose tokens code in sessions may get.
    #[arg(long, num_args = 1..)]
    mi_in_sessions: Vec<String>,
    #[arg(short = 'l', long)]
    location: Option<String>,
    /// Timed (the default) or OnContainerExit (CustomContainer pools only).
    #[arg(long)]
    lifecycle_type: Option<String>,
    /// The environment's resource id (CustomContainer pools only).
    #[arg(long)]
    environment: Option<String>,
    #[command(flatten)]
    container: Box<ContainerFlags>,
}

/// The flags of `az containerapp sessionpool create|update` that shape a CustomContainer pool's
/// `customContainerTemplate` and `secrets`.
#[derive(Args, Default)]
pub struct ContainerFlags {
    /// The container image (`registry/repository:tag` or `…@sha256:…`).
    #[arg(long)]
    image: Option<String>,
    /// The container's name (default: the pool's name, lower-cased).
    #[arg(long)]
    container_name: Option<String>,
    /// CPU cores, e.g. 0.5.
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory, e.g. 1Gi or 250Mb.
    #[arg(long)]
    memory: Option<String>,
    /// Environment variables `name=value` or `name=secretref:<secret name>`.
    #[arg(long, num_args = 1..)]
    env_vars: Vec<String>,
    /// The command to run (overrides the image's entrypoint).
    #[arg(long, num_args = 1..)]
    command: Vec<String>,
    /// The command's arguments (override the image's cmd).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    args: Vec<String>,
    /// The port the container serves HTTP on (required for CustomContainer).
    #[arg(long)]
    target_port: Option<u16>,
    #[arg(long)]
    registry_server: Option<String>,
    #[arg(long)]
    registry_username: Option<String>,
    /// The registry password, or `secretref:<secret name>` for a secret given with --secrets.
    #[arg(long)]
    registry_password: Option<String>,
    /// The identity that pulls images: `system` or a user-assigned identity's resource id.
    #[arg(long)]
    registry_identity: Option<String>,
    /// Pool secrets `name=value` (referenced by env vars and the registry password).
    #[arg(long, num_args = 1..)]
    secrets: Vec<String>,
}

impl ContainerFlags {
    fn any(&self) -> bool {
        self.image.is_some()
            || self.container_name.is_some()
            || self.cpu.is_some()
            || self.memory.is_some()
            || !self.env_vars.is_empty()
            || !self.command.is_empty()
            || !self.args.is_empty()
            || self.target_port.is_some()
            || self.registry_server.is_some()
            || self.registry_username.is_some()
            || self.registry_password.is_some()
            || self.registry_identity.is_some()
    }
}

#[derive(Subcommand)]
pub enum PoolCmd {
    Create {
        #[command(flatten)]
        pool: PoolRef,
        #[command(flatten)]
        settings: PoolSettings,
    },
    Update {
        #[command(flatten)]
        pool: PoolRef,
        #[command(flatten)]
        settings: PoolSettings,
    },
    Show {
        #[command(flatten)]
        pool: PoolRef,
    },
    List {
        #[arg(short = 'g', long)]
        resource_group: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
    },
    Delete {
        #[command(flatten)]
        pool: PoolRef,
    },
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// The Python code interpreter.
    #[command(subcommand, name = "code-interpreter")]
    CodeInterpreter(CiCmd),
    /// Stops a session of a CustomContainer pool (`.management/stopSession`), freeing its slot.
    Stop {
        #[command(flatten)]
        s: SessionRef,
    },
    /// Shows a session of a CustomContainer pool (`.management/getSession`).
    Show {
        #[command(flatten)]
        s: SessionRef,
    },
    /// Lists the sessions of a CustomContainer pool (`.management/listSessions`).
    List {
        #[command(flatten)]
        pool: PoolRef,
    },
}

#[derive(Args, Clone)]
pub struct SessionRef {
    #[command(flatten)]
    pool: PoolRef,
    #[arg(long)]
    identifier: String,
}

#[derive(Subcommand)]
pub enum CiCmd {
    Execute {
        #[command(flatten)]
        s: SessionRef,
        /// The Python code to run.
        #[arg(long)]
        code: String,
        #[arg(long, default_value_t = 60)]
        timeout_in_seconds: u64,
    },
    UploadFile {
        #[command(flatten)]
        s: SessionRef,
        /// Local file to upload.
        #[arg(long)]
        file_path: std::path::PathBuf,
        /// Directory in /mnt/data.
        #[arg(long)]
        path: Option<String>,
    },
    ListFiles {
        #[command(flatten)]
        s: SessionRef,
        #[arg(long)]
        path: Option<String>,
    },
    ShowFile {
        #[command(flatten)]
        s: SessionRef,
        #[arg(long)]
        filename: String,
    },
    ShowFileContent {
        #[command(flatten)]
        s: SessionRef,
        #[arg(long)]
        filename: String,
    },
    DeleteFile {
        #[command(flatten)]
        s: SessionRef,
        #[arg(long)]
        filename: String,
    },
}

fn pool_id(s: &Session, p: &PoolRef) -> String {
    let sub = p
        .subscription
        .clone()
        .unwrap_or_else(|| s.profile.subscription.clone());
    format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.App/sessionPools/{}",
        p.resource_group, p.name
    )
}

/// The secret name the Azure CLI gives a registry password: the server with `:` → `-` and dots
/// removed, a hyphen, and the user name made DNS-1123-safe.
fn registry_secret_name(server: &str, user: &str) -> String {
    // (The Azure CLI replaces `:` before it looks for a scheme, so a server given as a URL ends
    // up in the name whole; here a scheme and path are dropped first.)
    let bare = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = bare.replace(':', "-");
    let user: String = user
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{}-{user}", host.replace('.', ""))
}

fn pairs(flag: &str, items: &[String]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = vec![];
    for it in items {
        let Some((k, v)) = it.split_once('=') else {
            bail!("{flag}: must be in format \"<name>=<value> <name>=<value> ...\"; got '{it}'");
        };
        if k.is_empty() {
            bail!("{flag}: a name is empty in '{it}'");
        }
        if out.iter().any(|(n, _)| n == k) {
            bail!("{flag}: duplicate name '{k}'; names must be unique");
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The lifecycle configuration as the Azure CLI infers it: a cooldown means `Timed`, a maximum
/// age `OnContainerExit` (CustomContainer pools only); neither on create means `Timed` with 300 s.
fn lifecycle_of(x: &PoolSettings, custom: bool, create: bool) -> Result<Option<Value>> {
    if x.cooldown_period.is_some() && x.max_alive_period.is_some() {
        bail!("--cooldown-period and --max-alive-period cannot be used together");
    }
    let kind = match x.lifecycle_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("Timed") => Some("Timed"),
        Some(t) if t.eq_ignore_ascii_case("OnContainerExit") => Some("OnContainerExit"),
        Some(t) => bail!("--lifecycle-type must be Timed or OnContainerExit; got '{t}'"),
        None if x.max_alive_period.is_some() => Some("OnContainerExit"),
        None if x.cooldown_period.is_some() || create => Some("Timed"),
        None => None,
    };
    let Some(kind) = kind else { return Ok(None) };
    if kind == "OnContainerExit" && !custom {
        bail!(
            "lifecycle type OnContainerExit (and --max-alive-period) is only for CustomContainer pools; use --cooldown-period"
        );
    }
    if kind == "Timed" && x.max_alive_period.is_some() {
        bail!("--max-alive-period goes with --lifecycle-type OnContainerExit, not Timed");
    }
    if kind == "OnContainerExit" && x.cooldown_period.is_some() {
        bail!("--cooldown-period goes with --lifecycle-type Timed, not OnContainerExit");
    }
    Ok(Some(if kind == "Timed" {
        json!({"lifecycleType": "Timed", "cooldownPeriodInSeconds": x.cooldown_period.unwrap_or(300), "maxAlivePeriodInSeconds": null})
    } else {
        json!({"lifecycleType": "OnContainerExit", "cooldownPeriodInSeconds": null, "maxAlivePeriodInSeconds": x.max_alive_period.unwrap_or(3600)})
    }))
}

/// `customContainerTemplate` and `secrets` from the flags, onto the template read back from the
/// pool on update (the Azure CLI re-sends the whole template when a container flag is given).
fn template_of(
    x: &PoolSettings,
    pool_name: &str,
    existing: Option<&Value>,
    secrets: &mut Vec<Value>,
) -> Result<Value> {
    let c = &x.container;
    let mut tpl = existing
        .and_then(|p| p.pointer("/properties/customContainerTemplate"))
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let containers = tpl["containers"].as_array().cloned().unwrap_or_default();
    let idx = match (&c.container_name, containers.len()) {
        (_, 0) => None,
        (None, 1) => Some(0),
        (None, _) => bail!("the pool has several containers: say which with --container-name"),
        (Some(n), _) => containers.iter().position(|k| {
            k["name"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(n))
        }),
    };
    let mut ctr = idx
        .map(|i| containers[i].clone())
        .unwrap_or_else(|| json!({}));
    if ctr.get("name").is_none_or(Value::is_null) {
        ctr["name"] = json!(
            c.container_name
                .clone()
                .unwrap_or_else(|| pool_name.to_lowercase())
        );
    }
    if let Some(i) = &c.image {
        ctr["image"] = json!(i);
    }
    if ctr.get("image").is_none_or(Value::is_null) {
        bail!("--image is required for a CustomContainer pool");
    }
    if !c.command.is_empty() {
        ctr["command"] = json!(c.command);
    }
    if !c.args.is_empty() {
        ctr["args"] = json!(c.args);
    }
    if c.cpu.is_some() || c.memory.is_some() {
        let mut r = ctr
            .get("resources")
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        if let Some(cpu) = c.cpu {
            r["cpu"] = json!(cpu);
        }
        if let Some(m) = &c.memory {
            r["memory"] = json!(m);
        }
        ctr["resources"] = r;
    } else if ctr.get("resources").is_none() {
        ctr["resources"] = Value::Null;
    }
    if !c.env_vars.is_empty() {
        let mut env = ctr["env"].as_array().cloned().unwrap_or_default();
        for (k, v) in pairs("--env-vars", &c.env_vars)? {
            let var = match v.strip_prefix("secretref:") {
                Some(r) => json!({"name": k, "secretRef": r}),
                None => json!({"name": k, "value": v}),
            };
            match env.iter_mut().find(|e| {
                e["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&k))
            }) {
                Some(e) => *e = var,
                None => env.push(var),
            }
        }
        ctr["env"] = json!(env);
    }
    let mut containers = containers;
    match idx {
        Some(i) => containers[i] = ctr,
        None => containers.push(ctr),
    }
    tpl["containers"] = json!(containers);
    if let Some(p) = c.target_port {
        tpl["ingress"] = json!({"targetPort": p});
    }
    if tpl
        .pointer("/ingress/targetPort")
        .is_none_or(Value::is_null)
    {
        bail!("--target-port is required for a CustomContainer pool");
    }
    if let Some(server) = &c.registry_server {
        let mut reg = json!({"server": server});
        if let Some(id) = &c.registry_identity {
            if c.registry_username.is_some() || c.registry_password.is_some() {
                bail!(
                    "--registry-identity cannot be used with --registry-username or --registry-password"
                );
            }
            reg["identity"] = json!(id);
        } else {
            let (Some(user), Some(pass)) = (&c.registry_username, &c.registry_password) else {
                bail!(
                    "--registry-server needs --registry-username and --registry-password, or --registry-identity"
                );
            };
            reg["username"] = json!(user);
            let name = match pass.strip_prefix("secretref:") {
                Some(r) => {
                    if r.is_empty() {
                        bail!(
                            "--registry-password: 'secretref:' must be followed by a secret's name"
                        );
                    }
                    if !secrets.iter().any(|s| {
                        s["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case(r))
                    }) {
                        bail!(
                            "Registry password secret with name '{r}' does not exist. Add the secret using --secrets"
                        );
                    }
                    r.to_string()
                }
                None => {
                    let name = registry_secret_name(server, user);
                    match secrets.iter().find(|s| {
                        s["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
                    }) {
                        Some(s) if s["value"].as_str() != Some(pass.as_str()) => bail!(
                            "Found secret with name \"{name}\" but value does not equal the supplied registry password."
                        ),
                        Some(_) => {}
                        None => {
                            eprintln!("Adding registry password as a secret with name \"{name}\"");
                            secrets.push(json!({"name": name, "value": pass}));
                        }
                    }
                    name
                }
            };
            reg["passwordSecretRef"] = json!(name);
        }
        tpl["registryCredentials"] = reg;
    } else if c.registry_username.is_some()
        || c.registry_password.is_some()
        || c.registry_identity.is_some()
    {
        bail!("the registry flags need --registry-server");
    } else if tpl.get("registryCredentials").is_none() {
        tpl["registryCredentials"] = Value::Null;
    }
    Ok(tpl)
}

fn body_of(
    x: &PoolSettings,
    create: bool,
    pool_name: &str,
    existing: Option<&Value>,
) -> Result<Value> {
    let mut props = json!({});
    let types = ["PythonLTS", "CustomContainer", "NodeLTS", "Shell"];
    let ctype = match &x.container_type {
        Some(t) => Some(
            *types
                .iter()
                .find(|k| k.eq_ignore_ascii_case(t))
                .with_context(|| {
                    format!(
                        "--container-type must be one of {}; got '{t}'",
                        types.join(", ")
                    )
                })?,
        ),
        None if create => Some("PythonLTS"),
        None => None,
    };
    let custom = ctype.or_else(|| {
        existing
            .and_then(|p| p.pointer("/properties/containerType"))
            .and_then(Value::as_str)
            .and_then(|t| types.iter().find(|k| k.eq_ignore_ascii_case(t)).copied())
    }) == Some("CustomContainer");
    if let Some(t) = ctype {
        props["containerType"] = json!(t);
        props["poolManagementType"] = json!("Dynamic");
    }
    if let Some(e) = &x.environment {
        if !custom {
            bail!("--environment is only for CustomContainer pools");
        }
        props["environmentId"] = json!(e);
    }
    let mut scale = json!({});
    if let Some(n) = x.max_sessions {
        scale["maxConcurrentSessions"] = json!(n);
    }
    if let Some(n) = x.ready_sessions {
        scale["readySessionInstances"] = json!(n);
    }
    if create && custom {
        // The Azure CLI's defaults for a custom pool.
        scale
            .as_object_mut()
            .unwrap()
            .entry("maxConcurrentSessions")
            .or_insert(json!(10));
        scale
            .as_object_mut()
            .unwrap()
            .entry("readySessionInstances")
            .or_insert(json!(5));
    }
    if scale.as_object().is_some_and(|m| !m.is_empty()) {
        props["scaleConfiguration"] = scale;
    }
    if let Some(lc) = lifecycle_of(x, custom, create)? {
        props["dynamicPoolConfiguration"] = json!({ "lifecycleConfiguration": lc });
    }
    if let Some(n) = &x.network_status {
        props["sessionNetworkConfiguration"] = json!({ "status": n });
    } else if create {
        props["sessionNetworkConfiguration"] = json!({ "status": "EgressDisabled" });
    }
    if !x.mi_in_sessions.is_empty() {
        props["managedIdentitySettings"] = Value::Array(
            x.mi_in_sessions
                .iter()
                .map(|i| json!({"identity": i, "lifecycle": "Main"}))
                .collect(),
        );
    }
    let mut secrets: Vec<Value> = vec![];
    for (k, v) in pairs("--secrets", &x.container.secrets)? {
        secrets.push(json!({"name": k, "value": v}));
    }
    if custom {
        if create || x.container.any() {
            props["customContainerTemplate"] = template_of(x, pool_name, existing, &mut secrets)?;
        }
    } else if create {
        props["customContainerTemplate"] = Value::Null;
    }
    if !custom && (x.container.any() || !x.container.secrets.is_empty()) {
        bail!(
            "--image, --target-port, the registry flags and --secrets are for CustomContainer pools"
        );
    }
    if !secrets.is_empty() {
        props["secrets"] = json!(secrets);
    } else if create {
        props["secrets"] = Value::Null;
    }
    let mut body = json!({ "properties": props });
    if create {
        body["location"] = json!(x.location.clone().unwrap_or("local".into()));
    } else if let Some(l) = &x.location {
        body["location"] = json!(l);
    }
    let mut users = x.mi_user_assigned.clone();
    let mut system = x.mi_system_assigned;
    match x.container.registry_identity.as_deref() {
        Some(i) if i.eq_ignore_ascii_case("system") => system = true,
        Some(i) if !users.iter().any(|u| u.eq_ignore_ascii_case(i)) => users.push(i.to_string()),
        _ => {}
    }
    if system || !users.is_empty() {
        let t = match (system, !users.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            _ => "UserAssigned",
        };
        let mut ident = json!({ "type": t });
        if !users.is_empty() {
            let m: serde_json::Map<String, Value> =
                users.iter().map(|u| (u.clone(), json!({}))).collect();
            ident["userAssignedIdentities"] = Value::Object(m);
        }
        body["identity"] = ident;
    }
    Ok(body)
}

pub async fn run(s: &mut Session, c: ContainerappCmd) -> Result<Value> {
    match c {
        ContainerappCmd::Sessionpool(p) => pool(s, p).await,
        ContainerappCmd::Session(SessionCmd::CodeInterpreter(ci)) => code_interpreter(s, ci).await,
        ContainerappCmd::Session(SessionCmd::Stop { s: r }) => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/.management/stopSession?api-version={POOL_API}&identifier={}",
                enc(&r.identifier)
            );
            let text = send(s.http.post(url).bearer_auth(tok))
                .await?
                .text()
                .await?;
            Ok(Value::String(text))
        }
        ContainerappCmd::Session(SessionCmd::Show { s: r }) => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/.management/getSession?api-version={POOL_API}&identifier={}",
                enc(&r.identifier)
            );
            Ok(send(s.http.post(url).bearer_auth(tok))
                .await?
                .json()
                .await?)
        }
        ContainerappCmd::Session(SessionCmd::List { pool }) => {
            let r = SessionRef {
                pool,
                identifier: String::new(),
            };
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!("{ep}/.management/listSessions?api-version={POOL_API}");
            Ok(send(s.http.post(url).bearer_auth(tok))
                .await?
                .json()
                .await?)
        }
    }
}

async fn pool(s: &mut Session, c: PoolCmd) -> Result<Value> {
    match c {
        PoolCmd::Create { pool, settings } => {
            let id = pool_id(s, &pool);
            s.call(
                Method::PUT,
                &format!("{id}?api-version={POOL_API}"),
                Some(body_of(&settings, true, &pool.name, None)?),
            )
            .await
        }
        PoolCmd::Update { pool, settings } => {
            let id = pool_id(s, &pool);
            // As the Azure CLI: the pool is read first, and a container, registry or port flag
            // re-sends the whole template.
            let existing = s
                .call(Method::GET, &format!("{id}?api-version={POOL_API}"), None)
                .await?;
            let body = body_of(&settings, false, &pool.name, Some(&existing))?;
            s.call(
                Method::PATCH,
                &format!("{id}?api-version={POOL_API}"),
                Some(body),
            )
            .await
        }
        PoolCmd::Show { pool } => {
            let id = pool_id(s, &pool);
            s.call(Method::GET, &format!("{id}?api-version={POOL_API}"), None)
                .await
        }
        PoolCmd::List {
            resource_group,
            subscription,
        } => {
            let sub = subscription.unwrap_or_else(|| s.profile.subscription.clone());
            let path = match resource_group {
                Some(g) => format!(
                    "/subscriptions/{sub}/resourceGroups/{g}/providers/Microsoft.App/sessionPools?api-version={POOL_API}"
                ),
                None => format!(
                    "/subscriptions/{sub}/providers/Microsoft.App/sessionPools?api-version={POOL_API}"
                ),
            };
            Ok(s.call(Method::GET, &path, None).await?["value"].clone())
        }
        PoolCmd::Delete { pool } => {
            let id = pool_id(s, &pool);
            s.call(
                Method::DELETE,
                &format!("{id}?api-version={POOL_API}"),
                None,
            )
            .await?;
            Ok(Value::Null)
        }
    }
}

fn enc(x: &str) -> String {
    url::form_urlencoded::byte_serialize(x.as_bytes()).collect()
}

/// The pool's data-plane endpoint and a token for it.
async fn data_plane(s: &mut Session, r: &SessionRef) -> Result<(String, String)> {
    let id = pool_id(s, &r.pool);
    let p = s
        .call(Method::GET, &format!("{id}?api-version={POOL_API}"), None)
        .await?;
    let ep = p
        .pointer("/properties/poolManagementEndpoint")
        .and_then(|v| v.as_str())
        .context("the pool has no poolManagementEndpoint")?
        .to_string();
    let t = s.token("https://dynamicsessions.io").await?;
    let token = t["access_token"].as_str().unwrap_or_default().to_string();
    Ok((ep, token))
}

async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let resp = req.send().await.context("calling the session pool")?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    let code = v
        .pointer("/error/code")
        .and_then(|x| x.as_str())
        .unwrap_or("Error");
    let msg = v
        .pointer("/error/message")
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    bail!("({code}) {msg}")
}

async fn code_interpreter(s: &mut Session, c: CiCmd) -> Result<Value> {
    match c {
        CiCmd::Execute {
            s: r,
            code,
            timeout_in_seconds,
        } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/executions?api-version={DATA_API}&identifier={}",
                enc(&r.identifier)
            );
            let body = json!({"properties": {"identifier": r.identifier, "codeInputType": "inline", "executionType": "synchronous", "timeoutInSeconds": timeout_in_seconds, "code": code}});
            Ok(send(s.http.post(url).bearer_auth(tok).json(&body))
                .await?
                .json()
                .await?)
        }
        CiCmd::UploadFile {
            s: r,
            file_path,
            path,
        } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let data = std::fs::read(&file_path)
                .with_context(|| format!("reading {}", file_path.display()))?;
            let name = file_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(data).file_name(name),
            );
            let mut url = format!(
                "{ep}/files?api-version={DATA_API}&identifier={}",
                enc(&r.identifier)
            );
            if let Some(p) = path {
                url.push_str(&format!("&path={}", enc(&p)));
            }
            Ok(send(s.http.post(url).bearer_auth(tok).multipart(form))
                .await?
                .json()
                .await?)
        }
        CiCmd::ListFiles { s: r, path } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let mut url = format!(
                "{ep}/files?api-version={DATA_API}&identifier={}",
                enc(&r.identifier)
            );
            if let Some(p) = path {
                url.push_str(&format!("&path={}", enc(&p)));
            }
            let v: Value = send(s.http.get(url).bearer_auth(tok)).await?.json().await?;
            Ok(v["value"].clone())
        }
        CiCmd::ShowFile { s: r, filename } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/files/{}?api-version={DATA_API}&identifier={}",
                enc(&filename),
                enc(&r.identifier)
            );
            Ok(send(s.http.get(url).bearer_auth(tok)).await?.json().await?)
        }
        CiCmd::ShowFileContent { s: r, filename } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/files/{}/content?api-version={DATA_API}&identifier={}",
                enc(&filename),
                enc(&r.identifier)
            );
            let bytes = send(s.http.get(url).bearer_auth(tok))
                .await?
                .bytes()
                .await?;
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            Ok(Value::Null)
        }
        CiCmd::DeleteFile { s: r, filename } => {
            let (ep, tok) = data_plane(s, &r).await?;
            let url = format!(
                "{ep}/files/{}?api-version={DATA_API}&identifier={}",
                enc(&filename),
                enc(&r.identifier)
            );
            send(s.http.delete(url).bearer_auth(tok)).await?;
            Ok(Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: PoolSettings,
    }

    fn settings(args: &[&str]) -> PoolSettings {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("flags parse").s
    }

    /// The body `az containerapp sessionpool create --container-type CustomContainer …` sends
    /// (containers.md §1.6).
    #[test]
    fn custom_container_create_body_is_the_azure_clis() {
        let x = settings(&[
            "--container-type",
            "CustomContainer",
            "--image",
            "myregistry.azurecr.io/img:1",
            "--target-port",
            "8080",
            "--registry-server",
            "myregistry.azurecr.io",
            "--registry-username",
            "My_User",
            "--registry-password",
            "p",
            "--cpu",
            "0.5",
            "--memory",
            "1Gi",
            "--env-vars",
            "a=1",
            "b=secretref:s1",
            "--secrets",
            "s1=v1",
            "--environment",
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.App/managedEnvironments/e",
        ]);
        let b = body_of(&x, true, "MyPool", None).unwrap();
        let p = &b["properties"];
        assert_eq!(p["containerType"], "CustomContainer");
        assert_eq!(p["poolManagementType"], "Dynamic");
        assert_eq!(
            p["dynamicPoolConfiguration"]["lifecycleConfiguration"],
            json!({"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300, "maxAlivePeriodInSeconds": null})
        );
        assert_eq!(
            p["scaleConfiguration"],
            json!({"maxConcurrentSessions": 10, "readySessionInstances": 5})
        );
        assert_eq!(p["sessionNetworkConfiguration"]["status"], "EgressDisabled");
        assert_eq!(
            p["secrets"],
            json!([{"name": "s1", "value": "v1"}, {"name": "myregistryazurecrio-my-user", "value": "p"}])
        );
        let t = &p["customContainerTemplate"];
        assert_eq!(
            t["containers"],
            json!([{"name": "mypool", "image": "myregistry.azurecr.io/img:1",
                    "resources": {"cpu": 0.5, "memory": "1Gi"},
                    "env": [{"name": "a", "value": "1"}, {"name": "b", "secretRef": "s1"}]}])
        );
        assert_eq!(t["ingress"]["targetPort"], 8080);
        assert_eq!(
            t["registryCredentials"],
            json!({"server": "myregistry.azurecr.io", "username": "My_User", "passwordSecretRef": "myregistryazurecrio-my-user"})
        );
        assert!(p["environmentId"].as_str().unwrap().ends_with("/e"));
    }

    #[test]
    fn registry_secret_names_follow_the_azure_cli() {
        assert_eq!(registry_secret_name("127.0.0.1:5000", "u"), "127001-5000-u");
        assert_eq!(
            registry_secret_name("https://reg.example.com", "A.b"),
            "regexamplecom-a-b"
        );
    }

    #[test]
    fn lifecycle_rules_follow_the_azure_cli() {
        let b = body_of(
            &settings(&[
                "--container-type",
                "CustomContainer",
                "--image",
                "r/i:1",
                "--target-port",
                "80",
                "--lifecycle-type",
                "OnContainerExit",
            ]),
            true,
            "p",
            None,
        )
        .unwrap();
        assert_eq!(
            b["properties"]["dynamicPoolConfiguration"]["lifecycleConfiguration"]["maxAlivePeriodInSeconds"],
            3600
        );
        // A maximum age means OnContainerExit, which only custom pools have.
        let e = body_of(&settings(&["--max-alive-period", "600"]), true, "p", None).unwrap_err();
        assert!(e.to_string().contains("CustomContainer"), "{e}");
        let e = body_of(
            &settings(&["--cooldown-period", "300", "--max-alive-period", "600"]),
            true,
            "p",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be used together"), "{e}");
    }

    #[test]
    fn custom_flags_are_refused_elsewhere_and_required_where_needed() {
        let e = body_of(&settings(&["--image", "r/i:1"]), true, "p", None).unwrap_err();
        assert!(e.to_string().contains("CustomContainer"), "{e}");
        let e = body_of(
            &settings(&["--container-type", "CustomContainer", "--image", "r/i:1"]),
            true,
            "p",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--target-port"), "{e}");
        let e = body_of(
            &settings(&[
                "--container-type",
                "CustomContainer",
                "--image",
                "r/i:1",
                "--target-port",
                "80",
                "--registry-server",
                "r",
                "--registry-username",
                "u",
                "--registry-password",
                "secretref:nope",
            ]),
            true,
            "p",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = body_of(&settings(&["--environment", "/x"]), true, "p", None).unwrap_err();
        assert!(e.to_string().contains("CustomContainer"), "{e}");
    }

    /// On update a container flag re-sends the whole template read back from the pool.
    #[test]
    fn update_resends_the_template_with_the_change() {
        let existing = json!({"properties": {"containerType": "CustomContainer", "customContainerTemplate": {
            "containers": [{"name": "c", "image": "r/i:1", "env": [{"name": "a", "value": "1"}]}],
            "ingress": {"targetPort": 8080}}}});
        let b = body_of(
            &settings(&["--image", "r/i:2", "--env-vars", "a=2", "z=3"]),
            false,
            "p",
            Some(&existing),
        )
        .unwrap();
        let t = &b["properties"]["customContainerTemplate"];
        assert_eq!(t["containers"][0]["image"], "r/i:2");
        assert_eq!(
            t["containers"][0]["env"],
            json!([{"name": "a", "value": "2"}, {"name": "z", "value": "3"}])
        );
        assert_eq!(t["ingress"]["targetPort"], 8080);
        assert!(b["properties"].get("containerType").is_none());
    }
}
