//! Azure Resource Manager scopes and resource ids.
//!
//! A [`Scope`] is one of
//!
//! * `/` (the root),
//! * `/providers/Microsoft.Management/managementGroups/{groupId}`,
//! * `/subscriptions/{subscriptionId}`,
//! * `/subscriptions/{subscriptionId}/resourceGroups/{resourceGroup}`,
//! * a resource: `/subscriptions/{s}[/resourceGroups/{rg}]/providers/{Namespace}/{type}/{name}`
//!   followed by any number of `/{childType}/{childName}` pairs.
//!
//! Parsing is strict and never panics: it is fed straight from request URLs and bodies.
//! Keywords (`subscriptions`, `resourceGroups`, `providers`, …) are matched ignoring case.
//! A scope keeps the caller's casing of names for display ([`fmt::Display`] writes ARM's
//! canonical keyword casing with the caller's names), while [`Scope::canonical`] is the
//! lowercase key used for comparisons and map keys; `==` and `Hash` use it, so two spellings
//! of the same scope are equal.
//!
//! ```
//! use cloister_core::scope::{Scope, ScopeKind};
//! let s = Scope::parse("/subscriptions/S1/resourcegroups/Web/providers/Microsoft.App/sessionPools/p1/").unwrap();
//! assert_eq!(s.kind(), ScopeKind::Resource);
//! assert_eq!(s.to_string(), "/subscriptions/S1/resourceGroups/Web/providers/Microsoft.App/sessionPools/p1");
//! assert_eq!(s.canonical(), "/subscriptions/s1/resourcegroups/web/providers/microsoft.app/sessionpools/p1");
//! assert_eq!(s.resource_type().as_deref(), Some("Microsoft.App/sessionPools"));
//! let rg = s.parent().unwrap();
//! assert_eq!(rg.resource_group(), Some("Web"));
//! assert!(rg.is_ancestor_of(&s));
//! assert_eq!(
//!     Scope::parse("/subscriptions/").unwrap_err().to_string(),
//!     "invalid scope '/subscriptions/': missing subscription id"
//! );
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};

/// What a [`Scope`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    Root,
    ManagementGroup,
    Subscription,
    ResourceGroup,
    Resource,
}

/// A parsed ARM scope (see the module documentation).
#[derive(Clone)]
pub struct Scope {
    mg: Option<String>,
    sub: Option<String>,
    rg: Option<String>,
    namespace: Option<String>,
    /// (type, name) pairs below the namespace; empty unless this is a resource.
    path: Vec<(String, String)>,
    /// Lowercase key, see [`Scope::canonical`].
    canon: String,
    /// Byte length of the canonical key of self and of each lexical ancestor, self first,
    /// ending with 1 (`/`). Every ancestor's key is a prefix of ours.
    ends: Vec<usize>,
}

/// Why a string is not a valid scope. The message names the scope and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope '{scope}': {reason}")]
pub struct ScopeError {
    /// The offending input (truncated to 200 characters, control characters escaped).
    pub scope: String,
    pub reason: String,
}

/// The longest scope string accepted.
pub const MAX_SCOPE_LEN: usize = 4096;

