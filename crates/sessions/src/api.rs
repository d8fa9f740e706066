//! The pool's data plane, served at its `poolManagementEndpoint`
//! (`{public url}/dynamicsessions/subscriptions/{s}/resourceGroups/{rg}/sessionPools/{name}`).
//!
//! One router serves both API generations: the legacy `code/execute`, `files/upload`,
//! `files/content/{name}` (2024-02-02-preview, 2024-08-02-preview) and the current
//! `executions`, `files/{name}[/content]`, `session`, `listSessions`, `metadata`
//! (2024-10-02-preview and later). The response shape follows the path; where a path exists
//! in both (`GET files`) it follows the api-version.

use crate::Manager;
use crate::error::{DpError, pool_err};
use crate::ident::{Query, validate};
use crate::pool::{Execution, Pool, Session};
use crate::runtime::{
    ExecOutcome, ExecStatus, FileError, FileErrorKind, FileInfo, Instance, SessionKind,
};
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PREFIX: &str = "/dynamicsessions";
/// Upload requests larger than this in all get 413 (Azure's limit is 128 MB per file; here
/// it caps the whole request, so a request's memory and sandbox I/O are bounded).
pub const MAX_UPLOAD: usize = 128 * 1024 * 1024;
const MAX_CODE_BODY: usize = 8 * 1024 * 1024;
pub const DEFAULT_TIMEOUT_SECS: u64 = 220;
const NEW_API_DEFAULT_OUTPUT: usize = 4096;
const LEGACY_OUTPUT: usize = 4 * 1024 * 1024;
const LIST_PAGE: usize = 300;

/// Authenticates the caller and checks the Session Executor data action on the pool.
pub trait Authorizer: Send + Sync + 'static {
    /// Returns the caller's object id.
    fn authorize(&self, authorization: Option<&str>, pool_id: &str) -> Result<String, DpError>;
}

pub struct DataPlane {
    pub manager: Arc<Manager>,
    pub auth: Arc<dyn Authorizer>,
    /// The server's public base URL (scheme, host, port).
    pub public_url: String,
    /// Sends requests for sessions owned by other nodes to their owner (None on the internal
    /// channel, whose requests are served where they land, and on a single node).
    pub forward: Option<Arc<dyn Forwarder>>,
}

/// The internal channel between nodes, as the data plane uses it.
#[async_trait::async_trait]
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `req` (method, path, query, headers and streamed body, the caller's credential
    /// removed) to the node at `address`, as `caller` (already authorized here), and returns
    /// the owner's answer, streamed.
    async fn forward(&self, address: &str, caller: &str, req: Request) -> Response;
}

/// The data-plane endpoint of a pool resource.
pub fn endpoint(public_url: &str, pool_id: &str) -> String {
    // /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.App/sessionPools/{name}
    let p: Vec<&str> = pool_id.trim_matches('/').split('/').collect();
    let (s, rg, name) = (
        p.get(1).copied().unwrap_or(""),
        p.get(3).copied().unwrap_or(""),
        p.last().copied().unwrap_or(""),
    );
    format!(
        "{}{PREFIX}/subscriptions/{s}/resourceGroups/{rg}/sessionPools/{name}",
        public_url.trim_end_matches('/')
    )
}

pub fn router(dp: Arc<DataPlane>) -> Router {
    Router::new()
        .route(&format!("{PREFIX}/{{*rest}}"), axum::routing::any(handle))
        .with_state(dp)
}

type Res = Result<Response, DpError>;

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn is_legacy(api_version: &str) -> bool {
    api_version.get(..10).unwrap_or(api_version) < "2024-10-02"
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn file_err(e: FileError) -> DpError {
    match e.kind {
        FileErrorKind::NotFound => DpError::not_found("FileNotFound", e.message),
        FileErrorKind::Invalid => DpError::bad(e.message),
        FileErrorKind::TooLarge => DpError::new(413, "RequestEntityTooLarge", e.message),
        FileErrorKind::Other => DpError::new(500, "InternalServerError", e.message),
    }
}

async fn handle(State(dp): State<Arc<DataPlane>>, req: Request) -> Response {
    match route(&dp, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn decode_seg(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

struct Ctx {
    pool: Arc<Pool>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    q: Query,
    api: String,
    endpoint: String,
}

impl Ctx {
    fn identifier(&self) -> Result<String, DpError> {
        let id = self.q.get("identifier").ok_or_else(|| {
            DpError::validation("The 'identifier' query parameter is required.")
                .target("identifier")
        })?;
        validate(id).map_err(|m| DpError::validation(m).target("identifier"))?;
        Ok(id.to_string())
    }
}

async fn route(dp: &DataPlane, req: Request) -> Res {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or(&path);
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let ok_prefix = segs.len() >= 6
        && segs[0].eq_ignore_ascii_case("subscriptions")
        && segs[2].eq_ignore_ascii_case("resourceGroups")
        && segs[4].eq_ignore_ascii_case("sessionPools");
    if !ok_prefix {
        return Err(DpError::not_found(
            "NotFound",
            "A pool endpoint looks like /dynamicsessions/subscriptions/{id}/resourceGroups/{name}/sessionPools/{name}/….",
        ));
    }
    let pool_id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.App/sessionPools/{}",
        segs[1], segs[3], segs[5]
    );
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = dp.auth.authorize(authz, &pool_id)?;
    let pool = dp.manager.pool(&pool_id).ok_or_else(|| {
        DpError::not_found(
            "SessionPoolNotFound",
            format!("The session pool '{}' was not found.", segs[5]),
        )
    })?;
    let q = Query::parse(req.uri().query());
    // A session another node owns (or that placement gives to another node) is served there
    // (WebSocket upgrades of custom pools excepted: they are served where they land).
    if let (Some(fwd), Some(c), Some(id)) = (&dp.forward, dp.manager.cluster(), q.get("identifier"))
        && validate(id).is_ok()
        && !req.headers().contains_key(header::UPGRADE)
        && pool.get(id).is_none()
        && let crate::cluster::Route::Node { id: node, address } = c.route(&pool_id, id).await
    {
        tracing::debug!(pool = %pool_id, %node, "forwarding to the session's node");
        metrics::counter!("cloister_sessions_forwarded_total").increment(1);
        let id = id.to_string();
        let r = fwd.forward(&address, &caller, req).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            c.forget_route(&pool_id, &id);
        }
        return Ok(r);
    }
    if pool.spec().container_type == crate::spec::ContainerType::CustomContainer
        && !segs
            .get(6)
            .is_some_and(|s| decode_seg(s).eq_ignore_ascii_case(".management"))
    {
        // Everything but `.management/*` goes to the session's container, path unchanged.
        let raw_tail = format!("/{}", segs[6..].join("/"));
        let fwd = crate::custom_proxy::Forwarded {
            client: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            proto: dp
                .public_url
                .split_once("://")
                .map_or("https", |(p, _)| p)
                .to_string(),
        };
        return crate::custom_proxy::forward(&pool, req, &raw_tail, fwd).await;
    }
    let mut tail: Vec<String> = segs[6..].iter().map(|s| decode_seg(s)).collect();
    while tail.last().is_some_and(|s| s.is_empty()) {
        tail.pop();
    }
    let api = q.get("api-version").map(str::to_string).ok_or_else(|| {
        DpError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    })?;
    let ctx = Ctx {
        endpoint: endpoint(&dp.public_url, &pool_id),
        cluster: dp.manager.cluster().cloned(),
        pool,
        q,
        api,
    };
    let t: Vec<&str> = tail.iter().map(String::as_str).collect();
    let lc: Vec<String> = t.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lc.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, l.as_slice()) {
        (&Method::POST, ["code", "execute"]) => legacy_execute(&ctx, req).await,
        (&Method::POST, ["executions"]) => execute(&ctx, req).await,
        (&Method::GET, ["executions", _]) => get_execution(&ctx, t[1]).await,
        (&Method::POST, ["files", "upload"]) => upload(&ctx, req, true).await,
        (&Method::POST, ["files"]) => upload(&ctx, req, false).await,
        (&Method::GET, ["files"]) => list_files(&ctx).await,
        (&Method::GET, ["files", "content", ..]) if t.len() > 2 => {
            download(&ctx, &t[2..].join("/")).await
        }
        (&Method::GET, ["files", .., "content"]) if t.len() > 2 => {
            download(&ctx, &t[1..t.len() - 1].join("/")).await
        }
        (&Method::GET, ["files", ..]) if t.len() > 1 => stat(&ctx, &t[1..].join("/")).await,
        (&Method::DELETE, ["files", ..]) if t.len() > 1 => {
            delete_file(&ctx, &t[1..].join("/")).await
        }
        (&Method::GET, ["session"]) => get_session(&ctx, false).await,
        (&Method::DELETE, ["session"]) => delete_session(&ctx, false).await,
        (&Method::GET, ["listsessions"]) => list_sessions(&ctx, false).await,
        // POST as Azure's custom-container pools take them; GET too.
        (&Method::POST | &Method::GET, [".management", "getsession"]) => {
            get_session(&ctx, true).await
        }
        (&Method::POST | &Method::GET, [".management", "listsessions"]) => {
            list_sessions(&ctx, true).await
        }
        (&Method::POST | &Method::GET, [".management", "stopsession"]) => {
            delete_session(&ctx, true).await
        }
        (&Method::GET, ["metadata"]) => metadata(dp, &ctx).await,
        _ => Err(DpError::not_found(
            "SessionRequestNotSupported",
            format!(
                "{method} {} is not an operation of the session pool API (api-version {}).",
                if t.is_empty() {
                    "/".to_string()
                } else {
                    t.join("/")
                },
                ctx.api
            ),
        )),
    }
}

// ---- execution ------------------------------------------------------------------------

#[derive(Debug)]
struct ExecReq {
    code: String,
    asynchronous: bool,
    timeout: Duration,
    max_output: Option<usize>,
}

fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let m = v.as_object()?;
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

async fn body_bytes(req: Request, limit: usize) -> Result<axum::body::Bytes, DpError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            DpError::new(
                413,
                "RequestEntityTooLarge",
                format!("The request body is larger than {limit} bytes."),
            )
        })
}

