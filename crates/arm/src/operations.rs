//! Long-running operations: the operation records behind `Azure-AsyncOperation` and
//! `Location`, their status and result endpoints, and the background work that moves a
//! resource's `provisioningState` from `Accepted` to a terminal state.
//!
//! The flow of a long-running PUT (or PATCH):
//! 1. the host validates the request, then [`claim`]s an operation on the resource: a row in
//!    the store, `Accepted`, refused with `409 Conflict` while another operation on the same
//!    resource is not terminal (the check is part of the insert's transaction);
//! 2. the host stores the resource with `provisioningState` `Accepted` and calls [`start`],
//!    which answers `201` (create) or `200` (update) with the resource, `Azure-AsyncOperation`
//!    (the status URL), `Location` (the result URL) and `Retry-After`, and runs the rest in
//!    the background (`tokio::spawn`, with [`Platform::shared`]);
//! 3. the background work moves the resource and the operation to `Provisioning`
//!    (`Updating` for an update), calls the provider's [`Provider::provision`], then moves
//!    the resource to `Succeeded` or `Failed` and only then the operation, so a poller that
//!    sees the operation end reads the final resource. A panic in the hook fails the
//!    operation like an error.
//!
//! A long-running DELETE ([`delete`]) answers `202` with the same headers, marks the resource
//! `Deleting`, calls [`Provider::deprovision`] and removes the resource (with its cascade)
//! when that succeeds.
//!
//! The status URL is `/subscriptions/{s}/providers/{ns}/locations/{location}/operationStatuses/{id}`
//! and the result URL the same with `operationResults` ([`serve`]). Reading either needs the
//! read action of the resource's type at the resource's scope: whoever may read the resource
//! may follow its operations, and no one else. An operation is found only under its own
//! subscription, namespace and location; any other path answers `404`.
//!
//! The node running an operation touches its heartbeat every [`HEARTBEAT_SECS`]. An operation
//! whose heartbeat is older than [`STALE_AFTER_SECS`] lost its node (a restart, a crash):
//! [`sweep`] fails it (`OperationInterrupted`) and marks its resource `Failed`. Sweeps run when
//! an operation is claimed, when a stale operation is read, and every few seconds once the
//! server called [`recover`] at start-up. Interrupted work is not resumed: a provider's hook
//! may have been half done, and the client that sees `Failed` sends its request again.

use crate::lro::{Operation, State, start_headers};
use crate::provider::{Changed, HostOps, Platform, Provider, Request, Res};
use crate::registry::{LongRunning, ProviderSpec, Route};
use crate::wire::{set_provisioning_state, store_err, with_etag};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::{Expect, OperationRecord, Resource, StoreError};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The `Retry-After` of every answer about a running operation (seconds).
pub const RETRY_AFTER_SECS: u32 = 1;
/// How often the node running an operation touches its heartbeat.
pub const HEARTBEAT_SECS: u64 = 2;
/// An operation not touched for this long lost the node that ran it.
pub const STALE_AFTER_SECS: i64 = 10;
/// The error of an operation whose node stopped while it ran.
pub const INTERRUPTED: &str = "OperationInterrupted";

/// What an operation does, as its record names it.
const CREATE: &str = "create";
const UPDATE: &str = "update";
const DELETE: &str = "delete";
/// An action's operation kind is `action:{name}`.
const ACTION: &str = "action:";

/// The location segment of an operation's URLs: ARM's normalised form (`West US` → `westus`).
pub fn location_segment(location: &str) -> String {
    location
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn namespace_of(type_name: &str) -> &str {
    type_name.split('/').next().unwrap_or_default()
}

fn busy(resource_id: &str, other: &str) -> ArmError {
    ArmError::conflict(
        "Conflict",
        format!(
            "The resource '{resource_id}' has an operation in progress ('{other}'); retry when it has finished."
        ),
    )
}

/// Records a new operation on `resource_id`, `Accepted`, or answers `409 Conflict` when
/// another operation on it is not finished. `kind`: `create`, `update`, `delete`.
pub async fn claim(
    p: &dyn Platform,
    route: &Route,
    req: &Request<'_>,
    resource_id: &str,
    location: &str,
    kind: &str,
) -> Result<OperationRecord, ArmError> {
    sweep(p).await;
    let now = now_secs();
    let rec = OperationRecord {
        id: cloister_core::new_guid(),
        subscription_id: route
            .scope
            .subscription_id()
            .unwrap_or_default()
            .to_string(),
        namespace: namespace_of(&route.type_name).to_string(),
        location: location_segment(location),
        resource_id: resource_id.to_string(),
        kind: kind.to_string(),
        status: State::Accepted.as_str().to_string(),
        error_code: None,
        error_message: None,
        result: None,
        caller: req.caller.object_id.clone(),
        start_time: now,
        end_time: None,
        heartbeat_at: now,
    };
    match p.store().op_insert(&rec).await {
        Ok(()) => Ok(rec),
        Err(StoreError::Conflict(other)) => Err(busy(resource_id, &other)),
        Err(e) => Err(store_err(e)),
    }
}

/// The kind of a PUT or PATCH's operation.
pub fn write_kind(created: bool) -> &'static str {
    if created { CREATE } else { UPDATE }
}

