"""UpstreamConnection: the proxy's connection to one backend server.

It owns the response parser and tells its server's pool whether it may be
reused. While an exchange uses it, parser events go to that exchange; while it
sits idle in the pool any byte or EOF from the server closes it. It is never
pooled while it may still carry bytes of a finished exchange: bytes after the
end of a response in the same read, or a HEAD/204/304 answer that announced a
body (the server may send it anyway, and it would be read as the next answer).
What the server sends before a response head ends, or in its trailers, is
bounded by limits.max_response_header_bytes. After a 101 it becomes one half of
a byte tunnel.
"""

from __future__ import annotations

import fcntl
import logging
import termios
from typing import TYPE_CHECKING, Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from . import pool
from .exchange import RESPONDING, SENT
from .flow import GATHER_BYTES, PAUSE_UPSTREAM
from .headers import RESPONSE_NAMES, RESPONSE_SPECIAL, HeldReads, split_into


if TYPE_CHECKING:
    from .backends import Server
    from .downstream import ClientConnection
    from .exchange import Exchange
    from .server import Proxy

log = logging.getLogger("cutover.proxy")


class _SkipBody(Exception):
    """Raised from a parser callback to end a response to HEAD at its head."""


class _Unexpected(Exception):
    """Raised from a parser callback when the upstream sends what nobody asked for."""


class _OverLimit(Exception):
    """Raised from a parser callback when a response head is over limits.max_response_header_bytes."""


