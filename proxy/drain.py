"""Drain: the counted end of an environment's traffic after a swap.

Router.swap starts one for every environment that stops receiving new
requests. It adopts that environment's in-flight exchanges and ends when the
last of them finishes, or at drain_timeout, when what remains is closed:
ordinary requests at once, long-lived ones (tunnels, responses still
streaming) staggered over a short window so the new environment does not get a
reconnect stampede. The result counts every adopted exchange exactly once.

Router.set_servers starts one for the servers a new server list removed (``servers``): it
adopts only their exchanges (those no environment drain has already) and closes only their
idle connections; ``tag`` names the change, for its history entry.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

from . import pool
from .errors import Outcome
from .snapshot import DrainSnapshot

if TYPE_CHECKING:
    from .backends import Environment, Server
    from .exchange import Exchange

# Forced closes of long-lived connections are spread STAGGER_STEP apart, over at most
# STAGGER_WINDOW seconds, so their clients do not all reconnect at the same instant.
STAGGER_WINDOW = 2.0
STAGGER_STEP = 0.2


class Drain:
    """Drain: watches one environment's in-flight exchanges after a swap."""

    def __init__(self, env: "Environment", generation: int, timeout: float,
                 on_done: Callable[["Drain"], None], servers: "list[Server] | None" = None,
                 tag: str = "") -> None:
        loop = asyncio.get_running_loop()
        self.env = env
        self.generation = generation
        self.timeout = timeout
        self.started = time.monotonic()
        self.duration: float | None = None
        self.servers = servers          # None: the whole environment's drain
        self.tag = tag
        if servers is None:
            self.exchanges: set["Exchange"] = set(env.active)
        else:
            self.exchanges = {ex for ex in env.active if ex.server in servers and ex.drain is None}
        self.inflight_at_start = len(self.exchanges)
        self.drained = 0
        self.forced_closed = 0
        self.dropped = 0
        self.client_gone = 0
        self.interrupted = False
        self.closed_idle = self._close_idle()
        self.done: asyncio.Future = loop.create_future()
        self._on_done = on_done
        self._timer = None
        self._staggered: list[asyncio.TimerHandle] = []
        for ex in self.exchanges:
            if ex.drain is not None:
                ex.drain.exchanges.discard(ex)   # an older drain of the same env hands it over
            ex.drain = self
        if self.exchanges:
            self._timer = loop.call_later(timeout, self._timed_out)
        else:
            loop.call_soon(self._complete)

    def finished(self, ex: "Exchange", outcome: str) -> None:
        """finished: called by Exchange.finish for each adopted exchange."""
        if ex not in self.exchanges:
            return
        self.exchanges.discard(ex)
        if outcome is Outcome.OK:
            self.drained += 1
        elif outcome is Outcome.FORCED:
            self.forced_closed += 1
        elif outcome is Outcome.CLIENT_GONE:
            self.client_gone += 1
        else:
            self.dropped += 1
        if not self.exchanges and not self.done.done():
            self._complete()

    def cancel(self) -> None:
        """cancel: the environment receives traffic again; stop watching, report what is known."""
        if self.done.done():
            return
        self.interrupted = True
        for handle in self._staggered:
            handle.cancel()   # the environment is live again: its tunnels stay
        for ex in self.exchanges:
            ex.drain = None
        self.exchanges = set()
        self._complete()

    def _timed_out(self) -> None:
        self._timer = None
        from .exchange import RESPONDING, TUNNEL
        loop = asyncio.get_running_loop()
        long_lived = []
        for ex in list(self.exchanges):
            if ex.state in (RESPONDING, TUNNEL):
                long_lived.append(ex)
            else:
                ex.force_close()
        n = len(long_lived)
        step = min(STAGGER_WINDOW / n, STAGGER_STEP) if n else 0
        for i, ex in enumerate(long_lived):
            if i == 0:
                ex.force_close()
            else:
                self._staggered.append(loop.call_later(i * step, ex.force_close))
        if not self.exchanges:
            self._complete()    # what it adopted was handed to a newer drain meanwhile

    def _close_idle(self) -> int:
        if self.servers is None:
            return pool.close_environment(self.env)
        return sum(pool.close_idle(server) for server in self.servers)

    def _complete(self) -> None:
        if self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.duration = time.monotonic() - self.started
        self.closed_idle += self._close_idle()
        self.done.set_result(self.result())
        self._on_done(self)

    def snapshot(self) -> DrainSnapshot:
        """snapshot: the drain's figures as plain values (Router.snapshot, the on_drain callbacks)."""
        return DrainSnapshot(
            environment=self.env.name,
            generation=self.generation,
            inflight_at_start=self.inflight_at_start,
            drained=self.drained,
            forced_closed=self.forced_closed,
            dropped=self.dropped,
            client_gone=self.client_gone,
            remaining=len(self.exchanges),
            interrupted=self.interrupted,
            duration=round(self.duration, 6) if self.duration is not None else None,
            idle_connections_closed=self.closed_idle,
            servers=tuple(s.address for s in self.servers) if self.servers is not None else (),
            tag=self.tag,
        )

    def result(self) -> dict:
        """result: the drain's figures as a dict, field by field as snapshot (the ``done`` future's value);
        ``servers`` and ``tag`` only for a drain of retired servers."""
        out = asdict(self.snapshot())
        if self.servers is None:
            del out["servers"], out["tag"]
        return out
