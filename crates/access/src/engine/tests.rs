use super::*;
use crate::builtin_roles;

const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
const CONTRIB: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const EXEC: &str = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0";

fn ra(id: &str, scope: &str, role: &str, p: &str) -> RoleAssignment {
    RoleAssignment {
        id: id.into(),
        scope: scope.into(),
        role_definition_id: role.into(),
        principal_id: p.into(),
        principal_type: "User".into(),
    }
}
fn c(a: &str) -> Action {
    Action::Control(a.into())
}
fn sc(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}
const RG: &str = "/subscriptions/s1/resourceGroups/rg1";
const RES: &str = "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.App/sessionPools/p1";

#[test]
fn inheritance_follows_the_scope_chain() {
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a1", "/subscriptions/s1", READER, "u")],
        vec![],
        vec![],
        vec![],
    );
    assert!(
        s.check("u", &c("Microsoft.App/sessionPools/read"), &sc(RES))
            .allowed
    );
    assert!(
        !s.check("u", &c("Microsoft.App/sessionPools/write"), &sc(RES))
            .allowed
    );
    assert!(
        !s.check(
            "u",
            &c("Microsoft.App/sessionPools/read"),
            &sc("/subscriptions/s2")
        )
        .allowed
    );
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a1", RG, OWNER, "u")],
        vec![],
        vec![],
        vec![],
    );
    assert!(s.check("u", &c("x/y/write"), &sc(RES)).allowed);
    assert!(
        !s.check(
            "u",
            &c("x/y/write"),
            &sc("/subscriptions/s1/resourceGroups/rg2")
        )
        .allowed
    );
    assert!(
        !s.check("u", &c("x/y/write"), &sc("/subscriptions/s1"))
            .allowed
    );
}

#[test]
fn management_groups_nest() {
    let hier = vec![
        (
            "/subscriptions/s1".to_string(),
            "/providers/Microsoft.Management/managementGroups/child".to_string(),
        ),
        (
            "/providers/Microsoft.Management/managementGroups/child".to_string(),
            "/providers/Microsoft.Management/managementGroups/top".to_string(),
        ),
    ];
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra(
            "a",
            "/providers/Microsoft.Management/managementGroups/TOP",
            READER,
            "u",
        )],
        vec![],
        vec![],
        hier,
    );
    assert!(s.check("u", &c("a/b/read"), &sc(RES)).allowed);
    assert!(
        !s.check("u", &c("a/b/read"), &sc("/subscriptions/other"))
            .allowed
    );
}

#[test]
fn contributor_cannot_grant_access() {
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", "/", CONTRIB, "u")],
        vec![],
        vec![],
        vec![],
    );
    assert!(
        s.check("u", &c("Microsoft.App/sessionPools/write"), &sc(RG))
            .allowed
    );
    assert!(
        !s.check(
            "u",
            &c("Microsoft.Authorization/roleAssignments/write"),
            &sc(RG)
        )
        .allowed
    );
    assert!(
        s.check(
            "u",
            &c("Microsoft.Authorization/roleAssignments/read"),
            &sc(RG)
        )
        .allowed
    );
    // A second role can grant what NotActions left out: NotActions is not a deny.
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", "/", CONTRIB, "u"), ra("b", RG, OWNER, "u")],
        vec![],
        vec![],
        vec![],
    );
    assert!(
        s.check(
            "u",
            &c("Microsoft.Authorization/roleAssignments/write"),
            &sc(RG)
        )
        .allowed
    );
}

#[test]
fn nested_groups_with_a_cycle() {
    let m = vec![
        ("g1".to_string(), "u".to_string()),
        ("g2".to_string(), "g1".to_string()),
        ("g1".to_string(), "g2".to_string()),
    ];
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", RG, READER, "G2")],
        vec![],
        m,
        vec![],
    );
    assert!(s.check("U", &c("a/read"), &sc(RES)).allowed);
    let mut g = s.principal_groups("u");
    g.sort();
    assert_eq!(g, vec!["g1", "g2"]);
}

