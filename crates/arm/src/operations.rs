//! Long-running operations: the operation records behind `Azure-AsyncOperation` and
//! `Location`, their status and result endpoints, and the background work that moves a
//! resource's `provisioningState` from `Accepted` to a terminal state.

use crate::host::{Host, with_etag};
use crate::provider::{Platform, Provider, Request, Res};
use crate::registry::Route;
use axum::http::StatusCode;
use cloister_store::Resource;
use serde_json::Value;
use std::sync::Arc;

/// Starts the long-running part of a create or update whose resource is stored as
/// `Accepted`, and answers the first response.
pub async fn start(
    _p: &dyn Platform,
    _prov: Arc<dyn Provider>,
    _stored: &Resource,
    _route: &Route,
    _req: &Request<'_>,
    status: StatusCode,
    body: Value,
) -> Res {
    with_etag(status, body)
}

/// The status and result endpoints of operations, if `segs` names one.
pub async fn serve(
    _host: &Host,
    _p: &dyn Platform,
    _segs: &[&str],
    _req: &Request<'_>,
) -> Option<Res> {
    None
}
