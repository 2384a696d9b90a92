"""Server selection without sockets: Environment.pick, the healthy server with the fewest
in-flight requests per weight, ties taken in turn."""

from __future__ import annotations

from proxy.backends import Environment, Server


def environment(*weights: int) -> Environment:
    env = Environment("blue")
    for i, weight in enumerate(weights):
        env.add(Server("127.0.0.1", 9001 + i, env, weight))
    return env


def test_the_server_with_the_fewest_requests_in_flight_is_picked():
    env = environment(1, 1, 1)
    for server, inflight in zip(env.servers, (3, 1, 2)):
        server.inflight = inflight
    assert env.pick() is env.servers[1]


def test_equal_servers_are_picked_in_turn():
    env = environment(1, 1, 1)
    picks = [env.pick() for _ in range(6)]   # nothing finishes, nothing starts: all stay tied
    assert len(set(picks[:3])) == 3 and picks[3:] == picks[:3]


def test_load_is_shared_in_proportion_to_the_weights():
    env = environment(3, 1)
    for _ in range(40):
        env.pick().inflight += 1   # requests that stay in flight
    assert [s.inflight for s in env.servers] == [30, 10]


def test_in_flight_is_weighed_per_weight():
    env = environment(4, 1)
    heavy, light = env.servers
    heavy.inflight, light.inflight = 3, 1    # 0.75 vs 1.0 per weight
    assert env.pick() is heavy


def test_only_healthy_servers_are_picked_and_none_when_none_is_healthy():
    env = environment(1, 1)
    down, up = env.servers
    down.inflight, up.inflight = 0, 50
    down.set_healthy(False)
    assert all(env.pick() is up for _ in range(4))
    up.set_healthy(False)
    assert env.pick() is None
    assert not env.healthy


def test_servers_already_tried_for_the_request_are_skipped():
    env = environment(1, 1, 1)
    a, b, c = env.servers
    assert env.pick({a, b}) is c
    assert env.pick({a, b, c}) is None


def test_a_single_server_is_picked_while_healthy_and_not_tried():
    env = environment(1)
    (only,) = env.servers
    assert env.only is only and env.pick() is only
    assert env.pick({only}) is None
    only.set_healthy(False)
    assert env.pick() is None
