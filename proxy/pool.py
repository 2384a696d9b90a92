"""The idle upstream pool: keep-alive connections to a server that no exchange is using.

Each Server keeps its idle connections in ``Server.idle``, a stack: the most recently
used is reused first (``take``), so surplus connections age out at the bottom, where
the proxy's ticker closes those idle longer than timeouts.keepalive_idle (``expire``).
Only these functions change that list:

- ``take``      Exchange.send_to_server, for a request that picked the server
- ``put``       UpstreamConnection.release, when its exchange is done with it
- ``discard``   UpstreamConnection.close and connection_lost (a pooled one the server closed)
- ``close_idle``  a server going down, a drain, a stale pooled connection, shutdown
- ``expire``    Proxy's ticker

A connection in the pool has nothing left to send and was never left carrying bytes of
a finished exchange (UpstreamConnection decides that before ``put``); any byte or EOF
the server sends while it sits here closes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flow import MAX_IDLE_PER_SERVER

if TYPE_CHECKING:
    from .backends import Environment, Server
    from .upstream import UpstreamConnection


def take(server: "Server") -> "UpstreamConnection | None":
    """take: the most recently used idle connection of ``server``, or None (then a new one is opened).

    A server seen sending bytes nobody asked for (Server.strays) has its idle
    connections checked before reuse, as such bytes would become this request's answer.
    """
    idle = server.idle
    while idle:
        conn = idle.pop()
        if server.strays and conn.has_unread():
            server.strays += 1
            conn.close()
            continue
        return conn
    return None


def put(conn: "UpstreamConnection", now: float) -> bool:
    """put: keep ``conn`` idle from ``now`` (the proxy clock); False when the pool will not.

    A server that is down keeps no idle connections, and none keeps more than
    MAX_IDLE_PER_SERVER; the caller closes a connection the pool refused.
    """
    server = conn.server
    idle = server.idle
    if not server.healthy or len(idle) >= MAX_IDLE_PER_SERVER:
        return False
    conn.active_at = now
    idle.append(conn)
    return True


def discard(conn: "UpstreamConnection") -> None:
    """discard: take ``conn`` out of its server's pool if it is there (it closed or is closing)."""
    try:
        conn.server.idle.remove(conn)
    except ValueError:
        pass


def close_idle(server: "Server") -> int:
    """close_idle: close every idle connection of ``server``; returns how many."""
    idle, server.idle = server.idle, []
    for conn in idle:
        conn.close()
    return len(idle)


def close_environment(env: "Environment") -> int:
    """close_environment: close the idle connections of every server of ``env``; returns how many."""
    closed = 0
    for server in env.servers:
        closed += close_idle(server)
    return closed


def expire(server: "Server", before: float) -> int:
    """expire: close the idle connections of ``server`` that went idle before ``before`` (the
    proxy clock less timeouts.keepalive_idle); returns how many. The oldest are at the bottom."""
    idle = server.idle
    expired = 0
    while idle and idle[0].active_at < before:
        idle.pop(0).close()
        expired += 1
    return expired
