"""End-to-end tests of the TLS listeners' own transport (proxy/tlsstream.py): TLS read and
written on the connection's socket, with real TLS clients (the ssl module) and the test backends.

What is pinned: a large answer reaches a client that does not read for a while, whole, and the
proxy's write buffer pushes back meanwhile (pause_writing, then resume); a large upload is relayed
whole; pipelined requests in one record are answered in order; an answer that closes the
connection ends with a close_notify; a client's close_notify closes its connection; a client
that resets mid-answer leaves no connection and no traceback; a connection that never completes
its hello is cut at timeouts.client_header and not counted as refused, nor one whose client
cut its hello short; a handshake done after accepting stopped is served one request, then
closed, unless accepting resumes first; one in flight when the proxy stops is cut; handshakes
in flight are bounded by limits.max_connections (one warning for a burst over it), and a reload
sets that bound and their timeout again; a TLS listen address already in use is an error
naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import struct
import time

import pytest

from proxy import Proxy
from tests.support.certs import blocking_tls_client, client_context
from tests.support.rawhttp import read_response
from tests.support.stack import QUIET_HEALTH, proxy_config
from tests.support.wait import eventually

pytestmark = pytest.mark.both_loops

TIMEOUTS = {"client_header": "300ms", "keepalive_idle": "30s"}


def read_until_close(tls: ssl.SSLSocket) -> bytes:
    chunks = []
    while chunk := tls.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def tls_proxy(make_proxy, tls_files, **overrides) -> Proxy:
    return await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH, **overrides)


async def test_a_large_answer_reaches_a_slow_reader_whole_and_pushes_back_meanwhile(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    size = 8 << 20
    tls = await asyncio.to_thread(blocking_tls_client, proxy.port, client_context(tls_files.authority), 16384)
    try:
        await asyncio.to_thread(tls.sendall, f"GET /big?size={size} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
        await eventually(lambda: any(c.write_paused for c in proxy.connections), timeout=5)
        conn = next(iter(proxy.connections))
        assert conn.transport.get_write_buffer_size() > 0

        def read_answer() -> bytes:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            while len(body) < size:
                body += tls.recv(1 << 20)
            return body

        body = await asyncio.to_thread(read_answer)
        assert body == b"x" * size
        assert not conn.write_paused and conn.transport.get_write_buffer_size() == 0
        await asyncio.to_thread(tls.sendall, b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")   # still usable
        assert (await asyncio.to_thread(tls.recv, 65536)).startswith(b"HTTP/1.1 200")
    finally:
        tls.close()


async def test_a_large_upload_is_relayed_whole(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_context(tls_files.authority),
                                                   server_hostname="shop.test")
    body = bytes(range(256)) * 3600   # 900 KiB (the backend takes up to 1 MiB): 57 records
    writer.write(b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = await asyncio.wait_for(read_response(reader), 10)
    assert answer.status == 200
    assert answer.get(b"x-length") == str(len(body)).encode()
    assert answer.body == body
    writer.close()


async def test_pipelined_requests_in_one_record_are_answered_in_order(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_context(tls_files.authority),
                                                   server_hostname="shop.test")
    writer.write(b"".join(b"GET /status/%d HTTP/1.1\r\nHost: shop.test\r\n\r\n" % code for code in (201, 202, 203)))
    statuses = [(await asyncio.wait_for(read_response(reader), 5)).status for _ in range(3)]
    assert statuses == [201, 202, 203]
    writer.close()


async def test_an_answer_that_closes_the_connection_ends_with_close_notify(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    tls = await asyncio.to_thread(blocking_tls_client, proxy.port, client_context(tls_files.authority))
    try:
        await asyncio.to_thread(tls.sendall, b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        data = await asyncio.to_thread(read_until_close, tls)   # SSLEOFError without a close_notify
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"blue\n")
    finally:
        tls.close()
    await eventually(lambda: not proxy.connections, timeout=5)


async def test_a_clients_close_notify_closes_its_connection(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    tls = await asyncio.to_thread(blocking_tls_client, proxy.port, client_context(tls_files.authority))
    await asyncio.to_thread(tls.sendall, b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert (await asyncio.to_thread(tls.recv, 65536)).startswith(b"HTTP/1.1 200")
    assert len(proxy.connections) == 1
    raw = await asyncio.to_thread(tls.unwrap)   # sends close_notify and waits for the proxy's
    raw.close()
    await eventually(lambda: not proxy.connections, timeout=5)


async def test_a_client_reset_mid_answer_leaves_no_connection_and_no_traceback(make_proxy, tls_files, caplog):
    proxy = await tls_proxy(make_proxy, tls_files)
    caplog.set_level(logging.DEBUG)
    tls = await asyncio.to_thread(blocking_tls_client, proxy.port, client_context(tls_files.authority), 16384)
    await asyncio.to_thread(tls.sendall, b"GET /big?size=%d HTTP/1.1\r\nHost: shop.test\r\n\r\n" % (8 << 20))
    await eventually(lambda: any(c.write_paused for c in proxy.connections), timeout=5)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()   # a reset: the proxy's next write or read fails
    await eventually(lambda: not proxy.connections, timeout=5)
    assert [r for r in caplog.records if r.exc_info] == []
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_context(tls_files.authority),
                                                   server_hostname="shop.test")
    writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.close()


@pytest.mark.parametrize("hello", [b"", b"\x16\x03\x01"], ids=["nothing", "part of a hello"])
async def test_a_hello_not_done_within_client_header_is_cut_and_not_counted(make_proxy, tls_files, hello):
    proxy = await tls_proxy(make_proxy, tls_files, timeouts=TIMEOUTS)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(hello)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.25 < time.monotonic() - started < 3
    assert proxy.snapshot().tls_handshake_failures == 0
    writer.close()


async def test_a_hello_its_client_cut_short_is_closed_and_not_counted(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)   # client_header: the default, far away
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # the start of a ClientHello
    writer.write_eof()
    left = await asyncio.wait_for(reader.read(), 5)   # then the proxy closes
    # OpenSSL may send a decode_error alert first, even as it reports the EOF (SSLEOFError).
    assert left in (b"", b"\x15\x03\x03\x00\x02\x02\x32")
    assert not proxy._server.handshaking
    assert proxy.snapshot().tls_handshake_failures == 0
    writer.close()


async def test_a_handshake_done_after_accepting_stopped_is_served_one_request_then_closed(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)   # accepted, no hello yet
    await eventually(lambda: bool(proxy._server.handshaking), timeout=5)
    listener = proxy._server
    proxy.stop_accepting()   # as when a successor takes the listening sockets over
    assert listener.handshaking

    def one_request() -> bytes:
        tls = client_context(tls_files.authority).wrap_socket(raw, server_hostname="shop.test",
                                                              suppress_ragged_eofs=False)
        try:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")   # keep-alive asked for
            return read_until_close(tls)
        finally:
            tls.close()

    answer = await asyncio.to_thread(one_request)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in answer.lower()
    await eventually(lambda: not proxy.connections, timeout=5)


async def test_a_connection_made_while_accepting_stopped_is_kept_alive_once_accepting_resumes(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    await eventually(lambda: bool(proxy._server.handshaking), timeout=5)
    proxy.stop_accepting(keep=True)   # a successor was handed the sockets ...
    tls = await asyncio.to_thread(client_context(tls_files.authority).wrap_socket, raw, server_hostname="shop.test")
    try:
        await eventually(lambda: len(proxy.connections) == 1, timeout=5)
        assert next(iter(proxy.connections)).closing
        assert await proxy.resume_accepting()   # ... and died before it served: this process serves on
        for _ in range(2):
            await asyncio.to_thread(tls.sendall, b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            answer = await asyncio.to_thread(tls.recv, 65536)
            assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" not in answer.lower()
    finally:
        tls.close()


async def test_a_handshake_in_flight_when_the_proxy_stops_is_cut(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)   # client_header: the default, far away
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"\x16\x03\x01")
    await asyncio.sleep(0.05)
    await proxy.shutdown(0.5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_handshakes_in_flight_are_bounded_by_max_connections(make_proxy, tls_files, caplog):
    proxy = await tls_proxy(make_proxy, tls_files, limits={"max_connections": 2})
    listener = proxy._server
    silent = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(2)]   # no hello
    try:
        await eventually(lambda: len(listener.handshaking) == 2, timeout=5)
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"\x16\x03\x01")
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""   # closed as it was accepted
            except ConnectionResetError:
                pass                                                      # or reset: its bytes were unread
            writer.close()
        assert proxy.snapshot().tls_over_limit == 3 and len(listener.handshaking) == 2
        warnings = [r.getMessage() for r in caplog.records if "TLS handshakes in flight" in r.getMessage()]
        assert len(warnings) == 1 and "(limits.max_connections): 1 new connections" in warnings[0]   # not one each
    finally:
        for sock in silent:
            sock.close()
    await eventually(lambda: not listener.handshaking, timeout=5)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_context(tls_files.authority),
                                                   server_hostname="shop.test")
    writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    writer.close()


async def test_a_reload_sets_the_handshakes_timeout_and_bound_again(make_proxy, tls_files):
    proxy = await tls_proxy(make_proxy, tls_files)   # client_header: the default, far away
    settings = proxy.settings
    proxy.configure(dataclasses.replace(
        settings, timeouts=dataclasses.replace(settings.timeouts, client_header=0.3),
        limits=dataclasses.replace(settings.limits, max_connections=7)))
    assert proxy._server.max_handshakes == 7
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.25 < time.monotonic() - started < 3
    writer.close()


async def test_a_tls_listen_address_in_use_is_an_error_naming_it(tmp_path, backends, tls_files):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proxy = Proxy(proxy_config(tmp_path, backends, listen=f"127.0.0.1:{port}", tls=tls_files.shop.config(),
                                   health_check=QUIET_HEALTH).settings())
        with pytest.raises(OSError, match=rf"bind on address \('127.0.0.1', {port}\)"):
            await proxy.start()
        await proxy.close()
    finally:
        taken.close()
