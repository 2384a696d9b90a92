"""The admin API's OpenAPI document (SPEC §7) against the admin API's real answers.

The document served at /v1/openapi.json must name every route the aiohttp app registers, and
describe what the endpoints really answer: ``test_every_answer_of_every_route_matches_the_document``
drives every route on a real stack into each status its operation documents (200, 400, 401,
403 for the read token and for cross-site requests, 409, 412, 413, 415, 422 for a reused
Idempotency-Key, 503; /readyz's 503) and validates every body with jsonschema against the
document's schema for that path, method and status (404, 405 and 500 against the document's
shared responses). A field, status or route added without a document entry fails here, and
so does a documented status no test provokes. That the document itself is well-formed is
tests/admin/test_openapi_document_is_well_formed.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re

import aiohttp
import pytest

from admin.config import effective_config
from admin.jsonbody import MAX_BODY_BYTES
from admin.openapi import openapi_document
from admin.plane import Ack
from admin.state import FileStateStore, StateError
from tests.support.adminapi import UNSET, Admin
from tests.support.backend import set_failing
from tests.support.openapi import SHARED, escape, follow, operations, resolve, schema_errors
from tests.support.wait import eventually

TOKEN = "t0ken"
READ_TOKEN = "r3ad"
JSON_TYPE = {"Content-Type": "application/json"}


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
        path = self.template(path)
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


    def template(self, path: str) -> str:
        """template: the document's path a concrete one is of (/v1/environments/green/servers ->
        /v1/environments/{env}/servers), else the path itself."""
        if path in self.doc["paths"]:
            return path
        for candidate in self.doc["paths"]:
            if "{" in candidate and re.fullmatch(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(candidate)), path):
                return candidate
        return path


async def proxy_get(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            async with s.get(f"http://127.0.0.1:{port}{path}") as resp:
                await resp.read()
                return resp.status


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


async def test_every_answer_of_every_route_matches_the_document(stack, session, backends, monkeypatch, tmp_path):
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
    await eventually(lambda: stack.proxy.router.environments[live].inflight != 0, timeout=5)
    await call("POST", "/v1/flip", 200, body={"force": True})
    await call("GET", "/v1/status", 200)
    assert await slow == 200
    async def drained():
        return "drain" in (await call("GET", "/v1/history", 200))["events"][-1]
    await eventually(drained, timeout=5)

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

    def refuse(self, state, lines, check):
        raise StateError(f"cannot save state to {self.path}: disk full (test)")

    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "_write", refuse)
        for path, body in [("/v1/flip", {"force": True}), ("/v1/rollback", {"force": True}),
                           ("/v1/hold", {"timeout": 5}), ("/v1/resume", {}), ("/v1/lock", {}),
                           ("/v1/canary", {"weight": 30, "force": True}), ("/v1/promote", {"force": True}),
                           ("/v1/abort", {}), ("/v1/schema/attest", {"from_version": "a", "to_version": "b"})]:
            await call("POST", path, 503, body=body)
    await call("POST", "/v1/resume", 200)
    await call("POST", "/v1/lock", 200)
    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "_write", refuse)
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

    # the server registration: PUT and DELETE, the environment in the path
    servers = "/v1/environments/green/servers"
    for method in ("PUT", "DELETE"):
        await call(method, servers, 400, body={"no_such_field": 1})
        await call(method, servers, 400, data=b"{not json", headers=JSON_TYPE)
        await call(method, servers, 403, body={}, token=READ_TOKEN)
        await call(method, servers, 403, body={}, headers=foreign_origin)
        await call(method, servers, 413, data=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}", headers=JSON_TYPE)
        await call(method, servers, 415, data=b"{}", headers={"Content-Type": "text/plain"})
        key = {"Idempotency-Key": f"reused-{method}"}
        await call(method, servers, 400, body={"no_such_field": 1}, headers=key)
        await call(method, servers, 422, body={"no_such_field": 2}, headers=key)
        await call(method, "/v1/environments/purple/servers", 404,
                   body={"servers": ["127.0.0.1:1"]} if method == "PUT" else {})
    await call("PUT", servers, 400, body={"servers": ["no-port"]})
    registered = {"servers": [{"address": backends["green"].address, "weight": 2}], "reason": "ci"}
    answer = await call("PUT", servers, 200, body=registered)
    assert answer["environments"]["green"]["servers_source"] == "registered"
    await call("DELETE", servers, 200, body={"reason": "back"})
    live = (await call("GET", "/v1/status", 200))["live"]
    await call("POST", "/v1/lock", 200)
    for method, body in (("PUT", registered), ("DELETE", {})):
        if method == "DELETE":
            await call("POST", "/v1/unlock", 200)
            await call("PUT", f"/v1/environments/{live}/servers", 200,
                       body={"servers": [backends[live].address]})
            await call("POST", "/v1/lock", 200)
        await call(method, f"/v1/environments/{live}/servers", 409, body=body)
    await call("POST", "/v1/unlock", 200)
    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "_write", refuse)
        await call("PUT", servers, 503, body=registered)
        await call("DELETE", f"/v1/environments/{live}/servers", 503)
    stack.controller.plane = OnePending()
    try:
        await call("PUT", servers, 202, body=registered)
        await call("DELETE", servers, 202)
    finally:
        stack.controller.plane = real
    events = (await call("GET", "/v1/history", 200))["events"]
    assert {"servers", "servers_reset"} <= {e["action"] for e in events}

    # reload: the stack's config as a file, then edited
    source = tmp_path / "cutover.yaml"
    written = effective_config(stack.controller.config)
    written["admin"].update(token=TOKEN, read_token=READ_TOKEN)

    def write(**changes):
        source.write_text(json.dumps({**written, **changes}))

    write()
    stack.controller.config = dataclasses.replace(stack.controller.config, source=source)
    assert (await call("POST", "/v1/reload", 200))["changed"] is False
    write(timeouts={"connect": 1.5})
    assert (await call("POST", "/v1/reload", 200, body={"reason": "tune"}))["reloaded"] == ["timeouts.connect"]
    write(timeouts={"connect": -1})
    await call("POST", "/v1/reload", 400)
    write(listen="127.0.0.1:1")
    await call("POST", "/v1/reload", 409)
    write(timeouts={"connect": 2.5})
    with monkeypatch.context() as m:
        m.setattr(FileStateStore, "_write", refuse)
        await call("POST", "/v1/reload", 503)
    stack.controller.plane = OnePending()
    try:
        await call("POST", "/v1/reload", 202)
    finally:
        stack.controller.plane = real
    assert (await call("GET", "/v1/history?limit=1", 200))["events"][-1]["action"] == "reload"

    # not ready: the live environment has no healthy server (health checks stopped above)
    for server in stack.proxy.router.environments[stack.proxy.router.route.live].servers:
        server.set_healthy(False)
    await call("GET", "/readyz", 503, token=None)
    await call("GET", "/healthz", 200, token=None)

    documented = {(path, method, int(code)) for path, method, op in operations(doc) for code in op["responses"]}
    assert documented - probe.seen == set(), "documented answers this test never saw"
