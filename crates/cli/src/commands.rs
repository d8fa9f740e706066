//! The az-shaped client commands.

use crate::output::print;
use crate::profile::{Profile, Session, http_client};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

const RG_API: &str = "2021-04-01";
const MSI_API: &str = "2023-01-31";
const AUTHZ_API: &str = "2022-04-01";
/// The Azure CLI's well-known public client id; Cloister registers the same id for its CLI.
pub const CLI_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";

pub enum Command {
    Login(LoginArgs),
    Logout,
    Group(GroupCmd),
    Identity(IdentityCmd),
    Ad(AdCmd),
    Role(RoleCmd),
    Account(AccountCmd),
    Run(RunArgs),
    Rest(RestArgs),
    Containerapp(crate::containerapp::ContainerappCmd),
    Apim(crate::apim::ApimCmd),
}

#[derive(Args)]
pub struct LoginArgs {
    /// Log in as a service principal (`-u` is the client id, `-p` the secret).
    #[arg(long)]
    service_principal: bool,
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// The secret as given, even when it begins with `-` (Entra-style secrets may).
    #[arg(short = 'p', long, allow_hyphen_values = true)]
    password: Option<String>,
    #[arg(short = 't', long)]
    tenant: Option<String>,
    /// Cloister's HTTPS base URL, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    authority: Option<String>,
    /// The CA certificate to trust (Cloister writes it to DATA_DIR/ca.pem).
    #[arg(long)]
    ca_file: Option<String>,
    /// Read everything from a bootstrap.json written by `cloister serve`.
    #[arg(long)]
    bootstrap: Option<String>,
}

