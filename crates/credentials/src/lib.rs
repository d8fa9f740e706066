//! The credential manager: OAuth 2.0 connections to outside services (modelled on API
//! Management's credential manager), their consent flows, refresh, and the envelope-encrypted
//! token store; and its API layer: the resource providers the server registers and the
//! gateway router it mounts.
//!
//! - [`vault`]: the token store's encryption: a fresh data key per record, bound to its
//!   record by associated data, wrapped by a versioned key-encryption-key ring whose keys are
//!   themselves wrapped by a [`vault::KeyProvider`] (the master key); rotation re-wraps data
//!   keys without touching payloads.
//! - [`model`]: providers, connections and access policies (validation, stored shapes);
//!   [`oauth`]: token requests; [`runtime`]: tokens served, refreshed single-flight, sealed.
//! - [`manager`]: [`Credentials`], the running service (vault, runtime, caches, key upkeep).
//! - [`arm`]: the `Microsoft.ApiManagement` and `Cloister.Credentials` resource providers.
//! - [`consent`]: pending logins (`getLoginLinks`, `confirmConsentCode`).
//! - [`gateway`]: the login pages, the consent callback, `authorizationContext` and the proxy.

pub mod arm;
pub mod consent;
pub mod gateway;
pub mod manager;
pub mod model;
pub mod oauth;
pub mod openapi;
pub mod provider;
pub mod runtime;
pub mod vault;

pub use manager::Credentials;
