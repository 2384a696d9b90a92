"""tlsstream: TLS on listen and preview_listen, read and written on the socket itself (SPEC §12).

The event loop's TLS layer (uvloop's SSLProtocol) passes every record through two memory BIOs
and a chain of calls on each side. Here, as in nginx, the TLS object owns the connection's
socket: a read is one SSL_read from the socket, a write one SSL_write that encrypts and sends.
In bench/tls.py's keep-alive phase that is about a tenth less CPU per request.

- TLSListener: accepts on the listening sockets (the event loop watches them), starts each
  connection's handshake, bounds it by ``handshake_timeout`` (timeouts.client_header) and the
  handshakes in flight by ``max_handshakes`` (limits.max_connections: one over it is closed as
  it is accepted, before its hello is read, as nginx closes a connection past
  worker_connections, counted in ServerTLS.over_limit and warned of every LIMIT_LOG_EVERY
  seconds at most; Proxy.configure sets both bounds again on a reload), and then
  makes the connection's protocol (ClientConnection) and calls its connection_made. A handshake
  the TLS layer refuses (not TLS, no common version or cipher, a broken hello) is counted in
  ServerTLS.handshake_failures; one its peer cut or its timeout ended is not.
- TLSTransport: the asyncio transport of one connection (write, writelines, close, abort,
  pause_reading, resume_reading, get_extra_info, the write buffer's size and limits). Its
  protocol gets data_received, eof_received, pause_writing, resume_writing and connection_lost,
  as from the event loop's transports; connection_lost is called soon, never from inside a call
  the protocol made. A protocol callback that raises cuts its connection and is logged with its
  traceback (the factory too); nothing escapes to the event loop.
- accept: errors that concern one connection (ECONNABORTED, EPROTO, EPERM, the network errors
  accept(2) passes on) are skipped; after any other (EMFILE and the like) accepting stops for
  ACCEPT_RETRY seconds, logged once (per socket) until accepting works again.

Reads: with OpenSSL's read-ahead off (Python's default), SSL_read takes one record from the
socket and nothing past it, so the socket's readiness tells all there is to read. A read asks
for a whole record's plaintext (RECORD); up to READS_PER_EVENT records are read in a row while
full ones come (an upload), so a small request costs one read and no "want read" error.
Writes: when the socket fills, SSL_write answers "want write" having taken part of the data,
and must be called again with the same bytes once the socket drains (OpenSSL's rule), so they
are kept in ``_retry`` and later writes gather behind them; past HIGH_WATER buffered bytes the
protocol is paused (pause_writing), and resumed as soon as a write brings them to LOW_WATER.
Close: what is buffered is sent, then a close_notify (RFC 8446 §6.1); what the peer sent and no
one read is discarded, then the socket is closed without waiting for the peer's close_notify, as
nginx does; abort closes at once. A refused handshake discards what it did not read too.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Final

from .tls import SocketOwner

if TYPE_CHECKING:
    from .downstream import ClientConnection
    from .tls import ServerTLS

__all__ = ["TLSListener", "TLSTransport", "listening_sockets"]

log = logging.getLogger("cutover.proxy")

RECORD: Final = 16384            # a TLS record's largest plaintext (RFC 8446 §5.1)
READS_PER_EVENT: Final = 4
ACCEPTS_PER_EVENT: Final = 64
DISCARD_READS: Final = 4         # reads of 64 KiB at most before a close (_discard_unread)
ACCEPT_RETRY: Final = 0.5        # seconds without accepting after running out of descriptors
LIMIT_LOG_EVERY: Final = 10.0    # seconds between two warnings that max_handshakes were in flight
HIGH_WATER: Final = 64 * 1024    # the event loop's transports' defaults
LOW_WATER: Final = 16 * 1024
# accept's errors that concern only the connection it would have returned (accept(2) on Linux:
# "treat them like EAGAIN"); after any other, accepting stops for ACCEPT_RETRY (no descriptors
# left, no memory) rather than failing in a loop.
_CONNECTION_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                                     errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                                     errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ECONNRESET})


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """listening_sockets: bound (not yet listening) sockets for every address ``host`` has, as the
    event loop's create_server binds them (SO_REUSEADDR; an IPv6 one IPv6 only). Raises OSError
    naming the address that could not be bound."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    made: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in found:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue    # a family this machine has no sockets of (no IPv6): as create_server
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                                         f"{(exc.strerror or str(exc)).lower()}") from None
    except BaseException:
        for sock in made:
            sock.close()
        raise
    if not made:
        raise OSError(errno.EAFNOSUPPORT, f"no socket can be made for any address of {host or '*'}:{port}")
    return made


