"""End-to-end tests of active and passive health checking (the streak rules on their own:
tests/proxy/test_health_check_streaks.py)."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.backends import Environment, Server
from proxy.health import HealthChecker, probe
from tests.support.backend import Backend, set_failing
from tests.support.ports import Refused, free_port
from tests.support.rawhttp import RawBackend
from tests.support.wait import eventually


async def test_probe_reports_status_classes(backends):
    env = Environment("blue")
    server = Server("127.0.0.1", backends["blue"].port, env)
    assert await probe(server, "/healthz", 1.0) == (True, "HTTP 200")
    assert await probe(server, "/status/302", 1.0) == (True, "HTTP 302")
    assert await probe(server, "/status/503", 1.0) == (False, "HTTP 503")
    dead = Server("127.0.0.1", free_port(), env)
    ok, reason = await probe(dead, "/healthz", 1.0)
    assert not ok and "refused" in reason.lower()


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
        await set_failing(blue1, True)
        await eventually(lambda: not servers[0].healthy, timeout=3.0)
        assert servers[1].healthy and proxy.router.environments["blue"].healthy
        async with aiohttp.ClientSession() as session:
            for _ in range(6):
                async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                    assert (resp.status, await resp.text()) == (200, "blue2\n")
        await set_failing(blue1, False)
        await eventually(lambda: servers[0].healthy, timeout=3.0)
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
        await set_failing(blue, True)
        await eventually(lambda: not proxy.router.environments["blue"].healthy, timeout=3.0)
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
    dead = Refused()
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
    await set_failing(backends["green"], True)   # green is idle: nobody sends it traffic
    await eventually(lambda: not proxy.router.environments["green"].healthy, timeout=3.0)
    await set_failing(backends["green"], False)
    await eventually(lambda: proxy.router.environments["green"].healthy, timeout=3.0)


async def endless_status_line(backend: RawBackend, reader, writer) -> None:
    """endless_status_line: answers any request with a status line over 64 KiB and no newline."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 " + b"X" * 70_000)
    await writer.drain()
    await asyncio.Event().wait()   # never ends the line (stop() ends it)


async def test_backend_with_an_endless_status_line_is_marked_unhealthy():
    upstream = await RawBackend(endless_status_line).start()
    checker = None
    try:
        env = Environment("blue")
        server = Server("127.0.0.1", upstream.server.sockets[0].getsockname()[1], env)
        env.add(server)
        ok, _ = await asyncio.wait_for(probe(server, "/healthz", 1.0), 2)
        assert ok is False
        changes = []
        checker = HealthChecker([server], "/healthz", 0.1, 1.0, healthy_after=1, unhealthy_after=1,
                                set_status=lambda s, up, why: (changes.append(up), s.set_healthy(up)))
        checker.start()
        await eventually(lambda: not server.healthy, timeout=1.5, what="the server marked unhealthy")
        assert changes == [False]
    finally:
        if checker is not None:
            await checker.stop()
        await upstream.stop()
