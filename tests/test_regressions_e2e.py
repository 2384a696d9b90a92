"""Regression tests for the data-plane defects found in review, end to end on loopback.

One test per defect, each named for the behaviour it holds the proxy to, and
each failing on the behaviour the reviewer reproduced: response trailers pasted
into the next response, stray upstream bytes answering a pipelined request,
negative in-flight counts after a stale-connection retry, clients that never
read holding their slot forever, the client_header timer firing while the proxy
itself was not reading, false 431s, unbounded request trailers, a stuck
PAUSE_UPSTREAM bit, an upstream reset relayed as a complete response, a
traceback for an unknown response coding, an endless health-check status line,
and a forced close of a request already sent upstream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from proxy.backends import Environment, Server
from proxy.exchange import SENT
from proxy.health import HealthChecker, probe
from proxy.route import Route
from proxy.upstream import UpstreamConnection
from rawhttp import (  # noqa: F401  (raw_backend is a fixture, used by name)
    RawBackend,
    connect,
    raw_backend,
    read_response,
    send_collect,
    status_of,
)

# Health checks that do not run again during a test (one initial probe at start).
QUIET_HEALTH = {"interval": "10s", "timeout": "500ms"}


async def wait_until(predicate, timeout: float = 2.0, what: str = "condition") -> None:
    """wait_until: poll ``predicate`` every 10 ms; fail the test if it is still false after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"{what} not reached within {timeout}s")


def content_length(head: bytes) -> int:
    """content_length: the Content-Length of a raw request head (0 when absent)."""
    lower = head.lower()
    if b"\r\ncontent-length:" not in lower:
        return 0
    return int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])


async def never_reading_client(port: int, request: bytes) -> socket.socket:
    """never_reading_client: a socket with a tiny receive window; sends ``request``, never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


# ---------------------------------------------------------- 1. response trailers


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


# ------------------------------------------------- 2. unsolicited extra response


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


# ------------------------------------------ 3. inflight on the stale-retry path


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
    await wait_until(lambda: len(server.idle) == 1, what="the upstream connection back in the pool")
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /2 HTTP/1.1\r\nHost: app\r\n\r\n")
        await wait_until(lambda: len(upstream.heads) == 2, what="the second request upstream")
        proxy.router.set_health(server, False, "health check says down")
        upstream.event.set()   # the pooled connection dies; the retry finds no healthy server
        async with asyncio.timeout(2):
            resp = await read_response(reader)
    finally:
        writer.close()
    assert resp.status == 503   # the retry found no healthy server
    await wait_until(lambda: not env.active, what="the exchange finished")
    assert server.inflight == 0
    assert env.inflight == 0


# ------------------------------------------------ 4. a client that never reads


async def answer_big_when_told(backend: RawBackend, reader, writer) -> None:
    """answer_big_when_told: answers each request with 48 KiB, once the test has set ``event``."""
    while await backend.next_request(reader, writer) is not None:
        await backend.event.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 49152\r\n\r\n" + b"x" * 49152)
        await writer.drain()


async def stuck_behind_a_full_window(proxy, upstream):
    """stuck_behind_a_full_window: (socket, ClientConnection) of a client that never reads.

    The proxy's socket to it gets a small SO_SNDBUF, so the kernel holds little
    and the rest of the response sits in the transport's write buffer (below its
    high-water mark, so the exchange ends and the connection goes idle).
    """
    before = set(proxy.connections)
    upstream.event.clear()
    sock = await never_reading_client(proxy.port, b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
    await wait_until(lambda: proxy.connections - before, what="the client connection accepted")
    (conn,) = proxy.connections - before
    await wait_until(lambda: conn.queue, what="the request read")   # the upstream waits for the event
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    upstream.event.set()
    await wait_until(lambda: not conn.queue, what="the response handed to the client connection")
    assert conn.transport.get_write_buffer_size(), "the kernel took the whole response: scenario not reached"
    return sock, conn


async def test_client_that_never_reads_is_cut_after_keepalive_idle_and_shutdown_leaves_nothing_open(
        raw_backend):
    proxy, upstream = await raw_backend(
        answer_big_when_told, health_check=QUIET_HEALTH,
        timeouts={"keepalive_idle": "300ms", "upstream_response": "300ms", "client_header": "300ms"})
    socks = []
    try:
        sock, conn = await stuck_behind_a_full_window(proxy, upstream)
        socks.append(sock)
        # Idle after keepalive_idle, then closing: a flush that never ends is cut a keepalive_idle later.
        await wait_until(lambda: conn not in proxy.connections, timeout=2.0,
                         what="the never-reading client cut")
        sock, conn = await stuck_behind_a_full_window(proxy, upstream)
        socks.append(sock)
        async with asyncio.timeout(2):
            await proxy.shutdown(0.1)
        await wait_until(lambda: not proxy.connections, timeout=0.5, what="nothing open after shutdown")
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------- 5. client_header while not reading


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


# ------------------------------------------------------------- 6. false 431


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


# ------------------------------------------------------ 7. request trailer flood


async def never_answer(backend: RawBackend, reader, writer) -> None:
    """never_answer: takes the request head and then says nothing (stop() ends it)."""
    if await backend.next_request(reader, writer, read_body=False) is not None:
        await asyncio.Event().wait()


async def test_request_trailer_flood_is_refused_instead_of_buffered(raw_backend):
    proxy, _ = await raw_backend(never_answer, health_check=QUIET_HEALTH,
                                 limits={"max_header_bytes": "16KiB", "max_body_bytes": "1KiB"})
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
        await wait_until(lambda: any(c.queue for c in proxy.connections), what="the request queued")
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


# ------------------------------------------------------ 8. PAUSE_UPSTREAM bit


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


# ----------------------------------------- 9. upstream reset mid close-delimited


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


# ------------------------------------------------- 10. unknown transfer coding


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


# -------------------------------------------------- 11. endless status line


async def endless_status_line(backend: RawBackend, reader, writer) -> None:
    """endless_status_line: answers any request with a status line over 64 KiB and no newline."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 " + b"X" * 70_000)
    await writer.drain()
    await asyncio.Event().wait()   # never ends the line (stop() ends it)


