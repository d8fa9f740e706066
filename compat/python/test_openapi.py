"""The served OpenAPI document validates as OpenAPI 3.1 with openapi-spec-validator (the
reference validator of the Python OpenAPI tools), and names the registry's resource types."""
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator, validate


def test_openapi_document_validates(server):
    doc = requests.get(server.url("/openapi.json"), verify=server.ca).json()
    assert doc["openapi"] == "3.1.0"
    errors = [str(e) for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert not errors, "\n".join(errors[:20])
    validate(doc)
    pool = ("/subscriptions/{subscriptionId}/resourcegroups/{resourceGroupName}"
            "/providers/Microsoft.App/sessionPools/{name}")
    assert set(doc["paths"][pool]) >= {"get", "put", "patch", "delete", "head"}
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
