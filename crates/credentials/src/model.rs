//! The resource model, after API Management's credential manager: providers
//! (`authorizationProviders`), connections (`authorizations`) and access policies
//! (`accessPolicies`). Parsing is lenient on input and strict about secrets: a client secret
//! is taken out of the properties before they are stored and is never written back.

use serde_json::{Map, Value, json};

pub const MAX_PROVIDERS: i64 = 1_000;
pub const MAX_CONNECTIONS: i64 = 10_000;
pub const MAX_POLICIES: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    ClientCredentials,
}

impl Grant {
    pub fn wire(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "AuthorizationCode",
            Grant::ClientCredentials => "ClientCredentials",
        }
    }
    fn key(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorizationCode",
            Grant::ClientCredentials => "clientCredentials",
        }
    }
}

/// A provider's settings, secrets excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub display_name: String,
    pub identity_provider: String,
    pub grant: Grant,
    pub client_id: String,
    pub scopes: String,
    pub authorization_url: String,
    pub token_url: String,
    pub refresh_url: String,
    /// Any other grant parameters given (kept and echoed, e.g. `resourceUri`).
    pub extra: Map<String, Value>,
}

/// Endpoints Cloister fills in for a known identity provider.
pub struct Preset {
    pub authorization_url: String,
    pub token_url: String,
}

/// `cloister_authority` is Cloister's own identity plane (`https://host:port`), for the
/// `cloister` preset; `params` may carry `tenantId` / `loginUri`.
pub fn preset(
    idp: &str,
    params: &Map<String, Value>,
    cloister_authority: &str,
    home_tenant: &str,
) -> Option<Preset> {
    let p = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    match idp.to_ascii_lowercase().as_str() {
        "github" => Some(Preset {
            authorization_url: "https://github.com/login/oauth/authorize".into(),
            token_url: "https://github.com/login/oauth/access_token".into(),
        }),
        "google" => Some(Preset {
            authorization_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
        }),
        "aad" | "entra" | "microsoftentra" => {
            let login = p("loginUri")
                .unwrap_or("https://login.microsoftonline.com")
                .trim_end_matches('/')
                .to_string();
            let tenant = p("tenantId").unwrap_or("common");
            Some(Preset {
                authorization_url: format!("{login}/{tenant}/oauth2/v2.0/authorize"),
                token_url: format!("{login}/{tenant}/oauth2/v2.0/token"),
            })
        }
        "cloister" => {
            let tenant = p("tenantId").unwrap_or(home_tenant);
            let base = cloister_authority.trim_end_matches('/');
            Some(Preset {
                authorization_url: format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                token_url: format!("{base}/{tenant}/oauth2/v2.0/token"),
            })
        }
        _ => None,
    }
}

const KNOWN_IDPS: &[&str] = &[
    "oauth2",
    "oauth2pkce",
    "aad",
    "entra",
    "microsoftentra",
    "cloister",
    "github",
    "google",
];

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn http_url(field: &str, u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .unwrap_or("");
    let ok = !rest.is_empty() && !rest.starts_with('/') && !u.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{field}' must be an absolute http(s) URL; got '{u}'."
        ))
    }
}

