"""End-to-end tests of timeouts.client_body: a client that stops sending its request body.

While a request body is incomplete and the proxy is reading it, the wait is the client's: it
is cut with 408 once no body byte came for client_body (nginx's client_body_timeout), and it
counts as the client's (4xx, and client_gone in a drain), never as the environment's 5xx
that the post-flip analysis watches. The upstream_response timer does not run meanwhile:
an upstream cannot be expected to answer a request it has not been sent yet.
"""

from __future__ import annotations

import asyncio

from tests.support.rawhttp import connect, read_response
from tests.support.wait import eventually

BODY = b"0123456789" * 10


def blue(proxy):
    return proxy.router.environments["blue"]


async def test_a_client_that_stops_sending_its_body_gets_408(make_proxy):
    proxy = await make_proxy(timeouts={"client_body": "300ms", "upstream_response": "1s"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n" + BODY[:10])
        async with asyncio.timeout(5):
            resp = await read_response(reader)
            assert await reader.read() == b""          # and the connection is closed
        assert resp.status == 408
        assert resp.body == b"request body not received within timeouts.client_body\n"
        assert resp.get(b"connection") == b"close"
    finally:
        writer.close()
    env = blue(proxy)
    assert (env.responses[4], env.responses[5]) == (1, 0)   # the client's, not the environment's
    assert proxy.client_body_timeouts == 1
    # the half-sent upstream request is closed, not pooled
    await eventually(lambda: not (env.connections or env.inflight), timeout=3)


async def test_a_stalled_chunked_body_gets_408(make_proxy):
    proxy = await make_proxy(timeouts={"client_body": "300ms", "upstream_response": "1s"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        async with asyncio.timeout(5):
            resp = await read_response(reader)
        assert resp.status == 408
    finally:
        writer.close()
    assert blue(proxy).responses[5] == 0


async def test_a_slow_upload_is_not_cut_by_upstream_response_while_it_comes(make_proxy):
    # Gaps longer than upstream_response, shorter than client_body.
    proxy = await make_proxy(timeouts={"client_body": "3s", "upstream_response": "200ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 30\r\n\r\n")
        for i in range(3):
            await asyncio.sleep(0.4)
            writer.write(BODY[i * 10:(i + 1) * 10])
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, BODY[:30])
    finally:
        writer.close()
    assert blue(proxy).responses[5] == 0


async def test_a_client_stalled_in_a_drained_environment_counts_as_client_gone(make_stack):
    running = await make_stack(timeouts={"client_body": "300ms"}, drain_timeout="5s")
    proxy = running.proxy
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n" + BODY[:10])
        await eventually(lambda: blue(proxy).inflight, timeout=3)
        await running.controller.flip("green", reason="test")
        async with asyncio.timeout(5):
            resp = await read_response(reader)
        assert resp.status == 408
        counts = running.controller.drain_counts
        await eventually(lambda: any(counts.values()), timeout=5)   # the drain of blue ended
        assert counts == {"drained": 0, "forced_closed": 0, "dropped": 0, "client_gone": 1}
    finally:
        writer.close()
