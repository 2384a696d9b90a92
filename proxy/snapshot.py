"""The data plane's read model: plain frozen values, taken in one pass of the event loop.

Proxy.snapshot() (and Router.snapshot(), its router part) build them when the admin
side asks, at status, scrape and probe time, never per request. They hold only
plain values (str, int, float, bool, tuples, Route), no live object, so whoever
reads one can keep it, compare two, or (later) receive it from another process:
admin/ reads the data plane only through these (admin/plane.py).

Counters are totals since the process started; the reader takes differences.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .route import Route

_T = TypeVar("_T")


def pickled_by_value(cls: type[_T]) -> type[_T]:
    """pickled_by_value: ``cls`` (a frozen dataclass) pickles as its constructor and its field
    values in order. A worker's ack carries a snapshot of every server: unpickled this way
    it costs the supervisor a third of the default (a slotted dataclass's state is set field
    by field), which every change waits for."""
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        return cls, tuple([getattr(self, name) for name in names])

    cls.__reduce__ = __reduce__  # type: ignore[method-assign, assignment]
    return cls

# The kinds of ServerSnapshot.upstream_errors, in the order they are listed. Stable names:
# they are label values of cutover_upstream_errors.
UPSTREAM_ERROR_KINDS = (
    "connect",          # no connection: refused, unreachable, or not within timeouts.connect
    "timeout",          # no answer (or no progress) within timeouts.upstream_response: 504
    "reset",            # the connection closed before or while the response came: 502 or a cut response
    "invalid",          # bytes that are not a valid HTTP response: 502
    "head_too_large",   # head or trailers over limits.max_response_header_bytes: 502 or a cut response
    "stray_bytes",      # bytes nobody asked for (after a response, or while idle): connection closed
)


@pickled_by_value
@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """ServerSnapshot: one backend server.

    inflight counts exchanges that picked it and have not finished; connections its
    open upstream connections (idle ones included); requests the finished exchanges
    that were sent to it last. upstream_errors is a (kind, count) pair for every kind
    of UPSTREAM_ERROR_KINDS, in that order.
    """

    address: str
    healthy: bool
    inflight: int
    connections: int
    weight: int
    requests: int
    upstream_errors: tuple[tuple[str, int], ...]


@pickled_by_value
@dataclass(frozen=True, slots=True)
class EnvironmentSnapshot:
    """EnvironmentSnapshot: one environment (blue or green) and its counters.

    responses counts finished requests by status class ([0]: no response was sent,
    [1]..[5]: 1xx..5xx); latency_counts the same requests by latency bucket
    (backends.LATENCY_BUCKETS, the last one +Inf), latency_sum their seconds.
    bytes_in are the bytes received from clients for its requests, bytes_out those
    sent to clients in their answers (heads, bodies, tunnels included), as the client
    connections read and wrote them. retired are servers a new server list removed that
    have not finished yet (Router.set_servers): still serving while no server of the new list
    is healthy, else draining; they are not in ``servers``, which is the current list. A client's bytes count for its request when the
    request is routed or ends, so in a read that also carries the start of the next
    pipelined request, that start counts for the one before it.
    """

    name: str
    healthy: bool
    inflight: int
    connections: int
    servers: tuple[ServerSnapshot, ...]
    responses: tuple[int, ...]
    latency_counts: tuple[int, ...]
    latency_sum: float
    bytes_in: int
    bytes_out: int
    retired: tuple[ServerSnapshot, ...] = ()


@pickled_by_value
@dataclass(frozen=True, slots=True)
class DrainSnapshot:
    """DrainSnapshot: a drain in progress or ended (Drain.snapshot), field by field as
    the status's "draining" and the history's "drain" show it.

    Every exchange in flight at the start is counted once: drained (finished normally),
    forced_closed (cut at drain_timeout), dropped (failed), client_gone, or still remaining.
    interrupted: the environment received traffic again first. duration is None while
    it runs. A drain of servers a new server list removed (Router.set_servers) names them in
    ``servers`` and carries the ``tag`` of the change that removed them; an environment's
    drain after a swap has neither.
    """

    environment: str
    generation: int
    inflight_at_start: int
    drained: int
    forced_closed: int
    dropped: int
    client_gone: int
    remaining: int
    interrupted: bool
    duration: float | None
    idle_connections_closed: int
    servers: tuple[str, ...] = ()
    tag: str = ""


@pickled_by_value
@dataclass(frozen=True, slots=True)
class RouterSnapshot:
    """RouterSnapshot: the live route, the hold and the environments with their drains.

    hold_until is the wall-clock deadline whoever holds traffic gave (None: no hold,
    or one until resume); held_requests wait in the hold gate; fenced_requests wait for a
    fleet replica's lease check (Router.fence).
    """

    route: Route
    held: bool
    held_requests: int
    hold_until: float | None
    environments: tuple[EnvironmentSnapshot, ...]
    drains: tuple[DrainSnapshot, ...]
    fenced_requests: int = 0

    def env(self, name: str) -> EnvironmentSnapshot:
        """env: the environment called ``name``; KeyError names it when there is none."""
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(f"no environment {name!r} (there are {', '.join(self.names())})")

    def names(self) -> tuple[str, ...]:
        """names: the environments' names, in config order."""
        return tuple(env.name for env in self.environments)


