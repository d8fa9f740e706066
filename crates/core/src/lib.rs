//! Cloister core: identifiers, ARM resource ids and scope parsing, the clock, and the
//! error envelopes (ARM and Entra) that every service maps its errors into. No I/O.
//!
//! ```
//! use cloister_core::error::ArmError;
//! let e = ArmError::bad_request("InvalidApiVersionParameter", "api-version is required");
//! assert_eq!(e.body()["error"]["code"], "InvalidApiVersionParameter");
//! ```

pub mod clock;
pub mod error;
pub mod scope;

/// A new random GUID in Azure's lowercase hyphenated form.
pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// True when `s` is a GUID (any case).
pub fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}