/// Refuses (`409 Conflict`) a write that starts no operation of its own on a resource with
/// an operation in progress. Free for types that declare nothing long-running.
pub async fn ensure_idle(
    p: &dyn Platform,
    route: &Route,
    resource_id: &str,
) -> Result<(), ArmError> {
    if route.spec.long_running == LongRunning::default() {
        return Ok(());
    }
    let running = p
        .store()
        .op_running_for(resource_id)
        .await
        .map_err(store_err)?;
    match running {
        None => Ok(()),
        Some(op) if op.heartbeat_at < now_secs() - STALE_AFTER_SECS => {
            sweep(p).await;
            match p
                .store()
                .op_running_for(resource_id)
                .await
                .map_err(store_err)?
            {
                Some(op) => Err(busy(resource_id, &op.id)),
                None => Ok(()),
            }
        }
        Some(op) => Err(busy(resource_id, &op.id)),
    }
}

/// Ends a claimed operation whose request failed before its work started.
pub async fn abandon(p: &dyn Platform, op: &OperationRecord, e: &ArmError) {
    let now = now_secs();
    if let Err(err) = p
        .store()
        .op_update_state(
            &op.id,
            State::Failed.as_str(),
            Some((&e.code, &e.message)),
            Some(now),
            None,
            now,
        )
        .await
    {
        tracing::warn!("operation {}: could not be abandoned: {err}", op.id);
    }
}

/// The status (`Azure-AsyncOperation`) and result (`Location`) URLs of an operation, with
/// the namespace in its registered casing (`ns`).
pub fn urls(
    p: &dyn Platform,
    op: &OperationRecord,
    ns: &str,
    api_version: &str,
) -> (String, String) {
    let base = format!(
        "{}/subscriptions/{}/providers/{ns}/locations/{}",
        p.public_url(),
        op.subscription_id,
        op.location
    );
    (
        format!(
            "{base}/operationStatuses/{}?api-version={api_version}",
            op.id
        ),
        format!(
            "{base}/operationResults/{}?api-version={api_version}",
            op.id
        ),
    )
}

fn add_headers(
    resp: &mut Response,
    p: &dyn Platform,
    op: &OperationRecord,
    route: &Route,
    api_version: &str,
) {
    let (status, result) = urls(p, op, namespace_of(&route.type_name), api_version);
    for (k, v) in start_headers(&status, &result, RETRY_AFTER_SECS) {
        resp.headers_mut().insert(k, v);
    }
}

/// Starts the long-running part of a create or update whose resource is stored as
/// `Accepted` (with the operation [`claim`]ed before the write), and answers the first
/// response: `status` (`201` or `200`) with the resource and the operation's headers.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    p: &dyn Platform,
    prov: Arc<dyn Provider>,
    op: OperationRecord,
    _stored: &Resource,
    route: &Route,
    req: &Request<'_>,
    status: StatusCode,
    body: Value,
) -> Res {
    let mut resp = with_etag(status, body)?;
    add_headers(&mut resp, p, &op, route, req.api_version());
    launch(p, prov, op, Value::Null).await;
    Ok(resp)
}

/// A long-running POST action on a resource: `404` if the resource does not exist; else `409`
/// while another operation runs on it, or `202` with the operation's headers while the
/// provider's [`Provider::run_action`] runs; its result is the result URL's answer.
pub async fn action(
    p: &dyn Platform,
    prov: Arc<dyn Provider>,
    route: &Route,
    req: &Request<'_>,
) -> Res {
    let crate::registry::RouteKind::Action(name) = &route.kind else {
        return Err(crate::wire::method_not_allowed(req.method));
    };
    let id = route.id.clone().unwrap_or_default();
    let Some(r) = p.store().resource_get(&id).await.map_err(store_err)? else {
        return Err(ArmError::not_found(
            "ResourceNotFound",
            format!(
                "The Resource '{}' was not found.",
                id.chars().take(300).collect::<String>()
            ),
        ));
    };
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(req.body).map_err(|e| {
            ArmError::invalid(format!(
                "The request content was invalid and could not be deserialized: {e}."
            ))
        })?
    };
    let op = claim(
        p,
        route,
        req,
        &r.id,
        &r.location,
        &format!("{ACTION}{name}"),
    )
    .await?;
    let mut resp = StatusCode::ACCEPTED.into_response();
    add_headers(&mut resp, p, &op, route, req.api_version());
    launch(p, prov, op, body).await;
    Ok(resp)
}

