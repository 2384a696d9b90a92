"""Router.snapshot() and Proxy.snapshot() without sockets: the data plane's read model.

What admin/ reads: the route, the hold, every environment and server with its counters,
the drains in progress, the listeners; plain frozen values, copied when taken.
"""

from __future__ import annotations

import dataclasses

import pytest

from proxy import (UPSTREAM_ERROR_KINDS, DrainSnapshot, EnvironmentSnapshot, Route, RouterSnapshot, ServerSnapshot,
                   Snapshot)
from proxy.errors import Outcome
from proxy.server import Proxy
from tests.support.fakes import InFlight, Waiting, unstarted_proxy

PLAIN = (str, int, float, bool, type(None), Route)


def make_proxy(**overrides) -> Proxy:
    return unstarted_proxy(   # never started: no socket
        environments={"blue": {"servers": ["127.0.0.1:1", {"address": "127.0.0.1:3", "weight": 3}]},
                      "green": {"servers": ["127.0.0.1:2"]}}, **overrides)


def assert_plain(value) -> None:
    """assert_plain: only str, int, float, bool, None, Route, tuples and snapshot dataclasses, all frozen."""
    if dataclasses.is_dataclass(value) and not isinstance(value, Route):
        assert type(value).__dataclass_params__.frozen
        for field in dataclasses.fields(value):
            assert_plain(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            assert_plain(item)
    else:
        assert isinstance(value, PLAIN), f"{type(value).__name__} in a snapshot"


def test_the_router_snapshot_shows_route_hold_environments_servers_and_counters():
    proxy = make_proxy()
    router = proxy.router
    blue = router.environments["blue"]
    first, second = blue.servers
    first.inflight, first.connections, first.requests = 2, 3, 40
    first.connect_errors, first.timeouts, first.resets, first.invalid = 1, 2, 3, 4
    first.heads_over_limit, first.strays = 5, 6
    second.set_healthy(False)
    blue.inflight = 2
    blue.responses[2] = 38
    blue.responses[5] = 2
    blue.latency_counts[0] = 40
    blue.latency_sum = 0.5
    blue.bytes_in, blue.bytes_out = 1000, 5000
    router.hold(until=1700000000.5)
    router.hold_gate.enter(Waiting())

    snap = router.snapshot()
    assert isinstance(snap, RouterSnapshot)
    assert snap.route is router.route and snap.route.live == "blue"
    assert (snap.held, snap.held_requests, snap.hold_until) == (True, 1, 1700000000.5)
    assert snap.names() == ("blue", "green") and snap.drains == ()
    env = snap.env("blue")
    assert isinstance(env, EnvironmentSnapshot)
    assert (env.name, env.healthy, env.inflight, env.connections) == ("blue", True, 2, 3)
    assert env.responses == (0, 0, 38, 0, 0, 2) and env.latency_counts[0] == 40 and env.latency_sum == 0.5
    assert len(env.latency_counts) == len(blue.latency_counts)
    assert (env.bytes_in, env.bytes_out) == (1000, 5000)
    s1, s2 = env.servers
    assert isinstance(s1, ServerSnapshot)
    assert (s1.address, s1.healthy, s1.inflight, s1.connections, s1.weight, s1.requests) == \
        ("127.0.0.1:1", True, 2, 3, 1, 40)
    assert s1.upstream_errors == (("connect", 1), ("timeout", 2), ("reset", 3), ("invalid", 4),
                                  ("head_too_large", 5), ("stray_bytes", 6))
    assert tuple(kind for kind, _ in s2.upstream_errors) == UPSTREAM_ERROR_KINDS
    assert (s2.address, s2.healthy, s2.weight) == ("127.0.0.1:3", False, 3)
    assert snap.env("green").servers[0].requests == 0
    assert_plain(snap)


def test_a_snapshot_is_a_copy_that_later_traffic_does_not_change():
    proxy = make_proxy()
    blue = proxy.router.environments["blue"]
    snap = proxy.router.snapshot()
    blue.responses[2] += 1
    blue.servers[0].requests += 1
    blue.bytes_in += 10
    proxy.router.hold()
    env = snap.env("blue")
    assert env.responses[2] == 0 and env.servers[0].requests == 0 and env.bytes_in == 0 and not snap.held
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.inflight = 5
    assert proxy.router.snapshot().env("blue").responses[2] == 1


def test_an_unknown_environment_is_a_key_error_that_names_it():
    snap = make_proxy().router.snapshot()
    with pytest.raises(KeyError, match="purple"):
        snap.env("purple")


async def test_drains_in_progress_are_in_the_snapshot_until_they_end():
    proxy = make_proxy()
    router = proxy.router
    request = InFlight(router.environments["blue"])
    flipped = Route(generation=2, live="green", previous="blue", environments=("blue", "green"))
    (drain,) = router.swap(flipped)
    snap = router.snapshot()
    assert snap.route is flipped and snap.env("blue").inflight == 1
    (shown,) = snap.drains
    assert isinstance(shown, DrainSnapshot)
    assert (shown.environment, shown.generation, shown.inflight_at_start, shown.remaining, shown.duration) == \
        ("blue", 2, 1, 1, None)
    assert_plain(snap)
    drain.finished(request, Outcome.OK)
    assert router.snapshot().drains == ()


def test_the_proxy_snapshot_adds_listeners_and_client_side_counters_but_never_the_token():
    proxy = make_proxy()
    proxy.unrouted[4] = 7
    proxy.client_body_timeouts = 2
    snap = proxy.snapshot()
    assert isinstance(snap, Snapshot) and isinstance(snap.router, RouterSnapshot)
    assert snap.listen == "127.0.0.1:0"        # the configured port until it listens
    assert snap.preview_listen is None and snap.client_connections == 0
    assert snap.unrouted == (0, 0, 0, 0, 7, 0) and snap.client_body_timeouts == 2
    assert snap.preview_token_set is False
    assert_plain(snap)

    secret = "s3cret-preview-token"
    guarded = make_proxy(admin={"listen": "127.0.0.1:0", "token": secret}).snapshot()
    assert guarded.preview_token_set is True
    assert secret not in repr(guarded)



def test_a_snapshot_pickles_as_its_constructor_and_values_and_comes_back_equal():
    import pickle
    snapshot = make_proxy().snapshot()
    server = snapshot.router.environments[0].servers[0]
    assert server.__reduce__() == (ServerSnapshot, tuple(getattr(server, f.name) for f in dataclasses.fields(server)))
    for kind in (Snapshot, RouterSnapshot, EnvironmentSnapshot, ServerSnapshot, DrainSnapshot):
        assert kind.__reduce__ is not object.__reduce__      # every snapshot class, not only the servers
    again = pickle.loads(pickle.dumps(snapshot))
    assert again == snapshot and type(again.router.environments[0]) is EnvironmentSnapshot
