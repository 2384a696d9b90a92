"""Retry-safe mutations (issue 8.7): an ``Idempotency-Key`` makes a repeat return the first answer.

A CI job that retries a flip after a client timeout must not flip twice. A mutation sent
with an Idempotency-Key that repeats one answered in the last 10 minutes (same token
identity, method and path) applies nothing and answers what the first call answered; the
same key with a different body is 422 ``idempotency_key_reused``; a repeat while the first
call still runs waits for it. 5xx answers are not remembered, so a retry can succeed.
The cache's bounds are unit-tested with a fake clock (tests/admin/test_idempotency_cache.py);
here everything runs on real stacks.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.adminapi import Admin, assert_error
from tests.support.stores import FailingStore

TOKEN = "t0ken"


def key(value: str) -> dict:
    return {"Idempotency-Key": value}


async def test_a_repeated_flip_with_the_same_key_applies_once_and_answers_the_same(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    first = await api.call("POST", "/v1/flip", body={"reason": "deploy 42"}, headers=key("ci-run-42"))
    again = await api.call("POST", "/v1/flip", body={"reason": "deploy 42"}, headers=key("ci-run-42"))
    assert first[0] == again[0] == 200
    assert again[1] == first[1] and first[1]["live"] == "green" and first[1]["generation"] == 2
    assert again[2].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[2]
    assert running.proxy.router.route.generation == 2 and running.proxy.router.route.live == "green"
    assert [e["action"] for e in running.controller.state.history] == ["flip"]


async def test_rollback_twice_with_one_key_goes_back_once(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.ok("/v1/flip", {})
    for _ in range(2):
        status, payload, _ = await api.call("POST", "/v1/rollback", body={}, headers=key("rollback-1"))
        assert status == 200 and payload["live"] == "blue", payload
    assert running.proxy.router.route.generation == 3


async def test_an_empty_body_and_an_empty_object_are_the_same_request(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, _, _ = await api.call("POST", "/v1/flip", data=b"", headers=key("k"))
    assert status == 200
    status, payload, headers = await api.call("POST", "/v1/flip", body={}, headers=key("k"))
    assert status == 200 and headers.get("Idempotent-Replayed") == "true", payload
    assert running.proxy.router.route.generation == 2


async def test_without_a_key_or_with_another_key_a_repeat_applies_again(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.ok("/v1/flip", {})
    await api.ok("/v1/flip", {})
    await api.call("POST", "/v1/flip", body={}, headers=key("a"))
    await api.call("POST", "/v1/flip", body={}, headers=key("b"))
    assert running.proxy.router.route.generation == 5


async def test_the_same_key_with_another_body_is_422(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.call("POST", "/v1/flip", body={"to": "green"}, headers=key("k1"))
    status, payload, _ = await api.call("POST", "/v1/flip", body={"to": "blue"}, headers=key("k1"))
    assert_error(status, payload, 422, "idempotency_key_reused")
    assert running.proxy.router.route.live == "green"


async def test_a_key_is_scoped_to_its_path(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, _, _ = await api.call("POST", "/v1/lock", body={}, headers=key("same"))
    assert status == 200
    status, payload, headers = await api.call("POST", "/v1/unlock", body={}, headers=key("same"))
    assert status == 200 and "Idempotent-Replayed" not in headers, payload
    assert payload["locked"] is False


async def test_a_refusal_is_the_first_answer_too(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.ok("/v1/lock", {})
    status, payload, _ = await api.call("POST", "/v1/flip", body={}, headers=key("k"))
    assert_error(status, payload, 409, "locked")
    await api.ok("/v1/unlock", {})
    status, again, headers = await api.call("POST", "/v1/flip", body={}, headers=key("k"))
    assert (status, again) == (409, payload) and headers.get("Idempotent-Replayed") == "true"
    assert running.proxy.router.route.generation == 1


async def test_a_repeat_while_the_first_still_runs_waits_and_answers_the_same(make_stack, session):
    # the smoke gate takes 0.5 s, so the second call arrives while the first still runs
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=0.5", "expect_status": 200}]})
    api = Admin(session, running.admin_port)
    one, two = await asyncio.gather(
        api.call("POST", "/v1/flip", body={}, headers=key("slow")),
        api.call("POST", "/v1/flip", body={}, headers=key("slow")))
    assert one[0] == two[0] == 200 and one[1] == two[1], (one, two)
    assert sorted(r[2].get("Idempotent-Replayed", "") for r in (one, two)) == ["", "true"]
    assert running.proxy.router.route.generation == 2
    assert [e["action"] for e in running.controller.state.history] == ["flip"]


async def test_a_5xx_is_not_remembered_so_a_retry_can_succeed(make_stack, session):
    running = await make_stack()
    running.controller.store = FailingStore(running.controller.store, failures=1)
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", "/v1/flip", body={}, headers=key("retry-me"))
    assert_error(status, payload, 503, "state_unavailable")
    status, payload, headers = await api.call("POST", "/v1/flip", body={}, headers=key("retry-me"))
    assert status == 200 and payload["live"] == "green", payload
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await api.call("POST", "/v1/flip", body={}, headers=key("retry-me"))
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, payload, "true")
    assert running.proxy.router.route.generation == 2


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "has space", "tab\tkey", "caf\u00e9",
                                   '"unterminated', 'in"side', "back\\slash"])
async def test_a_malformed_key_is_400(make_stack, session, value):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", "/v1/lock", body={},
                                        headers={"Idempotency-Key": value.encode("utf-8").decode("latin-1")})
    assert_error(status, payload, 400, "bad_request")
    assert "Idempotency-Key" in payload["error"]
    assert not running.controller.state.locked


async def test_two_keys_on_one_request_are_400(make_stack):
    running = await make_stack()
    port = running.admin_port
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nIdempotency-Key: a\r\n"
                     b"Idempotency-Key: b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % port)
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw[:300]
    payload = json.loads(body)
    assert payload["code"] == "bad_request" and "Idempotency-Key" in payload["error"], payload
    assert not running.controller.state.locked


async def test_a_key_on_a_read_is_ignored(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, _, _ = await api.get("/v1/status", headers=key(""))
    assert status == 200