@pickled_by_value
@dataclass(frozen=True, slots=True)
class Snapshot:
    """Snapshot: Proxy.snapshot(), the router and the listeners' side.

    listen and preview_listen are "host:port" with the port as bound (preview_listen
    None when there is none or it is not listening yet). unrouted counts requests
    answered before reaching an environment, by status class as responses;
    client_body_timeouts the requests cut with 408 at timeouts.client_body.
    preview_token_set tells whether X-Cutover-Env is honoured at all (the token is never here).
    access_log_dropped counts access log lines lost (the writer fell PENDING_LIMIT behind, or
    the file would not open or take a write; proxy/accesslog.py).
    tls_handshake_failures counts client TLS handshakes refused on listen and preview_listen;
    tls_over_limit the TLS connections closed as they were accepted, limits.max_connections
    handshakes being in flight (proxy/tlsstream.py).
    """

    router: RouterSnapshot
    listen: str
    preview_listen: str | None
    client_connections: int
    unrouted: tuple[int, ...]
    client_body_timeouts: int
    preview_token_set: bool
    access_log_dropped: int = 0
    tls_handshake_failures: int = 0   # client handshakes the TLS listeners refused (proxy/tls.py)
    tls_over_limit: int = 0           # TLS connections closed at the handshakes' bound
    tls: bool = False                 # listen and preview_listen serve TLS (the `tls` section)


# --------------------------------------------------------------------------- merging
# A router of N worker processes is read as one: its supervisor merges the workers' snapshots
# (admin/workers.py). Counters add up; a server is healthy when every worker finds it so.


def _sum(rows: "list[tuple[int, ...]]") -> tuple[int, ...]:
    return tuple(sum(column) for column in zip(*rows))


# What a server's upstream_errors are while none was counted (the kinds, each with 0).
NO_UPSTREAM_ERRORS = tuple((kind, 0) for kind in UPSTREAM_ERROR_KINDS)


def merge_servers(servers: "list[ServerSnapshot]") -> ServerSnapshot:
    """merge_servers: one server as seen by several workers.

    A status merges every server of every worker (a reload's answer, each scrape): one pass
    over the parts, and the error counts summed only where a part has any.
    """
    first = servers[0]
    if len(servers) == 1:
        return first
    healthy = True
    inflight = connections = requests = 0
    counted = []
    for s in servers:
        healthy = healthy and s.healthy
        inflight += s.inflight
        connections += s.connections
        requests += s.requests
        if s.upstream_errors != NO_UPSTREAM_ERRORS:
            counted.append(s.upstream_errors)
    if not counted:
        errors = first.upstream_errors
    elif len(counted) == 1:
        errors = counted[0]
    else:
        errors = tuple((kind, sum(part[i][1] for part in counted)) for i, (kind, _) in enumerate(counted[0]))
    return ServerSnapshot(first.address, healthy, inflight, connections, first.weight, requests, errors)


