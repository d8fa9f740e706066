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

const MI_OP: &str = "f1a07417-d97a-45cb-824c-7a7467783830";
const MG: &str = "/providers/Microsoft.Management/managementGroups";

fn d(a: &str) -> Action {
    Action::Data(a.into())
}
fn empty_with(a: Vec<RoleAssignment>) -> Snapshot {
    Snapshot::build(builtin_roles(), a, vec![], vec![], vec![])
}

#[test]
fn assignment_at_rg_does_not_reach_sibling_rg_or_subscription_resources() {
    let s = empty_with(vec![ra("a", RG, READER, "u")]);
    let sibling =
        sc("/subscriptions/s1/resourceGroups/rg2/providers/Microsoft.App/sessionPools/p1");
    assert!(!s.check("u", &c("x/read"), &sibling).allowed);
    let sub_level = sc("/subscriptions/s1/providers/Microsoft.Web/sites/a");
    assert!(!s.check("u", &c("x/read"), &sub_level).allowed);
    // Child resources inherit from their parent resource.
    let s = empty_with(vec![ra("a", RES, READER, "u")]);
    let child = sc(&format!("{RES}/sessions/x1"));
    assert!(s.check("u", &c("x/read"), &child).allowed);
    assert!(!s.check("u", &c("x/read"), &sc(RG)).allowed);
}

#[test]
fn reader_only_reads() {
    let s = empty_with(vec![ra("a", "/subscriptions/s1", READER, "u")]);
    for ok in [
        "Microsoft.App/sessionPools/read",
        "microsoft.authorization/roleassignments/READ",
        "Microsoft.Resources/subscriptions/resourceGroups/read",
    ] {
        assert!(s.check("u", &c(ok), &sc(RES)).allowed, "{ok}");
    }
    for no in [
        "Microsoft.App/sessionPools/write",
        "Microsoft.App/sessionPools/delete",
        "Microsoft.App/sessionPools/listkeys/action",
        "Microsoft.App/sessionPools/readiness/action",
    ] {
        assert!(!s.check("u", &c(no), &sc(RES)).allowed, "{no}");
    }
    assert!(
        !s.check("u", &d("Microsoft.App/sessionPools/read"), &sc(RES))
            .allowed
    );
}

#[test]
fn management_group_chain_with_a_cyclic_hierarchy_terminates() {
    let hier = vec![
        ("/subscriptions/s1".to_string(), format!("{MG}/a")),
        (format!("{MG}/a"), format!("{MG}/b")),
        (format!("{MG}/b"), format!("{MG}/a")),
    ];
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("x", &format!("{MG}/b"), READER, "u")],
        vec![],
        vec![],
        hier,
    );
    assert_eq!(
        s.chain(&sc(RG)),
        vec![
            "/subscriptions/s1/resourcegroups/rg1".to_string(),
            "/subscriptions/s1".into(),
            format!("{MG}/a").to_lowercase(),
            format!("{MG}/b").to_lowercase(),
            "/".into(),
        ]
    );
    assert!(s.check("u", &c("x/read"), &sc(RES)).allowed);
    // A management group inherits from its parents too.
    assert!(s.check("u", &c("x/read"), &sc(&format!("{MG}/A"))).allowed);
    assert_eq!(
        s.parent_management_group(&sc("/subscriptions/S1")),
        Some(sc(&format!("{MG}/a")))
    );
}

#[test]
fn root_assignment_applies_everywhere() {
    let s = empty_with(vec![ra("a", "/", READER, "u")]);
    for scope in ["/", "/subscriptions/z", RES, &format!("{MG}/m")] {
        assert!(s.check("u", &c("x/read"), &sc(scope)).allowed, "{scope}");
    }
}

