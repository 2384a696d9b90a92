"""End-to-end tests of the data plane's HTTP/1.1 handling (SPEC §4), on loopback.

Framing, methods, keep-alive, pipelining, Expect and Upgrade; the header rules
(hop-by-hop, Host, X-Forwarded-*, byte-exact paths); strict parsing against
request smuggling; and the size and connection limits. Clients speak raw bytes
so every assertion is on what went over the wire; misbehaving or recording
upstreams are small asyncio servers (RawBackend) passed through ``backend_map``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os

import aiohttp
import pytest

from tests.support.rawhttp import RawBackend, connect, read_response, send_collect, status_of
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually

# ---------------------------------------------------------------- helpers


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """closed_by_peer: True when the peer closes (EOF or reset) within ``timeout``; extra bytes fail."""
    try:
        async with asyncio.timeout(timeout):
            rest = await reader.read()
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert rest == b"", f"unexpected bytes after the response: {rest[:200]!r}"
    return True


def count_responses(data: bytes) -> int:
    return data.count(b"HTTP/1.1 ")


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """header_lines: (lowercase name, value) pairs of a raw request or response head."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip()))
    return out


@pytest.fixture
async def recorder(raw_backend):
    """recorder: (proxy, RawBackend) — a proxy whose live env is a recording upstream."""
    return await raw_backend()


# ------------------------------------------------------------- keep-alive


async def test_keepalive_serves_several_requests_over_one_upstream_connection(make_proxy, backends):
    proxy = await make_proxy()
    server = proxy.router.environments["blue"].servers[0]
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for _ in range(4):
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                resp = await read_response(reader)
                assert resp.status == 200 and resp.body == b"blue\n"
                assert resp.get(b"connection") is None
        assert server.connections == 1
        assert len(server.idle) == 1
        assert backends["blue"].requests == 4
    finally:
        writer.close()


async def test_http10_client_without_keepalive_gets_connection_closed(make_proxy):
    proxy = await make_proxy()
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
    assert closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200 and body == b"blue\n"
    assert b"\r\nconnection: close" in head.lower()


async def test_http10_client_asking_keepalive_keeps_the_connection(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for _ in range(2):
                writer.write(b"GET / HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n")
                resp = await read_response(reader)
                assert resp.status == 200 and resp.body == b"blue\n"
                assert resp.get(b"connection").lower() == b"keep-alive"
                assert resp.get(b"content-length") == b"5"
    finally:
        writer.close()


async def test_http10_request_without_host_is_forwarded_with_a_host(make_proxy):
    proxy = await make_proxy()
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
    assert closed
    assert status_of(data) == 200
    assert data.endswith(b"\r\n\r\nblue\n")


async def close_delimited(backend: RawBackend, reader, writer) -> None:
    """close_delimited: an HTTP/1.1 upstream whose response body ends when it closes."""
    if await backend.next_request(reader, writer) is None:
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
    for i in range(3):
        writer.write(b"piece %d\n" % i)
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.close()


async def test_close_delimited_upstream_body_reaches_http10_client_until_close(raw_backend):
    proxy, upstream = await raw_backend(close_delimited)
    data, closed = await send_collect(proxy.port, b"GET /stream HTTP/1.0\r\nHost: app\r\n\r\n")
    assert closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body == b"piece 0\npiece 1\npiece 2\n"


async def test_close_delimited_upstream_body_is_chunked_and_complete_for_http11_client(raw_backend):
    proxy, upstream = await raw_backend(close_delimited)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            writer.write(b"GET /stream HTTP/1.1\r\nHost: app\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.get(b"transfer-encoding") == b"chunked"
        assert resp.get(b"content-length") is None
        assert resp.body == b"piece 0\npiece 1\npiece 2\n"
        assert resp.raw_body.endswith(b"0\r\n\r\n")
    finally:
        writer.close()


# ------------------------------------------------------------- pipelining


async def test_pipelined_requests_are_answered_in_order(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: app\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\n\r\nsecond"
                     b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            first = await read_response(reader)
            second = await read_response(reader)
            third = await read_response(reader)
        assert (first.status, first.body) == (200, b"blue slow\n")
        assert (second.status, second.body) == (200, b"second")
        assert (third.status, third.body) == (200, b"blue\n")
    finally:
        writer.close()


async def answer_target(backend: RawBackend, reader, writer) -> None:
    """answer_target: a keep-alive upstream answering each request with its request target."""
    while (request := await backend.next_request(reader, writer)) is not None:
        target = request[0].split(b" ")[1]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target))
        await writer.drain()


async def test_many_pipelined_requests_beyond_the_queue_depth_are_answered_in_order(raw_backend):
    proxy, _ = await raw_backend(answer_target)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"".join(b"GET /n/%d HTTP/1.1\r\nHost: app\r\n\r\n" % i for i in range(50)))
        async with asyncio.timeout(5):
            bodies = [(await read_response(reader)).body for _ in range(50)]
        assert bodies == [b"/n/%d" % i for i in range(50)]
    finally:
        writer.close()


