"""Router: the one narrow interface between the data plane and whoever steers it.

It owns the environments and their servers, the live Route snapshot, the
hold gate and the drains. The admin side (through admin/plane.py) calls
``swap`` and ``hold``/``resume``, reads it through ``snapshot`` and watches
drains through ``on_drain``; nothing else in the data plane is changed from
outside. A hold lasts until ``resume``: its deadline and the timer that ends
it are the caller's. A fence (``fence``) is the one deadline the router keeps itself: a fleet
replica may serve by its route only while its lease is known to be alive, so a request that
starts past ``fence_until`` waits until whoever steers the router extends the fence (after
re-reading the fleet's state when the lease was lost).

``set_servers`` replaces an environment's server list while it serves (a registration from
CI, a reload): a server whose address stays keeps its Server object (health streak, idle
pool, counters); an added one starts down and takes traffic once the health checker saw it
healthy healthy_after times (as HAProxy's ``init-state down`` or Envoy's first health
check); a removed one is retired. Retired servers keep taking new requests only while no
server of the new list is healthy, so a list of servers still being checked never turns a
serving environment into 503s; from the moment one is healthy they take no new request and
drain (a Drain of just those servers: in-flight requests finish, counted, cut at
drain_timeout; their idle connections closed), then they are gone.
"""

from __future__ import annotations

import logging
import math
import random
import re
import zlib
from time import monotonic
from typing import TYPE_CHECKING, Callable

from .backends import Environment, Server
from .drain import Drain
from .settings import Address
from .hold import HoldGate, HoldTally
from .route import Route
from .snapshot import RouterSnapshot

if TYPE_CHECKING:
    from .settings import Settings
    from .exchange import Exchange

log = logging.getLogger("cutover.router")

# The cookie that pins a client to its canary bucket (0..99) while a canary runs.
CANARY_COOKIE = b"cutover_canary"
_COOKIE_BUCKET = re.compile(rb"(?:^|[;\s])cutover_canary=(\d{1,2})(?:;|\s|$)")


def _canary_pattern(header: str | None) -> "re.Pattern[bytes] | None":
    """_canary_pattern: what finds the canary header's value in a request head (None: no header)."""
    if not header:
        return None
    return re.compile(rb"(?im)^" + re.escape(header.encode()) + rb"[ \t]*:[ \t]*([^\r\n]*)")


