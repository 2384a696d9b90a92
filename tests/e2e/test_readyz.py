"""Readiness for an outer load balancer (issue 8.8): /readyz, apart from /healthz (liveness).

/readyz needs no token and answers 200 while this router can serve, 503 with the reasons
when the live environment has no healthy server or while shutting down (flipped before
the listeners stop accepting). /healthz stays 200 while the process is up. Real stacks on
loopback.
"""

from __future__ import annotations

import asyncio

from admin.api import READINESS
from tests.support.adminapi import Admin
from tests.support.stack import make_unhealthy
from tests.support.wait import eventually

TOKEN = "t0ken"


async def test_readyz_is_200_with_no_token_while_the_live_environment_is_healthy(make_stack, session):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    api = Admin(session, running.admin_port)
    status, payload, headers = await api.get("/readyz", token=None)
    assert status == 200, payload
    assert "json" in headers["Content-Type"]
    assert payload["ready"] is True and payload["reasons"] == []
    assert payload["live"] == "blue" and payload["live_healthy"] is True
    assert payload["shutting_down"] is False


async def test_readyz_is_503_when_the_live_environment_has_no_healthy_server(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await make_unhealthy(running, "blue")
    status, payload, _ = await api.get("/readyz")
    assert status == 503, payload
    assert payload["ready"] is False and payload["live_healthy"] is False
    assert any("blue" in reason and "healthy" in reason for reason in payload["reasons"]), payload
    # liveness is not readiness
    status, payload, _ = await api.get("/healthz")
    assert status == 200, payload


async def test_an_unhealthy_idle_environment_does_not_make_the_router_unready(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await make_unhealthy(running, "green")
    status, payload, _ = await api.get("/readyz")
    assert status == 200 and payload["ready"] is True, payload


async def test_readyz_follows_the_live_environment_after_a_flip(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    await api.ok("/v1/flip", {})
    await make_unhealthy(running, "green")
    status, payload, _ = await api.get("/readyz")
    assert status == 503 and payload["live"] == "green", payload


async def test_shutdown_makes_readyz_503_before_the_listeners_stop_accepting(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    seen = []
    real = running.plane

    class LooksFirst:
        """LooksFirst: the real data plane, except that shutdown reads /readyz before it starts."""

        async def shutdown(self, timeout=None):
            seen.append(await api.get("/readyz"))     # the admin API still answers here
            return await real.shutdown(timeout)

        def __getattr__(self, name):
            return getattr(real, name)
    running.plane = LooksFirst()
    try:
        await running.stop(0.5)
    finally:
        running.plane = real
    [(status, payload, _)] = seen
    assert status == 503, payload
    assert payload["shutting_down"] is True and payload["ready"] is False
    assert any("shutting down" in reason for reason in payload["reasons"]), payload


async def test_readyz_is_503_during_the_drain(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    port = running.proxy.port

    async def slow():
        async with session.get(f"http://127.0.0.1:{port}/slow?s=1") as resp:
            return resp.status
    request = asyncio.create_task(slow())

    async def inflight():
        return running.proxy.router.environments["blue"].inflight == 1
    await eventually(inflight, timeout=3)
    stopping = asyncio.create_task(running.stop(5))

    async def unready():
        status, payload, _ = await api.get("/readyz")
        return payload if status == 503 else None
    payload = await eventually(unready, timeout=3)
    assert payload["shutting_down"] is True
    assert await asyncio.wait_for(request, 5) == 200
    await asyncio.wait_for(stopping, 5)


async def test_a_further_readiness_check_can_make_the_router_unready(make_stack, session):
    # the seam a fleet replica uses to report a stale route
    running = await make_stack()
    api = Admin(session, running.admin_port)
    stale = {"reason": None}
    running.admin.app[READINESS].add_check(lambda: stale["reason"])
    status, _, _ = await api.get("/readyz")
    assert status == 200
    stale["reason"] = "this replica's route is stale (generation 3, fleet at 5)"
    status, payload, _ = await api.get("/readyz")
    assert status == 503 and payload["reasons"] == [stale["reason"]], payload