#[test]
fn contributor_not_actions() {
    let s = empty_with(vec![ra("a", "/subscriptions/s1", CONTRIB, "u")]);
    for no in [
        "Microsoft.Authorization/roleAssignments/write",
        "Microsoft.Authorization/roleAssignments/delete",
        "Microsoft.Authorization/roleDefinitions/write",
        "Microsoft.Authorization/elevateAccess/action",
        "Microsoft.Subscription/cancel/action",
    ] {
        let dec = s.check("u", &c(no), &sc(RES));
        assert_eq!(dec.reason, DecisionReason::NoMatchingAssignment, "{no}");
    }
    assert!(
        s.check(
            "u",
            &c("Microsoft.ManagedIdentity/userAssignedIdentities/write"),
            &sc(RES)
        )
        .allowed
    );
}

#[test]
fn managed_identity_operator_assigns_but_does_not_write() {
    let s = empty_with(vec![ra("a", RG, MI_OP, "u")]);
    let id = sc(
        "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1",
    );
    for ok in [
        "Microsoft.ManagedIdentity/userAssignedIdentities/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        "Microsoft.Authorization/roleAssignments/read",
        "Microsoft.Resources/deployments/write",
    ] {
        assert!(s.check("u", &c(ok), &id).allowed, "{ok}");
    }
    for no in [
        "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
        "Microsoft.App/sessionPools/read",
    ] {
        assert!(!s.check("u", &c(no), &id).allowed, "{no}");
    }
}

#[test]
fn signalr_roles_are_data_roles() {
    use crate::builtin::*;
    let hub =
        "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.SignalRService/SignalR/hub1";
    let s = empty_with(vec![
        ra("app", hub, SIGNALR_APP_SERVER, "app"),
        ra("rest", hub, SIGNALR_REST_API_OWNER, "rest"),
        ra("ro", hub, SIGNALR_REST_API_READER, "ro"),
        ra("own", hub, SIGNALR_SERVICE_OWNER, "own"),
        ra("keys", hub, SIGNALR_ACCESS_KEY_READER, "keys"),
    ]);
    let h = sc(hub);
    let yes = |p: &str, a: Action| s.check(p, &a, &h).allowed;
    let sr = |x: &str| format!("Microsoft.SignalRService/SignalR/{x}");
    assert!(yes("app", d(&sr("auth/accessKey/action"))));
    assert!(yes("app", d(&sr("serverConnection/write"))));
    assert!(!yes("app", d(&sr("group/write"))));
    assert!(yes("rest", d(&sr("hub/send/action"))));
    assert!(yes("rest", d(&sr("auth/clientToken/action"))));
    assert!(!yes("rest", d(&sr("serverConnection/write"))));
    assert!(yes("ro", d(&sr("user/read"))));
    assert!(!yes("ro", d(&sr("user/write"))));
    assert!(yes("own", d(&sr("livetrace/write"))));
    assert!(!yes("own", c(&sr("read"))));
    assert!(yes("keys", c(&sr("listkeys/action"))));
    assert!(yes("keys", c(&sr("read"))));
    assert!(!yes("keys", d(&sr("auth/accessKey/action"))));
}

#[test]
fn deep_nested_groups_and_group_assignments() {
    // u ∈ g1 ∈ g2 ∈ g3 ∈ g1 (cycle); the assignment is to g3.
    let m = vec![
        ("g1".to_string(), "u".to_string()),
        ("g2".to_string(), "g1".to_string()),
        ("G3".to_string(), "g2".to_string()),
        ("g1".to_string(), "g3".to_string()),
    ];
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra("via-g3", RG, CONTRIB, "g3")],
        vec![],
        m,
        vec![],
    );
    let dec = s.check("u", &c("Microsoft.App/sessionPools/write"), &sc(RES));
    assert_eq!(dec.reason, DecisionReason::Assignment("via-g3".into()));
    assert_eq!(s.principal_groups("U"), vec!["g1", "g2", "g3"]);
    assert_eq!(s.principal_groups("g3"), vec!["g1", "g2"]);
    assert!(s.principal_groups("stranger").is_empty());
    assert!(!s.check("stranger", &c("x/read"), &sc(RES)).allowed);
}