/// The session kind of a pool (its container type; stored pools always have one that runs).
fn kind_of(pool: &Pool) -> SessionKind {
    SessionKind::of(pool.spec().container_type).unwrap_or_default()
}

/// An execution request for a pool of `kind`: `code` (Python, JavaScript) or, for a Shell pool,
/// `shellCommand`; sending the one a pool does not take is a 400 that names the right one.
fn parse_exec(body: &[u8], kind: SessionKind) -> Result<ExecReq, DpError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        DpError::new(
            400,
            "InvalidRequestContent",
            format!("The request body is not valid JSON: {e}."),
        )
    })?;
    if !v.is_object() {
        return Err(DpError::new(
            400,
            "InvalidRequestContent",
            "The request body must be a JSON object.",
        ));
    }
    // Wrapped (`{"properties": {...}}`) or flat: clients send both.
    let p = match get_ci(&v, "properties") {
        Some(p @ Value::Object(_)) => p,
        _ => &v,
    };
    let pool_type = match kind {
        SessionKind::Python => "PythonLTS",
        SessionKind::Shell => "Shell",
        SessionKind::Node => "NodeLTS",
    };
    if kind == SessionKind::Shell {
        if get_ci(p, "code").is_some_and(|c| !c.is_null()) {
            return Err(DpError::bad(
                "'code' is for code-interpreter pools; this is a Shell pool, send the command as 'shellCommand'.",
            )
            .target("code"));
        }
        if get_ci(p, "execCommandAndArgs").is_some_and(|c| !c.is_null()) {
            return Err(DpError::bad(
                "'execCommandAndArgs' is not supported; send the command line as 'shellCommand'.",
            )
            .target("execCommandAndArgs"));
        }
    } else if get_ci(p, "shellCommand").is_some_and(|c| !c.is_null()) {
        return Err(DpError::bad(format!(
            "'shellCommand' is for Shell pools; this is a {pool_type} pool, send 'code'."
        ))
        .target("shellCommand"));
    }
    let field = if kind == SessionKind::Shell {
        "shellCommand"
    } else {
        "code"
    };
    let code = match get_ci(p, field) {
        Some(Value::String(s)) if kind == SessionKind::Shell && s.trim().is_empty() => {
            return Err(DpError::bad("'shellCommand' is empty.").target(field));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(DpError::bad(format!("'{field}' must be a string.")).target(field)),
        None if kind == SessionKind::Shell => {
            return Err(DpError::new(
                400,
                "SessionPropertiesMissing",
                "The request must carry 'shellCommand' (and optionally codeInputType, executionType, timeoutInSeconds).",
            )
            .target(field));
        }
        None => {
            return Err(DpError::new(
                400,
                "SessionPropertiesMissing",
                "The request must carry 'code' (and optionally codeInputType, executionType, timeoutInSeconds).",
            )
            .target("code"));
        }
    };
    let input = match get_ci(p, "codeInputType") {
        None | Some(Value::Null) => "inline".to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(_) => return Err(DpError::bad("'codeInputType' must be a string.")),
    };
    let code = match input.as_str() {
        "inline" | "inlinetext" => code,
        "inlinebase64" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(code.trim())
                .map_err(|_| {
                    DpError::bad(format!("'{field}' is not valid base64.")).target(field)
                })?;
            String::from_utf8(raw).map_err(|_| {
                DpError::bad(format!("The decoded '{field}' is not UTF-8.")).target(field)
            })?
        }
        other => {
            return Err(DpError::bad(format!(
                "'codeInputType' must be Inline, InlineBase64 or InlineText; got '{other}'."
            ))
            .target("codeInputType"));
        }
    };
    let asynchronous = match get_ci(p, "executionType") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("synchronous") => false,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("asynchronous") => true,
        Some(x) => {
            return Err(DpError::bad(format!(
                "'executionType' must be Synchronous or Asynchronous; got {x}."
            ))
            .target("executionType"));
        }
    };
    let timeout = match get_ci(p, "timeoutInSeconds") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_SECS,
        Some(x) => match x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)) {
            Some(n) if (1..=DEFAULT_TIMEOUT_SECS).contains(&n) => n,
            _ => {
                return Err(DpError::bad(format!(
                    "'timeoutInSeconds' must be an integer from 1 to {DEFAULT_TIMEOUT_SECS}."
                ))
                .target("timeoutInSeconds"));
            }
        },
    };
    let max_output = match get_ci(p, "outputStreamsMaxLength") {
        None | Some(Value::Null) => None,
        Some(x) => match x.as_u64() {
            Some(n) if n >= 1 => Some(n.min(LEGACY_OUTPUT as u64) as usize),
            _ => {
                return Err(
                    DpError::bad("'outputStreamsMaxLength' must be a positive integer.")
                        .target("outputStreamsMaxLength"),
                );
            }
        },
    };
    Ok(ExecReq {
        code,
        asynchronous,
        timeout: Duration::from_secs(timeout),
        max_output,
    })
}

