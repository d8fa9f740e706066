//! Case-insensitive `*` wildcard matching of action strings.

/// True if `pattern` (where `*` matches any run of characters, `/` included) matches
/// `action`, ignoring ASCII case. A `/*/` segment may also match nothing, as in Azure, where
/// Managed Identity Operator's `…/userAssignedIdentities/*/assign/action` grants
/// `…/userAssignedIdentities/assign/action`.
pub fn wildcard_match(pattern: &str, action: &str) -> bool {
    glob(pattern, action) || (pattern.contains("/*/") && glob(&pattern.replace("/*/", "/"), action))
}

fn glob(pattern: &str, action: &str) -> bool {
    let p = pattern.as_bytes();
    let a = action.as_bytes();
    let (mut pi, mut ai) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ai));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&a[ai]) {
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

    #[test]
    fn examples() {
        assert!(wildcard_match("*", "Microsoft.App/sessionPools/write"));
        assert!(wildcard_match(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/read"
        ));
        assert!(!wildcard_match(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/write"
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
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
        ));
        assert!(!wildcard_match(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        ));
    }

    proptest! {
        #[test]
        fn literal_matches_itself(s in "[ -~]{0,60}") {
            let lit: String = s.chars().filter(|c| *c != '*').collect();
            prop_assert!(wildcard_match(&lit, &lit));
            prop_assert!(wildcard_match(&lit.to_uppercase(), &lit.to_lowercase()));
            prop_assert!(wildcard_match("*", &s));
        }
        #[test]
        fn never_panics(p in ".{0,40}", a in ".{0,60}") {
            let _ = wildcard_match(&p, &a);
        }
        #[test]
        fn prefix_star(pre in "[a-z./]{0,20}", rest in "[a-z./]{0,20}") {
            let pattern = format!("{pre}*");
            let action = format!("{pre}{rest}");
            prop_assert!(wildcard_match(&pattern, &action));
        }
    }
}
