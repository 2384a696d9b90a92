"""UpstreamConnection: the proxy's connection to one backend server.

It owns the response parser and tells its server's pool whether it may be
reused. While an exchange uses it, parser events go to that exchange; while it
sits idle in the pool any byte or EOF from the server closes it. After a 101
it becomes one half of a byte tunnel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from .exchange import RESPONDING
from .headers import RESPONSE_NAMES, RESPONSE_SPECIAL, split_into


if TYPE_CHECKING:
    from .backends import Server
    from .downstream import ClientConnection
    from .exchange import Exchange
    from .server import Proxy

log = logging.getLogger("cutover.proxy")

# Idle connections kept per server; more are closed when released.
MAX_IDLE_PER_SERVER: Final = 512


class _SkipBody(Exception):
    """Raised from a parser callback to end a response to HEAD at its head."""


class _Unexpected(Exception):
    """Raised from a parser callback when the upstream sends what nobody asked for."""


class UpstreamConnection:
    """UpstreamConnection: one keep-alive connection to a backend; made by Proxy.connect."""

    __slots__ = ("proxy", "server", "transport", "parser", "exchange", "parts", "special",
                 "got_bytes", "reused", "active_at", "tunnel", "closed", "skip_body",
                 "keep_alive", "reading_paused", "ended", "out", "flush_due")

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

    # ------------------------------------------------------------ pool side

    def release(self) -> None:
        """release: the exchange is done with this connection; keep it idle or close it.

        Only a connection with nothing left to send goes back to the pool.
        """
        self.exchange = None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        server = self.server
        if (self.closed or not server.healthy or len(server.idle) >= MAX_IDLE_PER_SERVER
                or self.proxy.closing or self.out or self.transport.get_write_buffer_size()):
            self.close()
            return
        self.active_at = self.proxy.clock
        server.idle.append(self)

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
            try:
                self.server.idle.remove(self)
            except ValueError:
                pass

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
            try:
                self.server.idle.remove(self)
            except ValueError:
                pass

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        ex = self.exchange
        if ex is None:
            self.close()   # nothing was asked: a stray byte poisons the connection
            return
        self.got_bytes = True
        self.active_at = self.proxy.clock
        client = ex.client
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if self.exchange is not None:
                self.exchange.upgraded(data[exc.args[0]:])
        except HttpParserCallbackError as exc:
            if self.skip_body:
                self.skip_body = False
                self.parser = HttpResponseParser(self)
                ex.response_complete(self.keep_alive)
            elif self.ended:
                # The response was whole; what followed it poisons only this connection.
                self.ended = False
                ex.response_complete(False)
            elif isinstance(exc.__context__, _Unexpected):
                self._invalid(str(exc.__context__))
            else:
                log.error("response handling failed for %s", self.server.address, exc_info=exc.__context__)
                self._invalid("unexpected response")
        except HttpParserError as exc:
            if self.ended:
                self.ended = False
                ex.response_complete(False)
            else:
                self._invalid(str(exc))
        else:
            if self.ended:
                self.ended = False
                ex.response_complete(self.keep_alive and not self.closed)
        client.flush_soon()

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
            ex.client.pause_reading(1)
        elif self.tunnel is not None:
            self.tunnel.pause_reading(1)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume_reading(1)
        elif self.tunnel is not None:
            self.tunnel.resume_reading(1)

    # ----------------------------------------------- httptools callbacks

    # parts and special are reset once consumed, so no on_message_begin is needed.
    # There is no on_status either: reason phrases are regenerated (RFC 9112 §4 lets
    # clients ignore them), which saves a callback per response.

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
        ex.response_head(status, parts, special)
        if ex.head_only and status >= 200 and status != 204 and status != 304:
            self.keep_alive = parser.should_keep_alive()
            self.skip_body = True
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
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
