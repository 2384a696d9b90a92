"""The data plane as the control plane sees it: changes go in, acks and snapshots come out.

The Controller is the only caller: it sends one Change per mutation through
``DataPlane.apply`` and answers the mutation only after the Ack is back; it reads
the data plane only through ``snapshot()`` (plain frozen values, proxy/snapshot.py) and
learns how a drain ended through ``on_drain`` (a DrainSnapshot, never a live Drain).
Gates, analysis, metrics, readiness and the API get the same ``snapshot`` callable.

LocalPlane is the one implementation today: the Router and Proxy of this process.
A plane over worker processes, or a fleet's replica loop, implements the same three
calls; nothing else in admin/ holds a Router, Proxy, Environment or Server.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from proxy import Proxy, Route, Router, merge_snapshots

if TYPE_CHECKING:
    from proxy import Address, DrainSnapshot, Settings, Snapshot


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold: whether new requests wait in the hold gate, and until when (wall clock).

    The Controller owns the deadline and runs the one timer that ends the hold: ``until``
    travels only so that snapshots can show it; the data plane never ends a hold itself.
    """

    held: bool
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """Change: what one mutation changes on the data plane; None leaves that part as it is.

    ``revision`` is the store revision of the state it comes from (a fleet replica acks it);
    ``confirm`` asks the plane to wait until every member of the fleet applied it too (the
    replica that took the call; a change taken from the store is only applied and acked).
    ``servers`` gives environments a new server list ((address, weight) in order; Router.set_servers),
    ``servers_tag`` names that change in the drain of the servers it removes, and
    ``servers_at_start`` says the lists are the ones the data plane starts with (the
    Controller's start: added servers count as healthy until checked, as the config's do).
    ``settings`` are a reload's (SPEC §12): every process of the data plane reads them from
    then on (Proxy.configure), before the server lists of the same change are set.
    """

    route: Route | None = None
    hold: Hold | None = None
    revision: object = None
    confirm: bool = False
    servers: "dict[str, tuple[tuple[Address, int], ...]] | None" = None
    servers_tag: str = ""
    servers_at_start: bool = False
    settings: "Settings | None" = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Ack: the data plane's answer to a Change.

    ``generation`` is the route generation it serves after the change; ``acked`` names who
    applied it (process ids here), ``pending`` who has not; ``complete`` when none is pending.
    """

    generation: int
    complete: bool
    acked: tuple[int | str, ...]      # worker pids, or fleet replica ids
    pending: tuple[int | str, ...]

    def to_dict(self) -> dict:
        """to_dict: the ``ack`` of a mutation's answer (SPEC §9.1)."""
        return {"complete": self.complete, "acked": list(self.acked), "pending": list(self.pending)}


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """WorkerInfo: one worker as GET /v1/status lists it."""

    pid: int | None
    generation: int
    inflight: int
    connections: int
    started: float | None     # wall clock
    restarts: int
    alive: bool
    requests: int = 0         # requests it finished (this process, since it started)
    error: str | None = None  # why the slot has no process and gets none started (its code changed)


DrainCallback = Callable[["DrainSnapshot"], None]


class DataPlane(Protocol):
    """DataPlane: what the Controller drives (SPEC §9: one process, workers or a fleet's replica)."""

    async def apply(self, change: Change) -> Ack:
        """apply: make ``change`` effective; the Ack comes back once it is."""
        ...

    def snapshot(self) -> "Snapshot":
        """snapshot: the data plane as it is now, as plain frozen values."""
        ...

    def on_drain(self, callback: DrainCallback) -> None:
        """on_drain: call ``callback`` with each drain's outcome when the drain ends."""
        ...

    async def refresh(self) -> None:
        """refresh: make the next ``snapshot`` current (a plane of other processes asks them now)."""
        ...

    def workers_info(self) -> tuple[WorkerInfo, ...]:
        """workers_info: the processes serving traffic, as status lists them."""
        ...


def servers_only(counters: "Snapshot", current: "dict[str, set[str]]") -> "Snapshot":
    """servers_only: ``counters`` (an exited process's, gauges zeroed) with only the servers
    ``current`` lists per environment. Merged with the live snapshots, a server an earlier
    list had would stay listed with no opinion on health (an environment would read healthy
    with every current server down) and hide a live retired server of that address."""
    return dataclasses.replace(counters, router=dataclasses.replace(counters.router, environments=tuple(
        dataclasses.replace(env, servers=tuple(s for s in env.servers if s.address in current.get(env.name, ())))
        for env in counters.router.environments)))


