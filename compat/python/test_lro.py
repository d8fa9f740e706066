"""Long-running operations through the real pollers: azure-mgmt-resource's
`GenericResourcesOperations` (`begin_create_or_update_by_id`, `begin_delete_by_id`), which
poll with azure-mgmt-core's `ARMPolling` inside azure-core's `LROPoller`, and the same poller
driven by hand over an `ARMPipelineClient`, all authenticated with azure-identity against
Cloister. The server is started with a plain long-running type (`Contoso.Slow/things:lro`)
whose work waits `properties.provisionSeconds` and fails with `properties.fail`."""
import os

import pytest

from conftest import Server, clean_env, run_py

PRELUDE = """
import json
from azure.identity import ClientSecretCredential
from azure.core.exceptions import HttpResponseError
cred = ClientSecretCredential("{tenant}", "{client}", "{secret}", authority="{authority}",
                              disable_instance_discovery=True)
scopes = ["{authority}/.default"]
"""

GENERIC = PRELUDE + """
from azure.mgmt.resource.resources import ResourceManagementClient
client = ResourceManagementClient(cred, "{sub}", base_url="{authority}", credential_scopes=scopes)
rid = "{rid}"
out = {{}}
poller = client.resources.begin_create_or_update_by_id(
    rid, {{"location": "local", "properties": {props}}}, api_version="2024-01-01")
out["initial"] = poller.status()
try:
    res = poller.result(timeout=60)
    out["result"] = res.as_dict() if hasattr(res, "as_dict") else dict(res)
    out["status"] = poller.status()
    got = client.resources.get_by_id(rid, api_version="2024-01-01")
    out["get"] = got.as_dict() if hasattr(got, "as_dict") else dict(got)
    if {delete}:
        d = client.resources.begin_delete_by_id(rid, api_version="2024-01-01")
        d.result(timeout=60)
        out["deleted"] = d.status()
        try:
            client.resources.get_by_id(rid, api_version="2024-01-01")
            out["after_delete"] = 200
        except HttpResponseError as e:
            out["after_delete"] = e.status_code
except HttpResponseError as e:
    out["error"] = {{"type": type(e).__name__, "code": e.error.code if e.error else None,
                    "message": e.message, "status": poller.status()}}
print(json.dumps(out, default=str))
"""

PIPELINE = PRELUDE + """
from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RequestIdPolicy
from azure.core.polling import LROPoller
from azure.core.rest import HttpRequest
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.polling.arm_polling import ARMPolling
client = ARMPipelineClient(base_url="{authority}", policies=[
    RequestIdPolicy(), BearerTokenCredentialPolicy(cred, *scopes)])
req = HttpRequest("PUT", "{authority}{rid}?api-version=2024-01-01",
                  json={{"location": "local", "properties": {props}}})
initial = client.send_request(req, _return_pipeline_response=True)
first = {{"status": initial.http_response.status_code,
         "asyncop": initial.http_response.headers.get("Azure-AsyncOperation"),
         "location": initial.http_response.headers.get("Location")}}
poller = LROPoller(client, initial, lambda r: json.loads(r.http_response.text()),
                   ARMPolling(timeout=1))
res = poller.result(timeout=60)
print(json.dumps({{"first": first, "result": res, "status": poller.status()}}))
"""


@pytest.fixture(scope="module")
def slow():
    old = os.environ.get("CLOISTER_ARM_TYPES")
    os.environ["CLOISTER_ARM_TYPES"] = "Contoso.Slow/things:lro"
    try:
        s = Server()
    finally:
        if old is None:
            os.environ.pop("CLOISTER_ARM_TYPES", None)
        else:
            os.environ["CLOISTER_ARM_TYPES"] = old
    s.call("PUT", f"/subscriptions/{s.sub}/resourcegroups/lro?api-version=2021-04-01", {"location": "local"})
    yield s
    s.stop()


def rid(server, name):
    return f"/subscriptions/{server.sub}/resourceGroups/lro/providers/Contoso.Slow/things/{name}"


def run(server, template, **kw):
    code = template.format(tenant=server.tenant, client=server.boot["clientId"],
                           secret=server.boot["clientSecret"], authority=server.authority,
                           sub=server.sub, **kw)
    return run_py(code, clean_env(REQUESTS_CA_BUNDLE=server.ca))


def test_generic_resource_create_polls_to_succeeded_and_delete_removes_it(slow):
    out = run(slow, GENERIC, rid=rid(slow, "ok").lstrip("/"),
              props='{"provisionSeconds": 2, "size": 3}', delete="True")
    assert "error" not in out, out
    assert out["initial"] == "InProgress"
    assert out["status"] == "Succeeded"
    assert out["result"]["properties"]["provisioningState"] == "Succeeded"
    assert out["result"]["properties"]["size"] == 3
    assert out["result"]["id"].lower() == rid(slow, "ok").lower()
    assert out["get"]["properties"]["provisioningState"] == "Succeeded"
    assert out["deleted"] == "Succeeded"
    assert out["after_delete"] == 404


def test_generic_resource_create_that_fails_raises_http_response_error(slow):
    out = run(slow, GENERIC, rid=rid(slow, "bad").lstrip("/"),
              props='{"provisionSeconds": 1, "fail": "the image did not start"}', delete="False")
    assert "error" in out, out
    assert out["error"]["type"] == "HttpResponseError"
    assert out["error"]["status"] == "Failed"
    assert out["error"]["code"] == "ProvisioningFailed"
    assert "the image did not start" in out["error"]["message"]


def test_lro_poller_with_arm_polling_over_an_arm_pipeline_client(slow):
    out = run(slow, PIPELINE, rid=rid(slow, "raw"), props='{"provisionSeconds": 1}')
    assert out["first"]["status"] == 201
    assert "/operationStatuses/" in out["first"]["asyncop"]
    assert "/operationResults/" in out["first"]["location"]
    assert out["status"] == "Succeeded"
    assert out["result"]["properties"]["provisioningState"] == "Succeeded"
