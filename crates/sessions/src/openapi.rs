//! The sessions service's part of the OpenAPI document: the session data plane it serves
//! ([`crate::api`]) and the description of the resource type its provider registers
//! ([`crate::provider`]).

use cloister_arm::openapi::{ErrorShape, Op};
use cloister_arm::registry::{ProviderSpec, TypeDoc};
use serde_json::json;

/// The operations of [`crate::api::router`], under [`crate::api::PREFIX`].
pub fn ops() -> Vec<Op> {
    let pool = format!(
        "{}/subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroupName}}/sessionPools/{{name}}",
        crate::api::PREFIX
    );
    let op = |method: &str, tail: &str, summary: &str| {
        Op::new(
            method,
            &format!("{pool}{tail}"),
            "Session data plane",
            summary,
        )
        .errors(ErrorShape::Arm)
        .auth()
    };
    vec![
        op(
            "post",
            "/code/execute",
            "Run code (2024-02-02-preview, 2024-08-02-preview): {properties:{status,stdout,stderr,result}}; NodeLTS pools add executionResult, Shell pools take shellCommand and add exitCode",
        ),
        op(
            "post",
            "/files/upload",
            "Upload files (multipart 'file'; legacy shape)",
        ),
        op(
            "get",
            "/files",
            "List files in /mnt/data (legacy or current shape by api-version; path, recursive)",
        ),
        op("post", "/files", "Upload a file (multipart 'file'; path)"),
        op(
            "get",
            "/files/content/{fileName}",
            "Download a file (legacy)",
        ),
        op("get", "/files/{fileName}", "File metadata"),
        op("delete", "/files/{fileName}", "Delete a file"),
        op("get", "/files/{fileName}/content", "Download a file"),
        op(
            "post",
            "/executions",
            "Run code synchronously or asynchronously (2024-10-02-preview and later); a Shell pool takes shellCommand and answers the exit code as status (string) and exitCode",
        ),
        op(
            "get",
            "/executions/{executionId}",
            "An execution's status and result",
        ),
        op("get", "/session", "The session of an identifier"),
        op("delete", "/session", "Delete a session now"),
        op("get", "/listSessions", "Sessions of the pool (skip)"),
        op("get", "/metadata", "Runtime and pre-installed packages"),
        op(
            "post",
            "/.management/getSession",
            "The session of an identifier (expiresAt)",
        ),
        op(
            "post",
            "/.management/listSessions",
            "Sessions of the pool ({value,count,nextLink})",
        ),
        op(
            "post",
            "/.management/stopSession",
            "Delete a session now (text/plain answer)",
        ),
    ]
}

/// Describes the types of [`crate::arm::arm_provider`].
pub fn describe(p: ProviderSpec) -> ProviderSpec {
    p.describe(
        "sessionPools",
        TypeDoc::new()
            .noun("session pool")
            .tag("Session pools")
            .summary(
                "put",
                "Create or update a session pool (containerType PythonLTS, Shell, NodeLTS or, when the server runs containers, CustomContainer with customContainerTemplate, secrets and runtimeClassName; scaleConfiguration, dynamicPoolConfiguration in both forms, sessionNetworkConfiguration, managedIdentitySettings; ARM's identity block); returns poolManagementEndpoint",
            )
            .summary("delete", "Delete a session pool and every session in it")
            .summary("list", "Session pools of a resource group")
            .summary("listBySubscription", "Session pools of a subscription")
            .properties(json!({"type": "object", "properties": {
                "poolManagementType": {"type": "string"},
                "containerType": {"type": "string", "enum": ["PythonLTS", "Shell", "NodeLTS", "CustomContainer"]},
                "customContainerTemplate": {"type": "object", "description": "CustomContainer pools: containers[1]{image, name, command, args, env[{name, value|secretRef}], resources{cpu, memory}, probes[]}, ingress{targetPort}, registryCredentials{server, username, passwordSecretRef}", "properties": {
                    "containers": {"type": "array", "items": {"type": "object"}},
                    "ingress": {"type": "object", "properties": {"targetPort": {"type": "integer"}}},
                    "registryCredentials": {"type": "object"},
                }},
                "secrets": {"type": "array", "description": "{name, value}; values are write-only (GET returns names)", "items": {"type": "object", "properties": {"name": {"type": "string"}, "value": {"type": "string", "writeOnly": true}}}},
                "runtimeClassName": {"type": "string", "description": "Cloister extension for CustomContainer pools: runc (default), runsc or gvisor"},
                "templateUpdateStatus": {"type": "object", "readOnly": true},
                "scaleConfiguration": {"type": "object", "properties": {
                    "maxConcurrentSessions": {"type": "integer"},
                    "readySessionInstances": {"type": "integer"},
                }},
                "dynamicPoolConfiguration": {"type": "object"},
                "sessionNetworkConfiguration": {"type": "object", "properties": {"status": {"type": "string"}}},
                "managedIdentitySettings": {"type": "array", "items": {"type": "object"}},
                "poolManagementEndpoint": {"type": "string", "readOnly": true},
                "nodeCount": {"type": "integer", "readOnly": true},
                "provisioningState": {"type": "string", "readOnly": true},
            }})),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_registered_type_is_described() {
        let p = super::describe(crate::arm::arm_provider());
        for t in &p.types {
            assert!(t.doc.noun.is_some(), "{} has no description", t.path);
        }
        let ops = super::ops();
        assert!(ops.iter().all(|o| o.path.starts_with("/dynamicsessions/")));
    }
}
