"""The admin API's OpenAPI document (SPEC §7) against the admin API's real answers.

The document served at /v1/openapi.json must be well-formed OpenAPI 3.1 (every schema a
valid JSON Schema 2020-12 one), name every route the aiohttp app registers, and describe
what the endpoints really answer: ``test_every_answer_of_every_route_matches_the_document``
drives every route on a real stack into each status its operation documents (200, 400, 401,
403 for the read token and for cross-site requests, 409, 412, 413, 415, 422 for a reused
Idempotency-Key, 503; /readyz's 503) and validates every body with jsonschema against the
document's schema for that path, method and status (404, 405 and 500 against the document's
shared responses). A field, status or route added without a document entry fails here, and
so does a documented status no test provokes. The request schemas come from admin/requests.py, the
table the API validates bodies and queries with.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import tomllib
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from admin import requests as request_table
from admin.jsonbody import MAX_BODY_BYTES
from admin.openapi import openapi_document
from admin.plane import Ack
from admin.state import FileStateStore, StateError
from adminapi import UNSET, Admin, session  # noqa: F401  (session is a fixture)

TOKEN = "t0ken"
READ_TOKEN = "r3ad"
JSON_TYPE = {"Content-Type": "application/json"}
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


def package_version() -> str:
    try:
        return importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


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


# ----------------------------------------------------------------- against the real app


class Probe:
    """Probe: calls the admin API, checks each answer against the document, remembers what it saw."""

    def __init__(self, doc: dict, api: Admin) -> None:
        self.doc = doc
        self.api = api
        self.seen: set[tuple[str, str, int]] = set()
        self.last_headers: dict = {}

    async def call(self, method: str, path: str, expect: int, body=UNSET, data=None, token=UNSET,
                   headers=None):
        """call: one request that must answer ``expect``, with a body the document describes."""
        status, payload, answer_headers = await self.api.call(method, path, body, data, token, headers)
        self.last_headers = answer_headers
        assert status == expect, (method, path, body, status, payload)
        self.check(method.lower(), path.split("?", 1)[0], status, payload, answer_headers)
        return payload

    def check(self, method: str, path: str, status: int, payload, headers) -> None:
        where = f"{method.upper()} {path} -> {status}"
        op = self.doc["paths"].get(path, {}).get(method)
        if op is not None and str(status) in op["responses"]:
            pointer = follow(self.doc, f"/paths/{escape(path)}/{method}/responses/{status}")
            self.seen.add((path, method, status))
        else:
            assert status in SHARED, f"{where}: the document does not list this answer"
            pointer = f"/components/responses/{SHARED[status]}"
        response = resolve(self.doc, pointer)
        media = headers.get("Content-Type", "").split(";")[0].strip()
        assert media in response["content"], (where, media, list(response["content"]))
        for name, header in response.get("headers", {}).items():
            if header.get("required"):
                assert name in headers, (where, name)
            if name in headers:
                pointer_of_header = f"{pointer}/headers/{escape(name)}/schema"
                assert not schema_errors(self.doc, pointer_of_header, headers[name]), (where, name)
        schema = f"{pointer}/content/{escape(media)}/schema"
        errors = schema_errors(self.doc, schema, payload)
        assert not errors, (where, payload, errors)


async def proxy_get(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            async with s.get(f"http://127.0.0.1:{port}{path}") as resp:
                await resp.read()
                return resp.status


async def set_failing(backend, on: bool) -> None:
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(5):
            async with s.post(f"http://{backend.address}/__fail?on={'1' if on else '0'}") as resp:
                assert resp.status == 200


@pytest.fixture
async def stack(make_stack):
    return await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN, "read_token": READ_TOKEN},
                            preview_listen="127.0.0.1:0",
                            analysis={"window": "200ms", "interval": "50ms", "min_requests": 1000})


async def test_every_registered_route_is_in_the_document_and_back(stack, session):
    api = Admin(session, stack.admin_port, token=TOKEN)
    status, doc, _ = await api.get("/v1/openapi.json")
    assert status == 200
    registered = set()
    for route in stack.admin.app.router.routes():
        method, path = route.method.lower(), route.resource.canonical
        if method == "head":
            method = "get"        # aiohttp answers HEAD on every GET route
        registered.add((path, method))
        assert path in doc["paths"] and method in doc["paths"][path], f"{method.upper()} {path} is undocumented"
    documented = {(path, method) for path, method, _ in operations(doc)}
    assert documented == registered


async def test_every_answer_of_every_route_matches_the_document(stack, session, backends, monkeypatch):
    api = Admin(session, stack.admin_port, token=TOKEN, timeout=10)
    status, doc, _ = await api.get("/v1/openapi.json")
    assert status == 200 and doc == openapi_document()
    probe = Probe(doc, api)
    call = probe.call
    mutations = [(path, op) for path, method, op in operations(doc) if method == "post"]

    # 401: every operation that needs the token, without it
    for path, method, op in operations(doc):
        if op.get("security", doc["security"]):
            await call(method.upper(), path, 401, token=None)
    # 404 / 405 / 500: the shared answers
    await call("GET", "/v1/nothing-here", 404)
    await call("GET", "/nothing-here", 404, token=None)
    await call("POST", "/v1/status", 405)
    await call("GET", "/v1/flip", 405)
    with monkeypatch.context() as m:
        m.setattr(stack.controller, "status", lambda: 1 / 0)
        await call("GET", "/v1/status", 500)

    # reading, with either token
    for token in (TOKEN, READ_TOKEN):
        await call("GET", "/v1/status", 200, token=token)
        await call("GET", "/v1/history", 200, token=token)
        await call("GET", "/v1/openapi.json", 200, token=token)
    await call("GET", "/metrics", 200, token=None)
    await call("GET", "/healthz", 200, token=None)
    await call("GET", "/readyz", 200, token=None)
    await call("GET", "/v1/history?limit=0", 400)
    await call("GET", "/v1/history?since=soon", 400)

    # every mutation's refusals of the request itself
    foreign_host = {"Host": "attacker.example"}
    foreign_origin = {"Origin": "http://attacker.example"}
    for path, _ in mutations:
        await call("POST", path, 400, body={"no_such_field": 1})
        await call("POST", path, 400, data=b"{not json", headers=JSON_TYPE)
        await call("POST", path, 400, body={}, headers={"Idempotency-Key": "has space"})
        await call("POST", path, 403, body={}, token=READ_TOKEN)
        await call("POST", path, 403, body={}, headers=foreign_origin)
        await call("POST", path, 403, body={}, headers=foreign_host)
        await call("POST", path, 413, data=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}", headers=JSON_TYPE)
        await call("POST", path, 415, data=b"{}", headers={"Content-Type": "text/plain"})
        # an Idempotency-Key used again with another body (the first answer, a 400, is remembered)
        key = {"Idempotency-Key": f"reused{path}"}
        await call("POST", path, 400, body={"no_such_field": 1}, headers=key)
        await call("POST", path, 422, body={"no_such_field": 2}, headers=key)
    # a repeated Idempotency-Key with the same body: the first answer again, marked as a replay
    first = await call("POST", "/v1/lock", 200, body={"reason": "k"}, headers={"Idempotency-Key": "k-1"})
    again = await call("POST", "/v1/lock", 200, body={"reason": "k"}, headers={"Idempotency-Key": "k-1"})
    assert again == first and probe.last_headers.get("Idempotent-Replayed") == "true"
    await call("POST", "/v1/unlock", 200)

    # the happy path through every mutation, and the history it leaves
    answer = await call("POST", "/v1/flip", 200, body={"to": "green", "reason": "go", "wait": True})
    assert answer["analysis"]["state"] == "passed"
    assert (await call("GET", "/v1/status", 200))["analysis"] is not None
    await call("POST", "/v1/flip", 412, body={"if_generation": 99})
    await call("POST", "/v1/rollback", 412, body={"if_generation": 99})
    await call("POST", "/v1/lock", 200, body={"reason": "freeze"})
    await call("POST", "/v1/lock", 200, body={"reason": "freeze"})        # changed: false
    for path, body in [("/v1/flip", {}), ("/v1/rollback", {}), ("/v1/canary", {"weight": 5}),
                       ("/v1/promote", {})]:
        await call("POST", path, 409, body=body)
    await call("POST", "/v1/unlock", 200)
    await call("POST", "/v1/rollback", 200, body={"reason": "back"})
    await call("POST", "/v1/hold", 200, body={"timeout": 30})
    assert (await call("GET", "/v1/status", 200))["hold_until"] is not None
    await call("POST", "/v1/resume", 200)
    await call("POST", "/v1/canary", 200, body={"weight": 10})
    await call("POST", "/v1/abort", 200)
    await call("POST", "/v1/canary", 200, body={"weight": 20})
    answer = await call("POST", "/v1/promote", 200, body={"wait": True})
    assert answer["analysis"]["state"] == "passed"
    await call("POST", "/v1/schema/attest", 200, body={"from_version": "1", "to_version": "2", "by": "ci"})

    # a flip with a request in flight: status shows the drain, history gets its outcome
    slow = asyncio.create_task(proxy_get(stack.proxy.port, "/slow?s=1"))
    live = stack.proxy.router.route.live
    async with asyncio.timeout(5):
        while stack.proxy.router.environments[live].inflight == 0:
            await asyncio.sleep(0.01)
    await call("POST", "/v1/flip", 200, body={"force": True})
    await call("GET", "/v1/status", 200)
    assert await slow == 200
    async with asyncio.timeout(5):
        while "drain" not in (await call("GET", "/v1/history", 200))["events"][-1]:
            await asyncio.sleep(0.02)

    # an analysis that rolls back: the wait answer and the auto_rollback event
    await stack.proxy.health.stop()
    target = "green" if stack.proxy.router.route.live == "blue" else "blue"
    await set_failing(backends[target], True)
    answer = await call("POST", "/v1/flip", 200, body={"wait": True})
    assert answer["analysis"]["state"] == "rolled_back"
    await set_failing(backends[target], False)
    events = (await call("GET", "/v1/history?limit=2", 200))["events"]
    assert events[-1]["action"] == "auto_rollback"

    # 503: the state cannot be saved, for every mutation that would change something
    await call("POST", "/v1/canary", 200, body={"weight": 10})
    await call("POST", "/v1/hold", 200, body={"timeout": 60})

    def refuse(self, state):
        raise StateError(f"cannot save state to {self.path}: disk full (test)")

    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "save", refuse)
        for path, body in [("/v1/flip", {"force": True}), ("/v1/rollback", {"force": True}),
                           ("/v1/hold", {"timeout": 5}), ("/v1/resume", {}), ("/v1/lock", {}),
                           ("/v1/canary", {"weight": 30, "force": True}), ("/v1/promote", {"force": True}),
                           ("/v1/abort", {}), ("/v1/schema/attest", {"from_version": "a", "to_version": "b"})]:
            await call("POST", path, 503, body=body)
    await call("POST", "/v1/resume", 200)
    await call("POST", "/v1/lock", 200)
    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "save", refuse)
        await call("POST", "/v1/unlock", 503)
    await call("POST", "/v1/unlock", 200)
    await call("GET", "/v1/history", 200)
    await call("GET", "/v1/status", 200)

    # 202: committed, but a worker did not apply it within fleet.ack_timeout (a plane that says so)
    real = stack.controller.plane

    class OnePending:
        """OnePending: the real plane, whose Acks name one worker that did not apply the change."""

        async def apply(self, change):
            ack = await real.apply(change)
            return Ack(ack.generation, complete=False, acked=ack.acked, pending=(4242,))

        def __getattr__(self, name):
            return getattr(real, name)

    stack.controller.plane = OnePending()
    try:
        for path, body in [("/v1/hold", {"timeout": 30}), ("/v1/resume", {}), ("/v1/canary", {"weight": 15}),
                           ("/v1/abort", {}), ("/v1/canary", {"weight": 25}), ("/v1/promote", {"force": True}),
                           ("/v1/flip", {"force": True}), ("/v1/rollback", {"force": True})]:
            answer = await call("POST", path, 202, body=body)
            assert answer["ack"] == {"complete": False, "acked": list(answer["ack"]["acked"]), "pending": [4242]}
    finally:
        stack.controller.plane = real

    # not ready: the live environment has no healthy server (health checks stopped above)
    for server in stack.proxy.router.environments[stack.proxy.router.route.live].servers:
        server.set_healthy(False)
    await call("GET", "/readyz", 503, token=None)
    await call("GET", "/healthz", 200, token=None)

    documented = {(path, method, int(code)) for path, method, op in operations(doc) for code in op["responses"]}
    assert documented - probe.seen == set(), "documented answers this test never saw"
