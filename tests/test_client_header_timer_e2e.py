"""End-to-end tests of when timeouts.client_header starts: at the first byte of each request.

The method is part of the request head (RFC 9112 §3): a client that has sent only some
of it gets the same client_header as one that has sent half its header lines, on a new
connection and on a keep-alive one (where, before, only keepalive_idle bounded it).
keepalive_idle is long in these tests, so only the head timer can end the wait.
"""

from __future__ import annotations

import asyncio

from rawhttp import connect, read_response, status_of

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