#[test]
fn many_assignments_at_one_scope_use_the_principal_index() {
    let mut a: Vec<RoleAssignment> = (0..1000)
        .map(|i| ra(&format!("x{i}"), RG, OWNER, &format!("p{i}")))
        .collect();
    a.push(ra("grp", RG, READER, "g"));
    let s = Snapshot::build(
        builtin_roles(),
        a,
        vec![],
        vec![("g".into(), "late".into())],
        vec![],
    );
    assert_eq!(
        s.check("P999", &c("x/write"), &sc(RES)).reason,
        DecisionReason::Assignment("x999".into())
    );
    assert_eq!(
        s.check("late", &c("x/read"), &sc(RES)).reason,
        DecisionReason::Assignment("grp".into())
    );
    assert!(!s.check("late", &c("x/write"), &sc(RES)).allowed);
    assert!(!s.check("nobody", &c("x/read"), &sc(RES)).allowed);
}

#[test]
fn deny_by_group_and_exclusion_by_group() {
    let deny = |principals: Vec<&str>, excluded: Vec<&str>| DenyAssignment {
        id: "d".into(),
        name: "d".into(),
        scope: "/subscriptions/s1".into(),
        permissions: vec![Permission {
            actions: vec!["*".into()],
            not_actions: vec!["*/read".into()],
            data_actions: vec!["Microsoft.App/*".into()],
            ..Default::default()
        }],
        principals: principals.into_iter().map(String::from).collect(),
        exclude_principals: excluded.into_iter().map(String::from).collect(),
        does_not_apply_to_child_scopes: false,
    };
    let m = vec![
        ("admins".to_string(), "alice".to_string()),
        ("staff".to_string(), "bob".to_string()),
        ("staff".to_string(), "admins".to_string()),
    ];
    let grants = vec![ra("a", "/", OWNER, "staff"), ra("b", "/", EXEC, "staff")];
    let s = Snapshot::build(
        builtin_roles(),
        grants.clone(),
        vec![deny(vec!["STAFF"], vec!["admins"])],
        m.clone(),
        vec![],
    );
    let w = c("Microsoft.App/sessionPools/write");
    let x = d("Microsoft.App/sessionPools/interpreters/execute/action");
    assert_eq!(
        s.check("bob", &w, &sc(RES)).reason,
        DecisionReason::Deny("d".into())
    );
    assert!(
        !s.check("bob", &x, &sc(RES)).allowed,
        "data actions are denied too"
    );
    assert!(
        s.check("bob", &c("x/read"), &sc(RES)).allowed,
        "NotActions carve out reads"
    );
    assert!(
        s.check("alice", &w, &sc(RES)).allowed,
        "excluded through admins"
    );
    assert!(
        s.check("bob", &w, &sc("/subscriptions/s2")).allowed,
        "other subscription"
    );
    // Everyone.
    let s = Snapshot::build(
        builtin_roles(),
        grants,
        vec![deny(vec![EVERYONE], vec!["alice"])],
        m,
        vec![],
    );
    assert!(!s.check("bob", &w, &sc(RG)).allowed);
    assert!(!s.check("someone-else", &w, &sc(RG)).allowed);
    assert!(s.check("alice", &w, &sc(RG)).allowed);
    assert_eq!(s.deny_assignments().len(), 1);
}

#[test]
fn case_insensitive_everything() {
    let s = Snapshot::build(
        builtin_roles(),
        vec![ra(
            "a",
            "/SUBSCRIPTIONS/S1/resourcegroups/RG1",
            &READER.to_uppercase(),
            "User-A",
        )],
        vec![],
        vec![],
        vec![],
    );
    assert!(
        s.check("user-a", &c("MICROSOFT.APP/SESSIONPOOLS/READ"), &sc(RES))
            .allowed
    );
    let upper = sc(&RES.to_uppercase());
    assert!(
        s.check("USER-A", &c("microsoft.app/sessionpools/read"), &upper)
            .allowed
    );
}

