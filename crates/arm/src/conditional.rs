//! ETags and the conditional headers `If-Match` and `If-None-Match` (RFC 9110 §13), as ARM
//! applies them to PUT, PATCH and DELETE: `If-Match: *` needs the resource to exist,
//! `If-Match: "e"` needs its current ETag to be `"e"`, `If-None-Match: *` needs it not to
//! exist (create only). A failed condition is `412 PreconditionFailed`.

use cloister_core::error::ArmError;

/// A fresh ETag value (quoted, as it travels in headers and in the `etag` field).
pub fn new_etag() -> String {
    format!("\"{}\"", cloister_core::new_guid())
}

/// The entity tags of a conditional header: `*`, or a list of (possibly weak) quoted tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Any,
    Tags(Vec<String>),
}

/// Parses an `If-Match` / `If-None-Match` value. Tags are compared without their `W/`
/// prefix (weak comparison); an unquoted tag is taken as written, as some clients send one.
pub fn parse_condition(v: &str) -> Result<Condition, ArmError> {
    let v = v.trim();
    if v == "*" {
        return Ok(Condition::Any);
    }
    let mut tags = vec![];
    for part in v.split(',') {
        let t = part.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        let inner = t
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(t);
        if inner.is_empty() || inner.contains('"') || inner.len() > 256 {
            return Err(ArmError::bad_request(
                "InvalidConditionalHeader",
                "The value of a conditional header (If-Match, If-None-Match) is not a list of entity tags.",
            ));
        }
        tags.push(inner.to_string());
    }
    Ok(Condition::Tags(tags))
}

fn unquote(etag: &str) -> &str {
    let t = etag.strip_prefix("W/").unwrap_or(etag);
    t.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(t)
}

fn failed(header: &str, value: &str) -> ArmError {
    let v: String = value.chars().take(100).collect();
    ArmError::new(
        412,
        "PreconditionFailed",
        format!(
            "The condition specified using HTTP conditional header(s) is not met: {header} = '{v}'."
        ),
    )
}

/// Checks the conditional headers of a write against the current ETag (`None` when the
/// resource does not exist).
pub fn check(
    if_match: Option<&str>,
    if_none_match: Option<&str>,
    current: Option<&str>,
) -> Result<(), ArmError> {
    if let Some(h) = if_match {
        let ok = match (parse_condition(h)?, current) {
            (_, None) => false,
            (Condition::Any, Some(_)) => true,
            (Condition::Tags(t), Some(c)) => t.iter().any(|x| x == unquote(c)),
        };
        if !ok {
            return Err(failed("If-Match", h));
        }
    }
    if let Some(h) = if_none_match {
        let ok = match (parse_condition(h)?, current) {
            (_, None) => true,
            (Condition::Any, Some(_)) => false,
            (Condition::Tags(t), Some(c)) => !t.iter().any(|x| x == unquote(c)),
        };
        if !ok {
            return Err(failed("If-None-Match", h));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let e = new_etag();
        assert!(e.starts_with('"') && e.ends_with('"'));
        assert!(check(None, None, None).is_ok());
        assert!(check(Some("*"), None, Some(&e)).is_ok());
        assert_eq!(check(Some("*"), None, None).unwrap_err().status, 412);
        assert!(check(Some(&e), None, Some(&e)).is_ok());
        assert!(check(Some(&format!("W/{e}")), None, Some(&e)).is_ok());
        assert!(check(Some(&format!("\"x\", {e}")), None, Some(&e)).is_ok());
        assert_eq!(
            check(Some("\"other\""), None, Some(&e)).unwrap_err().code,
            "PreconditionFailed"
        );
        assert!(check(None, Some("*"), None).is_ok());
        assert_eq!(check(None, Some("*"), Some(&e)).unwrap_err().status, 412);
        assert_eq!(check(None, Some(&e), Some(&e)).unwrap_err().status, 412);
        assert!(check(None, Some("\"old\""), Some(&e)).is_ok());
        assert_eq!(check(Some("\"\""), None, Some(&e)).unwrap_err().status, 400);
        assert_eq!(check(Some("a\"b"), None, Some(&e)).unwrap_err().status, 400);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(h in ".{0,80}", cur in proptest::option::of("[a-z0-9\"-]{0,20}")) {
            let _ = check(Some(&h), Some(&h), cur.as_deref());
        }
    }
}