async def test_connection_close_request_is_answered_then_closed(make_proxy):
    proxy = await make_proxy()
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
                                      b"GET /never HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    assert count_responses(data) == 1
    assert b"\r\nconnection: close\r\n" in data.lower()
    assert data.endswith(b"\r\n\r\nblue\n")


async def close_after_answer(backend: RawBackend, reader, writer) -> None:
    """close_after_answer: an upstream that answers with Connection: close and closes."""
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbye\n")
        await writer.drain()


async def test_upstream_connection_close_is_not_pooled_and_client_stays_open(raw_backend):
    proxy, upstream = await raw_backend(close_after_answer)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"bye\n")
                assert resp.get(b"connection") is None
        assert len(upstream.heads) == 3
    finally:
        writer.close()


async def http10_answer(backend: RawBackend, reader, writer) -> None:
    """http10_answer: an HTTP/1.0 upstream that answers one request per connection.

    It leaves the connection open afterwards without answering again, so a proxy
    that wrongly pooled it would hang on the next request.
    """
    if await backend.next_request(reader, writer) is not None:
        backend.connections += 1
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold\n")
        await writer.drain()
        await asyncio.sleep(3)


async def test_http10_upstream_connection_is_not_reused(raw_backend):
    proxy, upstream = await raw_backend(http10_answer)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(2):
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"old\n")
        assert len(upstream.heads) == upstream.connections == 3
    finally:
        writer.close()


def response_splitter(delay: float):
    async def handler(backend: RawBackend, reader, writer) -> None:
        """An upstream that follows its first answer with a forged second response."""
        while await backend.next_request(reader, writer) is not None:
            if len(backend.heads) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                if delay:
                    await writer.drain()
                    await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforgd")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal")
            await writer.drain()
    return handler


@pytest.mark.parametrize("delay", [0, 0.05], ids=["same_packet", "while_idle"])
async def test_stray_upstream_bytes_after_a_response_never_answer_the_next_request(raw_backend, delay):
    proxy, _ = await raw_backend(response_splitter(delay))
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            writer.write(b"GET /1 HTTP/1.1\r\nHost: app\r\n\r\n")
            assert (await read_response(reader)).body == b"ok"
            await asyncio.sleep(0.1)
            writer.write(b"GET /2 HTTP/1.1\r\nHost: app\r\n\r\n")
            assert (await read_response(reader)).body == b"real"
    finally:
        writer.close()


async def unsolicited_101(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)


async def test_unsolicited_101_from_upstream_is_502(raw_backend):
    # RFC 9110 §15.2.2: a server must not switch to a protocol the client did not ask for.
    proxy, upstream = await raw_backend(unsolicited_101)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    assert status_of(data) == 502, data


async def test_pipelined_upload_behind_a_slow_request_is_delivered(make_proxy):
    proxy = await make_proxy()
    body = os.urandom(900_000)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: app\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        async with asyncio.timeout(3):
            await writer.drain()
            first = await read_response(reader)
            second = await read_response(reader)
        assert first.body == b"blue slow\n"
        assert second.status == 200 and second.body == body
    finally:
        writer.close()


