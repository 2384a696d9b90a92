"""Router.set_servers without sockets: a new server list for an environment that serves traffic.

A server whose address stays keeps its Server object; an added one starts down until the
health checker brings it up; a removed one keeps serving only while no server of the new
list is healthy, then takes nothing new and drains (its in-flight requests counted, its idle
connections closed) and is gone once drained.
"""

from __future__ import annotations

import asyncio

from proxy.errors import Outcome
from proxy.health import HealthChecker
from proxy.route import Route
from proxy.router import Router
from proxy.settings import Address, EnvironmentConfig, Settings
from tests.support.fakes import InFlight


class OnServer(InFlight):
    """OnServer: an exchange in flight on one server of an environment."""

    def __init__(self, server) -> None:
        super().__init__(server.env)
        self.server = server
        server.inflight += 1

    def end(self, outcome: str = Outcome.OK) -> None:
        self.server.inflight -= 1
        super().end(outcome)


def router(blue=("127.0.0.1:9001", "127.0.0.1:9002")) -> Router:
    def env(name, addresses):
        return EnvironmentConfig(name, tuple(Address("127.0.0.1", int(a.rsplit(":", 1)[1])) for a in addresses))
    settings = Settings(listen=Address("127.0.0.1", 0), live="blue", drain_timeout=5.0,
                        environments=(env("blue", blue), env("green", ("127.0.0.1:9101",))))
    return Router.from_settings(settings)


def servers(*ports: int, weight: int = 1):
    return tuple((Address("127.0.0.1", port), weight) for port in ports)


def drains_ended(r: Router) -> list:
    ended = []
    r.on_drain.append(lambda drain: ended.append(drain.snapshot()))
    return ended


async def test_a_kept_server_keeps_its_object_and_an_added_one_starts_down():
    r = router()
    kept = r.environments["blue"].servers[0]
    kept.ok_streak, kept.requests = 5, 42
    r.set_servers("blue", servers(9001, 9003, weight=2))
    blue = r.environments["blue"]
    assert blue.servers[0] is kept and kept.requests == 42 and kept.ok_streak == 5 and kept.weight == 2
    added = blue.servers[1]
    assert added.address == "127.0.0.1:9003" and not added.healthy and added.weight == 2
    assert [s.address for s in blue.retired] == ["127.0.0.1:9002"]


async def test_removed_servers_drain_at_once_when_a_kept_server_is_healthy():
    r = router()
    ended = drains_ended(r)
    removed = r.environments["blue"].servers[1]
    first, second = OnServer(removed), OnServer(removed)
    started = r.set_servers("blue", servers(9001), tag="t1")
    assert len(started) == 1 and removed.retired
    blue = r.environments["blue"]
    for _ in range(20):
        assert blue.pick() is blue.servers[0]       # the removed server takes nothing new
    first.end()
    assert blue.retired == [removed]                 # still draining: still in the snapshot
    assert [s.address for s in blue.snapshot().retired] == ["127.0.0.1:9002"]
    second.end(Outcome.FAILED)
    await asyncio.wait_for(started[0].done, 5)
    assert blue.retired == [] and blue.snapshot().retired == ()
    assert len(ended) == 1
    assert (ended[0].drained, ended[0].dropped, ended[0].forced_closed) == (1, 1, 0)
    assert ended[0].servers == ("127.0.0.1:9002",) and ended[0].tag == "t1"


async def test_an_all_new_list_keeps_the_old_servers_serving_until_one_new_server_is_healthy():
    r = router(blue=("127.0.0.1:9001",))
    ended = drains_ended(r)
    old = r.environments["blue"].servers[0]
    assert r.set_servers("blue", servers(9003, 9004), tag="t2") == []
    blue = r.environments["blue"]
    assert blue.healthy and blue.pick() is old and blue.fallback == [old]
    inflight = OnServer(old)                         # served by the fallback
    r.set_health(blue.servers[1], True, "HTTP 200")  # the first new server is up
    assert blue.fallback == [] and blue.pick() is blue.servers[1]
    assert r.server_drains and r.server_drains[0].exchanges == {inflight}
    inflight.end()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(ended) == 1 and ended[0].drained == 1 and ended[0].tag == "t2"
    assert blue.retired == [] and r.server("blue", old.address) is None


async def test_removed_servers_still_running_at_drain_timeout_are_forced_closed_and_counted():
    r = router()
    r.drain_timeout = 0.05
    ended = drains_ended(r)
    stuck = OnServer(r.environments["blue"].servers[1])
    drain, = r.set_servers("blue", servers(9001))
    result = await asyncio.wait_for(drain.done, 5)
    assert stuck.forced and result["forced_closed"] == 1 and ended[0].forced_closed == 1


async def test_a_retired_server_listed_again_is_the_same_object_and_serves_again():
    r = router()
    removed = r.environments["blue"].servers[1]
    removed.requests = 7
    r.set_servers("blue", servers(9001))
    r.set_servers("blue", servers(9001, 9002))
    blue = r.environments["blue"]
    assert blue.servers[1] is removed and not removed.retired and blue.retired == [] and removed.requests == 7


async def test_a_list_the_router_starts_with_counts_as_healthy_until_checked():
    r = router()
    r.set_servers("green", servers(9201, 9202), at_start=True)
    green = r.environments["green"]
    assert [s.healthy for s in green.servers] == [True, True]
    await asyncio.sleep(0)
    assert green.retired == [] and green.fallback == []


async def test_the_health_checker_follows_the_server_list():
    r = router()
    checker = HealthChecker(r.checked_servers(), "/healthz", 60.0, 0.2, 2, 2, r.set_health)
    checker.start()
    try:
        r.on_servers.append(lambda: checker.update(r.checked_servers()))
        r.set_servers("green", servers(9301))
        watched = {s.address for s in checker._tasks}
        assert "127.0.0.1:9301" in watched and "127.0.0.1:9101" in watched    # retired: checked until gone
        added = r.server("green", "127.0.0.1:9301")
        checker.report(added, True, "HTTP 200")
        assert not added.healthy
        await asyncio.sleep(0)
        assert "127.0.0.1:9101" in {s.address for s in checker._tasks}       # still serving as fallback
        checker.report(added, True, "HTTP 200")
        assert added.healthy                          # healthy_after successes
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert "127.0.0.1:9101" not in {s.address for s in checker._tasks}   # drained (nothing in flight)
    finally:
        await checker.stop()


async def test_worker_snapshots_with_different_lists_merge_by_address():
    from proxy.snapshot import merge_environments
    one, two = router(), router()
    two.set_servers("blue", servers(9002, 9003))
    merged = merge_environments([one.environments["blue"].snapshot(), two.environments["blue"].snapshot()])
    assert [s.address for s in merged.servers] == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert [s.address for s in merged.retired] == []       # 9001 is still current in the first worker


def test_a_route_is_unchanged_by_a_new_list():
    async def run():
        r = router()
        before = r.route
        r.set_servers("blue", servers(9005))
        return before, r.route
    before, after = asyncio.run(run())
    assert before is after and isinstance(after, Route)
