//! Built-in roles with Azure's names, ids and permissions (assignable at `/`).

use crate::{Permission, RoleDefinition, RoleType};
use std::sync::LazyLock;

/// Owner: every control-plane action.
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
/// Contributor: every control-plane action except managing access.
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
/// Reader: `*/read`.
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const MANAGED_IDENTITY_OPERATOR: &str = "f1a07417-d97a-45cb-824c-7a7467783830";
pub const SESSION_EXECUTOR: &str = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0";
pub const SIGNALR_APP_SERVER: &str = "420fcaa2-552c-430f-98ca-3264be4806c7";
pub const SIGNALR_REST_API_OWNER: &str = "fd53cd77-2268-407a-8f46-7e7863d0f521";
pub const SIGNALR_REST_API_READER: &str = "ddde6b66-c0df-4114-a159-3618637b3035";
pub const SIGNALR_SERVICE_OWNER: &str = "7e4f1700-ea5a-4f59-8f37-079cfe29dce3";
pub const SIGNALR_ACCESS_KEY_READER: &str = "04165923-9d83-45d5-8227-78b77b0a687e";

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

static BUILTINS: LazyLock<Vec<RoleDefinition>> = LazyLock::new(table);

/// Every built-in role: Owner, Contributor, Reader, Managed Identity Operator, Azure
/// ContainerApps Session Executor and the five SignalR roles, with Azure's names, GUIDs and
/// permissions, all assignable at `/`.
///
/// Azure ContainerApps Session Executor (`0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0`): the GUID is
/// Azure's, but its role JSON is not published. Its permissions here are **inferred**: the
/// Microsoft.App provider lists exactly one session-creating control action,
/// `Microsoft.App/sessionPools/sessions/generatesessions/action`, and exactly one data action,
/// `Microsoft.App/sessionPools/interpreters/execute/action` ("Execute Code"), so the role holds
/// those two and nothing else.
pub fn builtin_roles() -> Vec<RoleDefinition> {
    BUILTINS.clone()
}

/// A built-in role by its GUID, ignoring case.
pub fn builtin_by_id(id: &str) -> Option<&'static RoleDefinition> {
    BUILTINS.iter().find(|r| r.id.eq_ignore_ascii_case(id))
}

fn table() -> Vec<RoleDefinition> {
    vec![
        role(
            OWNER,
            "Owner",
            "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
            &["*"],
            &[],
            &[],
        ),
        role(
            CONTRIBUTOR,
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
            READER,
            "Reader",
            "View all resources, but does not allow you to make any changes.",
            &["*/read"],
            &[],
            &[],
        ),
        role(
            MANAGED_IDENTITY_OPERATOR,
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
            SESSION_EXECUTOR,
            "Azure ContainerApps Session Executor",
            "Grants permission to execute sessions in a session pool.",
            &["Microsoft.App/sessionPools/sessions/generatesessions/action"],
            &[],
            &["Microsoft.App/sessionPools/interpreters/execute/action"],
        ),
        role(
            SIGNALR_APP_SERVER,
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
            SIGNALR_REST_API_OWNER,
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
            SIGNALR_REST_API_READER,
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
            SIGNALR_SERVICE_OWNER,
            "SignalR Service Owner",
            "Full access to Azure SignalR Service REST APIs",
            &[],
            &[],
            &["Microsoft.SignalRService/SignalR/*"],
        ),
        role(
            SIGNALR_ACCESS_KEY_READER,
            "SignalR AccessKey Reader",
            "Read SignalR Service Access Keys",
            &[
                "Microsoft.SignalRService/*/read",
                "Microsoft.SignalRService/SignalR/listkeys/action",
            ],
            &[],
            &[],
        ),
    ]
}

/// A built-in role by name, ignoring case (`"contributor"`, `"SignalR App Server"`).
pub fn builtin_by_name(name: &str) -> Option<RoleDefinition> {
    BUILTINS
        .iter()
        .find(|r| r.role_name.eq_ignore_ascii_case(name.trim()))
        .cloned()
}
