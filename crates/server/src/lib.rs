//! The composed Cloister server: configuration, the private CA and TLS, first-start
//! bootstrap, the RBAC bridge, the management (ARM) and directory (Graph-shaped) APIs, and
//! the operational endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let cfg = cloister_server::config::ServerConfig::load(None)?;
//! cloister_server::run(cfg).await
//! # }
//! ```

pub mod arm;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod listen;
pub mod nodes;
pub mod openapi;
pub mod platform;
pub mod providers;
pub mod sessions;
pub mod state;
pub mod tls;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cloister_core::error::ArmError;
use cloister_crypto::MasterKey;
use cloister_identity::Identity;
use config::ServerConfig;
use state::AppState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens the master key: `CLOISTER_MASTER_KEY` (base64) or `DATA_DIR/master.key`.
pub fn master_key(cfg: &ServerConfig) -> anyhow::Result<MasterKey> {
    if let Ok(v) = std::env::var("CLOISTER_MASTER_KEY")
        && !v.is_empty()
    {
        return MasterKey::from_base64(&v).map_err(|e| anyhow::anyhow!("CLOISTER_MASTER_KEY: {e}"));
    }
    MasterKey::load_or_create(&cfg.data_dir.join("master.key"))
        .map_err(|e| anyhow::anyhow!("master key: {e}"))
}

