"""ClientConnection: one client connection on the listener.

It owns the request parser, the keep-alive and header timers (checked by the
proxy's ticker against its coarse clock) and the pipeline: the queue of
exchanges, answered strictly in order, the first being the active one. After a
successful Upgrade it becomes one half of a byte tunnel.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from .errors import Outcome, error_response
from .exchange import Exchange
from .flow import (CHUNK_LINE_BYTES, GATHER_BYTES, HEAD_SLACK, PAUSE_BUFFER, PAUSE_PIPELINE, PIPELINE_DEPTH,
                   TRAILER_SLACK, UPGRADE_BUFFER_HIGH)
from .headers import (REQUEST_NAMES, REQUEST_SPECIAL, HeaderError, RequestHead, HeldReads, origin_form,
                      rewrite_request, split_into)

if TYPE_CHECKING:
    from .backends import Environment
    from .server import Proxy
    from .upstream import UpstreamConnection


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request head that is refused."""


class ClientConnection:
    """ClientConnection: the downstream side of the proxy, made by the listener."""

    __slots__ = ("proxy", "transport", "parser", "client_ip", "queue", "reading", "url",
                 "parts", "special", "head_size", "in_head", "head_deadline", "idle_deadline",
                 "out", "paused", "write_paused", "closing", "closed", "tunnel", "upgrade_buffer", "refused",
                 "preview", "closed_at", "trailer_bytes", "read_len", "flush_due", "held", "tail",
                 "received", "out_env", "total_in", "total_out", "logged_in", "logged_out")

    def __init__(self, proxy: "Proxy", preview: bool = False) -> None:
        self.proxy = proxy
        self.preview = preview        # accepted on preview_listen: every request goes to the idle env
        self.closed_at = 0.0          # proxy clock when close() began flushing (see Proxy._check_timeouts)
        self.trailer_bytes = 0        # raw bytes read while a chunked request body was in progress
        self.read_len = 0             # length of the read being parsed
        self.flush_due = False        # queued in Proxy.flush_soon
        # Byte counts of the environments (Environment.bytes_in/bytes_out): bytes read and not yet
        # counted for an environment (Exchange.proceed and finish count them for theirs), and the
        # environment whose answer is being written (set by Exchange when it answers).
        self.received = 0
        self.out_env: "Environment" = proxy.unrouted_env
        # Bytes read and written on this connection (tunnels aside), and how many of them the
        # access log already gave to finished requests (Exchange.finish).
        self.total_in = 0
        self.total_out = 0
        self.logged_in = 0
        self.logged_out = 0
        self.transport: Any = None   # the event loop's transport, from connection_made
        self.parser = HttpRequestParser(self)
        self.client_ip = b"-"
        # A list, not a deque: list operations compile to direct calls. Reading pauses
        # past PIPELINE_DEPTH, so it holds that many plus what one read carried.
        self.queue: list[Exchange] = []
        self.reading: Exchange | None = None   # the exchange whose request body is being parsed
        self.url = b""
        self.parts: list[bytes] = []    # pass-through header parts of the head being read
        self.special: list = []         # its (lowercase name, value) specials, see headers.py
        self.head_size = 0              # raw bytes received while a head was in progress
        self.in_head = False            # a request has begun (its first byte came) and its head is not complete
        self.held = HeldReads()   # reads of that head not parsed yet, see gather
        self.tail = b""                 # the last bytes of that head parsed so far, see gather
        self.head_deadline = 0.0
        self.idle_deadline = 0.0
        self.out: list[bytes] = []    # response bytes gathered during one event loop pass, see flush
        self.paused = 0
        self.write_paused = False     # the transport's write buffer is over its high-water mark
        self.closing = False          # shutting down: close after the current response
        self.closed = False
        self.tunnel: "UpstreamConnection | None" = None
        self.upgrade_buffer: list[bytes] | None = None
        self.refused: tuple[int, str] | None = None

    # ------------------------------------------------------- asyncio events

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        proxy = self.proxy
        proxy.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0].encode()
        self.idle_deadline = proxy.clock + proxy.client_header_timeout
        # Made while the proxy stops (a TLS handshake that was in flight): it is served one
        # request, then closed, as the connections shutdown found were.
        self.closing = proxy.closing
        if len(proxy.connections) > proxy.max_connections:
            self.write(error_response(503, "too many connections (limits.max_connections)"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel = None
            tunnel.close()
        queue, self.queue = self.queue, []
        for ex in queue:
            ex.client_gone()
        self.proxy.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.out_env.bytes_in += len(data)   # the tunnel's environment (see start_tunnel)
            tunnel.transport.write(data)
            return
        self.received += len(data)
        self.total_in += len(data)
        if self.closed or self.refused is not None:
            return
        if self.upgrade_buffer is not None:
            self.upgrade_buffer.append(data)
            if sum(map(len, self.upgrade_buffer)) > UPGRADE_BUFFER_HIGH:
                self.pause_reading(PAUSE_BUFFER)
            return
        if self.in_head:
            data = self.gather(data)   # the previous read ended inside a request head
            if not data:
                return
        reading = self.reading
        self.read_len = len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self.upgrade_requested(data[exc.args[0]:])
        except HttpParserCallbackError:
            self.request_refused()
        except HttpParserError as exc:
            self.refused = (400, f"malformed request: {exc}")
            self.request_refused()
        else:
            limit = self.proxy.max_header_bytes
            if self.in_head:
                # A head still incomplete after this read. Its complete fields are counted
                # exactly; the raw bytes bound the field httptools is still collecting (one
                # read of slack: the read that began the head may also end a body). gather
                # counted the bytes of a head begun earlier; one begun in this read is 0.
                if not self.head_size:
                    self.head_size = len(data)
                self.tail = data[-3:]
                if self.head_size > limit + HEAD_SLACK or self.head_fields_size() > limit:
                    self.refused = (431, "request header block over limits.max_header_bytes")
                    self.request_refused()
            elif reading is not None and reading is self.reading and reading.head.chunked:
                # Chunk framing and trailers are not body: bound them like a head
                # (one read of slack, as what ends a body may share a read with more).
                self.trailer_bytes += len(data)
                framing = self.trailer_bytes - reading.body_bytes
                if framing > limit + TRAILER_SLACK + CHUNK_LINE_BYTES * reading.chunks:
                    self.reading = None
                    reading.request_broken(431, "request trailers over limits.max_header_bytes")

    def gather(self, data: bytes) -> bytes:
        """gather: called by data_received for a read of a head begun in an earlier read.

        httptools grows a field that spans reads by concatenating the pieces, so a
        field in n pieces would cost O(n * size): reads that cannot end the head
        are held (b"" is returned) until one may end it or GATHER_BYTES wait (at
        most max_header_bytes, so that complete fields are still counted about as
        often as the limit needs), and then parsed in one piece. Every raw byte is
        counted as it arrives.
        """
        limit = self.proxy.max_header_bytes
        self.head_size += len(data)
        if self.head_size > limit + HEAD_SLACK:
            self.refused = (431, "request header block over limits.max_header_bytes")
            self.request_refused()
            return b""
        return self.held.take(self.tail, data, min(GATHER_BYTES, limit))

    def eof_received(self) -> bool:
        # As nginx does: a client that closes its side has given up on what it
        # asked, so the connection closes and its exchanges end as CLIENT_GONE.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.reading_paused = True
            tunnel.transport.pause_reading()
            return
        if self.queue:
            conn = self.queue[0].conn
            if conn is not None and not conn.reading_paused:
                conn.reading_paused = True
                conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.reading_paused = False
            tunnel.transport.resume_reading()
            return
        if self.queue:
            conn = self.queue[0].conn
            if conn is not None and conn.reading_paused:
                conn.reading_paused = False
                # The pause was the client's: timeouts.upstream_response counts from now, not
                # from the last byte before it (a tick before the next byte would cut it).
                conn.active_at = self.proxy.clock
                conn.transport.resume_reading()

    # ----------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        # client_header runs from a request's first byte, its method included; empty
        # lines before a request line are skipped by the parser (RFC 9112 §2.2).
        self.in_head = True
        self.head_deadline = self.proxy.clock + self.proxy.client_header_timeout
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        # Empty until the target begins, so a non-empty url also says that the method of
        # the head being read is known (see request_refused); reset when the head is taken.
        if self.url:
            self.url += url   # the target came in more than one piece
        else:
            self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            split_into(self.parts, self.special, name, value, REQUEST_SPECIAL, REQUEST_NAMES)
        elif self.reading is not None:
            self.reading.request_trailer(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        proxy = self.proxy
        if self.closed:
            raise _HeadRefused
        # The head came in this read and the earlier ones counted in head_size; only when
        # those could exceed the limit are its fields counted exactly.
        limit = proxy.max_header_bytes
        over = self.head_size + self.read_len > limit and self.head_fields_size() > limit
        url, parts, special = self.url, self.parts, self.special
        self.parts = []
        self.special = []
        if url[:1] != b"/" and url != b"*":
            absolute = origin_form(url)
            if absolute is not None:
                url = absolute[1]
                special = [(n, v) for n, v in special if n != b"host"] + [(b"host", absolute[0])]
            elif parser.get_method() != b"CONNECT":   # CONNECT's authority-form is refused below
                self.refused = (400, "request target is neither origin-form nor absolute-form")
                raise _HeadRefused
        if over:
            self.refused = (431, "request header block over limits.max_header_bytes")
            raise _HeadRefused
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        if keep_alive and len(special) == 1 and special[0][0] == b"host":
            # Without a Connection field llhttp keeps only HTTP/1.1 alive (it accepts
            # 0.9, 1.0, 1.1 and 2.0), which spares reading the version as a string.
            minor = 1
        else:
            version = parser.get_http_version()
            if version == "1.1":
                minor = 1
            elif version == "1.0":
                minor = 0
            else:
                self.refused = (505, f"HTTP/{version} is not supported") if version >= "2" else \
                    (400, f"HTTP/{version} request line refused")
                raise _HeadRefused
        try:
            head = rewrite_request(parts, special, minor, self.client_ip, proxy.replace_forwarded,
                                   proxy.forwarded_proto)
        except HeaderError as exc:
            self.refused = (exc.status, str(exc))   # answered in order after what is queued
            raise _HeadRefused
        if method == b"CONNECT":
            self.refused = (501, "CONNECT is not supported")
            raise _HeadRefused
        length = head.content_length
        if length is not None and proxy.max_body_bytes is not None and length > proxy.max_body_bytes:
            self.refused = (413, f"request body over limits.max_body_bytes ({proxy.max_body_bytes})")
            raise _HeadRefused
        self.trailer_bytes = 0
        ex = Exchange(self, method, url, head, minor, keep_alive and not self.closing)
        if self.preview:
            ex.preview = ""
        if head.preview_env is not None:
            ex.preview = self.preview_target(head)
        if head.probe:
            self.check_token(head)
            ex.probe = True
        self.url = b""
        self.reading = ex
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            ex.start()
        elif len(queue) > PIPELINE_DEPTH:
            self.pause_reading(PAUSE_PIPELINE)

    def head_fields_size(self) -> int:
        """head_fields_size: bytes of the request target and the header fields received so far."""
        size = len(self.url) + sum(map(len, self.parts))
        for _, value in self.special:
            size += len(value) + 24   # a special's name and separators, at most
        return size

    def preview_target(self, head: RequestHead) -> str:
        """preview_target: the environment an X-Cutover-Env header asks for, if its token is right.

        Raises _HeadRefused (403 or 400) otherwise, so a smoke test never
        silently reaches the live environment instead.
        """
        if not self.proxy.preview_token:
            self.refused = (403, "X-Cutover-Env needs X-Cutover-Token with the admin token")
            raise _HeadRefused
        self.check_token(head)
        name = (head.preview_env or b"").decode("latin-1")
        if name not in self.proxy.router.environments:
            self.refused = (400, f"X-Cutover-Env names unknown environment {name!r}")
            raise _HeadRefused
        return name

    def check_token(self, head: RequestHead) -> None:
        """check_token: X-Cutover-Token must equal the admin token when one is set; 403 otherwise."""
        token = self.proxy.preview_token
        if token and (head.preview_token is None or not hmac.compare_digest(head.preview_token, token)):
            self.refused = (403, "X-Cutover-Env and X-Cutover-Probe need X-Cutover-Token with the admin token")
            raise _HeadRefused

    def on_chunk_header(self) -> None:
        reading = self.reading
        if reading is not None:
            reading.chunks += 1

    def on_body(self, body: bytes) -> None:
        reading = self.reading
        if reading is not None:
            reading.request_body(body)

    def on_message_complete(self) -> None:
        reading = self.reading
        if reading is not None:
            self.reading = None
            if reading.head.chunked:
                reading.request_complete()
            else:
                reading.request_done = True

    # ------------------------------------------------------------ pipeline

    def request_refused(self) -> None:
        """request_refused: the parser stopped on bad input; answer it in turn, then close.

        An error inside a request body belongs to the exchange reading it; an
        error in a new head gets its own error exchange at the end of the queue.
        """
        if self.closed:
            return
        status, message = self.refused or (400, "malformed request")
        self.in_head = False          # nothing more is read; no head timer may cut what is queued
        self.pause_reading(PAUSE_PIPELINE)
        reading = self.reading
        if reading is not None and not reading.request_done:
            self.reading = None
            reading.request_broken(status, message)
            return
        # The answer to a HEAD has no content (RFC 9110 §9.3.2): the method counts once the
        # parser reached the target, before that its method is the previous request's.
        method = self.parser.get_method() if self.url else b"-"
        ex = Exchange(self, method, b"-", RequestHead(), 1, False, error=(status, message))
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def exchange_done(self, ex: Exchange) -> None:
        """exchange_done: called by Exchange.finish; start the next queued request or go idle."""
        queue = self.queue
        if not queue or queue[0] is not ex:
            if ex in queue:
                queue.remove(ex)
            return
        del queue[0]
        if self.closed:
            return
        if not ex.keep_alive or ex.outcome is not Outcome.OK and ex.outcome is not Outcome.CLIENT_GONE:
            self.close()
            return
        if queue:
            queue[0].start()
        elif self.closing:
            self.close()
            return
        else:
            self.idle_deadline = self.proxy.clock + self.proxy.keepalive_timeout
        if self.paused & PAUSE_PIPELINE and len(queue) <= PIPELINE_DEPTH:
            self.resume_reading(PAUSE_PIPELINE)

    def upgrade_requested(self, rest: bytes) -> None:
        """upgrade_requested: the parser stopped after an Upgrade request; hold what follows."""
        self.upgrade_buffer = [rest] if rest else []
        self.reading = None

    def start_tunnel(self, conn: "UpstreamConnection", upstream_rest: bytes) -> None:
        """start_tunnel: the upstream answered 101; relay raw bytes both ways from now on."""
        self.tunnel = conn
        conn.tunnel = self
        self.flush()
        # From now on both directions count for the environment that answered 101 (out_env).
        self.out_env.bytes_in += self.received
        self.received = 0
        if upstream_rest:
            self.out_env.bytes_out += len(upstream_rest)
            self.transport.write(upstream_rest)
        pending = self.upgrade_buffer or []
        self.upgrade_buffer = None
        conn.flush()   # the request went first; from now on bytes go straight through
        if pending:
            conn.transport.writelines(pending)
        if self.paused & PAUSE_BUFFER:
            self.resume_reading(PAUSE_BUFFER)

    def tunnel_closed(self) -> None:
        """tunnel_closed: the upstream half of the tunnel closed; finish and close this half."""
        if self.queue:
            self.queue[0].finish(Outcome.OK)
        self.close()

    # --------------------------------------------------------- flow control

    def pause_reading(self, reason: int) -> None:
        """pause_reading: stop reading from the client for ``reason`` (a PAUSE_* bit)."""
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        """resume_reading: clear ``reason``; reading resumes when no reason is left."""
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and not self.closed:
            self.transport.resume_reading()
            # The client_header and client_body clocks stood still while this proxy was not reading.
            if self.in_head:
                self.head_deadline = self.proxy.clock + self.proxy.client_header_timeout
            elif self.reading is not None:
                self.reading.body_at = self.proxy.clock

    # --------------------------------------------------------------- writes

    def flush(self) -> None:
        """flush: write the gathered response bytes in one call (one send for a small response).

        Exchange appends to ``out`` while relaying, so head and body leave
        together; UpstreamConnection.data_received queues this connection with
        Proxy.flush_soon, which calls flush at the end of the event loop pass.
        """
        self.flush_due = False
        out = self.out
        if out:
            self.out = []
            if not self.closed:
                data = b"".join(out) if len(out) > 1 else out[0]
                self.out_env.bytes_out += len(data)
                self.total_out += len(data)
                self.transport.write(data)

    def flush_soon(self) -> None:
        """flush_soon: flush at the end of this event loop pass (see Proxy.flush_soon)."""
        if self.out and not self.flush_due:
            self.flush_due = True
            self.proxy.flush_soon(self)

    def write(self, data: bytes) -> None:
        """write: write ``data`` now, after anything gathered before it."""
        if self.out:
            self.flush()
        if not self.closed:
            self.out_env.bytes_out += len(data)
            self.total_out += len(data)
            self.transport.write(data)

    # ---------------------------------------------------------------- ends

    def close(self) -> None:
        """close: close after what was written is flushed (cut at keepalive_idle if it never is)."""
        if not self.closed:
            self.flush()
            self.closed = True
            self.closed_at = self.proxy.clock
            self.transport.close()

    def close_tunnel(self) -> None:
        """close_tunnel: end a tunnel gracefully: both halves flush what they hold, then FIN."""
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel = None
            tunnel.close()
        self.close()

    def abort(self) -> None:
        """abort: close at once, dropping unsent bytes (a response cut short)."""
        if not self.closed:
            self.out = []
            self.closed = True
            self.transport.abort()

    def shutdown(self) -> None:
        """shutdown: the proxy stops; close now when idle, else after the current response."""
        self.closing = True
        if not self.queue and not self.in_head:
            self.close()

    def timed_out_head(self) -> None:
        """timed_out_head: the client took longer than client_header to send a request head."""
        if self.queue:
            self.abort()
            return
        head_only = bool(self.url) and self.parser.get_method() == b"HEAD"
        self.flush()
        self.out_env = self.proxy.unrouted_env   # refused before it had an environment
        self.write(error_response(408, "request head not received within timeouts.client_header", b"", head_only))
        self.close()