/// A long-running DELETE: `204` if the resource does not exist; else `409` while another
/// operation runs on it, or `202` with the operation's headers, the resource `Deleting` until
/// the provider's [`Provider::deprovision`] is done and the resource removed.
pub async fn delete(
    p: &dyn Platform,
    prov: Arc<dyn Provider>,
    route: &Route,
    req: &Request<'_>,
    id: &str,
) -> Res {
    let Some(r) = p.store().resource_get(id).await.map_err(store_err)? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let op = claim(p, route, req, &r.id, &r.location, DELETE).await?;
    if let Err(e) = set_state(p, &r.id, State::Deleting).await {
        abandon(p, &op, &e).await;
        return Err(e);
    }
    let mut resp = StatusCode::ACCEPTED.into_response();
    add_headers(&mut resp, p, &op, route, req.api_version());
    launch(p, prov, op, Value::Null).await;
    Ok(resp)
}

/// Runs an operation's work: in the background when the platform offers a shared handle,
/// else here (the request then answers when the work is done).
async fn launch(p: &dyn Platform, prov: Arc<dyn Provider>, op: OperationRecord, body: Value) {
    let Some(shared) = p.shared() else {
        let outcome = work(p, &*prov, &op, &body).await;
        finish(p, &op, outcome).await;
        return;
    };
    tokio::spawn(async move {
        let hb = {
            let (p, id) = (shared.clone(), op.id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS)).await;
                    match p.store().op_heartbeat(&id, now_secs()).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => tracing::warn!("operation {id}: heartbeat: {e}"),
                    }
                }
            })
        };
        // The work runs in a task of its own, so a panic in a provider's hook fails the
        // operation instead of leaving it running.
        let job = {
            let (p, prov, op) = (shared.clone(), prov.clone(), op.clone());
            tokio::spawn(async move { work(&*p, &*prov, &op, &body).await })
        };
        let outcome = job.await.unwrap_or_else(|e| {
            tracing::error!("operation {}: the work stopped: {e}", op.id);
            Err(ArmError::internal(
                "The operation's work stopped unexpectedly.",
            ))
        });
        hb.abort();
        finish(&*shared, &op, outcome).await;
    });
}

/// The provider's part of an operation. For a delete, success also removes the resource; an
/// action's success may carry its result.
async fn work(
    p: &dyn Platform,
    prov: &dyn Provider,
    op: &OperationRecord,
    body: &Value,
) -> Result<Option<Value>, ArmError> {
    let gone = || {
        ArmError::not_found(
            "ResourceNotFound",
            format!(
                "The resource '{}' was deleted while its operation ran.",
                op.resource_id
            ),
        )
    };
    let running = match op.kind.as_str() {
        CREATE => State::Provisioning,
        UPDATE => State::Updating,
        k if k.starts_with(ACTION) => State::Updating,
        _ => State::Deleting,
    };
    let now = now_secs();
    p.store()
        .op_update_state(&op.id, running.as_str(), None, None, None, now)
        .await
        .map_err(store_err)?;
    if let Some(name) = op.kind.strip_prefix(ACTION) {
        // An action leaves the resource's provisioningState alone.
        let r = p
            .store()
            .resource_get(&op.resource_id)
            .await
            .map_err(store_err)?
            .ok_or_else(gone)?;
        return prov.run_action(p, &r, name, body).await;
    }
    if op.kind == DELETE {
        let r = p
            .store()
            .resource_get(&op.resource_id)
            .await
            .map_err(store_err)?
            .ok_or_else(gone)?;
        prov.deprovision(p, &r).await?;
        if let Some(removed) = p
            .store()
            .resource_delete(&op.resource_id)
            .await
            .map_err(store_err)?
        {
            prov.removed(p, &removed.resources).await;
            let principals = !removed.principals.is_empty() || removed.role_assignments > 0;
            p.changed(Changed {
                identities: true,
                principals,
                rbac: principals,
            })
            .await?;
        }
        return Ok(None);
    }
    let r = set_state(p, &op.resource_id, running)
        .await?
        .ok_or_else(gone)?;
    prov.provision(p, &r).await.map(|()| None)
}

/// Records an operation's outcome: the resource first (so a poller that sees the operation
/// end reads the final resource), then the operation.
async fn finish(p: &dyn Platform, op: &OperationRecord, outcome: Result<Option<Value>, ArmError>) {
    let state = if outcome.is_ok() {
        State::Succeeded
    } else {
        State::Failed
    };
    if let Err(e) = &outcome {
        tracing::info!("operation {} failed: {} {}", op.id, e.code, e.message);
    }
    let deleted = op.kind == DELETE && outcome.is_ok();
    let action = op.kind.starts_with(ACTION);
    if !deleted
        && !action
        && let Err(e) = set_state(p, &op.resource_id, state).await
    {
        tracing::warn!("operation {}: resource state: {}", op.id, e.message);
    }
    let now = now_secs();
    let err = outcome
        .as_ref()
        .err()
        .map(|e| (e.code.as_str(), e.message.as_str()));
    let result = outcome
        .as_ref()
        .ok()
        .and_then(|r| r.as_ref())
        .map(|v| v.to_string());
    match p
        .store()
        .op_update_state(
            &op.id,
            state.as_str(),
            err,
            Some(now),
            result.as_deref(),
            now,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Failed meanwhile by a sweep (this node looked dead): the resource follows the
            // operation's record.
            if let Ok(Some(o)) = p.store().op_get(&op.id).await
                && let Some(s) = State::parse(&o.status)
                && s != state
                && !deleted
                && !action
            {
                let _ = set_state(p, &op.resource_id, s).await;
            }
        }
        Err(e) => tracing::warn!("operation {}: {e}", op.id),
    }
}

