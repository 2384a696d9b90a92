"""The rollback drill against a running router, and the probe header it relies on."""

from __future__ import annotations

import asyncio

import aiohttp

from admin.api import IDEMPOTENCY
from admin.story.drill import drill
from tests.support.backend import set_failing
from tests.support.cli import assert_failed, cutover


async def test_probe_header_names_the_serving_environment(make_proxy):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.port}/", headers={"X-Cutover-Probe": "1"}) as resp:
            assert resp.headers["X-Cutover-Served-By"] == "blue 1"
        async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
            assert "X-Cutover-Served-By" not in resp.headers


async def test_probe_header_needs_the_token_when_one_is_set(make_proxy):
    proxy = await make_proxy(admin={"listen": "127.0.0.1:0", "token": "t0ken"})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.port}/", headers={"X-Cutover-Probe": "1"}) as resp:
            assert resp.status == 403
        async with session.get(f"http://127.0.0.1:{proxy.port}/",
                               headers={"X-Cutover-Probe": "1", "X-Cutover-Token": "t0ken"}) as resp:
            assert resp.status == 200 and resp.headers["X-Cutover-Served-By"] == "blue 1"


async def test_drill_flips_and_rolls_back_with_no_failed_probe(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": "t0ken"})
    report = await drill(f"http://127.0.0.1:{running.admin_port}", "t0ken", settle=0.3, objective_ms=1000)
    assert report["failed_probes"] == 0 and report["probes"] > 20
    assert [s["action"] for s in report["switches"]] == ["flip", "rollback"]
    assert [s["to"] for s in report["switches"]] == ["green", "blue"]
    assert all(s["recovery_ms"] is not None and s["recovery_ms"] > 0 for s in report["switches"])
    assert report["passed"] is True
    assert running.controller.state.live == "blue" and running.controller.state.generation == 3
    print("drill recoveries (ms):", [s["recovery_ms"] for s in report["switches"]])


async def test_drill_fails_when_the_target_answers_errors(make_stack, backends):
    running = await make_stack()
    await running.proxy.health.stop()
    await set_failing(backends["green"], True)
    report = await drill(f"http://127.0.0.1:{running.admin_port}", None, settle=0.2, objective_ms=1000)
    assert report["failed_probes"] > 0 and report["passed"] is False
    assert "500" in report["failures"]


async def test_drill_sends_its_own_idempotency_key_with_each_switch(make_stack):
    # A key per switch lets AdminClient retry a switch whose answer never came, at most once applied.
    running = await make_stack()
    report = await drill(f"http://127.0.0.1:{running.admin_port}", None, settle=0.1, objective_ms=5000)
    assert [s["action"] for s in report["switches"]] == ["flip", "rollback"]
    assert len(running.admin.app[IDEMPOTENCY]) == 2


async def test_drill_gives_up_on_an_admin_api_that_does_not_answer_after_its_request_timeout():
    # An admin API that accepts and never answers: `cutover drill --request-timeout 0.5` ends in one
    # line naming the timeout, not after the drill's own 60 s per call.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):      # reads until the client gives up and closes
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            result = await cutover("drill", "--admin", f"http://127.0.0.1:{port}", "--request-timeout", "0.5",
                                   timeout=20)
    finally:
        server.close()
    line = assert_failed(result, 1, "timeout")
    assert "within 0.5s" in line, line