#[test]
fn deny_wins_and_respects_exclusions_and_child_scopes() {
    let d = DenyAssignment {
        id: "d1".into(),
        name: "n".into(),
        scope: RG.into(),
        permissions: vec![Permission {
            actions: vec!["*/delete".into()],
            ..Default::default()
        }],
        principals: vec![EVERYONE.into()],
        exclude_principals: vec!["admin".into()],
        does_not_apply_to_child_scopes: false,
    };
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", "/", OWNER, "u"), ra("b", "/", OWNER, "admin")],
        vec![d.clone()],
        vec![],
        vec![],
    );
    let dec = s.check("u", &c("Microsoft.App/sessionPools/delete"), &sc(RES));
    assert_eq!(
        dec,
        Decision {
            allowed: false,
            reason: DecisionReason::Deny("d1".into())
        }
    );
    assert!(
        s.check("u", &c("Microsoft.App/sessionPools/write"), &sc(RES))
            .allowed
    );
    assert!(
        s.check("admin", &c("Microsoft.App/sessionPools/delete"), &sc(RES))
            .allowed
    );
    let mut top_only = d;
    top_only.does_not_apply_to_child_scopes = true;
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", "/", OWNER, "u")],
        vec![top_only],
        vec![],
        vec![],
    );
    assert!(s.check("u", &c("x/delete"), &sc(RES)).allowed);
    assert!(!s.check("u", &c("x/delete"), &sc(RG)).allowed);
}

#[test]
fn data_actions_are_separate() {
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("a", "/", OWNER, "owner"), ra("b", RES, EXEC, "exec")],
        vec![],
        vec![],
        vec![],
    );
    let exec = Action::Data("Microsoft.App/sessionPools/interpreters/execute/action".into());
    assert!(
        !s.check("owner", &exec, &sc(RES)).allowed,
        "'*' actions never grant data actions"
    );
    assert!(s.check("exec", &exec, &sc(RES)).allowed);
    assert!(
        s.check(
            "exec",
            &c("microsoft.app/sessionpools/sessions/generatesessions/action"),
            &sc(RES)
        )
        .allowed
    );
    assert!(
        !s.check(
            "exec",
            &exec,
            &sc("/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.App/sessionPools/p2")
        )
        .allowed
    );
}

#[test]
fn engine_cache_never_serves_a_revoked_decision() {
    let e = Engine::new(Snapshot::build(
        builtin_roles(),
        vec![ra("a", RG, READER, "u")],
        vec![],
        vec![],
        vec![],
    ));
    assert!(e.check("u", &c("x/read"), &sc(RES)).allowed);
    assert!(e.check("u", &c("x/read"), &sc(RES)).allowed);
    e.replace(Snapshot::build(
        builtin_roles(),
        vec![],
        vec![],
        vec![],
        vec![],
    ));
    assert!(!e.check("u", &c("x/read"), &sc(RES)).allowed);
}

#[test]
fn cost_is_the_chain_not_the_total() {
    let mut many: Vec<RoleAssignment> = (0..5000)
        .map(|i| {
            ra(
                &format!("x{i}"),
                &format!("/subscriptions/other{i}"),
                READER,
                "v",
            )
        })
        .collect();
    many.push(ra("mine", RG, READER, "u"));
    let s = Snapshot::build(builtin_roles(), many, vec![], vec![], vec![]);
    assert_eq!(s.assignments_on_chain(&sc(RES)), 1);
    assert!(s.check("u", &c("x/read"), &sc(RES)).allowed);
}

#[test]
fn validation_of_custom_roles() {
    use crate::{RoleType, validate_role_definition};
    let mut d = RoleDefinition {
        id: "x".into(),
        role_name: "R".into(),
        description: String::new(),
        role_type: RoleType::CustomRole,
        permissions: vec![Permission {
            actions: vec!["a/b/read".into()],
            ..Default::default()
        }],
        assignable_scopes: vec!["/subscriptions/s1".into()],
    };
    assert!(validate_role_definition(&d).is_ok());
    d.assignable_scopes = vec!["nope".into()];
    assert!(validate_role_definition(&d).is_err());
    d.assignable_scopes = vec!["/subscriptions/s1".into()];
    d.permissions[0].actions = vec!["has space".into()];
    assert!(validate_role_definition(&d).is_err());
    d.permissions[0].actions = vec![];
    assert!(validate_role_definition(&d).is_err());
    d.role_name = " ".into();
    assert!(validate_role_definition(&d).is_err());
}
