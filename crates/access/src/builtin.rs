//! Built-in roles with Azure's names, ids and permissions (assignable at `/`).

use crate::{Permission, RoleDefinition, RoleType};

fn role(
    id: &str,
    name: &str,
    desc: &str,
    actions: &[&str],
    not_actions: &[&str],
    data: &[&str],
) -> RoleDefinition {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    RoleDefinition {
        id: id.into(),
        role_name: name.into(),
        description: desc.into(),
        role_type: RoleType::BuiltInRole,
        permissions: vec![Permission {
            actions: v(actions),
            not_actions: v(not_actions),
            data_actions: v(data),
            not_data_actions: vec![],
        }],
        assignable_scopes: vec!["/".into()],
    }
}

/// Every built-in role.
///
/// Azure ContainerApps Session Executor's exact permissions are not published; it is given
/// the only session actions the Microsoft.App provider lists: `sessionPools/sessions/generatesessions/action`
/// and the data action `sessionPools/interpreters/execute/action`.
pub fn builtin_roles() -> Vec<RoleDefinition> {
    vec![
        role(
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            "Owner",
            "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
            &["*"],
            &[],
            &[],
        ),
        role(
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            "Contributor",
            "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
                "Microsoft.Blueprint/blueprintAssignments/write",
                "Microsoft.Blueprint/blueprintAssignments/delete",
                "Microsoft.Compute/galleries/share/action",
                "Microsoft.Purview/consents/write",
                "Microsoft.Purview/consents/delete",
                "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
                "Microsoft.Subscription/cancel/action",
                "Microsoft.Subscription/enable/action",
            ],
            &[],
        ),
        role(
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "Reader",
            "View all resources, but does not allow you to make any changes.",
            &["*/read"],
            &[],
            &[],
        ),
        role(
            "f1a07417-d97a-45cb-824c-7a7467783830",
            "Managed Identity Operator",
            "Read and Assign User Assigned Identity",
            &[
                "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
                "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
                "Microsoft.Authorization/*/read",
                "Microsoft.Insights/alertRules/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                "Microsoft.Resources/deployments/*",
                "Microsoft.Support/*",
            ],
            &[],
            &[],
        ),
        role(
            "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0",
            "Azure ContainerApps Session Executor",
            "Grants permission to execute sessions in a session pool.",
            &["Microsoft.App/sessionPools/sessions/generatesessions/action"],
            &[],
            &["Microsoft.App/sessionPools/interpreters/execute/action"],
        ),
        role(
            "420fcaa2-552c-430f-98ca-3264be4806c7",
            "SignalR App Server",
            "Lets your app server access SignalR Service with AAD auth options.",
            &[],
            &[],
            &[
                "Microsoft.SignalRService/SignalR/auth/accessKey/action",
                "Microsoft.SignalRService/SignalR/serverConnection/write",
                "Microsoft.SignalRService/SignalR/clientConnection/write",
            ],
        ),
        role(
            "fd53cd77-2268-407a-8f46-7e7863d0f521",
            "SignalR REST API Owner",
            "Full access to Azure SignalR Service REST APIs",
            &[],
            &[],
            &[
                "Microsoft.SignalRService/SignalR/auth/clientToken/action",
                "Microsoft.SignalRService/SignalR/hub/*",
                "Microsoft.SignalRService/SignalR/group/*",
                "Microsoft.SignalRService/SignalR/clientConnection/*",
                "Microsoft.SignalRService/SignalR/user/*",
            ],
        ),
        role(
            "ddde6b66-c0df-4114-a159-3618637b3035",
            "SignalR REST API Reader",
            "Read-only access to Azure SignalR Service REST APIs",
            &[],
            &[],
            &[
                "Microsoft.SignalRService/SignalR/group/read",
                "Microsoft.SignalRService/SignalR/clientConnection/read",
                "Microsoft.SignalRService/SignalR/user/read",
            ],
        ),
        role(
            "7e4f1700-ea5a-4f59-8f37-079cfe29dce3",
            "SignalR Service Owner",
            "Full access to Azure SignalR Service REST APIs",
            &[],
            &[],
            &["Microsoft.SignalRService/SignalR/*"],
        ),
    ]
}

/// A built-in role by name, ignoring case.
pub fn builtin_by_name(name: &str) -> Option<RoleDefinition> {
    builtin_roles()
        .into_iter()
        .find(|r| r.role_name.eq_ignore_ascii_case(name))
}
