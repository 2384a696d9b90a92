"""End-to-end tests that a pooled upstream connection never hands one exchange's bytes to the next.

A backend that sends a body after a HEAD answer or a 204/304 (which carry none, RFC 9110
§9.3.2, §15.3.5, §15.4.5), or bytes after a complete response, would have them read as the
answer to the next request sent on that connection, from any client. The backends below send
such bytes at the worst moment: as the next request arrives on the same connection, or in the
same write as the end of the response. The next request must get its own answer; nor may
response trailers, or a second, unsolicited response, reach the next request.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.rawhttp import RawBackend, connect, read_response, send_collect, status_of
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually

# What a confused backend sends after a bodiless answer: bytes that look like a whole response.
STRAY = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstray!"
REAL = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nreal\n"


def bodiless_then_late_body(first: bytes):
    """bodiless_then_late_body: a handler answering GET /first with ``first`` (a head that
    declares STRAY's length as its body), sending STRAY only when the next request arrives on
    that connection, then REAL to every later request."""

    async def handler(backend: RawBackend, reader, writer) -> None:
        owed = False
        while (request := await backend.next_request(reader, writer)) is not None:
            if b" /first " in request[0]:
                writer.write(first)
                owed = True
            else:
                writer.write((STRAY if owed else b"") + REAL)
                owed = False
            await writer.drain()

    return handler


async def first_then_second(proxy, method: bytes) -> tuple[int, bytes]:
    """first_then_second: ``method`` /first on one client connection, then GET /second on
    another; returns the second's (status, body)."""
    reader, writer = await connect(proxy.port)
    try:
        writer.write(method + b" /first HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await read_response(reader, method=method)).status < 400
    finally:
        writer.close()
    data, _ = await send_collect(proxy.port, b"GET /second HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    return status_of(head), body


@pytest.mark.parametrize(("method", "first"), [
    pytest.param(b"HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(STRAY), id="head"),
    pytest.param(b"GET", b"HTTP/1.1 204 No Content\r\ncontent-length: %d\r\n\r\n" % len(STRAY), id="204"),
    pytest.param(b"GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: %d\r\n\r\n" % len(STRAY), id="304"),
    pytest.param(b"HEAD", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", id="head-chunked"),
])
async def test_a_late_body_after_a_bodiless_answer_never_reaches_the_next_request(raw_backend, method, first):
    proxy, upstream = await raw_backend(bodiless_then_late_body(first))
    status, body = await first_then_second(proxy, method)
    assert (status, body) == (200, b"real\n")
    assert len(upstream.heads) == 2


async def test_a_head_answer_without_a_body_keeps_its_connection_pooled(raw_backend):
    proxy, upstream = await raw_backend(bodiless_then_late_body(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"HEAD /first HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            await read_response(reader, method=b"HEAD")
    finally:
        writer.close()
    server = proxy.router.environments["blue"].servers[0]
    assert len(server.idle) == 1   # nothing was declared that could still arrive


async def test_bytes_after_a_complete_response_in_the_same_read_close_the_connection(raw_backend):
    # The response and the start of another one leave in one write, so they arrive in one read.
    async def overlong(backend: RawBackend, reader, writer) -> None:
        while (request := await backend.next_request(reader, writer)) is not None:
            if b" /first " in request[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + b"HTTP/1.1 200 OK\r\nx-stray: 1\r\n")
            else:
                writer.write(REAL)
            await writer.drain()

    proxy, upstream = await raw_backend(overlong)
    status, body = await first_then_second(proxy, b"GET")
    assert (status, body) == (200, b"real\n")
    server = proxy.router.environments["blue"].servers[0]
    assert server.strays == 1


async def test_bytes_after_a_head_answer_in_the_same_read_close_the_connection(raw_backend):
    # The stray body starts in the write of the head and goes on when the next request arrives.
    async def overlong(backend: RawBackend, reader, writer) -> None:
        owed = b""
        while (request := await backend.next_request(reader, writer)) is not None:
            if b" /first " in request[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" + STRAY[:20])
                owed = STRAY[20:]
            else:
                writer.write(owed + REAL)
                owed = b""
            await writer.drain()

    proxy, upstream = await raw_backend(overlong)
    status, body = await first_then_second(proxy, b"HEAD")
    assert (status, body) == (200, b"real\n")
    assert proxy.router.environments["blue"].servers[0].strays == 1


async def test_bytes_on_an_idle_pooled_connection_close_it(raw_backend):
    stray_sent = asyncio.Event()

    async def chatty(backend: RawBackend, reader, writer) -> None:
        while (request := await backend.next_request(reader, writer)) is not None:
            writer.write(REAL)
            await writer.drain()
            if b" /first " in request[0]:
                await backend.event.wait()     # the test saw the connection go idle
                writer.write(STRAY)
                await writer.drain()
                stray_sent.set()

    proxy, upstream = await raw_backend(chatty)
    server = proxy.router.environments["blue"].servers[0]
    data, _ = await send_collect(proxy.port, b"GET /first HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200
    await eventually(lambda: server.idle, timeout=3)
    upstream.event.set()
    await asyncio.wait_for(stray_sent.wait(), 3)
    await eventually(lambda: not server.idle, timeout=3)
    assert server.strays == 1
    data, _ = await send_collect(proxy.port, b"GET /second HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200 and data.endswith(b"\r\n\r\nreal\n")


# ------------------------------------------- what one response leaves on the connection


async def chunked_with_trailers_then_plain(backend: RawBackend, reader, writer) -> None:
    """chunked_with_trailers_then_plain: first answer chunked with trailers, every later one plain."""
    request = await backend.next_request(reader, writer)
    if request is None:
        return
    backend.connections += 1
    while request is not None:
        if len(backend.heads) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n0\r\nset-cookie: session=attacker\r\nx-trailer: t\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nworld")
        await writer.drain()
        request = await backend.next_request(reader, writer)


async def test_response_trailers_never_reach_the_next_response_on_a_pooled_connection(raw_backend):
    proxy, upstream = await raw_backend(chunked_with_trailers_then_plain, health_check=QUIET_HEALTH)
    responses = []
    for path in (b"/a", b"/b"):   # two clients, one after the other
        reader, writer = await connect(proxy.port)
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % path)
            async with asyncio.timeout(2):
                responses.append(await read_response(reader))
        finally:
            writer.close()
    first, second = responses
    assert (first.status, first.body) == (200, b"hello")
    assert upstream.connections == 1, "the second request did not reuse the pooled connection"
    assert (second.status, second.body) == (200, b"world")
    assert second.get(b"set-cookie") is None, second.headers
    assert second.get(b"x-trailer") is None, second.headers


async def extra_response_after_the_first(backend: RawBackend, reader, writer) -> None:
    """extra_response_after_the_first: answers /1 with a second, unsolicited response glued on."""
    while (request := await backend.next_request(reader, writer)) is not None:
        if request[0].startswith(b"GET /1 "):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
                         b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL")
        else:
            await asyncio.sleep(0.1)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nGOOD")
        await writer.drain()


async def test_unsolicited_extra_upstream_response_never_answers_a_pipelined_request(raw_backend):
    proxy, upstream = await raw_backend(extra_response_after_the_first, health_check=QUIET_HEALTH)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /1 HTTP/1.1\r\nHost: app\r\n\r\n"
                     b"GET /2 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(2):
            first = await read_response(reader)
            second = await read_response(reader)
            rest = await reader.read()
    finally:
        writer.close()
    assert (first.status, first.body) == (200, b"hi")
    assert (second.status, second.body) == (200, b"GOOD")
    assert b"EVIL" not in rest
    assert [h.split(b" ")[1] for h in upstream.heads] == [b"/1", b"/2"]   # /2 really went upstream
