"""flip/promote with wait: the answer and the CLI follow exactly the generation this call created.

The answer with ``wait: true`` carries ``change`` (what this call did: action, from, to and the
generation it created), ``analysis`` (the outcome of that generation's analysis, or null) and the
current status around them. A no-op carries no analysis, so an older switch's outcome never
decides the exit status of a later call.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.adminapi import post
from tests.support.backend import set_failing
from tests.support.cli import TOKEN, assert_failed, cutover, url_of
from tests.support.wait import eventually


async def failing_green_stack(make_stack, backends, window: str = "3s"):
    """failing_green_stack: a stack whose analysis rolls a flip to green back (green answers 500)."""
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN},
                               analysis={"window": window, "interval": "50ms"})
    await running.proxy.health.stop()        # the probe, not the health check, finds the fault
    await set_failing(backends["green"], True)
    return running


async def test_wait_answer_names_this_flip_and_its_outcome_after_an_auto_rollback(make_stack, backends):
    running = await failing_green_stack(make_stack, backends)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        status, body = await post(session, running, "/v1/flip", {"wait": True, "force": True})
    assert status == 200, body
    assert body["changed"] is True
    assert body["change"] == {"action": "flip", "from": "blue", "to": "green", "generation": 2}
    assert body["analysis"]["generation"] == 2 and body["analysis"]["state"] == "rolled_back"
    # around them, the current status: the auto-rollback made generation 3 with blue live
    assert (body["live"], body["previous"], body["generation"]) == ("blue", "green", 3)


async def test_flip_wait_prints_this_flip_then_the_rollback_and_exits_1(make_stack, backends):
    running = await failing_green_stack(make_stack, backends)
    result = await cutover("flip", "--wait", "--force", "--admin", url_of(running), "--token", TOKEN)
    line = assert_failed(result, 1, "auto_rollback")
    assert result.out == "flipped blue -> green (generation 2, forced)\n"
    assert "rolled back by post-flip analysis" in line and "live is blue again (generation 3)" in line
    assert running.controller.state.live == "blue"


async def test_no_op_flip_wait_after_a_rollback_exits_0_without_the_old_outcome(make_stack, backends):
    running = await failing_green_stack(make_stack, backends)
    first = await cutover("flip", "--wait", "--force", "--admin", url_of(running), "--token", TOKEN)
    assert first.rc == 1 and running.controller.analysis.state == "rolled_back"

    again = await cutover("flip", "blue", "--wait", "--admin", url_of(running), "--token", TOKEN)
    assert (again.rc, again.err) == (0, ""), again
    assert again.out == "already live: blue (generation 3, nothing changed)\n"

    as_json = await cutover("flip", "blue", "--wait", "--json", "--admin", url_of(running), "--token", TOKEN)
    doc = as_json.json()
    assert as_json.rc == 0 and doc["changed"] is False
    assert doc["analysis"] is None and doc.get("change") is None


async def test_flip_to_live_during_a_canary_with_wait_ignores_an_older_outcome(make_stack, backends):
    running = await failing_green_stack(make_stack, backends)
    first = await cutover("flip", "--wait", "--force", "--admin", url_of(running), "--token", TOKEN)
    assert first.rc == 1
    await set_failing(backends["green"], False)
    await running.controller.canary(10, force=True)

    # blue is live: this flip only resets the canary weights (a new generation, no analysis)
    result = await cutover("flip", "blue", "--wait", "--json", "--admin", url_of(running), "--token", TOKEN)
    assert result.rc == 0, result
    doc = result.json()
    assert doc["change"] == {"action": "flip", "from": "blue", "to": "blue", "generation": 5}
    assert doc["analysis"] is None
    assert doc["weights"] == {"blue": 100, "green": 0}


async def test_flip_wait_superseded_by_a_newer_flip_reports_its_own_generation(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN},
                               analysis={"window": "10s", "interval": "50ms"})
    cli = asyncio.create_task(cutover("flip", "--wait", "--json", "--admin", url_of(running), "--token", TOKEN))
    await eventually(lambda: running.controller.analysis is not None, timeout=10)
    await running.controller.flip(reason="a newer flip")          # generation 3: blue again
    result = await asyncio.wait_for(cli, 15)
    assert_failed(result, 1, "analysis_cancelled")
    doc = result.json()
    assert doc["change"] == {"action": "flip", "from": "blue", "to": "green", "generation": 2}
    assert doc["analysis"]["generation"] == 2 and doc["analysis"]["state"] == "cancelled"
    assert (doc["live"], doc["generation"]) == ("blue", 3)


async def test_flip_wait_exits_1_when_a_rollback_supersedes_the_flip(make_stack):
    running = await make_stack(analysis={"window": "3s", "interval": "50ms"})
    cli = asyncio.create_task(cutover("flip", "--wait", "--admin", url_of(running)))
    await eventually(lambda: running.controller.analysis is not None, timeout=5)
    await running.controller.rollback(reason="operator")
    result = await asyncio.wait_for(cli, 10)
    assert result.rc == 1 and "analysis cancelled" in result.err and "Traceback" not in result.err


async def test_promote_wait_follows_its_generation(make_stack, backends):
    running = await failing_green_stack(make_stack, backends)
    await running.controller.canary(20, force=True)
    result = await cutover("promote", "--wait", "--force", "--admin", url_of(running), "--token", TOKEN)
    assert_failed(result, 1, "auto_rollback")
    assert result.out == "promoted blue -> green (generation 3, forced)\n"


async def test_wait_for_analysis_of_an_older_generation_still_answers_its_outcome(make_stack):
    running = await make_stack(analysis={"window": "10s", "interval": "50ms"})
    await running.controller.flip()
    await running.controller.flip()            # cancels generation 2's analysis, starts generation 3's
    outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["generation"] == 2 and outcome["state"] == "cancelled"
    assert await running.controller.wait_for_analysis(1) is None
