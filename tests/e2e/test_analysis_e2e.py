"""Post-flip analysis: probes and the live error rate after a flip; auto-rollback on a breach
(the same rules on fake snapshots: tests/admin/test_analysis_on_fake_snapshots.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from admin.state import StateError
from tests.support.adminapi import post
from tests.support.backend import set_failing
from tests.support.stores import FailingStore


def analysis(**overrides):
    config = {"window": "2s", "interval": "50ms", "min_requests": 10, "max_error_ratio": 0.2}
    config.update(overrides)
    return config


async def test_healthy_flip_passes_analysis_and_wait_reports_it(make_stack):
    running = await make_stack(analysis=analysis(window="600ms"))
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, body = await post(session, running, "/v1/flip", {"wait": True})
        assert status == 200
        assert time.monotonic() - started >= 0.5          # it waited for the window
        assert body["live"] == "green"
        assert body["analysis"]["state"] == "passed" and body["analysis"]["generation"] == 2
        assert body["analysis"]["probes"] >= 3 and body["analysis"]["failed_probes"] == 0
    assert running.controller.state.live == "green"


async def test_failing_probe_rolls_back_automatically(make_stack, backends):
    running = await make_stack(analysis=analysis(window="5s"))
    await running.proxy.health.stop()           # let the probe, not the health check, find the fault
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, running, "/v1/flip")
        assert status == 200 and body["live"] == "green"
        await set_failing(backends["green"], True)      # green starts answering 500 after the flip
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
        async with session.get(f"http://127.0.0.1:{running.proxy.port}/") as resp:
            assert await resp.text() == "blue\n"        # traffic is back on the previous environment
        async with session.get(f"http://127.0.0.1:{running.admin_port}/v1/history") as resp:
            events = (await resp.json())["events"]
    assert outcome["state"] == "rolled_back"
    assert "answered 500" in outcome["reason"]
    print(f"first failing probe -> rollback applied: {outcome['rollback_ms']} ms")
    last = events[-1]
    assert last["action"] == "auto_rollback" and last["from"] == "green" and last["to"] == "blue"
    assert "analysis" in last["reason"] and "500" in last["reason"]
    assert running.controller.state.live == "blue" and running.controller.state.generation == 3


async def test_flip_wait_reports_rolled_back(make_stack, backends):
    running = await make_stack(analysis=analysis(window="5s"))
    await running.proxy.health.stop()
    await set_failing(backends["green"], True)
    running.proxy.router.environments["green"].servers[0].set_healthy(True)
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, running, "/v1/flip", {"wait": True, "force": True})
    assert status == 200
    assert body["analysis"]["state"] == "rolled_back"
    assert body["live"] == "blue"


async def test_error_ratio_needs_the_minimum_sample(make_stack, backends):
    running = await make_stack(analysis=analysis(window="5s", probe_path="/status/200", min_requests=12))
    await running.proxy.health.stop()
    url = f"http://127.0.0.1:{running.proxy.port}/"
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        await set_failing(backends["green"], True)
        for _ in range(4):                               # 4 x 500: too few to decide
            async with session.get(url) as resp:
                assert resp.status == 500
        await asyncio.sleep(0.2)
        assert running.controller.analysis.state == "running"
        assert running.controller.state.live == "green"
        for _ in range(8):
            async with session.get(url) as resp:
                await resp.read()
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 3)
    assert outcome["state"] == "rolled_back"
    assert "5xx ratio" in outcome["reason"]
    assert running.controller.state.live == "blue"


async def test_a_new_flip_cancels_the_running_analysis(make_stack):
    running = await make_stack(analysis=analysis(window="10s"))
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        first = running.controller.analysis
        await post(session, running, "/v1/flip")
        outcome = await asyncio.wait_for(first.done, 2)
    assert outcome["state"] == "cancelled"
    assert running.controller.analysis.generation == 3 and running.controller.analysis.state == "running"


async def test_no_analysis_when_window_is_zero(make_stack):
    running = await make_stack()
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, running, "/v1/flip", {"wait": True})
    assert status == 200 and body["analysis"] is None


async def test_a_hold_during_the_analysis_window_does_not_roll_back(make_stack):
    running = await make_stack(analysis={"window": "400ms", "interval": "50ms"})
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        await post(session, running, "/v1/hold", {"timeout": 0.6})
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "passed", outcome
    assert running.controller.state.live == "green"


async def test_probes_do_not_fill_the_minimum_sample(make_stack, backends):
    running = await make_stack(analysis={"window": "600ms", "interval": "20ms", "probe_path": "/status/200",
                                         "min_requests": 10, "max_error_ratio": 0.1})
    await running.proxy.health.stop()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        await set_failing(backends["green"], True)
        for _ in range(2):                               # two user requests, both 500
            async with session.get(f"http://127.0.0.1:{running.proxy.port}/") as resp:
                assert resp.status == 500
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "passed" and outcome["requests"] == 2 and outcome["errors"] == 2
    assert outcome["probes"] > 10


async def test_breach_with_a_failed_rollback_is_reported_failed_not_passed(make_stack, backends):
    running = await make_stack(analysis={"window": "3s", "interval": "50ms"})
    await running.proxy.health.stop()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        running.controller.store = FailingStore(running.controller.store, StateError("disk full"))
        await set_failing(backends["green"], True)
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "failed" and "rollback failed" in outcome["reason"]