const TIMED_OUT: &str = "Request timed out waiting for code execution to complete";

/// stderr as the client sees it, with Azure's messages for timeouts and aborts.
fn client_stderr(o: &ExecOutcome) -> String {
    if o.exit_code.is_some() {
        // A shell command's stderr is its own; errorName/errorMessage say why it stopped.
        return match o.status {
            ExecStatus::Aborted if o.stderr.is_empty() => "Execution aborted".into(),
            _ => o.stderr.clone(),
        };
    }
    let note = match o.status {
        ExecStatus::TimedOut => TIMED_OUT,
        ExecStatus::Aborted => "Execution aborted",
        _ => return o.stderr.clone(),
    };
    if o.stderr.is_empty() {
        note.to_string()
    } else {
        format!("{}\n{note}", o.stderr.trim_end())
    }
}

/// Runs code in the identifier's session. A sandbox that died under the code (out of memory,
/// killed interpreter, a timeout it would not yield to) is deleted with its session, so the
/// next request gets a fresh one.
async fn run_in(
    pool: &Arc<Pool>,
    sess: &Arc<Session>,
    mut guard: tokio::sync::OwnedMutexGuard<Option<Box<dyn Instance>>>,
    code: &str,
    timeout: Duration,
    max_output: usize,
) -> ExecOutcome {
    let Some(inst) = guard.as_mut() else {
        return ExecOutcome::empty(ExecStatus::Aborted, "the session ended".into(), 0);
    };
    let t0 = Instant::now();
    let mut out = inst.exec(code, timeout, max_output).await;
    if out.duration_ms == 0 {
        out.duration_ms = t0.elapsed().as_millis() as u64;
    }
    metrics::histogram!("cloister_session_execution_seconds").record(t0.elapsed().as_secs_f64());
    sess.touch();
    if !inst.is_alive() {
        pool.delete_session(sess, Some(guard)).await;
    }
    out
}

/// `result` of the legacy API: an image object for a plot, the typed value when the repr is
/// a JSON number (so `6*7` gives 42), the repr string otherwise, "" when there is none.
pub fn legacy_result(o: &ExecOutcome) -> Value {
    if let Some(img) = o.images.last() {
        return json!({"type": "image", "format": "png", "base64_data": img});
    }
    match &o.result {
        None => json!(""),
        Some(t) => match serde_json::from_str::<Value>(t.trim()) {
            Ok(Value::Number(n)) if n.is_i64() || n.is_u64() || n.to_string() == t.trim() => {
                Value::Number(n)
            }
            _ => json!(t),
        },
    }
}

async fn legacy_execute(ctx: &Ctx, req: Request) -> Res {
    let identifier = ctx.identifier()?;
    let b = body_bytes(req, MAX_CODE_BODY).await?;
    let kind = kind_of(&ctx.pool);
    let r = parse_exec(&b, kind)?;
    let (sess, guard) = ctx.pool.session(&identifier).await.map_err(pool_err)?;
    let o = run_in(
        &ctx.pool,
        &sess,
        guard,
        &r.code,
        r.timeout,
        r.max_output.unwrap_or(LEGACY_OUTPUT),
    )
    .await;
    let status = match o.exit_code {
        Some(0) => "Success",
        Some(_) => "Failure",
        None if o.status == ExecStatus::Succeeded => "Success",
        None => "Failure",
    };
    let mut props = json!({
        "$id": "2",
        "status": status,
        "stdout": o.stdout,
        "stderr": client_stderr(&o),
        "result": legacy_result(&o),
        "executionTimeInMilliseconds": o.duration_ms,
    });
    match kind {
        // The documented NodeLTS response names the value `executionResult`; the Python
        // clients index `result`: both are there.
        SessionKind::Node => {
            props["executionResult"] = json!(o.result.clone().unwrap_or_default());
        }
        SessionKind::Shell => {
            props["result"] = json!("");
            props["exitCode"] = json!(o.exit_code);
        }
        SessionKind::Python => {}
    }
    add_error(&mut props, &o);
    Ok(json_resp(
        StatusCode::OK,
        json!({"$id": "1", "properties": props}),
    ))
}

/// `errorName`/`errorMessage` of a failed execution, when the runtime said why.
fn add_error(v: &mut Value, o: &ExecOutcome) {
    if o.status == ExecStatus::Succeeded && o.exit_code.is_none_or(|c| c == 0) {
        return;
    }
    if let Some(n) = &o.error_name {
        v["errorName"] = json!(n);
    }
    if let Some(m) = &o.error_message {
        v["errorMessage"] = json!(m);
    } else if o.status == ExecStatus::Aborted {
        v["errorMessage"] = json!(o.stderr);
    }
}

fn execution_json(identifier: &str, e: &Execution, kind: SessionKind) -> Value {
    if kind == SessionKind::Shell {
        return shell_execution_json(identifier, e);
    }
    let (status, result) = match &e.outcome {
        None => ("Running", Value::Null),
        Some(o) => (
            if o.status == ExecStatus::Succeeded {
                "Succeeded"
            } else {
                "Failed"
            },
            json!({
                "stdout": o.stdout,
                "stderr": client_stderr(o),
                "executionResult": o.result,
                "executionTimeInMilliseconds": o.duration_ms,
            }),
        ),
    };
    let mut v = json!({
        "id": e.id,
        "identifier": identifier,
        "executionType": if e.asynchronous { "Asynchronous" } else { "Synchronous" },
        "status": status,
        "result": result,
    });
    if let Some(o) = &e.outcome {
        add_error(&mut v, o);
    }
    v
}

/// A Shell pool's execution: `status` is the exit code as a string (what LangChain's
/// `SessionsBashTool` reads) and `exitCode` the same as an integer (what Microsoft's in-container
/// shell API returns); -1 with `errorName` `CommandStartError` or `ExecutionTimeout` when the
/// command could not start or was killed at its timeout. `Running` while an asynchronous one runs.
fn shell_execution_json(identifier: &str, e: &Execution) -> Value {
    let mut v = json!({
        "id": e.id,
        "identifier": identifier,
        "executionType": if e.asynchronous { "Asynchronous" } else { "Synchronous" },
        "status": "Running",
        "exitCode": null,
        "result": null,
    });
    if let Some(o) = &e.outcome {
        let code = o.exit_code.unwrap_or(-1);
        v["status"] = json!(code.to_string());
        v["exitCode"] = json!(code);
        v["result"] = json!({
            "stdout": o.stdout,
            "stderr": client_stderr(o),
            "executionTimeInMilliseconds": o.duration_ms,
        });
        add_error(&mut v, o);
    }
    v
}

