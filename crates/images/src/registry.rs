//! The OCI distribution API (v2) client: manifests, blobs and the registry's auth challenges.
//!
//! * HTTPS (rustls, the platform's roots) to every registry, plain HTTP only to the hosts the
//!   caller lists; a redirect may not downgrade to HTTP (except to a listed host).
//! * `401` with `WWW-Authenticate: Basic` → the request again with the credentials;
//!   `Bearer realm=…,service=…,scope=…` → a token from the realm (with the credentials as
//!   basic auth when there are some, anonymously otherwise), then the request again with it.
//!   The realm must be HTTPS (or a listed host): credentials never travel in clear text to a
//!   host nobody listed. The password can be a token (ACR's refresh token with the all-zero
//!   user name); a managed identity's token exchange will plug in here.
//! * Redirects on blobs are followed (reqwest drops `Authorization` when the host changes).
//! * Bodies are read in chunks with a byte limit; blobs are hashed while they stream to disk.
//! * Credentials and tokens never appear in an error message or a log line.

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use tokio::io::AsyncWriteExt;

use crate::{PullError, RegistryAuth};

pub(crate) struct Registry {
    client: reqwest::Client,
    base: String,
    host: String,
    repository: String,
    auth: Option<RegistryAuth>,
    plain_http: Vec<String>,
    /// The `Authorization` value that worked last (basic or a bearer token).
    authorization: Option<HeaderValue>,
}

pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

impl Registry {
    pub fn new(
        api_host: &str,
        repository: &str,
        auth: Option<&RegistryAuth>,
        plain_http: &[String],
        timeout: Duration,
    ) -> Result<Registry, PullError> {
        let plain = plain_http.iter().any(|h| h.eq_ignore_ascii_case(api_host));
        let allowed: Vec<String> = plain_http.iter().map(|h| h.to_ascii_lowercase()).collect();
        let redirect_allowed = allowed.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            let url = attempt.url();
            let scheme = url.scheme().to_string();
            let hostport = host_port(url);
            if scheme == "https" || (scheme == "http" && redirect_allowed.contains(&hostport)) {
                return attempt.follow();
            }
            attempt.error(format!("refusing a redirect to {scheme}://{hostport}"))
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .read_timeout(timeout.min(Duration::from_secs(120)))
            .user_agent(concat!("cloister-images/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PullError::Network(format!("cannot build the HTTP client: {e}")))?;
        Ok(Registry {
            client,
            base: format!("{}://{}", if plain { "http" } else { "https" }, api_host),
            host: api_host.to_string(),
            repository: repository.to_string(),
            auth: auth.cloned(),
            plain_http: allowed,
            authorization: None,
        })
    }

    /// GET a manifest (tag or digest) with the manifest `Accept` list.
    pub async fn manifest(&mut self, reference: &str, limit: u64) -> Result<Fetched, PullError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, reference
        );
        let what = format!("manifest {}/{}:{}", self.host, self.repository, reference);
        let mut resp = self.get(&url, Some(crate::manifest::ACCEPT), &what).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(&mut resp, limit, &what).await?;
        Ok(Fetched {
            bytes,
            content_type,
        })
    }

