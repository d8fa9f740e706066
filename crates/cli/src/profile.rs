//! The CLI's profile (`$CLOISTER_CONFIG_DIR/profile.json`, default `~/.cloister`), kept with
//! mode 0600 like the Azure CLI's credential cache, and an HTTP client that attaches tokens.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub authority: String,
    pub tenant: String,
    pub management_endpoint: String,
    pub subscription: String,
    pub ca_file: Option<String>,
    /// `servicePrincipal` or `user`.
    pub kind: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub username: Option<String>,
    pub refresh_token: Option<String>,
}

pub fn config_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CLOISTER_CONFIG_DIR")
        && !d.is_empty()
    {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cloister")
}

impl Profile {
    pub fn load() -> Result<Profile> {
        let p = config_dir().join("profile.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|_| anyhow!("not logged in: run 'cloister login' first"))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", p.display()))
    }

    pub fn save(&self) -> Result<()> {
        let dir = config_dir();
        std::fs::create_dir_all(&dir)?;
        cloister_server::tls::write_file_0600(
            &dir.join("profile.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        Ok(())
    }
}

pub fn http_client(ca_file: Option<&str>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60));
    if let Some(f) = ca_file {
        let pem = std::fs::read(f).with_context(|| format!("reading CA file {f}"))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// A logged-in session: the profile, a client, and a token for the management endpoint.
pub struct Session {
    pub profile: Profile,
    pub http: reqwest::Client,
}

impl Session {
    pub fn open() -> Result<Session> {
        let profile = Profile::load()?;
        let http = http_client(profile.ca_file.as_deref())?;
        Ok(Session { profile, http })
    }

    /// An access token for `resource` (client credentials, or the rotating refresh token).
    pub async fn token(&mut self, resource: &str) -> Result<Value> {
        let p = &self.profile;
        let url = format!("{}/{}/oauth2/v2.0/token", p.authority, p.tenant);
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        let form: Vec<(&str, String)> = match p.kind.as_str() {
            "servicePrincipal" => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", p.client_id.clone()),
                (
                    "client_secret",
                    p.client_secret
                        .clone()
                        .ok_or_else(|| anyhow!("profile has no secret"))?,
                ),
                ("scope", scope),
            ],
            "user" => vec![
                ("grant_type", "refresh_token".into()),
                ("client_id", p.client_id.clone()),
                (
                    "refresh_token",
                    p.refresh_token
                        .clone()
                        .ok_or_else(|| anyhow!("profile has no refresh token; log in again"))?,
                ),
                ("scope", format!("{scope} offline_access")),
            ],
            k => bail!("unknown profile kind '{k}'"),
        };
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "token request failed ({status}): {}",
                body.get("error_description")
                    .and_then(|v| v.as_str())
                    .unwrap_or(&body.to_string())
            );
        }
        if let Some(rt) = body.get("refresh_token").and_then(|v| v.as_str()) {
            self.profile.refresh_token = Some(rt.to_string());
            self.profile.save()?;
        }
        Ok(body)
    }

    /// Calls a management or directory API and returns its JSON (errors in ARM's shape
    /// become an error message).
    pub async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.call_with_headers(method, path, body, None).await
    }

    /// `call` with one extra request header (e.g. `If-Match`).
    pub async fn call_with_headers(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        header: Option<(&str, String)>,
    ) -> Result<Value> {
        let t = self
            .token(&self.profile.management_endpoint.clone())
            .await?;
        let token = t["access_token"].as_str().unwrap_or_default().to_string();
        let base = self.profile.management_endpoint.trim_end_matches('/');
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{base}{path}")
        };
        let mut req = self.http.request(method.clone(), &url).bearer_auth(token);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let code = v
                .pointer("/error/code")
                .and_then(|x| x.as_str())
                .unwrap_or("Error");
            let msg = v
                .pointer("/error/message")
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("({code}) {msg}");
        }
        Ok(v)
    }
}
