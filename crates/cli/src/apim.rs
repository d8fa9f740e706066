//! `cloister apim …`: the credential manager's resources (providers, connections, access
//! policies, APIs) under a service instance, and master-key rotation.

use crate::profile::Session;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

const API: &str = "2024-05-01";

#[derive(Args, Clone)]
pub struct Inst {
    /// The service instance (Microsoft.ApiManagement/service).
    #[arg(long = "service-name")]
    service: String,
    #[arg(short = 'g', long)]
    resource_group: String,
    #[arg(long)]
    subscription: Option<String>,
}

#[derive(Subcommand)]
pub enum ApimCmd {
    /// Create or update a service instance.
    Create {
        #[command(flatten)]
        inst: Inst,
        /// Allowed post-login redirect URLs (exact, or a prefix ending in *).
        #[arg(long, num_args = 1..)]
        allowed_redirects: Vec<String>,
        #[arg(short = 'l', long, default_value = "local")]
        location: String,
    },
    Show {
        #[command(flatten)]
        inst: Inst,
    },
    /// Credential providers (`authorizationProviders`).
    #[command(subcommand, name = "authorization-provider")]
    Provider(ItemCmd),
    /// Connections (`authorizations`) of a provider.
    #[command(subcommand)]
    Authorization(ConnCmd),
    /// Access policies of a connection.
    #[command(subcommand, name = "access-policy")]
    Policy(ItemCmd),
    /// APIs proxied by the gateway.
    #[command(subcommand)]
    Api(ItemCmd),
    /// Add a version to the token store's key ring and re-wrap every data key under it.
    RotateKey,
}

#[derive(Args, Clone)]
pub struct Path {
    #[command(flatten)]
    inst: Inst,
    /// Provider id (for connections and access policies).
    #[arg(long)]
    provider_id: Option<String>,
    /// Connection id (for access policies).
    #[arg(long)]
    authorization_id: Option<String>,
}

#[derive(Subcommand)]
pub enum ItemCmd {
    /// Create or update from a JSON body (`{"properties": …}`, or @file).
    Create {
        #[command(flatten)]
        path: Path,
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        body: String,
        /// Only if the current ETag is this one.
        #[arg(long)]
        if_match: Option<String>,
    },
    Show {
        #[command(flatten)]
        path: Path,
        #[arg(short = 'n', long)]
        name: String,
    },
    List {
        #[command(flatten)]
        path: Path,
        #[arg(long)]
        filter: Option<String>,
    },
    Delete {
        #[command(flatten)]
        path: Path,
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long, default_value = "*")]
        if_match: String,
    },
}

#[derive(Subcommand)]
pub enum ConnCmd {
    #[command(flatten)]
    Item(ItemCmd),
    /// A login link that starts the consent flow.
    LoginLinks {
        #[command(flatten)]
        path: Path,
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        post_login_redirect_url: String,
    },
    /// Confirm the consent code the anti-phishing page showed.
    ConfirmConsentCode {
        #[command(flatten)]
        path: Path,
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        consent_code: String,
    },
}

fn instance_id(s: &Session, i: &Inst) -> String {
    let sub = i
        .subscription
        .clone()
        .unwrap_or_else(|| s.profile.subscription.clone());
    format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.ApiManagement/service/{}",
        i.resource_group, i.service
    )
}

fn collection(s: &Session, p: &Path, kind: &str) -> Result<String> {
    let base = instance_id(s, &p.inst);
    Ok(match kind {
        "provider" => format!("{base}/authorizationProviders"),
        "api" => format!("{base}/apis"),
        "connection" => format!(
            "{base}/authorizationProviders/{}/authorizations",
            p.provider_id
                .as_deref()
                .context("--provider-id is required")?
        ),
        _ => format!(
            "{base}/authorizationProviders/{}/authorizations/{}/accessPolicies",
            p.provider_id
                .as_deref()
                .context("--provider-id is required")?,
            p.authorization_id
                .as_deref()
                .context("--authorization-id is required")?
        ),
    })
}

fn read_body(b: &str) -> Result<Value> {
    let text = match b.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?,
        None => b.to_string(),
    };
    serde_json::from_str(&text).context("--body is not valid JSON")
}

async fn item(s: &mut Session, c: ItemCmd, kind: &str) -> Result<Value> {
    match c {
        ItemCmd::Create {
            path,
            name,
            body,
            if_match,
        } => {
            let url = format!("{}/{name}?api-version={API}", collection(s, &path, kind)?);
            s.call_with_headers(
                Method::PUT,
                &url,
                Some(read_body(&body)?),
                if_match.map(|m| ("if-match", m)),
            )
            .await
        }
        ItemCmd::Show { path, name } => {
            let url = format!("{}/{name}?api-version={API}", collection(s, &path, kind)?);
            s.call(Method::GET, &url, None).await
        }
        ItemCmd::List { path, filter } => {
            let mut url = format!("{}?api-version={API}", collection(s, &path, kind)?);
            if let Some(f) = filter {
                url.push_str("&$filter=");
                url.push_str(
                    &url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>(),
                );
            }
            Ok(s.call(Method::GET, &url, None).await?["value"].clone())
        }
        ItemCmd::Delete {
            path,
            name,
            if_match,
        } => {
            let url = format!("{}/{name}?api-version={API}", collection(s, &path, kind)?);
            s.call_with_headers(Method::DELETE, &url, None, Some(("if-match", if_match)))
                .await?;
            Ok(Value::Null)
        }
    }
}

pub async fn run(s: &mut Session, c: ApimCmd) -> Result<Value> {
    match c {
        ApimCmd::Create {
            inst,
            allowed_redirects,
            location,
        } => {
            let id = instance_id(s, &inst);
            s.call(
                Method::PUT,
                &format!("{id}?api-version={API}"),
                Some(json!({"location": location, "properties": {"allowedPostLoginRedirectUrls": allowed_redirects}})),
            )
            .await
        }
        ApimCmd::Show { inst } => {
            let id = instance_id(s, &inst);
            s.call(Method::GET, &format!("{id}?api-version={API}"), None)
                .await
        }
        ApimCmd::Provider(c) => item(s, c, "provider").await,
        ApimCmd::Policy(c) => item(s, c, "policy").await,
        ApimCmd::Api(c) => item(s, c, "api").await,
        ApimCmd::Authorization(ConnCmd::Item(c)) => item(s, c, "connection").await,
        ApimCmd::Authorization(ConnCmd::LoginLinks {
            path,
            name,
            post_login_redirect_url,
        }) => {
            let url = format!(
                "{}/{name}/getLoginLinks?api-version={API}",
                collection(s, &path, "connection")?
            );
            s.call(
                Method::POST,
                &url,
                Some(json!({"postLoginRedirectUrl": post_login_redirect_url})),
            )
            .await
        }
        ApimCmd::Authorization(ConnCmd::ConfirmConsentCode {
            path,
            name,
            consent_code,
        }) => {
            let url = format!(
                "{}/{name}/confirmConsentCode?api-version={API}",
                collection(s, &path, "connection")?
            );
            s.call(
                Method::POST,
                &url,
                Some(json!({"consentCode": consent_code})),
            )
            .await?;
            Ok(Value::Null)
        }
        ApimCmd::RotateKey => {
            s.call(
                Method::POST,
                "/providers/Cloister.Credentials/keys/rotate?api-version=2024-05-01",
                None,
            )
            .await
        }
    }
}
