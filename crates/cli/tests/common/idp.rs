//! A real OAuth 2.0 / OpenID Connect identity provider for the credential-manager tests:
//! panva's `oidc-provider` (pinned in compat/idp/package.json) run by `node compat/idp/idp.mjs`
//! on 127.0.0.1, with headless login + consent and test-control endpoints under `/__test`.
//!
//! Clients (secrets overridable through `IDP_APP_SECRET` / `IDP_SVC_SECRET` in `env`):
//! * `app` (client_secret_post) and `app-basic` (client_secret_basic): authorization_code +
//!   refresh_token, PKCE S256 required, redirect URIs exactly as given to [`Idp::start`],
//!   scopes `openid offline_access api.read`; a refresh token comes with `offline_access`
//!   and rotates on every use; replaying a rotated one revokes the whole grant.
//! * `svc` (client_secret_post) and `svc-basic` (client_secret_basic): client_credentials.
//!
//! Lifetimes from `env`: `IDP_AT_TTL`, `IDP_RT_TTL`, `IDP_CC_TTL` (seconds; 3600, 86400, 3600).
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

pub const APP_CLIENT: &str = "app";
pub const APP_BASIC_CLIENT: &str = "app-basic";
pub const SVC_CLIENT: &str = "svc";
pub const SVC_BASIC_CLIENT: &str = "svc-basic";
pub const DEFAULT_APP_SECRET: &str = "app-secret-app-secret-app-secret";
pub const DEFAULT_SVC_SECRET: &str = "svc-secret-svc-secret-svc-secret";
/// The user devInteractions logs in (any name and password are accepted).
pub const USER: &str = "alice";

pub struct Idp {
    pub port: u16,
    /// Secret of `app` and `app-basic`.
    pub app_secret: String,
    /// Secret of `svc` and `svc-basic`.
    pub svc_secret: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// compat/idp, found from this crate's manifest directory.
pub fn idp_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../compat/idp"))
}

