//! The interactive half of the authorization-code flow: a plain sign-in page, a consent
//! page, and the redirect back to the client with a one-time code.

use crate::Identity;
use crate::grants::CODE_PURPOSE;
use crate::resources::parse_scope;
use cloister_core::clock::now_secs;
use cloister_store::AuthCodeRow;
use std::collections::HashMap;

/// The outcome of an authorization request.
pub enum AuthorizeOutcome {
    /// Show this HTML page (status code, body).
    Page(u16, String),
    /// Redirect the browser here.
    Redirect(String),
    /// `response_mode=form_post`: an auto-submitting form.
    FormPost(String),
}

const PARAMS: [&str; 9] = [
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
];

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:sans-serif;max-width:28em;margin:4em auto}}input{{display:block;margin:.5em 0;width:100%}}</style>\
</head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    )
}

fn error_page(code: u32, msg: &str) -> AuthorizeOutcome {
    AuthorizeOutcome::Page(
        400,
        page(
            "Sign-in error",
            &format!("<p id=\"error\">AADSTS{code}: {}</p>", esc(msg)),
        ),
    )
}

fn hidden(p: &HashMap<String, String>) -> String {
    PARAMS
        .iter()
        .filter_map(|k| {
            p.get(*k)
                .map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
        })
        .collect()
}

/// Entra accepts any port on loopback redirect URIs.
fn redirect_allowed(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = url::Url::parse(requested) else {
        return false;
    };
    let loopback = matches!(
        req.host_str(),
        Some("localhost") | Some("127.0.0.1") | Some("[::1]")
    );
    loopback
        && req.scheme() == "http"
        && registered
            .iter()
            .filter_map(|r| url::Url::parse(r).ok())
            .any(|r| {
                r.scheme() == "http" && r.host_str() == req.host_str() && r.path() == req.path()
            })
}

fn with_params(base: &str, params: &[(&str, &str)], fragment: bool) -> String {
    let mut u = url::Url::parse(base).expect("validated redirect uri");
    if fragment {
        let f = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        u.set_fragment(Some(&f));
    } else {
        u.query_pairs_mut().extend_pairs(params);
    }
    u.to_string()
}