/// Sets a stored resource's `provisioningState` (with a new ETag); `None` if it is gone.
async fn set_state(p: &dyn Platform, id: &str, state: State) -> Result<Option<Resource>, ArmError> {
    for _ in 0..5 {
        let Some(mut r) = p.store().resource_get(id).await.map_err(store_err)? else {
            return Ok(None);
        };
        let old = r.etag.clone();
        set_provisioning_state(&mut r, state);
        r.etag = crate::conditional::new_etag();
        if p.store()
            .resource_put_if(&r, &[], &[], Expect::Etag(&old))
            .await
            .map_err(store_err)?
        {
            return Ok(Some(r));
        }
    }
    Err(ArmError::conflict(
        "Conflict",
        "The resource kept changing while its provisioning state was written.",
    ))
}

/// Fails the operations whose node stopped running them (no heartbeat for
/// [`STALE_AFTER_SECS`]) and marks their resources `Failed`.
pub async fn sweep(p: &dyn Platform) {
    let now = now_secs();
    let failed = match p
        .store()
        .op_fail_stale(
            now - STALE_AFTER_SECS,
            INTERRUPTED,
            "The operation was interrupted: the server running it stopped (a restart or a crash) before it finished. Send the request again.",
            now,
        )
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("operations: sweep: {e}");
            return;
        }
    };
    for op in failed {
        tracing::warn!("operation {} on {} interrupted", op.id, op.resource_id);
        if let Ok(Some(r)) = p.store().resource_get(&op.resource_id).await {
            let cur = serde_json::from_str::<Value>(&r.properties)
                .ok()
                .and_then(|v| v["provisioningState"].as_str().and_then(State::parse));
            if cur.is_some_and(|s| !s.is_terminal())
                && let Err(e) = set_state(p, &op.resource_id, State::Failed).await
            {
                tracing::warn!("operation {}: resource state: {}", op.id, e.message);
            }
        }
    }
}

/// At start-up: fails the operations a previous run left unfinished once their heartbeat is
/// stale, now and every few seconds after (operations of a node that stops later included).
pub fn recover(p: Arc<dyn Platform>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            sweep(&*p).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// The status and result endpoints of operations, if `segs` names one:
/// `subscriptions/{s}/providers/{ns}/locations/{l}/operationStatuses|operationResults/{id}`
/// of a registered namespace.
pub async fn serve(
    host: &dyn HostOps,
    p: &dyn Platform,
    segs: &[&str],
    req: &Request<'_>,
) -> Option<Res> {
    let is = |i: usize, k: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(k));
    if segs.len() != 8 || !is(0, "subscriptions") || !is(2, "providers") || !is(4, "locations") {
        return None;
    }
    let result = if is(6, "operationStatuses") {
        false
    } else if is(6, "operationResults") {
        true
    } else {
        return None;
    };
    host.registry().provider(segs[3])?;
    Some(serve_op(host, p, segs, result, req).await)
}

async fn serve_op(
    host: &dyn HostOps,
    p: &dyn Platform,
    segs: &[&str],
    result: bool,
    req: &Request<'_>,
) -> Res {
    if *req.method != Method::GET {
        return Err(crate::wire::method_not_allowed(req.method));
    }
    let (sub, ns, loc, id) = (segs[1], segs[3], segs[5], segs[7]);
    let ns = host
        .registry()
        .provider(ns)
        .map(|s| s.namespace.clone())
        .unwrap_or_else(|| ns.to_string());
    let not_found = || {
        ArmError::not_found(
            "OperationNotFound",
            format!(
                "The operation '{}' was not found.",
                id.chars().take(80).collect::<String>()
            ),
        )
    };
    let mut op = p
        .store()
        .op_get(id)
        .await
        .map_err(store_err)?
        .filter(|o| {
            o.subscription_id.eq_ignore_ascii_case(sub)
                && o.namespace.eq_ignore_ascii_case(&ns)
                && o.location.eq_ignore_ascii_case(&location_segment(loc))
        })
        .ok_or_else(not_found)?;
    // Whoever may read the resource may follow its operations.
    let sc = Scope::parse(&op.resource_id).map_err(|_| not_found())?;
    let t = sc.resource_type().unwrap_or_default();
    let t = host
        .registry()
        .resolve_type(&t)
        .map(|(n, _)| n)
        .unwrap_or(t);
    p.authorize(&req.caller.object_id, &format!("{t}/read"), &sc)?;
    if !op.is_terminal() && op.heartbeat_at < now_secs() - STALE_AFTER_SECS {
        sweep(p).await;
        op = p
            .store()
            .op_get(id)
            .await
            .map_err(store_err)?
            .ok_or_else(not_found)?;
    }
    let state = State::parse(&op.status).unwrap_or(State::Accepted);
    let retry = |resp: &mut Response| {
        if !state.is_terminal() {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(RETRY_AFTER_SECS));
        }
    };
    if !result {
        let body = record_to_operation(p, &op, &ns, req.api_version()).status_body();
        let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
        retry(&mut resp);
        return Ok(resp);
    }
    match state {
        s if !s.is_terminal() => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            let (_, location) = urls(p, &op, &ns, req.api_version());
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert("location", v);
            }
            retry(&mut resp);
            Ok(resp)
        }
        State::Succeeded if op.kind == DELETE => Ok(StatusCode::NO_CONTENT.into_response()),
        State::Succeeded if op.kind.starts_with(ACTION) && op.result.is_none() => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        State::Succeeded => {
            if let Some(v) = op
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
            {
                return Ok((StatusCode::OK, axum::Json(v)).into_response());
            }
            match p
                .store()
                .resource_get(&op.resource_id)
                .await
                .map_err(store_err)?
            {
                Some(r) => with_etag(StatusCode::OK, host.resource_json(p, &r).await),
                None => Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
        _ => Err(ArmError::bad_request(
            op.error_code.as_deref().unwrap_or("OperationFailed"),
            op.error_message
                .clone()
                .unwrap_or_else(|| format!("The operation ended {}.", op.status)),
        )),
    }
}