def carried_on(snapshot: "Snapshot", counters: "Snapshot") -> "Snapshot":
    """carried_on: ``snapshot`` with ``counters`` (an earlier process's, gauges zeroed) added;
    its servers are the snapshot's own, in its order (the earlier one may have had others)."""
    current = {env.name: {s.address for s in env.servers} for env in snapshot.router.environments}
    return merge_snapshots([snapshot, servers_only(counters, current)], snapshot.router.route)


class LocalPlane:
    """LocalPlane: the data plane of this process, one Router behind one Proxy.

    serve's start-up builds it (``build``); every call runs on the event loop, so apply
    takes effect before it returns: a request that reads the route after it goes by the
    new one, and the Ack is complete at once.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._router = proxy.router
        self._started = time.time()
        self.carried: "Snapshot | None" = None   # an upgrade's predecessor's counters (carry)

    @classmethod
    def build(cls, settings: "Settings", route: Route) -> "LocalPlane":
        """build: a Router for the settings' environments serving ``route``, behind a Proxy (not started)."""
        return cls(Proxy(settings, Router.from_settings(settings, route)))

    async def apply(self, change: Change) -> Ack:
        """apply: new settings, new server lists, then swap the route (Router.swap starts the drains), then
        set or release the hold."""
        router = self._router
        if change.settings is not None:
            self.proxy.configure(change.settings)
        if change.servers is not None:
            for name, servers in change.servers.items():
                router.set_servers(name, servers, change.servers_tag, change.servers_at_start)
        if change.route is not None:
            router.swap(change.route)
        if change.hold is not None:
            if change.hold.held:
                router.hold(change.hold.until)
            else:
                router.resume()
        return Ack(router.route.generation, complete=True, acked=(os.getpid(),), pending=())

    def set_fence(self, until: float) -> None:
        """set_fence: serve by the route only while ``time.monotonic() <= until`` (Router.fence; inf
        lifts it). A fleet replica's lease renewals set it (admin/fleet/start.py): no Ack, no wait."""
        self._router.fence(until)

    def snapshot(self) -> "Snapshot":
        """snapshot: Proxy.snapshot(), the router with its listeners and client-side counters (on
        top of the predecessor's, after an upgrade)."""
        snap = self.proxy.snapshot()
        return snap if self.carried is None else carried_on(snap, self.carried)

    def carry(self, counters: "Snapshot") -> None:
        """carry: count on from ``counters`` (an upgrade's predecessor's, gauges zeroed)."""
        self.carried = counters

    def on_drain(self, callback: DrainCallback) -> None:
        """on_drain: hand ``callback`` the snapshot of each drain the Router reports ended."""
        self._router.on_drain.append(lambda drain: callback(drain.snapshot()))

    @property
    def port(self) -> int:
        """port: the port listen is bound to (0 before the Proxy starts)."""
        return self.proxy.port

    def listener_fds(self) -> tuple[list[int], list[int]]:
        """listener_fds: the listen and preview_listen sockets' descriptors, for a successor."""
        return self.proxy.listener_fds()

    async def stop_accepting(self) -> None:
        """stop_accepting: accept no new connection; the open ones go on (a successor took over).
        The sockets are kept until shutdown, for resume_accepting."""
        self.proxy.stop_accepting(keep=True)

    async def resume_accepting(self) -> bool:
        """resume_accepting: accept again (the successor died before it served)."""
        return await self.proxy.resume_accepting()

    async def refresh(self) -> None:
        """refresh: nothing to do; every snapshot of this process is current."""

    async def shutdown(self, timeout: float | None = None) -> dict:
        """shutdown: Proxy.shutdown: stop accepting, drain up to ``timeout``, cut the rest."""
        return await self.proxy.shutdown(timeout)

    def workers_info(self) -> tuple[WorkerInfo, ...]:
        """workers_info: this one process (workers: 1)."""
        snap = self.proxy.snapshot()
        return (WorkerInfo(pid=os.getpid(), generation=snap.router.route.generation,
                           inflight=sum(e.inflight for e in snap.router.environments),
                           connections=snap.client_connections, started=self._started, restarts=0, alive=True,
                           requests=sum(sum(e.responses) for e in snap.router.environments)),)