/// Builds everything and serves until the process is stopped.
pub async fn run(mut cfg: ServerConfig) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    std::fs::create_dir_all(&cfg.data_dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mk = Arc::new(master_key(&cfg)?);
    // Bind first: with port 0 the real ports decide the public URL (the token issuer).
    let https = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", cfg.listen))?;
    cfg.listen = https.local_addr()?;
    tracing::info!(addr = %cfg.listen, "serving HTTPS");
    let http = match cfg.http_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("binding {a}: {e}"))?;
            cfg.http_listen = Some(l.local_addr()?);
            tracing::info!(addr = %l.local_addr()?, "serving HTTP");
            Some(l)
        }
        None => None,
    };
    let store = cloister_store::Store::open(&cfg.store_url())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "opening store {}: {e}",
                cloister_store::redact_url(&cfg.store_url())
            )
        })?;
    let (tenant, sub) = bootstrap::ensure_tenant(&store).await?;
    let ca = tls::load_or_create_ca(&store, &mk, &cfg.data_dir).await?;
    let id = Identity::open(
        store.clone(),
        mk.clone(),
        cfg.identity.clone(),
        cfg.public_url(),
        cfg.http_base(),
        tenant.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("identity service: {e}"))?;
    bootstrap::ensure_admin(&cfg, &store, &id, &tenant, &sub).await?;
    let rbac = cloister_authorization::Rbac::load(store.clone()).await?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let acceptor = tls::acceptor(&ca, &cfg.listen, &cfg.tls_names)?;
    let manager = sessions::build_manager(&cfg);
    // With sessions on, the node joins the cluster of its store before any pool is loaded.
    let node = match &manager {
        Some(m) => Some(nodes::start(&cfg, &ca, store.clone(), m).await?),
        None => None,
    };
    let pools = Arc::new(cloister_sessions::arm::SessionPools::new(
        manager.clone(),
        id.clone(),
        store.clone(),
        cfg.public_url(),
        sessions::identity_socket(&cfg),
    ));
    let credentials = Arc::new(
        cloister_credentials::Credentials::open(
            store.clone(),
            mk.clone(),
            std::fs::read(cfg.data_dir.join("ca.pem")).ok(),
            cfg.public_url(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let host = providers::host(&cfg, &id, &rbac, &pools, &credentials)?;
    let st = Arc::new(AppState {
        host,
        management_audiences: vec![
            id.management_endpoint.clone(),
            "https://management.azure.com".into(),
            "https://management.core.windows.net".into(),
        ],
        cfg: cfg.clone(),
        store: store.clone(),
        id: id.clone(),
        rbac: rbac.clone(),
        prometheus,
        default_subscription: sub,
        sessions: manager,
        forwarder: node
            .as_ref()
            .map(|n| n.forwarder.clone() as Arc<dyn cloister_sessions::api::Forwarder>),
        credentials: credentials.clone(),
        me: Default::default(),
    });
    let _ = st.me.set(Arc::downgrade(&st));
    sessions::serve_identity_socket(&st).await?;
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(3600));
        loop {
            t.tick().await;
            credentials.upkeep().await;
        }
    });
    st.host
        .upkeep(st.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("providers' start-up: {}", e.message))?;
    if st.sessions.is_some() {
        // Pools written or deleted through other nodes of the store.
        let pools = pools.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.tick().await;
            loop {
                t.tick().await;
                if let Err(e) = pools.sync().await {
                    tracing::warn!("session pools: syncing with the store: {e}");
                }
            }
        });
    }
    // Long-running operations a previous run left unfinished end Failed (and keep being swept).
    cloister_arm::operations::recover(st.clone());
    {
        let st = st.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(86400));
            t.tick().await;
            loop {
                t.tick().await;
                let _ = st.host.upkeep(st.as_ref()).await;
            }
        });
    }
    let app = router(st.clone());

    // Background upkeep: key rotation and purges every minute; RBAC changes from other nodes every second.
    {
        let id = id.clone();
        let every = Duration::from_secs(cfg.identity.key_check_secs.max(1));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                if let Err(e) = id.tick().await {
                    tracing::warn!("identity upkeep: {e}");
                }
            }
        });
        let rbac = rbac.clone();
        let id = st.id.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                if let Err(e) = rbac.poll().await {
                    tracing::warn!("rbac poll: {e}");
                }
                let _ = id.keys.reload().await;
            }
        });
    }
    // The addresses actually served, for tools that started us on port 0.
    let endpoints = serde_json::json!({
        "https": format!("https://{}", cfg.listen),
        "http": cfg.http_base(),
        "authority": cfg.public_url(),
        "internal": node.as_ref().map(|n| n.address.clone()),
    });
    tls::write_file_0600(
        &cfg.data_dir.join("endpoints.json"),
        endpoints.to_string().as_bytes(),
    )?;
    println!(
        "cloister: ready on https://{} (data dir {})",
        cfg.listen,
        cfg.data_dir.display()
    );
    let limits = Arc::new(listen::Limits::from_config(&cfg.http));
    let drain = listen::Drain::new();
    let app = app.layer(axum::middleware::from_fn_with_state(
        drain.clone(),
        listen::gate,
    ));
    tokio::spawn(listen::serve(
        https,
        Some(acceptor),
        app.clone(),
        limits.clone(),
        drain.clone(),
    ));
    if let Some(l) = http {
        tokio::spawn(listen::serve(l, None, app, limits.clone(), drain.clone()));
    }
    if let (Some(n), Some(m)) = (node, &st.sessions) {
        tokio::spawn(listen::serve(
            n.listener,
            Some(n.acceptor),
            nodes::router(m.clone(), cfg.public_url()),
            limits,
            drain.clone(),
        ));
    }
    shutdown_signal().await;
    // Drain: new work gets 503 + Retry-After (and /readyz 503) while the requests in flight
    // finish, up to the deadline; then the listeners stop and the sandboxes are shut down.
    drain.start();
    if let Some(m) = &st.sessions {
        // Other nodes stop placing sessions here and take over the ready pools.
        m.drain().await;
    }
    let grace = Duration::from_secs(cfg.drain_timeout_secs);
    tracing::info!(
        in_flight = drain.in_flight(),
        deadline_secs = grace.as_secs(),
        "draining"
    );
    // Whatever hangs below, the process ends shortly after the deadline.
    std::thread::spawn(move || {
        std::thread::sleep(grace + Duration::from_secs(10));
        eprintln!("cloister: the drain did not finish in time; exiting");
        std::process::exit(1);
    });
    let deadline = tokio::time::Instant::now() + grace;
    tokio::select! {
        _ = drain.idle() => {}
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!(in_flight = drain.in_flight(), "drain deadline passed; stopping anyway");
        }
        _ = shutdown_signal() => tracing::warn!("second signal; stopping now"),
    }
    drain.stop();
    let _ = tokio::time::timeout(Duration::from_secs(2), drain.closed()).await;
    if let Some(m) = &st.sessions
        && tokio::time::timeout(Duration::from_secs(5), m.shutdown())
            .await
            .is_err()
    {
        tracing::warn!("session pools did not stop within 5 s");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The whole HTTP surface, shared by the HTTPS and HTTP listeners.
pub fn router(st: Arc<AppState>) -> Router {
    let api = Router::new()
        .merge(arm::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_doc))
        .fallback(fallback)
        .with_state(st.clone());
    let mut app = Router::new()
        .merge(cloister_identity::api::router(st.id.clone()))
        .merge(cloister_identity::arm::bindings_router(st.id.clone()))
        .merge(cloister_identity::graph::router(Arc::new(
            cloister_identity::graph::Graph {
                id: st.id.clone(),
                platform: st.clone(),
                audiences: st
                    .management_audiences
                    .iter()
                    .cloned()
                    .chain(cloister_identity::graph::GRAPH_AUDIENCES.map(String::from))
                    .collect(),
            },
        )))
        .merge(cloister_credentials::gateway::router(Arc::new(
            cloister_credentials::gateway::Gateway {
                cm: st.credentials.clone(),
                id: st.id.clone(),
                management_audiences: st.management_audiences.clone(),
            },
        )))
        .merge(api)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            st.cfg.max_body_bytes,
        ));
    // The session data plane takes uploads up to 128 MB and enforces its own limits.
    if let Some(m) = &st.sessions {
        let dp = Arc::new(cloister_sessions::api::DataPlane {
            manager: m.clone(),
            auth: Arc::new(cloister_sessions::arm::TokenAuthorizer {
                id: st.id.clone(),
                rbac: st.rbac.clone(),
            }),
            public_url: st.cfg.public_url(),
            forward: st.forwarder.clone(),
        });
        app = app.merge(
            cloister_sessions::api::router(dp).layer(axum::extract::DefaultBodyLimit::disable()),
        );
    }
    app.layer(axum::middleware::from_fn(observe))
        .layer(axum::middleware::from_fn(error_shape))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ArmError::internal("The request could not be processed.").into_response()
        }))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!("readyz: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let body = st
        .prometheus
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn openapi_doc(State(st): State<Arc<AppState>>) -> Response {
    let mut r = openapi::document(&st.host.registry)
        .to_string()
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn method_not_allowed(req: Request) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!(
            "The HTTP method '{}' is not supported for {}.",
            req.method(),
            req.uri().path().chars().take(300).collect::<String>()
        ),
    )
}