async def test_concurrent_clients_each_get_their_own_response(make_proxy):
    proxy = await make_proxy()

    async def client(n: int) -> None:
        reader, writer = await connect(proxy.port)
        try:
            for i in range(10):
                body = b"client %d request %d " % (n, i) * (i + 1)
                writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, body)
        finally:
            writer.close()

    async with asyncio.timeout(5):
        await asyncio.gather(*(client(n) for n in range(10)))
    server = proxy.router.environments["blue"].servers[0]
    assert server.connections <= 10
    assert server.inflight == 0


# ------------------------------------------------------------ request body


async def test_content_length_request_body_arrives_intact(make_proxy):
    proxy = await make_proxy()
    body = bytes(range(256)) * 40
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body[:1000])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[1000:])
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.body == body
        assert resp.get(b"x-length") == str(len(body)).encode()
    finally:
        writer.close()


async def test_chunked_request_body_with_extensions_and_trailer_arrives_intact(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;name=value\r\nhello\r\n"
                     b"1;a=1;b=\"x y\"\r\n \r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"5\r\nworld\r\n0\r\nX-Checksum: abc\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.body == b"hello world"
        assert resp.get(b"x-length") == b"11"
        # The connection stays usable: the trailer was consumed, not left as a next request.
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await read_response(reader)).body == b"blue\n"
    finally:
        writer.close()


async def test_chunked_request_trailer_is_forwarded_upstream(recorder):
    proxy, upstream = recorder
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /t HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
                     b"3;ext\r\nabc\r\n0\r\nX-Checksum: abc\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert upstream.bodies == [b"abc"]
        assert (b"transfer-encoding", b"chunked") in header_lines(upstream.heads[0])
    finally:
        writer.close()


async def echo_back(backend: RawBackend, reader, writer) -> None:
    """echo_back: answers each request with its (de-chunked) body, Content-Length framed.

    The aiohttp test backend's /echo refuses bodies over 1 MiB (client_max_size),
    so multi-megabyte uploads are echoed by this one.
    """
    while (request := await backend.next_request(reader, writer)) is not None:
        body = request[1]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()


