"""LangChain's SessionsBashTool and its deepagents backend SessionsBashBackend (PyPI
langchain-azure-dynamic-sessions, with deepagents 0.6), unchanged, run shell commands in a Cloister
Shell session pool. Their default DefaultAzureCredential gets the token from Cloister's
managed-identity endpoint (through `cloister run --identity`), with no secret."""
import os
import subprocess
import uuid

from conftest import BIN, clean_env, run_py

EXECUTOR = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0"

BASH = r"""
import json, warnings
warnings.simplefilter("ignore")
from langchain_azure_dynamic_sessions import SessionsBashTool
from langchain_azure_dynamic_sessions.backends.sessions import SessionsBashBackend
tool = SessionsBashTool(pool_management_endpoint=%(ep)r)
out = {}
out["hello"] = json.loads(tool.invoke("echo hello"))
out["state1"] = json.loads(tool.invoke("mkdir -p work && cd work && export GREETING=hi"))
out["state2"] = json.loads(tool.invoke("echo $GREETING from $(pwd)"))
out["fail"] = json.loads(tool.invoke("ls /nope"))
out["raw"] = tool.execute("exit 3")
out["sanitized"] = json.loads(tool.invoke("```bash\necho fenced\n```"))
be = SessionsBashBackend(%(ep)r, timeout=60)
out["exec"] = [be.execute("echo $((6 * 7))").output, be.execute("false").exit_code]
w = be.write("/mnt/data/notes/a.txt", "alpha\nbeta\n")
out["write"] = [w.path, w.error]
out["write_again"] = be.write("/mnt/data/notes/a.txt", "x").error
out["read"] = be.read("/mnt/data/notes/a.txt")
e = be.edit("/mnt/data/notes/a.txt", "beta", "gamma")
out["edit"] = [e.error, e.occurrences]
out["edit_missing"] = be.edit("/mnt/data/notes/a.txt", "nothere", "x").error
out["after_edit"] = be.read("/mnt/data/notes/a.txt")
out["ls"] = sorted((i["path"], i["is_dir"]) for i in be.ls_info("/mnt/data/notes"))
out["glob"] = sorted(i["path"] for i in be.glob_info("*.txt", "/mnt/data/notes"))
up = be.upload_files([("/mnt/data/up.bin", b"\x00\x01binary")])
out["upload"] = [u.error for u in up]
out["uploaded_seen"] = be.execute("wc -c < /mnt/data/up.bin").output.strip()
down = be.download_files(["/mnt/data/up.bin", "/mnt/data/missing.bin"])
out["download"] = [down[0].content.hex(), down[1].error]
print(json.dumps(out))
"""


def test_sessions_bash_tool_and_backend(server, tmp_path):
    rg = "lcb" + uuid.uuid4().hex[:6]
    server.call("PUT", f"/subscriptions/{server.sub}/resourcegroups/{rg}?api-version=2021-04-01", {"location": "local"})
    pool_id = f"/subscriptions/{server.sub}/resourceGroups/{rg}/providers/Microsoft.App/sessionPools/shellpool"
    pool = server.call("PUT", pool_id + "?api-version=2025-02-02-preview", {"location": "local", "properties": {
        "containerType": "Shell", "poolManagementType": "Dynamic",
        "scaleConfiguration": {"maxConcurrentSessions": 5, "readySessionInstances": 1},
        "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300}},
        "sessionNetworkConfiguration": {"status": "EgressDisabled"}}})
    assert pool["properties"]["containerType"] == "Shell"
    endpoint = pool["properties"]["poolManagementEndpoint"]
    uami = f"/subscriptions/{server.sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/agent"
    ident = server.call("PUT", uami + "?api-version=2023-01-31", {"location": "local"})
    server.call("PUT", f"{pool_id}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}?api-version=2022-04-01",
                {"properties": {"roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{EXECUTOR}",
                                "principalId": ident["properties"]["principalId"]}})
    cfg = tmp_path / "cli"
    env = clean_env(CLOISTER_CONFIG_DIR=str(cfg), REQUESTS_CA_BUNDLE=server.ca)
    subprocess.run([BIN, "login", "--bootstrap", os.path.join(server.dir, "bootstrap.json")], env=env, check=True,
                   capture_output=True)
    out = run_py(BASH % {"ep": endpoint}, env, args=[BIN, "run", "--identity", "agent", "--"])
    assert out["hello"] == {"stdout": "hello\n", "stderr": "", "exitCode": 0}
    assert out["state1"]["exitCode"] == 0
    assert out["state2"]["stdout"] == "hi from /mnt/data/work\n"
    assert out["fail"]["exitCode"] == 2 and "No such file" in out["fail"]["stderr"]
    assert out["raw"]["status"] == "3" and out["raw"]["exitCode"] == 3
    assert out["raw"]["result"]["stdout"] == ""
    assert out["sanitized"]["stdout"] == "fenced\n"
    assert out["exec"] == ["42\n", 1]
    assert out["write"] == ["/mnt/data/notes/a.txt", None]
    assert "already exists" in out["write_again"]
    assert out["read"].split("\n") == ["     1\talpha", "     2\tbeta"]
    assert out["edit"] == [None, 1]
    assert "not found" in out["edit_missing"]
    assert out["after_edit"].endswith("gamma")
    assert out["ls"] == [["a.txt", False]]
    assert out["glob"] == ["a.txt"]
    assert out["upload"] == [None]
    assert out["uploaded_seen"] == "8"
    assert out["download"] == [b"\x00\x01binary".hex(), "file_not_found"]
