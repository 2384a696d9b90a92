"""openapi: reading the admin API's OpenAPI document in tests: JSON pointers, $refs, operations,
and jsonschema validation against the document's schemas (date-time checked as RFC 3339).

Used by the tests of the document itself (tests/admin/test_openapi_document_is_well_formed.py)
and of every answer of the real app against it (tests/e2e/test_openapi_document.py).
"""

from __future__ import annotations

import re
from datetime import datetime

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOC_URI = "urn:cutover:openapi"
SHARED = {404: "NotFound", 405: "MethodNotAllowed", 500: "Internal"}   # components.responses
FORMATS = FormatChecker()
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})")


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value) -> bool:
    """is_date_time: RFC 3339 §5.6 date-time (jsonschema checks it only with an extra package)."""
    if not isinstance(value, str):
        return True
    if not RFC3339.fullmatch(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def escape(token: str) -> str:
    """escape: one JSON pointer token (RFC 6901 §3)."""
    return token.replace("~", "~0").replace("/", "~1")


def resolve(doc: dict, pointer: str):
    """resolve: the value at a JSON pointer ("/paths/~1v1~1status/get") inside ``doc``."""
    value = doc
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        value = value[int(token)] if isinstance(value, list) else value[token]
    return value


def follow(doc: dict, pointer: str) -> str:
    """follow: ``pointer``, or where the $ref found there points (local refs only)."""
    value = resolve(doc, pointer)
    while isinstance(value, dict) and "$ref" in value:
        ref = value["$ref"]
        assert ref.startswith("#/"), ref
        pointer = ref[1:]
        value = resolve(doc, pointer)
    return pointer


def schema_errors(doc: dict, pointer: str, instance) -> list[str]:
    """schema_errors: what is wrong with ``instance`` under the schema at ``pointer``."""
    registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(doc))
    validator = Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry,
                                     format_checker=FORMATS)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def operations(doc: dict):
    """operations: (path, method, operation) for every operation of the document."""
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def refs(value):
    """refs: every $ref anywhere in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def schema_pointers(doc: dict):
    """schema_pointers: the pointer of every schema object the document holds (not nested ones)."""
    for name in doc["components"]["schemas"]:
        yield f"/components/schemas/{escape(name)}"
    for name, response in doc["components"].get("responses", {}).items():
        for media in response.get("content", {}):
            yield f"/components/responses/{escape(name)}/content/{escape(media)}/schema"
        for header in response.get("headers", {}):
            yield f"/components/responses/{escape(name)}/headers/{escape(header)}/schema"
    for name in doc["components"].get("parameters", {}):
        yield f"/components/parameters/{escape(name)}/schema"
    for path, method, op in operations(doc):
        base = f"/paths/{escape(path)}/{method}"
        for index, parameter in enumerate(op.get("parameters", [])):
            if "$ref" not in parameter:
                yield f"{base}/parameters/{index}/schema"
        for media in op.get("requestBody", {}).get("content", {}):
            yield f"{base}/requestBody/content/{escape(media)}/schema"
        for code, response in op["responses"].items():
            for media in response.get("content", {}):
                yield f"{base}/responses/{code}/content/{escape(media)}/schema"
            for name in response.get("headers", {}):
                yield f"{base}/responses/{code}/headers/{escape(name)}/schema"


def parameters(doc: dict, path: str, method: str) -> list[dict]:
    """parameters: an operation's parameter objects, $refs followed."""
    op = doc["paths"][path][method]
    base = f"/paths/{escape(path)}/{method}/parameters"
    return [resolve(doc, follow(doc, f"{base}/{index}")) for index in range(len(op.get("parameters", [])))]
