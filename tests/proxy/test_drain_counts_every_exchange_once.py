"""Drain without sockets: the counted end of an environment's traffic after a swap.

A Drain adopts the environment's in-flight exchanges and ends when the last of them
finishes, or at drain_timeout, when it closes what remains (long-lived ones, tunnels and
responses still streaming, one stagger step apart); every adopted exchange is counted
exactly once, by how it ended. The environment's idle pooled connections are closed when
it starts and when it ends.
"""

from __future__ import annotations

import asyncio

from proxy import drain as drain_module
from proxy import pool
from proxy.backends import Environment, Server
from proxy.drain import Drain
from proxy.errors import Outcome
from proxy.exchange import RESPONDING, SENT, TUNNEL
from proxy.snapshot import DrainSnapshot
from proxy.upstream import UpstreamConnection
from tests.support.fakes import FakeTransport, InFlight, unstarted_proxy


def blue() -> Environment:
    env = Environment("blue")
    env.add(Server("127.0.0.1", 1, env))
    return env


async def test_a_drain_with_nothing_in_flight_ends_at_once():
    ended = []
    drain = Drain(blue(), 2, 30.0, ended.append)
    result = await asyncio.wait_for(drain.done, 5)
    assert result["inflight_at_start"] == 0 and result["remaining"] == 0 and result["duration"] is not None
    assert ended == [drain]


async def test_a_drain_ends_when_its_last_exchange_finishes_and_counts_each_by_its_outcome():
    env = blue()
    ok, failed, gone = InFlight(env), InFlight(env), InFlight(env)
    ended = []
    drain = Drain(env, 7, 30.0, ended.append)
    later = InFlight(env)   # came after the swap: not the drain's
    ok.end(Outcome.OK)
    failed.end(Outcome.FAILED)
    assert not drain.done.done() and drain.snapshot().remaining == 1
    gone.end(Outcome.CLIENT_GONE)
    result = await asyncio.wait_for(drain.done, 5)
    assert (result["inflight_at_start"], result["drained"], result["dropped"], result["client_gone"],
            result["forced_closed"], result["remaining"]) == (3, 1, 1, 1, 0, 0)
    assert result["generation"] == 7 and result["environment"] == "blue" and not result["interrupted"]
    assert ended == [drain] and later.drain is None
    later.end()
    assert drain.snapshot().drained == 1   # counted once, and only what it adopted


async def test_at_drain_timeout_what_remains_is_forced_closed_and_counted_so():
    env = blue()
    waiting = InFlight(env, SENT)
    streaming = [InFlight(env, RESPONDING), InFlight(env, RESPONDING)]   # long-lived: closed staggered
    drain = Drain(env, 3, 0.01, lambda d: None)
    result = await asyncio.wait_for(drain.done, 5)
    assert waiting.forced and all(ex.forced for ex in streaming)
    assert result["forced_closed"] == 3 and result["drained"] == 0 and result["remaining"] == 0


async def test_a_cancelled_drain_reports_what_it_knew_and_lets_go_of_its_exchanges():
    env = blue()
    first, second = InFlight(env), InFlight(env)
    drain = Drain(env, 4, 30.0, lambda d: None)
    first.end()
    drain.cancel()
    result = await asyncio.wait_for(drain.done, 5)
    assert result["interrupted"] and result["drained"] == 1 and result["remaining"] == 0
    assert second.drain is None
    second.end()
    assert drain.snapshot().drained == 1


async def test_the_drain_snapshot_and_its_result_carry_the_same_figures():
    env = blue()
    InFlight(env)
    drain = Drain(env, 5, 30.0, lambda d: None)
    snapshot = drain.snapshot()
    assert isinstance(snapshot, DrainSnapshot)
    # an environment's drain: every field but those of a drain of retired servers (servers, tag)
    assert drain.result() == {name: getattr(snapshot, name) for name in DrainSnapshot.__slots__
                              if name not in ("servers", "tag")}
    assert list(drain.result()) == ["environment", "generation", "inflight_at_start", "drained", "forced_closed",
                                    "dropped", "client_gone", "remaining", "interrupted", "duration",
                                    "idle_connections_closed"]
    assert snapshot.duration is None and snapshot.remaining == 1
    drain.cancel()


async def test_at_drain_timeout_long_lived_exchanges_are_closed_one_stagger_step_apart(monkeypatch):
    monkeypatch.setattr(drain_module, "STAGGER_STEP", 0.02)
    env = blue()
    waiting = InFlight(env, SENT)
    long_lived = [InFlight(env, RESPONDING), InFlight(env, TUNNEL), InFlight(env, RESPONDING)]
    drain = Drain(env, 3, 0.01, lambda d: None)
    result = await asyncio.wait_for(drain.done, 5)
    assert result["forced_closed"] == 4 and result["remaining"] == 0
    times = sorted(ex.forced_at for ex in long_lived)
    assert waiting.forced_at <= times[0]              # an ordinary request is closed at once, before any of them
    for i, at in enumerate(times):
        assert at >= times[0] + i * 0.02 - 1e-3, (i, at - times[0])   # each a step after the one before


class SwappedBackOnClose(InFlight):
    """SwappedBackOnClose: a long-lived exchange whose environment serves again right after it is force-closed.

    The drain is cancelled on the event loop's next pass, before any later close is due.
    """

    def force_close(self) -> None:
        if self.drain is not None:
            asyncio.get_running_loop().call_soon(self.drain.cancel)
        super().force_close()


async def test_a_drain_cancelled_while_closing_leaves_the_long_lived_exchanges_it_had_not_closed(monkeypatch):
    monkeypatch.setattr(drain_module, "STAGGER_STEP", 0.05)
    env = blue()
    streaming = [SwappedBackOnClose(env, RESPONDING) for _ in range(3)]
    drain = Drain(env, 6, 0.01, lambda d: None)
    result = await asyncio.wait_for(drain.done, 5)   # cancelled as the first of them is closed
    assert result["interrupted"] and result["forced_closed"] == 1
    await asyncio.sleep(0.15)                         # past the times the other two were due: they stay
    assert sorted(ex.forced for ex in streaming) == [False, False, True]
    assert all(ex.drain is None for ex in streaming if not ex.forced) and env.inflight == 2


async def test_a_drain_closes_the_idle_pooled_connections_when_it_starts_and_when_it_ends():
    proxy = unstarted_proxy()   # never started: no socket
    env = proxy.router.environments["blue"]
    server = env.servers[0]

    def idle() -> UpstreamConnection:
        conn = UpstreamConnection(proxy, server)
        conn.connection_made(FakeTransport())
        assert pool.put(conn, 0.0)
        return conn

    before = [idle(), idle()]
    request = InFlight(env)
    drain = Drain(env, 2, 30.0, lambda d: None)
    assert server.idle == [] and all(conn.transport.closed for conn in before)
    assert drain.snapshot().idle_connections_closed == 2
    during = idle()                                   # released by a request that ended during the drain
    request.end()
    result = await asyncio.wait_for(drain.done, 5)
    assert during.transport.closed and server.idle == []
    assert result["idle_connections_closed"] == 3 and result["drained"] == 1