#[test]
fn role_definition_ids_may_be_full_resource_ids_and_unknown_roles_grant_nothing() {
    let full =
        format!("/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/{READER}");
    let s = empty_with(vec![
        ra("full", RG, &full, "u"),
        ra("ghost", RG, "11111111-1111-1111-1111-111111111111", "v"),
        ra("bad-scope", "not a scope", OWNER, "w"),
    ]);
    assert!(s.check("u", &c("x/read"), &sc(RES)).allowed);
    assert!(!s.check("v", &c("x/read"), &sc(RES)).allowed);
    assert!(!s.check("w", &c("x/read"), &sc(RES)).allowed);
    assert_eq!(s.role(&full).unwrap().role_name, "Reader");
    assert_eq!(s.assignment_count(), 3);
}

#[test]
fn listing_helpers() {
    let hier = vec![("/subscriptions/s1".to_string(), format!("{MG}/m"))];
    let s = Snapshot::build(
        builtin_roles(),
        vec![
            ra("mg", &format!("{MG}/m"), READER, "u"),
            ra("sub", "/subscriptions/s1", READER, "u"),
            ra("rg", RG, READER, "u"),
            ra("res", RES, READER, "u"),
            ra("other", "/subscriptions/s1/resourceGroups/rg2", READER, "u"),
        ],
        vec![],
        vec![],
        hier,
    );
    let ids = |v: Vec<&RoleAssignment>| v.into_iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(s.assignments_at(&sc(RG))), vec!["rg"]);
    assert_eq!(ids(s.assignments_for(&sc(RG))), vec!["rg", "sub", "mg"]);
    assert_eq!(
        ids(s.assignments_for(&sc(RES))),
        vec!["res", "rg", "sub", "mg"]
    );
    assert_eq!(s.assignments_on_chain(&sc(RES)), 4);
    // The nearest assignment is the reported reason.
    assert_eq!(
        s.check("u", &c("x/read"), &sc(RES)).reason,
        DecisionReason::Assignment("res".into())
    );
}

#[test]
fn decision_reasons_read_well() {
    assert_eq!(
        DecisionReason::NoMatchingAssignment.to_string(),
        "no matching role assignment"
    );
    assert_eq!(
        DecisionReason::Deny("d1".into()).to_string(),
        "denied by deny assignment 'd1'"
    );
    assert_eq!(
        DecisionReason::Assignment("a1".into()).to_string(),
        "allowed by role assignment 'a1'"
    );
}

#[test]
fn builtins_have_azure_ids_and_names() {
    use crate::{builtin_by_id, builtin_by_name};
    let all = builtin_roles();
    assert_eq!(all.len(), 10);
    let mut ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    for r in &all {
        assert!(cloister_core::is_guid(&r.id), "{}", r.role_name);
        assert_eq!(r.assignable_scopes, vec!["/"]);
        assert_eq!(r.role_type, crate::RoleType::BuiltInRole);
        crate::validate_role_definition(r).unwrap();
    }
    assert_eq!(builtin_by_name("contributor").unwrap().id, CONTRIB);
    assert_eq!(
        builtin_by_name("azure containerapps session executor")
            .unwrap()
            .id,
        EXEC
    );
    assert_eq!(
        builtin_by_id(&OWNER.to_uppercase()).unwrap().role_name,
        "Owner"
    );
    assert!(builtin_by_name("Nope").is_none());
    let json = serde_json::to_value(builtin_by_name("Reader").unwrap()).unwrap();
    assert_eq!(json["roleName"], "Reader");
    assert_eq!(json["roleType"], "BuiltInRole");
    assert_eq!(json["permissions"][0]["actions"][0], "*/read");
    assert_eq!(json["assignableScopes"][0], "/");
}

