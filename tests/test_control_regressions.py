"""Control-plane rules found in review: holds vs analysis, --wait outcomes, races, metrics."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from admin.state import StateNotDurable
from test_cli import cutover, url_of


class Store:
    """Store: wraps the stack's store; ``fail`` (an exception to raise after or instead of committing)."""

    def __init__(self, inner, fail=None, write_first=False) -> None:
        self.inner = inner
        self.history_limit = inner.history_limit
        self.fail = fail
        self.write_first = write_first

    def describe(self) -> str:
        return self.inner.describe()

    async def load(self):
        return await self.inner.load()

    async def commit(self, state, expect, event=None):
        revision = None
        if self.fail is None or self.write_first:
            revision = await self.inner.commit(state, expect, event)
        if self.fail is not None:
            raise self.fail
        return revision

    def __getattr__(self, name):      # append, amend, add_drain, watch: the inner store's
        return getattr(self.inner, name)


async def post(session, running, path, body=None):
    async with session.post(f"http://127.0.0.1:{running.admin_port}{path}", json=body or {}) as resp:
        return resp.status, await resp.json()


async def test_a_hold_during_the_analysis_window_does_not_roll_back(make_stack):
    running = await make_stack(analysis={"window": "400ms", "interval": "50ms"})
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        await post(session, running, "/v1/hold", {"timeout": 0.6})
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "passed", outcome
    assert running.controller.state.live == "green"


async def test_flip_wait_exits_1_when_a_rollback_supersedes_the_flip(make_stack):
    running = await make_stack(analysis={"window": "3s", "interval": "50ms"})
    cli = asyncio.create_task(cutover("flip", "--wait", "--admin", url_of(running)))
    async with asyncio.timeout(5):
        while running.controller.analysis is None:
            await asyncio.sleep(0.02)
    await running.controller.rollback(reason="operator")
    result = await asyncio.wait_for(cli, 10)
    assert result.rc == 1 and "analysis cancelled" in result.err and "Traceback" not in result.err


async def test_breach_with_a_failed_rollback_is_reported_failed_not_passed(make_stack, backends):
    running = await make_stack(analysis={"window": "3s", "interval": "50ms"})
    await running.proxy.health.stop()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        from admin.state import StateError
        running.controller.store = Store(running.controller.store, StateError("disk full"))
        async with session.post(f"http://{backends['green'].address}/__fail?on=1") as resp:
            assert resp.status == 200
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "failed" and "rollback failed" in outcome["reason"]


async def test_a_late_hold_timeout_record_does_not_undo_a_newer_hold(make_stack):
    running = await make_stack()
    controller = running.controller
    await controller.hold(30)
    await controller._end_hold("hold timeout")      # the expiry of an older hold, handled late
    assert controller.state.held is True and running.proxy.router.held
    assert [e["action"] for e in controller.state.history] == ["hold"]


async def test_lock_answers_at_once_while_a_flips_gates_run_and_the_flip_then_refuses(make_stack):
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=1"}]})
    async with aiohttp.ClientSession() as session:
        flip = asyncio.create_task(post(session, running, "/v1/flip"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        status, body = await post(session, running, "/v1/lock", {"reason": "freeze"})
        assert status == 200 and body["locked"] is True
        assert time.monotonic() - started < 0.5        # not queued behind the gates
        status, body = await asyncio.wait_for(flip, 5)
    assert status == 409 and body["code"] == "locked"
    assert running.controller.state.live == "blue"


async def test_a_flip_whose_route_moved_during_its_gates_is_a_conflict(make_stack):
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=0.6"}]})
    async with aiohttp.ClientSession() as session:
        flip = asyncio.create_task(post(session, running, "/v1/flip"))
        await asyncio.sleep(0.2)
        assert (await post(session, running, "/v1/flip", {"force": True}))[0] == 200
        status, body = await asyncio.wait_for(flip, 5)
    assert status == 409 and body["code"] == "conflict" and body["generation"] == 2


async def test_probes_do_not_fill_the_minimum_sample(make_stack, backends):
    running = await make_stack(analysis={"window": "600ms", "interval": "20ms", "probe_path": "/status/200",
                                         "min_requests": 10, "max_error_ratio": 0.1})
    await running.proxy.health.stop()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/flip")
        async with session.post(f"http://{backends['green'].address}/__fail?on=1") as resp:
            assert resp.status == 200
        for _ in range(2):                               # two user requests, both 500
            async with session.get(f"http://127.0.0.1:{running.proxy.port}/") as resp:
                assert resp.status == 500
        outcome = await asyncio.wait_for(running.controller.wait_for_analysis(2), 5)
    assert outcome["state"] == "passed" and outcome["requests"] == 2 and outcome["errors"] == 2
    assert outcome["probes"] > 10


async def test_a_state_written_but_not_folder_synced_is_applied(make_stack):
    running = await make_stack()
    inner = running.controller.store
    running.controller.store = Store(inner, StateNotDurable("written, syncing its folder failed"),
                                     write_first=True)
    result = await running.controller.flip()
    assert result["live"] == "green" and running.proxy.router.route.live == "green"
    assert inner.read()[0].live == "green"    # the file and the route agree


async def test_switch_metrics_count_each_action(make_stack):
    running = await make_stack()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/canary", {"weight": 20})
        await post(session, running, "/v1/abort")
        await post(session, running, "/v1/canary", {"weight": 30})
        await post(session, running, "/v1/promote")
        async with session.get(f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
            text = await resp.text()
    for action, count in (("canary", 2), ("abort", 1), ("promote", 1), ("flip", 0)):
        assert f'cutover_switches_total{{action="{action}"}} {count}.0' in text, action