fn record_to_operation(
    p: &dyn Platform,
    op: &OperationRecord,
    ns: &str,
    api_version: &str,
) -> Operation {
    let (status_url, _) = urls(p, op, ns, api_version);
    let path = status_url
        .strip_prefix(&p.public_url())
        .unwrap_or(&status_url)
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    Operation {
        id: path,
        name: op.id.clone(),
        state: State::parse(&op.status).unwrap_or(State::Accepted),
        start_time: op.start_time,
        end_time: op.end_time,
        error: match (&op.error_code, &op.error_message) {
            (Some(c), m) => Some((c.clone(), m.clone().unwrap_or_default())),
            _ => None,
        },
        resource_id: Some(op.resource_id.clone()),
        percent_complete: None,
    }
}

/// A provider of plain types whose writes and deletes are long-running (`Namespace/type:lro`
/// in the configuration's `arm_types`): it stands in for a service that takes time to
/// provision, so clients' pollers can be exercised for real. Its work waits
/// `properties.provisionSeconds` (at most [`SimulatedWork::MAX_SECONDS`]) and fails with
/// `properties.fail` (a message) on create or update, `properties.failDelete` on delete.
pub struct SimulatedWork(pub ProviderSpec);

impl SimulatedWork {
    pub const MAX_SECONDS: f64 = 60.0;

    /// What a type of this provider declares long-running: PUT, PATCH and DELETE.
    pub fn long_running() -> LongRunning {
        LongRunning {
            put: true,
            patch: true,
            delete: true,
            actions: vec![Self::ACTION.to_string()],
        }
    }

    /// Its long-running POST action (`…/{name}/restart`): waits like a write, fails with
    /// `properties.failAction`, and answers `{"restarted": name, "body": <the request body>}`.
    pub const ACTION: &'static str = "restart";

