"""Proxy.snapshot() of a listening proxy on loopback: the listener as bound, and the
counters of real traffic (requests per server, client bytes per environment, refused
connects), as the admin side reads them."""

from __future__ import annotations

import asyncio

from tests.support.ports import Refused
from tests.support.rawhttp import connect, read_response
from tests.support.stack import QUIET_HEALTH


async def test_the_listener_is_shown_with_the_port_it_bound(make_proxy):
    proxy = await make_proxy()
    snapshot = proxy.snapshot()
    assert proxy.port != 0 and snapshot.listen == f"127.0.0.1:{proxy.port}"
    assert snapshot.preview_listen is None


async def test_real_requests_count_for_their_server_and_every_client_byte_for_their_environment(make_proxy):
    proxy = await make_proxy(health_check=QUIET_HEALTH)
    requests = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3 + b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    reader, writer = await connect(proxy.port)
    received = bytearray()
    try:
        writer.write(requests)
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                received += chunk
    finally:
        writer.close()
    assert received.count(b"HTTP/1.1 200 ") == 4
    blue = proxy.snapshot().router.env("blue")
    assert blue.servers[0].requests == 4 and blue.responses[2] == 4
    assert (blue.bytes_in, blue.bytes_out) == (len(requests), len(received))
    green = proxy.snapshot().router.env("green")
    assert green.bytes_in == green.bytes_out == 0


async def test_a_refused_connect_is_counted_as_a_connect_error_of_that_server(make_proxy, backends):
    refused = Refused()
    proxy = await make_proxy({"blue": [refused, backends["blue"]], "green": backends["green"]},
                             health_check=QUIET_HEALTH)
    reader, writer = await connect(proxy.port)
    try:
        for _ in range(2):   # ties rotate: one of them goes to the refused server first
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    finally:
        writer.close()
    servers = {s.address: s for s in proxy.snapshot().router.env("blue").servers}
    down = servers[refused.address]
    assert dict(down.upstream_errors)["connect"] == 1 and not down.healthy and down.requests == 0
    assert servers[backends["blue"].address].requests == 2
