"""LangChain's SessionsPythonREPLTool (PyPI langchain-azure-dynamic-sessions), unchanged, runs
code in a Cloister session pool. Its default DefaultAzureCredential gets the token from
Cloister's managed-identity endpoint (through `cloister run --identity`), with no secret."""
import os
import subprocess
import uuid

from conftest import BIN, clean_env, run_py

EXECUTOR = "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0"

LANGCHAIN = r"""
import io, json, warnings
warnings.simplefilter("ignore")
from langchain_azure_dynamic_sessions import SessionsPythonREPLTool
tool = SessionsPythonREPLTool(pool_management_endpoint=%(ep)r)
out = {}
out["first"] = tool.execute("x = 6\nx * 7")
out["state"] = tool.execute("x + 1")
out["error"] = tool.execute("1/0")
meta = tool.upload_file(data=io.BytesIO(b"a,b\n1,2\n"), remote_file_path="data.csv")
out["upload"] = [meta.filename, meta.size_in_bytes]
out["read_back"] = tool.execute("import pandas as pd\npd.read_csv('/mnt/data/data.csv')['b'].sum()")
tool.execute("open('/mnt/data/made.txt', 'w').write('from the session')")
out["files"] = sorted(f.filename for f in tool.list_files())
out["download"] = tool.download_file(remote_file_path="made.txt").read().decode()
out["plot"] = tool.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()")
out["run"] = json.loads(tool.invoke("print('through invoke')"))
print(json.dumps(out))
"""


def test_sessions_python_repl_tool(server, tmp_path):
    rg = "lc" + uuid.uuid4().hex[:6]
    server.call("PUT", f"/subscriptions/{server.sub}/resourcegroups/{rg}?api-version=2021-04-01", {"location": "local"})
    pool_id = f"/subscriptions/{server.sub}/resourceGroups/{rg}/providers/Microsoft.App/sessionPools/lcpool"
    pool = server.call("PUT", pool_id + "?api-version=2025-07-01", {"location": "local", "properties": {
        "containerType": "PythonLTS", "poolManagementType": "Dynamic",
        "scaleConfiguration": {"maxConcurrentSessions": 5, "readySessionInstances": 1},
        "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300}}}})
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
    out = run_py(LANGCHAIN % {"ep": endpoint}, env, args=[BIN, "run", "--identity", "agent", "--"])
    assert out["first"]["status"] == "Success"
    assert out["first"]["result"] == 42
    assert out["state"]["result"] == 7
    assert out["error"]["status"] == "Failure" and "ZeroDivisionError" in out["error"]["stderr"]
    assert out["upload"] == ["data.csv", 8]
    assert out["read_back"]["result"] == 2
    assert out["files"] == ["data.csv", "made.txt"]
    assert out["download"] == "from the session"
    img = out["plot"]["result"]
    assert isinstance(img, dict), out["plot"]["stderr"]
    assert img["type"] == "image" and img["format"] == "png"
    import base64
    assert base64.b64decode(img["base64_data"]).startswith(b"\x89PNG")
    assert out["run"]["stdout"] == "through invoke\n"