#[derive(Subcommand)]
pub enum GroupCmd {
    Create {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'l', long, default_value = "local")]
        location: String,
        #[arg(long)]
        subscription: Option<String>,
    },
    Show {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        subscription: Option<String>,
    },
    List {
        #[arg(long)]
        subscription: Option<String>,
    },
    Delete {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        subscription: Option<String>,
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum IdentityCmd {
    Create {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'g', long)]
        resource_group: String,
        #[arg(short = 'l', long, default_value = "local")]
        location: String,
        #[arg(long)]
        subscription: Option<String>,
    },
    Show {
        #[arg(short = 'n', long)]
        name: Option<String>,
        #[arg(short = 'g', long)]
        resource_group: Option<String>,
        #[arg(long)]
        ids: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
    },
    List {
        #[arg(short = 'g', long)]
        resource_group: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
    },
    Delete {
        #[arg(short = 'n', long)]
        name: Option<String>,
        #[arg(short = 'g', long)]
        resource_group: Option<String>,
        #[arg(long)]
        ids: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AdCmd {
    /// Service principals.
    #[command(subcommand)]
    Sp(SpCmd),
    /// Directory groups.
    #[command(subcommand)]
    Group(AdGroupCmd),
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// Applications.
    #[command(subcommand)]
    App(AppCmd),
}

#[derive(Subcommand)]
pub enum SpCmd {
    /// Create an application, its service principal and a secret, and optionally assign a role.
    CreateForRbac {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        scopes: Vec<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum AdGroupCmd {
    Create {
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        mail_nickname: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    Delete {
        #[arg(short = 'g', long)]
        group: String,
    },
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Subcommand)]
pub enum MemberCmd {
    Add {
        #[arg(short = 'g', long)]
        group: String,
        #[arg(long)]
        member_id: String,
    },
    Remove {
        #[arg(short = 'g', long)]
        group: String,
        #[arg(long)]
        member_id: String,
    },
    List {
        #[arg(short = 'g', long)]
        group: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    Create {
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        user_principal_name: String,
        #[arg(long)]
        password: String,
    },
    List,
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AppCmd {
    Create {
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        web_redirect_uris: Vec<String>,
        #[arg(long)]
        public_client_redirect_uris: Vec<String>,
        #[arg(long)]
        identifier_uris: Vec<String>,
    },
    List,
    /// Application credentials.
    #[command(subcommand)]
    Credential(CredentialCmd),
}

#[derive(Subcommand)]
pub enum CredentialCmd {
    Reset {
        #[arg(long)]
        id: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Add a certificate (PEM file) credential.
    AddCert {
        #[arg(long)]
        id: String,
        #[arg(long)]
        cert: String,
    },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    #[command(subcommand)]
    Assignment(AssignmentCmd),
    #[command(subcommand)]
    Definition(DefinitionCmd),
}

#[derive(Subcommand)]
pub enum AssignmentCmd {
    Create {
        #[arg(long)]
        role: String,
        #[arg(long)]
        assignee: String,
        #[arg(long)]
        scope: String,
        #[arg(long)]
        assignee_principal_type: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List {
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        assignee: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Delete {
        #[arg(long)]
        ids: Option<String>,
        #[arg(long)]
        assignee: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DefinitionCmd {
    /// `--role-definition` takes JSON or @file, in az's format (Name, Actions, NotActions,
    /// DataActions, NotDataActions, AssignableScopes, Description).
    Create {
        #[arg(long)]
        role_definition: String,
    },
    List {
        #[arg(short = 'n', long)]
        name: Option<String>,
        #[arg(long)]
        custom_role_only: bool,
        #[arg(long)]
        scope: Option<String>,
    },
    Delete {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Print an access token (JSON with accessToken, expiresOn, expires_on, tenant, tokenType).
    GetAccessToken {
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        scope: Option<String>,
    },
    Show,
}

#[derive(Args)]
pub struct RunArgs {
    /// Name, client id or resource id of a user-assigned identity.
    #[arg(long)]
    identity: String,
    /// Seconds the binding lasts (default 12 hours).
    #[arg(long)]
    ttl: Option<i64>,
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct RestArgs {
    #[arg(short = 'm', long, default_value = "get")]
    method: String,
    #[arg(long)]
    url: String,
    #[arg(long)]
    body: Option<String>,
}

pub async fn dispatch(cmd: Command, out: &str) -> Result<i32> {
    match cmd {
        Command::Login(a) => login(a, out).await.map(|_| 0),
        Command::Logout => {
            let _ = std::fs::remove_file(crate::profile::config_dir().join("profile.json"));
            Ok(0)
        }
        Command::Run(r) => run(r).await,
        other => {
            let mut s = Session::open()?;
            let v = match other {
                Command::Group(g) => group(&mut s, g).await?,
                Command::Identity(i) => identity(&mut s, i).await?,
                Command::Ad(a) => ad(&mut s, a).await?,
                Command::Role(r) => role(&mut s, r).await?,
                Command::Account(a) => account(&mut s, a).await?,
                Command::Containerapp(c) => crate::containerapp::run(&mut s, c).await?,
                Command::Apim(c) => crate::apim::run(&mut s, c).await?,
                Command::Rest(r) => {
                    let m = Method::from_bytes(r.method.to_uppercase().as_bytes())?;
                    let body = r.body.map(|b| read_json_arg(&b)).transpose()?;
                    s.call(m, &r.url, body).await?
                }
                _ => unreachable!(),
            };
            if !v.is_null() {
                print(&v, out);
            }
            Ok(0)
        }
    }
}

fn read_json_arg(s: &str) -> Result<Value> {
    let text = match s.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).context("the argument is not valid JSON")
}

async fn login(a: LoginArgs, out: &str) -> Result<()> {
    let mut p = Profile::default();
    if let Some(b) = &a.bootstrap {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(b).with_context(|| format!("reading {b}"))?,
        )?;
        let g = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        p.authority = g("authority").ok_or_else(|| anyhow!("bootstrap file lacks authority"))?;
        p.tenant = g("tenantId").unwrap_or_default();
        p.management_endpoint =
            g("managementEndpoint").unwrap_or_else(|| format!("{}/", p.authority));
        p.subscription = g("subscriptionId").unwrap_or_default();
        p.ca_file = g("caCertificate");
        p.kind = "servicePrincipal".into();
        p.client_id = g("clientId").unwrap_or_default();
        p.client_secret = g("clientSecret");
    } else {
        p.authority = a
            .authority
            .clone()
            .ok_or_else(|| anyhow!("--authority (or --bootstrap) is required"))?
            .trim_end_matches('/')
            .to_string();
        p.tenant = a
            .tenant
            .clone()
            .ok_or_else(|| anyhow!("--tenant is required"))?;
        p.management_endpoint = format!("{}/", p.authority);
        p.ca_file = a.ca_file.clone();
        let user = a
            .username
            .clone()
            .ok_or_else(|| anyhow!("-u/--username is required"))?;
        let pass = a
            .password
            .clone()
            .ok_or_else(|| anyhow!("-p/--password is required"))?;
        if a.service_principal {
            p.kind = "servicePrincipal".into();
            p.client_id = user;
            p.client_secret = Some(pass);
        } else {
            p.kind = "user".into();
            p.client_id = CLI_CLIENT_ID.into();
            p.username = Some(user.clone());
            p.refresh_token = Some(user_login(&p, &user, &pass).await?);
        }
    }
    if let Some(c) = &a.ca_file {
        p.ca_file = Some(c.clone());
    }
    // Prove the credentials work, and learn the subscriptions.
    let mut s = Session {
        http: http_client(p.ca_file.as_deref())?,
        profile: p,
    };
    s.token(&s.profile.management_endpoint.clone()).await?;
    let subs = s
        .call(Method::GET, "/subscriptions?api-version=2022-12-01", None)
        .await
        .unwrap_or(json!({"value": []}));
    if s.profile.subscription.is_empty()
        && let Some(id) = subs
            .pointer("/value/0/subscriptionId")
            .and_then(|v| v.as_str())
    {
        s.profile.subscription = id.to_string();
    }
    s.profile.save()?;
    let rows: Vec<Value> = subs["value"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|x| json!({"id": x["subscriptionId"], "name": x["displayName"], "tenantId": x["tenantId"], "isDefault": x["subscriptionId"] == json!(s.profile.subscription), "state": "Enabled", "user": {"name": s.profile.username.clone().unwrap_or(s.profile.client_id.clone()), "type": s.profile.kind}}))
        .collect();
    print(&Value::Array(rows), out);
    Ok(())
}

/// Signs a user in through the authorization-code flow with PKCE, answering the sign-in
/// form itself (as `az login` would in a browser), and returns the refresh token.
async fn user_login(p: &Profile, user: &str, pass: &str) -> Result<String> {
    let http = http_client(p.ca_file.as_deref())?;
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    let redirect = "http://localhost";
    let scope = format!(
        "{}/.default offline_access openid profile",
        p.management_endpoint.trim_end_matches('/')
    );
    let authz = format!("{}/{}/oauth2/v2.0/authorize", p.authority, p.tenant);
    let state = random_b64(12);
    let params = [
        ("client_id", CLI_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", redirect),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let resp = http
        .post(&authz)
        .query(&params)
        .form(&[("login", user), ("passwd", pass), ("consent", "accept")])
        .send()
        .await?;
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("sign-in failed: invalid user name or password"))?;
    let u = url::Url::parse(&loc)?;
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    if let Some(e) = q.get("error_description") {
        bail!("sign-in failed: {e}");
    }
    if q.get("state") != Some(&state) {
        bail!("sign-in failed: state mismatch");
    }
    let code = q
        .get("code")
        .ok_or_else(|| anyhow!("sign-in failed: no code returned"))?;
    let token: Value = http
        .post(format!("{}/{}/oauth2/v2.0/token", p.authority, p.tenant))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLI_CLIENT_ID),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("code_verifier", verifier.as_str()),
            ("scope", scope.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    token
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "sign-in failed: {}",
                token
                    .get("error_description")
                    .and_then(|v| v.as_str())
                    .unwrap_or("no refresh token")
            )
        })
}

fn random_b64(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sub_of(s: &Session, sub: &Option<String>) -> String {
    sub.clone()
        .unwrap_or_else(|| s.profile.subscription.clone())
}

async fn group(s: &mut Session, g: GroupCmd) -> Result<Value> {
    match g {
        GroupCmd::Create {
            name,
            location,
            subscription,
        } => {
            let sub = sub_of(s, &subscription);
            s.call(
                Method::PUT,
                &format!("/subscriptions/{sub}/resourcegroups/{name}?api-version={RG_API}"),
                Some(json!({"location": location})),
            )
            .await
        }
        GroupCmd::Show { name, subscription } => {
            let sub = sub_of(s, &subscription);
            s.call(
                Method::GET,
                &format!("/subscriptions/{sub}/resourcegroups/{name}?api-version={RG_API}"),
                None,
            )
            .await
        }
        GroupCmd::List { subscription } => {
            let sub = sub_of(s, &subscription);
            Ok(s.call(
                Method::GET,
                &format!("/subscriptions/{sub}/resourcegroups?api-version={RG_API}"),
                None,
            )
            .await?["value"]
                .clone())
        }
        GroupCmd::Delete {
            name, subscription, ..
        } => {
            let sub = sub_of(s, &subscription);
            s.call(
                Method::DELETE,
                &format!("/subscriptions/{sub}/resourcegroups/{name}?api-version={RG_API}"),
                None,
            )
            .await?;
            Ok(Value::Null)
        }
    }
}

fn identity_id(
    s: &Session,
    name: Option<String>,
    rg: Option<String>,
    ids: Option<String>,
    sub: &Option<String>,
) -> Result<String> {
    if let Some(i) = ids {
        return Ok(i);
    }
    let (n, g) = (
        name.ok_or_else(|| anyhow!("--name or --ids is required"))?,
        rg.ok_or_else(|| anyhow!("--resource-group is required"))?,
    );
    Ok(format!(
        "/subscriptions/{}/resourceGroups/{g}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}",
        sub_of(s, sub)
    ))
}

fn flatten_identity(v: &Value) -> Value {
    let p = &v["properties"];
    json!({
        "id": v["id"], "name": v["name"], "type": v["type"], "location": v["location"], "tags": v["tags"],
        "resourceGroup": v["id"].as_str().and_then(|i| i.split('/').nth(4)),
        "clientId": p["clientId"], "principalId": p["principalId"], "tenantId": p["tenantId"],
    })
}

async fn identity(s: &mut Session, i: IdentityCmd) -> Result<Value> {
    match i {
        IdentityCmd::Create {
            name,
            resource_group,
            location,
            subscription,
        } => {
            let id = identity_id(s, Some(name), Some(resource_group), None, &subscription)?;
            Ok(flatten_identity(
                &s.call(
                    Method::PUT,
                    &format!("{id}?api-version={MSI_API}"),
                    Some(json!({"location": location})),
                )
                .await?,
            ))
        }
        IdentityCmd::Show {
            name,
            resource_group,
            ids,
            subscription,
        } => {
            let id = identity_id(s, name, resource_group, ids, &subscription)?;
            Ok(flatten_identity(
                &s.call(Method::GET, &format!("{id}?api-version={MSI_API}"), None)
                    .await?,
            ))
        }
        IdentityCmd::List {
            resource_group,
            subscription,
        } => {
            let sub = sub_of(s, &subscription);
            let path = match resource_group {
                Some(g) => format!(
                    "/subscriptions/{sub}/resourceGroups/{g}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version={MSI_API}"
                ),
                None => format!(
                    "/subscriptions/{sub}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version={MSI_API}"
                ),
            };
            let v = s.call(Method::GET, &path, None).await?;
            Ok(Value::Array(
                v["value"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(flatten_identity)
                    .collect(),
            ))
        }
        IdentityCmd::Delete {
            name,
            resource_group,
            ids,
            subscription,
        } => {
            let id = identity_id(s, name, resource_group, ids, &subscription)?;
            s.call(Method::DELETE, &format!("{id}?api-version={MSI_API}"), None)
                .await?;
            Ok(Value::Null)
        }
    }
}

/// Resolves an assignee (object id, app id, user principal name) to an object id.
async fn resolve_principal(s: &mut Session, assignee: &str) -> Result<String> {
    if assignee.contains('@') {
        let u = s
            .call(Method::GET, &format!("/v1.0/users/{assignee}"), None)
            .await?;
        return Ok(u["id"].as_str().unwrap_or_default().to_string());
    }
    if let Ok(sp) = s
        .call(
            Method::GET,
            &format!("/v1.0/servicePrincipals?$filter=appId eq '{assignee}'"),
            None,
        )
        .await
        && let Some(id) = sp.pointer("/value/0/id").and_then(|v| v.as_str())
    {
        return Ok(id.to_string());
    }
    Ok(assignee.to_string())
}

async fn resolve_role(s: &mut Session, role: &str, scope: &str) -> Result<String> {
    let prefix = if scope == "/" { "" } else { scope };
    if uuid::Uuid::try_parse(role).is_ok() {
        return Ok(format!(
            "{prefix}/providers/Microsoft.Authorization/roleDefinitions/{role}"
        ));
    }
    let filter = format!("roleName eq '{role}'");
    let v = s
        .call(Method::GET, &format!("{prefix}/providers/Microsoft.Authorization/roleDefinitions?api-version={AUTHZ_API}&$filter={}", urlenc(&filter)), None)
        .await?;
    v.pointer("/value/0/id")
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("Role '{role}' doesn't exist."))
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn ad(s: &mut Session, a: AdCmd) -> Result<Value> {
    match a {
        AdCmd::Sp(SpCmd::CreateForRbac { name, role, scopes }) => {
            let app = s.call(Method::POST, "/v1.0/applications", Some(json!({"displayName": name}))).await?;
            let obj = app["id"].as_str().unwrap_or_default().to_string();
            let app_id = app["appId"].as_str().unwrap_or_default().to_string();
            let pw = s.call(Method::POST, &format!("/v1.0/applications/{obj}/addPassword"), Some(json!({"passwordCredential": {"displayName": "rbac"}}))).await?;
            if let Some(r) = role {
                let sp = resolve_principal(s, &app_id).await?;
                for sc in &scopes {
                    let rd = resolve_role(s, &r, sc).await?;
                    let prefix = if sc == "/" { "" } else { sc.as_str() };
                    s.call(
                        Method::PUT,
                        &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments/{}?api-version={AUTHZ_API}", uuid::Uuid::new_v4()),
                        Some(json!({"properties": {"roleDefinitionId": rd, "principalId": sp, "principalType": "ServicePrincipal"}})),
                    )
                    .await?;
                }
            }
            Ok(json!({"appId": app_id, "displayName": name, "password": pw["secretText"], "tenant": s.profile.tenant}))
        }
        AdCmd::Sp(SpCmd::List) => Ok(s.call(Method::GET, "/v1.0/servicePrincipals", None).await?["value"].clone()),
        AdCmd::Group(AdGroupCmd::Create { display_name, description, .. }) => {
            s.call(Method::POST, "/v1.0/groups", Some(json!({"displayName": display_name, "description": description.unwrap_or_default(), "securityEnabled": true}))).await
        }
        AdCmd::Group(AdGroupCmd::List) => Ok(s.call(Method::GET, "/v1.0/groups", None).await?["value"].clone()),
        AdCmd::Group(AdGroupCmd::Delete { group }) => {
            s.call(Method::DELETE, &format!("/v1.0/groups/{group}"), None).await?;
            Ok(Value::Null)
        }
        AdCmd::Group(AdGroupCmd::Member(MemberCmd::Add { group, member_id })) => {
            s.call(Method::POST, &format!("/v1.0/groups/{group}/members/$ref"), Some(json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{member_id}")}))).await?;
            Ok(Value::Null)
        }
        AdCmd::Group(AdGroupCmd::Member(MemberCmd::Remove { group, member_id })) => {
            s.call(Method::DELETE, &format!("/v1.0/groups/{group}/members/{member_id}/$ref"), None).await?;
            Ok(Value::Null)
        }
        AdCmd::Group(AdGroupCmd::Member(MemberCmd::List { group })) => Ok(s.call(Method::GET, &format!("/v1.0/groups/{group}/members"), None).await?["value"].clone()),
        AdCmd::User(UserCmd::Create { display_name, user_principal_name, password }) => {
            s.call(Method::POST, "/v1.0/users", Some(json!({"displayName": display_name, "userPrincipalName": user_principal_name, "passwordProfile": {"password": password}}))).await
        }
        AdCmd::User(UserCmd::List) => Ok(s.call(Method::GET, "/v1.0/users", None).await?["value"].clone()),
        AdCmd::User(UserCmd::Delete { id }) => {
            s.call(Method::DELETE, &format!("/v1.0/users/{id}"), None).await?;
            Ok(Value::Null)
        }
        AdCmd::App(AppCmd::Create { display_name, web_redirect_uris, public_client_redirect_uris, identifier_uris }) => {
            let public = !public_client_redirect_uris.is_empty();
            s.call(
                Method::POST,
                "/v1.0/applications",
                Some(json!({"displayName": display_name, "web": {"redirectUris": web_redirect_uris}, "publicClient": {"redirectUris": public_client_redirect_uris}, "identifierUris": identifier_uris, "isFallbackPublicClient": public})),
            )
            .await
        }
        AdCmd::App(AppCmd::List) => Ok(s.call(Method::GET, "/v1.0/applications", None).await?["value"].clone()),
        AdCmd::App(AppCmd::Credential(CredentialCmd::Reset { id, display_name })) => {
            let pw = s.call(Method::POST, &format!("/v1.0/applications/{id}/addPassword"), Some(json!({"passwordCredential": {"displayName": display_name.unwrap_or_default()}}))).await?;
            let app = s.call(Method::GET, &format!("/v1.0/applications/{id}"), None).await?;
            Ok(json!({"appId": app["appId"], "password": pw["secretText"], "tenant": s.profile.tenant}))
        }
        AdCmd::App(AppCmd::Credential(CredentialCmd::AddCert { id, cert })) => {
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {cert}"))?;
            s.call(Method::POST, &format!("/v1.0/applications/{id}/keyCredentials"), Some(json!({"key": pem}))).await
        }
    }
}

fn flatten_assignment(v: &Value, names: &std::collections::HashMap<String, String>) -> Value {
    let p = &v["properties"];
    let rd = p["roleDefinitionId"].as_str().unwrap_or_default();
    let guid = rd.rsplit('/').next().unwrap_or_default().to_string();
    json!({
        "id": v["id"], "name": v["name"], "type": v["type"],
        "principalId": p["principalId"], "principalType": p["principalType"], "roleDefinitionId": rd,
        "roleDefinitionName": names.get(&guid).cloned().unwrap_or_default(), "scope": p["scope"],
        "condition": Value::Null, "conditionVersion": Value::Null, "description": p["description"], "canDelegate": Value::Null,
        "createdOn": p["createdOn"], "createdBy": p["createdBy"],
    })
}

async fn role_names(s: &mut Session) -> Result<std::collections::HashMap<String, String>> {
    let v = s
        .call(
            Method::GET,
            &format!("/providers/Microsoft.Authorization/roleDefinitions?api-version={AUTHZ_API}"),
            None,
        )
        .await?;
    Ok(v["value"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_string(),
                d["properties"]["roleName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

async fn role(s: &mut Session, r: RoleCmd) -> Result<Value> {
    match r {
        RoleCmd::Assignment(AssignmentCmd::Create {
            role,
            assignee,
            scope,
            assignee_principal_type,
            description,
        }) => {
            let principal = resolve_principal(s, &assignee).await?;
            let rd = resolve_role(s, &role, &scope).await?;
            let prefix = if scope == "/" { "" } else { scope.as_str() };
            let mut props = json!({"roleDefinitionId": rd, "principalId": principal});
            if let Some(t) = assignee_principal_type {
                props["principalType"] = json!(t);
            }
            if let Some(d) = description {
                props["description"] = json!(d);
            }
            let v = s
                .call(Method::PUT, &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments/{}?api-version={AUTHZ_API}", uuid::Uuid::new_v4()), Some(json!({ "properties": props })))
                .await?;
            let names = role_names(s).await?;
            Ok(flatten_assignment(&v, &names))
        }
        RoleCmd::Assignment(AssignmentCmd::List {
            scope,
            assignee,
            all,
        }) => {
            let scope = match (scope, all) {
                (Some(sc), _) => sc,
                (None, true) => "/".to_string(),
                (None, false) => format!("/subscriptions/{}", s.profile.subscription),
            };
            let prefix = if scope == "/" {
                String::new()
            } else {
                scope.clone()
            };
            let mut path = format!(
                "{prefix}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHZ_API}"
            );
            if let Some(a) = assignee {
                let p = resolve_principal(s, &a).await?;
                path.push_str(&format!(
                    "&$filter={}",
                    urlenc(&format!("principalId eq '{p}'"))
                ));
            }
            let v = s.call(Method::GET, &path, None).await?;
            let names = role_names(s).await?;
            Ok(Value::Array(
                v["value"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| flatten_assignment(a, &names))
                    .collect(),
            ))
        }
        RoleCmd::Assignment(AssignmentCmd::Delete {
            ids,
            assignee,
            role,
            scope,
        }) => {
            let targets: Vec<String> = match ids {
                Some(i) => vec![i],
                None => {
                    let scope = scope.ok_or_else(|| {
                        anyhow!("--ids, or --scope with --assignee/--role, is required")
                    })?;
                    let prefix = if scope == "/" {
                        String::new()
                    } else {
                        scope.clone()
                    };
                    let v = s.call(Method::GET, &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHZ_API}&$filter=atScope()"), None).await?;
                    let principal = match &assignee {
                        Some(a) => Some(resolve_principal(s, a).await?),
                        None => None,
                    };
                    let role_guid = match &role {
                        Some(r) => Some(
                            resolve_role(s, r, &scope)
                                .await?
                                .rsplit('/')
                                .next()
                                .unwrap_or_default()
                                .to_string(),
                        ),
                        None => None,
                    };
                    v["value"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .filter(|a| {
                            a["properties"]["scope"]
                                .as_str()
                                .is_some_and(|x| x.eq_ignore_ascii_case(&scope))
                        })
                        .filter(|a| {
                            principal.as_ref().is_none_or(|p| {
                                a["properties"]["principalId"].as_str() == Some(p.as_str())
                            })
                        })
                        .filter(|a| {
                            role_guid.as_ref().is_none_or(|g| {
                                a["properties"]["roleDefinitionId"]
                                    .as_str()
                                    .is_some_and(|r| r.ends_with(g.as_str()))
                            })
                        })
                        .filter_map(|a| a["id"].as_str().map(str::to_string))
                        .collect()
                }
            };
            if targets.is_empty() {
                bail!("No matched assignments were found to delete");
            }
            for t in targets {
                s.call(
                    Method::DELETE,
                    &format!("{t}?api-version={AUTHZ_API}"),
                    None,
                )
                .await?;
            }
            Ok(Value::Null)
        }
        RoleCmd::Definition(DefinitionCmd::Create { role_definition }) => {
            let d = read_json_arg(&role_definition)?;
            let g = |k: &str| d.get(k).or_else(|| d.get(k.to_ascii_lowercase()));
            let arr = |k: &str| g(k).cloned().unwrap_or(json!([]));
            let name = g("Name")
                .or_else(|| d.get("roleName"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow!("the role definition needs a Name"))?;
            let scopes = arr("AssignableScopes");
            let first = scopes
                .get(0)
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow!("the role definition needs AssignableScopes"))?
                .to_string();
            let id = d
                .get("Id")
                .or_else(|| d.get("name"))
                .and_then(|v| v.as_str())
                .filter(|x| uuid::Uuid::try_parse(x).is_ok())
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let body = json!({"properties": {
                "roleName": name, "description": g("Description").cloned().unwrap_or(json!("")), "type": "CustomRole",
                "assignableScopes": scopes,
                "permissions": [{"actions": arr("Actions"), "notActions": arr("NotActions"), "dataActions": arr("DataActions"), "notDataActions": arr("NotDataActions")}],
            }});
            s.call(Method::PUT, &format!("{first}/providers/Microsoft.Authorization/roleDefinitions/{id}?api-version={AUTHZ_API}"), Some(body)).await
        }
        RoleCmd::Definition(DefinitionCmd::List {
            name,
            custom_role_only,
            scope,
        }) => {
            let scope =
                scope.unwrap_or_else(|| format!("/subscriptions/{}", s.profile.subscription));
            let prefix = if scope == "/" {
                String::new()
            } else {
                scope.clone()
            };
            let mut path = format!(
                "{prefix}/providers/Microsoft.Authorization/roleDefinitions?api-version={AUTHZ_API}"
            );
            if let Some(n) = &name {
                path.push_str(&format!(
                    "&$filter={}",
                    urlenc(&format!("roleName eq '{n}'"))
                ));
            } else if custom_role_only {
                path.push_str(&format!("&$filter={}", urlenc("type eq 'CustomRole'")));
            }
            Ok(s.call(Method::GET, &path, None).await?["value"].clone())
        }
        RoleCmd::Definition(DefinitionCmd::Delete { name, scope }) => {
            let scope =
                scope.unwrap_or_else(|| format!("/subscriptions/{}", s.profile.subscription));
            let rd = resolve_role(s, &name, &scope).await?;
            s.call(
                Method::DELETE,
                &format!("{rd}?api-version={AUTHZ_API}"),
                None,
            )
            .await?;
            Ok(Value::Null)
        }
    }
}

async fn account(s: &mut Session, a: AccountCmd) -> Result<Value> {
    match a {
        AccountCmd::GetAccessToken { resource, scope } => {
            let resource = match (resource, scope) {
                (Some(r), _) => r,
                (None, Some(sc)) => sc.trim_end_matches("/.default").to_string(),
                (None, None) => s.profile.management_endpoint.clone(),
            };
            let t = s.token(&resource).await?;
            let exp = cloister_core::clock::now_secs() + t["expires_in"].as_i64().unwrap_or(0);
            let local = time::OffsetDateTime::from_unix_timestamp(exp)?.format(
                &time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
                ),
            )?;
            Ok(json!({
                "accessToken": t["access_token"], "expiresOn": local, "expires_on": exp,
                "subscription": s.profile.subscription, "tenant": s.profile.tenant, "tokenType": "Bearer",
            }))
        }
        AccountCmd::Show => Ok(json!({
            "id": s.profile.subscription, "tenantId": s.profile.tenant, "environmentName": "Cloister",
            "user": {"name": s.profile.username.clone().unwrap_or(s.profile.client_id.clone()), "type": s.profile.kind},
            "authority": s.profile.authority,
        })),
    }
}

/// `cloister run --identity X -- CMD`: binds the identity (the server checks the caller
/// may assign it), runs CMD with the App Service managed-identity variables set, and ends the
/// binding when CMD exits.
async fn run(r: RunArgs) -> Result<i32> {
    let mut s = Session::open()?;
    let mut body = json!({"identity": r.identity});
    if let Some(t) = r.ttl {
        body["ttlSeconds"] = json!(t);
    }
    let b = s
        .call(
            Method::POST,
            "/providers/Cloister.Identity/bindings?api-version=2024-01-01",
            Some(body),
        )
        .await?;
    let endpoint = b["identityEndpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let header = b["identityHeader"].as_str().unwrap_or_default().to_string();
    let mut cmd = tokio::process::Command::new(&r.command[0]);
    cmd.args(&r.command[1..]);
    for v in [
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_USERNAME",
        "AZURE_PASSWORD",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "IDENTITY_SERVER_THUMBPRINT",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("IDENTITY_ENDPOINT", &endpoint)
        .env("IDENTITY_HEADER", &header);
    if let Some(c) = b["clientId"].as_str() {
        cmd.env("AZURE_CLIENT_ID", c);
    }
    if endpoint.starts_with("https")
        && let Some(ca) = &s.profile.ca_file
    {
        cmd.env("REQUESTS_CA_BUNDLE", ca).env("SSL_CERT_FILE", ca);
    }
    let status = cmd
        .status()
        .await
        .with_context(|| format!("starting {}", r.command[0]));
    let _ = s
        .http
        .delete(format!(
            "{}providers/Cloister.Identity/bindings/current",
            s.profile.management_endpoint
        ))
        .header("x-identity-header", &header)
        .send()
        .await;
    Ok(status?.code().unwrap_or(1))
}

#[cfg(test)]
mod login_tests {
    use super::LoginArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: LoginArgs,
    }

    /// A generated secret may begin with `-`: `-p` takes it as the value, not as a flag.
    #[test]
    fn a_secret_that_begins_with_a_dash_is_the_password() {
        let t = T::try_parse_from(["t", "--service-principal", "-u", "app", "-p", "-3xQ~abc"])
            .expect("flags parse");
        assert_eq!(t.a.password.as_deref(), Some("-3xQ~abc"));
        assert_eq!(t.a.username.as_deref(), Some("app"));
    }
}