class TLSListener:
    """TLSListener: accepts TLS connections on ``sockets``; made by Proxy.start for a TLS listener.

    It stands where the event loop's Server would: ``sockets``, close (stop accepting) and
    wait_closed (which also cuts handshakes still in flight).
    """

    def __init__(self, loop: Any, sockets: list[socket.socket], tls: "ServerTLS",
                 protocol_factory: "Callable[[], ClientConnection]", handshake_timeout: float,
                 backlog: int, max_handshakes: int) -> None:
        self.loop = loop
        self.sockets = sockets          # empty once closed, as the event loop's Server's
        self._own = list(sockets)
        self.tls = tls
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.handshaking: set[TLSTransport] = set()
        self._limit_logged = -LIMIT_LOG_EVERY    # loop time of the last warning about the bound
        self._unwarned = 0              # connections this listener closed at it since that warning
        self._failing: dict[int, int] = {}   # a socket's descriptor: the errno its accepting stopped for
        self.closed = False
        try:
            for sock in sockets:
                sock.setblocking(False)
                sock.listen(backlog)
                self._watch(sock)
        except BaseException:
            self.close()                # nothing half listening is left behind
            raise

    def _watch(self, sock: socket.socket) -> None:
        if not self.closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_GONE:
                    continue
                self._stop_for(sock, exc)
                return
            if self._failing and self._failing.pop(sock.fileno(), 0):
                log.warning("accepting connections on %s again", sock.getsockname())
            if len(self.handshaking) >= self.max_handshakes:
                conn.close()
                self.tls.over_limit += 1       # listen's and preview_listen's
                self._unwarned += 1
                self._over_limit_warning(sock)
                continue
            try:
                TLSTransport(self, conn, peer)
            except (OSError, ssl.SSLError) as exc:   # the connection is gone already
                log.debug("a TLS connection from %s could not start: %s", peer, exc)
                conn.close()

    def _over_limit_warning(self, sock: socket.socket) -> None:
        """_over_limit_warning: at most one warning per LIMIT_LOG_EVERY seconds, with how many
        connections were closed since the one before."""
        now = self.loop.time()
        if now - self._limit_logged < LIMIT_LOG_EVERY:
            return
        log.warning("%d TLS handshakes in flight (limits.max_connections): %d new connections on %s "
                    "closed as they were accepted since the last such warning", len(self.handshaking),
                    self._unwarned, sock.getsockname())
        self._limit_logged = now
        self._unwarned = 0

    def _stop_for(self, sock: socket.socket, exc: OSError) -> None:
        """_stop_for: accept failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) or
        for a reason of its own: stop accepting on ``sock`` for ACCEPT_RETRY seconds. It is
        logged once until accepting works again, not on every retry."""
        code = exc.errno or -1
        if self._failing.get(sock.fileno()) != code:
            self._failing[sock.fileno()] = code
            log.error("cannot accept connections on %s (%s); trying again every %.1f s",
                      sock.getsockname(), exc.strerror or exc, ACCEPT_RETRY)
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(ACCEPT_RETRY, self._watch, sock)

    def close(self) -> None:
        """close: stop accepting and close the listening sockets; handshakes in flight go on."""
        if self.closed:
            return
        self.closed = True
        self.sockets = []
        for sock in self._own:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """wait_closed: cut the handshakes still in flight (after close)."""
        for transport in list(self.handshaking):
            transport.abort()


