"""The admin API's OpenAPI document (SPEC §7) itself: well-formed OpenAPI 3.1 (every schema a
valid JSON Schema 2020-12 one), versioned as the package, with its request schemas taken from
admin/requests.py, the table the API validates bodies and queries with. That it describes what
the real app answers is tests/e2e/test_openapi_document.py.
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest
import tomllib
from jsonschema import Draft202012Validator

from admin import requests as request_table
from admin.openapi import openapi_document
from tests.support.openapi import (METHODS, escape, follow, operations, parameters, refs, resolve, schema_errors,
                                   schema_pointers)
from tests.support.paths import ROOT


def package_version() -> str:
    try:
        return importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        pyproject = ROOT / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


# ----------------------------------------------------------------- the document itself


def test_the_document_is_well_formed_openapi_3_1():
    doc = openapi_document()
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert doc["info"]["title"] and isinstance(doc["info"]["title"], str)
    schemes = doc["components"]["securitySchemes"]
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    seen_ids = set()
    for path, method, op in operations(doc):
        where = f"{method.upper()} {path}"
        assert path.startswith("/"), path
        assert set(doc["paths"][path]) <= set(METHODS) | {"summary", "description", "parameters"}, path
        assert re.fullmatch(r"[a-z][A-Za-z0-9]+", op["operationId"]), where
        assert op["operationId"] not in seen_ids, where
        seen_ids.add(op["operationId"])
        assert isinstance(op["summary"], str) and op["summary"], where
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes), where
        for parameter in parameters(doc, path, method):
            assert parameter["in"] in ("query", "header", "path", "cookie"), where
            assert isinstance(parameter["name"], str) and "schema" in parameter, where
            assert isinstance(parameter.get("description"), str), (where, parameter["name"])
        if "requestBody" in op:
            assert op["requestBody"]["content"], where
        assert op["responses"], where
        for code in op["responses"]:
            assert re.fullmatch(r"[1-5]\d\d", code), (where, code)
            response = resolve(doc, follow(doc, f"/paths/{escape(path)}/{method}/responses/{code}"))
            assert isinstance(response["description"], str) and response["description"], (where, code)
    for name, response in doc["components"]["responses"].items():
        assert response["description"] and response["content"], name
    for ref in refs(doc):
        assert ref.startswith("#/"), ref
        resolve(doc, ref[1:])                        # a dangling $ref raises here
    for pointer in schema_pointers(doc):
        schema = resolve(doc, pointer)
        Draft202012Validator.check_schema(schema)     # JSON Schema 2020-12, the 3.1 dialect
        assert "nullable" not in str(schema), pointer  # OpenAPI 3.0's keyword; 3.1 spells type: [x, "null"]


def test_info_version_is_the_package_version():
    assert openapi_document()["info"]["version"] == package_version()


def test_operation_ids_name_method_and_endpoint():
    ids = {(path, method): op["operationId"] for path, method, op in operations(openapi_document())}
    assert ids[("/v1/status", "get")] == "getStatus"
    assert ids[("/v1/flip", "post")] == "postFlip"
    assert ids[("/v1/history", "get")] == "getHistory"
    assert ids[("/v1/schema/attest", "post")] == "postSchemaAttest"


def test_the_request_schemas_are_the_table_the_api_validates_with():
    doc = openapi_document()
    assert request_table.ENDPOINTS, "the request table is empty"
    for endpoint in request_table.ENDPOINTS.values():
        op = doc["paths"][endpoint.path][endpoint.method.lower()]
        assert op["operationId"] == endpoint.operation_id
        assert op["summary"] == endpoint.summary
        if endpoint.body:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["additionalProperties"] is False
            assert set(schema["properties"]) == {f.name for f in endpoint.body}
            assert set(schema.get("required", [])) == {f.name for f in endpoint.body if f.required}
            for f in endpoint.body:
                assert schema["properties"][f.name] == f.schema(), f.name
        else:
            assert "requestBody" not in op or endpoint.method == "POST", endpoint.path
        query = {p["name"]: p for p in parameters(doc, endpoint.path, endpoint.method.lower())
                 if p["in"] == "query"}
        assert set(query) == {f.name for f in endpoint.query}, endpoint.path
        for f in endpoint.query:
            assert query[f.name]["schema"] == f.schema() and query[f.name]["required"] == f.required


@pytest.mark.parametrize(("kind", "good", "bad"), [
    ("Status", None, {"surprise": 1}),
    ("HistoryEvent", {"at": "2024-05-01T12:00:00.000Z", "action": "lock", "from": "blue", "to": "blue",
                      "generation": 1, "reason": None}, {"surprise": 1}),
    ("Error", {"error": "no", "code": "locked"}, {"surprise": 1}),
    ("HistoryEvent", {"at": "2024-05-01T12:00:00.000Z", "action": "lock", "from": "blue", "to": "blue",
                      "generation": 1, "reason": None}, {"at": "2024-05-01 12:00"}),
])
def test_an_undocumented_field_fails_validation(kind, good, bad):
    doc = openapi_document()
    schema = doc["components"]["schemas"][kind]
    assert schema["additionalProperties"] is False
    if good is not None:
        assert schema_errors(doc, f"/components/schemas/{kind}", good) == []
        assert schema_errors(doc, f"/components/schemas/{kind}", {**good, **bad})