async def test_large_bodies_pass_intact_both_ways(raw_backend, make_proxy):
    proxy, _ = await raw_backend(echo_back)
    upload = os.urandom(6 * 1024 * 1024)
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.post(f"http://127.0.0.1:{proxy.port}/echo", data=upload) as resp:
            assert resp.status == 200
            echoed = await resp.read()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(upload).digest()
    # And from the aiohttp backend, a multi-megabyte download.
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.get(f"http://127.0.0.1:{proxy.port}/big?size={8 << 20}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(8 << 20)
            body = await resp.read()
        assert body == b"x" * (8 << 20)


async def test_large_chunked_upload_arrives_intact(raw_backend):
    proxy, upstream = await raw_backend(echo_back)
    upload = os.urandom(5 * 1024 * 1024)

    async def pieces():
        for i in range(0, len(upload), 100_000):
            yield upload[i:i + 100_000]

    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.post(f"http://127.0.0.1:{proxy.port}/echo", data=pieces()) as resp:
            assert resp.status == 200
            assert await resp.read() == upload
    assert b"transfer-encoding: chunked" in upstream.heads[0].lower()


# --------------------------------------------------------- bodiless answers


async def test_head_has_no_body_but_keeps_content_length(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"HEAD /big?size=1000 HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            head = await read_response(reader, method=b"HEAD")
            after = await read_response(reader)
        assert head.status == 200
        assert head.get(b"content-length") == b"1000"
        assert head.get(b"transfer-encoding") is None
        assert (after.status, after.body) == (200, b"blue\n")
    finally:
        writer.close()


@pytest.mark.parametrize("code", [204, 304])
async def test_204_and_304_carry_no_body(make_proxy, code):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /status/%d HTTP/1.1\r\nHost: app\r\n\r\n" % code
                     + b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            first = await read_response(reader)
            after = await read_response(reader)
        assert first.status == code
        assert first.get(b"transfer-encoding") is None
        if code == 204:
            assert first.get(b"content-length") is None
        assert (after.status, after.body) == (200, b"blue\n")
    finally:
        writer.close()


async def test_expect_100_continue_gets_interim_response_before_the_final_one(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n")
        async with asyncio.timeout(2):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        writer.write(b"payload")
        async with asyncio.timeout(2):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"payload")
    finally:
        writer.close()


async def early_hints(backend: RawBackend, reader, writer) -> None:
    """early_hints: an upstream that sends 103 Early Hints before its final answer."""
    while await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal")
        await writer.drain()


async def test_interim_103_reaches_http11_client_before_the_final_response(raw_backend):
    proxy, _ = await raw_backend(early_hints)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            interim = await read_response(reader)
            final = await read_response(reader)
        assert interim.status == 103
        assert interim.get(b"link") == b"</style.css>; rel=preload"
        assert (final.status, final.body) == (200, b"final")
    finally:
        writer.close()


async def test_interim_103_is_not_sent_to_http10_client(raw_backend):
    proxy, _ = await raw_backend(early_hints)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
    assert closed
    assert count_responses(data) == 1
    assert status_of(data) == 200 and data.endswith(b"\r\n\r\nfinal")


async def chunked_head(backend: RawBackend, reader, writer) -> None:
    """chunked_head: answers HEAD like a GET of a chunked resource would be, without a body."""
    while await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()


async def test_head_of_a_chunked_resource_does_not_wait_for_a_body(raw_backend):
    proxy, upstream = await raw_backend(chunked_head)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\nHEAD / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(2):
            first = await read_response(reader, method=b"HEAD")
            second = await read_response(reader, method=b"HEAD")
        assert first.status == second.status == 200
        assert [h.split(b" ")[0] for h in upstream.heads] == [b"HEAD", b"HEAD"]
    finally:
        writer.close()


async def test_upgrade_declined_by_upstream_gets_the_plain_response(make_proxy):
    proxy = await make_proxy()
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\n"
                                      b"Upgrade: websocket\r\n\r\n")
    assert status_of(data) == 200
    assert data.endswith(b"\r\n\r\nblue\n")
    assert closed


async def test_websocket_upgrade_is_tunnelled(make_proxy, backends):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, asyncio.timeout(3):
        async with session.ws_connect(f"http://127.0.0.1:{proxy.port}/ws") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "blue: hi"
            await ws.send_str("again")
            assert await ws.receive_str() == "blue: again"
        server = proxy.router.environments["blue"].servers[0]
        await eventually(lambda: not (server.connections or proxy.connections))   # both halves of the tunnel closed


async def test_chunked_response_is_reframed_for_http11_client(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /chunked?n=5&delay=0.01 HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.get(b"transfer-encoding") == b"chunked"
        assert resp.get(b"content-length") is None
        assert resp.body == b"".join(b"blue part %d\n" % i for i in range(5))
        assert resp.raw_body.endswith(b"\r\n0\r\n\r\n")
    finally:
        writer.close()


@pytest.mark.parametrize("keep_alive", [b"", b"Connection: keep-alive\r\n"], ids=["close", "keep_alive"])
async def test_chunked_response_reaches_http10_client_close_delimited(make_proxy, keep_alive):
    proxy = await make_proxy()
    request = b"GET /chunked?n=3 HTTP/1.0\r\nHost: app\r\n%s\r\n" % keep_alive
    data, closed = await send_collect(proxy.port, request)
    assert closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower()
    assert status_of(data) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body == b"blue part 0\nblue part 1\nblue part 2\n"


# ----------------------------------------------------------------- headers


async def test_hop_by_hop_request_headers_are_not_forwarded(recorder):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, (
        b"GET /h HTTP/1.1\r\nHost: app\r\n"
        b"Connection: close, X-Named-In-Connection\r\n"
        b"X-Named-In-Connection: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers, deflate\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"X-End-To-End: kept\r\n\r\n"))
    assert status_of(data) == 200
    sent = header_lines(upstream.heads[0])
    names = {n for n, _ in sent}
    for hop in (b"x-named-in-connection", b"keep-alive", b"proxy-connection", b"trailer",
                b"upgrade", b"proxy-authorization"):
        assert hop not in names, hop
    assert [v for n, v in sent if n == b"te"] == [b"trailers"]
    assert all(b"x-named" not in v.lower() for n, v in sent if n == b"connection")
    assert (b"x-end-to-end", b"kept") in sent


async def test_end_to_end_request_headers_pass_unchanged(recorder):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                                 b"X-MiXeD-Case: Value With  Spaces\r\n"
                                 b"X-Multi: one\r\nX-Multi: two\r\n"
                                 b"X-Empty:\r\n"
                                 b"X-Latin: caf\xe9\r\n"
                                 b"Cookie: a=1; b=2\r\n\r\n")
    assert status_of(data) == 200
    lines = upstream.heads[0].split(b"\r\n")
    assert b"X-MiXeD-Case: Value With  Spaces" in lines
    multi = [line for line in lines if line.lower().startswith(b"x-multi:")]
    assert multi == [b"X-Multi: one", b"X-Multi: two"]
    assert [v for n, v in header_lines(upstream.heads[0]) if n == b"x-empty"] == [b""]
    assert b"X-Latin: caf\xe9" in lines
    assert b"Cookie: a=1; b=2" in lines


async def hop_by_hop_response(backend: RawBackend, reader, writer) -> None:
    while await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\n"
                     b"Connection: X-Upstream-Secret\r\n"
                     b"X-Upstream-Secret: s3cret\r\n"
                     b"Keep-Alive: timeout=5, max=100\r\n"
                     b"Proxy-Authenticate: Basic realm=\"up\"\r\n"
                     b"Proxy-Connection: keep-alive\r\n"
                     b"X-End-To-End: kept\r\n"
                     b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                     b"Content-Length: 3\r\n\r\nok\n")
        await writer.drain()


async def test_hop_by_hop_response_headers_are_not_forwarded(raw_backend):
    proxy, upstream = await raw_backend(hop_by_hop_response)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"ok\n")
        names = {n for n, _ in resp.headers}
        for hop in (b"x-upstream-secret", b"keep-alive", b"proxy-authenticate", b"proxy-connection"):
            assert hop not in names, hop
        assert resp.get(b"connection") is None
        assert resp.get(b"x-end-to-end") == b"kept"
        assert resp.get_all(b"set-cookie") == [b"a=1", b"b=2"]
    finally:
        writer.close()


