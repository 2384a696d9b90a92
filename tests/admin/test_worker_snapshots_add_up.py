"""A router of N workers reads as one: socket-free tests of the snapshot merge, what an exited
worker (or an upgrade's predecessor) still counts for, and the `workers` / `fleet` config."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace
from pathlib import Path

import pytest

from admin.config import ConfigError, effective_config, parse_config
from admin.plane import LocalPlane, carried_on
from admin.serve import carry_counters, upgrade_refusal
from admin.workers import WorkerPlane, counters_only
from proxy import (UPSTREAM_ERROR_KINDS, DrainSnapshot, EnvironmentSnapshot, Route, RouterSnapshot, ServerSnapshot,
                   Snapshot, merge_drains, merge_snapshots)
from tests.support.fakes import unstarted_proxy

ROUTE = Route(4, "green", previous="blue", environments=("blue", "green"))


def server(address="127.0.0.1:1", healthy=True, inflight=0, connections=0, requests=0, errors=0):
    return ServerSnapshot(address=address, healthy=healthy, inflight=inflight, connections=connections, weight=2,
                          requests=requests,
                          upstream_errors=tuple((kind, errors) for kind in UPSTREAM_ERROR_KINDS))


def env(name, servers, responses=(0, 0, 0, 0, 0, 0), inflight=0):
    return EnvironmentSnapshot(name=name, healthy=any(s.healthy for s in servers), inflight=inflight,
                               connections=sum(s.connections for s in servers), servers=tuple(servers),
                               responses=tuple(responses), latency_counts=(1, 2, 3), latency_sum=0.5,
                               bytes_in=10, bytes_out=100)


def drain(environment="blue", generation=4, drained=0, dropped=0, remaining=0, duration=0.1):
    return DrainSnapshot(environment=environment, generation=generation, inflight_at_start=drained + remaining,
                         drained=drained, forced_closed=0, dropped=dropped, client_gone=0, remaining=remaining,
                         interrupted=False, duration=duration, idle_connections_closed=1)


def snapshot(blue, green, drains=(), held=False, held_requests=0, clients=0, route=ROUTE):
    router = RouterSnapshot(route=route, held=held, held_requests=held_requests, hold_until=None,
                            environments=(blue, green), drains=tuple(drains))
    return Snapshot(router=router, listen="127.0.0.1:8080", preview_listen=None, client_connections=clients,
                    unrouted=(0, 0, 0, 0, 1, 0), client_body_timeouts=1, preview_token_set=False)


def test_counters_add_up_and_a_server_is_healthy_only_when_every_worker_finds_it_so():
    a = snapshot(env("blue", [server(requests=3, inflight=1, connections=2, errors=1)], (0, 0, 3, 0, 0, 0), 1),
                 env("green", [server("127.0.0.1:2", requests=5)], (0, 0, 5, 0, 0, 0)), clients=4)
    b = snapshot(env("blue", [server(requests=4, connections=1, errors=2, healthy=False)], (0, 0, 3, 0, 1, 0)),
                 env("green", [server("127.0.0.1:2", requests=1)], (0, 0, 1, 0, 0, 0)), clients=3)
    merged = merge_snapshots([a, b], ROUTE)
    blue = merged.router.env("blue")
    assert blue.responses == (0, 0, 6, 0, 1, 0) and blue.inflight == 1 and blue.connections == 3
    assert blue.latency_counts == (2, 4, 6) and blue.latency_sum == 1.0 and (blue.bytes_in, blue.bytes_out) == (20, 200)
    [s] = blue.servers
    assert (s.requests, s.inflight, s.connections, s.weight, s.healthy) == (7, 1, 3, 2, False)
    assert dict(s.upstream_errors) == {kind: 3 for kind in UPSTREAM_ERROR_KINDS}
    assert blue.healthy is False and merged.router.env("green").healthy is True
    assert merged.client_connections == 7 and merged.unrouted == (0, 0, 0, 0, 2, 0)
    assert merged.client_body_timeouts == 2 and merged.router.route == ROUTE


def test_upstream_errors_add_up_whichever_workers_counted_them():
    def merged_errors(*counts):
        parts = [snapshot(env("blue", [server(errors=n)]), env("green", [])) for n in counts]
        [s] = merge_snapshots(parts, ROUTE).router.env("blue").servers
        return dict(s.upstream_errors)

    assert merged_errors(0, 0, 0) == {kind: 0 for kind in UPSTREAM_ERROR_KINDS}
    assert merged_errors(0, 2, 0) == {kind: 2 for kind in UPSTREAM_ERROR_KINDS}
    assert merged_errors(1, 0, 4) == {kind: 5 for kind in UPSTREAM_ERROR_KINDS}
    assert merged_errors(3) == {kind: 3 for kind in UPSTREAM_ERROR_KINDS}
    assert list(merged_errors(0, 1)) == list(UPSTREAM_ERROR_KINDS)       # in their order


def test_drains_of_one_environment_and_generation_are_summed_and_end_when_every_part_has():
    a = snapshot(env("blue", [server()]), env("green", [server()]), drains=[drain(drained=3, duration=0.2)])
    b = snapshot(env("blue", [server()]), env("green", [server()]), drains=[drain(remaining=2, duration=None)])
    [running] = merge_snapshots([a, b], ROUTE).router.drains
    assert (running.drained, running.remaining, running.inflight_at_start, running.duration) == (3, 2, 5, None)
    done = merge_drains([drain(drained=3, duration=0.2), drain(drained=2, dropped=1, duration=0.4)])
    assert (done.drained, done.dropped, done.duration, done.idle_connections_closed) == (5, 1, 0.4, 2)


def test_an_exited_worker_keeps_its_counters_but_none_of_its_gauges():
    s = snapshot(env("blue", [server(requests=9, inflight=2, connections=3)], (0, 0, 9, 0, 0, 0), 2),
                 env("green", [server()]), drains=[drain(remaining=2, duration=None)], held=True, held_requests=5,
                 clients=6)
    kept = counters_only(s)
    blue = kept.router.env("blue")
    assert blue.responses == (0, 0, 9, 0, 0, 0) and blue.servers[0].requests == 9
    assert (blue.inflight, blue.connections, blue.servers[0].inflight, blue.servers[0].connections) == (0, 0, 0, 0)
    assert (kept.router.held, kept.router.held_requests, kept.router.drains, kept.client_connections) == (
        False, 0, (), 0)


def test_snapshots_cross_processes_as_pickles():
    s = snapshot(env("blue", [server()]), env("green", [server()]), drains=[drain()])
    assert pickle.loads(pickle.dumps(s)) == s


BASE = {"environments": {"blue": {"servers": ["127.0.0.1:1"]}, "green": {"servers": ["127.0.0.1:2"]}},
        "admin": {"listen": "127.0.0.1:0", "auth": "none"}}


def parse(**overrides):
    return parse_config({**BASE, **overrides}, Path("/tmp"), {})


def test_workers_defaults_to_one_and_auto_is_the_cpu_count():
    assert parse().workers == 1
    assert parse(workers=3).workers == 3
    assert parse(workers="auto").workers >= 1
    assert effective_config(parse(workers=2))["workers"] == 2
    assert parse().fleet.ack_timeout == 10.0 and parse(fleet={"ack_timeout": "250ms"}).fleet.ack_timeout == 0.25


@pytest.mark.parametrize("value, message", [
    (0, "workers"), (257, "workers"), ("many", 'must be a number of processes or "auto"'), (1.5, "workers"),
    (True, "workers"),
])
def test_a_bad_workers_value_is_a_config_error_naming_the_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse(workers=value)
    assert caught.value.key == "workers" and message in str(caught.value)


def test_worker_nice_defaults_to_three_and_takes_zero_to_nineteen():
    assert parse().worker_nice == 3
    assert parse(worker_nice=0).worker_nice == 0 and parse(worker_nice=19).worker_nice == 19
    assert effective_config(parse(worker_nice=7))["worker_nice"] == 7


@pytest.mark.parametrize("value, message", [
    (-1, "must be between 0 and 19, got -1"), (20, "must be between 0 and 19, got 20"),
    ("3", "expected an integer"), (True, "expected an integer"), (1.5, "expected an integer"),
])
def test_a_bad_worker_nice_is_a_config_error_naming_the_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse(worker_nice=value)
    assert caught.value.key == "worker_nice" and message in str(caught.value)


@pytest.mark.parametrize("fleet, key", [({"ack_timeout": 0}, "fleet.ack_timeout"), ({"acktimeout": 1}, "fleet"),
                                        ("10s", "fleet")])
def test_a_bad_fleet_section_is_a_config_error_naming_the_key(fleet, key):
    with pytest.raises(ConfigError) as caught:
        parse(fleet=fleet)
    assert (caught.value.key or "").startswith(key)


def test_an_exited_worker_leaves_no_opinion_on_health():
    sick = snapshot(env("blue", [server(healthy=False, requests=2)]), env("green", [server()]))
    well = snapshot(env("blue", [server(healthy=True, requests=3)]), env("green", [server()]))
    merged = merge_snapshots([well, counters_only(sick)], ROUTE)
    blue = merged.router.env("blue")
    assert blue.healthy is True and blue.servers[0].healthy is True and blue.servers[0].requests == 5
    # An environment the live workers find able to serve (removed servers still serving, none of
    # the current list healthy) stays so whatever the exited one last saw.
    assert counters_only(sick).router.env("blue").healthy is True


def test_before_any_worker_started_the_plane_reads_as_zeros():
    config = parse(workers=2)
    plane = WorkerPlane(config.settings(), ROUTE, 2, 1.0)
    snap = plane.snapshot()
    assert snap.router.route == ROUTE and snap.router.held_requests == 0
    assert [e.name for e in snap.router.environments] == ["blue", "green"]
    assert all(s.healthy and s.requests == 0 for e in snap.router.environments for s in e.servers)


def test_sigusr2_is_refused_as_pid_1_and_while_traffic_is_held():
    running = SimpleNamespace(controller=SimpleNamespace(state=SimpleNamespace(held=False)))
    assert upgrade_refusal(running, pid=4242) is None
    assert "PID 1" in upgrade_refusal(running, pid=1)
    running.controller.state.held = True
    assert "held" in upgrade_refusal(running, pid=4242)


def test_counters_carried_across_an_upgrade_add_up_and_the_servers_are_the_current_ones():
    now = snapshot(env("blue", [server("127.0.0.1:1", requests=3, connections=2)], responses=(0, 0, 3, 0, 0, 0),
                       inflight=1), env("green", [server("127.0.0.1:2")]), clients=4)
    before = counters_only(snapshot(env("blue", [server("127.0.0.1:1", requests=5), server("127.0.0.1:9", requests=7)],
                                        responses=(0, 0, 12, 0, 0, 0), inflight=3),
                                    env("green", [server("127.0.0.1:2", requests=1)]), clients=9))
    carried = carried_on(now, before)
    blue = carried.router.env("blue")
    assert [s.address for s in blue.servers] == ["127.0.0.1:1"]      # the old list's 9 is not listed
    assert (blue.servers[0].requests, blue.servers[0].connections) == (8, 2)
    assert (blue.responses[2], blue.inflight, blue.bytes_out) == (15, 1, 200)
    assert carried.router.env("green").servers[0].requests == 1
    assert (carried.listen, carried.client_connections, carried.router.route) == (now.listen, 4, now.router.route)


def test_a_predecessors_counters_that_cannot_be_read_or_are_of_other_environments_are_left_out(caplog):
    plane = LocalPlane(unstarted_proxy())
    carry_counters(plane, b"not a pickle")
    carry_counters(plane, pickle.dumps(snapshot(env("red", [server()]), env("green", [server("127.0.0.1:2")]))))
    assert plane.carried is None and caplog.text.count("counting from zero") == 2
    carry_counters(plane, None)              # an older predecessor sent none
    assert plane.carried is None
    live = plane.snapshot()
    few_buckets = dataclasses.replace(live, router=dataclasses.replace(live.router, environments=tuple(
        dataclasses.replace(e, latency_counts=(1, 2, 3)) for e in live.router.environments)))
    carry_counters(plane, pickle.dumps(few_buckets))        # another version's latency buckets
    assert plane.carried is None and caplog.text.count("counting from zero") == 3
    blue = live.router.env("blue")
    counted = dataclasses.replace(blue, servers=(dataclasses.replace(blue.servers[0], requests=4),),
                                  responses=(0, 0, 4, 0, 0, 0))
    carry_counters(plane, pickle.dumps(dataclasses.replace(live, router=dataclasses.replace(
        live.router, environments=(counted, live.router.env("green"))))))
    now = plane.snapshot().router.env("blue")
    assert (now.servers[0].requests, now.responses[2]) == (4, 4)


def test_a_server_only_the_predecessor_listed_neither_makes_its_environment_healthy_nor_hides_a_retired_one():
    down = server("127.0.0.1:1", healthy=False)
    draining = server("127.0.0.1:9", requests=1)
    now = snapshot(dataclasses.replace(env("blue", [down]), healthy=False, retired=(draining,)),
                   env("green", [server("127.0.0.1:2")]))
    before = counters_only(snapshot(env("blue", [server("127.0.0.1:1", requests=5), server("127.0.0.1:9", requests=7)]),
                                    env("green", [server("127.0.0.1:2")])))
    blue = carried_on(now, before).router.env("blue")
    assert blue.healthy is False and [s.address for s in blue.servers] == ["127.0.0.1:1"]
    assert [s.address for s in blue.retired] == ["127.0.0.1:9"] and blue.servers[0].requests == 5


async def test_what_a_worker_started_later_takes_for_servers_a_list_change_keeps_adds_removes_or_takes_back():
    """WorkerPlane's record of each server's health (what "start" gives a new worker) follows a
    change of server lists as Router.set_servers has it on the running workers: a kept server
    keeps what is known of it (a start-up that drops a stale registration listing the config's
    own servers marks none of them down), an added one is down until checked, a removed one is
    forgotten (the checker's results for it while it drains are not taken), and one listed again
    while its drain holds it is taken back with the health the checker's snapshot gives it."""
    from admin.plane import Change
    from admin.workers import Worker
    from proxy import Address
    config = parse(environments={"blue": {"servers": ["127.0.0.1:1", "127.0.0.1:3"]},
                                 "green": {"servers": ["127.0.0.1:2"]}})
    plane = WorkerPlane(config.settings(), ROUTE, 2, 1.0)
    checker = Worker(0, None, None)
    plane.workers.append(checker)

    def listing(*addresses):
        return {"blue": tuple((Address("127.0.0.1", int(a.split(":")[1])), 1) for a in addresses)}

    def health():
        return {a: counted for e, a, *counted in plane._health_now() if e == "blue"}

    await plane.apply(Change(servers=listing("127.0.0.1:1")))          # not at start: nothing added
    assert health() == {}
    plane._on_message(checker, None, ("health", "blue", "127.0.0.1:1", True, "HTTP 200", True, 3, 0))
    await plane.apply(Change(servers=listing("127.0.0.1:1", "127.0.0.1:4")))
    assert health() == {"127.0.0.1:1": [True, 3, 0], "127.0.0.1:4": [False, 0, 0]}
    await plane.apply(Change(servers=listing("127.0.0.1:4")))
    plane._on_message(checker, None, ("health", "blue", "127.0.0.1:1", True, "HTTP 200", True, 4, 0))
    assert health() == {"127.0.0.1:4": [False, 0, 0]}
    # Listed again while its drain holds it: the running workers take it back as it is.
    blue = env("blue", [server("127.0.0.1:4", healthy=False)])
    checker.snapshot = snapshot(dataclasses.replace(blue, retired=(server("127.0.0.1:1", healthy=True),)),
                                env("green", [server("127.0.0.1:2")]))
    await plane.apply(Change(servers=listing("127.0.0.1:4", "127.0.0.1:1")))
    assert health() == {"127.0.0.1:4": [False, 0, 0], "127.0.0.1:1": [True, 0, 0]}
