//! List paging: `$top` and `$skipToken`, with `nextLink` as ARM writes it (the same URL and
//! query, with the token of the next page).
//!
//! Pages are cut by key, not by offset: a `$skipToken` carries the sort key of the last item
//! returned, so an item created or deleted between two page requests never makes another one
//! appear twice or go missing. Items are sorted by their lowercase id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloister_core::error::ArmError;
use std::collections::BTreeMap;

/// The most items one page holds (also `$top`'s upper bound).
pub const MAX_PAGE: usize = 1000;

/// A list request's paging parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub top: Option<usize>,
    /// Lowercase id of the last item of the previous page.
    pub after: Option<String>,
}

fn bad(name: &str, msg: &str) -> ArmError {
    ArmError::bad_request(
        "InvalidQueryParameterValue",
        format!("The value of '{name}' {msg}"),
    )
}

/// Reads `$top` and `$skipToken` from the query (keys case-insensitive, as ARM).
pub fn parse(query: &BTreeMap<String, String>) -> Result<PageRequest, ArmError> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let top = match get("$top") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
            _ => {
                return Err(bad(
                    "$top",
                    &format!("must be an integer from 1 to {MAX_PAGE}."),
                ));
            }
        },
    };
    let after = match get("$skipToken") {
        None => None,
        Some(t) => {
            let raw = URL_SAFE_NO_PAD
                .decode(t.trim_end_matches('='))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("k1:").map(str::to_string))
                .ok_or_else(|| bad("$skipToken", "is not a token this server issued."))?;
            Some(raw)
        }
    };
    Ok(PageRequest { top, after })
}

/// The `$skipToken` for a page that ended at `last_key`.
pub fn token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("k1:{last_key}"))
}

/// Cuts one page out of `items` (any order; `key` gives each item's sort key). Returns the
/// page and, when more remain, the `$skipToken` of the next page.
pub fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    req: &PageRequest,
) -> (Vec<T>, Option<String>) {
    items.sort_by_cached_key(|x| key(x));
    if let Some(after) = &req.after {
        items.retain(|x| key(x).as_str() > after.as_str());
    }
    let n = req.top.unwrap_or(MAX_PAGE);
    if items.len() <= n {
        return (items, None);
    }
    items.truncate(n);
    let next = items.last().map(|x| token(&key(x)));
    (items, next)
}

/// `nextLink`: `base` (scheme, host and path) with the request's query, its `$skipToken`
/// replaced by `token`.
pub fn next_link(base: &str, query: &BTreeMap<String, String>, token: &str) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("$skipToken"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    q.push(("$skipToken".into(), token.into()));
    let enc = |s: &str| {
        let mut o = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~$".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    let qs: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("{base}?{}", qs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn pages_follow_keys() {
        let items: Vec<String> = (0..25).map(|i| format!("/r/{i:02}")).collect();
        let mut req = parse(&q(&[("$top", "10")])).unwrap();
        let mut seen = vec![];
        loop {
            let (p, next) = page(items.clone(), |s| s.clone(), &req);
            seen.extend(p);
            match next {
                Some(t) => req = parse(&q(&[("$top", "10"), ("$skiptoken", &t)])).unwrap(),
                None => break,
            }
        }
        assert_eq!(seen, items);
        assert_eq!(parse(&q(&[("$top", "0")])).unwrap_err().status, 400);
        assert_eq!(parse(&q(&[("$top", "1001")])).unwrap_err().status, 400);
        assert_eq!(
            parse(&q(&[("$skipToken", "garbage!")])).unwrap_err().status,
            400
        );
        let link = next_link(
            "https://h/x",
            &q(&[("api-version", "2025-01-01"), ("$filter", "name eq 'a b'")]),
            "abc",
        );
        assert_eq!(
            link,
            "https://h/x?$filter=name%20eq%20%27a%20b%27&api-version=2025-01-01&$skipToken=abc"
        );
    }

    proptest::proptest! {
        /// Paging through any set with any page size yields every item exactly once, even when
        /// items are deleted between pages.
        #[test]
        fn every_item_once(keys in proptest::collection::btree_set("[a-z0-9/]{1,8}", 0..60), top in 1usize..20, del in proptest::collection::vec(0usize..60, 0..10)) {
            let mut items: Vec<String> = keys.iter().cloned().collect();
            let mut req = PageRequest { top: Some(top), after: None };
            let mut seen: Vec<String> = vec![];
            for round in 0.. {
                let (p, next) = page(items.clone(), |s| s.clone(), &req);
                seen.extend(p);
                if let Some(&d) = del.get(round) && d < items.len() { items.remove(d); }
                match next { Some(t) => req = parse(&q(&[("$top", &top.to_string()), ("$skipToken", &t)])).unwrap(), None => break }
            }
            let mut sorted = seen.clone(); sorted.sort(); sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), seen.len());
            for k in &items { proptest::prop_assert!(seen.contains(k)); }
        }
    }
}
