"""The idle upstream pool (proxy/pool.py) without sockets: what is kept, what is reused first,
what is closed, and the flow-control limits it and the protocols share (proxy/flow.py)."""

from __future__ import annotations

import asyncio
import tomllib

from proxy import flow, pool
from proxy.downstream import ClientConnection
from proxy.server import Proxy
from proxy.upstream import UpstreamConnection
from tests.support.fakes import FakeTransport, unstarted_proxy
from tests.support.paths import ROOT


def make_proxy() -> Proxy:
    return unstarted_proxy(environments={"blue": {"servers": ["127.0.0.1:1", "127.0.0.1:3"]},
                                         "green": {"servers": ["127.0.0.1:2"]}})   # never started: no socket


def opened(proxy: Proxy, server) -> UpstreamConnection:
    conn = UpstreamConnection(proxy, server)
    conn.connection_made(FakeTransport())
    return conn


def test_the_most_recently_released_connection_is_taken_first():
    proxy = make_proxy()
    server = proxy.router.environments["blue"].servers[0]
    old, new = opened(proxy, server), opened(proxy, server)
    assert pool.put(old, 1.0) and pool.put(new, 2.0)
    assert (old.active_at, new.active_at) == (1.0, 2.0)
    assert pool.take(server) is new and pool.take(server) is old and pool.take(server) is None


def test_a_server_that_is_down_or_has_max_idle_keeps_no_more():
    proxy = make_proxy()
    server = proxy.router.environments["blue"].servers[0]
    for i in range(flow.MAX_IDLE_PER_SERVER):
        assert pool.put(opened(proxy, server), float(i))
    assert not pool.put(opened(proxy, server), 0.0) and len(server.idle) == flow.MAX_IDLE_PER_SERVER
    other = proxy.router.environments["blue"].servers[1]
    other.set_healthy(False)
    assert not pool.put(opened(proxy, other), 0.0) and other.idle == []


def test_a_server_going_down_closes_its_idle_connections():
    proxy = make_proxy()
    server = proxy.router.environments["blue"].servers[0]
    conns = [opened(proxy, server) for _ in range(3)]
    for conn in conns:
        pool.put(conn, 0.0)
    server.set_healthy(False)
    assert server.idle == [] and all(conn.transport.closed for conn in conns)


def test_expire_closes_only_connections_idle_since_before_the_limit_oldest_first():
    proxy = make_proxy()
    server = proxy.router.environments["blue"].servers[0]
    conns = [opened(proxy, server) for _ in range(4)]
    for at, conn in zip((1.0, 2.0, 3.0, 4.0), conns):
        pool.put(conn, at)
    assert pool.expire(server, 2.5) == 2
    assert server.idle == conns[2:] and [c.transport.closed for c in conns] == [True, True, False, False]
    assert pool.expire(server, 0.0) == 0


def test_close_idle_and_discard_take_connections_out_of_the_pool():
    proxy = make_proxy()
    env = proxy.router.environments["blue"]
    a, b = env.servers
    for server in (a, a, b):
        pool.put(opened(proxy, server), 0.0)
    gone = a.idle[0]
    gone.close()                       # closing one takes it out at once
    assert len(a.idle) == 1 and gone not in a.idle
    gone_by_server = a.idle[0]
    gone_by_server.connection_lost(None)   # the server closed an idle one
    assert a.idle == []
    pool.discard(gone)                 # not there any more: nothing happens
    assert pool.close_environment(env) == 1 and b.idle == []


async def test_a_released_connection_goes_back_to_the_pool_unless_the_proxy_is_closing():
    proxy = make_proxy()
    proxy.clock = 5.0
    server = proxy.router.environments["blue"].servers[0]
    conn = opened(proxy, server)
    conn.release()
    assert server.idle == [conn] and conn.active_at == 5.0
    assert pool.take(server) is conn
    proxy.closing = True
    conn.release()
    assert server.idle == [] and conn.transport.closed


async def test_reading_pauses_past_the_pipeline_depth_and_resumes_below_it():
    proxy = make_proxy()
    proxy._loop = asyncio.get_running_loop()
    proxy.router.environments["blue"].servers[1].set_healthy(False)   # one server, so the pooled one is used
    server = proxy.router.environments["blue"].servers[0]
    up = opened(proxy, server)
    server.idle.append(up)
    client = ClientConnection(proxy)
    transport = FakeTransport()
    client.connection_made(transport)
    client.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * flow.PIPELINE_DEPTH)
    assert transport.reading and len(client.queue) == flow.PIPELINE_DEPTH
    client.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not transport.reading and client.paused == flow.PAUSE_PIPELINE
    proxy.flush_due()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert transport.reading and client.paused == 0 and len(client.queue) == flow.PIPELINE_DEPTH


def test_flow_and_pool_are_compiled_with_the_other_hot_modules():
    with open(ROOT / "pyproject.toml", "rb") as f:
        files = tomllib.load(f)["tool"]["mypy"]["files"]
    assert "proxy/flow.py" in files and "proxy/pool.py" in files