async def test_connection_naming_host_does_not_strip_host(recorder):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n"
                                 b"Connection: close, host\r\n\r\n")
    assert status_of(data) == 200
    assert [v for n, v in header_lines(upstream.heads[0]) if n == b"host"] == [b"app"]


def gzip_transfer_coded(close_delimited: bool):
    async def handler(backend: RawBackend, reader, writer) -> None:
        while await backend.next_request(reader, writer) is not None:
            data = gzip.compress(b"hello gzip\n")
            if close_delimited:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n" + data)
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
                         b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            await writer.drain()
    return handler


@pytest.mark.parametrize("close_delimited", [False, True], ids=["gzip_chunked", "gzip_only"])
async def test_response_transfer_coding_other_than_chunked_is_not_lost(raw_backend, close_delimited):
    # Stripping Transfer-Encoding while passing the gzip-coded bytes on would hand the
    # client a body it cannot decode; either keep the coding on the wire or refuse.
    proxy, _ = await raw_backend(gzip_transfer_coded(close_delimited))
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(2):
            head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 502 "):
            return
        assert head.startswith(b"HTTP/1.1 200 ")
        codings = [line.split(b":", 1)[1].strip().lower() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"transfer-encoding:")]
        assert codings and b"gzip" in codings[0], head
    finally:
        writer.close()


async def test_connection_naming_framing_headers_does_not_break_the_body(make_proxy):
    proxy = await make_proxy()
    data, _ = await send_collect(proxy.port, b"POST /echo HTTP/1.1\r\nHost: app\r\n"
                                 b"Connection: close, content-length, transfer-encoding\r\n"
                                 b"Content-Length: 4\r\n\r\nbody")
    assert status_of(data) == 200
    assert data.endswith(b"\r\n\r\nbody")


async def test_host_is_preserved_and_forwarded_headers_are_set(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /headers HTTP/1.1\r\nHost: shop.example:8443\r\n"
                     b"X-Forwarded-For: 203.0.113.7\r\n"
                     b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        got = json.loads(resp.body)
        headers = [(k.lower(), v) for k, v in got["headers"]]
        assert [v for k, v in headers if k == "host"] == ["shop.example:8443"]
        assert [v for k, v in headers if k == "x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
        assert [v for k, v in headers if k == "x-forwarded-proto"] == ["http"]
        assert [v for k, v in headers if k == "x-forwarded-host"] == ["shop.example:8443"]
    finally:
        writer.close()


async def test_forwarded_for_is_set_when_the_client_sent_none(recorder):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200
    assert [v for n, v in header_lines(upstream.heads[0]) if n == b"x-forwarded-for"] == [b"127.0.0.1"]


async def test_forwarded_replace_drops_the_clients_x_forwarded_for(raw_backend):
    proxy, upstream = await raw_backend(forwarded_headers="replace")
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                                 b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    assert status_of(data) == 200
    assert [v for n, v in header_lines(upstream.heads[0]) if n == b"x-forwarded-for"] == [b"127.0.0.1"]


async def test_several_client_x_forwarded_for_headers_are_appended_in_order(recorder):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                                 b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    assert status_of(data) == 200
    xff = [v for n, v in header_lines(upstream.heads[0]) if n == b"x-forwarded-for"]
    assert xff == [b"203.0.113.7, 10.0.0.1, 127.0.0.1"]


@pytest.mark.parametrize("target", [
    b"/a//b///c/",
    b"/%2e%2E/%2F/%252F/a%20b/%7E",
    b"/odd/~!$&'()*+,;=:@-._/",
    b"/q?b=2&a=1&a=1&empty=&=x&plus=a+b&pct=%20%2B%3D&q=/?:@!$'()*,;",
    b"/?",
    b"/p?x=%FF%00",
    b"/long?" + b"k=v&" * 2000,
], ids=["repeated_slashes", "escapes", "sub_delims", "odd_query", "empty_query", "escaped_bytes",
        "long_query"])
async def test_path_and_query_pass_byte_for_byte(recorder, target):
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port,
                                 b"GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % target)
    assert status_of(data) == 200
    assert upstream.heads[0].split(b"\r\n", 1)[0] == b"GET %s HTTP/1.1" % target


async def test_absolute_form_target_goes_upstream_in_origin_form_with_its_host(recorder):
    # RFC 9112 §3.2.2: the target's authority replaces the received Host.
    proxy, upstream = recorder
    data, _ = await send_collect(proxy.port, b"GET http://app/x?y=1 HTTP/1.1\r\nHost: other\r\n"
                                 b"Connection: close\r\n\r\n")
    assert status_of(data) == 200
    first, rest = upstream.heads[0].split(b"\r\n", 1)
    assert first == b"GET /x?y=1 HTTP/1.1"
    assert b"Host: app\r\n" in rest and b"other" not in rest


@pytest.mark.parametrize("method", [b"OPTIONS", b"DELETE", b"PATCH", b"PUT"])
async def test_other_methods_are_forwarded_with_their_name(make_proxy, method):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"%s /headers HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n" % method)
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert json.loads(resp.body)["method"] == method.decode()
    finally:
        writer.close()


# ------------------------------------------------------- strict parsing


SMUGGLING = {
    "cl_and_te_together": (400, b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "te_and_cl_together": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
                                b"Content-Length: 5\r\n\r\n0\r\n\r\n"),
    "two_differing_content_lengths": (400, b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
                                           b"Content-Length: 6\r\n\r\nhello!"),
    "content_length_list": (400, b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 6\r\n\r\nhello!"),
    "signed_content_length": (400, b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: +5\r\n\r\nhello"),
    "obs_fold": (400, b"GET / HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n  b\r\n\r\n"),
    "obs_fold_of_transfer_encoding": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding:\r\n"
                                           b" chunked\r\n"
                                           b"\r\n0\r\n\r\n"),
    "space_before_colon": (400, b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad : v\r\n\r\n"),
    "space_before_colon_in_te": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding : chunked\r\n"
                                      b"Content-Length: 3\r\n\r\nabc"),
    "non_token_char_in_name": (400, b"GET / HTTP/1.1\r\nHost: app\r\nX(Bad): v\r\n\r\n"),
    "empty_header_name": (400, b"GET / HTTP/1.1\r\nHost: app\r\n: v\r\n\r\n"),
    "bare_cr_in_value": (400, b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\rb\r\n\r\n"),
    "bare_cr_line_end": (400, b"GET / HTTP/1.1\r\nHost: app\rX-A: b\r\n\r\n"),
    "invalid_chunk_size": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_with_sign": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_overflow": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    "chunked_not_last_coding": (400, b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, gzip\r\n"
                                     b"\r\n0\r\n\r\n"),
    # RFC 9112 §6.3 asks 400 when chunked is not the final coding, §6.1 allows 501 for
    # an unknown coding; both refuse and close.
    "unknown_coding_only": ((400, 501), b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n"
                                        b"\r\nabc"),
    "unknown_coding_before_chunked": (501, b"POST / HTTP/1.1\r\nHost: app\r\n"
                                           b"Transfer-Encoding: gzip, chunked\r\n"
                                           b"\r\n0\r\n\r\n"),
    "te_in_http10": (400, b"POST / HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "missing_host_in_http11": (400, b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n"),
    "two_host_headers": (400, b"GET / HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n"),
    "bad_request_line": (400, b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n"),
    "bad_version": (400, b"GET / HTTP/1.7x\r\nHost: app\r\n\r\n"),
    "http09_request_line": (400, b"GET /\r\n\r\n"),
    "nul_in_header_value": (400, b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\x00b\r\n\r\n"),
    "lf_only_line_ends_with_te": (400, b"POST / HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n"
                                       b"Content-Length: 3\n\nabc"),
}


@pytest.mark.parametrize("case", list(SMUGGLING))
async def test_ambiguous_or_malformed_request_is_refused_and_closes(recorder, case):
    proxy, upstream = recorder
    status, request = SMUGGLING[case]
    # A request smuggled behind the malformed one must never be seen either.
    data, closed = await send_collect(proxy.port, request + b"GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) in (status if isinstance(status, tuple) else (status,)), data[:200]
    assert count_responses(data) == 1, data
    assert b"\r\nconnection: close\r\n" in data.lower()
    assert closed
    await asyncio.sleep(0.05)
    assert upstream.heads == []


async def test_malformed_request_after_a_good_one_is_answered_in_turn(recorder):
    proxy, upstream = recorder
    data, closed = await send_collect(proxy.port, b"GET /good HTTP/1.1\r\nHost: app\r\n\r\n"
                                      b"GET / HTTP/1.1\r\nHost: app\r\nX(Bad): v\r\n\r\n")
    assert closed
    assert data.startswith(b"HTTP/1.1 200 ")
    assert count_responses(data) == 2
    assert data.split(b"raw\n", 1)[1].startswith(b"HTTP/1.1 400 ")
    assert [h.split(b"\r\n", 1)[0] for h in upstream.heads] == [b"GET /good HTTP/1.1"]


async def test_connect_method_is_refused(recorder):
    proxy, upstream = recorder
    data, closed = await send_collect(proxy.port, b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n")
    assert status_of(data) in (400, 405, 501)
    assert closed
    assert upstream.heads == []


# ------------------------------------------------------------------ limits


async def test_header_block_over_max_header_bytes_is_431(raw_backend):
    proxy, upstream = await raw_backend(limits={"max_header_bytes": 1024})
    data, closed = await send_collect(proxy.port,
                                      b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: %s\r\n\r\n" % (b"a" * 2000))
    assert status_of(data) == 431
    assert closed
    assert upstream.heads == []


async def test_header_block_over_limit_sent_in_pieces_is_431(raw_backend):
    proxy, upstream = await raw_backend(limits={"max_header_bytes": 1024})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n")
        for i in range(40):
            writer.write(b"X-Many-%02d: %s\r\n" % (i, b"v" * 60))
            await writer.drain()
        async with asyncio.timeout(2):
            data = await reader.read(65536)
        assert status_of(data) == 431
        assert await closed_by_peer(reader)
        assert upstream.heads == []
    finally:
        writer.close()


async def test_header_block_under_the_limit_passes(raw_backend):
    proxy, _ = await raw_backend(limits={"max_header_bytes": 1024})
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                                 b"X-Big: %s\r\n\r\n" % (b"a" * 600))
    assert status_of(data) == 200


async def test_content_length_over_max_body_bytes_is_413(raw_backend):
    proxy, upstream = await raw_backend(limits={"max_body_bytes": 1000})
    data, closed = await send_collect(proxy.port,
                                      b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 1001\r\n\r\n")
    assert status_of(data) == 413
    assert closed
    assert upstream.heads == []


async def test_content_length_at_max_body_bytes_passes(make_proxy):
    proxy = await make_proxy(limits={"max_body_bytes": 1000})
    data, _ = await send_collect(proxy.port, b"POST /echo HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                                 b"Content-Length: 1000\r\n\r\n"
                                 + b"b" * 1000)
    assert status_of(data) == 200
    assert data.endswith(b"b" * 1000)


async def test_chunked_body_growing_over_max_body_bytes_is_413_and_closes(make_proxy):
    proxy = await make_proxy(limits={"max_body_bytes": 1000})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"190\r\n%s\r\n" % (b"c" * 400))
            await writer.drain()
            await asyncio.sleep(0.02)
        async with asyncio.timeout(2):
            resp = await read_response(reader)
        assert resp.status == 413
        assert await closed_by_peer(reader)
    finally:
        writer.close()


async def test_connection_over_max_connections_gets_503(make_proxy):
    proxy = await make_proxy(limits={"max_connections": 2})
    held = []
    try:
        for _ in range(2):
            reader, writer = await connect(proxy.port)
            held.append(writer)
            writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            async with asyncio.timeout(2):
                assert (await read_response(reader)).status == 200
        data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        assert status_of(data) == 503
        assert closed
        held.pop().close()
        await asyncio.sleep(0.1)
        data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        assert status_of(data) == 200
    finally:
        for writer in held:
            writer.close()


async def test_no_false_431_for_a_pipelined_head_sharing_a_read_with_a_large_body(raw_backend):
    proxy, upstream = await raw_backend(health_check=QUIET_HEALTH, limits={"max_header_bytes": "16KiB"})
    body = b"a" * 50_000
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body + b"GET /next HTTP/1.1\r\nHo")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"st: app\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(2):
            first = await read_response(reader)
            second = await read_response(reader)
    finally:
        writer.close()
    assert (first.status, first.body) == (200, b"raw\n")
    assert (second.status, second.body) == (200, b"raw\n")
    assert upstream.bodies[0] == body
    assert upstream.heads[1].startswith(b"GET /next ")


async def take_the_head_and_say_nothing(backend: RawBackend, reader, writer) -> None:
    """take_the_head_and_say_nothing: takes the request head, leaves its body unread, says nothing.

    stop() ends it.
    """
    if await backend.next_request(reader, writer, read_body=False) is not None:
        await asyncio.Event().wait()


async def test_request_trailer_flood_is_refused_instead_of_buffered(raw_backend):
    proxy, _ = await raw_backend(take_the_head_and_say_nothing, health_check=QUIET_HEALTH,
                                 limits={"max_header_bytes": "16KiB", "max_body_bytes": "1KiB"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
        await eventually(lambda: any(c.queue for c in proxy.connections), what="the request queued")
        (conn,) = proxy.connections
        ex = conn.queue[0]
        flood = (b"X-T: " + b"v" * 1000 + b"\r\n") * 64   # 64 KiB of trailer fields per write

        async def send_flood():
            try:
                for _ in range(64):                         # 4 MiB in all
                    writer.write(flood)
                    await writer.drain()
            except ConnectionError:
                pass   # the proxy stopped listening: the refusal under test

        async def outcome():
            try:
                async with asyncio.timeout(2):
                    return (await read_response(reader)).status
            except (asyncio.IncompleteReadError, ConnectionError):
                return "closed"
            except TimeoutError:
                return "no answer"

        _, result = await asyncio.gather(send_flood(), outcome())
    finally:
        writer.close()
    held = sum(map(len, ex.trailers or []))
    assert result in (431, "closed")
    assert held < 1 << 20, f"{held} trailer bytes buffered for one request"
