//! The `$filter` expressions ARM's resource and resource-group lists accept:
//! `resourceType eq '…'`, `name eq '…'`, `location eq '…'`, `substringof('…', name)`,
//! `startswith(name, '…')`, `tagName eq '…'` alone or with `and tagValue eq '…'`, joined with
//! `and`. Keywords are case-insensitive; strings are single-quoted with `''` for a quote.
//! Anything else is ARM's `400 InvalidFilterInQueryString`.

use cloister_core::error::ArmError;
use std::collections::BTreeMap;

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    ResourceType(String),
    Name(String),
    Location(String),
    NameContains(String),
    NameStartsWith(String),
    /// A tag by name (case-insensitive), with a value (case-sensitive) if one was given.
    Tag(String, Option<String>),
}

/// A parsed `$filter`: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub terms: Vec<Term>,
}

/// What a filter is evaluated against.
pub struct Subject<'a> {
    pub type_name: &'a str,
    pub name: &'a str,
    pub location: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

fn invalid(f: &str) -> ArmError {
    let f: String = f.chars().take(200).collect();
    ArmError::bad_request(
        "InvalidFilterInQueryString",
        format!("Invalid $filter '{f}' specified in the query string."),
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Option<Vec<Tok>> {
    let mut out = vec![];
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            ' ' | '\t' => {
                it.next();
            }
            '(' => {
                it.next();
                out.push(Tok::Open)
            }
            ')' => {
                it.next();
                out.push(Tok::Close)
            }
            ',' => {
                it.next();
                out.push(Tok::Comma)
            }
            '\'' => {
                it.next();
                let mut v = String::new();
                loop {
                    match it.next()? {
                        '\'' if it.peek() == Some(&'\'') => {
                            it.next();
                            v.push('\'');
                        }
                        '\'' => break,
                        ch => v.push(ch),
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_ascii_alphanumeric() || c == '/' || c == '_' => {
                let mut w = String::new();
                while let Some(&c) = it.peek() {
                    if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                        w.push(c);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(w.to_ascii_lowercase()));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Parses a `$filter` value.
pub fn parse(s: &str) -> Result<Filter, ArmError> {
    if s.len() > 2048 {
        return Err(invalid(s));
    }
    let toks = lex(s).ok_or_else(|| invalid(s))?;
    let mut terms = vec![];
    let mut i = 0;
    let word = |t: Option<&Tok>, w: &str| matches!(t, Some(Tok::Word(x)) if x == w);
    let mut pending_tag: Option<usize> = None;
    loop {
        let t = &toks[i..];
        match t {
            [Tok::Word(f), Tok::Word(eq), Tok::Str(v), ..] if eq == "eq" => {
                match f.as_str() {
                    "resourcetype" => terms.push(Term::ResourceType(v.clone())),
                    "name" => terms.push(Term::Name(v.clone())),
                    "location" => terms.push(Term::Location(v.clone())),
                    "tagname" => {
                        terms.push(Term::Tag(v.clone(), None));
                        pending_tag = Some(terms.len() - 1);
                    }
                    "tagvalue" => match pending_tag.take() {
                        Some(ix) => {
                            if let Term::Tag(_, val) = &mut terms[ix] {
                                *val = Some(v.clone());
                            }
                        }
                        None => return Err(invalid(s)),
                    },
                    _ => return Err(invalid(s)),
                }
                if f != "tagname" {
                    pending_tag = None;
                }
                i += 3;
            }
            [
                Tok::Word(f),
                Tok::Open,
                Tok::Str(v),
                Tok::Comma,
                Tok::Word(n),
                Tok::Close,
                ..,
            ] if f == "substringof" && n == "name" => {
                terms.push(Term::NameContains(v.clone()));
                pending_tag = None;
                i += 6;
            }
            [
                Tok::Word(f),
                Tok::Open,
                Tok::Word(n),
                Tok::Comma,
                Tok::Str(v),
                Tok::Close,
                ..,
            ] if f == "startswith" && n == "name" => {
                terms.push(Term::NameStartsWith(v.clone()));
                pending_tag = None;
                i += 6;
            }
            _ => return Err(invalid(s)),
        }
        if i == toks.len() {
            break;
        }
        if !word(toks.get(i), "and") || i + 1 == toks.len() {
            return Err(invalid(s));
        }
        i += 1;
    }
    Ok(Filter { terms })
}

impl Filter {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::ResourceType(v) => s.type_name.eq_ignore_ascii_case(v),
            Term::Name(v) => s.name.eq_ignore_ascii_case(v),
            Term::Location(v) => s.location.eq_ignore_ascii_case(v),
            Term::NameContains(v) => s
                .name
                .to_ascii_lowercase()
                .contains(&v.to_ascii_lowercase()),
            Term::NameStartsWith(v) => s
                .name
                .to_ascii_lowercase()
                .starts_with(&v.to_ascii_lowercase()),
            Term::Tag(k, v) => s
                .tags
                .iter()
                .any(|(tk, tv)| tk.eq_ignore_ascii_case(k) && v.as_ref().is_none_or(|v| v == tv)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let tags: BTreeMap<String, String> = [("Env".to_string(), "prod".to_string())].into();
        let s = Subject {
            type_name: "Microsoft.App/sessionPools",
            name: "Pool-1",
            location: "westus",
            tags: &tags,
        };
        for (f, want) in [
            ("resourceType eq 'microsoft.app/sessionpools'", true),
            ("resourceType eq 'Microsoft.App/other'", false),
            ("name eq 'pool-1'", true),
            ("substringof('OOL', name)", true),
            ("startswith(name, 'pool')", true),
            ("tagName eq 'env'", true),
            ("tagName eq 'env' and tagValue eq 'prod'", true),
            ("tagName eq 'env' and tagValue eq 'Prod'", false),
            (
                "tagname eq 'env' and tagvalue eq 'prod' and resourceType eq 'Microsoft.App/sessionPools'",
                true,
            ),
            ("location eq 'westus' and name eq 'x'", false),
            ("name eq 'it''s'", false),
        ] {
            assert_eq!(parse(f).unwrap().matches(&s), want, "{f}");
        }
        for bad in [
            "",
            "name",
            "name eq",
            "name ne 'x'",
            "tagValue eq 'x'",
            "name eq 'x' and",
            "name eq 'x' or name eq 'y'",
            "foo eq 'x'",
            "name eq 'unterminated",
            "name eq 'x' ; drop",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str()),
                (400, "InvalidFilterInQueryString"),
                "{bad}"
            );
        }
        assert_eq!(
            parse("name eq 'it''s'").unwrap().terms,
            vec![Term::Name("it's".into())]
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(f in ".{0,120}") { let _ = parse(&f); }
    }
}
