//! The shapes every provider shares: ARM's error answers, request-body and scope parsing,
//! responses with ETags, new resource rows, systemData stamps, and scope existence. Used by
//! the host, ARM's hierarchy, long-running operations and each service's provider.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use cloister_core::clock::now_secs;
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::Resource;
use serde_json::{Map, Value, json};

/// The answer of a management handler.
pub type Res = Result<axum::response::Response, ArmError>;

/// Sets `properties.provisioningState` of a resource (long-running operations).
pub fn set_provisioning_state(r: &mut Resource, state: crate::lro::State) {
    let mut props: Value = serde_json::from_str(&r.properties).unwrap_or(json!({}));
    if !props.is_object() {
        props = json!({});
    }
    props["provisioningState"] = json!(state.as_str());
    r.properties = props.to_string();
}

/// The resource type with the casing of its id.
pub fn type_of(r: &Resource) -> String {
    Scope::parse(&r.id)
        .ok()
        .and_then(|s| s.resource_type())
        .unwrap_or_else(|| r.type_.clone())
}

/// A response with the resource's `ETag` header (when it has one).
pub fn with_etag(status: StatusCode, body: Value) -> Res {
    let etag = body
        .get("etag")
        .and_then(|e| e.as_str())
        .and_then(|e| HeaderValue::from_str(e).ok());
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(e) = etag {
        resp.headers_mut().insert(header::ETAG, e);
    }
    Ok(resp)
}

// ---- shared helpers for providers ---------------------------------------------------------

/// ARM's check of the `api-version` query parameter's presence and shape (a date, maybe with
/// a `-preview` style suffix).
pub fn require_api_version(v: Option<&str>) -> Result<(), ArmError> {
    match v {
        None => Err(ArmError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) => {
            let ok = v.len() >= 10
                && v.len() <= 30
                && v.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        *b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
                && (v.len() == 10
                    || v[10..].starts_with('-')
                        && v[11..].chars().all(|c| c.is_ascii_alphanumeric()));
            if ok {
                Ok(())
            } else {
                Err(ArmError::bad_request(
                    "InvalidApiVersionParameter",
                    format!(
                        "The api-version '{}' is invalid. The supported versions are dates such as '2022-04-01'.",
                        v.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
}

/// A request body that must be a JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ArmError> {
    if body.is_empty() {
        return Err(ArmError::invalid(
            "The request content was invalid and could not be deserialized: the body is empty.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ArmError::invalid(
            "The request content was invalid and could not be deserialized: a JSON object is required.",
        )),
        Err(e) => Err(ArmError::invalid(format!(
            "The request content was invalid and could not be deserialized: {e}."
        ))),
    }
}

pub fn scope(s: &str) -> Result<Scope, ArmError> {
    Scope::parse(s).map_err(|e| ArmError::bad_request("InvalidScope", e.to_string()))
}

pub fn ok(status: StatusCode, v: Value) -> Res {
    Ok((status, axum::Json(v)).into_response())
}

pub fn store_err(e: cloister_store::StoreError) -> ArmError {
    match e {
        cloister_store::StoreError::Conflict(m) => ArmError::conflict("Conflict", m),
        cloister_store::StoreError::NotFound => {
            ArmError::not_found("NotFound", "The resource was not found.")
        }
        other => {
            tracing::error!("store: {other}");
            ArmError::internal("An internal error occurred while reading or writing state.")
        }
    }
}

pub fn not_found_path(path: &str) -> ArmError {
    ArmError::not_found(
        "InvalidResourceType",
        format!(
            "No route matches '{}'. Check the resource type and api-version.",
            path.chars().take(300).collect::<String>()
        ),
    )
}

pub fn method_not_allowed(m: &Method) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!("The HTTP method '{m}' is not supported for this resource."),
    )
}

pub fn rg_not_found(name: &str) -> ArmError {
    ArmError::not_found(
        "ResourceGroupNotFound",
        format!("Resource group '{name}' could not be found."),
    )
}

pub(crate) fn not_found(t: &str, sc: &Scope) -> ArmError {
    ArmError::not_found(
        "ResourceNotFound",
        format!(
            "The Resource '{t}/{}' under resource group '{}' was not found.",
            sc.name().unwrap_or_default(),
            sc.resource_group().unwrap_or_default()
        ),
    )
}

pub fn rg_id(sub: &str, rg: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}")
}

/// A new resource row (not yet stored).
pub fn new_resource(
    id: &str,
    type_: &str,
    sub: &str,
    rg: &str,
    name: &str,
    location: &str,
) -> Resource {
    let now = now_secs();
    Resource {
        id: id.to_string(),
        type_: type_.to_string(),
        subscription_id: sub.to_string(),
        resource_group: rg.to_string(),
        name: name.to_string(),
        location: location.to_string(),
        tags: "{}".into(),
        properties: "{}".into(),
        system_principal_id: None,
        user_identities: vec![],
        created_at: now,
        updated_at: now,
        etag: String::new(),
        created_by: String::new(),
        created_by_type: String::new(),
        modified_by: String::new(),
        modified_by_type: String::new(),
    }
}
