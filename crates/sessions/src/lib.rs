//! Dynamic sessions: code-interpreter session pools, wire-compatible with Azure Container Apps.
//!
//! - [`spec`]: the `Microsoft.App/sessionPools` resource's properties;
//! - [`pool`]: ready pools, the identifier table, limits and cooldown;
//! - [`runtime`]: the sandbox behind a trait, with [`bwrap`] as the embedded default;
//! - [`api`]: the pool's data plane (both API generations).

pub mod api;
pub mod arm;
pub mod bwrap;
pub mod cluster;
pub mod container;
pub mod custom;
pub mod custom_arm;
pub mod custom_proxy;
pub mod custom_spec;
pub mod error;
pub mod ident;
pub mod oci;
pub mod openapi;
pub mod pool;
pub mod runtime;
pub mod spec;

pub use pool::Manager;
