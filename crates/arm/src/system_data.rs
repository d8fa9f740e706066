//! ARM's `systemData`: who created and last modified a resource, and when.

use serde_json::{Value, json};

/// The kinds of principal ARM names in `createdByType` / `lastModifiedByType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByType {
    User,
    Application,
    ManagedIdentity,
    Key,
}

impl ByType {
    pub fn as_str(self) -> &'static str {
        match self {
            ByType::User => "User",
            ByType::Application => "Application",
            ByType::ManagedIdentity => "ManagedIdentity",
            ByType::Key => "Key",
        }
    }
    /// Parses a stored value (case-insensitive); unknown values read as `Application`.
    pub fn parse(s: &str) -> ByType {
        match s.to_ascii_lowercase().as_str() {
            "user" => ByType::User,
            "managedidentity" => ByType::ManagedIdentity,
            "key" => ByType::Key,
            _ => ByType::Application,
        }
    }
}

/// One side of `systemData` (creation or last modification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// A user's UPN, an application's or identity's client id.
    pub by: String,
    pub by_type: ByType,
    /// Unix seconds.
    pub at: i64,
}

/// The `systemData` block for a resource created by `created` and last written by `modified`.
pub fn system_data(created: &Stamp, modified: &Stamp) -> Value {
    json!({
        "createdBy": created.by,
        "createdByType": created.by_type.as_str(),
        "createdAt": rfc3339(created.at),
        "lastModifiedBy": modified.by,
        "lastModifiedByType": modified.by_type.as_str(),
        "lastModifiedAt": rfc3339(modified.at),
    })
}

/// Unix seconds as RFC 3339 UTC with a `Z`, e.g. `2026-12-01T23:19:07Z`.
pub fn rfc3339(secs: i64) -> String {
    cloister_core::clock::format_rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let c = Stamp {
            by: "alice@contoso.com".into(),
            by_type: ByType::User,
            at: 0,
        };
        let m = Stamp {
            by: "00000000-0000-0000-0000-000000000001".into(),
            by_type: ByType::parse("application"),
            at: 86400,
        };
        let v = system_data(&c, &m);
        assert_eq!(v["createdByType"], "User");
        assert_eq!(v["lastModifiedByType"], "Application");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00Z");
        assert_eq!(v["lastModifiedAt"], "1970-01-02T00:00:00Z");
        assert_eq!(ByType::parse("ManagedIdentity"), ByType::ManagedIdentity);
    }
}