async def test_backend_with_an_endless_status_line_is_marked_unhealthy():
    upstream = await RawBackend(endless_status_line).start()
    checker = None
    try:
        env = Environment("blue")
        server = Server("127.0.0.1", upstream.server.sockets[0].getsockname()[1], env)
        env.add(server)
        ok, _ = await asyncio.wait_for(probe(server, "/healthz", 1.0), 2)
        assert ok is False
        changes = []
        checker = HealthChecker([server], "/healthz", 0.1, 1.0, healthy_after=1, unhealthy_after=1,
                                set_status=lambda s, up, why: (changes.append(up), s.set_healthy(up)))
        checker.start()
        await wait_until(lambda: not server.healthy, timeout=1.5, what="the server marked unhealthy")
        assert changes == [False]
    finally:
        if checker is not None:
            await checker.stop()
        await upstream.stop()


# ------------------------------------------- 12. forced close of a sent request


async def test_forced_close_at_drain_timeout_of_a_sent_request_is_502_without_retry_after(make_proxy):
    proxy = await make_proxy(drain_timeout="300ms", health_check=QUIET_HEALTH)
    blue = proxy.router.environments["blue"]
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /slow?s=3 HTTP/1.1\r\nHost: app\r\n\r\n")
        await wait_until(lambda: any(ex.state == SENT for ex in blue.active),
                         what="the request sent upstream")
        old = proxy.router.route
        drains = proxy.router.swap(Route(old.generation + 1, "green", previous=old.live,
                                         environments=old.environments))
        async with asyncio.timeout(2):
            resp = await read_response(reader)
            drain = await drains[0].done
    finally:
        writer.close()
    assert resp.status == 502
    assert resp.get(b"retry-after") is None
    assert drain["forced_closed"] == 1