class UpstreamConnection:
    """UpstreamConnection: one keep-alive connection to a backend; made by Proxy.connect."""

    __slots__ = ("proxy", "server", "transport", "parser", "exchange", "parts", "special",
                 "got_bytes", "reused", "active_at", "tunnel", "closed", "skip_body",
                 "keep_alive", "reading_paused", "ended", "out", "flush_due", "head_bytes", "progress",
                 "held", "tail", "dirty")

    def __init__(self, proxy: "Proxy", server: "Server") -> None:
        self.proxy = proxy
        self.server = server
        self.transport: Any = None   # the event loop's transport, from connection_made
        self.parser = HttpResponseParser(self)
        self.exchange: "Exchange | None" = None
        self.parts: list[bytes] = []    # pass-through header parts of the response head being read
        self.special: list = []         # its (lowercase name, value) specials, see headers.py
        self.got_bytes = False
        self.reused = False
        self.active_at = 0.0            # proxy clock of the last byte moved for the exchange
        self.tunnel: "ClientConnection | None" = None
        self.closed = False
        self.skip_body = False
        self.keep_alive = False
        self.reading_paused = False
        self.out: list[bytes] = []     # request bytes to write at the end of this loop pass, see send
        self.flush_due = False         # queued in Proxy.flush_soon
        # The final response ended inside the current feed_data; it is completed after
        # feed_data returns, so the connection is never reused while still being parsed.
        self.ended = False
        # Raw bytes since the exchange's last progress (its request sent, its final head
        # complete, body bytes): what an unfinished head or trailer section has taken so far,
        # bounded by limits.max_response_header_bytes. Reset by Exchange.attach.
        self.head_bytes = 0
        self.progress = False           # the current read brought progress
        self.held = HeldReads()   # reads of an unfinished head not parsed yet, see gather
        self.tail = b""                 # the last bytes of that head parsed so far
        self.dirty = False              # may still carry bytes of a finished exchange: never pooled

    # ------------------------------------------------------------ pool side

    def release(self) -> None:
        """release: the exchange is done with this connection; keep it idle (pool.put) or close it.

        Only a connection with nothing left to send goes back to the pool, and none
        while the proxy shuts down.
        """
        self.exchange = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        proxy = self.proxy
        if (self.closed or proxy.closing or self.out or self.transport.get_write_buffer_size()
                or not pool.put(self, proxy.clock)):
            self.close()

    def has_unread(self) -> bool:
        """has_unread: whether bytes this proxy has not read yet wait on the socket (FIONREAD).

        Called by pool.take before it hands out an idle connection of a server that has
        sent stray bytes before: a syscall, so never for servers that have not.
        """
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            return fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0"
        except OSError:
            return True   # a socket that cannot say is not trusted either

    def send(self, data: bytes) -> None:
        """send: write ``data`` at the end of this pass of the event loop (see Proxy.flush_soon)."""
        self.out.append(data)
        if not self.flush_due:
            self.flush_due = True
            self.proxy.flush_soon(self)

    def flush(self) -> None:
        """flush: write what send gathered, in one call."""
        self.flush_due = False
        out = self.out
        if out:
            self.out = []
            if not self.closed:
                self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def close(self) -> None:
        """close: close the connection and take it out of the pool at once; unsent bytes are dropped."""
        self.exchange = None
        self.out = []
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            pool.discard(self)

    # ------------------------------------------------------- asyncio events

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections -= 1
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel_closed()
            return
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self.got_bytes, self.reused, exc is None)
        else:
            pool.discard(self)   # the server closed an idle one

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.out_env.bytes_out += len(data)
            tunnel.transport.write(data)
            return
        ex = self.exchange
        if ex is None:
            self.server.strays += 1
            self.close()   # nothing was asked: a stray byte poisons the connection
            return
        self.got_bytes = True
        self.active_at = self.proxy.clock
        client = ex.client
        if self.head_bytes and ex.state == SENT:
            data = self.gather(data)   # the previous read ended inside the response head
            if not data:
                return
        else:
            self.head_bytes += len(data)
        self.progress = False
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if self.exchange is not None:
                self.exchange.upgraded(data[exc.args[0]:])
        except HttpParserCallbackError as exc:
            if self.skip_body:
                self.skip_body = False
                self.parser = HttpResponseParser(self)
                # The answer to HEAD ended at its head: anything after it in this read is stray.
                clean = (self.tail + data)[-4:] == b"\r\n\r\n"
                if not clean:
                    self.server.strays += 1
                ex.response_complete(self.keep_alive and clean and not self.dirty)
            elif self.ended:
                # The response was whole; what followed it poisons only this connection.
                self.ended = False
                self.server.strays += 1
                ex.response_complete(False)
            elif isinstance(exc.__context__, _OverLimit):
                self.over_limit("head")
            elif isinstance(exc.__context__, _Unexpected):
                self._invalid(str(exc.__context__))
            else:
                log.error("response handling failed for %s", self.server.address, exc_info=exc.__context__)
                self._invalid("unexpected response")
        except HttpParserError as exc:
            if self.ended:
                self.ended = False
                self.server.strays += 1
                ex.response_complete(False)
            else:
                self._invalid(str(exc))
        else:
            if self.ended:
                self.ended = False
                ex.response_complete(self.keep_alive and not self.closed and not self.dirty)
            elif self.exchange is ex:
                # The exchange goes on in a later read. Without progress this read was head,
                # trailers or framing only.
                if self.progress:
                    self.head_bytes = 0
                elif self.head_bytes > self.proxy.max_response_header_bytes:
                    self.over_limit("head" if ex.state == SENT else "trailers")
                    return
                else:
                    self.tail = data[-3:]
        client.flush_soon()

    def gather(self, data: bytes) -> bytes:
        """gather: called by data_received for a read of a response head begun in an earlier read.

        As ClientConnection.gather: reads that cannot end the head are held (b"" is
        returned) until one may end it or GATHER_BYTES wait, and then parsed in one
        piece. Every byte counts as it arrives: before the final head ends, they
        are all head bytes (interim 1xx heads included).
        """
        self.head_bytes += len(data)
        if self.head_bytes > self.proxy.max_response_header_bytes:
            self.over_limit("head")
            return b""
        return self.held.take(self.tail, data, GATHER_BYTES)

    def over_limit(self, part: str) -> None:
        """over_limit: called by data_received and gather when the response's head or trailers
        went over limits.max_response_header_bytes.

        As nginx and HAProxy do: 502 (or the client cut, once the head went out),
        this connection closed, counted on the server.
        """
        self.server.heads_over_limit += 1
        ex = self.exchange
        if ex is not None:
            ex.reply_error(502, f"upstream response {part} over limits.max_response_header_bytes "
                           f"({self.proxy.max_response_header_bytes})")
        self.close()

    def _invalid(self, message: str) -> None:
        self.transport.close()
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_invalid(message)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.pause_reading(PAUSE_UPSTREAM)
        elif self.tunnel is not None:
            self.tunnel.pause_reading(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume_reading(PAUSE_UPSTREAM)
        elif self.tunnel is not None:
            self.tunnel.resume_reading(PAUSE_UPSTREAM)

    # ----------------------------------------------- httptools callbacks

    # parts and special are reset once consumed. There is no on_status: reason phrases
    # are regenerated (RFC 9112 §4 lets clients ignore them), which saves a callback per
    # response.

    def on_message_begin(self) -> None:
        if self.ended:
            # A message begins after the response ended, in the same read: the server sent
            # what nobody asked for, and it would be read as the next request's answer.
            raise _Unexpected("response bytes after the response ended")

    def on_header(self, name: bytes, value: bytes) -> None:
        split_into(self.parts, self.special, name, value, RESPONSE_SPECIAL, RESPONSE_NAMES)

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None or self.ended:
            raise _Unexpected("response bytes after the response ended")
        parser = self.parser
        status = parser.get_status_code()
        if status < 100 or status > 599:
            raise _Unexpected(f"status code {status} outside 100-599")   # RFC 9110 §15
        parts, special = self.parts, self.special
        self.parts = []
        self.special = []
        limit = self.proxy.max_response_header_bytes
        if self.head_bytes > limit and fields_size(parts, special) > limit:
            raise _OverLimit   # the head ended in this read, which may hold body bytes too: counted exactly
        ex.response_head(status, parts, special)
        if status < 200:
            return
        self.progress = True
        if ex.head_only or status == 204 or status == 304:
            if announces_body(special):
                # RFC 9110 §9.3.2, §15.3.5, §15.4.5: no content follows, whatever the
                # framing says; a server that sends it anyway would answer the next request.
                self.dirty = True
            if ex.head_only and status != 204 and status != 304:
                self.keep_alive = parser.should_keep_alive()
                self.skip_body = True
                raise _SkipBody

    def on_body(self, body: bytes) -> None:
        self.progress = True
        ex = self.exchange
        if ex is None:
            return   # the exchange already answered (e.g. a 502 for an unknown coding)
        if ex.rechunk:
            ex.response_body(body)
        else:
            ex.client.out.append(body)

    def on_message_complete(self) -> None:
        # Fields after the head were trailers: this proxy drops response trailers, and
        # they must never reach the next response's head.
        if self.parts or self.special:
            self.parts = []
            self.special = []
        ex = self.exchange
        if ex is not None and ex.state == RESPONDING:
            self.ended = True
            self.keep_alive = self.parser.should_keep_alive()


def fields_size(parts: list[bytes], special: list) -> int:
    """fields_size: bytes of a response head's header fields as on_header sorted them; called by
    UpstreamConnection.on_headers_complete when the raw bytes alone could be over the limit."""
    size = sum(map(len, parts))
    for name, value in special:
        size += len(name) + len(value) + 4
    return size


def announces_body(special: list) -> bool:
    """announces_body: whether a head's framing fields announce content (a non-zero length, or a
    coding); called by UpstreamConnection.on_headers_complete for answers that carry none."""
    for name, value in special:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
