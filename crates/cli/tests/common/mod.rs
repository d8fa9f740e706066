//! Test harness: starts a real `cloister serve` (SQLite by default; PostgreSQL when
//! `CLOISTER_TEST_PG` names a server such as `postgres://cloister:cloister@127.0.0.1:5432`),
//! and talks to it over HTTPS with its own CA, as a user would.
#![allow(dead_code)]

pub mod idp;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub http_port: u16,
    pub child: Option<Child>,
    pub store: Option<String>,
    pub boot: Value,
    pub http: reqwest::Client,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    /// When set, the server logs at debug level into this file.
    pub log_file: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloister"))
}

/// A fresh PostgreSQL database when CLOISTER_TEST_PG is set.
pub async fn fresh_store() -> Option<String> {
    let base = std::env::var("CLOISTER_TEST_PG")
        .ok()
        .filter(|v| !v.is_empty())?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to CLOISTER_TEST_PG");
    sqlx::Executor::execute(
        &mut c,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
    )
    .await
    .expect("create database");
    Some(format!("{base}/{name}"))
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_store().await;
        let mut s = Server {
            dir,
            port: free_port(),
            http_port: free_port(),
            child: None,
            store,
            boot: Value::Null,
            http: reqwest::Client::new(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            extra_env: vec![],
            log_file: None,
        };
        s.spawn().await;
        s
    }

    /// Starts with a TOML configuration file.
    pub async fn start_with_config(toml: &str) -> Server {
        let cfg_dir = tempfile::tempdir().unwrap().keep();
        let path = cfg_dir.join("cloister.toml");
        std::fs::write(&path, toml).unwrap();
        Self::start_with(&["--config", path.to_str().unwrap()]).await
    }

    /// Starts with debug logging captured in `DATA_DIR/server.log`.
    pub async fn start_logged() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_store().await;
        let log = dir.path().join("server.log");
        let mut s = Server {
            dir,
            port: free_port(),
            http_port: free_port(),
            child: None,
            store,
            boot: Value::Null,
            http: reqwest::Client::new(),
            extra_args: vec![
                "--log-level".into(),
                "debug".into(),
                "--log-format".into(),
                "json".into(),
            ],
            extra_env: vec![],
            log_file: Some(log),
        };
        s.spawn().await;
        s
    }

    /// A second node on the same store (PostgreSQL only), sharing the master key.
    pub async fn second_node(&self) -> Server {
        let mk = std::fs::read_to_string(self.dir.path().join("master.key")).unwrap();
        let mut s = Server {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            http_port: free_port(),
            child: None,
            store: self.store.clone(),
            boot: Value::Null,
            http: reqwest::Client::new(),
            // Nodes behind one name share the public URL (the token issuer).
            extra_args: vec!["--public-url".into(), self.url("")],
            extra_env: vec![("CLOISTER_MASTER_KEY".into(), mk.trim().to_string())],
            log_file: None,
        };
        s.spawn().await;
        s
    }

    pub async fn spawn(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .args(&self.extra_args)
            .env("CLOISTER_LOG_LEVEL", "warn")
            // The plain resource types the tests use as "a resource of the user's own".
            .env(
                "CLOISTER_ARM_TYPES",
                "Contoso.Widgets/widgets,Contoso.Web/sites,Contoso.Slow/things:lro",
            )
            .envs(self.extra_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(f) = &self.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .unwrap();
            cmd.stderr(Stdio::from(file));
        }
        if let Some(st) = &self.store {
            cmd.arg("--store").arg(st);
        }
        let _ = std::fs::remove_file(self.dir.path().join("endpoints.json"));
        self.child = Some(cmd.spawn().expect("spawn cloister"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let boot_path = self.dir.path().join("bootstrap.json");
        let ep_path = self.dir.path().join("endpoints.json");
        // The server binds port 0 and reports its ports in endpoints.json.
        loop {
            if let Ok(text) = std::fs::read_to_string(&ep_path)
                && let Ok(ep) = serde_json::from_str::<Value>(&text)
            {
                let port_of = |k: &str| {
                    ep[k]
                        .as_str()
                        .and_then(|u| u.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                };
                if let (Some(p), Some(h)) = (port_of("https"), port_of("http")) {
                    self.port = p;
                    self.http_port = h;
                }
            }
            if boot_path.exists()
                && ep_path.exists()
                && let Ok(text) = std::fs::read_to_string(&boot_path)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                self.boot = v;
                self.http = self.client_builder().build().unwrap();
                if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                    && r.status().is_success()
                {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("cloister exited early: {st}");
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client that trusts this server's CA and follows no redirects (what [`Server::http`]
    /// is built from), for tests that need other connection settings.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let pem = std::fs::read(self.dir.path().join("ca.pem")).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .redirect(reqwest::redirect::Policy::none())
    }
    pub fn url(&self, p: &str) -> String {
        format!("https://127.0.0.1:{}{p}", self.port)
    }
    pub fn http_url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.http_port)
    }
    pub fn tenant(&self) -> String {
        self.boot["tenantId"].as_str().unwrap().to_string()
    }
    pub fn sub(&self) -> String {
        self.boot["subscriptionId"].as_str().unwrap().to_string()
    }
    pub fn admin_id(&self) -> String {
        self.boot["clientId"].as_str().unwrap().to_string()
    }
    pub fn admin_secret(&self) -> String {
        self.boot["clientSecret"].as_str().unwrap().to_string()
    }
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// POST the v2 token endpoint with a form; returns (status, body).
    pub async fn token_raw(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(&format!("/{}/oauth2/v2.0/token", self.tenant())))
            .form(form)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn client_token(&self, id: &str, secret: &str, resource: &str) -> String {
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        let (s, v) = self
            .token_raw(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", &scope),
            ])
            .await;
        assert_eq!(s, 200, "token: {v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.client_token(
            &self.admin_id(),
            &self.admin_secret(),
            &format!("https://127.0.0.1:{}/", self.port),
        )
        .await
    }

    /// Calls a management/directory API with a bearer token.
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates resource group `rg` and an empty session pool `pool` in it, makes the admin its
    /// Session Executor, and returns (pool management endpoint, admin's sessions token).
    pub async fn executor_pool(&self, rg: &str, pool: &str) -> (String, String) {
        self.executor_pool_with(rg, pool, json!({})).await
    }

    /// As [`Server::executor_pool`], with the pool's `properties`.
    pub async fn executor_pool_with(&self, rg: &str, pool: &str, props: Value) -> (String, String) {
        let admin = self.admin_token().await;
        self.create_rg(&admin, rg).await;
        let id = format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.App/sessionPools/{pool}",
            self.sub()
        );
        let (st, v) = self
            .call(
                &admin,
                "PUT",
                &format!("{id}?api-version=2025-07-01"),
                Some(json!({"location": "local", "properties": props})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let endpoint = v["properties"]["poolManagementEndpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let oid = claims(&admin)["oid"].as_str().unwrap().to_string();
        // Azure ContainerApps Session Executor.
        self.assign(&admin, &id, "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0", &oid)
            .await;
        let token = self
            .client_token(
                &self.admin_id(),
                &self.admin_secret(),
                "https://dynamicsessions.io",
            )
            .await;
        (endpoint, token)
    }

    /// Creates an application + service principal + secret; returns (appId, objectId of SP, secret).
    pub async fn new_sp(&self, admin: &str, name: &str) -> (String, String, String) {
        let (s, app) = self
            .call(
                admin,
                "POST",
                "/v1.0/applications",
                Some(json!({"displayName": name})),
            )
            .await;
        assert_eq!(s, 201, "{app}");
        let obj = app["id"].as_str().unwrap();
        let app_id = app["appId"].as_str().unwrap().to_string();
        let (s, pw) = self
            .call(
                admin,
                "POST",
                &format!("/v1.0/applications/{obj}/addPassword"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, 200, "{pw}");
        let (_, sps) = self
            .call(
                admin,
                "GET",
                &format!("/v1.0/servicePrincipals?$filter=appId eq '{app_id}'"),
                None,
            )
            .await;
        let sp = sps["value"][0]["id"].as_str().unwrap().to_string();
        (app_id, sp, pw["secretText"].as_str().unwrap().to_string())
    }

    pub fn mgmt(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    pub async fn assign(
        &self,
        admin: &str,
        scope: &str,
        role_guid: &str,
        principal: &str,
    ) -> Value {
        let prefix = if scope == "/" { "" } else { scope };
        let id = uuid::Uuid::new_v4();
        let (s, v) = self
            .call(
                admin,
                "PUT",
                &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments/{id}?api-version=2022-04-01"),
                Some(json!({"properties": {"roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"), "principalId": principal}})),
            )
            .await;
        assert_eq!(s, 201, "assign: {v}");
        v
    }

    pub async fn create_rg(&self, admin: &str, name: &str) {
        let (s, v) = self
            .call(
                admin,
                "PUT",
                &format!(
                    "/subscriptions/{}/resourcegroups/{name}?api-version=2021-04-01",
                    self.sub()
                ),
                Some(json!({"location": "local"})),
            )
            .await;
        assert!(s == 201 || s == 200, "rg: {v}");
    }

    /// Runs the CLI with this server's profile directory.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .env("CLOISTER_CONFIG_DIR", self.dir.path().join("cli"))
            .output()
            .expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const MI_OPERATOR: &str = "f1a07417-d97a-45cb-824c-7a7467783830";

/// Decodes a JWT's payload without verifying it (tests only).
pub fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}
pub fn header(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}