#[test]
fn engine_generation_and_concurrent_replace() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let allow = || empty_with(vec![ra("a", RG, READER, "u")]);
    let deny = || empty_with(vec![]);
    let e = Arc::new(Engine::new(allow()));
    assert_eq!(e.generation(), 1);
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..2)
        .map(|_| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = e.check("u", &c("x/read"), &sc(RES));
                }
            })
        })
        .collect();
    for i in 0..300 {
        let expect = i % 2 == 0;
        e.replace(if expect { allow() } else { deny() });
        for _ in 0..3 {
            assert_eq!(
                e.check("u", &c("x/read"), &sc(RES)).allowed,
                expect,
                "stale decision after replace #{i}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().unwrap();
    }
    assert_eq!(e.generation(), 301);
    assert_eq!(e.snapshot().assignment_count(), 0);
}

#[test]
fn engine_cache_keys_separate_inputs() {
    let e = Engine::new(Snapshot::build(
        builtin_roles(),
        vec![ra("a", RES, EXEC, "u")],
        vec![],
        vec![],
        vec![],
    ));
    let gen_action = "Microsoft.App/sessionPools/sessions/generatesessions/action";
    let exec = "Microsoft.App/sessionPools/interpreters/execute/action";
    assert!(e.check("u", &c(gen_action), &sc(RES)).allowed);
    assert!(
        !e.check("u", &d(gen_action), &sc(RES)).allowed,
        "same string, data plane"
    );
    assert!(e.check("u", &d(exec), &sc(RES)).allowed);
    assert!(!e.check("u", &c(exec), &sc(RES)).allowed);
    assert!(e.check("U", &d(&exec.to_uppercase()), &sc(RES)).allowed);
    assert!(!e.check("u", &d(exec), &sc(RG)).allowed);
    assert!(!e.check("v", &d(exec), &sc(RES)).allowed);
}

#[test]
fn validation_messages() {
    use crate::{RoleType, validate_role_definition};
    let base = RoleDefinition {
        id: "x".into(),
        role_name: "R".into(),
        description: String::new(),
        role_type: RoleType::CustomRole,
        permissions: vec![Permission {
            actions: vec!["Contoso.Widgets/*/read".into()],
            data_actions: vec!["Contoso.Widgets/widgets/*".into()],
            ..Default::default()
        }],
        assignable_scopes: vec!["/subscriptions/s1".into()],
    };
    validate_role_definition(&base).unwrap();
    let msg = |f: &dyn Fn(&mut RoleDefinition)| {
        let mut r = base.clone();
        f(&mut r);
        validate_role_definition(&r).unwrap_err().to_string()
    };
    assert!(msg(&|r| r.permissions[0].data_actions = vec!["*".into()]).contains("'*' alone"));
    assert!(msg(&|r| r.permissions[0].actions.push("".into())).contains("is empty"));
    assert!(
        msg(&|r| r.permissions[0].not_actions.push("a\tb/c".into())).starts_with("notActions:")
    );
    assert!(msg(&|r| r.permissions[0].actions.push("noslash".into())).contains("must look like"));
    assert!(msg(&|r| r.assignable_scopes = vec![]).contains("assignableScopes"));
    assert!(
        msg(&|r| r.assignable_scopes = vec!["/subscriptions/".into()])
            .contains("missing subscription id")
    );
    assert!(msg(&|r| r.assignable_scopes = vec![format!("{MG}/m")]).contains("management group"));
    assert!(msg(&|r| r.permissions.clear()).contains("at least one entry"));
    assert!(msg(&|r| r.role_name = "a\nb".into()).contains("roleName"));
    let mut mg_ok = base.clone();
    mg_ok.permissions[0].data_actions.clear();
    mg_ok.assignable_scopes = vec![format!("{MG}/m")];
    validate_role_definition(&mg_ok).unwrap();
}
