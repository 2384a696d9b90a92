"""Router.swap without sockets: which environments start draining, and when a drain is called off.

A swap replaces the route in one assignment and starts a Drain for every environment
that stops receiving new requests; an environment that serves again (a rollback, a
canary that resumes) has its drain cancelled, reported as interrupted.
"""

from __future__ import annotations

import asyncio

from proxy.backends import Environment, Server
from proxy.route import Route
from proxy.router import Router
from tests.support.fakes import InFlight


def make_router(drain_timeout: float = 30.0) -> Router:
    envs = {}
    for name, port in (("blue", 1), ("green", 2)):
        env = Environment(name)
        env.add(Server("127.0.0.1", port, env))
        envs[name] = env
    route = Route(generation=1, live="blue", environments=("blue", "green"))
    return Router(envs, route, drain_timeout=drain_timeout, hold_max_queued=10)


def flip(route: Route, to: str) -> Route:
    return Route(generation=route.generation + 1, live=to, previous=route.live, environments=route.environments)


async def test_swap_replaces_the_route_and_drains_the_environment_that_stopped_serving():
    router = make_router()
    request = InFlight(router.environments["blue"])
    new = flip(router.route, "green")
    started = router.swap(new)
    assert router.route is new
    assert [d.env.name for d in started] == ["blue"] and set(router.drains) == {"blue"}
    assert started[0].generation == 2 and started[0].exchanges == {request}
    request.end()
    result = await asyncio.wait_for(started[0].done, 5)
    assert result["drained"] == 1 and result["remaining"] == 0 and not result["interrupted"]
    assert router.drains == {}   # an ended drain leaves the router


async def test_a_swap_that_keeps_the_live_environment_starts_no_drain():
    router = make_router()
    same = Route(generation=2, live="blue", environments=("blue", "green"))
    assert router.swap(same) == [] and router.drains == {}


async def test_a_canary_that_stops_drains_the_canary_but_not_the_live_environment():
    router = make_router()
    canary = Route(generation=2, live="blue", canary="green", canary_weight=10, environments=("blue", "green"))
    assert router.swap(canary) == []   # both serve
    InFlight(router.environments["green"])
    stopped = Route(generation=3, live="blue", environments=("blue", "green"))
    assert [d.env.name for d in router.swap(stopped)] == ["green"]


async def test_a_drain_is_cancelled_when_its_environment_serves_again():
    router = make_router()
    request = InFlight(router.environments["blue"])
    drain = router.swap(flip(router.route, "green"))[0]
    ended = []
    router.on_drain.append(ended.append)
    started = router.swap(flip(router.route, "blue"))   # rolled back while blue still drains
    assert [d.env.name for d in started] == ["green"]
    result = await asyncio.wait_for(drain.done, 5)
    assert result["interrupted"] and result["remaining"] == 0 and result["drained"] == 0
    assert request.drain is None   # blue's request is blue's own again, not a drain's
    assert ended[0] is drain and "blue" not in router.drains   # (green's empty drain ends next)


async def test_an_environment_that_stops_serving_again_gets_a_new_drain_of_what_is_still_in_flight():
    router = make_router()
    request = InFlight(router.environments["blue"])
    first = router.swap(flip(router.route, "green"))[0]
    # green to a blue canary and back: blue stops serving twice while its request is in flight.
    router.swap(Route(generation=3, live="green", canary="blue", canary_weight=5, environments=("blue", "green")))
    second = router.swap(Route(generation=4, live="green", environments=("blue", "green")))[0]
    assert first.done.done() and first.done.result()["interrupted"]
    assert request.drain is second and second.exchanges == {request}
    request.end()
    assert (await asyncio.wait_for(second.done, 5))["drained"] == 1
