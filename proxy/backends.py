"""Servers and environments: health, counters, idle upstream connections, selection.

A Server is one upstream address with its own counters and its pool of idle
keep-alive connections (a LIFO stack: the most recently used is reused first,
so surplus connections age out at the bottom). An Environment is a named set
of servers (blue or green) with in-flight and connection totals, and the set of
exchanges it is serving, which a drain watches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .exchange import Exchange
    from .upstream import UpstreamConnection


class Server:
    """Server: one backend address of an environment.

    inflight counts exchanges that picked this server and have not finished;
    connections counts open upstream connections (idle ones included).
    """

    __slots__ = ("host", "port", "address", "env", "weight", "healthy", "inflight",
                 "connections", "idle", "ok_streak", "fail_streak", "heads_over_limit", "strays")

    def __init__(self, host: str, port: int, env: "Environment", weight: int = 1) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.env = env
        self.weight = weight
        self.healthy = True          # optimistic until a check says otherwise, as HAProxy does
        self.inflight = 0
        self.connections = 0
        self.idle: list["UpstreamConnection"] = []
        self.ok_streak = 0
        self.fail_streak = 0
        # Counted by UpstreamConnection, read by admin/metrics.py at scrape time:
        self.heads_over_limit = 0   # responses refused (502) or cut: head or trailers over limits.max_response_header_bytes
        self.strays = 0             # connections closed for bytes no request asked for (after a response, or idle)

    def set_healthy(self, healthy: bool) -> None:
        """set_healthy: the one place health changes; a server going down loses its idle pool."""
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if not healthy:
            self.close_idle()

    def close_idle(self) -> int:
        """close_idle: close every idle pooled connection to this server; returns how many."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        return len(idle)

    def snapshot(self) -> dict:
        """snapshot: this server's figures for the status endpoint."""
        return {"address": self.address, "healthy": self.healthy,
                "inflight": self.inflight, "connections": self.connections}


# Upper bounds (seconds) of the request latency histogram, as Prometheus buckets.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Environment:
    """Environment: a named pool of servers (blue or green) and its live counters.

    inflight is the sum over its servers plus exchanges still looking for one;
    active holds the exchanges counted in inflight, so a drain can see them.
    """

    __slots__ = ("name", "servers", "only", "inflight", "active", "_rr", "responses", "latency_counts",
                 "latency_sum")

    def __init__(self, name: str) -> None:
        self.name = name
        self.servers: list[Server] = []
        self.only: Server | None = None   # the server when there is exactly one (see add)
        self.inflight = 0
        self.active: set["Exchange"] = set()
        self._rr = 0
        # Counted by Exchange.finish, read by admin/metrics.py at scrape time:
        self.responses = [0] * 6        # finished requests by status class; [0] = no response sent
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)   # per bucket, last = +Inf
        self.latency_sum = 0.0

    def add(self, server: Server) -> None:
        """add: a server of this environment (Router.from_config adds them in config order)."""
        self.servers.append(server)
        self.only = server if len(self.servers) == 1 else None

    @property
    def healthy(self) -> bool:
        """healthy: an environment is healthy while at least one of its servers is."""
        return any(s.healthy for s in self.servers)

    @property
    def connections(self) -> int:
        return sum(s.connections for s in self.servers)

    def pick(self, exclude: "set[Server] | None" = None) -> Server | None:
        """pick: the healthy server with the fewest in-flight requests per weight.

        Ties rotate, so equal servers share the load round robin. Servers in
        ``exclude`` (already tried for this request) are skipped.
        """
        servers = self.servers
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

    def close_idle(self) -> int:
        """close_idle: close the idle pooled connections of every server; returns how many."""
        return sum(s.close_idle() for s in self.servers)

    def snapshot(self) -> dict:
        """snapshot: this environment's figures for the status endpoint."""
        servers = [s.snapshot() for s in self.servers]
        return {"healthy": self.healthy, "inflight": self.inflight,
                "connections": sum(s["connections"] for s in servers), "servers": servers}