fn operation_id(headers: &HeaderMap) -> String {
    headers
        .get("operation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn with_operation(mut r: Response, ctx: &Ctx, identifier: &str, id: &str) -> Response {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let loc = format!(
        "{}/executions/{}?api-version={}&identifier={}",
        ctx.endpoint,
        enc(id),
        enc(&ctx.api),
        enc(identifier)
    );
    if let Ok(v) = HeaderValue::from_str(&loc) {
        r.headers_mut().insert("operation-location", v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("operation-id", v);
    }
    r
}

async fn execute(ctx: &Ctx, req: Request) -> Res {
    let identifier = ctx.identifier()?;
    let op = operation_id(req.headers());
    let b = body_bytes(req, MAX_CODE_BODY).await?;
    let kind = kind_of(&ctx.pool);
    let r = parse_exec(&b, kind)?;
    let max_output = r.max_output.unwrap_or(NEW_API_DEFAULT_OUTPUT);
    let (sess, guard) = ctx.pool.session(&identifier).await.map_err(pool_err)?;
    let mut e = Execution {
        id: op.clone(),
        asynchronous: r.asynchronous,
        outcome: None,
    };
    if r.asynchronous {
        sess.record(e.clone());
        let pool = ctx.pool.clone();
        let s2 = sess.clone();
        let (code, timeout) = (r.code, r.timeout);
        tokio::spawn(async move {
            let o = run_in(&pool, &s2, guard, &code, timeout, max_output).await;
            e.outcome = Some(o);
            s2.record(e);
        });
        let rec = sess.execution(&op).expect("just recorded");
        let resp = json_resp(
            StatusCode::ACCEPTED,
            execution_json(&identifier, &rec, kind),
        );
        return Ok(with_operation(resp, ctx, &identifier, &op));
    }
    let o = run_in(&ctx.pool, &sess, guard, &r.code, r.timeout, max_output).await;
    e.outcome = Some(o);
    sess.record(e.clone());
    let code = if ctx.api.get(..10).unwrap_or("") >= "2025-10-02" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let resp = json_resp(code, execution_json(&identifier, &e, kind));
    Ok(with_operation(resp, ctx, &identifier, &op))
}

async fn get_execution(ctx: &Ctx, id: &str) -> Res {
    let identifier = ctx.identifier()?;
    let sess = ctx.pool.get(&identifier).ok_or_else(|| {
        DpError::not_found(
            "SessionNotFound",
            format!("There is no session with identifier '{identifier}'."),
        )
    })?;
    sess.touch();
    let e = sess.execution(id).ok_or_else(|| {
        DpError::not_found(
            "ExecutionNotFound",
            format!("There is no execution '{id}' in session '{identifier}'."),
        )
    })?;
    Ok(json_resp(
        StatusCode::OK,
        execution_json(&identifier, &e, kind_of(&ctx.pool)),
    ))
}

// ---- files ------------------------------------------------------------------------------

/// A file name or path from a client, relative to /mnt/data. Absolute `/mnt/data/…` names
/// (LlamaIndex and Semantic Kernel send those) are accepted; nothing may leave /mnt/data.
pub fn clean_path(raw: &str) -> Result<String, DpError> {
    let s = raw.trim();
    let rel = if let Some(r) = s.strip_prefix("/mnt/data") {
        if !(r.is_empty() || r.starts_with('/')) {
            return Err(DpError::bad(format!("'{raw}' is not under /mnt/data.")));
        }
        r.trim_start_matches('/')
    } else if s.starts_with('/') {
        return Err(DpError::bad(format!(
            "'{raw}' is outside /mnt/data; files live in /mnt/data."
        )));
    } else {
        s
    };
    let mut parts = vec![];
    for p in rel.split('/').filter(|p| !p.is_empty()) {
        if p == "." || p == ".." {
            return Err(DpError::bad(format!(
                "'{raw}' contains '{p}'; paths may not walk between directories."
            )));
        }
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_alphanumeric() || " -_.@$&=;,#%^()+~[]{}!'".contains(*c)))
        {
            return Err(DpError::bad(format!(
                "The file name '{raw}' contains {c:?}, which is not allowed."
            )));
        }
        if p.len() > 255 {
            return Err(DpError::bad("A file name may be at most 255 bytes."));
        }
        parts.push(p);
    }
    Ok(parts.join("/"))
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "py" => "text/x-python",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

fn legacy_file(f: &FileInfo, n: &mut u32) -> Value {
    let a = *n;
    *n += 2;
    json!({
        "$id": (a).to_string(),
        "properties": {
            "$id": (a + 1).to_string(),
            "filename": f.rel_path(),
            "size": f.size,
            "lastModifiedTime": rfc3339_ms((f.modified * 1000.0) as i64),
        }
    })
}

fn new_file(f: &FileInfo) -> Value {
    let dir = if f.directory.is_empty() {
        "/mnt/data".to_string()
    } else {
        format!("/mnt/data/{}", f.directory)
    };
    json!({
        "name": f.name,
        "type": if f.is_dir { "Directory" } else { "File" },
        "contentType": if f.is_dir { Value::Null } else { json!(content_type(&f.name)) },
        "sizeInBytes": f.size,
        "lastModifiedAt": rfc3339_ms((f.modified * 1000.0) as i64),
        "directory": dir,
    })
}

fn too_large() -> DpError {
    DpError::new(
        413,
        "RequestEntityTooLarge",
        format!(
            "An upload request may be at most {} MiB in all (its files and multipart framing).",
            MAX_UPLOAD >> 20
        ),
    )
}

fn multipart_err(e: axum::extract::multipart::MultipartError) -> DpError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    DpError::bad(format!(
        "The multipart body could not be read: {}",
        e.body_text()
    ))
}

/// Uploads go to the sandbox in pieces of this size.
const UPLOAD_PIECE: usize = 1 << 20;
/// Longest wait for the next piece of an upload's body; the session is held meanwhile.
const UPLOAD_STALL: Duration = Duration::from_secs(60);

