//! `cloister containerapp sessionpool …` and `cloister containerapp session code-interpreter …`,
//! shaped like the Azure CLI's `az containerapp` commands.

use crate::profile::Session;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

const POOL_API: &str = "2025-07-01";
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
    /// PythonLTS (the code interpreter, the default), Shell or NodeLTS.
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

fn body_of(x: &PoolSettings, create: bool) -> Result<Value> {
    let mut props = json!({});
    if create || x.container_type.is_some() {
        props["containerType"] = json!(x.container_type.clone().unwrap_or("PythonLTS".into()));
        props["poolManagementType"] = json!("Dynamic");
    }
    let mut scale = json!({});
    if let Some(n) = x.max_sessions {
        scale["maxConcurrentSessions"] = json!(n);
    }
    if let Some(n) = x.ready_sessions {
        scale["readySessionInstances"] = json!(n);
    }
    if scale.as_object().is_some_and(|m| !m.is_empty()) {
        props["scaleConfiguration"] = scale;
    }
    let mut lc = json!({});
    if let Some(c) = x.cooldown_period {
        lc["lifecycleType"] = json!("Timed");
        lc["cooldownPeriodInSeconds"] = json!(c);
    }
    if let Some(m) = x.max_alive_period {
        lc["maxAlivePeriodInSeconds"] = json!(m);
    }
    if lc.as_object().is_some_and(|m| !m.is_empty()) {
        props["dynamicPoolConfiguration"] = json!({ "lifecycleConfiguration": lc });
    }
    if let Some(n) = &x.network_status {
        props["sessionNetworkConfiguration"] = json!({ "status": n });
    }
    if !x.mi_in_sessions.is_empty() {
        props["managedIdentitySettings"] = Value::Array(
            x.mi_in_sessions
                .iter()
                .map(|i| json!({"identity": i, "lifecycle": "Main"}))
                .collect(),
        );
    }
    let mut body = json!({ "properties": props });
    if create {
        body["location"] = json!(x.location.clone().unwrap_or("local".into()));
    } else if let Some(l) = &x.location {
        body["location"] = json!(l);
    }
    if x.mi_system_assigned || !x.mi_user_assigned.is_empty() {
        let t = match (x.mi_system_assigned, !x.mi_user_assigned.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            _ => "UserAssigned",
        };
        let mut ident = json!({ "type": t });
        if !x.mi_user_assigned.is_empty() {
            let m: serde_json::Map<String, Value> = x
                .mi_user_assigned
                .iter()
                .map(|u| (u.clone(), json!({})))
                .collect();
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
    }
}

async fn pool(s: &mut Session, c: PoolCmd) -> Result<Value> {
    match c {
        PoolCmd::Create { pool, settings } => {
            let id = pool_id(s, &pool);
            s.call(
                Method::PUT,
                &format!("{id}?api-version={POOL_API}"),
                Some(body_of(&settings, true)?),
            )
            .await
        }
        PoolCmd::Update { pool, settings } => {
            let id = pool_id(s, &pool);
            s.call(
                Method::PATCH,
                &format!("{id}?api-version={POOL_API}"),
                Some(body_of(&settings, false)?),
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