    async fn run(r: &Resource, fail_key: &str) -> Result<(), ArmError> {
        let props: Value = serde_json::from_str(&r.properties).unwrap_or_default();
        let secs = props["provisionSeconds"]
            .as_f64()
            .unwrap_or(0.0)
            .clamp(0.0, Self::MAX_SECONDS);
        if secs > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        match props[fail_key].as_str() {
            Some(m) => Err(ArmError::bad_request("ProvisioningFailed", m)),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Provider for SimulatedWork {
    fn spec(&self) -> ProviderSpec {
        self.0.clone()
    }
    async fn provision(&self, _p: &dyn Platform, r: &Resource) -> Result<(), ArmError> {
        Self::run(r, "fail").await
    }
    async fn deprovision(&self, _p: &dyn Platform, r: &Resource) -> Result<(), ArmError> {
        Self::run(r, "failDelete").await
    }
    async fn run_action(
        &self,
        _p: &dyn Platform,
        r: &Resource,
        _action: &str,
        body: &Value,
    ) -> Result<Option<Value>, ArmError> {
        Self::run(r, "failAction").await?;
        Ok(Some(serde_json::json!({"restarted": r.name, "body": body})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::provider::Caller;
    use crate::registry::TypeSpec;
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use cloister_store::{ResourceGroup, ServicePrincipal, Store, Subscription};
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Weak;

    const SUB: &str = "11111111-1111-1111-1111-111111111111";
    const OTHER_SUB: &str = "22222222-2222-2222-2222-222222222222";

    /// A platform over a real store: `admin` may do anything, `reader` may read in SUB, and
    /// nobody else anything.
    struct TestPlatform {
        store: Store,
        me: Weak<TestPlatform>,
        background: bool,
    }

    #[async_trait::async_trait]
    impl Platform for TestPlatform {
        fn store(&self) -> &Store {
            &self.store
        }
        fn authorize(&self, principal: &str, action: &str, scope: &Scope) -> Result<(), ArmError> {
            let in_sub = scope
                .subscription_id()
                .is_some_and(|s| s.eq_ignore_ascii_case(SUB));
            if principal == "admin"
                || (principal == "reader" && in_sub && action.ends_with("/read"))
            {
                Ok(())
            } else {
                Err(ArmError::forbidden(format!(
                    "'{principal}' may not perform '{action}' at '{scope}'."
                )))
            }
        }
        fn home_tenant(&self) -> String {
            "t".into()
        }
        fn public_url(&self) -> String {
            "https://cloister.test:8443".into()
        }
        fn new_managed_identity(&self, resource_id: &str, name: &str) -> ServicePrincipal {
            ServicePrincipal {
                id: cloister_core::new_guid(),
                app_id: cloister_core::new_guid(),
                tenant_id: "t".into(),
                display_name: name.into(),
                kind: "ManagedIdentity".into(),
                mi_resource_id: Some(resource_id.into()),
                created_at: 0,
            }
        }
        async fn principal_kind(&self, _id: &str) -> Result<Option<(String, String)>, ArmError> {
            Ok(None)
        }
        async fn changed(&self, _what: Changed) -> Result<(), ArmError> {
            Ok(())
        }
        fn shared(&self) -> Option<Arc<dyn Platform>> {
            if !self.background {
                return None;
            }
            self.me.upgrade().map(|p| p as Arc<dyn Platform>)
        }
    }

    async fn world(background: bool) -> (Arc<TestPlatform>, Host) {
        let dir = std::env::temp_dir().join(format!(
            "cloister-arm-ops-{}-{}",
            std::process::id(),
            cloister_core::new_guid()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db?mode=rwc", dir.display()))
            .await
            .unwrap();
        for s in [SUB, OTHER_SUB] {
            store
                .subscription_upsert(&Subscription {
                    id: s.into(),
                    display_name: s.into(),
                    tenant_id: "t".into(),
                    management_group: None,
                    created_at: 0,
                })
                .await
                .unwrap();
            store
                .rg_upsert(&ResourceGroup {
                    subscription_id: s.into(),
                    name: "g".into(),
                    location: "westus".into(),
                    tags: "{}".into(),
                    created_at: 0,
                })
                .await
                .unwrap();
        }
        let p = Arc::new_cyclic(|me| TestPlatform {
            store,
            me: me.clone(),
            background,
        });
        let mut host = Host::default();
        host.register(Arc::new(SimulatedWork(
            ProviderSpec::new("Contoso.Slow").with_type(
                TypeSpec::new("things", &["*"]).long_running(SimulatedWork::long_running()),
            ),
        )))
        .unwrap();
        host.register_plain(
            ProviderSpec::new("Contoso.Fast").with_type(TypeSpec::new("things", &["*"])),
        )
        .unwrap();
        (p, host)
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Value,
    }

    async fn call(
        host: &Host,
        p: &TestPlatform,
        who: &str,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = url
            .strip_prefix("https://cloister.test:8443")
            .unwrap_or(url);
        let (path, q) = url
            .split_once('?')
            .unwrap_or((url, "api-version=2024-01-01"));
        let query: BTreeMap<String, String> = serde_urlencoded::from_str(q).unwrap();
        let caller = Caller {
            object_id: who.into(),
            tenant_id: "t".into(),
            app_id: who.into(),
            idtyp: "app".into(),
        };
        let bytes = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
        let headers = HeaderMap::new();
        let req = Request {
            caller: &caller,
            method: &method,
            path,
            query: &query,
            raw_query: Some(q),
            headers: &headers,
            body: &bytes,
        };
        let resp = match host.handle(p, &req).await {
            Ok(r) => r,
            Err(e) => (
                StatusCode::from_u16(e.status).unwrap(),
                axum::Json(e.body()),
            )
                .into_response(),
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&b).unwrap_or(Value::Null),
        }
    }

    fn thing(sub: &str, ns: &str, name: &str) -> String {
        format!(
            "/subscriptions/{sub}/resourceGroups/g/providers/{ns}/things/{name}?api-version=2024-01-01"
        )
    }

    fn header<'a>(a: &'a Answer, k: &str) -> &'a str {
        a.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Polls a status URL until the operation ends.
    async fn until_done(host: &Host, p: &TestPlatform, who: &str, url: &str) -> Value {
        for _ in 0..100 {
            let a = call(host, p, who, Method::GET, url, None).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let s = a.body["status"].as_str().unwrap().to_string();
            if ["Succeeded", "Failed", "Canceled"].contains(&s.as_str()) {
                assert!(a.headers.get("retry-after").is_none());
                return a.body;
            }
            assert_eq!(header(&a, "retry-after"), "1");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operation did not end");
    }

    #[tokio::test]
    async fn a_long_running_put_moves_to_succeeded_in_the_background() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "contoso.slow", "t1");
        let body =
            json!({"location": "West US", "properties": {"provisionSeconds": 0.5, "size": 3}});
        let a = call(&host, &p, "admin", Method::PUT, &url, Some(body.clone())).await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["properties"]["provisioningState"], "Accepted");
        assert_eq!(a.body["properties"]["size"], 3);
        let status_url = header(&a, "azure-asyncoperation").to_string();
        let result_url = header(&a, "location").to_string();
        assert_eq!(header(&a, "retry-after"), "1");
        let prefix = format!(
            "https://cloister.test:8443/subscriptions/{SUB}/providers/Contoso.Slow/locations/westus/"
        );
        assert!(
            status_url.starts_with(&format!("{prefix}operationStatuses/")),
            "{status_url}"
        );
        assert!(status_url.ends_with("?api-version=2024-01-01"));
        assert!(
            result_url.starts_with(&format!("{prefix}operationResults/")),
            "{result_url}"
        );

        // While it runs: the resource is not final, the result URL answers 202.
        let r = call(&host, &p, "admin", Method::GET, &result_url, None).await;
        assert_eq!(r.status, 202);
        assert_eq!(header(&r, "location"), result_url, "{:?}", r.headers);
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        let st = g.body["properties"]["provisioningState"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(["Accepted", "Provisioning"].contains(&st.as_str()), "{st}");

        let done = until_done(&host, &p, "reader", &status_url).await;
        assert_eq!(done["status"], "Succeeded");
        assert!(done["endTime"].is_string() && done["startTime"].is_string());
        assert_eq!(
            done["name"],
            status_url
                .rsplit('/')
                .next()
                .unwrap()
                .split('?')
                .next()
                .unwrap()
        );
        assert!(done.get("error").is_none());
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.body["properties"]["provisioningState"], "Succeeded");
        let r = call(&host, &p, "admin", Method::GET, &result_url, None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
        assert_eq!(r.body["id"], g.body["id"]);

        // An update is long-running too, and answers 200.
        let a = call(&host, &p, "admin", Method::PUT, &url, Some(body)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["properties"]["provisioningState"], "Accepted");
        let done = until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Succeeded");
    }

    #[tokio::test]
    async fn a_failing_provision_fails_the_operation_and_the_resource() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "Contoso.Slow", "bad");
        let body = json!({"location": "westus", "properties": {"fail": "the image did not start"}});
        let a = call(&host, &p, "admin", Method::PUT, &url, Some(body)).await;
        assert_eq!(a.status, 201);
        let done = until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Failed");
        assert_eq!(done["error"]["code"], "ProvisioningFailed");
        assert_eq!(done["error"]["message"], "the image did not start");
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.body["properties"]["provisioningState"], "Failed");
        let r = call(
            &host,
            &p,
            "admin",
            Method::GET,
            header(&a, "location"),
            None,
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "ProvisioningFailed");
        // A failed resource may be written again (its operation is over).
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus", "properties": {}})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let done = until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Succeeded");
    }

    #[tokio::test]
    async fn writes_while_an_operation_runs_are_refused_with_409() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "Contoso.Slow", "busy");
        let slow = json!({"location": "westus", "properties": {"provisionSeconds": 1.5}});
        let a = call(&host, &p, "admin", Method::PUT, &url, Some(slow.clone())).await;
        assert_eq!(a.status, 201);
        for m in [Method::PUT, Method::PATCH, Method::DELETE] {
            let b = call(&host, &p, "admin", m.clone(), &url, Some(slow.clone())).await;
            assert_eq!(b.status, 409, "{m}: {}", b.body);
            assert_eq!(b.body["error"]["code"], "Conflict");
        }
        // The refused PUT changed nothing and started nothing.
        let done = until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Succeeded");
        let b = call(
            &host,
            &p,
            "admin",
            Method::PATCH,
            &url,
            Some(json!({"tags": {"a": "b"}})),
        )
        .await;
        assert_eq!(b.status, 200, "{}", b.body);
        until_done(&host, &p, "admin", header(&b, "azure-asyncoperation")).await;
    }

    #[tokio::test]
    async fn operations_are_found_only_under_their_subscription_and_by_readers_of_the_resource() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "Contoso.Slow", "mine");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus"})),
        )
        .await;
        let status_url = header(&a, "azure-asyncoperation").to_string();
        let result_url = header(&a, "location").to_string();
        let op_id = status_url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap();
        // The same operation id under another subscription, namespace or location: not found.
        for wrong in [
            status_url.replace(SUB, OTHER_SUB),
            result_url.replace(SUB, OTHER_SUB),
            status_url.replace("/locations/westus/", "/locations/eastus/"),
            status_url.replace("Contoso.Slow", "Contoso.Fast"),
        ] {
            let b = call(&host, &p, "admin", Method::GET, &wrong, None).await;
            assert_eq!(b.status, 404, "{wrong}: {}", b.body);
            assert_eq!(b.body["error"]["code"], "OperationNotFound");
        }
        // Someone who may not read the resource may not read its operation.
        for u in [&status_url, &result_url] {
            let b = call(&host, &p, "stranger", Method::GET, u, None).await;
            assert_eq!(b.status, 403, "{}", b.body);
        }
        // An unknown operation id.
        let b = call(
            &host,
            &p,
            "admin",
            Method::GET,
            &status_url.replace(op_id, &cloister_core::new_guid()),
            None,
        )
        .await;
        assert_eq!(b.status, 404);
        assert_eq!(b.body["error"]["code"], "OperationNotFound");
        // Only GET.
        let b = call(&host, &p, "admin", Method::DELETE, &status_url, None).await;
        assert_eq!(b.status, 405);
        until_done(&host, &p, "reader", &status_url).await;
    }

    #[tokio::test]
    async fn a_long_running_delete_answers_202_and_removes_the_resource_when_done() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "Contoso.Slow", "gone");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus", "properties": {"provisionSeconds": 0.3}})),
        )
        .await;
        until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        let d = call(&host, &p, "admin", Method::DELETE, &url, None).await;
        assert_eq!(d.status, 202, "{}", d.body);
        assert_eq!(header(&d, "retry-after"), "1");
        let result_url = header(&d, "location").to_string();
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.body["properties"]["provisioningState"], "Deleting");
        let done = until_done(&host, &p, "admin", header(&d, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Succeeded");
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.status, 404);
        let r = call(&host, &p, "admin", Method::GET, &result_url, None).await;
        assert_eq!(r.status, 204);
        // Deleting what is not there: 204, no operation.
        let d = call(&host, &p, "admin", Method::DELETE, &url, None).await;
        assert_eq!(d.status, 204);
        // A delete whose work fails keeps the resource, Failed.
        let url = thing(SUB, "Contoso.Slow", "stays");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus", "properties": {"failDelete": "still in use"}})),
        )
        .await;
        until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await;
        let d = call(&host, &p, "admin", Method::DELETE, &url, None).await;
        assert_eq!(d.status, 202);
        let done = until_done(&host, &p, "admin", header(&d, "azure-asyncoperation")).await;
        assert_eq!(done["status"], "Failed");
        assert_eq!(done["error"]["message"], "still in use");
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.body["properties"]["provisioningState"], "Failed");
    }

    #[tokio::test]
    async fn an_operation_whose_node_stopped_is_failed_and_its_resource_too() {
        let (p, host) = world(true).await;
        let url = thing(SUB, "Contoso.Slow", "orphan");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus", "properties": {"provisionSeconds": 0.2}})),
        )
        .await;
        let status_url = header(&a, "azure-asyncoperation").to_string();
        until_done(&host, &p, "admin", &status_url).await;
        // What a node that died mid-operation leaves behind: an Accepted operation nobody
        // touches any more, and its resource Accepted.
        let id = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/g/providers/Contoso.Slow/things/orphan";
        let old = now_secs() - STALE_AFTER_SECS - 5;
        let orphan = OperationRecord {
            id: "orphan-op".into(),
            subscription_id: SUB.into(),
            namespace: "Contoso.Slow".into(),
            location: "westus".into(),
            resource_id: id.into(),
            kind: UPDATE.into(),
            status: "Provisioning".into(),
            error_code: None,
            error_message: None,
            result: None,
            caller: "admin".into(),
            start_time: old,
            end_time: None,
            heartbeat_at: old,
        };
        p.store.op_insert(&orphan).await.unwrap();
        set_state(&*p, id, State::Provisioning).await.unwrap();
        let orphan_url = status_url.replace(
            status_url
                .rsplit('/')
                .next()
                .unwrap()
                .split('?')
                .next()
                .unwrap(),
            "orphan-op",
        );
        let b = call(&host, &p, "admin", Method::GET, &orphan_url, None).await;
        assert_eq!(b.body["status"], "Failed", "{}", b.body);
        assert_eq!(b.body["error"]["code"], INTERRUPTED);
        let g = call(&host, &p, "admin", Method::GET, &url, None).await;
        assert_eq!(g.body["properties"]["provisioningState"], "Failed");
        // And it no longer blocks the resource.
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus"})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            until_done(&host, &p, "admin", header(&a, "azure-asyncoperation")).await["status"],
            "Succeeded"
        );
    }

    #[tokio::test]
    async fn without_a_shared_platform_the_work_runs_within_the_request() {
        let (p, host) = world(false).await;
        let url = thing(SUB, "Contoso.Slow", "inline");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus", "properties": {"provisionSeconds": 0.1}})),
        )
        .await;
        assert_eq!(a.status, 201);
        let s = call(
            &host,
            &p,
            "admin",
            Method::GET,
            header(&a, "azure-asyncoperation"),
            None,
        )
        .await;
        assert_eq!(s.body["status"], "Succeeded");
        // A type with nothing long-running answers as before: no operation headers.
        let url = thing(SUB, "Contoso.Fast", "plain");
        let a = call(
            &host,
            &p,
            "admin",
            Method::PUT,
            &url,
            Some(json!({"location": "westus"})),
        )
        .await;
        assert_eq!(a.status, 201);
        assert!(a.headers.get("azure-asyncoperation").is_none());
        assert_eq!(a.body["properties"]["provisioningState"], "Succeeded");
    }
}