/// Uploads stream: the caller is authorized and the request checked before any of the body
/// is read, the whole request is capped at [`MAX_UPLOAD`] (413 from its Content-Length
/// before the body is read, or as soon as a streamed body passes it), and each file goes to
/// the sandbox in pieces of [`UPLOAD_PIECE`] bytes as it arrives, so the server holds about
/// one piece per upload (and its base64 form) whatever the request's size.
async fn upload(ctx: &Ctx, req: Request, legacy: bool) -> Res {
    let identifier = ctx.identifier()?;
    let dir = if legacy {
        String::new()
    } else {
        clean_path(ctx.q.get("path").unwrap_or(""))?
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let multipart_header = ct.to_ascii_lowercase().starts_with("multipart/form-data");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(too_large());
    }
    // Some clients label a multipart body `application/json` (a session's default header):
    // when the body itself is plainly multipart, its first line names the boundary.
    let req = if multipart_header {
        req
    } else {
        sniffed_multipart(req).await?
    };
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, MAX_UPLOAD)));
    let mut mp = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| DpError::bad(format!("The multipart body could not be read: {e}")))?;
    let mut held = None;
    let mut infos = vec![];
    while let Some(mut field) = mp.next_field().await.map_err(multipart_err)? {
        let disposition = field
            .headers()
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
        let Some(fname) = disposition.and_then(multipart::file_name) else {
            continue;
        };
        let name = clean_path(&fname)?;
        if name.is_empty() {
            return Err(DpError::bad("The uploaded file has no name."));
        }
        let full = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        // The session is allocated at the first file part, not before: a request that is
        // refused earlier costs no sandbox.
        if held.is_none() {
            held = Some(ctx.pool.session(&identifier).await.map_err(pool_err)?);
        }
        let (_, guard) = held.as_mut().expect("just set");
        let inst = guard.as_mut().ok_or_else(gone)?;
        let mut piece: Vec<u8> = Vec::with_capacity(UPLOAD_PIECE);
        let mut first = true;
        loop {
            let next = match tokio::time::timeout(UPLOAD_STALL, field.chunk()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    inst.abort_write().await;
                    return Err(multipart_err(e));
                }
                Err(_) => {
                    inst.abort_write().await;
                    return Err(DpError::new(
                        408,
                        "RequestTimeout",
                        format!("The upload stalled for {} s.", UPLOAD_STALL.as_secs()),
                    ));
                }
            };
            let last = next.is_none();
            let mut rest = next.unwrap_or_default();
            // Fill pieces of exactly UPLOAD_PIECE bytes (the last may be shorter), so the
            // buffer never grows past one piece.
            loop {
                let take = rest.len().min(UPLOAD_PIECE - piece.len());
                piece.extend_from_slice(&rest.split_to(take));
                let end = last && rest.is_empty();
                if piece.len() < UPLOAD_PIECE && !end {
                    break;
                }
                let r = inst.write_piece(&full, 0, first, end, &piece).await;
                first = false;
                piece.clear();
                match r {
                    Ok(Some(info)) => infos.push(info),
                    Ok(None) => {}
                    Err(e) if inst.is_alive() => return Err(file_err(e)),
                    Err(e) => {
                        tracing::warn!(pool = %ctx.pool.id, "a sandbox stopped under an upload: {e}");
                        // The sandbox died under the upload: its session goes (the next
                        // request gets a fresh one), and the client is told to retry (the
                        // body is not kept for a second try).
                        let (sess, guard) = held.take().expect("held");
                        ctx.pool.delete_session(&sess, Some(guard)).await;
                        return Err(stopped());
                    }
                }
                if rest.is_empty() {
                    break;
                }
            }
            if last {
                break;
            }
        }
    }
    let Some((sess, _guard)) = held else {
        return Err(DpError::bad(
            "The multipart body has no file part (send it in a field named 'file').",
        ));
    };
    sess.touch();
    if legacy {
        let mut n = 2;
        let value: Vec<Value> = infos.iter().map(|f| legacy_file(f, &mut n)).collect();
        return Ok(json_resp(
            StatusCode::OK,
            json!({"$id": "1", "value": value}),
        ));
    }
    Ok(json_resp(StatusCode::OK, new_file(&infos[0])))
}

fn not_multipart() -> DpError {
    DpError::new(
        415,
        "UnsupportedMediaType",
        "Upload a file as multipart/form-data with a 'file' field.",
    )
}

/// An upload whose Content-Type is not `multipart/form-data`: its body is read until its start
/// shows whether it is multipart anyway (see [`multipart::sniff`]); if so, the request comes
/// back with that Content-Type (the boundary from the body's first line) and the same body,
/// the bytes read included. Otherwise 415, as before.
async fn sniffed_multipart(req: Request) -> Result<Request, DpError> {
    use http_body_util::BodyExt;
    let (mut parts, mut body) = req.into_parts();
    let mut head: Vec<u8> = vec![];
    let boundary = loop {
        match multipart::sniff(&head) {
            multipart::Sniff::Boundary(b) => break b,
            multipart::Sniff::No => return Err(not_multipart()),
            multipart::Sniff::NeedMore => {}
        }
        let frame = match tokio::time::timeout(UPLOAD_STALL, body.frame()).await {
            Err(_) => {
                return Err(DpError::new(
                    408,
                    "RequestTimeout",
                    format!("The upload stalled for {} s.", UPLOAD_STALL.as_secs()),
                ));
            }
            Ok(None) => return Err(not_multipart()),
            Ok(Some(Err(e))) => {
                return Err(DpError::bad(format!(
                    "The multipart body could not be read: {e}"
                )));
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            head.extend_from_slice(&data);
        }
    };
    let ct = format!("multipart/form-data; boundary=\"{boundary}\"");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&ct).map_err(|_| not_multipart())?,
    );
    let body = Body::new(multipart::Prefixed::new(head.into(), body));
    Ok(Request::from_parts(parts, body))
}

/// What the upload handler needs of multipart framing beyond multer's parser: file names as
/// RFC 7578 and RFC 6266 spell them, and recognising a multipart body by its first bytes.
mod multipart {
    use axum::body::{Body, Bytes, HttpBody};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// How much of a body [`sniff`] reads at most before it gives up.
    pub const SNIFF_LIMIT: usize = 8 << 10;

    #[derive(Debug, PartialEq, Eq)]
    pub enum Sniff {
        /// A multipart body with this boundary.
        Boundary(String),
        /// Not multipart (or not recognisably so within [`SNIFF_LIMIT`] bytes).
        No,
        NeedMore,
    }

