"""A client that never reads its response is cut, and shutdown leaves nothing open.

Its response sits in the transport's write buffer (the kernel takes little: small socket
buffers on both sides) while the exchange has ended and the connection gone idle; it is cut a
keepalive_idle after that, and a shutdown closes such a connection too instead of waiting on
a flush that never ends.
"""

from __future__ import annotations

import asyncio
import socket

from tests.support.rawhttp import RawBackend
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually


async def never_reading_client(port: int, request: bytes) -> socket.socket:
    """never_reading_client: a socket with a tiny receive window; sends ``request``, never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


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
    await eventually(lambda: proxy.connections - before, what="the client connection accepted")
    (conn,) = proxy.connections - before
    await eventually(lambda: conn.queue, what="the request read")   # the upstream waits for the event
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    upstream.event.set()
    await eventually(lambda: not conn.queue, what="the response handed to the client connection")
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
        await eventually(lambda: conn not in proxy.connections, timeout=2.0,
                         what="the never-reading client cut")
        sock, conn = await stuck_behind_a_full_window(proxy, upstream)
        socks.append(sock)
        async with asyncio.timeout(2):
            await proxy.shutdown(0.1)
        await eventually(lambda: not proxy.connections, timeout=0.5, what="nothing open after shutdown")
    finally:
        for sock in socks:
            sock.close()