    /// Streams a blob to `dest` (a new file), hashing it; returns its sha256 digest and size.
    /// Refuses to go past `limit` bytes (its descriptor's size, or what is left of the pull's
    /// budget when that is less).
    pub async fn blob_to_file(
        &mut self,
        digest: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<(String, u64), PullError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        let what = format!("blob {digest}");
        let mut resp = self.get(&url, None, &what).await?;
        if let Some(len) = resp.content_length()
            && len > limit
        {
            return Err(PullError::TooLarge { what, limit });
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PullError::Storage(format!("creating {}: {e}", dest.display())))?;
        let mut hasher = Context::new(&SHA256);
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| net(&what, e))? {
            total += chunk.len() as u64;
            if total > limit {
                return Err(PullError::TooLarge { what, limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PullError::Storage(format!("writing {}: {e}", dest.display())))?;
        }
        file.sync_all()
            .await
            .map_err(|e| PullError::Storage(format!("writing {}: {e}", dest.display())))?;
        Ok((
            format!("sha256:{}", hex::encode(hasher.finish().as_ref())),
            total,
        ))
    }

    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, PullError> {
        let mut tried_challenge = false;
        loop {
            let mut req = self.client.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = &self.authorization {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let resp = req.send().await.map_err(|e| net(what, e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && !tried_challenge {
                tried_challenge = true;
                self.authorization = Some(self.answer_challenge(resp.headers()).await?);
                continue;
            }
            return Err(self.status_error(status, resp, what).await);
        }
    }

    async fn status_error(
        &self,
        status: StatusCode,
        mut resp: reqwest::Response,
        what: &str,
    ) -> PullError {
        let body = read_limited(&mut resp, 16 * 1024, what)
            .await
            .unwrap_or_default();
        let code = registry_error_code(&body);
        let detail = code
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        match status {
            StatusCode::UNAUTHORIZED => PullError::Unauthorized(format!(
                "registry {} refused the credentials for {what}{detail}: {}",
                self.host,
                if self.auth.is_some() {
                    "wrong user name or password?"
                } else {
                    "it needs credentials"
                }
            )),
            StatusCode::FORBIDDEN => PullError::Unauthorized(format!(
                "registry {} denied access to {what}{detail}",
                self.host
            )),
            StatusCode::NOT_FOUND => PullError::NotFound(format!(
                "{what} does not exist in registry {}{detail}",
                self.host
            )),
            StatusCode::TOO_MANY_REQUESTS => {
                PullError::Network(format!("registry {} is rate limiting ({what})", self.host))
            }
            s => PullError::Network(format!(
                "registry {} answered {s} for {what}{detail}",
                self.host
            )),
        }
    }

    async fn answer_challenge(&self, headers: &HeaderMap) -> Result<HeaderValue, PullError> {
        let challenge = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .max_by_key(|c| c.scheme == Scheme::Bearer);
        let Some(challenge) = challenge else {
            return Err(PullError::Unauthorized(format!(
                "registry {} asks for authentication without a Basic or Bearer challenge",
                self.host
            )));
        };
        match challenge.scheme {
            Scheme::Basic => {
                let Some(auth) = &self.auth else {
                    return Err(PullError::Unauthorized(format!(
                        "registry {} needs credentials (registryCredentials) to pull {}",
                        self.host, self.repository
                    )));
                };
                Ok(basic(auth))
            }
            Scheme::Bearer => self.bearer_token(&challenge).await,
        }
    }

    async fn bearer_token(&self, c: &Challenge) -> Result<HeaderValue, PullError> {
        let realm = c.param("realm").ok_or_else(|| {
            PullError::Unauthorized(format!(
                "registry {}'s Bearer challenge has no realm",
                self.host
            ))
        })?;
        let mut url = reqwest::Url::parse(realm).map_err(|_| {
            PullError::Unauthorized(format!("registry {}'s token realm is not a URL", self.host))
        })?;
        let realm_host = host_port(&url);
        let plain_ok = url.scheme() == "http" && self.plain_http.contains(&realm_host);
        if url.scheme() != "https" && !plain_ok {
            return Err(PullError::Unauthorized(format!(
                "registry {}'s token realm {}://{realm_host} is not HTTPS; credentials are not sent there",
                self.host,
                url.scheme()
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = c.param("service") {
                q.append_pair("service", service);
            }
            let default_scope = format!("repository:{}:pull", self.repository);
            q.append_pair("scope", c.param("scope").unwrap_or(&default_scope));
        }
        let what = format!("a token from {realm_host}");
        let mut req = self.client.get(url);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, basic(auth));
        }
        let mut resp = req.send().await.map_err(|e| net(&what, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PullError::Unauthorized(format!(
                "the token service {realm_host} of registry {} refused {}",
                self.host,
                if self.auth.is_some() {
                    "the credentials (wrong user name or password?)"
                } else {
                    "an anonymous pull"
                }
            )));
        }
        if !status.is_success() {
            return Err(PullError::Network(format!(
                "the token service {realm_host} answered {status}"
            )));
        }
        let body = read_limited(&mut resp, 1 << 20, &what).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            PullError::Unauthorized(format!("the token service {realm_host} sent no JSON token"))
        })?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                PullError::Unauthorized(format!("the token service {realm_host} sent no token"))
            })?;
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            PullError::Unauthorized(format!(
                "the token service {realm_host} sent an unusable token"
            ))
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

fn basic(auth: &RegistryAuth) -> HeaderValue {
    use base64::Engine;
    let raw = format!("{}:{}", auth.username, auth.password);
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

fn host_port(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn net(what: &str, e: reqwest::Error) -> PullError {
    // reqwest's Display includes the URL (no credentials are ever put in URLs here).
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "bad redirect"
    } else {
        "failed"
    };
    let mut msg = format!("fetching {what} {kind}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    PullError::Network(msg)
}

async fn read_limited(
    resp: &mut reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, PullError> {
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(PullError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| net(what, e))? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(PullError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn registry_error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: String,
    }
    let e: Errors = serde_json::from_slice(body).ok()?;
    let code = e.errors.into_iter().next()?.code;
    // Only the registry's error code: it is a short identifier, never echoed input.
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')).then_some(code)
}

#[derive(Debug, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer,
}

#[derive(Debug)]
struct Challenge {
    scheme: Scheme,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one `WWW-Authenticate` value: `Scheme k="v", k2=v2`. Unknown schemes → None.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("basic") {
        Scheme::Basic
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else {
        return None;
    };
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() && params.len() < 16 {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_string();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch = rest[i..].chars().next().unwrap();
                val.push(ch);
                i += ch.len_utf8();
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i].trim().to_string();
        }
        if !key.is_empty() {
            params.push((key, val));
        }
    }
    Some(Challenge { scheme, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, Scheme::Bearer);
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/python:pull"));
        let c = parse_challenge(r#"Basic realm="cloister-test""#).unwrap();
        assert_eq!(c.scheme, Scheme::Basic);
        assert_eq!(c.param("REALM"), Some("cloister-test"));
        let c = parse_challenge(r#"bearer realm=https://x/t, service=x ,scope="a\"b""#).unwrap();
        assert_eq!(c.param("realm"), Some("https://x/t"));
        assert_eq!(c.param("service"), Some("x"));
        assert_eq!(c.param("scope"), Some("a\"b"));
        assert!(parse_challenge("Negotiate abc").is_none());
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn error_codes_are_filtered() {
        assert_eq!(
            registry_error_code(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}"#)
                .as_deref(),
            Some("MANIFEST_UNKNOWN")
        );
        assert_eq!(
            registry_error_code(br#"{"errors":[{"code":"<script>"}]}"#),
            None
        );
        assert_eq!(registry_error_code(b"nope"), None);
    }

    #[test]
    fn credentials_are_not_in_debug_output() {
        let a = RegistryAuth {
            username: "u".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let v = basic(&a);
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("aHVudGVy"), "{v:?}");
    }

    proptest! {
        #[test]
        fn challenge_parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_challenge(&s);
            let _ = parse_challenge(&format!("Bearer {s}"));
        }
    }
}
