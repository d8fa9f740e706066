//! Session identifiers and the raw query string they arrive in.
//!
//! Clients differ: LangChain URL-quotes the identifier, Semantic Kernel and AutoGen send it
//! raw. So the query is split by hand and each value is percent-decoded leniently (a `%` not
//! followed by two hex digits stays as it is, and `+` stays a plus rather than a space).

use percent_encoding::percent_decode_str;

pub const MIN_LEN: usize = 4;
pub const MAX_LEN: usize = 128;

/// Characters allowed besides ASCII letters and digits (the swagger's `SessionIdentifier`
/// pattern, a superset of the list in Azure's docs).
const EXTRA: &str = "_|}{[]:\"';'<>?/.,@#$%^&*()-+=!~`";

/// Checks an identifier; the error is the message for `SessionRequestValidationFailed`.
pub fn validate(id: &str) -> Result<(), String> {
    let n = id.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(format!(
            "The identifier must be between {MIN_LEN} and {MAX_LEN} characters long; it has {n}."
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || EXTRA.contains(*c)))
    {
        return Err(format!(
            "The identifier contains the character {c:?}, which is not allowed. Use letters, digits and {EXTRA}"
        ));
    }
    Ok(())
}

/// Query parameters, keys matched without regard to case.
#[derive(Debug, Default, Clone)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut out = vec![];
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.push((decode(k), decode(v)));
        }
        Query(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rules() {
        assert!(validate("abcd").is_ok());
        assert!(validate("3fa85f64-5717-4562-b3fc-2c963f66afa6").is_ok());
        assert!(validate("a|b-c&d^e%f$g#h(i)j{k}l[m]n;o<p>").is_ok());
        assert!(validate("abc").is_err());
        assert!(validate(&"a".repeat(129)).is_err());
        assert!(validate(&"a".repeat(128)).is_ok());
        assert!(validate("has space").is_err());
        assert!(validate("new\nline").is_err());
        assert!(validate("ünïcode").is_err());
    }

    #[test]
    fn raw_and_encoded_queries() {
        let q = Query::parse(Some("api-version=2024-02-02-preview&identifier=user%201"));
        assert_eq!(q.get("identifier"), Some("user 1"));
        let q = Query::parse(Some("identifier=a+b%zz&API-VERSION=x"));
        assert_eq!(q.get("identifier"), Some("a+b%zz"));
        assert_eq!(q.get("api-version"), Some("x"));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = validate(&s);
            let _ = Query::parse(Some(&s));
        }

        #[test]
        fn allowed_alphabet_accepted(s in "[a-zA-Z0-9_|{}\\[\\]:;'<>?/.,@#$%^&*()+=!~-]{4,128}") {
            prop_assert!(validate(&s).is_ok());
        }

        #[test]
        fn encoding_roundtrips(s in "[a-zA-Z0-9_|{}\\[\\]:;'<>?/.,@#$%^&*()+=!~-]{4,64}") {
            let enc = percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string();
            let q = Query::parse(Some(&format!("identifier={enc}")));
            prop_assert_eq!(q.get("identifier"), Some(s.as_str()));
        }
    }
}
