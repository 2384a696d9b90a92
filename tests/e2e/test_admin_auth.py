"""Scoped admin tokens (issue 8.9): a read token that may only read, and who did what in history.

``admin.read_token`` opens status, history, the OpenAPI document (and the event stream to
come); a mutation with it is 403 ``forbidden``, without any token 401. Every mutation's
history entry records ``actor`` (which token: "admin", "read" or "none" with auth off;
never the token) and ``client`` (the client's address). Config validation keeps the two
tokens apart (tests/admin/test_read_token_config.py).
"""

from __future__ import annotations

import json

from tests.support.adminapi import Admin, assert_error
from tests.support.wait import eventually

TOKEN = "admin-t0ken"
READ = "read-t0ken"
AUTH = {"listen": "127.0.0.1:0", "token": TOKEN, "read_token": READ}

READS = ["/v1/status", "/v1/history", "/v1/openapi.json"]
MUTATIONS = [("/v1/flip", {}), ("/v1/rollback", {}), ("/v1/hold", {"timeout": 5}), ("/v1/resume", {}),
             ("/v1/lock", {}), ("/v1/unlock", {}), ("/v1/canary", {"weight": 10}), ("/v1/promote", {}),
             ("/v1/abort", {}), ("/v1/schema/attest", {"from_version": "1", "to_version": "2"})]


async def test_the_read_token_reads(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=READ)
    for path in READS:
        status, payload, _ = await api.get(path)
        assert status == 200, (path, payload)


async def test_the_read_token_may_not_mutate(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=READ)
    for path, body in MUTATIONS:
        status, payload, _ = await api.post(path, body)
        assert_error(status, payload, 403, "forbidden")
        assert "read" in payload["error"], payload
    assert running.proxy.router.route.generation == 1
    assert not running.controller.state.locked and not running.proxy.router.held
    assert running.controller.state.history == []


async def test_without_a_token_or_with_a_wrong_one_everything_is_401(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port)
    for token in (None, "wrong", READ + "x", READ[:-1], TOKEN[:-1], ""):
        for path in READS:
            status, payload, _ = await api.get(path, token=token)
            assert_error(status, payload, 401, "unauthorized")
        for path, body in MUTATIONS:
            status, payload, _ = await api.post(path, body, token=token)
            assert_error(status, payload, 401, "unauthorized")


async def test_the_admin_token_still_does_everything(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=TOKEN)
    for path in READS:
        status, payload, _ = await api.get(path)
        assert status == 200, (path, payload)
    assert (await api.ok("/v1/lock", {}))["locked"] is True


async def test_history_records_the_actor_and_the_client_of_every_mutation(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=TOKEN)
    for path, body in [("/v1/lock", {"reason": "r"}), ("/v1/unlock", {}), ("/v1/hold", {"timeout": 5}),
                       ("/v1/resume", {}), ("/v1/canary", {"weight": 10}), ("/v1/abort", {}),
                       ("/v1/flip", {}), ("/v1/rollback", {}),
                       ("/v1/schema/attest", {"from_version": "1", "to_version": "2"})]:
        await api.ok(path, body)
    events = await api.events()
    assert [e["action"] for e in events] == ["lock", "unlock", "hold", "resume", "canary", "abort",
                                             "flip", "rollback", "attest"]
    for event in events:
        assert event["actor"] == "admin" and event["client"] == "127.0.0.1", event
        assert TOKEN not in json.dumps(event)


async def test_with_auth_off_the_actor_is_none(make_stack, session):
    running = await make_stack()              # make_stack: admin.auth none
    api = Admin(session, running.admin_port)
    await api.ok("/v1/flip", {})
    [event] = await api.events()
    assert (event["actor"], event["client"]) == ("none", "127.0.0.1")


async def test_what_cutover_does_by_itself_has_actor_cutover(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.ok("/v1/hold", {"timeout": 0.2})

    async def resumed():
        events = await api.events()
        return events if len(events) == 2 else None
    events = await eventually(resumed, timeout=5)
    assert events[0]["actor"] == "none"
    assert (events[1]["action"], events[1]["actor"], events[1]["client"]) == ("resume", "cutover", None)


async def test_the_read_token_on_an_unsafe_method_of_a_read_path_is_refused(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=READ)
    status, payload, _ = await api.call("POST", "/v1/status")
    assert_error(status, payload, 403, "forbidden")