    /// Whether a body that starts with `head` is multipart/form-data: it opens with a delimiter
    /// line `--BOUNDARY\r\n` (RFC 2046's 1-70 boundary characters, no preamble) whose part
    /// headers, up to the blank line, include `Content-Disposition: form-data`.
    pub fn sniff(head: &[u8]) -> Sniff {
        if head.len() < 2 {
            return if b"--".starts_with(head) {
                Sniff::NeedMore
            } else {
                Sniff::No
            };
        }
        if !head.starts_with(b"--") {
            return Sniff::No;
        }
        let rest = &head[2..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            // A boundary is 1-70 bchars; only its line's CR may follow before the LF.
            let (chars, cr) = match rest.strip_suffix(b"\r") {
                Some(c) => (c, true),
                None => (rest, false),
            };
            let ok = chars.len() <= 70
                && chars.iter().all(|&c| boundary_char(c))
                && (!cr || !chars.is_empty());
            return if ok && head.len() < SNIFF_LIMIT {
                Sniff::NeedMore
            } else {
                Sniff::No
            };
        };
        let b = &rest[..eol];
        if b.is_empty() || b.len() > 70 || !b.iter().all(|&c| boundary_char(c)) || b.ends_with(b" ")
        {
            return Sniff::No;
        }
        let headers = &rest[eol + 2..];
        let Some(end) = headers.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if head.len() < SNIFF_LIMIT {
                Sniff::NeedMore
            } else {
                Sniff::No
            };
        };
        let disposition = headers[..end + 2]
            .split(|&c| c == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("content-disposition")
                    && v.trim_start()
                        .get(..9)
                        .is_some_and(|t| t.eq_ignore_ascii_case("form-data"))
            });
        if disposition {
            Sniff::Boundary(String::from_utf8_lossy(b).into_owned())
        } else {
            Sniff::No
        }
    }

    /// RFC 2046's `bchars`.
    fn boundary_char(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c)
    }

    /// The file name of a part from its Content-Disposition header: `filename*` (RFC 5987:
    /// `UTF-8''my%20file.csv`, or ISO-8859-1) when present and readable, else `filename`
    /// (quoted or not), percent-decoded as RFC 7578 section 4.2 allows (`my%20file.csv` is
    /// `my file.csv`; a `%` that starts no valid escape, or escapes that do not decode to
    /// UTF-8, are kept as sent). None for a part that is not a file.
    pub fn file_name(disposition: &str) -> Option<String> {
        let mut plain = None;
        let mut extended = None;
        for (k, v) in params(disposition) {
            if k.eq_ignore_ascii_case("filename*") {
                extended = extended.or_else(|| ext_value(&v));
            } else if k.eq_ignore_ascii_case("filename") && plain.is_none() {
                plain = Some(v);
            }
        }
        extended.or_else(|| plain.map(|p| percent_decoded(&p)))
    }

    /// `p` with its valid `%XX` escapes decoded, if the result is UTF-8; else `p` unchanged.
    pub fn percent_decoded(p: &str) -> String {
        if !p.contains('%') {
            return p.to_string();
        }
        match percent_encoding::percent_decode_str(p).decode_utf8() {
            Ok(s) => s.into_owned(),
            Err(_) => p.to_string(),
        }
    }

    /// RFC 5987's `ext-value`: `charset'[language]'value-chars`.
    fn ext_value(v: &str) -> Option<String> {
        let (charset, rest) = v.split_once('\'')?;
        let (_lang, value) = rest.split_once('\'')?;
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
        if charset.eq_ignore_ascii_case("utf-8") {
            String::from_utf8(bytes).ok()
        } else if charset.eq_ignore_ascii_case("iso-8859-1") {
            Some(bytes.iter().map(|&b| b as char).collect())
        } else {
            None
        }
    }

    /// The `key=value` parameters after the disposition type. A quoted value ends at the first
    /// unescaped `"`; `\"` stands for a quote (and only that: browsers send Windows paths'
    /// backslashes as they are).
    fn params(header: &str) -> Vec<(String, String)> {
        let mut out = vec![];
        let mut rest = match header.split_once(';') {
            Some((_, r)) => r,
            None => return out,
        };
        loop {
            rest = rest.trim_start_matches([' ', '\t', ';']);
            if rest.is_empty() {
                return out;
            }
            let Some(eq) = rest
                .find(['=', ';'])
                .filter(|&i| rest.as_bytes()[i] == b'=')
            else {
                // A parameter without a value: skip to the next one.
                match rest.find(';') {
                    Some(i) => {
                        rest = &rest[i..];
                        continue;
                    }
                    None => return out,
                }
            };
            let key = rest[..eq].trim().to_string();
            let after = rest[eq + 1..].trim_start();
            if let Some(q) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut end = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' if q[i + 1..].starts_with('"') => {
                            value.push('"');
                            chars.next();
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                out.push((key, value));
                rest = &q[end.min(q.len())..];
            } else {
                let end = after.find(';').unwrap_or(after.len());
                out.push((key, after[..end].trim().to_string()));
                rest = &after[end..];
            }
        }
    }

    /// A body that yields `head` (bytes already read from `rest`) and then the rest of `rest`.
    pub struct Prefixed {
        head: Option<Body>,
        rest: Body,
    }

    impl Prefixed {
        pub fn new(head: Bytes, rest: Body) -> Prefixed {
            Prefixed {
                head: (!head.is_empty()).then(|| Body::from(head)),
                rest,
            }
        }
    }

    impl HttpBody for Prefixed {
        type Data = Bytes;
        type Error = axum::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
            if let Some(head) = self.head.as_mut() {
                match Pin::new(head).poll_frame(cx) {
                    Poll::Ready(None) => self.head = None,
                    other => return other,
                }
            }
            Pin::new(&mut self.rest).poll_frame(cx)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        #[test]
        fn file_names() {
            let cases = [
                (
                    r#"form-data; name="file"; filename="my%20file.csv""#,
                    Some("my file.csv"),
                ),
                (
                    r#"form-data; name="file"; filename="plain.csv""#,
                    Some("plain.csv"),
                ),
                (
                    r#"form-data; name="file"; filename=bare.txt"#,
                    Some("bare.txt"),
                ),
                (
                    r#"form-data; name="file"; filename="100%.csv""#,
                    Some("100%.csv"),
                ),
                (
                    r#"form-data; name="file"; filename="bad%ff.csv""#,
                    Some("bad%ff.csv"),
                ),
                (
                    r#"form-data; name="file"; filename="a\"b.txt""#,
                    Some("a\"b.txt"),
                ),
                (
                    r#"form-data; name="file"; filename="x;y.txt""#,
                    Some("x;y.txt"),
                ),
                (
                    r#"form-data; name="file"; filename="%E4%BD%A0%E5%A5%BD.txt""#,
                    Some("你好.txt"),
                ),
                (
                    r#"form-data; name="file"; filename*=UTF-8''na%C3%AFve%20file.txt"#,
                    Some("naïve file.txt"),
                ),
                (
                    r#"form-data; name="file"; filename*=utf-8'en'r%C3%A9sum%C3%A9.pdf; filename="resume.pdf""#,
                    Some("résumé.pdf"),
                ),
                (
                    r#"form-data; filename="fallback.txt"; filename*=iso-8859-1''caf%E9.txt"#,
                    Some("café.txt"),
                ),
                (
                    r#"form-data; filename="fallback.txt"; filename*=koi8-r''x.txt"#,
                    Some("fallback.txt"),
                ),
                (r#"form-data; FILENAME="upper.txt""#, Some("upper.txt")),
                (r#"form-data; name="field""#, None),
                (r#"form-data; name="filename_x"; xfilename="no.txt""#, None),
                ("form-data", None),
                (
                    r#"form-data; novalue; filename="after.txt""#,
                    Some("after.txt"),
                ),
            ];
            for (h, want) in cases {
                assert_eq!(file_name(h).as_deref(), want, "{h}");
            }
        }

        #[test]
        fn sniffing() {
            let body = b"--abc123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--abc123--\r\n";
            assert_eq!(sniff(body), Sniff::Boundary("abc123".into()));
            for n in 0..body.len() {
                let s = sniff(&body[..n]);
                assert!(
                    s == Sniff::NeedMore || s == Sniff::Boundary("abc123".into()),
                    "{n}: {s:?}"
                );
            }
            assert_eq!(sniff(b"{\"code\": 1}"), Sniff::No);
            assert_eq!(sniff(b"-"), Sniff::NeedMore);
            assert_eq!(sniff(b"-x"), Sniff::No);
            assert_eq!(
                sniff(b"--a b \r\nContent-Disposition: form-data\r\n\r\n"),
                Sniff::No
            );
            assert_eq!(
                sniff(b"--ab\r\nContent-Type: text/plain\r\n\r\n"),
                Sniff::No
            );
            assert_eq!(sniff(b"--a\"b\r\n"), Sniff::No);
            assert_eq!(
                sniff(
                    &[b'-'; 2]
                        .iter()
                        .chain([b'a'; 71].iter())
                        .copied()
                        .collect::<Vec<_>>()
                ),
                Sniff::No
            );
            let long = [b"--b\r\nX: ".as_slice(), &[b'y'; SNIFF_LIMIT]].concat();
            assert_eq!(sniff(&long), Sniff::No);
        }

        proptest! {
            /// Any name, percent-encoded byte by byte (as RFC 7578 and RFC 5987 have it),
            /// comes back as it was, in `filename` and in `filename*`.
            #[test]
            fn percent_encoded_names_round_trip(name in "[^\"\\\\]{1,40}") {
                let enc = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).to_string();
                let plain = format!("form-data; name=\"file\"; filename=\"{enc}\"");
                prop_assert_eq!(file_name(&plain), Some(name.clone()));
                let ext = format!("form-data; name=\"file\"; filename*=UTF-8''{enc}");
                prop_assert_eq!(file_name(&ext), Some(name.clone()));
            }

            /// A name with no `%` is taken as sent.
            #[test]
            fn names_without_escapes_are_kept(name in "[^\"\\\\%\r\n]{1,40}") {
                let h = format!("form-data; name=\"file\"; filename=\"{name}\"");
                prop_assert_eq!(file_name(&h), Some(name.clone()));
            }

            /// The parser never panics, whatever the header.
            #[test]
            fn any_header(h in "\\PC{0,80}") {
                let _ = file_name(&h);
            }

            /// Every RFC 2046 boundary, followed by a form-data part's headers, is found, in
            /// one piece or however the body is split; arbitrary bytes never panic the sniffer.
            #[test]
            fn boundaries_are_found(b in "[0-9A-Za-z'()+_,./:=?-]{1,70}", cut in 0usize..200, junk in proptest::collection::vec(any::<u8>(), 0..300)) {
                let body = format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\ndata\r\n--{b}--\r\n");
                prop_assert_eq!(sniff(body.as_bytes()), Sniff::Boundary(b.clone()));
                let s = sniff(&body.as_bytes()[..cut.min(body.len())]);
                prop_assert!(s == Sniff::NeedMore || s == Sniff::Boundary(b.clone()));
                let _ = sniff(&junk);
            }
        }
    }
}

/// Runs a file operation on the identifier's session. If the sandbox dies under it (killed
/// from outside, its zygote gone, a reply over its cap), the session is deleted and the
/// operation runs once more on a fresh one; a second death answers 503 with `Retry-After`,
/// never 500. (A session whose sandbox died between requests is replaced before the
/// operation, by [`Pool::session`].)
macro_rules! on_session {
    ($ctx:expr, $identifier:expr, |$inst:ident| $op:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (sess, mut guard) = $ctx.pool.session(&$identifier).await.map_err(pool_err)?;
            let $inst = guard.as_mut().ok_or_else(gone)?;
            match $op.await {
                Ok(v) => {
                    sess.touch();
                    break v;
                }
                Err(e) => {
                    if guard.as_ref().is_some_and(|i| i.is_alive()) {
                        return Err(file_err(e));
                    }
                    tracing::warn!(pool = %$ctx.pool.id, "a sandbox stopped under a file request: {e}");
                    $ctx.pool.delete_session(&sess, Some(guard)).await;
                    if attempt >= 2 {
                        return Err(stopped());
                    }
                }
            }
        }
    }};
}