impl Identity {
    /// Handles `GET` (show sign-in) and `POST` (credentials, then consent) of
    /// `/{tenant}/oauth2/v2.0/authorize`.
    pub async fn authorize(
        &self,
        tenant_seg: &str,
        p: HashMap<String, String>,
        post: bool,
    ) -> AuthorizeOutcome {
        let tenant = match self.resolve_tenant(tenant_seg).await {
            Ok(t) => t,
            Err(e) => return error_page(e.code, &e.description),
        };
        let Some(client_id) = p.get("client_id") else {
            return error_page(
                900144,
                "The request must contain the parameter 'client_id'.",
            );
        };
        let app = match self.client_record(&tenant, client_id).await {
            Ok(Some(r)) => r.app.clone(),
            _ => {
                return error_page(
                    700016,
                    &format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                    ),
                );
            }
        };
        let Some(redirect_uri) = p.get("redirect_uri") else {
            return error_page(
                900144,
                "The request must contain the parameter 'redirect_uri'.",
            );
        };
        if !redirect_allowed(&app.redirect_uris, redirect_uri) {
            return error_page(
                50011,
                &format!(
                    "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'.",
                    app.app_id
                ),
            );
        }
        // From here on, errors go back to the client.
        let state = p.get("state").cloned().unwrap_or_default();
        let mode = p
            .get("response_mode")
            .map(String::as_str)
            .unwrap_or("query");
        let fail = |error: &str, desc: &str| {
            let mut v = vec![("error", error), ("error_description", desc)];
            if !state.is_empty() {
                v.push(("state", state.as_str()));
            }
            AuthorizeOutcome::Redirect(with_params(redirect_uri, &v, mode == "fragment"))
        };
        if p.get("response_type").map(String::as_str) != Some("code") {
            return fail(
                "unsupported_response_type",
                "AADSTS700054: response_type must be 'code'.",
            );
        }
        let scope = p.get("scope").cloned().unwrap_or_default();
        let sr = match parse_scope(&scope) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    "invalid_scope",
                    &format!("AADSTS{}: {}", e.code, e.description),
                );
            }
        };
        let resource = sr
            .resource
            .clone()
            .unwrap_or_else(|| "https://graph.microsoft.com".into());
        if let Err(e) = self.resolve_resource(&tenant, &resource).await {
            return fail(
                "invalid_resource",
                &format!("AADSTS{}: {}", e.code, e.description),
            );
        }
        let challenge = p.get("code_challenge").cloned().unwrap_or_default();
        let method = p
            .get("code_challenge_method")
            .cloned()
            .unwrap_or_else(|| "plain".into());
        if challenge.is_empty() && app.public_client {
            return fail(
                "invalid_request",
                "AADSTS9002325: Proof Key for Code Exchange is required for public clients.",
            );
        }
        if !challenge.is_empty() && method != "S256" && method != "plain" {
            return fail(
                "invalid_request",
                "AADSTS501471: code_challenge_method must be S256 or plain.",
            );
        }
        if challenge.len() > 128 {
            return fail(
                "invalid_request",
                "AADSTS501471: code_challenge is too long.",
            );
        }
        if !post {
            let hint = p.get("login_hint").map(|s| esc(s)).unwrap_or_default();
            return AuthorizeOutcome::Page(
                200,
                page(
                    "Sign in to Cloister",
                    &format!(
                        "<p>to continue to <b>{}</b></p><form method=\"post\">{}<input name=\"login\" placeholder=\"user@domain\" value=\"{hint}\" autocomplete=\"username\"><input name=\"passwd\" type=\"password\" placeholder=\"Password\" autocomplete=\"current-password\"><button type=\"submit\">Sign in</button></form>",
                        esc(&app.display_name),
                        hidden(&p)
                    ),
                ),
            );
        }
        // Who is signing in: credentials, or a ticket from the sign-in step.
        let user_id = if let Some(ticket) = p.get("ticket") {
            match self.check_ticket(ticket, client_id) {
                Some(u) => u,
                None => return error_page(50058, "The sign-in session has expired; start again."),
            }
        } else {
            let login = p.get("login").cloned().unwrap_or_default();
            let pw = p.get("passwd").cloned().unwrap_or_default();
            match self.verify_user(&tenant, &login, &pw).await {
                Ok(Some(u)) => u.id,
                Ok(None) => {
                    return AuthorizeOutcome::Page(
                        200,
                        page(
                            "Sign in to Cloister",
                            &format!(
                                "<p id=\"error\">AADSTS50126: Error validating credentials due to invalid username or password.</p><form method=\"post\">{}<input name=\"login\" value=\"{}\"><input name=\"passwd\" type=\"password\"><button type=\"submit\">Sign in</button></form>",
                                hidden(&p),
                                esc(&login)
                            ),
                        ),
                    );
                }
                Err(e) => return error_page(e.code, &e.description),
            }
        };
        let consent_key = crate::resources::consent_key(&resource);
        let consented = self
            .store
            .consent_exists(&user_id, &app.app_id, &consent_key)
            .await
            .unwrap_or(false);
        if !consented {
            match p.get("consent").map(String::as_str) {
                Some("accept") => {
                    if self
                        .store
                        .consent_put(&user_id, &app.app_id, &consent_key, now_secs())
                        .await
                        .is_err()
                    {
                        return error_page(90033, "Consent could not be recorded.");
                    }
                }
                Some(_) => {
                    return fail(
                        "access_denied",
                        "AADSTS65004: User declined to consent to access the app.",
                    );
                }
                None => {
                    let ticket = self.make_ticket(&user_id, client_id);
                    return AuthorizeOutcome::Page(
                        200,
                        page(
                            "Permissions requested",
                            &format!(
                                "<p><b>{}</b> wants to access <b>{}</b> on your behalf ({}).</p><form method=\"post\">{}<input type=\"hidden\" name=\"ticket\" value=\"{}\"><button name=\"consent\" value=\"accept\">Accept</button><button name=\"consent\" value=\"deny\">Cancel</button></form>",
                                esc(&app.display_name),
                                esc(&resource),
                                esc(&sr.scopes.join(", ")),
                                hidden(&p),
                                esc(&ticket)
                            ),
                        ),
                    );
                }
            }
        }
        let code = cloister_crypto::random_token(32);
        let row = AuthCodeRow {
            code_hash: self.mk.keyed_hash(CODE_PURPOSE, code.as_bytes()),
            tenant_id: tenant.clone(),
            client_id: app.app_id.clone(),
            user_id,
            redirect_uri: redirect_uri.clone(),
            scope: crate::grants::join_scope(&sr),
            code_challenge: if challenge.is_empty() {
                String::new()
            } else {
                format!("{method}:{challenge}")
            },
            nonce: p.get("nonce").cloned().unwrap_or_default(),
            expires_at: now_secs() + 300,
        };
        if self.store.auth_code_insert(&row).await.is_err() {
            return error_page(90033, "The authorization code could not be stored.");
        }
        let mut v = vec![("code", code.as_str())];
        if !state.is_empty() {
            v.push(("state", state.as_str()));
        }
        match mode {
            "form_post" => AuthorizeOutcome::FormPost(format!(
                "<!doctype html><html><body onload=\"document.forms[0].submit()\"><form method=\"post\" action=\"{}\">{}</form></body></html>",
                esc(redirect_uri),
                v.iter()
                    .map(|(k, val)| format!(
                        "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                        esc(val)
                    ))
                    .collect::<String>()
            )),
            m => AuthorizeOutcome::Redirect(with_params(redirect_uri, &v, m == "fragment")),
        }
    }

    /// A short-lived, MAC-protected proof that `user_id` signed in for `client_id`.
    fn make_ticket(&self, user_id: &str, client_id: &str) -> String {
        let exp = now_secs() + 600;
        let body = format!("{user_id}.{exp}");
        let mac = self.mk.keyed_hash(
            "login-ticket",
            format!("{body}.{}", client_id.to_lowercase()).as_bytes(),
        );
        format!("{body}.{mac}")
    }

    fn check_ticket(&self, ticket: &str, client_id: &str) -> Option<String> {
        let mut parts = ticket.splitn(3, '.');
        let (user, exp, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let body = format!("{user}.{exp}");
        if !self.mk.verify_keyed_hash(
            "login-ticket",
            format!("{body}.{}", client_id.to_lowercase()).as_bytes(),
            mac,
        ) {
            return None;
        }
        (exp.parse::<i64>().ok()? >= now_secs()).then(|| user.to_string())
    }
}
