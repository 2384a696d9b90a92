"""Servers and environments: health, counters, selection.

A Server is one upstream address with its own counters and its idle keep-alive
connections (``idle``, kept by pool.py). An Environment is a named set of servers
(blue or green) with in-flight and connection totals, its request counters, and
the set of exchanges it is serving, which a drain watches. The counters are
plain ints bumped where the data plane already knows the event; ``snapshot``
turns them into the frozen values of snapshot.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import pool
from .snapshot import EnvironmentSnapshot, ServerSnapshot

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream import UpstreamConnection


class Server:
    """Server: one backend address of an environment.

    inflight counts exchanges that picked this server and have not finished;
    connections counts open upstream connections (idle ones included).
    """

    __slots__ = ("host", "port", "address", "env", "weight", "healthy", "inflight",
                 "connections", "idle", "ok_streak", "fail_streak", "requests", "connect_errors",
                 "timeouts", "resets", "invalid", "heads_over_limit", "strays", "retired")

    def __init__(self, host: str, port: int, env: "Environment", weight: int = 1) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.env = env
        self.weight = weight
        self.healthy = True          # optimistic until a check says otherwise, as HAProxy does
        self.inflight = 0
        self.connections = 0
        self.idle: list["UpstreamConnection"] = []   # the idle pool, most recently used last (pool.py)
        self.ok_streak = 0
        self.fail_streak = 0
        # Totals read through snapshot() (snapshot.UPSTREAM_ERROR_KINDS says what each counts):
        self.requests = 0           # finished exchanges that were sent to this server last (Exchange.finish)
        self.connect_errors = 0     # Exchange.connect_failed
        self.timeouts = 0           # Exchange.timed_out
        self.resets = 0             # Exchange.upstream_lost
        self.invalid = 0            # Exchange.upstream_invalid
        self.heads_over_limit = 0   # UpstreamConnection.over_limit
        self.strays = 0             # UpstreamConnection and pool.take; non-zero makes pool.take check before reuse
        self.retired = False        # a new server list removed it (Router.set_servers); in Environment.retired

    def set_healthy(self, healthy: bool) -> None:
        """set_healthy: the one place health changes; a server going down loses its idle pool."""
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if not healthy:
            pool.close_idle(self)

    def snapshot(self) -> ServerSnapshot:
        """snapshot: this server as plain values; called by Environment.snapshot."""
        errors = (("connect", self.connect_errors), ("timeout", self.timeouts), ("reset", self.resets),
                  ("invalid", self.invalid), ("head_too_large", self.heads_over_limit),
                  ("stray_bytes", self.strays))
        return ServerSnapshot(address=self.address, healthy=self.healthy, inflight=self.inflight,
                              connections=self.connections, weight=self.weight, requests=self.requests,
                              upstream_errors=errors)


# Upper bounds (seconds) of the request latency histogram, as Prometheus buckets.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Environment:
    """Environment: a named pool of servers (blue or green) and its live counters.

    inflight is the sum over its servers plus exchanges still looking for one;
    active holds the exchanges counted in inflight, so a drain can see them.
    servers is the current list; retired the servers a new list removed that have not
    finished yet, and fallback those of them that still take new requests because no server
    of the current list is healthy yet (Router.set_servers says when that ends).
    """

    __slots__ = ("name", "servers", "only", "retired", "fallback", "inflight", "active", "_rr", "responses",
                 "latency_counts", "latency_sum", "bytes_in", "bytes_out")

    def __init__(self, name: str) -> None:
        self.name = name
        self.servers: list[Server] = []
        self.only: Server | None = None   # the server when there is exactly one (see add)
        self.retired: list[Server] = []
        self.fallback: list[Server] = []  # a subset of retired
        self.inflight = 0
        self.active: set["Exchange"] = set()
        self._rr = 0
        # Counted by Exchange.finish, read through snapshot():
        self.responses = [0] * 6        # finished requests by status class; [0] = no response sent
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)   # per bucket, last = +Inf
        self.latency_sum = 0.0
        # Client bytes of its requests and answers (ClientConnection counts, Exchange settles):
        self.bytes_in = 0
        self.bytes_out = 0

    def add(self, server: Server) -> None:
        """add: a server of this environment (Router.from_settings adds them in config order)."""
        self.servers.append(server)
        self.only = server if len(self.servers) == 1 else None

    def set_servers(self, servers: list[Server]) -> None:
        """set_servers: the current list from now on (Router.set_servers keeps the Server objects that stay)."""
        self.servers = servers
        self.only = servers[0] if len(servers) == 1 else None
        self._rr = 0

    @property
    def healthy(self) -> bool:
        """healthy: an environment is healthy while at least one of its servers is (a fallback one included)."""
        return any(s.healthy for s in self.servers) or any(s.healthy for s in self.fallback)

    @property
    def connections(self) -> int:
        return sum(s.connections for s in self.servers)

    def pick(self, exclude: "set[Server] | None" = None) -> Server | None:
        """pick: the healthy server with the fewest in-flight requests per weight.

        Ties rotate, so equal servers share the load round robin. Servers in
        ``exclude`` (already tried for this request) are skipped. With no healthy server in
        the current list, the fallback servers (removed ones still serving) are picked from.
        """
        best = self._pick(self.servers, exclude)
        if best is None and self.fallback:
            return self._pick(self.fallback, exclude)
        return best

    def _pick(self, servers: list[Server], exclude: "set[Server] | None") -> Server | None:
        if not servers:
            return None
        if len(servers) == 1:
            s = servers[0]
            return s if s.healthy and not (exclude and s in exclude) else None
        n = len(servers)
        start = self._rr = (self._rr + 1) % n
        best = None
        best_load = 0.0
        for i in range(n):
            s = servers[(start + i) % n]
            if not s.healthy or (exclude and s in exclude):
                continue
            load = s.inflight / s.weight
            if best is None or load < best_load:
                best, best_load = s, load
        return best

    def snapshot(self) -> EnvironmentSnapshot:
        """snapshot: this environment and its servers as plain values; called by Router.snapshot."""
        servers = tuple(s.snapshot() for s in self.servers)
        return EnvironmentSnapshot(name=self.name, healthy=self.healthy,
                                   inflight=self.inflight, connections=sum(s.connections for s in servers),
                                   servers=servers, responses=tuple(self.responses),
                                   latency_counts=tuple(self.latency_counts), latency_sum=self.latency_sum,
                                   bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                                   retired=tuple(s.snapshot() for s in self.retired))
