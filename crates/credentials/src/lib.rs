//! The credential manager: OAuth 2.0 connections to outside services (modelled on API
//! Management's credential manager), their consent flows, refresh, and the envelope-encrypted
//! token store.
//!
//! - [`vault`]: the token store's encryption: a fresh data key per record, bound to its
//!   record by associated data, wrapped by a versioned key-encryption-key ring whose keys are
//!   themselves wrapped by a [`vault::KeyProvider`] (the master key); rotation re-wraps data
//!   keys without touching payloads.

pub mod model;
pub mod oauth;
pub mod openapi;
pub mod provider;
pub mod runtime;
pub mod vault;
