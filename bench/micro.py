"""micro: Python-only cost of one proxied request, on fake transports (no sockets, no syscalls).

Runs the real ClientConnection/Exchange/UpstreamConnection code for a small
keep-alive GET and its response, N times, and prints µs per request. It
tells the interpreter's share of the per-request CPU apart from the kernel's.
    python bench/micro.py [N] [--access-log]
With --access-log each request's json line is formatted too (AccessLog.add), and each batch
dropped at its hand-off: the log's cost on the loop, without its writer thread's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.accesslog import AccessLog  # noqa: E402
from proxy.downstream import ClientConnection  # noqa: E402
from proxy.server import Proxy  # noqa: E402
from proxy.settings import AccessLogConfig, Address, EnvironmentConfig, Settings  # noqa: E402
from proxy.upstream import UpstreamConnection  # noqa: E402

REQUEST = (b"GET /index.html?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
ROUNDS = 11

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 28 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\n"
            b"hello from backend\n")


class FakeLoop:
    """FakeLoop: the proxy's flushes are run by the benchmark loop itself (Proxy.flush_due),
    as the event loop runs them once per pass; a pass costs one call_soon, shared by
    every read handled in it, and is left out here."""

    def call_soon(self, callback):
        pass


class FakeTransport:
    def __init__(self, peer=("127.0.0.1", 5555)):
        self.peer = peer
        self.written = 0

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def write(self, data):
        self.written += len(data)

    def writelines(self, parts):
        for part in parts:
            self.written += len(part)

    def close(self):
        pass

    def pause_reading(self):
        pass

    def get_write_buffer_size(self):
        return 0

    def resume_reading(self):
        pass


async def main(n: int, access_log: bool) -> None:
    settings = Settings(listen=Address("127.0.0.1", 0), live="blue", environments=(
        EnvironmentConfig("blue", (Address("127.0.0.1", 1),)), EnvironmentConfig("green", (Address("127.0.0.1", 2),))))
    proxy = Proxy(settings)
    proxy._loop = FakeLoop()
    if access_log:   # never started: no writer thread; limit 0 drops each batch handed to it
        proxy.access_log = AccessLog(AccessLogConfig(path=os.devnull), limit=0)
    server = proxy.router.environments["blue"].servers[0]
    upstream = UpstreamConnection(proxy, server)
    upstream_transport = FakeTransport()
    upstream.connection_made(upstream_transport)
    server.idle.append(upstream)
    client = ClientConnection(proxy)
    client_transport = FakeTransport()
    client.connection_made(client_transport)
    for _ in range(1000):
        client.data_received(REQUEST)
        proxy.flush_due()
        upstream.data_received(RESPONSE)
        proxy.flush_due()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            client.data_received(REQUEST)
            proxy.flush_due()          # the end of an event loop pass
            upstream.data_received(RESPONSE)
            proxy.flush_due()
        best = min(best, time.perf_counter() - start)
    assert server.idle == [upstream] and not client.queue
    # Every request went up and every response came down (nothing left unflushed).
    assert upstream_transport.written >= len(REQUEST) * n and client_transport.written >= len(RESPONSE) * n
    if access_log:
        assert proxy.access_log is not None and proxy.access_log.dropped > n   # every line was formatted
    print(f"{best / n * 1e6:.2f} µs per request (Python side only{', access log json' if access_log else ''}; "
          f"best of {ROUNDS} x {n})")


if __name__ == "__main__":
    words = [a for a in sys.argv[1:] if a != "--access-log"]
    asyncio.run(main(int(words[0]) if words else 100_000, "--access-log" in sys.argv[1:]))