fn node() -> String {
    std::env::var("NODE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn installed_matches(dir: &std::path::Path) -> bool {
    let read = |p: PathBuf| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let Some(want) = read(dir.join("package.json")).and_then(|v| {
        v["dependencies"]["oidc-provider"]
            .as_str()
            .map(String::from)
    }) else {
        return false;
    };
    // npm writes node_modules/.package-lock.json at the end of an install.
    dir.join("node_modules/.package-lock.json").is_file()
        && read(dir.join("node_modules/oidc-provider/package.json"))
            .and_then(|v| v["version"].as_str().map(String::from))
            .is_some_and(|have| have == want)
}

/// Runs `npm ci` in compat/idp unless node_modules already holds the pinned version. Once
/// per test process, and under an exclusive file lock so parallel test processes do not race.
pub fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = idp_dir();
        let lock_path = std::env::temp_dir().join("cloister-compat-idp-npm.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .expect("open the npm lock file");
        lock.lock().expect("lock the npm lock file");
        if !installed_matches(&dir) {
            let out = Command::new("npm")
                .args(["ci", "--silent", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run npm (is Node.js installed?)");
            assert!(
                out.status.success() && installed_matches(&dir),
                "npm ci in {} failed: {}\n{}{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        drop(lock);
    });
}

fn drain(r: impl Read + Send + 'static, log: Arc<Mutex<String>>, ready: Option<mpsc::Sender<u16>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &ready
                && let Some(p) = line.strip_prefix("idp ready on ")
                && let Ok(p) = p.trim().parse()
            {
                let _ = tx.send(p);
            }
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Idp {
    /// Installs the npm packages if needed, starts the IdP on an ephemeral port (the script
    /// binds port 0 and prints the port it got, so there is no free-port race) and waits
    /// until it listens. `env` is passed to the script (IDP_* settings above).
    pub fn start(redirect_uris: &[&str], env: &[(&str, &str)]) -> Idp {
        ensure_installed();
        let dir = idp_dir();
        let mut cmd = Command::new(node());
        cmd.arg("idp.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("IDP_REDIRECT_URIS", redirect_uris.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node compat/idp/idp.mjs");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().unwrap(), log.clone(), Some(tx));
        drain(child.stderr.take().unwrap(), log.clone(), None);
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("the IdP did not start:\n{}", log.lock().unwrap());
            }
        };
        let get = |k: &str, d: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        Idp {
            port,
            app_secret: get("IDP_APP_SECRET", DEFAULT_APP_SECRET),
            svc_secret: get("IDP_SVC_SECRET", DEFAULT_SVC_SECRET),
            child: Some(child),
            log,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.issuer())
    }
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer())
    }
    pub fn introspection_url(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }
    /// What the IdP printed so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Logs in as [`USER`] and grants consent for `authorize_url` (a full authorization request
    /// at this IdP), headlessly; returns the final redirect `Location` (the redirect URI with
    /// `code`, `state` and `iss`, or `error`) without following it.
    pub async fn consent(&self, authorize_url: &str) -> String {
        self.consent_as(authorize_url, USER).await
    }

    /// [`Idp::consent`] as another user (devInteractions accepts any login and password).
    pub async fn consent_as(&self, authorize_url: &str, login: &str) -> String {
        let issuer = self.issuer();
        let in_flow = |u: &str| {
            u.starts_with(&format!("{issuer}/interaction/"))
                || u == format!("{issuer}/auth")
                || u.starts_with(&format!("{issuer}/auth?"))
                || u.starts_with(&format!("{issuer}/auth/"))
        };
        let mut jar: BTreeMap<String, String> = BTreeMap::new();
        let mut url = authorize_url.to_string();
        let mut trail = Vec::new();
        for _ in 0..12 {
            trail.push(format!("GET {url}"));
            let resp = self
                .http
                .get(&url)
                .header("cookie", cookie_header(&jar))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            absorb_cookies(&mut jar, &resp);
            let status = resp.status();
            if status.is_redirection() {
                let next = location(&url, &resp);
                if !in_flow(&next) {
                    return next;
                }
                url = next;
                continue;
            }
            let body = resp.text().await.unwrap_or_default();
            let prompt = body
                .split_once(r#"name="prompt" value=""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(p, _)| p.to_string());
            let form: Vec<(&str, &str)> = match (status.as_u16(), prompt.as_deref()) {
                (200, Some("login")) => {
                    vec![("prompt", "login"), ("login", login), ("password", "x")]
                }
                (200, Some("consent")) => vec![("prompt", "consent")],
                _ => panic!(
                    "unexpected page at {url}: {status}\n{body}\ntrail: {trail:#?}\nIdP log:\n{}",
                    self.log()
                ),
            };
            trail.push(format!("POST {url} prompt={}", prompt.unwrap()));
            let resp = self
                .http
                .post(&url)
                .header("cookie", cookie_header(&jar))
                .form(&form)
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            absorb_cookies(&mut jar, &resp);
            let status = resp.status();
            if !status.is_redirection() {
                let body = resp.text().await.unwrap_or_default();
                panic!("POST {url}: {status}\n{body}\ntrail: {trail:#?}");
            }
            let next = location(&url, &resp);
            if !in_flow(&next) {
                return next;
            }
            url = next;
        }
        panic!(
            "consent did not finish: {trail:#?}\nIdP log:\n{}",
            self.log()
        );
    }

    /// POSTs `form` to the token endpoint; returns the status and the JSON body.
    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.token_url())
            .form(form)
            .send()
            .await
            .expect("POST /token");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/__test/{path}", self.issuer()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("/__test/{path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.expect("test-control JSON");
        assert!(status.is_success(), "/__test/{path}: {status} {v}");
        v
    }

    /// Token-endpoint counts since start or the last [`Idp::reset`]:
    /// `{"authorization_code": n, "refresh_token": n, "client_credentials": n, "other": n,
    ///   "errors": n, "injected": n, "error_codes": {"invalid_grant": n, ..},
    ///   "log": [{"grant_type", "client_id", "auth", "scope", "resource", "status", "error"}]}`
    /// (`errors` counts every response ≥ 400, injected ones included; `auth` is
    /// client_secret_post, client_secret_basic or none).
    pub async fn stats(&self) -> Value {
        self.control(reqwest::Method::GET, "stats", None).await
    }

    /// Makes the next `count` (default 1) token-endpoint requests — only those of `grant_type`
    /// when given — fail with `status` and `{"error": error}` before the provider sees them.
    /// `{"status": 500|429|400|401|503, "error": "...", "count": N, "grant_type": "...",
    ///   "retry_after": secs}`; 429 and 503 carry `Retry-After: 1` unless told otherwise.
    /// Rules queue up; the first pending rule that matches a request is used.
    pub async fn fail(&self, spec: Value) {
        self.control(reqwest::Method::POST, "fail", Some(spec))
            .await;
    }

    /// Clears the stats and pending failures.
    pub async fn reset(&self) {
        self.control(reqwest::Method::POST, "reset", None).await;
    }

    /// Destroys every refresh token issued so far; the next refresh with any of them gets
    /// 400 invalid_grant. Returns how many were destroyed (rotated-away ones included).
    pub async fn expire_refresh_tokens(&self) -> u64 {
        self.control(reqwest::Method::POST, "expire-refresh-tokens", None)
            .await["destroyed"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cookie_header(jar: &BTreeMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Minimal cookie handling: the IdP's cookies are all on 127.0.0.1 and the newest of a name
/// is always the one that matters, so paths are ignored and a later cookie replaces an earlier.
fn absorb_cookies(jar: &mut BTreeMap<String, String>, resp: &reqwest::Response) {
    for h in resp.headers().get_all("set-cookie") {
        let Ok(s) = h.to_str() else { continue };
        let mut parts = s.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        let expired = parts.any(|a| {
            let a = a.trim().to_ascii_lowercase();
            a == "max-age=0" || (a.starts_with("expires=") && a.contains("1970"))
        });
        if value.is_empty() || expired {
            jar.remove(name);
        } else {
            jar.insert(name.to_string(), value.to_string());
        }
    }
}

fn location(base: &str, resp: &reqwest::Response) -> String {
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{} from {base} without Location", resp.status()));
    if url::Url::parse(loc).is_ok() {
        return loc.to_string();
    }
    url::Url::parse(base)
        .and_then(|b| b.join(loc))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| loc.to_string())
}
