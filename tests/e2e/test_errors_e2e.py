"""End-to-end tests of the data plane's failure handling (SPEC §4 "Errors"), on loopback.

Connect failures and retries (502), no healthy server (503), upstream timeouts
(504), upstreams that die mid-response (the client is cut, never handed a short
response that looks complete), invalid upstream bytes, client-side timeouts,
stale pooled connections, and backpressure in both directions. Misbehaving
upstreams are small asyncio servers (RawBackend) passed through ``backend_map``;
QUIET_HEALTH leaves a refused server to be marked down by the passive check alone
(one initial probe, unhealthy_after 2).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import aiohttp
import pytest

from proxy.upstream import UpstreamConnection
from tests.support.backend import set_failing
from tests.support.ports import Refused
from tests.support.rawhttp import RawBackend, connect, never_answer, read_response, send_collect, split_head, status_of
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually

# ---------------------------------------------------------------- helpers


def blue(proxy):
    return proxy.router.environments["blue"]


async def settled(proxy, timeout: float = 1.0) -> None:
    """settled: wait until blue has nothing in flight (every exchange reached its end)."""
    await eventually(lambda: not blue(proxy).inflight, timeout=timeout, what="blue with nothing in flight")


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
    await set_failing(backends["blue"], True)
    await eventually(lambda: not blue(proxy).healthy, timeout=3)
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
    # the timed-out upstream connection is closed, not pooled
    await eventually(lambda: not server.connections, timeout=1)


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


async def reset_mid_close_delimited_body(backend: RawBackend, reader, writer) -> None:
    """reset_mid_close_delimited_body: starts a close-delimited body, then crashes (RST, no FIN)."""
    if await backend.next_request(reader, writer) is None:
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\npartial-body-")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_upstream_reset_mid_close_delimited_body_is_never_relayed_as_complete(raw_backend):
    proxy, _ = await raw_backend(reset_mid_close_delimited_body, health_check=QUIET_HEALTH)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 200
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"partial-body-" in body
    assert not body.endswith(b"0\r\n\r\n"), body   # no terminating chunk: the client sees a cut
    assert closed


async def gzip_only_response(backend: RawBackend, reader, writer) -> None:
    """gzip_only_response: a body in a transfer coding the proxy cannot re-frame."""
    if await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabc")
        await writer.drain()


async def test_502_for_an_unknown_response_transfer_coding_logs_no_error(raw_backend, caplog):
    caplog.set_level(logging.WARNING)
    proxy, _ = await raw_backend(gzip_only_response, health_check=QUIET_HEALTH)
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 502
    assert closed
    await asyncio.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


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
    await eventually(lambda: not (server.connections or blue(proxy).inflight), timeout=2)
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


async def answer_once_then_die(backend: RawBackend, reader, writer) -> None:
    """answer_once_then_die: answers one request keep-alive; on the next, dies when the test says so."""
    if await backend.next_request(reader, writer) is None:
        return
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()
    if await backend.next_request(reader, writer) is None:
        return
    await backend.event.wait()
    writer.transport.abort()   # no byte of an answer: a stale pooled connection to the proxy


async def test_server_inflight_never_goes_negative_when_a_stale_retry_finds_no_healthy_server(raw_backend):
    proxy, upstream = await raw_backend(answer_once_then_die, health_check=QUIET_HEALTH)
    env = proxy.router.environments["blue"]
    server = env.servers[0]
    data, _ = await send_collect(proxy.port, b"GET /1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200
    await eventually(lambda: len(server.idle) == 1, what="the upstream connection back in the pool")
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /2 HTTP/1.1\r\nHost: app\r\n\r\n")
        await eventually(lambda: len(upstream.heads) == 2, what="the second request upstream")
        proxy.router.set_health(server, False, "health check says down")
        upstream.event.set()   # the pooled connection dies; the retry finds no healthy server
        async with asyncio.timeout(2):
            resp = await read_response(reader)
    finally:
        writer.close()
    assert resp.status == 503   # the retry found no healthy server
    await eventually(lambda: not env.active, what="the exchange finished")
    assert server.inflight == 0
    assert env.inflight == 0


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


def content_length(head: bytes) -> int:
    """content_length: the Content-Length of a raw request head (0 when absent)."""
    lower = head.lower()
    if b"\r\ncontent-length:" not in lower:
        return 0
    return int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])


class SmallWindowBackend(RawBackend):
    """SmallWindowBackend: a RawBackend that takes little it has not asked for.

    Its connections advertise a 4 KiB receive window, and their readers stop
    reading the socket past 8 KiB buffered (limit 4 KiB), so an upload it does
    not read backs up in the proxy.
    """

    async def start(self) -> "SmallWindowBackend":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        self.server = await asyncio.start_server(self._serve, sock=sock, limit=4096)
        return self


async def answer_upload_early(backend: RawBackend, reader, writer) -> None:
    """answer_upload_early: answers a POST from its head, reads its body later; GETs at once."""
    while (request := await backend.next_request(reader, writer, read_body=False)) is not None:
        head, _ = request
        if head.startswith(b"POST "):
            await asyncio.sleep(0.1)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npost")
            await writer.drain()
            await asyncio.sleep(0.3)   # as a busy server may: the body is read a while later
            await reader.readexactly(content_length(head))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nget")
            await writer.drain()


async def test_client_reading_resumes_after_an_upstream_pushed_back_and_its_response_ended(
        make_proxy, backends, monkeypatch):
    # The reviewer's trick: a slow upstream link (small SO_SNDBUF on the proxy's upstream
    # socket, a small window at the upstream) so the upload backs up and the upstream
    # transport pushes back (pause_writing) while the response is still to come.
    pushed_back = []
    made = UpstreamConnection.connection_made
    paused = UpstreamConnection.pause_writing

    def connection_made(self, transport):
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=16384)
        made(self, transport)

    def pause_writing(self):
        pushed_back.append(self.exchange is not None)
        paused(self)

    monkeypatch.setattr(UpstreamConnection, "connection_made", connection_made)
    monkeypatch.setattr(UpstreamConnection, "pause_writing", pause_writing)
    upstream = await SmallWindowBackend(answer_upload_early).start()
    try:
        proxy = await make_proxy({"blue": upstream, "green": backends["green"]}, health_check=QUIET_HEALTH)
        size = 64 * 1024
        reader, writer = await connect(proxy.port)
        try:
            writer.write(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size)
            async with asyncio.timeout(2):
                first = await read_response(reader)
            assert (first.status, first.body) == (200, b"post")
            assert first.get(b"connection") is None   # still keep-alive
            assert True in pushed_back, "the upstream never pushed back: the scenario was not reached"
            writer.write(b"GET /next HTTP/1.1\r\nHost: app\r\n\r\n")
            async with asyncio.timeout(1.5):
                second = await read_response(reader)
            assert (second.status, second.body) == (200, b"get")
        finally:
            writer.close()
    finally:
        await upstream.stop()
