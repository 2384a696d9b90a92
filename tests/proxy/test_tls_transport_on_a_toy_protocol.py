"""The TLS listener and transport of proxy/tlsstream.py with a recording protocol in place of
ClientConnection, real TLS clients (the ssl module) on loopback, on both event loops.

What is pinned: a protocol callback that raises (the factory, connection_made, data_received,
eof_received) cuts its connection, is logged with its traceback and reaches connection_lost,
rather than escaping to the loop and leaving the socket open; the protocol is resumed once the
write buffer is at its low-water mark, not only when it is empty; lowering the high-water mark
below what is buffered pauses it; one read event reads at most READS_PER_EVENT records; accept's
per-connection errors are skipped and the others stop accepting for ACCEPT_RETRY, logged once,
never escaping; listening_sockets skips an address family the machine cannot make; a listener
that cannot listen closes what it was given; a closed listener lists no sockets.

The compiled transport can carry only a ClientConnection (a native class: its calls into it are
direct), so the tests with the recording protocol run on the pure-Python build only (a factory that
raises is tested on both); the others
serve through the proxy's own ClientConnection on both builds.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import ssl
import struct
import termios
import time

import pytest

from proxy import build
from proxy.tlsstream import ACCEPT_RETRY, HIGH_WATER, LOW_WATER, READS_PER_EVENT, RECORD, TLSListener, listening_sockets
from tests.support.certs import blocking_tls_client, client_context
from tests.support.rawhttp import read_response
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually

pytestmark = pytest.mark.both_loops

with_a_recorder = pytest.mark.skipif(build() != "pure Python",
                                     reason="the compiled transport carries only a ClientConnection")


class Boom(RuntimeError):
    pass


class Recorder(asyncio.Protocol):
    """Recorder: a protocol that records what its transport tells it, and raises Boom from the
    callback named ``fail``; ``made`` is called with the transport in connection_made."""

    def __init__(self, fail: str = "", made=None, on_data=None, on_resume=None) -> None:
        self.fail = fail
        self.made = made
        self.on_resume = on_resume   # called with the transport in resume_writing
        self.transport = None
        self.data: list[bytes] = []
        self.paused_at: list[int] = []
        self.resumed_at: list[int] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.on_data = on_data     # called with the protocol after each data_received

    def _maybe_fail(self, name: str) -> None:
        if self.fail == name:
            raise Boom(f"{name} failed")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._maybe_fail("connection_made")
        if self.made is not None:
            self.made(transport)

    def data_received(self, data: bytes) -> None:
        self.data.append(data)
        if self.on_data is not None:
            self.on_data(self)
        self._maybe_fail("data_received")

    def eof_received(self):
        self._maybe_fail("eof_received")
        return None

    def pause_writing(self) -> None:
        self.paused_at.append(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self.resumed_at.append(self.transport.get_write_buffer_size())
        if self.on_resume is not None:
            self.on_resume(self.transport)

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def recording(**options):
    """recording: a factory of Recorder(**options), and the list of the protocols it made."""
    protocols: list[Recorder] = []

    def factory() -> Recorder:
        protocols.append(Recorder(**options))
        return protocols[-1]

    return factory, protocols


@pytest.fixture
async def tls_proxy(make_proxy, tls_files):
    """tls_proxy: a proxy serving TLS with shop.test's certificate (its ServerTLS and its
    connections' factory serve the listeners made here)."""
    return await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)


@pytest.fixture
async def listen(tls_proxy):
    """listen(factory, sockets=None) -> TLSListener on 127.0.0.1 (closed after the test)."""
    made: list[TLSListener] = []

    def start(factory, sockets=None) -> TLSListener:
        if sockets is None:
            sockets = listening_sockets("127.0.0.1", 0)
            for sock in sockets:   # room for READS_PER_EVENT+ records queued unread
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        listener = TLSListener(asyncio.get_running_loop(), sockets, tls_proxy.tls, factory, 5.0, 16, 100)
        made.append(listener)
        return listener

    yield start
    for listener in made:
        listener.close()
        await listener.wait_closed()


def port_of(listener: TLSListener) -> int:
    return listener.sockets[0].getsockname()[1]


