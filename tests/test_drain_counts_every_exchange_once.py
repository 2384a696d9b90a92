"""Drain without sockets: the counted end of an environment's traffic after a swap.

A Drain adopts the environment's in-flight exchanges and ends when the last of them
finishes, or at drain_timeout, when it closes what remains; every adopted exchange is
counted exactly once, by how it ended.
"""

from __future__ import annotations

import asyncio

from proxy.backends import Environment, Server
from proxy.drain import Drain
from proxy.errors import Outcome
from proxy.exchange import RESPONDING, SENT
from proxy.snapshot import DrainSnapshot


class InFlight:
    """InFlight: an exchange in flight on an environment, as a Drain sees it (drain, state, force_close)."""

    def __init__(self, env: Environment, state: int = SENT) -> None:
        self.env = env
        self.drain = None
        self.state = state
        self.forced = False
        env.active.add(self)
        env.inflight += 1

    def end(self, outcome: str = Outcome.OK) -> None:
        self.env.active.discard(self)
        self.env.inflight -= 1
        if self.drain is not None:
            self.drain.finished(self, outcome)

    def force_close(self) -> None:
        self.forced = True
        self.end(Outcome.FORCED)


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
    assert drain.result() == {name: getattr(snapshot, name) for name in DrainSnapshot.__slots__}
    assert list(drain.result()) == ["environment", "generation", "inflight_at_start", "drained", "forced_closed",
                                    "dropped", "client_gone", "remaining", "interrupted", "duration",
                                    "idle_connections_closed"]
    assert snapshot.duration is None and snapshot.remaining == 1
    drain.cancel()
