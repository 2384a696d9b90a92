"""Cleanup steps are idempotent: abort, resume and unlock with nothing to undo are a no-op 200.

A CI pipeline's cleanup runs them unconditionally; like `canary 0`, each answers
``changed: false`` with the generation and the history untouched.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.adminapi import post
from tests.support.cli import TOKEN, cutover, url_of


@pytest.mark.parametrize("path", ["/v1/abort", "/v1/resume", "/v1/unlock", "/v1/canary"])
async def test_cleanup_with_nothing_to_undo_is_a_no_op_200(make_stack, path):
    running = await make_stack()
    body = {"weight": 0} if path == "/v1/canary" else {}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, answer = await post(session, running, path, body)
            assert status == 200, answer
            assert answer["changed"] is False
            assert answer["generation"] == 1 and answer["weights"] == {"blue": 100, "green": 0}
    assert running.controller.history()["events"] == []


async def test_abort_under_a_lock_with_no_canary_is_a_no_op_200(make_stack):
    running = await make_stack()
    await running.controller.lock_switch("freeze")
    async with aiohttp.ClientSession() as session:
        status, answer = await post(session, running, "/v1/abort")
    assert (status, answer["changed"], answer["generation"]) == (200, False, 1)


async def test_abort_twice_aborts_once(make_stack):
    running = await make_stack()
    await running.controller.canary(30)
    async with aiohttp.ClientSession() as session:
        first = await post(session, running, "/v1/abort")
        second = await post(session, running, "/v1/abort")
    assert first[0] == second[0] == 200
    assert (first[1]["changed"], first[1]["generation"]) == (True, 3)
    assert (second[1]["changed"], second[1]["generation"]) == (False, 3)
    assert [e["action"] for e in running.controller.history()["events"]] == ["canary", "abort"]


async def test_cli_abort_with_no_canary_exits_0(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    result = await cutover("abort", "--admin", url_of(running), "--token", TOKEN)
    assert (result.rc, result.err) == (0, "")
    assert result.out == "no canary running: all traffic to blue (generation 1, nothing changed)\n"
    for command in ("resume", "unlock"):
        again = await cutover(command, "--admin", url_of(running), "--token", TOKEN)
        assert (again.rc, again.err) == (0, ""), again
    assert running.controller.history()["events"] == []


async def test_promote_and_rollback_with_nothing_to_do_still_refuse(make_stack):
    """Not cleanup steps: promote without a canary and rollback without a previous are 409."""
    running = await make_stack()
    async with aiohttp.ClientSession() as session:
        promote = await post(session, running, "/v1/promote")
        rollback = await post(session, running, "/v1/rollback")
    assert (promote[0], promote[1]["code"]) == (409, "no_canary")
    assert (rollback[0], rollback[1]["code"]) == (409, "no_previous")