def reads_until_closed(sock: socket.socket) -> bool:
    """reads_until_closed: True once the peer closed (EOF, a reset or a TLS error), False if it
    stayed open for the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def errors_logged(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


async def served(listener: TLSListener, authority) -> int:
    """served: the status of a GET / sent through ``listener`` (within 5 seconds)."""
    async def get() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(listener), ssl=client_context(authority),
                                                       server_hostname="shop.test")
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            return (await read_response(reader)).status
        finally:
            writer.close()

    return await asyncio.wait_for(get(), 5)


# ------------------------------------------------------------- protocol faults


async def test_a_factory_that_raises_closes_the_connection_and_is_logged(listen, tls_files, caplog):
    def factory():
        raise Boom("no protocol today")

    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority))
    try:
        await asyncio.to_thread(tls.sendall, b"hello")
        assert await asyncio.to_thread(reads_until_closed, tls)
    finally:
        tls.close()
    assert not listener.handshaking
    [record] = errors_logged(caplog, "no protocol today")
    assert record.exc_info is not None


@with_a_recorder
@pytest.mark.parametrize("callback", ["connection_made", "data_received", "eof_received"])
async def test_a_protocol_callback_that_raises_cuts_the_connection_and_reaches_connection_lost(
        listen, tls_files, caplog, callback):
    factory, protocols = recording(fail=callback)
    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority))
    try:
        if callback == "data_received":
            await asyncio.to_thread(tls.sendall, b"hello")
        elif callback == "eof_received":
            await eventually(lambda: bool(protocols), timeout=5)
            tls.shutdown(socket.SHUT_WR)   # a FIN: the transport reads an EOF
        assert await asyncio.to_thread(reads_until_closed, tls)
    finally:
        tls.close()
    exc = await asyncio.wait_for(protocols[0].lost, 5)
    assert isinstance(exc, Boom) and str(exc) == f"{callback} failed"
    [record] = errors_logged(caplog, f"{callback} failed")
    assert record.exc_info is not None
    assert protocols[0].transport.is_closing()


# ------------------------------------------------------------- write buffer


@with_a_recorder
async def test_the_protocol_is_resumed_at_the_low_water_mark_not_only_when_the_buffer_is_empty(listen, tls_files):
    first, second = 200_000, 8192
    assert second <= LOW_WATER < first and first > HIGH_WATER

    def made(transport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        transport.write(b"a" * first)    # "want write" long before it is all sent
        transport.write(b"b" * second)   # queued behind it

    factory, protocols = recording(made=made)
    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority), 16384)

    def read_all() -> bytes:
        got = b""
        while len(got) < first + second:
            got += tls.recv(65536)
            time.sleep(0.001)
        return got

    try:
        await eventually(lambda: bool(protocols) and bool(protocols[0].paused_at), timeout=5)
        assert await asyncio.to_thread(read_all) == b"a" * first + b"b" * second
    finally:
        tls.close()
    protocol = protocols[0]
    assert protocol.paused_at == [first]
    # Resumed as soon as the first write was through: the second is still buffered then.
    assert protocol.resumed_at == [second]


@with_a_recorder
async def test_lowering_the_high_water_mark_below_what_is_buffered_pauses_the_protocol(listen, tls_files):
    size = 200_000
    buffered_before: list[int] = []

    def made(transport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        transport.set_write_buffer_limits(high=1 << 20)
        transport.write(b"a" * size)
        buffered_before.append(transport.get_write_buffer_size())
        transport.set_write_buffer_limits(high=HIGH_WATER)

    factory, protocols = recording(made=made)
    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority), 16384)
    try:
        await eventually(lambda: bool(protocols) and bool(protocols[0].paused_at), timeout=5)
        assert buffered_before == [size]   # not paused at 1 MiB
        assert protocols[0].paused_at == [size]
        assert protocols[0].transport.get_write_buffer_limits() == (HIGH_WATER // 4, HIGH_WATER)
    finally:
        tls.close()


@with_a_recorder
@pytest.mark.parametrize("ending", ["close", "abort", "raise"])
async def test_a_protocol_that_ends_its_connection_in_resume_writing_leaves_the_loop_serving(
        listen, tls_proxy, tls_files, ending):
    def resume(transport) -> None:
        if ending == "raise":
            raise Boom("resume_writing failed")
        getattr(transport, ending)()

    def made(transport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        transport.write(b"a" * 200_000)   # paused, then resumed once it is through

    factory, protocols = recording(made=made, on_resume=resume)
    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority), 16384)
    try:
        assert await asyncio.to_thread(reads_until_closed, tls)
    finally:
        tls.close()
    await asyncio.wait_for(protocols[0].lost, 5)
    assert protocols[0].resumed_at
    # The descriptor was closed with nothing watching it: connections that get its number next
    # are served (a watcher left on it aborts uvloop, or stalls one of them on asyncio's loop).
    served_by_proxy = listen(tls_proxy._client)
    for _ in range(3):
        assert await served(served_by_proxy, tls_files.authority) == 200


# ------------------------------------------------------------- reads


@with_a_recorder
async def test_one_read_event_reads_at_most_reads_per_event_records(listen, tls_files):
    records = READS_PER_EVENT + 2
    seen_in_first_event: list[int] = []

    def first_data(protocol: Recorder) -> None:
        # Runs once the read event that brought the first record has returned.
        protocol.on_data = None
        asyncio.get_running_loop().call_soon(lambda: seen_in_first_event.append(len(protocol.data)))

    def made(transport) -> None:
        transport.pause_reading()   # until all records wait in the socket

    factory, protocols = recording(made=made, on_data=first_data)
    listener = listen(factory)
    tls = await asyncio.to_thread(blocking_tls_client, port_of(listener), client_context(tls_files.authority))
    try:
        await asyncio.to_thread(tls.sendall, b"u" * (RECORD * records))   # one full record each
        await eventually(lambda: bool(protocols), timeout=5)
        server_sock = protocols[0].transport.get_extra_info("socket")

        def queued() -> int:
            return struct.unpack("i", fcntl.ioctl(server_sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

        await eventually(lambda: queued() >= records * (RECORD + 17), timeout=5)
        protocols[0].transport.resume_reading()
        await eventually(lambda: sum(map(len, protocols[0].data)) == RECORD * records, timeout=5)
    finally:
        tls.close()
    assert seen_in_first_event == [READS_PER_EVENT]
    assert [len(d) for d in protocols[0].data] == [RECORD] * records


# ------------------------------------------------------------- accepting


class FlakySocket(socket.socket):
    """FlakySocket: a listening socket whose accept raises the errors in ``errors`` first."""

    def __init__(self, errors: list[int]) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.errors = list(errors)
        self.bind(("127.0.0.1", 0))

    def accept(self):
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        return super().accept()


async def test_accept_errors_of_one_connection_are_skipped(listen, tls_proxy, tls_files, caplog):
    sock = FlakySocket([errno.EPROTO, errno.ECONNABORTED, errno.EPERM])
    listener = listen(tls_proxy._client, [sock])
    assert await served(listener, tls_files.authority) == 200
    assert sock.errors == []
    assert errors_logged(caplog, "cannot accept") == []


@pytest.mark.parametrize("codes", [[errno.EMFILE, errno.EMFILE], [errno.EINVAL]], ids=["EMFILE twice", "EINVAL"])
async def test_other_accept_errors_stop_accepting_for_a_while_logged_once(listen, tls_proxy, tls_files, caplog,
                                                                        codes):
    caplog.set_level(logging.WARNING)
    sock = FlakySocket(codes)
    listener = listen(tls_proxy._client, [sock])
    status = await asyncio.wait_for(served(listener, tls_files.authority), ACCEPT_RETRY * len(codes) + 5)
    assert status == 200 and sock.errors == []
    assert len(errors_logged(caplog, "cannot accept")) == 1
    assert [r for r in caplog.records if "accepting connections on" in r.getMessage()]
    assert [r for r in caplog.records if r.name == "asyncio"] == []   # nothing escaped to the loop


def test_listening_sockets_skips_a_family_that_cannot_be_made(monkeypatch):
    real = socket.getaddrinfo

    def with_a_bogus_family(host, port, *args, **kwargs):
        found = real(host, port, *args, **kwargs)
        return found + [(250, socket.SOCK_STREAM, 0, "", ("bogus", port))]

    monkeypatch.setattr(socket, "getaddrinfo", with_a_bogus_family)
    sockets = listening_sockets("127.0.0.1", 0)
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
    finally:
        for s in sockets:
            s.close()

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(250, socket.SOCK_STREAM, 0, "", ("bogus", 0))])
    with pytest.raises(OSError, match=r"no socket can be made for any address of 127.0.0.1:0"):
        listening_sockets("127.0.0.1", 0)


async def test_a_listener_that_cannot_listen_closes_the_sockets_it_was_given(tls_proxy):
    good = listening_sockets("127.0.0.1", 0)[0]
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # listen() is not supported
    with pytest.raises(OSError):
        TLSListener(asyncio.get_running_loop(), [good, datagram], tls_proxy.tls, tls_proxy._client, 5.0, 16, 100)
    assert good.fileno() == -1 and datagram.fileno() == -1


async def test_a_closed_listener_lists_no_sockets(listen):
    listener = listen(Recorder)   # never called: nothing connects
    sock = listener.sockets[0]
    listener.close()
    assert listener.sockets == []
    assert sock.fileno() == -1
