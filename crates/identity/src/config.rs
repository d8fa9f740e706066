//! Token-service settings.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// `ES256` (default: fast) or `RS256` (what Entra publishes).
    pub signing_alg: String,
    /// How long a key signs before the next one takes over.
    pub key_rotation_secs: i64,
    /// How long a new key is published in the JWKS before it may sign.
    pub key_publish_lead_secs: i64,
    /// How often key rotation and purges are checked.
    pub key_check_secs: u64,
    /// App tokens live a random time in this range (Entra: 60-90 minutes).
    pub app_token_min_secs: i64,
    pub app_token_max_secs: i64,
    /// Managed-identity tokens (Entra: about 24 hours).
    pub mi_token_secs: i64,
    pub user_token_secs: i64,
    pub refresh_token_secs: i64,
    /// Allowed clock skew when validating `nbf`/`exp`.
    pub clock_skew_secs: i64,
    /// Failed client authentications allowed per client per minute before lockout.
    pub failed_auth_per_minute: u32,
    /// Resource URIs (audiences) tokens may be requested for, besides registered
    /// applications and the management endpoint.
    pub resources: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            signing_alg: "ES256".into(),
            key_rotation_secs: 30 * 86400,
            key_publish_lead_secs: 2 * 86400,
            key_check_secs: 60,
            app_token_min_secs: 3600,
            app_token_max_secs: 5400,
            mi_token_secs: 86400,
            user_token_secs: 3600 + 1200,
            refresh_token_secs: 90 * 86400,
            clock_skew_secs: 300,
            failed_auth_per_minute: 10,
            resources: [
                "https://management.azure.com",
                "https://management.core.windows.net",
                "https://dynamicsessions.io",
                "https://acasessions.io",
                "https://azure-api.net/authorization-manager",
                "https://vault.azure.net",
                "https://storage.azure.com",
                "https://ml.azure.com",
                "https://cognitiveservices.azure.com",
                "https://signalr.azure.com",
                "https://graph.microsoft.com",
                "https://database.windows.net",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl IdentityConfig {
    /// Longest lifetime of any token we sign, plus skew: a retired key stays published
    /// at least this long.
    pub fn max_token_lifetime(&self) -> i64 {
        self.mi_token_secs
            .max(self.app_token_max_secs)
            .max(self.user_token_secs)
            + self.clock_skew_secs
    }
}