async fn fallback(req: Request) -> ArmError {
    ArmError::not_found(
        "NotFound",
        format!(
            "No API matches {} {}.",
            req.method(),
            req.uri().path().chars().take(300).collect::<String>()
        ),
    )
}

/// Errors produced below the handlers (body limits, extractor rejections) come as plain
/// text; give them ARM's error body so every API error has one shape.
async fn error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // An upstream's own answer (a session container behind its pool's proxy) goes out unchanged.
    if resp
        .extensions()
        .get::<cloister_core::error::Verbatim>()
        .is_some()
    {
        return resp;
    }
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.contains("json") || ct.contains("html") {
        return resp;
    }
    let code = match status.as_u16() {
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        405 => "MethodNotAllowed",
        s if s >= 500 => "InternalServerError",
        _ => "BadRequest",
    };
    let text = match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    ArmError::new(status.as_u16(), code, text).into_response()
}

/// Request metrics and a debug-level log line per request (never with query strings or
/// headers, which can carry secrets).
async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("cloister_http_requests_total", "route" => route.clone(), "status" => class)
        .increment(1);
    metrics::histogram!("cloister_http_request_seconds", "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    if status >= 500 {
        tracing::error!(%method, %route, status, "request failed");
    } else {
        tracing::debug!(%method, %route, status, elapsed_us = start.elapsed().as_micros() as u64, "request");
    }
    resp
}
