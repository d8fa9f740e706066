//! Image references: `host[:port]/repo[:tag][@sha256:<64 hex>]`.
//!
//! A reference is outside input (a pool's `containers[].image`), so it is parsed strictly:
//! the registry host and the repository path follow the distribution spec's grammar, a tag is
//! at most 128 characters of `[A-Za-z0-9_.-]`, and the only digest algorithm is sha256. A name
//! without a registry host (`python:3`, `library/python`) means Docker Hub, as docker does.

use std::fmt;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry's `host[:port]` as the user wrote it (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path, e.g. `cloister/test`.
    pub repository: String,
    /// The tag, when given (`latest` is implied when neither tag nor digest is).
    pub tag: Option<String>,
    /// The pinned digest (`sha256:<hex>`), when given.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

const MAX_REFERENCE: usize = 512;

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: input.chars().take(80).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.len() > MAX_REFERENCE {
            return Err(err("longer than 512 characters"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or control characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                if !is_sha256_digest(d) {
                    return Err(err(
                        "the digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|s| i > s) => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag
            && !is_tag(t)
        {
            return Err(err(
                "the tag must be 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => {
                let path = if name.contains('/') {
                    name.to_string()
                } else {
                    format!("library/{name}")
                };
                ("docker.io".to_string(), path)
            }
        };
        if !is_host(&registry) {
            return Err(err("the registry host must be host[:port]"));
        }
        if !is_repository(&repository) {
            return Err(err(
                "the repository must be lowercase path components of letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API is spoken to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" || self.registry == "index.docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` followed by exactly 64 lowercase hex digits (the only form used as a file name).
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || !p.parse::<u32>().is_ok_and(|v| v != 0 && v <= 65535))
    {
        return false;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|comp| {
            // [a-z0-9]+ ( ( '.' | '_' | '__' | '-'+ ) [a-z0-9]+ )*
            let b = comp.as_bytes();
            if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
                return false;
            }
            let mut i = 0;
            while i < b.len() {
                if is_alnum_lower(b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && !is_alnum_lower(b[i]) {
                    i += 1;
                }
                let sep = &comp[start..i];
                let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
                if !ok {
                    return false;
                }
            }
            true
        })
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_usual_forms() {
        let r = Reference::parse("127.0.0.1:5000/cloister/test:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "cloister/test");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_ref(), "1");

        let r = Reference::parse(&format!("myregistry.azurecr.io/a/b/c@{D}")).unwrap();
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), D);

        let r = Reference::parse(&format!("localhost:5000/x:v1.2@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_deref(), Some(D));

        let r = Reference::parse("python:3.12").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.api_host()),
            ("docker.io", "library/python", "registry-1.docker.io")
        );
        let r = Reference::parse("example.com/x").unwrap();
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(r.to_string(), "example.com/x");
    }

    #[test]
    fn refuses_hostile_or_malformed_references() {
        for bad in [
            "",
            "127.0.0.1:5000/../etc:1",
            "127.0.0.1:5000/a/../../b",
            "127.0.0.1:5000/UPPER:1",
            "127.0.0.1:5000/a:ta g",
            "127.0.0.1:5000/a@sha256:abc",
            "127.0.0.1:5000/a@sha512:0123",
            "127.0.0.1:5000/a@sha256:../../../../etc/passwd0000000000000000000000000000000000000000000",
            "127.0.0.1:99999/a:1",
            "127.0.0.1:/a:1",
            "host_with_underscore.com/a",
            "127.0.0.1:5000/a:-tag",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/a//b",
            "127.0.0.1:5000/a/",
            "a\n:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Reference::parse(&"a".repeat(600)).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_ones_round_trip(s in "\\PC{0,80}") {
            if let Ok(r) = Reference::parse(&s) {
                let again = Reference::parse(&r.to_string()).unwrap();
                prop_assert_eq!(&again, &r);
                prop_assert!(!r.repository.contains(".."));
                if let Some(d) = &r.digest { prop_assert!(is_sha256_digest(d)); }
            }
        }

        #[test]
        fn well_formed_ones_parse(host in "[a-z][a-z0-9]{0,10}\\.[a-z]{2,5}", port in 1u16.., repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}") {
            let s = format!("{host}:{port}/{repo}:{tag}");
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.registry, format!("{host}:{port}"));
            prop_assert_eq!(r.repository, repo);
            prop_assert_eq!(r.tag, Some(tag));
        }
    }
}
