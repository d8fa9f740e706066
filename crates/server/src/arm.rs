//! The management API's edge: the axum routes that hand every request under `/subscriptions`
//! and `/providers` to the ARM host (`cloister_arm::host::Host`), which routes it to ARM's
//! hierarchy or to the provider that registered its type.

use crate::auth::Caller;
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{any, get};
use cloister_arm::provider::{Request, Res};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use cloister_arm::host::{parse_body, scope, store_err};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/subscriptions", get(list_subscriptions))
        .route("/subscriptions/{*rest}", any(dispatch))
        .route("/providers/{*rest}", any(dispatch))
}

/// The query parameters; a repeated key keeps its last value.
fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

async fn list_subscriptions(State(st): State<Arc<AppState>>, caller: Caller, uri: Uri) -> Res {
    let q = query(&uri);
    cloister_arm::host::require_api_version(q.get("api-version").map(String::as_str))?;
    cloister_arm::hierarchy::list_subscriptions(st.as_ref(), &caller).await
}

async fn dispatch(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    caller: Caller,
    body: Bytes,
) -> Res {
    let q = query(&uri);
    let path = uri.path().trim_end_matches('/');
    let req = Request {
        caller: &caller,
        method: &method,
        path,
        query: &q,
        raw_query: uri.query(),
        headers: &headers,
        body: &body,
    };
    st.host.handle(st.as_ref(), &req).await
}
