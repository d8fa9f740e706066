//! The az-shaped CLI against a running server.

mod common;
use common::*;
use serde_json::Value;

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test]
async fn az_shaped_commands() {
    let s = Server::start().await;
    let boot = s.data_dir().join("bootstrap.json");
    let (c, out, err) = s.cli(&["login", "--bootstrap", boot.to_str().unwrap()]);
    assert_eq!(c, 0, "{out} {err}");
    assert_eq!(json_of(&out)[0]["id"], s.sub());
    let (c, out, err) = s.cli(&["group", "create", "-n", "cli-rg", "-l", "local"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(json_of(&out)["name"], "cli-rg");
    let (c, out, err) = s.cli(&["identity", "create", "-n", "cli-id", "-g", "cli-rg"]);
    assert_eq!(c, 0, "{err}");
    let ident = json_of(&out);
    assert!(ident["clientId"].is_string() && ident["principalId"].is_string());
    let (c, out, _) = s.cli(&["identity", "show", "-n", "cli-id", "-g", "cli-rg"]);
    assert_eq!(c, 0);
    assert_eq!(json_of(&out)["clientId"], ident["clientId"]);
    let scope = format!("/subscriptions/{}/resourceGroups/cli-rg", s.sub());
    let (c, out, err) = s.cli(&[
        "ad",
        "sp",
        "create-for-rbac",
        "-n",
        "cli-sp",
        "--role",
        "Reader",
        "--scopes",
        &scope,
    ]);
    assert_eq!(c, 0, "{err}");
    let sp = json_of(&out);
    assert!(sp["password"].is_string() && sp["appId"].is_string());
    assert_eq!(sp["tenant"], s.tenant());
    let (c, out, err) = s.cli(&[
        "role",
        "assignment",
        "create",
        "--role",
        "Managed Identity Operator",
        "--assignee",
        sp["appId"].as_str().unwrap(),
        "--scope",
        &scope,
    ]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(
        json_of(&out)["roleDefinitionName"],
        "Managed Identity Operator"
    );
    let (c, out, _) = s.cli(&[
        "role",
        "assignment",
        "list",
        "--scope",
        &scope,
        "--assignee",
        sp["appId"].as_str().unwrap(),
    ]);
    assert_eq!(c, 0);
    let list = json_of(&out);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["roleDefinitionName"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Reader") && names.contains(&"Managed Identity Operator"),
        "{names:?}"
    );
    // Table output.
    let (c, out, _) = s.cli(&[
        "role",
        "assignment",
        "list",
        "--scope",
        &scope,
        "-o",
        "table",
    ]);
    assert_eq!(c, 0);
    assert!(
        out.lines().next().unwrap().contains("RoleDefinitionName"),
        "{out}"
    );
    // Custom role definitions.
    let def = format!(
        r#"{{"Name": "Widget Operator", "Description": "d", "Actions": ["Contoso.Widgets/*"], "AssignableScopes": ["/subscriptions/{}"]}}"#,
        s.sub()
    );
    let (c, _, err) = s.cli(&["role", "definition", "create", "--role-definition", &def]);
    assert_eq!(c, 0, "{err}");
    let (c, out, _) = s.cli(&["role", "definition", "list", "--custom-role-only"]);
    assert_eq!(c, 0);
    assert_eq!(
        json_of(&out)[0]["properties"]["roleName"],
        "Widget Operator"
    );
    // Tokens in az's shape.
    let (c, out, _) = s.cli(&[
        "account",
        "get-access-token",
        "--resource",
        "https://dynamicsessions.io",
    ]);
    assert_eq!(c, 0);
    let t = json_of(&out);
    for k in [
        "accessToken",
        "expiresOn",
        "expires_on",
        "tenant",
        "tokenType",
    ] {
        assert!(!t[k].is_null(), "{k} missing: {t}");
    }
    assert_eq!(
        claims(t["accessToken"].as_str().unwrap())["aud"],
        "https://dynamicsessions.io"
    );
    // Delete the assignment.
    let (c, _, err) = s.cli(&[
        "role",
        "assignment",
        "delete",
        "--assignee",
        sp["appId"].as_str().unwrap(),
        "--role",
        "Reader",
        "--scope",
        &scope,
    ]);
    assert_eq!(c, 0, "{err}");
    // A second identity, created and deleted.
    let (c, _, err) = s.cli(&["identity", "create", "-n", "short-lived", "-g", "cli-rg"]);
    assert_eq!(c, 0, "{err}");
    let (c, out, _) = s.cli(&["identity", "list", "-g", "cli-rg", "-o", "table"]);
    assert_eq!(c, 0);
    assert!(
        out.contains("short-lived") && out.contains("cli-id"),
        "{out}"
    );
    let (c, _, err) = s.cli(&["identity", "delete", "-n", "short-lived", "-g", "cli-rg"]);
    assert_eq!(c, 0, "{err}");
    let (c, _, _) = s.cli(&["identity", "show", "-n", "short-lived", "-g", "cli-rg"]);
    assert_ne!(c, 0);
    // Errors exit non-zero with a message.
    let (c, _, err) = s.cli(&["identity", "show", "-n", "missing", "-g", "cli-rg"]);
    assert_ne!(c, 0);
    assert!(err.contains("ResourceNotFound"), "{err}");
    // cloister run as the service principal, which is a Managed Identity Operator on the RG.
    let (c, _, err) = s.cli(&[
        "login",
        "--service-principal",
        "-u",
        sp["appId"].as_str().unwrap(),
        "-p",
        sp["password"].as_str().unwrap(),
        "--tenant",
        &s.tenant(),
        "--authority",
        &format!("https://127.0.0.1:{}", s.port),
        "--ca-file",
        s.data_dir().join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let script = "import json,os,urllib.request;r=urllib.request.Request(os.environ['IDENTITY_ENDPOINT']+'?resource=https://vault.azure.net&api-version=2019-08-01',headers={'X-IDENTITY-HEADER':os.environ['IDENTITY_HEADER']});print(json.load(urllib.request.urlopen(r))['client_id'])";
    let (c, out, err) = s.cli(&["run", "--identity", "cli-id", "--", "python3", "-c", script]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out.trim(), ident["clientId"].as_str().unwrap());
    // The exit code of the command is passed through.
    let (c, _, _) = s.cli(&["run", "--identity", "cli-id", "--", "sh", "-c", "exit 7"]);
    assert_eq!(c, 7);
    // User login through the authorization-code flow.
    let (c, _, _) = s.cli(&["login", "--bootstrap", boot.to_str().unwrap()]);
    assert_eq!(c, 0);
    let (c, _, err) = s.cli(&[
        "ad",
        "user",
        "create",
        "--display-name",
        "Grace",
        "--user-principal-name",
        "grace@cloister.test",
        "--password",
        "a long password",
    ]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = s.cli(&[
        "login",
        "-u",
        "grace@cloister.test",
        "-p",
        "a long password",
        "--tenant",
        &s.tenant(),
        "--authority",
        &format!("https://127.0.0.1:{}", s.port),
        "--ca-file",
        s.data_dir().join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{err}");
    let (c, out, _) = s.cli(&["account", "get-access-token"]);
    assert_eq!(c, 0);
    assert_eq!(
        claims(json_of(&out)["accessToken"].as_str().unwrap())["upn"],
        "grace@cloister.test"
    );
    let (c, _, err) = s.cli(&[
        "login",
        "-u",
        "grace@cloister.test",
        "-p",
        "wrong",
        "--tenant",
        &s.tenant(),
        "--authority",
        &format!("https://127.0.0.1:{}", s.port),
        "--ca-file",
        s.data_dir().join("ca.pem").to_str().unwrap(),
    ]);
    assert_ne!(c, 0);
    assert!(err.contains("sign-in failed"), "{err}");
}

#[tokio::test]
async fn bootstrap_file_is_private_and_secrets_stay_out_of_logs() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start().await;
    let mode = std::fs::metadata(s.data_dir().join("bootstrap.json"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mode = std::fs::metadata(s.data_dir().join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Secrets are not readable back through the API.
    let admin = s.admin_token().await;
    let (_, apps) = s.call(&admin, "GET", "/v1.0/applications", None).await;
    assert!(!apps.to_string().contains(&s.admin_secret()));
    assert!(apps["value"][0]["passwordCredentials"][0]["secretText"].is_null());
    // Nor stored in the clear.
    let db = std::fs::read(s.data_dir().join("cloister.db")).unwrap_or_default();
    if !db.is_empty() {
        let secret = s.admin_secret();
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "client secret stored in plaintext"
        );
    }
}

#[tokio::test]
async fn containerapp_sessionpool_and_code_interpreter_commands() {
    let s = Server::start().await;
    let boot = s.data_dir().join("bootstrap.json");
    let (c, _, err) = s.cli(&["login", "--bootstrap", boot.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = s.cli(&["group", "create", "-n", "sp-rg"]);
    assert_eq!(c, 0, "{err}");
    let (c, out, err) = s.cli(&[
        "containerapp",
        "sessionpool",
        "create",
        "-n",
        "clipool",
        "-g",
        "sp-rg",
        "--container-type",
        "PythonLTS",
        "--max-sessions",
        "4",
        "--ready-sessions",
        "1",
        "--cooldown-period",
        "600",
        "--network-status",
        "EgressDisabled",
        "--mi-system-assigned",
    ]);
    assert_eq!(c, 0, "{err}");
    let pool = json_of(&out);
    let pool_id = pool["id"].as_str().unwrap().to_string();
    assert_eq!(
        pool["properties"]["scaleConfiguration"]["maxConcurrentSessions"],
        4
    );
    assert_eq!(pool["identity"]["type"], "SystemAssigned");
    assert!(pool["properties"]["poolManagementEndpoint"].is_string());
    let (c, out, err) = s.cli(&[
        "containerapp",
        "sessionpool",
        "update",
        "-n",
        "clipool",
        "-g",
        "sp-rg",
        "--max-sessions",
        "6",
    ]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(
        json_of(&out)["properties"]["scaleConfiguration"]["maxConcurrentSessions"],
        6
    );
    assert_eq!(
        json_of(&out)["properties"]["scaleConfiguration"]["readySessionInstances"],
        1
    );
    let (c, out, _) = s.cli(&["containerapp", "sessionpool", "list", "-g", "sp-rg"]);
    assert_eq!(c, 0);
    assert_eq!(json_of(&out).as_array().unwrap().len(), 1);
    let (c, out, _) = s.cli(&[
        "containerapp",
        "sessionpool",
        "show",
        "-n",
        "clipool",
        "-g",
        "sp-rg",
    ]);
    assert_eq!(c, 0);
    assert_eq!(json_of(&out)["name"], "clipool");
    // Bad input is refused with ARM's message.
    let (c, _, err) = s.cli(&[
        "containerapp",
        "sessionpool",
        "create",
        "-n",
        "bad",
        "-g",
        "sp-rg",
        "--container-type",
        "CustomContainer",
    ]);
    assert_ne!(c, 0);
    // As the Azure CLI: a custom pool needs an image and a target port before anything is sent.
    assert!(err.contains("--image is required"), "{err}");
    // Executing needs the Session Executor role, as on Azure.
    let sess = ["--identifier", "cli-user", "-n", "clipool", "-g", "sp-rg"];
    let exec = |code: &str| {
        let mut a = vec![
            "containerapp",
            "session",
            "code-interpreter",
            "execute",
            "--code",
            code,
        ];
        a.extend(sess);
        s.cli(&a)
    };
    let (c, _, err) = exec("1+1");
    assert_ne!(c, 0);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (c, _, err) = s.cli(&[
        "role",
        "assignment",
        "create",
        "--role",
        "Azure ContainerApps Session Executor",
        "--assignee",
        s.admin_id().as_str(),
        "--scope",
        &pool_id,
    ]);
    assert_eq!(c, 0, "{err}");
    let (c, out, err) = exec("x = 20\nx + 22");
    assert_eq!(c, 0, "{err}");
    let r = json_of(&out);
    assert_eq!(r["status"], "Succeeded");
    assert_eq!(r["result"]["executionResult"], "42");
    // Files.
    let local = s.data_dir().join("upload-me.txt");
    std::fs::write(&local, "uploaded by the cli").unwrap();
    let mut a = vec![
        "containerapp",
        "session",
        "code-interpreter",
        "upload-file",
        "--file-path",
        local.to_str().unwrap(),
    ];
    a.extend(sess);
    let (c, out, err) = s.cli(&a);
    assert_eq!(c, 0, "{err}");
    assert_eq!(json_of(&out)["name"], "upload-me.txt");
    let mut a = vec!["containerapp", "session", "code-interpreter", "list-files"];
    a.extend(sess);
    let (c, out, err) = s.cli(&a);
    assert_eq!(c, 0, "{err}");
    assert_eq!(json_of(&out)[0]["name"], "upload-me.txt");
    let mut a = vec![
        "containerapp",
        "session",
        "code-interpreter",
        "show-file-content",
        "--filename",
        "upload-me.txt",
    ];
    a.extend(sess);
    let (c, out, err) = s.cli(&a);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out, "uploaded by the cli");
    let mut a = vec![
        "containerapp",
        "session",
        "code-interpreter",
        "delete-file",
        "--filename",
        "upload-me.txt",
    ];
    a.extend(sess);
    let (c, _, err) = s.cli(&a);
    assert_eq!(c, 0, "{err}");
    let mut a = vec![
        "containerapp",
        "session",
        "code-interpreter",
        "show-file",
        "--filename",
        "upload-me.txt",
    ];
    a.extend(sess);
    let (c, _, err) = s.cli(&a);
    assert_ne!(c, 0);
    assert!(err.contains("FileNotFound"), "{err}");
    let (c, _, err) = s.cli(&[
        "containerapp",
        "sessionpool",
        "delete",
        "-n",
        "clipool",
        "-g",
        "sp-rg",
    ]);
    assert_eq!(c, 0, "{err}");
    let (c, _, _) = s.cli(&[
        "containerapp",
        "sessionpool",
        "show",
        "-n",
        "clipool",
        "-g",
        "sp-rg",
    ]);
    assert_ne!(c, 0);
}
