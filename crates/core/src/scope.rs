//! Azure Resource Manager scopes and resource ids: `/`, management groups, subscriptions,
//! resource groups and resources (with child resources). Parsing is strict, never panics,
//! and compares case-insensitively through [`Scope::canonical`].

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Root,
    ManagementGroup,
    Subscription,
    ResourceGroup,
    Resource,
}

/// A parsed scope. `Display` gives ARM's canonical keyword casing with the caller's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    mg: Option<String>,
    sub: Option<String>,
    rg: Option<String>,
    namespace: Option<String>,
    /// (type, name) pairs below the namespace.
    path: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope '{scope}': {reason}")]
pub struct ScopeError {
    pub scope: String,
    pub reason: String,
}

fn err(s: &str, reason: impl Into<String>) -> ScopeError {
    ScopeError {
        scope: s.chars().take(200).collect(),
        reason: reason.into(),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 260
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.()~@".contains(c))
}

fn valid_rg(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 90
        && !n.ends_with('.')
        && n.chars()
            .all(|c| c.is_alphanumeric() || "-_.()".contains(c))
}

fn valid_namespace(n: &str) -> bool {
    n.contains('.')
        && !n.starts_with('.')
        && !n.ends_with('.')
        && n.len() <= 100
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

fn valid_type(n: &str) -> bool {
    !n.is_empty() && n.len() <= 100 && n.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Scope {
    pub fn root() -> Scope {
        Scope {
            mg: None,
            sub: None,
            rg: None,
            namespace: None,
            path: vec![],
        }
    }

    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if !s.starts_with('/') {
            return Err(err(s, "a scope starts with '/'"));
        }
        if s.len() > 4096 {
            return Err(err(s, "too long"));
        }
        let body = if s == "/" {
            ""
        } else {
            s.strip_suffix('/').unwrap_or(s)
        };
        if body.is_empty() {
            return Ok(Scope::root());
        }
        let segs: Vec<&str> = body[1..].split('/').collect();
        if segs.iter().any(|x| x.is_empty()) {
            return Err(err(s, "empty path segment"));
        }
        let mut sc = Scope::root();
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let rest: &[&str];
        if eq(segs[0], "providers") {
            if segs.len() == 4
                && eq(segs[1], "Microsoft.Management")
                && eq(segs[2], "managementGroups")
            {
                if !valid_name(segs[3]) || segs[3].len() > 90 {
                    return Err(err(s, "invalid management group name"));
                }
                sc.mg = Some(segs[3].to_string());
                return Ok(sc);
            }
            return Err(err(s, "only management groups are scopes under /providers"));
        } else if eq(segs[0], "subscriptions") {
            let Some(sub) = segs.get(1) else {
                return Err(err(s, "missing subscription id"));
            };
            if sub.len() > 64 || !sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err(s, "invalid subscription id"));
            }
            sc.sub = Some(sub.to_string());
            if segs.len() == 2 {
                return Ok(sc);
            }
            if eq(segs[2], "resourceGroups") {
                let Some(rg) = segs.get(3) else {
                    return Err(err(s, "missing resource group name"));
                };
                if !valid_rg(rg) {
                    return Err(err(
                        s,
                        "invalid resource group name: use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
                    ));
                }
                sc.rg = Some(rg.to_string());
                rest = &segs[4..];
            } else {
                rest = &segs[2..];
            }
        } else {
            return Err(err(
                s,
                "a scope starts with /subscriptions or /providers/Microsoft.Management/managementGroups",
            ));
        }
        if rest.is_empty() {
            return Ok(sc);
        }
        if !eq(rest[0], "providers") {
            return Err(err(
                s,
                format!(
                    "unexpected segment '{}'",
                    rest[0].chars().take(60).collect::<String>()
                ),
            ));
        }
        let Some(ns) = rest.get(1) else {
            return Err(err(s, "missing resource provider namespace"));
        };
        if !valid_namespace(ns) {
            return Err(err(s, "invalid resource provider namespace"));
        }
        let pairs = &rest[2..];
        if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
            return Err(err(
                s,
                "a resource id needs type/name pairs after the namespace",
            ));
        }
        sc.namespace = Some(ns.to_string());
        for p in pairs.chunks(2) {
            if !valid_type(p[0]) {
                return Err(err(
                    s,
                    format!(
                        "invalid resource type '{}'",
                        p[0].chars().take(60).collect::<String>()
                    ),
                ));
            }
            if eq(p[0], "providers") {
                return Err(err(s, "extension resources are not supported as scopes"));
            }
            if !valid_name(p[1]) {
                return Err(err(
                    s,
                    format!(
                        "invalid resource name '{}'",
                        p[1].chars().take(60).collect::<String>()
                    ),
                ));
            }
            sc.path.push((p[0].to_string(), p[1].to_string()));
        }
        Ok(sc)
    }

    pub fn kind(&self) -> ScopeKind {
        if !self.path.is_empty() {
            ScopeKind::Resource
        } else if self.rg.is_some() {
            ScopeKind::ResourceGroup
        } else if self.sub.is_some() {
            ScopeKind::Subscription
        } else if self.mg.is_some() {
            ScopeKind::ManagementGroup
        } else {
            ScopeKind::Root
        }
    }

    /// The lowercase form used for comparisons and map keys.
    pub fn canonical(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }

    pub fn management_group(&self) -> Option<&str> {
        self.mg.as_deref()
    }
    pub fn subscription_id(&self) -> Option<&str> {
        self.sub.as_deref()
    }
    pub fn resource_group(&self) -> Option<&str> {
        self.rg.as_deref()
    }
    pub fn provider_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// `Namespace/type[/childType…]`, for resources.
    pub fn resource_type(&self) -> Option<String> {
        let ns = self.namespace.as_ref()?;
        let mut t = ns.clone();
        for (ty, _) in &self.path {
            t.push('/');
            t.push_str(ty);
        }
        Some(t)
    }

    /// The last name: resource, resource group, subscription id or management group.
    pub fn name(&self) -> Option<&str> {
        if let Some((_, n)) = self.path.last() {
            return Some(n);
        }
        self.rg
            .as_deref()
            .or(self.sub.as_deref())
            .or(self.mg.as_deref())
    }

    /// The lexical parent (subscriptions and management groups have `/` as parent; the
    /// management-group hierarchy is data, kept by the access evaluator).
    pub fn parent(&self) -> Option<Scope> {
        let mut p = self.clone();
        match self.kind() {
            ScopeKind::Root => return None,
            ScopeKind::ManagementGroup | ScopeKind::Subscription => return Some(Scope::root()),
            ScopeKind::ResourceGroup => p.rg = None,
            ScopeKind::Resource => {
                p.path.pop();
                if p.path.is_empty() {
                    p.namespace = None;
                }
            }
        }
        Some(p)
    }

    /// Self, then each lexical parent up to `/`.
    pub fn ancestors(&self) -> impl Iterator<Item = Scope> {
        std::iter::successors(Some(self.clone()), |s| s.parent())
    }

    /// True if `other` is strictly below `self` (lexically).
    pub fn is_ancestor_of(&self, other: &Scope) -> bool {
        if self.kind() == ScopeKind::Root {
            return other.kind() != ScopeKind::Root;
        }
        let (a, b) = (self.canonical(), other.canonical());
        b.len() > a.len() && b.starts_with(&a) && b.as_bytes()[a.len()] == b'/'
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(mg) = &self.mg {
            return write!(f, "/providers/Microsoft.Management/managementGroups/{mg}");
        }
        let Some(sub) = &self.sub else {
            return f.write_str("/");
        };
        write!(f, "/subscriptions/{sub}")?;
        if let Some(rg) = &self.rg {
            write!(f, "/resourceGroups/{rg}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, "/providers/{ns}")?;
            for (t, n) in &self.path {
                write!(f, "/{t}/{n}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_and_parents() {
        let r = Scope::parse("/subscriptions/s1/resourcegroups/RG/providers/Microsoft.App/sessionPools/p1/sessions/x").unwrap();
        assert_eq!(r.kind(), ScopeKind::Resource);
        assert_eq!(
            r.resource_type().unwrap(),
            "Microsoft.App/sessionPools/sessions"
        );
        assert_eq!(
            r.to_string(),
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.App/sessionPools/p1/sessions/x"
        );
        let chain: Vec<String> = r.ancestors().map(|s| s.to_string()).collect();
        assert_eq!(
            chain,
            vec![
                "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.App/sessionPools/p1/sessions/x",
                "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.App/sessionPools/p1",
                "/subscriptions/s1/resourceGroups/RG",
                "/subscriptions/s1",
                "/",
            ]
        );
        let mg = Scope::parse("/providers/microsoft.management/managementgroups/Team").unwrap();
        assert_eq!(mg.kind(), ScopeKind::ManagementGroup);
        assert_eq!(mg.management_group(), Some("Team"));
        assert_eq!(Scope::parse("/").unwrap().kind(), ScopeKind::Root);
        let sub_res = Scope::parse("/subscriptions/s1/providers/Microsoft.Web/sites/a").unwrap();
        assert_eq!(sub_res.parent().unwrap().kind(), ScopeKind::Subscription);
    }

    #[test]
    fn ancestry_is_case_insensitive_and_segment_aligned() {
        let rg = Scope::parse("/subscriptions/S1/resourceGroups/rg").unwrap();
        let res = Scope::parse("/subscriptions/s1/RESOURCEGROUPS/RG/providers/A.B/c/d").unwrap();
        let other = Scope::parse("/subscriptions/s1/resourceGroups/rg2").unwrap();
        assert!(rg.is_ancestor_of(&res));
        assert!(!rg.is_ancestor_of(&other));
        assert!(!rg.is_ancestor_of(&rg));
        assert!(Scope::root().is_ancestor_of(&rg));
    }

    #[test]
    fn rejects_bad_scopes() {
        for bad in [
            "",
            "subscriptions/x",
            "/subscriptions",
            "/subscriptions/",
            "//",
            "/subscriptions/a b",
            "/subscriptions/s/resourceGroups",
            "/subscriptions/s/resourceGroups/bad.",
            "/subscriptions/s/resourceGroups/r/providers",
            "/subscriptions/s/resourceGroups/r/providers/NoDot/t/n",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t",
            "/subscriptions/s/resourceGroups/r/foo",
            "/providers/Microsoft.Web/sites/x",
            "/subscriptions/s//resourceGroups/r",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n%20x",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_().-]{0,20}[A-Za-z0-9]"
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Scope::parse(&s);
        }
        #[test]
        fn roundtrip(sub in "[a-f0-9-]{1,36}", rg in name(), ns in "[A-Z][a-z]{1,8}\\.[A-Z][a-z]{1,8}", t in "[a-zA-Z]{1,10}", n in name()) {
            let s = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{t}/{n}");
            let p = Scope::parse(&s).unwrap();
            prop_assert_eq!(p.to_string(), s.clone());
            prop_assert_eq!(Scope::parse(&s.to_lowercase()).unwrap().canonical(), p.canonical());
            prop_assert_eq!(p.ancestors().count(), 4);
        }
    }
}