class TLSTransport:
    """TLSTransport: one TLS connection accepted by a TLSListener, and its transport once its
    handshake is done (see the module docstring)."""

    def __init__(self, listener: TLSListener, sock: socket.socket, peer: Any) -> None:
        self._listener = listener
        self._loop = listener.loop
        self._sock = sock
        self._peer = peer
        sock.setblocking(False)   # before wrapping: the TLS object takes its mode from it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        # The C object itself (ssl.SSLContext.wrap_socket would make Python's SSLSocket around
        # it): its read, write and do_handshake are called with no Python frame between.
        self._owner = SocketOwner()
        context: Any = listener.tls.context     # _wrap_socket: the C method, not in typeshed
        self._tls: Any = context._wrap_socket(sock, True, None, owner=self._owner)
        self._owner.tls = self._tls
        self._read: Any = self._tls.read
        self._write: Any = self._tls.write
        self._protocol: "ClientConnection | None" = None
        self._reading = True        # the protocol has not paused reading
        self._closing = False       # close() or abort() was called (or the connection failed)
        self._lost = False          # the socket is closed
        self._retry: bytes | None = None   # bytes SSL_write must be called with again
        self._backlog: list[bytes] = []    # writes behind _retry
        self._buffered = 0          # bytes of _retry and _backlog
        self._write_paused = False  # the protocol was told pause_writing
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._shaking_writes = False     # the handshake waits for the socket to drain
        self._timer: Any = None
        self._loop.add_reader(self._fd, self._handshake)   # first: should it fail, nothing is left behind
        listener.handshaking.add(self)
        self._timer = self._loop.call_later(listener.handshake_timeout, self._handshake_expired)

    # --------------------------------------------------------------- handshake

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            if self._shaking_writes:
                self._shaking_writes = False
                self._loop.remove_writer(self._fd)
            return
        except ssl.SSLWantWriteError:
            if not self._shaking_writes:
                self._shaking_writes = True
                self._loop.add_writer(self._fd, self._handshake)
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self._cut(None)        # the peer left: not a refusal
            return
        except ssl.SSLError as exc:
            self._listener.tls.handshake_failures += 1
            log.debug("TLS handshake from %s refused: %s", self._peer, exc)
            self._discard_unread()
            self._cut(None)
            return
        except OSError:
            self._cut(None)
            return
        if self._shaking_writes:
            self._shaking_writes = False
            self._loop.remove_writer(self._fd)
        self._timer.cancel()
        self._timer = None
        self._listener.handshaking.discard(self)
        self._loop.add_reader(self._fd, self._readable)
        try:
            protocol = self._protocol = self._listener.protocol_factory()
            protocol.connection_made(self)
        except Exception as exc:
            self._protocol_failed(exc)

    def _handshake_expired(self) -> None:
        self._timer = None
        log.debug("TLS handshake from %s not done within timeouts.client_header", self._peer)
        self._cut(None)

    # --------------------------------------------------------------- reads

    def _readable(self) -> None:
        protocol = self._protocol
        assert protocol is not None
        for _ in range(READS_PER_EVENT):
            try:
                data = self._read(RECORD)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                data = b""
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
            if not data:
                self._eof()
                return
            try:
                protocol.data_received(data)
            except Exception as exc:
                self._protocol_failed(exc)
                return
            if len(data) < RECORD or not self._reading or self._closing:
                return

    def _eof(self) -> None:
        self._stop_reading()
        assert self._protocol is not None
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._protocol_failed(exc)
            return
        if not keep_open:
            self.close()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._lost:
                self._loop.remove_reader(self._fd)

    def pause_reading(self) -> None:
        if not self._closing:
            self._stop_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # --------------------------------------------------------------- writes

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if self._retry is not None:
            self._backlog.append(data)
        else:
            try:
                self._write(data)
                return
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._retry = data
                self._loop.add_writer(self._fd, self._writable)
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
        self._buffered += len(data)
        if not self._write_paused and self._buffered > self._high:
            self._pause_protocol()

    def _pause_protocol(self) -> None:
        self._write_paused = True
        assert self._protocol is not None
        try:
            self._protocol.pause_writing()
        except Exception as exc:
            self._protocol_failed(exc)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _writable(self) -> None:
        while self._retry is not None:
            data = self._retry
            try:
                self._write(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
            self._buffered -= len(data)
            backlog = self._backlog
            if backlog:
                self._retry = b"".join(backlog) if len(backlog) > 1 else backlog[0]
                self._backlog = []
            else:
                self._retry = None
            if self._write_paused and self._buffered <= self._low and not self._closing:
                self._write_paused = False    # below the low-water mark: the protocol may write
                assert self._protocol is not None
                try:
                    self._protocol.resume_writing()
                except Exception as exc:
                    self._protocol_failed(exc)
                    return
                if self._lost:
                    return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish_close()

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        if not self._write_paused and self._buffered > high and self._protocol is not None:
            self._pause_protocol()

    def can_write_eof(self) -> bool:
        return False

    # --------------------------------------------------------------- ends

    def close(self) -> None:
        """close: stop reading; send what is buffered, then a close_notify, then close."""
        if self._closing:
            return
        self._stop_reading()
        self._closing = True
        if self._retry is None:
            self._finish_close()

    def _finish_close(self) -> None:
        try:
            self._tls.shutdown()   # sends close_notify; the peer's is not waited for
        except (ssl.SSLError, OSError, ValueError):
            pass
        self._discard_unread()
        self._cut(None)

    def _discard_unread(self) -> None:
        """_discard_unread: read what the peer sent and nobody will read: a socket closed with
        unread bytes sends a reset, which can overtake the last bytes written to it."""
        try:
            for _ in range(DISCARD_READS):
                if len(self._sock.recv(65536)) < 65536:
                    return
        except OSError:
            pass

    def abort(self) -> None:
        """abort: close at once, dropping what is buffered."""
        self._cut(None)

    def is_closing(self) -> bool:
        return self._closing

    def _fail(self, exc: Exception) -> None:
        log.debug("TLS connection from %s failed: %s", self._peer, exc)
        self._cut(exc)

    def _protocol_failed(self, exc: Exception) -> None:
        """_protocol_failed: a call into the protocol raised: the connection is cut (and its
        protocol told connection_lost if it was made), as the event loop's transports do."""
        log.error("TLS connection from %s cut: its protocol raised %r", self._peer, exc, exc_info=exc)
        self._cut(exc)

    def _cut(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._stop_reading()
        self._closing = True
        self._lost = True
        # Whatever watched for writes (a retry, the handshake) stops before the descriptor is
        # closed: a watcher left on it aborts uvloop, and on asyncio's loop hits whichever
        # connection gets its number next. (_writable can be inside resume_writing, its
        # _retry already None, when the protocol closes or raises.)
        self._loop.remove_writer(self._fd)
        if self._protocol is None:          # still handshaking
            self._listener.handshaking.discard(self)
        self._retry = None
        self._backlog = []
        self._buffered = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sock.close()
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, exc)

    # --------------------------------------------------------------- asyncio.Transport's rest

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return self._sock.getsockname() if not self._lost else default
        if name == "socket":
            return self._sock
        if name == "ssl_object":
            return self._tls
        if name == "sslcontext":
            return self._tls.context
        if name == "peercert":
            return self._tls.getpeercert()
        if name == "cipher":
            return self._tls.cipher()
        if name == "compression":
            return self._tls.compression()
        return default

    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol
