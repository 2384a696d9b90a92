"""End-to-end tests of the data plane's failure handling (SPEC §4 "Errors"), on loopback.

Connect failures and retries (502), no healthy server (503), upstream timeouts
(504), upstreams that die mid-response (the client is cut, never handed a short
response that looks complete), invalid upstream bytes, client-side timeouts,
stale pooled connections, and backpressure in both directions. Misbehaving
upstreams are small asyncio servers (RawBackend) passed through ``backend_map``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from rawhttp import (  # noqa: F401  (raw_backend is a fixture, used by name)
    RawBackend,
    connect,
    free_port,
    raw_backend,
    read_response,
    send_collect,
    status_of,
)

# ---------------------------------------------------------------- helpers


def split_head(data: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """split_head: (lowercase header dict, rest) of a raw response."""
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.lower()] = value.strip()
    return headers, rest


class Refused:
    """Refused: a backend address where nothing listens."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"


def blue(proxy):
    return proxy.router.environments["blue"]


async def settled(proxy, timeout: float = 1.0) -> None:
    """settled: wait until blue has nothing in flight (every exchange reached its end)."""
    async with asyncio.timeout(timeout):
        while blue(proxy).inflight:
            await asyncio.sleep(0.01)


# Health checks that do not run again during a test: a refused server is then
# marked down only by the passive check (one initial probe, unhealthy_after 2).
QUIET_HEALTH = {"interval": "10s", "timeout": "500ms"}


# ------------------------------------------------------- connect failures


async def test_refused_server_is_retried_on_a_healthy_one_and_marked_unhealthy(make_proxy, backends):
    proxy = await make_proxy({"blue": [Refused(), backends["blue"]], "green": backends["green"]},
                             health_check=QUIET_HEALTH)
    refused = blue(proxy).servers[0]
    async with aiohttp.ClientSession() as session, asyncio.timeout(3):
        for _ in range(4):
            async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                assert resp.status == 200
                assert await resp.text() == "blue\n"
    assert refused.healthy is False
    assert blue(proxy).servers[1].healthy is True
    assert backends["blue"].requests == 4
    await settled(proxy)
    assert refused.inflight == 0


async def test_refused_server_is_retried_for_a_request_with_a_body(make_proxy, backends):
    proxy = await make_proxy({"blue": [Refused(), backends["blue"]], "green": backends["green"]},
                             health_check=QUIET_HEALTH)
    async with aiohttp.ClientSession() as session, asyncio.timeout(3):
        for i in range(3):
            body = b"order %d " % i * 1000
            async with session.post(f"http://127.0.0.1:{proxy.port}/echo", data=body) as resp:
                assert resp.status == 200
                assert await resp.read() == body
    assert blue(proxy).servers[0].healthy is False


async def test_all_servers_refused_is_502_and_closes(make_proxy, backends):
    proxy = await make_proxy({"blue": [Refused(), Refused()], "green": backends["green"]},
                             health_check=QUIET_HEALTH)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 502
    assert closed
    assert all(not s.healthy for s in blue(proxy).servers)
    await settled(proxy)


async def test_no_healthy_server_is_503_with_retry_after(make_proxy, backends):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session, asyncio.timeout(3):
        async with session.post(f"http://{backends['blue'].address}/__fail?on=1") as resp:
            assert resp.status == 200
        while blue(proxy).healthy:
            await asyncio.sleep(0.02)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    headers, _ = split_head(data)
    assert status_of(data) == 503
    assert headers.get(b"retry-after", b"").isdigit()
    assert closed
    assert backends["blue"].requests == 0
    assert backends["green"].requests == 0


# ---------------------------------------------------------------- timeouts


async def test_upstream_response_timeout_is_504(make_proxy):
    proxy = await make_proxy(timeouts={"upstream_response": "300ms"})
    started = time.monotonic()
    data, closed = await send_collect(proxy.port, b"GET /slow?s=1.5 HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 504
    assert closed
    assert 0.2 < time.monotonic() - started < 1.2
    await settled(proxy)
    server = blue(proxy).servers[0]
    async with asyncio.timeout(1):
        while server.connections:   # the timed-out upstream connection is closed, not pooled
            await asyncio.sleep(0.01)


async def test_upstream_response_timeout_counts_from_the_last_progress(make_proxy):
    proxy = await make_proxy(timeouts={"upstream_response": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /chunked?n=6&delay=0.15 HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert resp.status == 200
        assert resp.body == b"".join(b"blue part %d\n" % i for i in range(6))
    finally:
        writer.close()


async def test_slow_upload_is_not_cut_by_upstream_response_timeout(make_proxy):
    proxy = await make_proxy(timeouts={"upstream_response": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 80\r\n\r\n")
        for i in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"%010d" % i)
        async with asyncio.timeout(2):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"".join(b"%010d" % i for i in range(8)))
    finally:
        writer.close()


async def never_answer(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        await backend.event.wait()


async def test_silent_upstream_is_504(raw_backend):
    proxy, upstream = await raw_backend(never_answer, timeouts={"upstream_response": "300ms"})
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 504
    assert closed
    assert len(upstream.heads) == 1   # a timed-out request is not sent again
    await settled(proxy)


async def stall_after_head(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst ten.")
        await writer.drain()
        await backend.event.wait()


async def test_upstream_stalling_mid_body_cuts_the_client_after_upstream_response(raw_backend):
    proxy, _ = await raw_backend(stall_after_head, timeouts={"upstream_response": "300ms"})
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    headers, body = split_head(data)
    assert status_of(data) == 200 and headers[b"content-length"] == b"100"
    assert body == b"first ten."   # short of Content-Length: the client sees a cut response
    await settled(proxy)


async def test_slow_client_head_is_cut_after_client_header(raw_backend):
    proxy, upstream = await raw_backend(never_answer, timeouts={"client_header": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /slowloris HT")
        started = time.monotonic()
        async with asyncio.timeout(2):
            data = await reader.read()
        assert 0.2 < time.monotonic() - started < 1.5
        assert data == b"" or status_of(data) == 408
        assert upstream.heads == []
    finally:
        writer.close()


async def test_client_trickling_header_lines_is_cut_after_client_header(raw_backend):
    proxy, upstream = await raw_backend(never_answer, timeouts={"client_header": "300ms"})
    reader, writer = await connect(proxy.port)

    async def drip():   # a new header line every 50 ms: busy, but the head never ends
        for i in range(40):
            writer.write(b"X-Drip-%d: 1\r\n" % i)
            await asyncio.sleep(0.05)

    writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n")
    started = time.monotonic()
    dripper = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(2):
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
        assert time.monotonic() - started < 1.5
        assert data == b"" or status_of(data) == 408
        assert upstream.heads == []
    finally:
        dripper.cancel()
        writer.close()


async def test_slow_second_head_on_a_keepalive_connection_is_cut_after_client_header(make_proxy):
    proxy = await make_proxy(timeouts={"client_header": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(2):
            assert (await read_response(reader)).status == 200
        writer.write(b"GET / HTTP/1.1\r\nHo")
        started = time.monotonic()
        async with asyncio.timeout(2):
            data = await reader.read()
        assert 0.2 < time.monotonic() - started < 1.5
        assert data == b"" or status_of(data) == 408
    finally:
        writer.close()


async def test_client_sending_nothing_is_closed_after_client_header(make_proxy):
    proxy = await make_proxy(timeouts={"client_header": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        started = time.monotonic()
        async with asyncio.timeout(2):
            data = await reader.read()
        assert 0.2 < time.monotonic() - started < 1.5
        assert data == b"" or status_of(data) == 408
    finally:
        writer.close()


async def test_idle_keepalive_client_is_closed_after_keepalive_idle(make_proxy):
    proxy = await make_proxy(timeouts={"keepalive_idle": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(2):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"blue\n")
        idle_since = time.monotonic()
        async with asyncio.timeout(2):
            rest = await reader.read()
        assert rest == b""
        assert 0.2 < time.monotonic() - idle_since < 1.5
        assert not proxy.connections
    finally:
        writer.close()


async def test_keepalive_client_active_within_keepalive_idle_stays_open(make_proxy):
    proxy = await make_proxy(timeouts={"keepalive_idle": "300ms"})
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for _ in range(8):   # 8 x 100 ms: longer than keepalive_idle in total
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                assert (await read_response(reader)).status == 200
                await asyncio.sleep(0.1)
    finally:
        writer.close()


# ------------------------------------------------ upstream dies or lies


async def test_upstream_close_mid_response_with_content_length_cuts_the_client(make_proxy):
    proxy = await make_proxy()
    data, closed = await send_collect(proxy.port, b"GET /close-mid HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    headers, body = split_head(data)
    assert status_of(data) == 200 and headers[b"content-length"] == b"1000"
    assert body == b"partial"
    await settled(proxy)


async def close_mid_chunked(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


async def test_upstream_close_mid_chunked_response_sends_no_last_chunk(raw_backend):
    proxy, _ = await raw_backend(close_mid_chunked)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    headers, body = split_head(data)
    assert status_of(data) == 200 and headers[b"transfer-encoding"] == b"chunked"
    assert body.startswith(b"5\r\nhello\r\n")
    assert b"0\r\n\r\n" not in body
    await settled(proxy)


async def close_mid_chunked_body(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nonly six")
        await writer.drain()
        await asyncio.sleep(0.05)


async def test_upstream_close_inside_a_chunk_cuts_the_client(raw_backend):
    proxy, _ = await raw_backend(close_mid_chunked_body)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    _, body = split_head(data)
    assert b"0\r\n\r\n" not in body   # whatever arrived, the response never looks complete


async def close_mid_to_http10(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        await asyncio.sleep(0.05)


async def test_upstream_close_mid_response_to_http10_client_is_a_reset_or_short_body(raw_backend):
    proxy, _ = await raw_backend(close_mid_to_http10)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
    assert closed
    headers, body = split_head(data)
    # Content-Length stays on the response, so an HTTP/1.0 client sees it is short.
    assert headers[b"content-length"] == b"100"
    assert len(body) < 100


async def close_without_answer(backend: RawBackend, reader, writer) -> None:
    await backend.next_request(reader, writer)


async def test_upstream_closing_before_any_byte_is_502(raw_backend):
    proxy, upstream = await raw_backend(close_without_answer)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 502
    assert closed
    assert len(upstream.heads) == 1   # a fresh connection that failed is not a stale one: no retry
    await settled(proxy)


INVALID_RESPONSES = {
    "not_http": b"garbage\r\n\r\n",
    "bad_status_code": b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
    "bad_header_name": b"HTTP/1.1 200 OK\r\nBad Name: x\r\ncontent-length: 2\r\n\r\nok",
    "two_content_lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
    "negative_content_length": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok",
    "bad_chunk_size_first": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nxyz\r\n",
    "status_over_599": b"HTTP/1.1 700 Odd\r\ncontent-length: 2\r\n\r\nok",   # RFC 9110 §15
    "status_under_100": b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("case", list(INVALID_RESPONSES))
async def test_invalid_upstream_response_is_502(raw_backend, case):
    payload = INVALID_RESPONSES[case]

    async def lie(backend: RawBackend, reader, writer) -> None:
        if await backend.next_request(reader, writer) is not None:
            writer.write(payload)
            await writer.drain()
            await asyncio.sleep(0.2)

    proxy, _ = await raw_backend(lie)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert closed
    if case == "bad_chunk_size_first":
        # The head may already be on its way: then the only honest option is to cut
        # (and a reset may even take the head with it).
        assert data == b"" or status_of(data) in (200, 502)
        assert b"0\r\n\r\n" not in split_head(data)[1]
    else:
        assert status_of(data) == 502, data[:200]
    await settled(proxy)


async def both_framings(backend: RawBackend, reader, writer) -> None:
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)


async def test_upstream_response_with_both_framings_is_refused_or_forwarded_chunked_only(raw_backend):
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; an intermediary that
    # forwards such a message must drop the Content-Length first.
    proxy, _ = await raw_backend(both_framings)
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    headers, body = split_head(data)
    if status_of(data) == 200:
        assert b"content-length" not in headers
        assert body == b"5\r\nhello\r\n0\r\n\r\n"
    else:
        assert status_of(data) == 502


# --------------------------------------------- pooled upstream connections


async def close_on_second_request(backend: RawBackend, reader, writer) -> None:
    """close_on_second_request: keep-alive answers, but a reused connection is found closed.

    The first request on a connection is answered; the second is read and the
    connection closed with no answer, as a server does whose keep-alive timer
    fired just as the proxy reused the connection.
    """
    if await backend.next_request(reader, writer) is None:
        return
    backend.connections += 1
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nraw\n")
    await writer.drain()
    await backend.next_request(reader, writer)


async def test_stale_pooled_connection_is_retried_transparently_for_get(raw_backend):
    proxy, upstream = await raw_backend(close_on_second_request)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"raw\n")
    finally:
        writer.close()
    assert len(upstream.heads) == 5   # 3 answered + 2 that hit a stale connection
    assert upstream.connections == 3
    assert blue(proxy).servers[0].healthy


async def test_stale_pooled_connection_is_not_replayed_for_post(raw_backend):
    proxy, upstream = await raw_backend(close_on_second_request)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            assert (await read_response(reader)).status == 200
            writer.write(b"POST /order HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nbuy")
            resp = await read_response(reader)
        assert resp.status == 502
        await asyncio.sleep(0.1)
        assert [h.split(b" ")[0] for h in upstream.heads] == [b"GET", b"POST"]   # sent once, never again
    finally:
        writer.close()


async def close_right_after_answer(backend: RawBackend, reader, writer) -> None:
    """close_right_after_answer: says keep-alive, then closes as soon as it answered."""
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nraw\n")
        await writer.drain()


async def test_upstream_closing_an_idle_pooled_connection_is_handled(raw_backend):
    proxy, upstream = await raw_backend(close_right_after_answer)
    reader, writer = await connect(proxy.port)
    try:
        async with asyncio.timeout(3):
            for delay in (0, 0.05, 0, 0.05):
                await asyncio.sleep(delay)
                writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                resp = await read_response(reader)
                assert (resp.status, resp.body) == (200, b"raw\n")
    finally:
        writer.close()
    await asyncio.sleep(0.05)
    assert not blue(proxy).servers[0].idle


async def test_client_gone_mid_response_closes_the_upstream_connection(make_proxy):
    proxy = await make_proxy()
    reader, writer = await connect(proxy.port)
    writer.write(b"GET /chunked?n=50&delay=0.02 HTTP/1.1\r\nHost: app\r\n\r\n")
    async with asyncio.timeout(2):
        await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    server = blue(proxy).servers[0]
    async with asyncio.timeout(2):
        while server.connections or blue(proxy).inflight:
            await asyncio.sleep(0.01)
    assert not server.idle


async def early_answer(backend: RawBackend, reader, writer) -> None:
    """early_answer: refuses an upload from its head, without reading the body."""
    if await backend.next_request(reader, writer, read_body=False) is not None:
        writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\n"
                     b"too large")
        await writer.drain()
        await asyncio.sleep(0.3)


async def test_early_upstream_answer_to_an_upload_reaches_the_client_and_closes(raw_backend):
    proxy, _ = await raw_backend(early_answer)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\n" + b"u" * 1000)
        async with asyncio.timeout(2):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (413, b"too large")
        # The rest of the upload cannot be skipped safely: the connection ends.
        assert resp.get(b"connection") == b"close"
        async with asyncio.timeout(2):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_slow_reading_client_is_not_cut_by_upstream_response_timeout(make_proxy):
    size = 8 << 20
    proxy = await make_proxy(timeouts={"upstream_response": "300ms"})
    reader, writer = await connect(proxy.port, limit=64 * 1024)
    try:
        writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: app\r\n\r\n" % size)
        async with asyncio.timeout(2):
            await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.8)   # paused by the client, not by the upstream
        got = 0
        async with asyncio.timeout(5):
            while got < size and (chunk := await reader.read(1 << 20)):
                got += len(chunk)
        assert got == size
    finally:
        writer.close()


# ------------------------------------------------------------ backpressure


def find_client(proxy):
    """find_client: the one ClientConnection of ``proxy`` (internal, for flow-control checks)."""
    (conn,) = proxy.connections
    return conn


async def test_stalled_client_pauses_the_upstream_and_then_gets_everything(make_proxy):
    size = 20 << 20
    proxy = await make_proxy()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    try:
        writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: app\r\n\r\n" % size)
        async with asyncio.timeout(2):
            head = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n", 1)[0]
        assert b"content-length: %d" % size in head.lower()
        await asyncio.sleep(0.5)   # the client reads nothing for a while
        client = find_client(proxy)
        upstream = client.queue[0].conn
        assert upstream is not None, "the response finished although the client read nothing"
        assert not upstream.transport.is_reading()
        assert client.transport.get_write_buffer_size() < 2 << 20
        got = 0
        async with asyncio.timeout(10):
            while chunk := await reader.read(1 << 20):
                assert chunk.count(b"x") == len(chunk)
                got += len(chunk)
                if got >= size:
                    break
        assert got == size
    finally:
        writer.close()


async def slow_reader(backend: RawBackend, reader, writer) -> None:
    """slow_reader: reads a request head, waits for the test's signal, then the body."""
    request = await backend.next_request(reader, writer, read_body=False)
    if request is None:
        return
    head, _ = request
    await backend.event.wait()
    length = int(head.lower().split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
    got = 0
    while got < length:
        chunk = await reader.read(1 << 20)
        assert chunk
        got += len(chunk)
    body = b"%d" % got
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


async def test_upload_to_a_stalled_upstream_pauses_the_client_and_then_completes(raw_backend):
    size = 20 << 20
    proxy, upstream = await raw_backend(slow_reader)
    reader, writer = await connect(proxy.port)
    writer.transport.set_write_buffer_limits(high=1 << 20)
    chunk = b"u" * (1 << 20)

    async def upload():
        writer.write(b"PUT /up HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(upload())
    try:
        await asyncio.sleep(0.5)
        assert not sender.done(), "the whole upload was taken although the upstream read nothing"
        client = find_client(proxy)
        conn = client.queue[0].conn
        assert conn is not None
        assert conn.transport.get_write_buffer_size() < 2 << 20
        assert not client.transport.is_reading()
        upstream.event.set()
        async with asyncio.timeout(10):
            await sender
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"%d" % size)
    finally:
        sender.cancel()
        writer.close()
