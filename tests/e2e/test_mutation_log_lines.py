"""The log lines of mutations and drains (issue 8.6): one line each, once.

Every mutation call logs exactly one line: applied or no change (with the action, who and
from where), or refused (the action, the error code and the client address; unauthorized
and cross-site attempts too). Each drain outcome logs one line with the generation, the
environment it drained and its counts, at warning level when something was forced
closed or dropped. Real stacks on loopback, records from caplog.
"""

from __future__ import annotations

import asyncio
import logging

from tests.support.adminapi import Admin
from tests.support.wait import eventually

TOKEN = "t0ken"


def lines(caplog, *words: str) -> list[logging.LogRecord]:
    """lines: the cutover records whose message holds every one of ``words``."""
    return [r for r in caplog.records if r.name.startswith("cutover")
            and all(w in r.getMessage() for w in words)]


def mutation_lines(caplog) -> list[logging.LogRecord]:
    """mutation_lines: the records the admin API and the controller logged (not health, not drains)."""
    return [r for r in caplog.records if r.name in ("cutover.admin", "cutover.controller")
            and "drain" not in r.getMessage()]


async def test_an_applied_flip_logs_one_line_naming_action_actor_and_client(make_stack, session, caplog):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    api = Admin(session, running.admin_port, token=TOKEN)
    caplog.set_level(logging.INFO)
    await api.ok("/v1/flip", {"reason": "release 7"})
    [line] = mutation_lines(caplog)
    text = line.getMessage()
    for word in ("flip", "admin", "127.0.0.1", "green", "generation 2", "release 7"):
        assert word in text, text
    assert TOKEN not in text
    assert line.levelno == logging.INFO


async def test_every_kind_of_mutation_logs_exactly_one_line(make_stack, session, caplog):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    calls = [("/v1/lock", {}), ("/v1/unlock", {}), ("/v1/hold", {"timeout": 5}), ("/v1/resume", {}),
             ("/v1/canary", {"weight": 10}), ("/v1/promote", {}), ("/v1/rollback", {}),
             ("/v1/canary", {"weight": 20}), ("/v1/abort", {}),
             ("/v1/schema/attest", {"from_version": "1", "to_version": "2"}), ("/v1/flip", {"to": "green"})]
    for path, body in calls:
        caplog.clear()
        caplog.set_level(logging.INFO)
        await api.ok(path, body)
        found = mutation_lines(caplog)
        assert len(found) == 1, (path, [r.getMessage() for r in found])


async def test_a_no_op_logs_one_line_saying_nothing_changed(make_stack, session, caplog):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    caplog.set_level(logging.INFO)
    await api.ok("/v1/flip", {"to": "blue"})
    [line] = mutation_lines(caplog)
    assert "no change" in line.getMessage(), line.getMessage()


async def test_refused_mutations_log_one_line_with_action_code_and_client(make_stack, session, caplog):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    api = Admin(session, running.admin_port, token=TOKEN)
    await running.proxy.health.stop()
    await api.ok("/v1/lock", {})
    cases = [
        ("locked", lambda: api.call("POST", "/v1/flip", body={})),
        ("unauthorized", lambda: api.call("POST", "/v1/flip", body={}, token="wrong")),
        ("unauthorized", lambda: api.call("POST", "/v1/hold", body={}, token=None)),
        ("cross_origin", lambda: api.call("POST", "/v1/lock", body={}, headers={"Origin": "http://evil.example"})),
        ("bad_request", lambda: api.call("POST", "/v1/canary", body={"weight": 500})),
    ]
    for code, call in cases:
        caplog.clear()
        caplog.set_level(logging.INFO)
        status, payload, _ = await call()
        assert payload["code"] == code, payload
        found = mutation_lines(caplog)
        assert len(found) == 1, (code, [r.getMessage() for r in found])
        text = found[0].getMessage()
        assert code in text and "127.0.0.1" in text and "refused" in text, text
        assert found[0].levelno == logging.WARNING

    await api.ok("/v1/unlock", {})
    running.proxy.router.environments["green"].servers[0].set_healthy(False)
    for code, body in (("gate_failed", {}), ("generation_mismatch", {"if_generation": 99})):
        caplog.clear()
        caplog.set_level(logging.INFO)
        status, payload, _ = await api.call("POST", "/v1/flip", body=body)
        assert payload["code"] == code, payload
        [line] = mutation_lines(caplog)
        assert "flip" in line.getMessage() and code in line.getMessage(), line.getMessage()


async def test_a_drain_outcome_logs_one_line(make_stack, session, caplog):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    port = running.proxy.port
    slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?s=0.3"))

    async def inflight():
        return running.proxy.router.environments["blue"].inflight == 1
    await eventually(inflight)
    caplog.set_level(logging.INFO)
    await api.ok("/v1/flip", {})
    async with asyncio.timeout(3):
        (await slow).release()

    async def logged():
        return lines(caplog, "drain")
    [line] = await eventually(logged, timeout=3)
    text = line.getMessage()
    for word in ("generation 2", "blue", "drained 1", "forced_closed 0", "dropped 0", "client_gone 0"):
        assert word in text, text
    assert line.levelno == logging.INFO


async def test_a_forced_close_at_drain_timeout_logs_a_warning(make_stack, session, caplog):
    running = await make_stack(drain_timeout="200ms")
    api = Admin(session, running.admin_port)
    port = running.proxy.port

    async def slow():
        try:
            async with session.get(f"http://127.0.0.1:{port}/slow?s=3") as resp:
                await resp.read()
        except Exception:   # noqa: BLE001 - the drain closes it; any client error is expected
            pass
    request = asyncio.create_task(slow())

    async def inflight():
        return running.proxy.router.environments["blue"].inflight == 1
    await eventually(inflight)
    caplog.set_level(logging.INFO)
    await api.ok("/v1/flip", {})

    async def logged():
        return lines(caplog, "drain")
    [line] = await eventually(logged, timeout=5)
    assert "forced_closed 1" in line.getMessage(), line.getMessage()
    assert line.levelno == logging.WARNING
    await asyncio.wait_for(request, 5)


async def test_a_replayed_call_logs_one_line_saying_so(make_stack, session, caplog):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.call("POST", "/v1/flip", body={}, headers={"Idempotency-Key": "once"})
    caplog.clear()
    caplog.set_level(logging.INFO)
    await api.call("POST", "/v1/flip", body={}, headers={"Idempotency-Key": "once"})
    [line] = mutation_lines(caplog)
    assert "flip" in line.getMessage() and "replayed" in line.getMessage(), line.getMessage()
    assert running.proxy.router.route.generation == 2
