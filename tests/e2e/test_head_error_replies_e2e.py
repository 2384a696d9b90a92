"""End-to-end tests of the replies cutover writes itself to a HEAD request: no content.

RFC 9110 §9.3.2: the answer to HEAD carries no content; its header fields are those a GET
would have got, Content-Length included (§8.6). Each case below makes cutover answer a HEAD
with its own error, and reads everything up to the close: nothing may follow the head.
The same errors to GET keep their one-line body.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.rawhttp import RawBackend, connect, never_answer, send_collect, split_head, status_of

LIMITS = {"max_header_bytes": 1024, "max_body_bytes": 1000}
FAST = {"client_header": "300ms", "upstream_response": "300ms", "keepalive_idle": "30s"}


async def close_at_once(backend: RawBackend, reader, writer) -> None:
    await backend.next_request(reader, writer)   # then the handler ends and the connection closes


CASES = [
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nBad Header: x\r\n\r\n", 400, never_answer, id="400-malformed"),
    pytest.param(b"HEAD / HTTP/1.1\r\n\r\n", 400, never_answer, id="400-no-host"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nX-Cutover-Env: green\r\n\r\n", 403, never_answer, id="403"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\n", 408, never_answer, id="408"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nContent-Length: 5000\r\n\r\n", 413, never_answer, id="413"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n", 431, never_answer,
                 id="431-complete"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"p" * 2000 + b"\r\nX-More: 1", 431, never_answer,
                 id="431-partial"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, never_answer,
                 id="501"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\n", 502, close_at_once, id="502"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\n", 504, never_answer, id="504"),
    pytest.param(b"HEAD / HTTP/2.0\r\nHost: app\r\n\r\n", 505, never_answer, id="505"),
]


@pytest.mark.parametrize(("request_bytes", "status", "handler"), CASES)
async def test_cutovers_own_reply_to_head_has_no_content(raw_backend, request_bytes, status, handler):
    proxy, _ = await raw_backend(handler, limits=LIMITS, timeouts=FAST)
    data, closed = await send_collect(proxy.port, request_bytes, timeout=5)
    assert closed
    assert status_of(data) == status
    fields, rest = split_head(data, whole=True)
    assert rest == b""
    assert int(fields[b"content-length"]) > 0   # what the same request with GET would get
    assert fields[b"connection"] == b"close"


@pytest.mark.parametrize(("request_bytes", "status", "handler"), CASES)
async def test_the_same_reply_to_get_keeps_its_body(raw_backend, request_bytes, status, handler):
    proxy, _ = await raw_backend(handler, limits=LIMITS, timeouts=FAST)
    data, closed = await send_collect(proxy.port, b"GET" + request_bytes[4:], timeout=5)
    assert closed and status_of(data) == status
    fields, rest = split_head(data, whole=True)
    assert len(rest) == int(fields[b"content-length"]) > 0
    assert rest.endswith(b"\n")


async def test_head_refused_behind_a_pipelined_request_has_no_content(raw_backend):
    proxy, _ = await raw_backend()
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\nHEAD / HTTP/1.1\r\nHost: app\r\nBad Header: x\r\n\r\n")
        chunks = []
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        data = b"".join(chunks)
        first, _, second = data.partition(b"raw\n")
        assert status_of(first) == 200 and status_of(second) == 400
        assert second.endswith(b"\r\n\r\n")
    finally:
        writer.close()
