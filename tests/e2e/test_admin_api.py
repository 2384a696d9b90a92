"""The admin API (SPEC §5, §7, §8) against a real stack: every endpoint, every error code.

Each test starts the real proxy + controller + admin API (make_stack) in front of the
real blue/green test backends and talks HTTP to it on loopback.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from admin.state import StateError
from tests.support.adminapi import Admin, assert_error, scrape
from tests.support.stack import make_unhealthy
from tests.support.wait import eventually

TOKEN = "t0ken"
AUTH = {"listen": "127.0.0.1:0", "token": TOKEN}
ENVS = {"blue", "green"}

V1_GET = ["/v1/status", "/v1/history", "/v1/openapi.json"]
V1_POST = ["/v1/flip", "/v1/rollback", "/v1/hold", "/v1/resume", "/v1/lock", "/v1/unlock",
           "/v1/canary", "/v1/promote", "/v1/abort"]
STATUS_KEYS = {"live", "previous", "generation", "held", "held_requests", "locked", "weights",
               "environments"}


@pytest.fixture
async def stack(make_stack):
    return await make_stack()


@pytest.fixture
async def api(stack, session):
    return Admin(session, stack.admin_port)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def assert_status_shape(st: dict, backends: dict) -> None:
    """assert_status_shape: the SPEC §7 status document, with exact types."""
    assert STATUS_KEYS <= set(st), STATUS_KEYS - set(st)
    assert st["live"] in ENVS
    assert st["previous"] is None or (st["previous"] in ENVS and st["previous"] != st["live"])
    assert is_int(st["generation"]) and st["generation"] >= 1
    assert isinstance(st["held"], bool)
    assert is_int(st["held_requests"]) and st["held_requests"] >= 0
    assert isinstance(st["locked"], bool)
    assert set(st["weights"]) == ENVS
    assert all(is_int(w) and 0 <= w <= 100 for w in st["weights"].values()), st["weights"]
    assert sum(st["weights"].values()) == 100
    assert set(st["environments"]) == ENVS
    for name, env in st["environments"].items():
        assert set(env) == {"healthy", "inflight", "connections", "servers_source", "servers",
                            "retired_servers"}, env
        assert env["servers_source"] == "config" and env["retired_servers"] == []
        assert isinstance(env["healthy"], bool)
        assert is_int(env["inflight"]) and env["inflight"] >= 0
        assert is_int(env["connections"]) and env["connections"] >= 0
        assert isinstance(env["servers"], list) and len(env["servers"]) == 1
        for server in env["servers"]:
            assert set(server) == {"address", "healthy", "inflight", "connections"}, server
            assert server["address"] == backends[name].address
            assert isinstance(server["healthy"], bool)
            assert is_int(server["inflight"]) and is_int(server["connections"])


def route_of(st: dict) -> tuple:
    return (st["live"], st["previous"], st["generation"], st["held"], st["locked"], st["weights"])


async def proxy_get(session, running, path: str = "/") -> tuple[int, str]:
    async with asyncio.timeout(5):
        async with session.get(f"http://127.0.0.1:{running.proxy.port}{path}") as resp:
            return resp.status, await resp.text()


# ------------------------------------------------------------------------- auth


async def test_every_v1_endpoint_answers_401_without_or_with_a_wrong_token(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port)
    wrong = [None, "wrong", TOKEN + "x", TOKEN[:-1], ""]
    for method, path in [("GET", p) for p in V1_GET] + [("POST", p) for p in V1_POST]:
        for token in wrong:
            status, payload, headers = await api.call(method, path, token=token)
            assert_error(status, payload, 401, "unauthorized")
            assert headers.get("WWW-Authenticate", "").lower().startswith("bearer"), (method, path, headers)
        # the right token in another scheme is not a bearer token
        status, payload, headers = await api.call(method, path, token=None,
                                                  headers={"Authorization": f"Basic {TOKEN}"})
        assert_error(status, payload, 401, "unauthorized")
        assert "WWW-Authenticate" in headers
    # none of the refused mutations did anything
    router = running.proxy.router
    assert router.route.generation == 1 and router.route.live == "blue"
    assert not router.held and not running.controller.state.locked
    assert running.controller.state.history == []


async def test_the_right_token_works_on_every_v1_endpoint(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port, token=TOKEN)
    for path in V1_GET:
        status, payload, _ = await api.get(path)
        assert status == 200, (path, payload)
    answers = {}
    for path, body in [("/v1/lock", {}), ("/v1/unlock", {}), ("/v1/hold", {"timeout": 30}),
                       ("/v1/resume", {}), ("/v1/canary", {"weight": 10}), ("/v1/abort", {}),
                       ("/v1/canary", {"weight": 10}), ("/v1/promote", {}), ("/v1/flip", {}),
                       ("/v1/rollback", {})]:
        answers[path] = await api.ok(path, body)
    assert answers["/v1/rollback"]["live"] == "green"   # promote -> green, flip -> blue, rollback -> green
    assert running.controller.state.generation == 7


async def test_metrics_and_healthz_need_no_token(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port)
    status, text, _ = await api.get("/metrics", token=None)
    assert status == 200 and "cutover_route_generation" in text
    status, payload, _ = await api.get("/healthz", token=None)
    assert status == 200, payload
    # a wrong token does not break them either
    status, _, _ = await api.get("/metrics", token="wrong")
    assert status == 200


async def test_a_token_that_is_not_utf8_is_a_401_not_a_crash(make_stack):
    running = await make_stack(admin=AUTH)
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.admin_port)
        try:
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer t0k\xe9n\xff\r\n"
                         b"Connection: close\r\n\r\n")
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), raw[:200]
    assert json.loads(body)["code"] == "unauthorized"


async def test_auth_is_off_when_configured_so(make_stack, session):
    running = await make_stack()      # make_stack: admin.auth none on loopback
    api = Admin(session, running.admin_port)
    assert (await api.status())["live"] == "blue"
    assert (await api.ok("/v1/lock"))["locked"] is True
    # a token configured with auth: none is not demanded either
    second = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN, "auth": "none"},
                              state_file=str(running.controller.store.path.with_name("other.json")))
    api2 = Admin(session, second.admin_port)
    status, payload, _ = await api2.get("/v1/status", token=None)
    assert status == 200, payload


# ----------------------------------------------------------------------- status


async def test_status_has_the_spec_shape(stack, api, backends):
    st = await api.status()
    assert_status_shape(st, backends)
    assert st["live"] == "blue" and st["previous"] is None and st["generation"] == 1
    assert st["held"] is False and st["held_requests"] == 0 and st["locked"] is False
    assert st["weights"] == {"blue": 100, "green": 0}
    assert st["environments"]["blue"]["healthy"] is True
    assert st["environments"]["green"]["servers"][0]["healthy"] is True


async def test_status_shows_inflight_and_connections(stack, api, session):
    task = asyncio.create_task(proxy_get(session, stack, "/slow?s=0.6"))
    try:
        async def busy():
            st = await api.status()
            blue = st["environments"]["blue"]
            # connections counts open upstream connections: it follows once the connect is done
            server = blue["servers"][0]
            return st if blue["inflight"] == 1 and server["inflight"] == 1 and server["connections"] >= 1 \
                else None
        st = await eventually(busy)
        assert st["environments"]["blue"]["connections"] == st["environments"]["blue"]["servers"][0]["connections"]
        assert st["environments"]["green"]["inflight"] == 0
    finally:
        async with asyncio.timeout(3):
            assert (await task)[0] == 200


# ------------------------------------------------------------------------ bodies


async def test_an_empty_body_is_an_empty_object(stack, api):
    for data in (b"", b"  \n", None):
        status, payload, _ = await api.call("POST", "/v1/lock", data=data)
        assert status == 200, payload
        assert payload["locked"] is True
    status, payload, _ = await api.call("POST", "/v1/unlock", data=b"",
                                        headers={"Content-Type": "application/json"})
    assert status == 200 and payload["locked"] is False
    # an empty flip is a flip to the other environment
    status, payload, _ = await api.call("POST", "/v1/flip", data=b"")
    assert status == 200 and payload["live"] == "green"


BAD_BODIES = [
    ("/v1/flip", b"{", "bad_request", None),
    ("/v1/flip", b"{'to': 'green'}", "bad_request", None),
    ("/v1/lock", b"\xff\xfe", "bad_request", None),
    ("/v1/flip", b'["green"]', "bad_request", None),
    ("/v1/hold", b"[]", "bad_request", None),
    ("/v1/flip", b'"green"', "bad_request", None),
    ("/v1/flip", b"5", "bad_request", None),
    ("/v1/flip", b"null", "bad_request", None),
    ("/v1/flip", b'{"to": "green", "colour": "x"}', "bad_request", "colour"),
    ("/v1/lock", b'{"reason": "x", "timeout": 3}', "bad_request", "timeout"),
    ("/v1/canary", b'{"weight": 10, "to": "green"}', "bad_request", "to"),
    ("/v1/resume", b'{"force": true}', "bad_request", "force"),
    ("/v1/flip", b'{"force": "yes"}', "bad_request", "force"),
    ("/v1/flip", b'{"force": 1}', "bad_request", "force"),
    ("/v1/flip", b'{"to": 5}', "bad_request", "to"),
    ("/v1/flip", b'{"to": ["green"]}', "bad_request", "to"),
    ("/v1/flip", b'{"if_generation": "1"}', "bad_request", "if_generation"),
    ("/v1/flip", b'{"if_generation": 1.0}', "bad_request", "if_generation"),
    ("/v1/flip", b'{"if_generation": true}', "bad_request", "if_generation"),
    ("/v1/flip", b'{"reason": 5}', "bad_request", "reason"),
    ("/v1/canary", b"{}", "bad_request", "weight"),
    ("/v1/canary", b'{"weight": 101}', "bad_request", "weight"),
    ("/v1/canary", b'{"weight": -1}', "bad_request", "weight"),
    ("/v1/canary", b'{"weight": "50"}', "bad_request", "weight"),
    ("/v1/canary", b'{"weight": true}', "bad_request", "weight"),
    ("/v1/canary", b'{"weight": 50.5}', "bad_request", "weight"),
    ("/v1/canary", b'{"weight": null}', "bad_request", "weight"),
    ("/v1/hold", b'{"timeout": 0}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": -1}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": "x"}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": "5"}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": true}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": NaN}', "bad_request", "timeout"),
    ("/v1/hold", b'{"timeout": Infinity}', "bad_request", "timeout"),
]


@pytest.mark.parametrize("path,body,code,names", BAD_BODIES,
                         ids=[f"{p[4:]}:{b.decode('latin-1')}" for p, b, _, _ in BAD_BODIES])
async def test_a_bad_body_is_a_400_and_changes_nothing(stack, api, path, body, code, names):
    before = await api.status()
    status, payload, _ = await api.call("POST", path, data=body,
                                        headers={"Content-Type": "application/json"})
    assert_error(status, payload, 400, code)
    if names is not None:
        assert names in payload["error"], payload
    assert route_of(await api.status()) == route_of(before)
    assert await api.events() == []


async def test_rollback_checks_if_generation_type_before_anything(stack, api):
    status, payload, _ = await api.post("/v1/rollback", {"if_generation": "1"})
    assert_error(status, payload, 400, "bad_request")
    assert "if_generation" in payload["error"]


# ---------------------------------------------------------------- mutation answers


async def test_every_mutation_answers_the_new_status_with_changed(stack, api, backends):
    steps = [("/v1/lock", {"reason": "freeze"}), ("/v1/unlock", {}), ("/v1/hold", {"timeout": 30}),
             ("/v1/resume", {}), ("/v1/canary", {"weight": 20}), ("/v1/abort", {}),
             ("/v1/canary", {"weight": 40}), ("/v1/promote", {}), ("/v1/flip", {}),
             ("/v1/rollback", {}), ("/v1/flip", {"to": "green"})]
    for path, body in steps:
        answer = await api.ok(path, body)
        assert_status_shape(answer, backends)
        assert isinstance(answer.get("changed"), bool), (path, answer)
        now = await api.status()
        assert route_of(answer) == route_of(now), (path, answer, now)
        assert answer["held_requests"] == now["held_requests"]
    # and the last one, a flip to the live environment, is a no-op that still answers the status
    assert answer["changed"] is False


# -------------------------------------------------------------------------- flip


async def test_flip_without_to_goes_to_the_other_environment(stack, api, session):
    answer = await api.ok("/v1/flip", {})
    assert answer["changed"] is True
    assert (answer["live"], answer["previous"], answer["generation"]) == ("green", "blue", 2)
    assert answer["weights"] == {"blue": 0, "green": 100}
    assert stack.proxy.router.route.live == "green"
    assert await proxy_get(session, stack) == (200, "green\n")
    answer = await api.ok("/v1/flip")
    assert (answer["live"], answer["previous"], answer["generation"]) == ("blue", "green", 3)
    assert await proxy_get(session, stack) == (200, "blue\n")


async def test_flip_to_an_explicit_environment(stack, api, session):
    answer = await api.ok("/v1/flip", {"to": "green", "reason": "deploy v2"})
    assert (answer["live"], answer["previous"], answer["generation"], answer["changed"]) == \
        ("green", "blue", 2, True)
    assert await proxy_get(session, stack) == (200, "green\n")
    answer = await api.ok("/v1/flip", {"to": "blue"})
    assert (answer["live"], answer["previous"], answer["generation"]) == ("blue", "green", 3)


@pytest.mark.parametrize("to", ["purple", "", "Blue", "blue "])
async def test_flip_to_an_unknown_environment_is_400(stack, api, to):
    status, payload, _ = await api.post("/v1/flip", {"to": to})
    assert_error(status, payload, 400, "unknown_environment")
    st = await api.status()
    assert (st["live"], st["generation"]) == ("blue", 1)
    assert await api.events() == []


async def test_flip_to_the_live_environment_is_a_no_op(stack, api):
    answer = await api.ok("/v1/flip", {"to": "blue"})
    assert answer["changed"] is False
    assert (answer["live"], answer["previous"], answer["generation"]) == ("blue", None, 1)
    await api.ok("/v1/flip", {"to": "green"})
    answer = await api.ok("/v1/flip", {"to": "green", "if_generation": 2})
    assert answer["changed"] is False and answer["generation"] == 2 and answer["live"] == "green"
    assert [e["action"] for e in await api.events()] == ["flip"]


async def test_flip_if_generation_is_a_compare_and_swap(stack, api):
    for wrong in (0, 2, 99):
        status, payload, _ = await api.post("/v1/flip", {"to": "green", "if_generation": wrong})
        assert_error(status, payload, 412, "generation_mismatch")
    st = await api.status()
    assert (st["live"], st["generation"]) == ("blue", 1)
    assert await api.events() == []
    answer = await api.ok("/v1/flip", {"to": "green", "if_generation": 1})
    assert (answer["live"], answer["generation"]) == ("green", 2)
    # the old generation no longer matches
    status, payload, _ = await api.post("/v1/flip", {"if_generation": 1})
    assert_error(status, payload, 412, "generation_mismatch")
    assert (await api.status())["live"] == "green"


async def test_flip_to_an_unhealthy_environment_fails_its_gate_unless_forced(stack, api, session):
    await make_unhealthy(stack, "green")
    status, payload, _ = await api.post("/v1/flip", {})
    assert_error(status, payload, 409, "gate_failed")
    assert "health" in payload["error"]
    assert isinstance(payload.get("gates"), list) and payload["gates"]
    failed = [g for g in payload["gates"] if not g["passed"]]
    assert [g["gate"] for g in failed] == ["health"]
    assert stack.proxy.router.environments["green"].servers[0].address in failed[0]["reason"]
    st = await api.status()
    assert (st["live"], st["generation"]) == ("blue", 1)
    assert await api.events() == []
    assert await proxy_get(session, stack) == (200, "blue\n")

    answer = await api.ok("/v1/flip", {"force": True, "reason": "I know"})
    assert (answer["live"], answer["generation"], answer["changed"]) == ("green", 2, True)
    [event] = await api.events()
    assert event["action"] == "flip" and event["reason"] == "I know"


async def test_a_lock_refuses_every_switch_even_forced_until_unlock(stack, api):
    await api.ok("/v1/flip")                                 # blue -> green, so rollback has a target
    answer = await api.ok("/v1/lock", {"reason": "release freeze"})
    assert answer["locked"] is True and answer["generation"] == 2
    refused = [("/v1/flip", {}), ("/v1/flip", {"force": True}), ("/v1/flip", {"to": "blue", "force": True}),
               ("/v1/rollback", {}), ("/v1/rollback", {"force": True}),
               ("/v1/canary", {"weight": 10}), ("/v1/canary", {"weight": 10, "force": True}),
               ("/v1/promote", {}), ("/v1/promote", {"force": True})]
    for path, body in refused:
        status, payload, _ = await api.post(path, body)
        assert_error(status, payload, 409, "locked")
    st = await api.status()
    assert (st["live"], st["generation"], st["locked"]) == ("green", 2, True)
    assert st["weights"] == {"blue": 0, "green": 100}

    answer = await api.ok("/v1/unlock")
    assert answer["locked"] is False
    answer = await api.ok("/v1/flip")
    assert (answer["live"], answer["generation"]) == ("blue", 3)


async def test_a_lock_set_during_a_canary_blocks_promote(stack, api):
    await api.ok("/v1/canary", {"weight": 30})
    await api.ok("/v1/lock")
    status, payload, _ = await api.post("/v1/promote", {"force": True})
    assert_error(status, payload, 409, "locked")
    status, payload, _ = await api.post("/v1/canary", {"weight": 60})
    assert_error(status, payload, 409, "locked")
    st = await api.status()
    assert st["weights"] == {"blue": 70, "green": 30} and st["live"] == "blue"


# ---------------------------------------------------------------------- rollback


async def test_rollback_without_a_previous_environment_is_409(stack, api):
    for body in ({}, {"force": True}):
        status, payload, _ = await api.post("/v1/rollback", body)
        assert_error(status, payload, 409, "no_previous")
    st = await api.status()
    assert (st["live"], st["generation"]) == ("blue", 1)


async def test_rollback_goes_back_to_the_previous_environment(stack, api, session):
    await api.ok("/v1/flip", {"to": "green"})
    answer = await api.ok("/v1/rollback", {"reason": "errors up"})
    assert answer["changed"] is True
    assert (answer["live"], answer["previous"], answer["generation"]) == ("blue", "green", 3)
    assert await proxy_get(session, stack) == (200, "blue\n")
    event = (await api.events())[-1]
    assert (event["action"], event["from"], event["to"], event["generation"], event["reason"]) == \
        ("rollback", "green", "blue", 3, "errors up")
    assert isinstance(event.get("recovery_ms"), (int, float)) and not isinstance(event["recovery_ms"], bool)
    assert 0 <= event["recovery_ms"] < 60_000
    # a second rollback goes forward again
    answer = await api.ok("/v1/rollback")
    assert (answer["live"], answer["previous"], answer["generation"]) == ("green", "blue", 4)


async def test_rollback_to_an_unhealthy_previous_needs_force(stack, api):
    await api.ok("/v1/flip", {"to": "green"})
    await make_unhealthy(stack, "blue")
    status, payload, _ = await api.post("/v1/rollback", {})
    assert_error(status, payload, 409, "gate_failed")
    assert "health" in payload["error"] and isinstance(payload.get("gates"), list)
    st = await api.status()
    assert (st["live"], st["generation"]) == ("green", 2)
    answer = await api.ok("/v1/rollback", {"force": True})
    assert (answer["live"], answer["generation"]) == ("blue", 3)


async def test_rollback_if_generation(stack, api):
    await api.ok("/v1/flip")
    status, payload, _ = await api.post("/v1/rollback", {"if_generation": 1})
    assert_error(status, payload, 412, "generation_mismatch")
    assert (await api.status())["live"] == "green"
    answer = await api.ok("/v1/rollback", {"if_generation": 2})
    assert (answer["live"], answer["generation"]) == ("blue", 3)


# ------------------------------------------------------------------ hold / resume


async def test_hold_and_resume_show_held_and_the_waiting_requests(stack, api, session):
    answer = await api.ok("/v1/hold", {"reason": "db migration"})
    assert answer["held"] is True and answer["held_requests"] == 0 and answer["changed"] is True
    waiting = [asyncio.create_task(proxy_get(session, stack)) for _ in range(2)]
    try:
        async def two_waiting():
            st = await api.status()
            return st if st["held_requests"] == 2 else None
        st = await eventually(two_waiting)
        assert st["held"] is True
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in waiting)
        answer = await api.ok("/v1/resume")
        assert answer["held"] is False and answer["held_requests"] == 0
    finally:
        async with asyncio.timeout(3):
            results = await asyncio.gather(*waiting)
    assert results == [(200, "blue\n"), (200, "blue\n")]
    actions = [(e["action"], e["reason"]) for e in await api.events()]
    assert actions == [("hold", "db migration"), ("resume", None)]


async def test_hold_with_a_timeout_resumes_by_itself(stack, api):
    answer = await api.ok("/v1/hold", {"timeout": 0.2})
    assert answer["held"] is True

    async def resumed():
        st = await api.status()
        return not st["held"]
    await eventually(resumed, timeout=2)

    async def resume_recorded():      # the history entry may follow the release by a moment
        events = await api.events()
        return events if len(events) >= 2 else None
    events = await eventually(resume_recorded)
    assert [(e["action"], e["reason"]) for e in events] == [("hold", None), ("resume", "hold timeout")]


async def test_hold_without_a_timeout_lasts_hold_max_wait(make_stack, session):
    running = await make_stack(hold={"max_wait": "300ms", "max_queued": 100})
    api = Admin(session, running.admin_port)
    assert (await api.ok("/v1/hold"))["held"] is True
    await asyncio.sleep(0.1)
    assert (await api.status())["held"] is True

    async def resumed():
        return not (await api.status())["held"]
    await eventually(resumed, timeout=2)


# ------------------------------------------------------------------------ canary


async def test_canary_sets_the_weights(stack, api):
    for weight in (25, 60, 100, 1):
        answer = await api.ok("/v1/canary", {"weight": weight})
        assert answer["weights"] == {"blue": 100 - weight, "green": weight}
        assert answer["live"] == "blue" and answer["changed"] is True
    answer = await api.ok("/v1/canary", {"weight": 0})
    assert answer["weights"] == {"blue": 100, "green": 0}
    # after a flip the idle environment is blue
    await api.ok("/v1/flip")
    answer = await api.ok("/v1/canary", {"weight": 15})
    assert answer["weights"] == {"green": 85, "blue": 15}


async def test_promote_without_a_canary_is_409(stack, api):
    status, payload, _ = await api.post("/v1/promote", {})
    assert_error(status, payload, 409, "no_canary")
    await api.ok("/v1/canary", {"weight": 20})
    await api.ok("/v1/abort")
    status, payload, _ = await api.post("/v1/promote", {"force": True})
    assert_error(status, payload, 409, "no_canary")
    assert (await api.status())["live"] == "blue"


async def test_promote_makes_the_canary_live_with_weights_100_0(stack, api, session):
    await api.ok("/v1/canary", {"weight": 30})
    answer = await api.ok("/v1/promote", {"reason": "looks good"})
    assert (answer["live"], answer["previous"], answer["changed"]) == ("green", "blue", True)
    assert answer["weights"] == {"green": 100, "blue": 0}
    for _ in range(5):
        assert await proxy_get(session, stack) == (200, "green\n")
    event = (await api.events())[-1]
    assert (event["action"], event["from"], event["to"], event["reason"]) == \
        ("promote", "blue", "green", "looks good")


async def test_abort_puts_the_weight_back_to_0(stack, api, session):
    assert (await api.ok("/v1/abort"))["changed"] is False     # nothing to abort: a no-op
    await api.ok("/v1/canary", {"weight": 100})
    assert await proxy_get(session, stack) == (200, "green\n")
    answer = await api.ok("/v1/abort")
    assert answer["weights"] == {"blue": 100, "green": 0}
    assert answer["live"] == "blue" and answer["changed"] is True
    assert await proxy_get(session, stack) == (200, "blue\n")
    assert (await api.ok("/v1/abort"))["changed"] is False


async def test_canary_to_an_unhealthy_idle_environment_fails_its_gate(stack, api):
    await make_unhealthy(stack, "green")
    status, payload, _ = await api.post("/v1/canary", {"weight": 10})
    assert_error(status, payload, 409, "gate_failed")
    assert (await api.status())["weights"] == {"blue": 100, "green": 0}
    answer = await api.ok("/v1/canary", {"weight": 10, "force": True})
    assert answer["weights"] == {"blue": 90, "green": 10}


async def test_a_flip_resets_the_canary_weights(stack, api):
    await api.ok("/v1/canary", {"weight": 30})
    answer = await api.ok("/v1/flip", {"to": "green"})
    assert answer["live"] == "green" and answer["weights"] == {"green": 100, "blue": 0}


async def test_a_flip_to_the_live_environment_during_a_canary_resets_the_weights(stack, api):
    await api.ok("/v1/canary", {"weight": 30})
    answer = await api.ok("/v1/flip", {"to": "blue"})
    assert answer["live"] == "blue" and answer["weights"] == {"blue": 100, "green": 0}
    assert answer["previous"] != "blue"


# -------------------------------------------------------------------- generation


async def test_generation_rules(stack, api):
    steps = [("/v1/hold", {"timeout": 30}, 0), ("/v1/resume", {}, 0), ("/v1/lock", {}, 0),
             ("/v1/unlock", {}, 0), ("/v1/flip", {"to": "blue"}, 0), ("/v1/flip", {}, 1),
             ("/v1/flip", {"to": "green"}, 0), ("/v1/rollback", {}, 1), ("/v1/canary", {"weight": 10}, 1),
             ("/v1/canary", {"weight": 10}, 0), ("/v1/canary", {"weight": 50}, 1), ("/v1/abort", {}, 1),
             ("/v1/canary", {"weight": 20}, 1), ("/v1/promote", {}, 1), ("/v1/hold", {}, 0),
             ("/v1/resume", {}, 0)]
    generation = (await api.status())["generation"]
    assert generation == 1
    for path, body, step in steps:
        answer = await api.ok(path, body)
        assert answer["generation"] == generation + step, (path, body, answer["generation"], generation)
        assert stack.proxy.router.route.generation == answer["generation"]
        generation = answer["generation"]
    # refused calls do not move it either
    await api.ok("/v1/lock")
    for path, body in [("/v1/flip", {}), ("/v1/flip", {"if_generation": 1}), ("/v1/canary", {"weight": 101})]:
        status, _, _ = await api.post(path, body)
        assert status >= 400
    assert (await api.status())["generation"] == generation


# ------------------------------------------------------------------------ history


def parse_at(at: str) -> datetime:
    assert isinstance(at, str) and (at.endswith("Z") or at.endswith("+00:00")), at
    when = datetime.fromisoformat(at)
    assert when.utcoffset() == timedelta(0), at
    return when


async def test_history_records_every_action_oldest_first(stack, api):
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    calls = [("/v1/flip", {}, "flip", "blue", "green", 2),
             ("/v1/rollback", {}, "rollback", "green", "blue", 3),
             ("/v1/hold", {"timeout": 30}, "hold", "blue", "blue", 3),
             ("/v1/resume", {}, "resume", "blue", "blue", 3),
             ("/v1/lock", {}, "lock", "blue", "blue", 3),
             ("/v1/unlock", {}, "unlock", "blue", "blue", 3),
             ("/v1/canary", {"weight": 20}, "canary", "blue", "green", 4),
             ("/v1/abort", {}, "abort", "blue", "blue", 5),
             ("/v1/canary", {"weight": 40}, "canary", "blue", "green", 6),
             ("/v1/promote", {}, "promote", "blue", "green", 7)]
    for n, (path, body, *_rest) in enumerate(calls):
        await api.ok(path, {**body, "reason": f"step {n}"})
    events = await api.events()
    assert len(events) == len(calls)
    previous_at = started
    for n, (event, (_, _, action, source, target, generation)) in enumerate(zip(events, calls)):
        assert {"at", "action", "from", "to", "generation", "reason"} <= set(event), event
        assert (event["action"], event["from"], event["to"], event["generation"], event["reason"]) == \
            (action, source, target, generation, f"step {n}"), event
        when = parse_at(event["at"])
        assert previous_at <= when <= datetime.now(timezone.utc) + timedelta(seconds=1)
        previous_at = when


async def test_a_flip_entry_gains_its_drain_counts_when_the_drain_ends(stack, api, session):
    slow = asyncio.create_task(proxy_get(session, stack, "/slow?s=0.4"))

    async def inflight():
        return stack.proxy.router.environments["blue"].inflight == 1
    await eventually(inflight)
    await api.ok("/v1/flip", {"reason": "with one in flight"})
    [event] = await api.events()
    assert "drained" not in event          # the 200 does not wait for the drain
    async with asyncio.timeout(3):
        assert await slow == (200, "blue slow\n")

    async def drained():
        [event] = await api.events()
        return event if "drained" in event else None
    event = await eventually(drained)
    assert (event["drained"], event["forced_closed"], event["dropped"]) == (1, 0, 0)
    assert event["action"] == "flip" and event["reason"] == "with one in flight"


# ------------------------------------------------------------- openapi / metrics


async def test_openapi_document_lists_every_path(stack, api):
    status, doc, headers = await api.get("/v1/openapi.json")
    assert status == 200 and isinstance(doc, dict)
    assert "json" in headers.get("Content-Type", "")
    assert str(doc["openapi"]).startswith("3.")
    for path in V1_GET + V1_POST + ["/metrics", "/healthz"]:
        assert path in doc["paths"], path
    for path in V1_POST:
        assert "post" in doc["paths"][path], path
    for path in V1_GET:
        assert "get" in doc["paths"][path], path


async def test_metrics_are_exposed_and_move(stack, api, session):
    status, text, headers = await api.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("cutover_requests_total", "cutover_route_generation", "cutover_switches_total",
                 "cutover_server_healthy", "cutover_request_duration_seconds_bucket"):
        assert name in text, name
    before = scrape(text)
    assert before[("cutover_route_generation", frozenset())] == 1
    flips = ("cutover_switches_total", frozenset({("action", "flip")}))
    assert before[flips] == 0
    blue_ok = ("cutover_requests_total", frozenset({("environment", "blue"), ("code_class", "2xx")}))
    blue_count = ("cutover_request_duration_seconds_count", frozenset({("environment", "blue")}))
    for server_env in ("blue", "green"):
        address = stack.proxy.router.environments[server_env].servers[0].address
        assert before[("cutover_server_healthy",
                       frozenset({("environment", server_env), ("server", address)}))] == 1

    for _ in range(3):
        assert await proxy_get(session, stack) == (200, "blue\n")
    await api.ok("/v1/flip")
    after = scrape((await api.get("/metrics"))[1])
    assert after[blue_ok] == before[blue_ok] + 3
    assert after[blue_count] == before[blue_count] + 3
    assert after[("cutover_route_generation", frozenset())] == 2
    assert after[flips] == 1


# --------------------------------------------------------------- healthz / 404 / 405


async def test_healthz(stack, api):
    status, payload, _ = await api.get("/healthz")
    assert status == 200


async def test_unknown_path_is_a_json_404(stack, api):
    for path in ("/nope", "/v1/nope", "/v1/status/x", "/v2/status"):
        status, payload, _ = await api.get(path)
        assert_error(status, payload, 404, "not_found")


async def test_wrong_method_is_a_json_405(stack, api):
    for method, path in [("GET", "/v1/flip"), ("POST", "/v1/status"), ("DELETE", "/v1/lock"),
                         ("POST", "/metrics"), ("PUT", "/v1/history")]:
        status, payload, headers = await api.call(method, path)
        assert_error(status, payload, 405, "method_not_allowed")


async def test_wrong_method_with_auth_on_is_401_before_405(make_stack, session):
    running = await make_stack(admin=AUTH)
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("GET", "/v1/flip")
    assert_error(status, payload, 401, "unauthorized")
    status, payload, _ = await api.call("GET", "/v1/flip", token=TOKEN)
    assert_error(status, payload, 405, "method_not_allowed")


# ------------------------------------------------------------------------- state


async def test_state_survives_a_restart(make_stack, session):
    first = await make_stack()
    api = Admin(session, first.admin_port)
    await api.ok("/v1/flip", {"reason": "deploy"})
    await api.ok("/v1/lock", {"reason": "freeze"})
    await api.ok("/v1/hold", {"timeout": 60})
    history = await api.events()
    await first.stop(0.5)

    second = await make_stack()
    api = Admin(session, second.admin_port)
    st = await api.status()
    assert (st["live"], st["previous"], st["generation"], st["locked"]) == ("green", "blue", 2, True)
    assert st["held"] is True
    assert [(e["action"], e["reason"], e["generation"]) for e in await api.events()] == \
        [(e["action"], e["reason"], e["generation"]) for e in history]
    assert [e["action"] for e in history] == ["flip", "lock", "hold"]
    status, payload, _ = await api.post("/v1/flip", {})
    assert_error(status, payload, 409, "locked")
    await api.ok("/v1/resume")


async def test_the_state_file_reflects_a_flip_when_its_200_arrives(stack, api):
    path = stack.controller.store.path
    answer = await api.ok("/v1/flip", {"reason": "go"})
    data = json.loads(path.read_text())       # read at once, before anything else runs
    assert (data["live"], data["previous"], data["generation"]) == ("green", "blue", answer["generation"])
    assert data["history"][-1]["action"] == "flip" and data["history"][-1]["reason"] == "go"
    await api.ok("/v1/lock")
    data = json.loads(path.read_text())
    assert data["locked"] is True


async def test_a_state_file_naming_an_unknown_environment_stops_the_start(make_stack, tmp_path):
    (tmp_path / "state.json").write_text(json.dumps(
        {"version": 1, "live": "purple", "previous": "blue", "generation": 4}))
    with pytest.raises(StateError) as caught:
        await make_stack()
    message = str(caught.value)
    assert "purple" in message and "state.json" in message
    assert "blue" in message and "green" in message     # it says what the config has