def _merge_by_address(lists: "list[tuple[ServerSnapshot, ...]]") -> tuple[ServerSnapshot, ...]:
    """_merge_by_address: each address once, merged over the workers that list it, in first-seen order.

    Workers apply a new server list one after another: until each has, their lists differ.
    Mostly they list the same servers in the same order: then the lists are merged side by side.
    """
    first = lists[0]
    if all(len(servers) == len(first) for servers in lists) and all(
            a.address == b.address for servers in lists[1:] for a, b in zip(first, servers)):
        return tuple(merge_servers(list(parts)) for parts in zip(*lists))
    seen: dict[str, list[ServerSnapshot]] = {}
    for servers in lists:
        for server in servers:
            seen.setdefault(server.address, []).append(server)
    return tuple(merge_servers(parts) for parts in seen.values())


def merge_environments(envs: "list[EnvironmentSnapshot]") -> EnvironmentSnapshot:
    """merge_environments: one environment as seen by several workers, server by server (by address)."""
    servers = _merge_by_address([env.servers for env in envs])
    current = {s.address for s in servers}
    retired = tuple(s for s in _merge_by_address([env.retired for env in envs]) if s.address not in current)
    # healthy: a server every worker finds healthy, or (while removed servers still serve, see
    # EnvironmentSnapshot.retired) every worker finds the environment able to serve
    return EnvironmentSnapshot(name=envs[0].name, healthy=any(s.healthy for s in servers) or all(e.healthy for e in envs),
                               inflight=sum(e.inflight for e in envs), connections=sum(e.connections for e in envs),
                               servers=servers, responses=_sum([e.responses for e in envs]),
                               latency_counts=_sum([e.latency_counts for e in envs]),
                               latency_sum=sum(e.latency_sum for e in envs),
                               bytes_in=sum(e.bytes_in for e in envs), bytes_out=sum(e.bytes_out for e in envs),
                               retired=retired)


def merge_drains(drains: "list[DrainSnapshot]") -> DrainSnapshot:
    """merge_drains: the drains of one environment and generation in several workers, summed.

    The merged drain has ended when every part has (its duration is the longest part's).
    """
    first = drains[0]
    durations = [d.duration for d in drains]
    return DrainSnapshot(
        environment=first.environment, generation=first.generation,
        inflight_at_start=sum(d.inflight_at_start for d in drains), drained=sum(d.drained for d in drains),
        forced_closed=sum(d.forced_closed for d in drains), dropped=sum(d.dropped for d in drains),
        client_gone=sum(d.client_gone for d in drains), remaining=sum(d.remaining for d in drains),
        interrupted=any(d.interrupted for d in drains),
        duration=None if None in durations else max(d for d in durations if d is not None),
        idle_connections_closed=sum(d.idle_connections_closed for d in drains),
        servers=first.servers, tag=first.tag)


def merge(snapshots: "list[Snapshot]", route: Route) -> Snapshot:
    """merge: the snapshots of a router's workers as one, serving ``route`` (the supervisor's).

    Every snapshot is of the same environments and servers, in the same order.
    """
    routers = [s.router for s in snapshots]
    first = routers[0]
    drains: dict[tuple[str, int], list[DrainSnapshot]] = {}
    for r in routers:
        for d in r.drains:
            drains.setdefault((d.environment, d.generation), []).append(d)
    router = RouterSnapshot(
        route=route, held=any(r.held for r in routers), held_requests=sum(r.held_requests for r in routers),
        hold_until=next((r.hold_until for r in routers if r.held), None),
        environments=tuple(merge_environments([r.environments[i] for r in routers])
                           for i in range(len(first.environments))),
        drains=tuple(merge_drains(parts) for parts in drains.values()),
        fenced_requests=sum(r.fenced_requests for r in routers))
    return Snapshot(router=router, listen=snapshots[0].listen, preview_listen=snapshots[0].preview_listen,
                    client_connections=sum(s.client_connections for s in snapshots),
                    unrouted=_sum([s.unrouted for s in snapshots]),
                    client_body_timeouts=sum(s.client_body_timeouts for s in snapshots),
                    preview_token_set=snapshots[0].preview_token_set,
                    access_log_dropped=sum(s.access_log_dropped for s in snapshots),
                    tls_handshake_failures=sum(s.tls_handshake_failures for s in snapshots),
                    tls_over_limit=sum(s.tls_over_limit for s in snapshots),
                    tls=snapshots[0].tls)