/// The sandbox stopped while serving a request (its session has been deleted).
fn stopped() -> DpError {
    let mut d = DpError::new(
        503,
        "SessionAllocationFailed",
        "The session's sandbox stopped while serving the request; a retry gets a fresh session.",
    );
    d.retry_after = Some(1);
    d
}

fn gone() -> DpError {
    DpError::new(
        503,
        "SessionAllocationFailed",
        "The session ended while the request was being served; retry.",
    )
}

async fn list_files(ctx: &Ctx) -> Res {
    let identifier = ctx.identifier()?;
    let legacy = is_legacy(&ctx.api);
    let dir = clean_path(ctx.q.get("path").unwrap_or(""))?;
    let recursive = legacy
        || ctx
            .q
            .get("recursive")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let files = on_session!(ctx, identifier, |inst| inst.list_files(&dir, recursive));
    if legacy {
        let mut n = 2;
        let value: Vec<Value> = files
            .iter()
            .filter(|f| !f.is_dir)
            .map(|f| legacy_file(f, &mut n))
            .collect();
        return Ok(json_resp(
            StatusCode::OK,
            json!({"$id": "1", "value": value}),
        ));
    }
    let value: Vec<Value> = files.iter().map(new_file).collect();
    Ok(json_resp(
        StatusCode::OK,
        json!({"value": value, "nextLink": null}),
    ))
}

