"""End-to-end tests of limits.max_response_header_bytes: what an upstream may send before its
response head (interim 1xx heads included) or its trailer section ends.

A backend that answers with a head of many MiB is refused with a 502 naming the limit as soon
as the limit is passed: its connection is closed (the backend sees it before it can send the
rest), the refusal is counted on the server, and the proxy stays responsive for other requests
and for the health checks of both environments. Oversized trailers cut the response instead
(its head has already gone to the client). A head under the limit arriving in many small
pieces is relayed intact. The misbehaving upstreams are RawBackends.
"""

from __future__ import annotations

import asyncio

from tests.support.rawhttp import RawBackend, connect, read_response, send_collect, status_of
from tests.support.wait import eventually

# Far more than any limit and than loopback socket buffers hold, so a backend that gets to
# send all of it was read to the end.
HUGE = 32 << 20
PIECE = b"a" * 65536


class Streamer:
    """Streamer: a RawBackend handler that answers GET /huge with ``prefix`` then HUGE bytes of
    ``PIECE`` then ``suffix``, and any other request like answer_ok.

    ``sent`` is how many filler bytes it got to write before the proxy closed the connection
    (``cut`` is set then); ``started`` is set once the first filler piece is written.
    """

    def __init__(self, prefix: bytes, suffix: bytes) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.sent = 0
        self.cut = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, backend: RawBackend, reader, writer) -> None:
        while (request := await backend.next_request(reader, writer)) is not None:
            if not request[0].startswith(b"GET /huge "):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nraw\n")
                await writer.drain()
                continue
            try:
                writer.write(self.prefix)
                while self.sent < HUGE:
                    writer.write(PIECE)
                    await writer.drain()
                    self.sent += len(PIECE)
                    self.started.set()
                writer.write(self.suffix)
                await writer.drain()
            except ConnectionError:
                self.cut.set()
                return


def counted(proxy) -> int:
    """counted: responses refused or cut for their size, summed over blue's servers."""
    return sum(s.heads_over_limit for s in proxy.router.environments["blue"].servers)


async def closed_upstream(proxy) -> None:
    """closed_upstream: wait until blue holds no upstream connection."""
    await eventually(lambda: not proxy.router.environments["blue"].connections, timeout=3)


async def test_a_multi_mib_response_head_is_502_and_its_connection_closed(raw_backend):
    streamer = Streamer(b"HTTP/1.1 200 OK\r\nx-huge: ", b"\r\ncontent-length: 2\r\n\r\nok")
    proxy, upstream = await raw_backend(streamer)
    data, closed = await send_collect(proxy.port, b"GET /huge HTTP/1.1\r\nHost: app\r\n\r\n", timeout=20)
    assert status_of(data) == 502
    assert b"upstream response head over limits.max_response_header_bytes (65536)" in data
    assert b"x-huge" not in data and closed
    async with asyncio.timeout(5):
        await streamer.cut.wait()          # the proxy closed the connection: the backend noticed
    assert streamer.sent < HUGE            # ... long before it could send all of it
    assert counted(proxy) == 1
    assert len(upstream.heads) == 1        # refused, not sent again to another server
    await closed_upstream(proxy)
    # Others are served as before, and neither environment was marked down.
    data, _ = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    assert status_of(data) == 200 and data.endswith(b"raw\n")
    assert all(s.healthy for env in proxy.router.environments.values() for s in env.servers)


async def test_requests_on_other_connections_are_served_while_a_huge_head_streams(raw_backend):
    streamer = Streamer(b"HTTP/1.1 200 OK\r\nx-huge: ", b"\r\ncontent-length: 2\r\n\r\nok")
    proxy, upstream = await raw_backend(streamer, limits={"max_response_header_bytes": "8m"})
    huge = asyncio.create_task(send_collect(proxy.port, b"GET /huge HTTP/1.1\r\nHost: app\r\n\r\n",
                                            timeout=20))
    try:
        async with asyncio.timeout(5):
            await streamer.started.wait()
        answers = await asyncio.gather(*(
            send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            for _ in range(5)))
        assert [status_of(data) for data, _ in answers] == [200] * 5
        data, closed = await huge
        assert status_of(data) == 502 and closed
        assert b"over limits.max_response_header_bytes (8388608)" in data
    finally:
        huge.cancel()


async def test_oversized_trailers_cut_the_response(raw_backend):
    streamer = Streamer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-huge: ",
                        b"\r\n\r\n")
    proxy, _ = await raw_backend(streamer)
    data, closed = await send_collect(proxy.port, b"GET /huge HTTP/1.1\r\nHost: app\r\n\r\n", timeout=20)
    assert status_of(data) == 200 and closed
    assert data.endswith(b"2\r\nok\r\n")   # the body so far, never its last chunk: the client sees a cut
    async with asyncio.timeout(5):
        await streamer.cut.wait()
    assert streamer.sent < HUGE
    assert counted(proxy) == 1
    await closed_upstream(proxy)


async def test_endless_interim_responses_count_toward_the_head_limit(raw_backend):
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    done = asyncio.Event()

    async def early_hints_forever(backend: RawBackend, reader, writer) -> None:
        if await backend.next_request(reader, writer) is None:
            return
        try:
            for _ in range(HUGE // len(hints)):
                writer.write(hints * 64)
                await writer.drain()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        except ConnectionError:
            done.set()

    proxy, _ = await raw_backend(early_hints_forever, limits={"max_response_header_bytes": 4096})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        interim = 0
        async with asyncio.timeout(10):
            while (resp := await read_response(reader)).status == 103:
                interim += 1
        assert resp.status == 502
        assert b"limits.max_response_header_bytes (4096)" in resp.body
        assert 0 < interim <= (4096 + 256 * 1024) // len(hints)   # at most one read past the limit
        async with asyncio.timeout(5):
            await done.wait()
        assert counted(proxy) == 1
    finally:
        writer.close()


async def test_a_head_under_the_limit_in_many_small_pieces_is_relayed_intact(raw_backend):
    value = bytes(range(33, 127)) * 600   # 56,400 bytes
    pieces = [b"HTTP/1.1 200 OK\r\nx-big: " + value[:10]]
    pieces += [value[i:i + 100] for i in range(10, len(value), 100)]
    pieces.append(b"\r\ncontent-length: 4\r\n\r\ndone")

    async def trickle(backend: RawBackend, reader, writer) -> None:
        while await backend.next_request(reader, writer) is not None:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()

    proxy, _ = await raw_backend(trickle)
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        async with asyncio.timeout(10):
            resp = await read_response(reader)
        assert (resp.status, resp.get(b"x-big"), resp.body) == (200, value, b"done")
        assert counted(proxy) == 0
    finally:
        writer.close()


async def test_a_head_over_the_limit_that_ends_in_the_same_read_is_refused(raw_backend):
    async def one_write(backend: RawBackend, reader, writer) -> None:
        while await backend.next_request(reader, writer) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nx-big: " + b"b" * 3000 + b"\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    proxy, _ = await raw_backend(one_write, limits={"max_response_header_bytes": 2048})
    data, closed = await send_collect(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert status_of(data) == 502 and closed
    assert b"limits.max_response_header_bytes (2048)" in data
    assert counted(proxy) == 1
