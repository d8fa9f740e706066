//! The OpenAPI 3.1 document of every API Cloister serves, composed: the ARM operations of
//! every registered resource type, generated from the provider registry
//! ([`cloister_arm::openapi::registry_ops`]), then each service crate's own surfaces (its
//! `openapi::ops()`), then what the server itself still serves (below). The first operation
//! of a route wins, so a hand-listed operation gives way to the generated one once its type
//! is registered. `crates/cli/tests/openapi.rs` checks that every documented operation
//! answers and that every routed ARM operation is documented.

use cloister_arm::openapi::{self as doc, Op};
use cloister_arm::registry::Registry;
use serde_json::Value;

/// For tests over the served document: its shape checker, the template matcher and the
/// registry's types.
pub use cloister_arm::openapi::{check, template_matches};
pub use cloister_arm::registry::Level;

/// Every documented operation, in the document's order of precedence.
pub fn ops(reg: &Registry) -> Vec<Op> {
    doc::merge([
        doc::registry_ops(reg),
        cloister_arm::hierarchy::ops(),
        cloister_authorization::arm::ops(),
        cloister_identity::openapi::ops(),
        cloister_sessions::openapi::ops(),
        cloister_credentials::openapi::ops(),
        server_ops(),
    ])
}

/// The document.
pub fn document(reg: &Registry) -> Value {
    let mut schemas = doc::registry_schemas(reg);
    schemas.extend(cloister_identity::openapi::schemas());
    doc::document(&ops(reg), &schemas)
}

/// What the server serves itself: the operational endpoints.
fn server_ops() -> Vec<Op> {
    vec![
        Op::new("get", "/healthz", "Operations", "Liveness"),
        Op::new(
            "get",
            "/readyz",
            "Operations",
            "Readiness (store reachable)",
        ),
        Op::new("get", "/metrics", "Operations", "Prometheus metrics"),
        Op::new("get", "/openapi.json", "Operations", "This document"),
    ]
}
