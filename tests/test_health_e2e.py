"""End-to-end tests of active and passive health checking."""

from __future__ import annotations

import asyncio

import aiohttp

from backend import Backend
from proxy.backends import Environment, Server
from proxy.health import HealthChecker, probe
from rawhttp import free_port


class Dead:
    """An address where nothing listens: every connect is refused."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"


async def wait_for(predicate, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def fail(backend: Backend, on: bool) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{backend.address}/__fail?on={'1' if on else '0'}") as resp:
            assert resp.status == 200


async def test_probe_reports_status_classes(backends):
    env = Environment("blue")
    server = Server("127.0.0.1", backends["blue"].port, env)
    assert await probe(server, "/healthz", 1.0) == (True, "HTTP 200")
    assert await probe(server, "/status/302", 1.0) == (True, "HTTP 302")
    assert await probe(server, "/status/503", 1.0) == (False, "HTTP 503")
    dead = Server("127.0.0.1", free_port(), env)
    ok, reason = await probe(dead, "/healthz", 1.0)
    assert not ok and "refused" in reason.lower()


def test_streak_rules_need_consecutive_results():
    env = Environment("blue")
    server = Server("127.0.0.1", 1, env)
    changes = []
    checker = HealthChecker([server], "/healthz", 1, 1, healthy_after=2, unhealthy_after=3,
                            set_status=lambda s, up, why: (changes.append(up), s.set_healthy(up)))
    for ok in (False, False, True, False, False):
        checker.report(server, ok, "")
    assert server.healthy and changes == []          # a success in between resets the streak
    checker.report(server, False, "")
    assert not server.healthy and changes == [False]
    checker.report(server, True, "")
    assert not server.healthy
    checker.report(server, True, "")
    assert server.healthy and changes == [False, True]


async def test_failing_server_is_taken_out_and_brought_back(make_proxy, tmp_path):
    blue2 = await Backend("blue2").start()
    try:
        blue1 = Backend("blue1")
        await blue1.start()
        green = await Backend("green").start()
        proxy = await make_proxy({"blue": [blue1, blue2], "green": green},
                                 health_check={"interval": "50ms", "timeout": "500ms",
                                               "healthy_after": 2, "unhealthy_after": 2})
        servers = proxy.router.environments["blue"].servers
        await fail(blue1, True)
        await wait_for(lambda: not servers[0].healthy)
        assert servers[1].healthy and proxy.router.environments["blue"].healthy
        async with aiohttp.ClientSession() as session:
            for _ in range(6):
                async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                    assert (resp.status, await resp.text()) == (200, "blue2\n")
        await fail(blue1, False)
        await wait_for(lambda: servers[0].healthy)
        await blue1.stop()
        await green.stop()
    finally:
        await blue2.stop()


async def test_environment_with_no_healthy_server_answers_503(make_proxy):
    blue = await Backend("blue").start()
    green = await Backend("green").start()
    try:
        proxy = await make_proxy({"blue": blue, "green": green},
                                 health_check={"interval": "50ms", "unhealthy_after": 1})
        await fail(blue, True)
        await wait_for(lambda: not proxy.router.environments["blue"].healthy)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                assert resp.status == 503
                assert "no healthy server in environment blue" in await resp.text()
                assert resp.headers["Retry-After"] == "1"
        assert proxy.router.snapshot().env("blue").healthy is False
    finally:
        await blue.stop()
        await green.stop()


async def test_refused_connection_marks_server_down_at_once_and_request_is_retried(make_proxy, backends):
    dead = Dead()
    proxy = await make_proxy({"blue": [dead, backends["blue"]], "green": backends["green"]},
                             health_check={"interval": "10s"})
    servers = proxy.router.environments["blue"].servers
    events = []
    proxy.router.on_health.append(lambda server, up, why: events.append((server.address, up, why)))
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                assert (resp.status, await resp.text()) == (200, "blue\n")
    assert servers[0].healthy is False and servers[1].healthy is True
    assert len(events) == 1 and events[0][0] == dead.address and events[0][1] is False
    assert "connect failed" in events[0][2]


async def test_idle_and_previous_environments_are_checked_too(make_proxy, backends):
    proxy = await make_proxy(health_check={"interval": "50ms", "unhealthy_after": 1})
    await fail(backends["green"], True)   # green is idle: nobody sends it traffic
    await wait_for(lambda: not proxy.router.environments["green"].healthy)
    await fail(backends["green"], False)
    await wait_for(lambda: proxy.router.environments["green"].healthy)
