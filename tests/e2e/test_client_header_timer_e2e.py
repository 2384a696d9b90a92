"""End-to-end tests of when timeouts.client_header starts: at the first byte of each request.

The method is part of the request head (RFC 9112 §3): a client that has sent only some
of it gets the same client_header as one that has sent half its header lines, on a new
connection and on a keep-alive one (where, before, only keepalive_idle bounded it).
keepalive_idle is long in these tests, so only the head timer can end the wait.
"""

from __future__ import annotations

import asyncio

from tests.support.rawhttp import RawBackend, connect, read_response, status_of
from tests.support.stack import QUIET_HEALTH

TIMEOUTS = {"client_header": "300ms", "keepalive_idle": "30s"}


async def read_until_close(reader: asyncio.StreamReader, bound: float = 5.0) -> bytes:
    """read_until_close: everything the proxy sends until it closes (at most ``bound`` seconds)."""
    chunks = []
    async with asyncio.timeout(bound):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_partial_method_on_a_keepalive_connection_gets_408(make_proxy):
    proxy = await make_proxy(timeouts=TIMEOUTS)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 200
        writer.write(b"GE")
        data = await read_until_close(reader)
        assert status_of(data) == 408
        assert data.endswith(b"request head not received within timeouts.client_header\n")
    finally:
        writer.close()


async def test_a_partial_method_on_a_new_connection_gets_408(make_proxy):
    proxy = await make_proxy(timeouts=TIMEOUTS)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POS")
        data = await read_until_close(reader)
        assert status_of(data) == 408
    finally:
        writer.close()


async def test_a_complete_method_without_a_target_gets_408(make_proxy):
    proxy = await make_proxy(timeouts=TIMEOUTS)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\nGET ")
        async with asyncio.timeout(3):
            assert (await read_response(reader)).status == 200
        data = await read_until_close(reader)
        assert status_of(data) == 408
    finally:
        writer.close()


async def test_blank_lines_between_requests_are_not_a_request(make_proxy):
    # RFC 9112 §2.2: empty lines before a request line are ignored.
    proxy = await make_proxy(timeouts=TIMEOUTS)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(3):
            resp = await read_response(reader)
        assert (resp.status, resp.body) == (200, b"blue\n")
    finally:
        writer.close()


async def answer_after_a_delay(backend: RawBackend, reader, writer) -> None:
    """answer_after_a_delay: 200 "ok" for each request, 50 ms later (500 ms for /slower)."""
    while (request := await backend.next_request(reader, writer)) is not None:
        await asyncio.sleep(0.5 if request[0].startswith(b"GET /slower ") else 0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()


async def test_client_header_timer_stands_still_while_the_proxy_is_not_reading(raw_backend):
    proxy, _ = await raw_backend(answer_after_a_delay, health_check=QUIET_HEALTH,
                                 timeouts={"client_header": "200ms"})

    async def full_pipeline():
        # 24 queued requests pause reading (depth 16) for ~0.4 s, longer than client_header,
        # while the next head has begun; its end waits unread in the kernel meanwhile.
        reader, writer = await connect(proxy.port)
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n" * 24 + b"GET /last HTTP/1.1\r\nHo")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"st: app\r\nConnection: close\r\n\r\n")
            statuses = []
            async with asyncio.timeout(2.5):
                for _ in range(25):
                    statuses.append((await read_response(reader)).status)
                rest = await reader.read()
            return statuses, rest
        except (asyncio.IncompleteReadError, ConnectionError):
            return statuses, b"<cut>"
        finally:
            writer.close()

    async def malformed_after_a_slow_one():
        # The malformed head is refused; the slow response queued before it still arrives.
        reader, writer = await connect(proxy.port)
        try:
            writer.write(b"GET /slower HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n")
            responses = []
            async with asyncio.timeout(2):
                for _ in range(2):
                    responses.append(await read_response(reader))
            return [(r.status, r.body if r.status == 200 else None) for r in responses]
        except (asyncio.IncompleteReadError, ConnectionError):
            return [(r.status, r.body if r.status == 200 else None) for r in responses] + ["<cut>"]
        finally:
            writer.close()

    (statuses, rest), answers = await asyncio.gather(full_pipeline(), malformed_after_a_slow_one())
    assert statuses == [200] * 25 and rest == b""
    assert answers == [(200, b"ok"), (400, None)]