async fn download(ctx: &Ctx, name: &str) -> Res {
    let identifier = ctx.identifier()?;
    let path = clean_path(name)?;
    let data = on_session!(ctx, identifier, |inst| inst.read_file(&path));
    let mut r = Response::new(Body::from(data));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

async fn stat(ctx: &Ctx, name: &str) -> Res {
    let identifier = ctx.identifier()?;
    let path = clean_path(name)?;
    let f = on_session!(ctx, identifier, |inst| inst.stat_file(&path));
    Ok(json_resp(StatusCode::OK, new_file(&f)))
}

async fn delete_file(ctx: &Ctx, name: &str) -> Res {
    let identifier = ctx.identifier()?;
    let path = clean_path(name)?;
    if path.is_empty() {
        return Err(DpError::bad("Name a file to delete."));
    }
    on_session!(ctx, identifier, |inst| inst.delete_file(&path));
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- sessions and metadata ---------------------------------------------------------------

fn session_json(pool: &Pool, s: &Session, management: bool) -> Value {
    let spec = pool.spec();
    let mut expire = match spec.lifecycle {
        crate::spec::Lifecycle::Timed => s.last_access_ms() + spec.cooldown_secs as i64 * 1000,
        crate::spec::Lifecycle::OnContainerExit => i64::MAX,
    };
    if let Some(m) = spec.max_alive_secs {
        expire = expire.min(s.created_ms + m as i64 * 1000);
    }
    let expire = if expire == i64::MAX {
        Value::Null
    } else {
        json!(rfc3339_ms(expire))
    };
    let mut v = json!({
        "identifier": s.identifier,
        "createdAt": rfc3339_ms(s.created_ms),
        "lastAccessedAt": rfc3339_ms(s.last_access_ms()),
        "etag": s.etag,
    });
    v[if management { "expiresAt" } else { "expireAt" }] = expire;
    v
}

async fn get_session(ctx: &Ctx, management: bool) -> Res {
    let identifier = ctx.identifier()?;
    match ctx.pool.get(&identifier) {
        Some(s) => Ok(json_resp(
            StatusCode::OK,
            session_json(&ctx.pool, &s, management),
        )),
        None if management => Err(DpError::new(
            400,
            "SessionWithIdentifierNotFound",
            format!("There is no session with identifier '{identifier}'."),
        )),
        None => Err(DpError::not_found(
            "SessionNotFound",
            format!("There is no session with identifier '{identifier}'."),
        )),
    }
}

async fn delete_session(ctx: &Ctx, management: bool) -> Res {
    let identifier = ctx.identifier()?;
    let existed = ctx.pool.delete_identifier(&identifier).await;
    if management {
        if !existed {
            return Err(DpError::new(
                400,
                "SessionWithIdentifierNotFound",
                format!("There is no session with identifier '{identifier}'."),
            ));
        }
        let name = ctx.pool.id.rsplit('/').next().unwrap_or("");
        let mut r = format!("Session {identifier} in session pool {name} stopped.").into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(r);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_sessions(ctx: &Ctx, management: bool) -> Res {
    let skip: usize = match ctx.q.get("skip") {
        None | Some("") => 0,
        Some(s) => s
            .parse()
            .map_err(|_| DpError::bad("'skip' must be a non-negative integer.").target("skip"))?,
    };
    let mut all: Vec<(i64, String, Value)> = ctx
        .pool
        .sessions()
        .iter()
        .map(|s| {
            (
                s.created_ms,
                s.identifier.clone(),
                session_json(&ctx.pool, s, management),
            )
        })
        .collect();
    // With several nodes, the sessions of the others come from their leases.
    if let Some(c) = ctx.cluster.as_ref() {
        let spec = ctx.pool.spec();
        for l in c.leases(&ctx.pool.id).await {
            if l.node_id == c.node_id() {
                continue;
            }
            let expire = match spec.lifecycle {
                crate::spec::Lifecycle::Timed => {
                    json!(rfc3339_ms(l.created_at + spec.cooldown_secs as i64 * 1000))
                }
                crate::spec::Lifecycle::OnContainerExit => {
                    spec.max_alive_secs.map_or(Value::Null, |m| {
                        json!(rfc3339_ms(l.created_at + m as i64 * 1000))
                    })
                }
            };
            let mut v = json!({
                "identifier": l.identifier,
                "createdAt": rfc3339_ms(l.created_at),
                "lastAccessedAt": rfc3339_ms(l.created_at),
                "etag": l.sandbox_id,
            });
            v[if management { "expiresAt" } else { "expireAt" }] = expire;
            all.push((l.created_at, l.identifier, v));
        }
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }
    let count = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(skip)
        .take(LIST_PAGE)
        .map(|(_, _, v)| v)
        .collect();
    let next = if skip + LIST_PAGE < count {
        let path = if management {
            ".management/listSessions"
        } else {
            "listSessions"
        };
        json!(format!(
            "{}/{path}?api-version={}&skip={}",
            ctx.endpoint,
            ctx.api,
            skip + LIST_PAGE
        ))
    } else {
        Value::Null
    };
    if management {
        return Ok(json_resp(
            StatusCode::OK,
            json!({"value": page, "count": count, "nextLink": next}),
        ));
    }
    Ok(json_resp(
        StatusCode::OK,
        json!({"sessions": page, "nextLink": next}),
    ))
}

async fn metadata(dp: &DataPlane, ctx: &Ctx) -> Res {
    let info = dp.manager.runtime().info(kind_of(&ctx.pool));
    let pkgs: Vec<Value> = info
        .packages
        .iter()
        .map(|(n, v)| json!({"name": n, "version": v}))
        .collect();
    let (kname, kversion, kurl, kdesc) = &info.kernel;
    let kversion = if kversion.is_empty() {
        &info.version
    } else {
        kversion
    };
    Ok(json_resp(
        StatusCode::OK,
        json!({
            "runtimes": [{"name": info.name, "version": info.version}],
            "preInstalledPackages": pkgs,
            "createdAt": rfc3339_ms(ctx.pool.created_ms),
            "lastUpdatedAt": rfc3339_ms(ctx.pool.updated_ms()),
            "jupyterKernel": {
                "name": kname,
                "version": kversion,
                "projectUrl": kurl,
                "description": kdesc,
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(result: Option<&str>) -> ExecOutcome {
        ExecOutcome {
            result: result.map(str::to_string),
            ..ExecOutcome::empty(ExecStatus::Succeeded, String::new(), 1)
        }
    }

    #[test]
    fn legacy_results() {
        assert_eq!(legacy_result(&o(Some("42"))), json!(42));
        assert_eq!(legacy_result(&o(Some("2.5"))), json!(2.5));
        assert_eq!(legacy_result(&o(None)), json!(""));
        assert_eq!(legacy_result(&o(Some("'nan'"))), json!("'nan'"));
        assert_eq!(legacy_result(&o(Some("nan"))), json!("nan"));
        let big = "1000000000000000000000000000000";
        assert_eq!(legacy_result(&o(Some(big))), json!(big));
        assert_eq!(legacy_result(&o(Some("True"))), json!("True"));
    }

    #[test]
    fn paths() {
        assert_eq!(clean_path("/mnt/data/a.txt").unwrap(), "a.txt");
        assert_eq!(clean_path("sub/b c.csv").unwrap(), "sub/b c.csv");
        assert_eq!(clean_path("").unwrap(), "");
        assert!(clean_path("../etc/passwd").is_err());
        assert!(clean_path("/etc/passwd").is_err());
        assert!(clean_path("/mnt/database").is_err());
        assert!(clean_path("a\0b").is_err());
        assert!(clean_path("a\\b").is_err());
    }

    #[test]
    fn exec_bodies() {
        let r = parse_exec(br#"{"properties":{"codeInputType":"inline","executionType":"synchronous","code":"1"}}"#, SessionKind::Python).unwrap();
        assert_eq!(r.code, "1");
        let r = parse_exec(br#"{"CodeInputType":"InlineBase64","ExecutionType":"Asynchronous","Code":"MSsx","timeoutInSeconds":5}"#, SessionKind::Python).unwrap();
        assert_eq!(
            (r.code.as_str(), r.asynchronous, r.timeout.as_secs()),
            ("1+1", true, 5)
        );
        for bad in [
            &br#"{}"#[..],
            br#"[]"#,
            br#"{"code": 5}"#,
            br#"{"code":"1","timeoutInSeconds":0}"#,
            br#"{"code":"1","timeoutInSeconds":500}"#,
            br#"{"code":"1","executionType":"later"}"#,
            br#"{"code":"1","codeInputType":"file"}"#,
            br#"not json"#,
        ] {
            assert!(
                parse_exec(bad, SessionKind::Python).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn shell_bodies() {
        let sh = SessionKind::Shell;
        let r = parse_exec(br#"{"shellCommand":"echo hi"}"#, sh).unwrap();
        assert_eq!((r.code.as_str(), r.asynchronous), ("echo hi", false));
        let r = parse_exec(br#"{"properties":{"codeInputType":"Inline","executionType":"Synchronous","shellCommand":"ls","timeoutInSeconds":7}}"#, sh).unwrap();
        assert_eq!((r.code.as_str(), r.timeout.as_secs()), ("ls", 7));
        let r = parse_exec(
            br#"{"codeInputType":"inlinebase64","shellCommand":"ZWNobyAx"}"#,
            sh,
        )
        .unwrap();
        assert_eq!(r.code, "echo 1");
        for bad in [
            &br#"{"code":"print(1)"}"#[..],
            br#"{"shellCommand":"ls","code":"x"}"#,
            br#"{"shellCommand":""}"#,
            br#"{"shellCommand":5}"#,
            br#"{"execCommandAndArgs":["ls"]}"#,
            br#"{}"#,
        ] {
            let e = parse_exec(bad, sh).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(bad));
        }
        for k in [SessionKind::Python, SessionKind::Node] {
            assert!(parse_exec(br#"{"shellCommand":"ls"}"#, k).is_err());
        }
    }
}