fn shown(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(200) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

fn err(s: &str, reason: impl Into<String>) -> ScopeError {
    ScopeError {
        scope: shown(s),
        reason: reason.into(),
    }
}

fn lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        // Per character (no context-dependent rules), so that the key of a prefix is a
        // prefix of the key.
        s.chars().flat_map(char::to_lowercase).collect()
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Subscription ids: 1-64 ASCII letters, digits and `-` (Cloister mints GUIDs).
fn valid_subscription(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Resource groups: 1-90 letters, digits, `_ - . ( )`, not ending in `.` (Unicode letters
/// and digits are allowed, as in Azure).
fn valid_rg(n: &str) -> bool {
    let count = n.chars().count();
    (1..=90).contains(&count)
        && !n.ends_with('.')
        && n.chars()
            .all(|c| c.is_alphanumeric() || "_-.()".contains(c))
}

/// Management group ids: 1-90 ASCII letters, digits, `_ - . ( )`, not ending in `.`.
fn valid_mg(n: &str) -> bool {
    (1..=90).contains(&n.len())
        && !n.ends_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.()".contains(c))
}

/// Provider namespaces: dotted ASCII words, such as `Microsoft.App`.
fn valid_namespace(n: &str) -> bool {
    n.len() <= 100
        && n.contains('.')
        && n.split('.').all(|w| !w.is_empty())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

/// Resource types: ASCII letters and digits.
fn valid_type(n: &str) -> bool {
    (1..=100).contains(&n.len()) && n.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Invisible formatting characters that could make two names look alike.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// Resource names: 1-260 characters without `/`, control or invisible formatting
/// characters, none of ARM's reserved `< > % & \ ? #`, and no surrounding whitespace.
fn name_problem(n: &str) -> Option<&'static str> {
    if n.is_empty() {
        return Some("is empty");
    }
    if n.chars().count() > 260 {
        return Some("is longer than 260 characters");
    }
    if n.starts_with(char::is_whitespace) || n.ends_with(char::is_whitespace) {
        return Some("starts or ends with whitespace");
    }
    if n.chars()
        .any(|c| c.is_control() || invisible(c) || (c.is_whitespace() && c != ' '))
    {
        return Some("contains a control or invisible character");
    }
    if n.chars().any(|c| "<>%&\\?#/".contains(c)) {
        return Some("contains one of the reserved characters < > % & \\ ? #");
    }
    None
}

fn excerpt(s: &str) -> String {
    shown(&s.chars().take(60).collect::<String>())
}

impl Scope {
    /// The root scope `/`.
    pub fn root() -> Scope {
        Scope {
            mg: None,
            sub: None,
            rg: None,
            namespace: None,
            path: vec![],
            canon: "/".into(),
            ends: vec![1],
        }
    }

    /// Builds the canonical key and ancestor boundaries from the parts.
    fn assemble(
        mg: Option<String>,
        sub: Option<String>,
        rg: Option<String>,
        namespace: Option<String>,
        path: Vec<(String, String)>,
    ) -> Scope {
        let mut canon = String::new();
        let mut ends = vec![1];
        if let Some(m) = &mg {
            canon.push_str("/providers/microsoft.management/managementgroups/");
            canon.push_str(&lower(m));
            ends.push(canon.len());
        } else if let Some(s) = &sub {
            canon.push_str("/subscriptions/");
            canon.push_str(&lower(s));
            ends.push(canon.len());
            if let Some(r) = &rg {
                canon.push_str("/resourcegroups/");
                canon.push_str(&lower(r));
                ends.push(canon.len());
            }
            if let Some(ns) = &namespace {
                canon.push_str("/providers/");
                canon.push_str(&lower(ns));
                for (t, n) in &path {
                    canon.push('/');
                    canon.push_str(&lower(t));
                    canon.push('/');
                    canon.push_str(&lower(n));
                    ends.push(canon.len());
                }
            }
        }
        if canon.is_empty() {
            canon.push('/');
        }
        ends.reverse();
        Scope {
            mg,
            sub,
            rg,
            namespace,
            path,
            canon,
            ends,
        }
    }

    /// Parses a scope. A single trailing `/` is tolerated.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.is_empty() {
            return Err(err(s, "a scope cannot be empty; the root scope is '/'"));
        }
        if !s.starts_with('/') {
            return Err(err(s, "a scope starts with '/'"));
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(err(s, format!("longer than {MAX_SCOPE_LEN} characters")));
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
            return Err(err(s, "empty path segment ('//')"));
        }
        if eq(segs[0], "providers") {
            if segs.len() >= 2 && !eq(segs[1], "Microsoft.Management") {
                return Err(err(
                    s,
                    "only management groups (/providers/Microsoft.Management/managementGroups/{id}) are scopes under /providers",
                ));
            }
            if segs.len() < 3 || !eq(segs[2], "managementGroups") {
                return Err(err(
                    s,
                    "expected /providers/Microsoft.Management/managementGroups/{id}",
                ));
            }
            let Some(id) = segs.get(3) else {
                return Err(err(s, "missing management group id"));
            };
            if !valid_mg(id) {
                return Err(err(
                    s,
                    format!(
                        "invalid management group id '{}': use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
                        excerpt(id)
                    ),
                ));
            }
            if segs.len() > 4 {
                return Err(err(
                    s,
                    "resources below a management group are not supported as scopes",
                ));
            }
            return Ok(Scope::assemble(
                Some(id.to_string()),
                None,
                None,
                None,
                vec![],
            ));
        }
        if !eq(segs[0], "subscriptions") {
            return Err(err(
                s,
                format!(
                    "unexpected segment '{}': a scope starts with /subscriptions or /providers/Microsoft.Management/managementGroups",
                    excerpt(segs[0])
                ),
            ));
        }
        let Some(sub) = segs.get(1) else {
            return Err(err(s, "missing subscription id"));
        };
        if !valid_subscription(sub) {
            return Err(err(
                s,
                format!(
                    "invalid subscription id '{}': use 1-64 letters, digits and '-'",
                    excerpt(sub)
                ),
            ));
        }
        let mut rg = None;
        let mut rest = &segs[2..];
        if let Some(kw) = rest.first()
            && eq(kw, "resourceGroups")
        {
            let Some(name) = rest.get(1) else {
                return Err(err(s, "missing resource group name"));
            };
            if !valid_rg(name) {
                return Err(err(
                    s,
                    format!(
                        "invalid resource group name '{}': use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
                        excerpt(name)
                    ),
                ));
            }
            rg = Some(name.to_string());
            rest = &rest[2..];
        }
        if rest.is_empty() {
            return Ok(Scope::assemble(
                None,
                Some(sub.to_string()),
                rg,
                None,
                vec![],
            ));
        }
        if !eq(rest[0], "providers") {
            return Err(err(
                s,
                format!(
                    "unexpected segment '{}' (expected 'providers'{})",
                    excerpt(rest[0]),
                    if rg.is_none() {
                        " or 'resourceGroups'"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let Some(ns) = rest.get(1) else {
            return Err(err(s, "missing resource provider namespace"));
        };
        if !valid_namespace(ns) {
            return Err(err(
                s,
                format!(
                    "invalid resource provider namespace '{}': expected dotted letters and digits such as 'Microsoft.App'",
                    excerpt(ns)
                ),
            ));
        }
        let pairs = &rest[2..];
        if pairs.is_empty() {
            return Err(err(s, "missing resource type and name"));
        }
        let mut path = Vec::with_capacity(pairs.len() / 2);
        for p in pairs.chunks(2) {
            let t = p[0];
            if eq(t, "providers") {
                return Err(err(s, "extension resources are not supported as scopes"));
            }
            if !valid_type(t) {
                return Err(err(
                    s,
                    format!(
                        "invalid resource type '{}': use letters and digits",
                        excerpt(t)
                    ),
                ));
            }
            let Some(name) = p.get(1) else {
                return Err(err(
                    s,
                    format!("missing resource name after type '{}'", excerpt(t)),
                ));
            };
            if let Some(problem) = name_problem(name) {
                return Err(err(
                    s,
                    format!("invalid resource name '{}': it {problem}", excerpt(name)),
                ));
            }
            path.push((t.to_string(), name.to_string()));
        }
        Ok(Scope::assemble(
            None,
            Some(sub.to_string()),
            rg,
            Some(ns.to_string()),
            path,
        ))
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

    pub fn is_root(&self) -> bool {
        self.kind() == ScopeKind::Root
    }

    /// The lowercase form used for comparisons and map keys, e.g.
    /// `/subscriptions/s1/resourcegroups/rg/providers/microsoft.app/sessionpools/p1`.
    pub fn canonical(&self) -> String {
        self.canon.clone()
    }

    /// [`Scope::canonical`] without allocating.
    pub fn canonical_str(&self) -> &str {
        &self.canon
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
    /// The provider namespace of a resource, e.g. `Microsoft.App`.
    pub fn provider_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The full type of a resource: `Namespace/type[/childType…]`, e.g.
    /// `Microsoft.App/sessionPools/sessions`.
    pub fn resource_type(&self) -> Option<String> {
        let ns = self.namespace.as_ref()?;
        let mut t = ns.clone();
        for (ty, _) in &self.path {
            t.push('/');
            t.push_str(ty);
        }
        Some(t)
    }

    /// The (type, name) pairs of a resource below its namespace, outermost first.
    pub fn resource_path(&self) -> &[(String, String)] {
        &self.path
    }

    /// The last name: resource, resource group, subscription id or management group
    /// (`None` for `/`).
    pub fn name(&self) -> Option<&str> {
        if let Some((_, n)) = self.path.last() {
            return Some(n);
        }
        self.rg
            .as_deref()
            .or(self.sub.as_deref())
            .or(self.mg.as_deref())
    }

    /// The lexical parent: a child resource's parent resource, a top-level resource's
    /// resource group (or subscription), a resource group's subscription; subscriptions and
    /// management groups have `/` as lexical parent (the management-group hierarchy is data,
    /// kept by the access evaluator). `None` for `/`.
    pub fn parent(&self) -> Option<Scope> {
        let (mut mg, mut sub, mut rg, mut namespace, mut path) = (
            self.mg.clone(),
            self.sub.clone(),
            self.rg.clone(),
            self.namespace.clone(),
            self.path.clone(),
        );
        match self.kind() {
            ScopeKind::Root => return None,
            ScopeKind::ManagementGroup | ScopeKind::Subscription => {
                mg = None;
                sub = None;
            }
            ScopeKind::ResourceGroup => rg = None,
            ScopeKind::Resource => {
                path.pop();
                if path.is_empty() {
                    namespace = None;
                }
            }
        }
        let canon = self.canon[..self.ends[1]].to_string();
        let ends = self.ends[1..].to_vec();
        Some(Scope {
            mg,
            sub,
            rg,
            namespace,
            path,
            canon,
            ends,
        })
    }

    /// Self, then each lexical parent, ending with `/`.
    pub fn ancestors(&self) -> impl Iterator<Item = Scope> {
        std::iter::successors(Some(self.clone()), |s| s.parent())
    }

    /// The canonical keys of self and each lexical ancestor, self first, ending with `/`.
    /// Allocation-free: each is a prefix of [`Scope::canonical_str`].
    pub fn ancestor_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.ends.iter().map(|&e| &self.canon[..e])
    }

    /// True if `other` is strictly below `self` (lexically).
    pub fn is_ancestor_of(&self, other: &Scope) -> bool {
        let n = self.canon.len();
        other.ends.len() > self.ends.len()
            && other.ends[1..].contains(&n)
            && other.canon.starts_with(&self.canon)
    }

    /// True if `other` is `self` or lexically below it.
    pub fn contains(&self, other: &Scope) -> bool {
        self == other || self.is_ancestor_of(other)
    }
}

/// Parses a resource id: a [`Scope`] of kind [`ScopeKind::Resource`].
pub fn parse_resource_id(s: &str) -> Result<Scope, ScopeError> {
    let sc = Scope::parse(s)?;
    if sc.kind() != ScopeKind::Resource {
        return Err(err(
            s,
            "not a resource id (expected .../providers/{Namespace}/{type}/{name})",
        ));
    }
    Ok(sc)
}

impl PartialEq for Scope {
    fn eq(&self, other: &Self) -> bool {
        self.canon == other.canon
    }
}
impl Eq for Scope {}
impl Hash for Scope {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canon.hash(state)
    }
}
impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.canon.cmp(&other.canon)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
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

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MG: &str = "/providers/Microsoft.Management/managementGroups";

    #[test]
    fn kinds_and_parents() {
        let r = Scope::parse("/subscriptions/s1/resourcegroups/RG/providers/Microsoft.App/sessionPools/p1/sessions/x").unwrap();
        assert_eq!(r.kind(), ScopeKind::Resource);
        assert_eq!(
            r.resource_type().unwrap(),
            "Microsoft.App/sessionPools/sessions"
        );
        assert_eq!(r.provider_namespace(), Some("Microsoft.App"));
        assert_eq!(r.name(), Some("x"));
        assert_eq!(r.subscription_id(), Some("s1"));
        assert_eq!(r.resource_group(), Some("RG"));
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
        let keys: Vec<String> = r.ancestors().map(|s| s.canonical()).collect::<Vec<_>>();
        assert_eq!(keys, r.ancestor_keys().collect::<Vec<_>>());
        let mg = Scope::parse("/providers/microsoft.management/managementgroups/Team").unwrap();
        assert_eq!(mg.kind(), ScopeKind::ManagementGroup);
        assert_eq!(mg.management_group(), Some("Team"));
        assert_eq!(mg.name(), Some("Team"));
        assert_eq!(mg.to_string(), format!("{MG}/Team"));
        assert_eq!(mg.parent(), Some(Scope::root()));
        let root = Scope::parse("/").unwrap();
        assert_eq!(root.kind(), ScopeKind::Root);
        assert!(root.is_root() && root.parent().is_none() && root.name().is_none());
        let sub_res = Scope::parse("/subscriptions/s1/providers/Microsoft.Web/sites/a").unwrap();
        assert_eq!(sub_res.kind(), ScopeKind::Resource);
        assert_eq!(sub_res.resource_group(), None);
        assert_eq!(sub_res.parent().unwrap().kind(), ScopeKind::Subscription);
        let sub = Scope::parse("/subscriptions/s1/").unwrap();
        assert_eq!(sub.kind(), ScopeKind::Subscription);
        assert_eq!(sub.parent(), Some(Scope::root()));
        let uami = parse_resource_id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1",
        )
        .unwrap();
        assert_eq!(
            uami.resource_type().as_deref(),
            Some("Microsoft.ManagedIdentity/userAssignedIdentities")
        );
        assert!(parse_resource_id("/subscriptions/s/resourceGroups/rg").is_err());
    }

    #[test]
    fn case_insensitive_equality_keeps_the_callers_names() {
        let a = Scope::parse(
            "/SUBSCRIPTIONS/S1/RESOURCEGROUPS/My-RG/PROVIDERS/microsoft.app/SESSIONPOOLS/Pool",
        )
        .unwrap();
        let b = Scope::parse(
            "/subscriptions/s1/resourceGroups/my-rg/providers/Microsoft.App/sessionPools/pool",
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.to_string(),
            "/subscriptions/S1/resourceGroups/My-RG/providers/microsoft.app/SESSIONPOOLS/Pool"
        );
        let mut set = std::collections::HashSet::new();
        set.insert(a);
        assert!(set.contains(&b));
    }

    #[test]
    fn ancestry_is_case_insensitive_and_segment_aligned() {
        let rg = Scope::parse("/subscriptions/S1/resourceGroups/rg").unwrap();
        let res = Scope::parse("/subscriptions/s1/RESOURCEGROUPS/RG/providers/A.B/c/d").unwrap();
        let other = Scope::parse("/subscriptions/s1/resourceGroups/rg2").unwrap();
        assert!(rg.is_ancestor_of(&res));
        assert!(!res.is_ancestor_of(&rg));
        assert!(!rg.is_ancestor_of(&other));
        assert!(!rg.is_ancestor_of(&rg));
        assert!(rg.contains(&rg) && rg.contains(&res) && !rg.contains(&other));
        assert!(Scope::root().is_ancestor_of(&rg));
        assert!(!Scope::root().is_ancestor_of(&Scope::root()));
        let mg = Scope::parse(&format!("{MG}/m")).unwrap();
        assert!(
            !mg.is_ancestor_of(&rg),
            "the mg hierarchy is data, not lexical"
        );
        // A subscription-level resource is not below a resource group.
        let sub_res = Scope::parse("/subscriptions/s1/providers/A.B/c/d").unwrap();
        assert!(!rg.is_ancestor_of(&sub_res));
        assert!(
            Scope::parse("/subscriptions/s1")
                .unwrap()
                .is_ancestor_of(&sub_res)
        );
    }

    #[test]
    fn names() {
        for ok in [
            "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/a_b-c.(d)",
            "/subscriptions/s/resourceGroups/ÄÖü",
            "/subscriptions/s/resourceGroups/r/providers/Contoso.X/things/with space@~:=",
            "/subscriptions/s/resourceGroups/r/providers/Contoso.X/things/日本",
        ] {
            let s = Scope::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(s.to_string(), ok);
        }
        let long_rg = "r".repeat(90);
        assert!(Scope::parse(&format!("/subscriptions/s/resourceGroups/{long_rg}")).is_ok());
        assert!(Scope::parse(&format!("/subscriptions/s/resourceGroups/{long_rg}x")).is_err());
        let long = "n".repeat(260);
        assert!(Scope::parse(&format!("/subscriptions/s/providers/A.B/t/{long}")).is_ok());
        assert!(Scope::parse(&format!("/subscriptions/s/providers/A.B/t/{long}n")).is_err());
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = |s: &str| Scope::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("/subscriptions/"),
            "invalid scope '/subscriptions/': missing subscription id"
        );
        assert_eq!(
            msg("/subscriptions/s/resourceGroups/bad."),
            "invalid scope '/subscriptions/s/resourceGroups/bad.': invalid resource group name 'bad.': use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'"
        );
        assert!(
            msg("/subscriptions/s/resourceGroups/r/providers/A.B/t")
                .contains("missing resource name after type 't'")
        );
        assert!(msg("/subscriptions/s//x").contains("empty path segment"));
        assert!(msg("/subscriptions/s/providers/A.B/t/a\u{7}b").contains("a\\u{7}b"));
        assert!(msg("x").contains("starts with '/'"));
        assert!(msg(MG).contains("missing management group id"));
        assert!(msg("/subscriptions/s/resourceGroups/r/foo").contains("unexpected segment 'foo'"));
    }

    #[test]
    fn rejects_bad_scopes() {
        for bad in [
            "",
            "subscriptions/x",
            "/subscriptions",
            "/subscriptions/",
            "//",
            "///",
            "/subscriptions/s//",
            "/subscriptions/a b",
            "/subscriptions/s/resourceGroups",
            "/subscriptions/s/resourceGroups/",
            "/subscriptions/s/resourceGroups/bad.",
            "/subscriptions/s/resourceGroups/a b",
            "/subscriptions/s/resourceGroups/r/providers",
            "/subscriptions/s/resourceGroups/r/providers/NoDot/t/n",
            "/subscriptions/s/resourceGroups/r/providers/A..B/t/n",
            "/subscriptions/s/resourceGroups/r/providers/A.B",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n/c",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n/providers/Microsoft.Authorization/roleAssignments/x",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t-x/n",
            "/subscriptions/s/resourceGroups/r/foo",
            "/subscriptions/s/foo/bar",
            "/providers/Microsoft.Web/sites/x",
            "/providers/Microsoft.Management",
            "/providers/Microsoft.Management/managementGroups",
            "/providers/Microsoft.Management/managementGroups/a b",
            "/providers/Microsoft.Management/managementGroups/m/x/y",
            "/subscriptions/s//resourceGroups/r",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n%20x",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n?x",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/ n",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n\u{0}",
            "/subscriptions/s/resourceGroups/r/providers/A.B/t/n\u{202E}",
            "/tenants/t",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Scope::parse(&format!("/subscriptions/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn serde_uses_the_display_form() {
        let s = Scope::parse("/subscriptions/S/resourcegroups/R").unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"/subscriptions/S/resourceGroups/R\"");
        assert_eq!(serde_json::from_str::<Scope>(&j).unwrap(), s);
        assert!(serde_json::from_str::<Scope>("\"/nope\"").is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_().-]{0,20}[A-Za-z0-9]"
    }
    fn res_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9é][A-Za-z0-9 _().~@:=é-]{0,20}[A-Za-z0-9]"
    }
    /// A keyword in random casing.
    fn kw(word: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), word.len()).prop_map(move |up| {
            word.chars()
                .zip(up)
                .map(|(c, u)| {
                    if u {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        })
    }

    /// A valid scope string of any kind, with random keyword casing, and its depth
    /// (number of lexical ancestors including itself and `/`).
    fn scope_string() -> impl Strategy<Value = (String, usize)> {
        let mg = (
            kw("providers"),
            kw("Microsoft.Management"),
            kw("managementGroups"),
            name(),
        )
            .prop_map(|(p, m, g, n)| (format!("/{p}/{m}/{g}/{n}"), 2));
        let resource = (
            kw("subscriptions"),
            "[a-f0-9-]{1,36}",
            proptest::option::of((kw("resourceGroups"), name())),
            kw("providers"),
            "[A-Z][a-z]{1,8}\\.[A-Z][a-z]{1,8}",
            proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9]{0,9}", res_name()), 0..4),
        )
            .prop_map(|(s, sub, rg, p, ns, pairs)| {
                let mut out = format!("/{s}/{sub}");
                let mut depth = 2;
                if let Some((k, rg)) = rg {
                    out.push_str(&format!("/{k}/{rg}"));
                    depth += 1;
                }
                if !pairs.is_empty() {
                    out.push_str(&format!("/{p}/{ns}"));
                    for (t, n) in &pairs {
                        out.push_str(&format!("/{t}/{n}"));
                        depth += 1;
                    }
                }
                (out, depth)
            });
        prop_oneof![Just(("/".to_string(), 1)), mg, resource]
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Scope::parse(&s);
        }

        #[test]
        fn never_panics_on_near_misses(
            segs in proptest::collection::vec(
                prop_oneof![
                    Just("subscriptions".to_string()), Just("resourceGroups".to_string()),
                    Just("providers".to_string()), Just("Microsoft.Management".to_string()),
                    Just("managementGroups".to_string()), Just("Microsoft.App".to_string()),
                    Just(String::new()), ".{0,4}", "[a-z]{1,3}",
                ],
                0..12,
            ),
            trailing in any::<bool>(),
        ) {
            let mut s = format!("/{}", segs.join("/"));
            if trailing { s.push('/'); }
            if let Ok(sc) = Scope::parse(&s) {
                // Whatever parses round-trips.
                prop_assert_eq!(Scope::parse(&sc.to_string()).unwrap(), sc);
            }
        }

        #[test]
        fn roundtrip_and_chain((s, depth) in scope_string(), slash in any::<bool>()) {
            let input = if slash && s != "/" { format!("{s}/") } else { s.clone() };
            let p = Scope::parse(&input).unwrap();
            let shown = p.to_string();
            let again = Scope::parse(&shown).unwrap();
            prop_assert_eq!(&again, &p);
            prop_assert_eq!(again.to_string(), shown.clone());
            prop_assert_eq!(again.kind(), p.kind());
            // Only keyword casing changes in display; names keep theirs.
            prop_assert_eq!(shown.to_lowercase(), s.to_lowercase());
            prop_assert_eq!(p.canonical(), s.to_lowercase());
            prop_assert_eq!(Scope::parse(&s.to_uppercase()).unwrap(), p.clone());
            // The parent chain terminates at the root after exactly `depth` steps.
            let chain: Vec<Scope> = p.ancestors().collect();
            prop_assert_eq!(chain.len(), depth);
            prop_assert!(chain.last().unwrap().is_root());
            for (i, a) in chain.iter().enumerate() {
                prop_assert_eq!(a.is_ancestor_of(&p), i > 0);
                prop_assert!(!p.is_ancestor_of(a));
                prop_assert_eq!(Scope::parse(&a.to_string()).unwrap().canonical(), a.canonical());
            }
            prop_assert_eq!(
                p.ancestor_keys().map(str::to_string).collect::<Vec<_>>(),
                chain.iter().map(Scope::canonical).collect::<Vec<_>>()
            );
        }
    }
}
