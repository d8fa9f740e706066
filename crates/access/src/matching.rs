//! Case-insensitive `*` wildcard matching of action strings.
//!
//! `*` matches any run of characters, `/` included, anywhere in a pattern and any number of
//! times. One Azure quirk is kept: a whole `/*/` segment may also match nothing, so Managed
//! Identity Operator's `…/userAssignedIdentities/*/assign/action` grants
//! `…/userAssignedIdentities/assign/action`.

/// True if `pattern` matches `action`, ignoring ASCII case (see the module docs).
pub fn wildcard_match(pattern: &str, action: &str) -> bool {
    Pattern::new(pattern).matches_lower(&action.to_ascii_lowercase())
}

/// A pattern prepared for repeated matching: lowercased, with its `/*/`-may-be-empty
/// variants expanded.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    variants: Box<[Box<[u8]>]>,
}

/// At most this many `/*/` occurrences are expanded independently (2^n variants); beyond
/// it, only "all present" and "all empty" are tried.
const MAX_EXPANDED: usize = 4;

impl Pattern {
    pub(crate) fn new(pattern: &str) -> Pattern {
        let p = pattern.to_ascii_lowercase();
        let spots: Vec<usize> = p.match_indices("/*/").map(|(i, _)| i).collect();
        // Occurrences may overlap ("/*/*/"): keep the non-overlapping ones.
        let mut picked: Vec<usize> = Vec::new();
        for i in spots {
            if picked.last().is_none_or(|&last| i >= last + 3) {
                picked.push(i);
            }
        }
        let masks: Vec<u32> = if picked.is_empty() {
            vec![0]
        } else if picked.len() <= MAX_EXPANDED {
            (0..(1u32 << picked.len())).collect()
        } else {
            vec![0, u32::MAX]
        };
        let mut variants: Vec<Box<[u8]>> = Vec::with_capacity(masks.len());
        for mask in masks {
            let mut v = Vec::with_capacity(p.len());
            let mut from = 0;
            for (k, &at) in picked.iter().enumerate() {
                if mask & (1u32 << k.min(31)) != 0 {
                    v.extend_from_slice(&p.as_bytes()[from..at]);
                    v.push(b'/');
                    from = at + 3;
                }
            }
            v.extend_from_slice(&p.as_bytes()[from..]);
            variants.push(v.into_boxed_slice());
        }
        Pattern {
            variants: variants.into_boxed_slice(),
        }
    }

    /// Matches an action that is already ASCII-lowercased.
    pub(crate) fn matches_lower(&self, action: &str) -> bool {
        self.variants.iter().any(|v| glob(v, action.as_bytes()))
    }
}

/// Classic linear-time wildcard match with single-star backtracking.
fn glob(p: &[u8], a: &[u8]) -> bool {
    let (mut pi, mut ai) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ai));
            pi += 1;
        } else if pi < p.len() && p[pi] == a[ai] {
            pi += 1;
            ai += 1;
        } else if let Some((sp, sa)) = star {
            pi = sp + 1;
            ai = sa + 1;
            star = Some((sp, sa + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Obviously-correct reference: exponential recursion on short inputs, no `/*/` rule.
    fn reference(p: &[u8], a: &[u8]) -> bool {
        match p.first() {
            None => a.is_empty(),
            Some(b'*') => (0..=a.len()).any(|k| reference(&p[1..], &a[k..])),
            Some(c) => a.first() == Some(c) && reference(&p[1..], &a[1..]),
        }
    }

    #[test]
    fn examples() {
        assert!(wildcard_match("*", "Microsoft.App/sessionPools/write"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("", ""));
        assert!(!wildcard_match("", "x"));
        assert!(wildcard_match(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/read"
        ));
        assert!(!wildcard_match(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/write"
        ));
        assert!(!wildcard_match(
            "*/read",
            "Microsoft.Web/sites/readiness/action"
        ));
        assert!(wildcard_match(
            "Microsoft.Authorization/*/Write",
            "microsoft.authorization/roleAssignments/write"
        ));
        assert!(wildcard_match(
            "Microsoft.App/*",
            "Microsoft.App/sessionPools/interpreters/execute/action"
        ));
        assert!(!wildcard_match("Microsoft.App/*", "Microsoft.Apple/x"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match(
            "Microsoft.*/read",
            "microsoft.web/sites/read"
        ));
        assert!(wildcard_match(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
        ));
        assert!(wildcard_match(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/x/assign/action"
        ));
        assert!(!wildcard_match(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        ));
        // Independent expansion of several `/*/` segments.
        assert!(wildcard_match("a/*/b/*/c", "a/b/x/c"));
        assert!(wildcard_match("a/*/b/*/c", "a/x/b/c"));
        assert!(wildcard_match("a/*/b/*/c", "a/b/c"));
        assert!(!wildcard_match("a/*/b/*/c", "a/c"));
    }

    proptest! {
        #[test]
        fn literal_matches_itself(s in "[ -~]{0,60}") {
            let lit: String = s.chars().filter(|c| *c != '*').collect();
            prop_assert!(wildcard_match(&lit, &lit));
            prop_assert!(wildcard_match(&lit.to_uppercase(), &lit.to_lowercase()));
            prop_assert!(wildcard_match("*", &s));
            prop_assert!(wildcard_match("**", &s));
        }

        #[test]
        fn never_panics(p in ".{0,40}", a in ".{0,60}") {
            let _ = wildcard_match(&p, &a);
        }

        #[test]
        fn prefix_and_suffix_star(pre in "[a-z./]{0,20}", rest in "[a-z./]{0,20}") {
            let (star_end, star_start) = (format!("{}*", pre), format!("*{}", pre));
            prop_assert!(wildcard_match(&star_end, &(pre.clone() + &rest)));
            prop_assert!(wildcard_match(&star_start, &(rest.clone() + &pre)));
        }

        /// Patterns without `/*/` agree with the reference matcher.
        #[test]
        fn agrees_with_reference(p in "[ab/*]{0,8}", a in "[ab/]{0,10}") {
            prop_assume!(!p.contains("/*/"));
            prop_assert_eq!(wildcard_match(&p, &a), reference(p.as_bytes(), a.as_bytes()));
        }

        /// `/*/` only widens: whatever the plain glob matches still matches, and anything
        /// extra needs a `/*/` in the pattern.
        #[test]
        fn slash_star_slash_only_widens(p in "[ab/*]{0,8}", a in "[ab/]{0,10}") {
            let plain = reference(p.as_bytes(), a.as_bytes());
            let got = wildcard_match(&p, &a);
            prop_assert!(!plain || got);
            prop_assert!(!got || plain || p.contains("/*/"));
            if got && !plain {
                prop_assert!(reference(p.replace("/*/", "/").as_bytes(), a.as_bytes())
                    || Pattern::new(&p).variants.len() > 2);
            }
        }
    }
}