/// Parses a provider PUT body's `properties`. Returns the provider and its client secret
/// (None if the body did not carry one: an update keeps the stored secret).
pub fn parse_provider(
    props: &Value,
    cloister_authority: &str,
    home_tenant: &str,
) -> Result<(Provider, Option<String>), String> {
    let m = props
        .as_object()
        .ok_or("'properties' is required and must be an object.")?;
    let display_name = get_ci(m, "displayName")
        .and_then(|v| v.as_str())
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    if display_name.is_empty() || display_name.chars().count() > 300 {
        return Err("'properties.displayName' is required (1 to 300 characters).".into());
    }
    let idp = get_ci(m, "identityProvider")
        .and_then(|v| v.as_str())
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    if !KNOWN_IDPS.iter().any(|k| k.eq_ignore_ascii_case(&idp)) {
        return Err(format!(
            "'properties.identityProvider' must be one of {}; got '{idp}'.",
            KNOWN_IDPS.join(", ")
        ));
    }
    let oauth2 = get_ci(m, "oauth2")
        .and_then(|v| v.as_object())
        .ok_or("'properties.oauth2' is required.")?;
    let gt = get_ci(oauth2, "grantTypes")
        .and_then(|v| v.as_object())
        .ok_or("'properties.oauth2.grantTypes' is required.")?;
    let given: Vec<(Grant, &Map<String, Value>)> =
        [Grant::AuthorizationCode, Grant::ClientCredentials]
            .into_iter()
            .filter_map(|g| match get_ci(gt, g.key()) {
                Some(Value::Object(p)) => Some((g, p)),
                _ => None,
            })
            .collect();
    let (grant, params) = match given.as_slice() {
        [one] => *one,
        [] => return Err("'properties.oauth2.grantTypes' must hold 'authorizationCode' or 'clientCredentials'.".into()),
        _ => return Err("A credential provider has exactly one grant type: give 'authorizationCode' or 'clientCredentials', not both.".into()),
    };
    let mut extra = Map::new();
    let mut secret = None;
    let take = |k: &str| -> Option<String> {
        get_ci(params, k)
            .and_then(|v| v.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let client_id = take("clientId").unwrap_or_default();
    if let Some(s) = take("clientSecret") {
        secret = Some(s);
    }
    let scopes = take("scopes").unwrap_or_default();
    let mut authorization_url = take("authorizationUrl").unwrap_or_default();
    let mut token_url = take("tokenUrl").unwrap_or_default();
    let mut refresh_url = take("refreshUrl").unwrap_or_default();
    for (k, v) in params {
        let known = [
            "clientid",
            "clientsecret",
            "scopes",
            "authorizationurl",
            "tokenurl",
            "refreshurl",
        ];
        if !known.contains(&k.to_ascii_lowercase().as_str()) {
            match v {
                Value::String(_) | Value::Null => {
                    extra.insert(k.clone(), v.clone());
                }
                _ => return Err(format!("Grant parameter '{k}' must be a string.")),
            }
        }
    }
    if let Some(p) = preset(&idp, params, cloister_authority, home_tenant) {
        if authorization_url.is_empty() {
            authorization_url = p.authorization_url;
        }
        if token_url.is_empty() {
            token_url = p.token_url;
        }
    }
    if refresh_url.is_empty() {
        refresh_url = token_url.clone();
    }
    if client_id.is_empty() {
        return Err("The grant parameters need 'clientId'.".into());
    }
    if token_url.is_empty() {
        return Err(format!(
            "The grant parameters need 'tokenUrl' (identity provider '{idp}' has no preset)."
        ));
    }
    http_url("tokenUrl", &token_url)?;
    http_url("refreshUrl", &refresh_url)?;
    if grant == Grant::AuthorizationCode {
        if authorization_url.is_empty() {
            return Err("An authorizationCode provider needs 'authorizationUrl'.".into());
        }
        http_url("authorizationUrl", &authorization_url)?;
    }
    Ok((
        Provider {
            display_name,
            identity_provider: idp,
            grant,
            client_id,
            scopes,
            authorization_url,
            token_url,
            refresh_url,
            extra,
        },
        secret,
    ))
}

impl Provider {
    /// The stored (and returned) properties: never a secret.
    pub fn to_properties(&self, redirect_url: &str) -> Value {
        let mut params = self.extra.clone();
        params.insert("clientId".into(), json!(self.client_id));
        params.insert("scopes".into(), json!(self.scopes));
        params.insert("tokenUrl".into(), json!(self.token_url));
        params.insert("refreshUrl".into(), json!(self.refresh_url));
        if self.grant == Grant::AuthorizationCode {
            params.insert("authorizationUrl".into(), json!(self.authorization_url));
        }
        let mut gt = Map::new();
        gt.insert(self.grant.key().into(), Value::Object(params));
        json!({
            "displayName": self.display_name,
            "identityProvider": self.identity_provider,
            "oauth2": {"redirectUrl": redirect_url, "grantTypes": gt},
        })
    }

    pub fn from_properties(v: &Value) -> Option<Provider> {
        let m = v.as_object()?;
        let oauth2 = m.get("oauth2")?.as_object()?;
        let gt = oauth2.get("grantTypes")?.as_object()?;
        let (grant, params) = if let Some(p) = gt.get("authorizationCode") {
            (Grant::AuthorizationCode, p.as_object()?)
        } else {
            (
                Grant::ClientCredentials,
                gt.get("clientCredentials")?.as_object()?,
            )
        };
        let s = |k: &str| {
            params
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let mut extra = params.clone();
        for k in [
            "clientId",
            "scopes",
            "tokenUrl",
            "refreshUrl",
            "authorizationUrl",
        ] {
            extra.remove(k);
        }
        Some(Provider {
            display_name: m.get("displayName")?.as_str()?.to_string(),
            identity_provider: m.get("identityProvider")?.as_str()?.to_string(),
            grant,
            client_id: s("clientId"),
            scopes: s("scopes"),
            authorization_url: s("authorizationUrl"),
            token_url: s("tokenUrl"),
            refresh_url: s("refreshUrl"),
            extra,
        })
    }
}

/// A connection's settings (status lives beside them in the same properties).
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub grant: Grant,
    /// Non-secret parameters (for client credentials: `clientId`, optional `scopes`).
    pub parameters: Map<String, Value>,
}

/// Parses a connection PUT body's `properties` for a provider with `grant`. Returns the
/// connection and a connection-level client secret, if one was given.
pub fn parse_connection(
    props: &Value,
    grant: Grant,
) -> Result<(Connection, Option<String>), String> {
    let empty = Map::new();
    let m = props.as_object().unwrap_or(&empty);
    match get_ci(m, "authorizationType").and_then(|v| v.as_str()) {
        None => {}
        Some(t) if t.eq_ignore_ascii_case("oauth2") => {}
        Some(t) => return Err(format!("'authorizationType' must be 'OAuth2'; got '{t}'.")),
    }
    if let Some(g) = get_ci(m, "oauth2grantType").or_else(|| get_ci(m, "oAuth2GrantType")) {
        let g = g.as_str().unwrap_or("");
        if !g.eq_ignore_ascii_case(grant.wire()) {
            return Err(format!(
                "'oauth2grantType' is '{g}' but the provider's grant type is '{}'.",
                grant.wire()
            ));
        }
    }
    let mut parameters = Map::new();
    let mut secret = None;
    if let Some(p) = get_ci(m, "parameters") {
        let p = p.as_object().ok_or("'parameters' must be an object.")?;
        for (k, v) in p {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                _ => return Err(format!("Parameter '{k}' must be a string.")),
            };
            if k.eq_ignore_ascii_case("clientSecret") {
                if grant == Grant::AuthorizationCode {
                    return Err("An authorizationCode connection takes no clientSecret; the provider holds it.".into());
                }
                secret = Some(s);
            } else {
                parameters.insert(k.clone(), json!(s));
            }
        }
    }
    Ok((Connection { grant, parameters }, secret))
}

/// Connection status as stored and returned.
pub fn connection_properties(c: &Connection, status: &str, error: Option<(&str, &str)>) -> Value {
    let mut v = json!({
        "authorizationType": "OAuth2",
        "oauth2grantType": c.grant.wire(),
        "parameters": c.parameters,
        "status": status,
    });
    if let Some((code, message)) = error {
        v["error"] = json!({"code": code, "message": message});
    }
    v
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub tenant_id: String,
    pub object_id: String,
    pub app_ids: Vec<String>,
}

fn guidish(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

pub fn parse_policy(props: &Value) -> Result<Policy, String> {
    let m = props
        .as_object()
        .ok_or("'properties' is required and must be an object.")?;
    let g = |k: &str| {
        get_ci(m, k)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let tenant_id = g("tenantId");
    let object_id = g("objectId");
    if !guidish(&tenant_id) {
        return Err("'properties.tenantId' must be a GUID.".into());
    }
    if !guidish(&object_id) {
        return Err("'properties.objectId' must be a GUID.".into());
    }
    let mut app_ids = vec![];
    match get_ci(m, "appIds") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for x in a {
                let s = x.as_str().unwrap_or("");
                if !guidish(s) {
                    return Err(format!("'properties.appIds' must hold GUIDs; got {x}."));
                }
                app_ids.push(s.to_ascii_lowercase());
            }
        }
        Some(_) => return Err("'properties.appIds' must be an array.".into()),
    }
    Ok(Policy {
        tenant_id: tenant_id.to_ascii_lowercase(),
        object_id: object_id.to_ascii_lowercase(),
        app_ids,
    })
}

impl Policy {
    pub fn to_properties(&self) -> Value {
        let mut v = json!({"tenantId": self.tenant_id, "objectId": self.object_id});
        if !self.app_ids.is_empty() {
            v["appIds"] = json!(self.app_ids);
        }
        v
    }

    /// Whether a caller (`tid`, `oid`, `appid`) is allowed by this policy.
    pub fn allows(&self, tid: &str, oid: &str, appid: &str) -> bool {
        self.tenant_id.eq_ignore_ascii_case(tid)
            && self.object_id.eq_ignore_ascii_case(oid)
            && (self.app_ids.is_empty()
                || self.app_ids.iter().any(|a| a.eq_ignore_ascii_case(appid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider_body(gt: Value) -> Value {
        json!({"displayName": "P", "identityProvider": "oauth2", "oauth2": {"grantTypes": gt}})
    }

    #[test]
    fn providers() {
        let (p, secret) = parse_provider(
            &provider_body(json!({"authorizationCode": {"clientId": "a", "clientSecret": "s", "scopes": "x y", "authorizationUrl": "http://i/auth", "tokenUrl": "http://i/token"}})),
            "https://c",
            "t",
        )
        .unwrap();
        assert_eq!(secret.as_deref(), Some("s"));
        assert_eq!(p.refresh_url, "http://i/token");
        let props = p.to_properties("https://c/redirect");
        assert!(!props.to_string().contains("\"s\""), "no secret in {props}");
        assert_eq!(Provider::from_properties(&props).unwrap(), p);
        // Presets fill endpoints.
        let (g, _) = parse_provider(
            &json!({"displayName": "G", "identityProvider": "github", "oauth2": {"grantTypes": {"authorizationCode": {"clientId": "a", "clientSecret": "s"}}}}),
            "https://c",
            "t",
        )
        .unwrap();
        assert!(g.authorization_url.starts_with("https://github.com/"));
        let (c, _) = parse_provider(
            &json!({"displayName": "C", "identityProvider": "cloister", "oauth2": {"grantTypes": {"clientCredentials": {"clientId": "a", "clientSecret": "s"}}}}),
            "https://cl:1",
            "tid",
        )
        .unwrap();
        assert_eq!(c.token_url, "https://cl:1/tid/oauth2/v2.0/token");
    }

    #[test]
    fn provider_errors() {
        for (body, needle) in [
            (json!({}), "displayName"),
            (
                json!({"displayName": "x", "identityProvider": "myspace", "oauth2": {}}),
                "identityProvider",
            ),
            (provider_body(json!({})), "authorizationCode"),
            (
                provider_body(
                    json!({"authorizationCode": {"clientId": "a", "tokenUrl": "http://t", "authorizationUrl": "http://a"}, "clientCredentials": {"clientId": "a", "tokenUrl": "http://t"}}),
                ),
                "exactly one",
            ),
            (
                provider_body(json!({"clientCredentials": {"tokenUrl": "http://t"}})),
                "clientId",
            ),
            (
                provider_body(
                    json!({"clientCredentials": {"clientId": "a", "tokenUrl": "ftp://t"}}),
                ),
                "http(s)",
            ),
            (
                provider_body(
                    json!({"authorizationCode": {"clientId": "a", "tokenUrl": "http://t"}}),
                ),
                "authorizationUrl",
            ),
        ] {
            let e = parse_provider(&body, "https://c", "t").unwrap_err();
            assert!(e.contains(needle), "{e} / {needle}");
        }
    }

    #[test]
    fn connections_and_policies() {
        let (c, s) = parse_connection(
            &json!({"authorizationType": "oauth2", "oauth2grantType": "clientcredentials", "parameters": {"clientId": "x", "clientSecret": "y"}}),
            Grant::ClientCredentials,
        )
        .unwrap();
        assert_eq!(s.as_deref(), Some("y"));
        assert!(
            !connection_properties(&c, "Connected", None)
                .to_string()
                .contains("\"y\"")
        );
        assert!(
            parse_connection(
                &json!({"oauth2grantType": "ClientCredentials"}),
                Grant::AuthorizationCode
            )
            .is_err()
        );
        let p = parse_policy(&json!({"tenantId": "00000000-0000-0000-0000-000000000001", "objectId": "00000000-0000-0000-0000-00000000000A"})).unwrap();
        assert!(p.allows(
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-00000000000a",
            "whatever"
        ));
        assert!(parse_policy(&json!({"tenantId": "x", "objectId": "y"})).is_err());
    }
}