class Router:
    """Router: environments, the live route, the hold gate and the drains."""

    def __init__(self, environments: dict[str, Environment], route: Route, drain_timeout: float,
                 hold_max_queued: int, canary_header: str | None = None) -> None:
        self.environments = environments
        # Without a configured header, clients are told their bucket in a cookie.
        self._canary_header = _canary_pattern(canary_header)
        self.route = route
        self.drain_timeout = drain_timeout
        self.hold_max_queued = hold_max_queued
        self.hold_gate: HoldGate | None = None
        # With workers, the counts of every worker's gates (proxy/hold.py): hold.max_queued
        # bounds the router as a whole. None: this process is the router.
        self.hold_tally: HoldTally | None = None
        self.fence_tally: HoldTally | None = None
        # Monotonic time (CLOCK_MONOTONIC, the same in every process) past which a new request
        # waits in fence_gate: inf unless a fleet replica set it (see fence).
        self.fence_until: float = math.inf
        self.fence_gate: HoldGate | None = None
        self.drains: dict[str, Drain] = {}       # environment -> its running drain
        self.on_drain: list[Callable[[Drain], None]] = []
        self.on_health: list[Callable[[Server, bool, str], None]] = []
        # True while a worker applies a health result another worker checked (proxy/agent.py):
        # that worker logged the transition, so this one logs it at debug only.
        self.relayed_health = False
        # Called after a server list changed (set_servers, a retired server gone): the health
        # checker follows (Proxy).
        self.on_servers: list[Callable[[], None]] = []
        self.server_drains: list[Drain] = []     # drains of retired servers, oldest first
        # environment -> the removed servers still serving as fallback, by the change (tag) that removed them
        self._retiring: dict[str, list[tuple[str, list[Server]]]] = {}

    @classmethod
    def from_settings(cls, settings: "Settings", route: Route | None = None) -> "Router":
        """from_settings: environments and servers from the settings; route from saved state or settings.live."""
        envs = {}
        for env_cfg in settings.environments:
            env = Environment(env_cfg.name)
            for address, weight in zip(env_cfg.servers, env_cfg.weights):
                env.add(Server(address.host, address.port, env, weight))
            envs[env_cfg.name] = env
        if route is None:
            route = Route(generation=1, live=settings.live, environments=tuple(envs))
        return cls(envs, route, settings.drain_timeout, settings.max_queued, settings.canary_header)

    def configure(self, drain_timeout: float, hold_max_queued: int, canary_header: str | None) -> None:
        """configure: a reload's settings (Proxy.configure): drains that start from now on last up
        to ``drain_timeout``; a hold (the one on now too) queues up to ``hold_max_queued``; the
        canary bucket of a new request is read from ``canary_header`` (None: the cookie)."""
        self.drain_timeout = drain_timeout
        self.hold_max_queued = hold_max_queued
        for gate in (self.hold_gate, self.fence_gate):
            if gate is not None:
                gate.max_queued = hold_max_queued
        self._canary_header = _canary_pattern(canary_header)

    # ----------------------------------------------------------------- route

    def choose(self, route: Route, ex: "Exchange") -> str:
        """choose: the environment a new request goes to under ``route``.

        With a canary weight N, a client lands in the canary when its sticky
        bucket (0..99) is below N, so raising N only ever moves clients from
        the old environment to the new one. The bucket comes from the
        configured canary header (hashed), else from the cutover_canary
        cookie; a client with neither gets a random bucket, sent back to it
        in that cookie (Exchange.canary_bucket).
        """
        if not route.canary_weight:
            return route.live
        bucket = canary_bucket(ex.head.block, self._canary_header)
        if bucket is None:
            bucket = random.randrange(100)
            ex.canary_bucket = bucket
        if route.canary is not None and bucket < route.canary_weight:
            return route.canary
        return route.live

    def idle(self, route: Route) -> str:
        """idle: where the preview route goes under ``route``: the canary, else the non-live environment."""
        return route.canary if route.canary_weight and route.canary else route.other(route.live)

    def swap(self, route: Route) -> list[Drain]:
        """swap: replace the live route in one assignment; drain what stops receiving traffic.

        Every request that reads the route after this call goes by the new one.
        Returns the drains started (their ``done`` futures carry the result).
        """
        old = self.route
        before = serving(old)
        after = serving(route)
        self.route = route
        for name in after:
            drain = self.drains.pop(name, None)
            if drain is not None:
                drain.cancel()
        started = []
        for name in before - after:
            previous = self.drains.pop(name, None)
            drain = Drain(self.environments[name], route.generation, self.drain_timeout, self._drain_done)
            if previous is not None:
                previous.cancel()
            self.drains[name] = drain
            started.append(drain)
        return started

    def _drain_done(self, drain: Drain) -> None:
        if self.drains.get(drain.env.name) is drain:
            del self.drains[drain.env.name]
        for callback in self.on_drain:
            try:
                callback(drain)
            except Exception:
                log.exception("drain callback failed")

    # --------------------------------------------------------------- servers

    def set_servers(self, name: str, servers: "tuple[tuple[Address, int], ...]", tag: str = "",
                    at_start: bool = False) -> list[Drain]:
        """set_servers: ``servers`` ((address, weight), in order) become environment ``name``'s list.

        Called through the plane (admin/plane.py LocalPlane, proxy/agent.py) for a registration
        or its reset. ``tag`` names the change in the drain it starts. ``at_start``: the list
        this router starts with (nothing served yet), whose added servers are taken as healthy
        until a check says otherwise, as the config's are. Returns the drain started, if any
        (see the module docstring for what happens to removed servers).
        """
        env = self.environments[name]
        current = {s.address: s for s in env.servers}
        retired = {s.address: s for s in env.retired}
        kept: list[Server] = []
        for address, weight in servers:
            key = str(address)
            server = current.pop(key, None)
            if server is None:
                server = retired.pop(key, None)
                if server is not None:
                    self._unretire(env, server)
            if server is None:
                server = Server(address.host, address.port, env, weight)
                if not at_start:
                    server.healthy = False
            server.weight = weight
            kept.append(server)
        env.set_servers(kept)
        removed = list(current.values())
        started = []
        for server in removed:
            server.retired = True
            env.retired.append(server)
        if removed:
            if at_start or any(s.healthy for s in kept):
                started.append(self._retire(env, removed, tag))
            else:
                env.fallback.extend(removed)
                self._retiring.setdefault(name, []).append((tag, removed))
        log.info("servers of %s are now %s (%d removed)", name, ", ".join(s.address for s in kept), len(removed))
        self._servers_changed()
        return started

    def server(self, name: str, address: str) -> Server | None:
        """server: the server of environment ``name`` at ``address``, current or retired, or None."""
        env = self.environments[name]
        for server in env.servers:
            if server.address == address:
                return server
        for server in env.retired:
            if server.address == address:
                return server
        return None

    def checked_servers(self) -> list[Server]:
        """checked_servers: every server the health checker probes: current and retired, of every environment."""
        return [s for env in self.environments.values() for s in (*env.servers, *env.retired)]

    def _unretire(self, env: Environment, server: Server) -> None:
        """_unretire: a retired server is listed again: it serves as before (its drain counts what it had)."""
        server.retired = False
        env.retired.remove(server)
        if server in env.fallback:
            env.fallback.remove(server)
        for _, group in self._retiring.get(env.name, []):
            if server in group:
                group.remove(server)
        for drain in self.server_drains:
            if drain.servers is not None and server in drain.servers:
                drain.servers.remove(server)

    def _retire(self, env: Environment, servers: list[Server], tag: str) -> Drain:
        drain = Drain(env, self.route.generation, self.drain_timeout, self._server_drain_done, servers=servers,
                      tag=tag)
        self.server_drains.append(drain)
        return drain

    def _end_fallback(self, env: Environment) -> None:
        """_end_fallback: a server of the current list is healthy: the fallback servers drain from now on."""
        groups = self._retiring.pop(env.name, None)
        env.fallback = []
        for tag, servers in groups or ():
            if servers:
                self._retire(env, servers, tag)

    def _server_drain_done(self, drain: Drain) -> None:
        if drain in self.server_drains:
            self.server_drains.remove(drain)
        env = drain.env
        for server in drain.servers or ():
            if server.retired and server in env.retired:
                env.retired.remove(server)
        self._servers_changed()
        for callback in self.on_drain:
            try:
                callback(drain)
            except Exception:
                log.exception("drain callback failed")

    def _servers_changed(self) -> None:
        for callback in self.on_servers:
            try:
                callback()
            except Exception:
                log.exception("server list callback failed")

    # ------------------------------------------------------------------ hold

    @property
    def held(self) -> bool:
        return self.hold_gate is not None

    def hold(self, until: float | None = None) -> None:
        """hold: new requests wait in the hold gate until resume.

        ``until`` is the deadline whoever steers the router keeps (admin's Controller runs
        the timer that calls resume); the router only shows it and never ends a hold itself.
        """
        if self.hold_gate is None:
            self.hold_gate = HoldGate(self.hold_max_queued, until, self.hold_tally)
        else:
            self.hold_gate.deadline = until

    def resume(self) -> int:
        """resume: release every waiting request; returns how many were waiting."""
        gate, self.hold_gate = self.hold_gate, None
        return gate.release() if gate is not None else 0

    @property
    def held_requests(self) -> int:
        return len(self.hold_gate) if self.hold_gate is not None else 0

    # ----------------------------------------------------------------- fence

    def fence(self, until: float) -> int:
        """fence: serve by this route only while ``time.monotonic() <= until`` (inf: no fence).

        A fleet replica's membership calls it (through the plane) with the time its lease is
        known to last, each time etcd confirms a renewal, and with inf while etcd does not
        answer (fail static). A request that starts past ``until`` waits in the fence gate
        (bounded by hold.max_queued, like a hold); a later fence that is still ahead starts
        each of them again, in arrival order, by the route as it is then. Returns how many
        were started.
        """
        self.fence_until = until
        gate = self.fence_gate
        if gate is None or until < monotonic():
            return 0
        self.fence_gate = None
        waiting = gate.take()
        for ex in waiting:
            ex.start()
        return len(waiting)

    def fenced(self, ex: "Exchange") -> None:
        """fenced: ``ex`` started past fence_until: it waits for the next fence."""
        gate = self.fence_gate
        if gate is None:
            gate = self.fence_gate = HoldGate(self.hold_max_queued, None, self.fence_tally)
        gate.enter(ex)

    def refuse_fenced(self, message: str) -> int:
        """refuse_fenced: answer 503 to every request waiting for the fence, none sent upstream
        (a shutdown: the route they would take is not confirmed); returns how many."""
        gate, self.fence_gate = self.fence_gate, None
        waiting = gate.take() if gate is not None else []
        for ex in waiting:
            ex.reply_error(503, message)
        return len(waiting)

    def unqueue(self, ex: "Exchange") -> None:
        """unqueue: ``ex`` ended while it waited (its client went away): out of either gate."""
        if self.hold_gate is not None:
            self.hold_gate.leave(ex)
        if self.fence_gate is not None:
            self.fence_gate.leave(ex)

    # ---------------------------------------------------------------- health

    def set_health(self, server: Server, healthy: bool, reason: str) -> None:
        """set_health: the health checker's narrow callback; also used for passive failures."""
        if healthy == server.healthy:
            return
        server.set_healthy(healthy)
        log.log(logging.DEBUG if self.relayed_health else logging.WARNING,
                "server %s of %s is now %s (%s); generation %d", server.address, server.env.name,
                "healthy" if healthy else "unhealthy", reason, self.route.generation,
                extra={"action": "health", "generation": self.route.generation, "env": server.env.name,
                       "server": server.address})
        env = server.env
        if healthy and env.fallback and not server.retired:
            self._end_fallback(env)
        for callback in self.on_health:
            try:
                callback(server, healthy, reason)
            except Exception:
                log.exception("health callback failed")

    def passive_failure(self, server: Server, reason: str) -> None:
        """passive_failure: a refused or failed connect marks the server down at once."""
        server.ok_streak = 0
        self.set_health(server, False, f"connect failed: {reason}")

    # -------------------------------------------------------------- snapshot

    def snapshot(self) -> RouterSnapshot:
        """snapshot: the route, the hold, the environments and the drains as plain values.

        Called by Proxy.snapshot when the admin side reads the data plane (status, scrape,
        probe), never per request.
        """
        gate = self.hold_gate
        return RouterSnapshot(
            route=self.route,
            held=gate is not None,
            held_requests=len(gate) if gate is not None else 0,
            hold_until=gate.deadline if gate is not None else None,
            environments=tuple(env.snapshot() for env in self.environments.values()),
            drains=tuple(drain.snapshot() for drain in (*self.drains.values(), *self.server_drains)),
            fenced_requests=len(self.fence_gate) if self.fence_gate is not None else 0,
        )


def canary_bucket(block: bytes, header: "re.Pattern | None") -> int | None:
    """canary_bucket: the client's sticky bucket from a request's header block, or None."""
    if header is not None:
        match = header.search(block)
        return zlib.crc32(match.group(1).strip()) % 100 if match else None
    for line in block.split(b"\r\n"):
        if line[:7].lower() == b"cookie:":
            match = _COOKIE_BUCKET.search(line, 7)
            if match:
                return int(match.group(1))
    return None


def serving(route: Route) -> set[str]:
    """serving: the environments that receive new requests under ``route`` (also admin/workers.py)."""
    envs = {route.live}
    if route.canary is not None and route.canary_weight > 0:
        envs.add(route.canary)
    return envs
