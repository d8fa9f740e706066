//! Calls to an outside OAuth 2.0 token endpoint (RFC 6749 §4.1.3, §4.4, §6), with errors
//! classified the way the runtime must react to them.

use serde_json::{Map, Value};
use std::time::Duration;

/// What a token endpoint answered.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<i64>,
    /// The response without `access_token`, `refresh_token` and `id_token`.
    pub claims: Map<String, Value>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_grant`: the code or refresh token is expired, revoked or reused.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// `invalid_client` / `unauthorized_client`: wrong or expired client credentials.
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// 5xx, 429, timeouts, connection failures: worth retrying.
    #[error("the identity provider is unavailable: {message}")]
    Transient {
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    Other(String),
}

/// One HTTP client for outside identity providers and proxied backends: no redirects
/// (SSRF), bounded time; `extra_root_pem` adds a CA (Cloister's own, so that its identity
/// plane can be a provider).
pub fn client(extra_root_pem: Option<&[u8]>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    if let Some(pem) = extra_root_pem
        && let Ok(c) = reqwest::Certificate::from_pem(pem)
    {
        b = b.add_root_certificate(c);
    }
    b.build().expect("http client")
}

/// POSTs a token request (client authentication in the body, `client_secret_post`).
pub async fn token_request(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, OAuthError> {
    let resp = http
        .post(url)
        .header("accept", "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| OAuthError::Transient {
            message: format!("POST {url}: {e}"),
            retry_after: None,
        })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let err = body.get("error").and_then(|v| v.as_str()).unwrap_or("");
    let desc = body
        .get("error_description")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let msg = |e: &str| {
        if desc.is_empty() {
            format!("{e} (HTTP {status})")
        } else {
            format!("{e}: {desc} (HTTP {status})")
        }
    };
    if status == 429 || status >= 500 {
        return Err(OAuthError::Transient {
            message: msg(if err.is_empty() { "server error" } else { err }),
            retry_after,
        });
    }
    match err {
        "" => {}
        "invalid_grant" => return Err(OAuthError::InvalidGrant(msg(err))),
        "invalid_client" | "unauthorized_client" => {
            return Err(OAuthError::InvalidClient(msg(err)));
        }
        "temporarily_unavailable" | "server_error" => {
            return Err(OAuthError::Transient {
                message: msg(err),
                retry_after,
            });
        }
        other => return Err(OAuthError::Other(msg(other))),
    }
    if !(200..300).contains(&status) {
        return Err(OAuthError::Other(format!(
            "the token endpoint answered HTTP {status}"
        )));
    }
    let Some(obj) = body.as_object() else {
        return Err(OAuthError::Other(
            "the token endpoint did not answer JSON".into(),
        ));
    };
    let access_token = obj
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OAuthError::Other("the token response has no access_token".into()))?
        .to_string();
    let refresh_token = obj
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let expires_in = obj.get("expires_in").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    let mut claims = obj.clone();
    for k in ["access_token", "refresh_token", "id_token"] {
        claims.remove(k);
    }
    Ok(TokenResponse {
        access_token,
        refresh_token,
        expires_in,
        claims,
    })
}

/// `token_request` with retries of transient failures (3 attempts, exponential backoff,
/// honouring a short `Retry-After`).
pub async fn token_request_retrying(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, OAuthError> {
    let mut delay = Duration::from_millis(200);
    let mut last = None;
    for attempt in 0..3 {
        match token_request(http, url, form).await {
            Err(OAuthError::Transient {
                message,
                retry_after,
            }) => {
                if attempt < 2 {
                    let wait = retry_after
                        .map(|s| Duration::from_secs(s.min(5)))
                        .unwrap_or(delay);
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                }
                last = Some(OAuthError::Transient {
                    message,
                    retry_after,
                });
            }
            other => return other,
        }
    }
    Err(last.unwrap_or(OAuthError::Other("no attempt was made".into())))
}
