"""Exchange: one request and its response, the only object that touches both sides.

ClientConnection creates an Exchange when a request head is complete and
queues it; the first in the queue is the active one (pipelined requests are
answered in order). When active it passes the hold gate, reads the route once,
picks a server of the chosen environment, takes a pooled upstream connection
or opens one, and relays: request body up, response down, re-framing chunked
bodies and applying the header rules. It records the route generation, the
environment and server, and how it ended (errors.Outcome) for the drain, and carries the
request id (SPEC §12) upstream and back; with an access log, finish hands it to
AccessLog.add (proxy/accesslog.py), its timings and byte counts filled in.
"""

from __future__ import annotations

from bisect import bisect_left
from time import monotonic
from typing import TYPE_CHECKING, Final

from . import pool
from .accesslog import HELD as LOG_HELD, REFUSED as LOG_REFUSED, TIMEOUT as LOG_TIMEOUT
from .accesslog import UPSTREAM_RESET as LOG_UPSTREAM_RESET
from .backends import LATENCY_BUCKETS
from .errors import Outcome, error_response
from .flow import BUFFER_HIGH, PAUSE_BUFFER, PAUSE_UPSTREAM
from .headers import REQUEST_SPECIAL, STATUS_LINES, RequestHead, rewrite_response

if TYPE_CHECKING:
    from .backends import Environment, Server
    from .downstream import ClientConnection
    from .drain import Drain
    from .route import Route
    from .router import Router
    from .upstream import UpstreamConnection

# Methods that may be sent again on a fresh connection when a reused pooled one
# turns out closed before any response byte (RFC 9110 §9.2.2).
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Exchange states.
QUEUED: Final = 0
HELD: Final = 1
CONNECTING: Final = 2
SENT: Final = 3
RESPONDING: Final = 4
TUNNEL: Final = 5
DONE: Final = 6


class Exchange:
    """Exchange: one request/response relayed between a client and an upstream server."""

    __slots__ = (
        "client", "method", "url", "head", "http_minor", "keep_alive", "error",
        "state", "route", "env", "server", "conn", "tried", "retries",
        "pending", "pending_bytes", "request_done", "body_bytes", "trailers",
        "response_started", "rechunk", "close_delimited", "head_only", "status",
        "drain", "outcome", "started", "canary_bucket", "preview", "probe", "chunks", "body_at",
        "request_id", "cause", "ended", "connect_time", "up_sent", "up_head", "bytes_in", "bytes_out",
    )

    def __init__(self, client: "ClientConnection", method: bytes, url: bytes,
                 head: RequestHead, http_minor: int, keep_alive: bool,
                 error: tuple[int, str] | None = None) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.head = head
        self.http_minor = http_minor
        self.keep_alive = keep_alive
        self.error = error                  # (status, message) to answer instead of proxying
        self.state = QUEUED
        self.route: "Route | None" = None
        self.env: "Environment | None" = None
        self.server: "Server | None" = None
        self.conn: "UpstreamConnection | None" = None
        self.tried: "set[Server] | None" = None
        self.retries = 0
        self.pending: list[bytes] | None = None   # framed body bytes waiting for an upstream connection
        self.pending_bytes = 0
        self.request_done = False           # the whole request body has been received
        self.body_bytes = 0
        self.trailers: list[bytes] | None = None
        self.response_started = False       # a final response head went to the client
        self.rechunk = False                # body re-framed as chunked towards the client
        self.close_delimited = False        # upstream body ends at its EOF
        self.head_only = method == b"HEAD"
        self.status = 0
        self.drain: "Drain | None" = None
        self.outcome: str | None = None
        self.started = monotonic()          # for the latency histogram (admin/metrics.py)
        self.canary_bucket: int | None = None   # a new canary bucket to send in a cookie
        self.preview: str | None = None     # preview route: "" = the idle environment, else the one named
        self.probe = False                  # a drill probe: name the serving environment in the answer
        self.chunks = 0                     # chunks of a chunked request body seen so far
        self.body_at = self.started         # when the request body last made progress (timeouts.client_body)
        # X-Request-Id: the client's sane one, else one made up (requestid.py), None when
        # request_id.generate is off and the client sent none.
        rid = head.request_id
        if rid is None:
            proxy = client.proxy
            prefix = proxy.request_prefix
            if prefix is not None:
                proxy.request_seq += 1
                rid = b"%s%x" % (prefix, proxy.request_seq)
        self.request_id = rid
        self.cause: str | None = None       # the access log's outcome when Outcome does not tell it (accesslog.outcome_of)
        # For the access log (set only when there is one): monotonic times of the end, of the
        # request head written upstream and of the final response head; seconds spent opening
        # upstream connections (Proxy._connect); bytes read from and written to the client.
        self.ended = 0.0
        self.up_sent = 0.0
        self.up_head = 0.0
        self.connect_time = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    # ----------------------------------------------------------- request side

    def start(self) -> None:
        """start: called by ClientConnection when this exchange reaches the front of the queue."""
        if self.error is not None:
            self.reply_error(*self.error)
            return
        router = self.client.proxy.router
        if self.started > router.fence_until:    # a fleet replica not sure its lease lives (fencing)
            self.state = HELD
            router.fenced(self)
            return
        if router.hold_gate is not None and self.preview is None:   # preview traffic is never held
            self.state = HELD
            router.hold_gate.enter(self)
            return
        self.proceed(router)

    def proceed(self, router: "Router | None" = None) -> None:
        """proceed: read the route once, choose the environment and send upstream.

        Called by start, or by the hold gate when it releases this exchange.
        """
        if self.state == DONE:
            return
        if router is None:
            router = self.client.proxy.router
        route = self.route = router.route
        if self.preview is None:
            name = router.choose(route, self) if route.canary_weight else route.live
        else:
            name = self.preview or router.idle(route)
        env = self.env = router.environments[name]
        env.inflight += 1
        env.active.add(self)
        client = self.client
        env.bytes_in += client.received   # what the client sent so far is this request's (see finish)
        client.received = 0
        self.state = CONNECTING
        self.send_to_server(env)

    def send_to_server(self, env: "Environment") -> None:
        """send_to_server: pick a server of ``env`` (skipping ones that already failed) and get a connection."""
        server = env.only
        if server is None or not server.healthy or self.tried is not None:
            server = env.pick(self.tried)
        if server is None:
            if self.tried:
                self.reply_error(502, f"cannot connect to any server of environment {env.name}")
            else:
                self.reply_error(503, f"no healthy server in environment {env.name}")
            return
        self.server = server
        server.inflight += 1
        conn = pool.take(server)
        if conn is not None:
            self.attach(conn, reused=True)
            return
        self.client.proxy.connect(server, self)

    def connect_failed(self, server: "Server", reason: str) -> None:
        """connect_failed: the pool could not connect; mark the server down and try another."""
        server.connect_errors += 1
        self.client.proxy.router.passive_failure(server, reason)
        if self.state == DONE:
            return   # finish already released the server's count
        server.inflight -= 1
        self.server = None
        if self.tried is None:
            self.tried = set()
        self.tried.add(server)
        self.send_to_server(server.env)

    def attach(self, conn: "UpstreamConnection", reused: bool) -> None:
        """attach: bind an upstream connection and write the request head and buffered body."""
        if self.state == DONE:
            conn.release()
            return
        client = self.client
        self.conn = conn
        conn.exchange = self
        conn.reused = reused
        conn.got_bytes = False
        conn.head_bytes = 0
        conn.active_at = client.proxy.clock
        if client.write_paused:
            conn.reading_paused = True
            conn.transport.pause_reading()
        self.state = SENT
        if client.proxy.access_log is not None:
            self.up_sent = monotonic()
        head = self.head
        rid = self.request_id
        if head.host is not None:
            if rid is not None:
                data = b"%s %s HTTP/1.1\r\n%sx-request-id: %s\r\n\r\n" % (self.method, self.url, head.block, rid)
            else:
                data = b"%s %s HTTP/1.1\r\n%s\r\n" % (self.method, self.url, head.block)
        else:
            # RFC 9112 §3.2: an HTTP/1.1 request needs Host; a 1.0 client may omit it.
            data = (b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n"
                    % (self.method, self.url, conn.server.address.encode(), head.block,
                       b"x-request-id: %s\r\n" % rid if rid is not None else b""))
        pending = self.pending
        if pending is not None:
            data = b"".join([data, *pending])
            self.pending = None
            if self.pending_bytes > BUFFER_HIGH:
                client.resume_reading(PAUSE_BUFFER)
            self.pending_bytes = 0
        conn.send(data)

    def request_body(self, data: bytes) -> None:
        """request_body: a piece of the request body from the client parser."""
        self.body_bytes += len(data)
        proxy = self.client.proxy
        self.body_at = proxy.clock
        limit = proxy.max_body_bytes
        if limit is not None and self.body_bytes > limit:
            self.request_broken(413, f"request body over max_body_bytes ({limit})")
            return
        if self.head.chunked:
            framed = b"%x\r\n%s\r\n" % (len(data), data)
        else:
            framed = data
        self._send_body(framed)

    def request_trailer(self, name: bytes, value: bytes) -> None:
        """request_trailer: a trailer field after a chunked request body.

        Framing, routing and hop-by-hop fields are never taken from trailers (RFC 9110 §6.5.1).
        """
        if name.lower() in REQUEST_SPECIAL:
            return
        if self.trailers is None:
            self.trailers = []
        self.trailers.append(b"%s: %s\r\n" % (name, value))

    def request_complete(self) -> None:
        """request_complete: the request message ended (RFC 9112 §7.1: last chunk and trailers)."""
        self.request_done = True
        if self.head.chunked and self.state != DONE:
            trailers = b"".join(self.trailers) if self.trailers else b""
            self._send_body(b"0\r\n%s\r\n" % trailers)

    def _send_body(self, framed: bytes) -> None:
        if self.state == DONE:
            return
        conn = self.conn
        if conn is not None and self.state in (SENT, RESPONDING):
            conn.active_at = self.client.proxy.clock
            conn.send(framed)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(framed)
            self.pending_bytes += len(framed)
            if self.pending_bytes > BUFFER_HIGH:
                self.client.pause_reading(PAUSE_BUFFER)

    def request_broken(self, status: int, message: str) -> None:
        """request_broken: the request body turned out invalid or too large; answer or cut."""
        self.keep_alive = False
        self.cause = LOG_REFUSED
        if self.state == QUEUED:
            self.error = (status, message)   # answered in turn, when it reaches the front
            return
        self.reply_error(status, message)

    # ---------------------------------------------------------- response side

    def response_head(self, status: int, parts: list[bytes], special: list) -> None:
        """response_head: the upstream's response head (interim 1xx ones included)."""
        client = self.client
        env = self.env
        if env is not None:
            client.out_env = env   # the bytes of this answer are its environment's (ClientConnection.flush)
        if status < 200 and status != 101:
            if status == 100:
                self.body_at = client.proxy.clock   # the client may send its body from now on
            # RFC 9110 §15.2: forward interim responses to HTTP/1.1 clients only.
            if self.http_minor >= 1:
                client.out += (STATUS_LINES[status], rewrite_response(parts, special).block, b"\r\n")
            return
        rh = rewrite_response(parts, special)
        if rh.unknown_coding is not None:
            # As nginx does: a body in a coding this proxy cannot re-frame is refused.
            self._count_invalid()
            self.reply_error(502, "upstream sent an unsupported Transfer-Encoding: "
                             + rh.unknown_coding.decode("latin-1"))
            return
        if status == 101 and self.head.upgrade is None:
            # RFC 9110 §15.2.2: switching protocols the client never asked for.
            self._count_invalid()
            self.reply_error(502, "upstream switched protocols without an Upgrade request")
            return
        self.status = status
        self.state = RESPONDING
        self.response_started = True
        if client.proxy.access_log is not None:
            self.up_head = monotonic()
        if status == 101:
            self.state = TUNNEL
            self.keep_alive = False
            upgrade = rh.upgrade or self.head.upgrade or b""
            client.out += (STATUS_LINES[101], rh.block, b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n\r\n")
            return
        if not self.request_done or self.head.upgrade is not None or client.closing:
            self.keep_alive = False   # the rest of the request cannot be skipped safely
        length = rh.content_length
        if length is not None and not rh.chunked and status != 204:
            framing = b"content-length: %d\r\n" % length
        elif self.head_only or status == 204 or status == 304:
            framing = b"content-length: %d\r\n" % length if length is not None and status != 204 else b""
        elif self.http_minor >= 1:
            self.rechunk = True
            self.close_delimited = not rh.chunked
            framing = b"transfer-encoding: chunked\r\n"
        else:
            self.close_delimited = not rh.chunked
            self.keep_alive = False   # HTTP/1.0 client: the body ends when we close
            framing = b""
        if self.probe and self.env is not None and self.route is not None:
            framing += b"x-cutover-served-by: %s %d\r\n" % (self.env.name.encode(), self.route.generation)
        if self.canary_bucket is not None:
            framing += b"set-cookie: cutover_canary=%d; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax\r\n" \
                % self.canary_bucket
        if self.request_id is not None:
            framing += b"x-request-id: %s\r\n" % self.request_id
        if not self.keep_alive:
            framing += b"connection: close\r\n"
        elif self.http_minor == 0:
            framing += b"connection: keep-alive\r\n"
        client.out += (STATUS_LINES[status], rh.block, framing, b"\r\n")

    def response_body(self, data: bytes) -> None:
        """response_body: a piece of the response body, framed for the client (see also UpstreamConnection.on_body)."""
        if self.rechunk:
            self.client.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.client.out.append(data)

    def response_complete(self, upstream_keep_alive: bool) -> None:
        """response_complete: the upstream's final response ended; release the connection."""
        if self.state != RESPONDING:
            return   # an interim 1xx message ended; the final response follows
        if self.rechunk:
            self.client.out.append(b"0\r\n\r\n")
        conn = self.conn
        if conn is not None:
            self.conn = None
            if upstream_keep_alive and self.request_done:
                conn.release()
            else:
                conn.close()
        self.finish(Outcome.OK)

    def upgraded(self, upstream_rest: bytes) -> None:
        """upgraded: the upstream switched protocols (101); both sides become a byte tunnel."""
        if self.state != TUNNEL or self.conn is None:
            return   # the 101 was refused in response_head
        self.client.start_tunnel(self.conn, upstream_rest)

    def upstream_lost(self, got_bytes: bool, reused: bool, clean: bool = True) -> None:
        """upstream_lost: the upstream connection closed while this exchange used it.

        ``clean`` is False for a reset: then even a close-delimited body was cut.
        """
        self.conn = None
        if self.state == TUNNEL:
            self.finish(Outcome.OK)
            self.client.close()
            return
        server = self.server
        if self.response_started:
            if self.close_delimited and clean:
                self.response_complete_on_eof()
            else:
                if server is not None:
                    server.resets += 1
                self.cause = LOG_UPSTREAM_RESET
                self.abort(Outcome.FAILED)   # never a truncated response that looks complete
            return
        if (server is not None and reused and not got_bytes and self.retries < 2 and self.method in IDEMPOTENT
                and not self.head.chunked and not self.head.content_length):
            # A pooled keep-alive connection the server had already closed: nothing
            # was processed, so the request goes again on a fresh connection.
            self.retries += 1
            server.inflight -= 1
            pool.close_idle(server)
            self.server = None
            self.state = CONNECTING
            self.send_to_server(server.env)
            return
        if server is not None:
            server.resets += 1
        self.cause = LOG_UPSTREAM_RESET
        self.reply_error(502, "upstream closed the connection before responding")

    def response_complete_on_eof(self) -> None:
        """response_complete_on_eof: a close-delimited body ended with the upstream's EOF."""
        if self.rechunk:
            self.client.write(b"0\r\n\r\n")
        else:
            self.keep_alive = False   # an HTTP/1.0 client learns the end from our close
        self.finish(Outcome.OK)

    def upstream_invalid(self, message: str) -> None:
        """upstream_invalid: the upstream sent bytes that are not valid HTTP."""
        self._count_invalid()
        self.reply_error(502, f"invalid response from upstream: {message}")

    def _count_invalid(self) -> None:
        """_count_invalid: a response this proxy cannot relay (invalid HTTP, an unknown coding, an
        unasked 101), counted on its server as the "invalid" upstream error."""
        if self.server is not None:
            self.server.invalid += 1

    def timed_out(self) -> None:
        """timed_out: called by the proxy's ticker when upstream_response passed without progress."""
        if self.server is not None:
            self.server.timeouts += 1
        self.cause = LOG_TIMEOUT
        self.reply_error(504, "upstream did not respond within timeouts.upstream_response")

    def client_timed_out(self) -> None:
        """client_timed_out: called by the proxy's ticker when the client sent nothing of its
        request body for timeouts.client_body.

        The wait was the client's: 408, and it ends as CLIENT_GONE (a drain does not
        count it as dropped), in the 4xx class, never in the environment's 5xx.
        """
        self.client.proxy.client_body_timeouts += 1
        self.cause = LOG_TIMEOUT
        self.reply_error(408, "request body not received within timeouts.client_body", Outcome.CLIENT_GONE)

    # ------------------------------------------------------------------ ends

    def reply_error(self, status: int, message: str, outcome: str = Outcome.FAILED) -> None:
        """reply_error: answer with a canned error, or cut the connection once a head was sent."""
        if self.state == DONE:
            return
        if self.response_started:
            self.abort(outcome)
            return
        self._drop_upstream()
        self.status = status
        self.keep_alive = False
        extra = b"retry-after: 1\r\n" if status == 503 else b""
        if self.request_id is not None:
            extra += b"x-request-id: %s\r\n" % self.request_id
        client = self.client
        client.flush()   # what was gathered before this answer is counted where it belongs
        client.out_env = self.env if self.env is not None else client.proxy.unrouted_env
        client.write(error_response(status, message, extra, self.head_only))
        self.finish(outcome)

    def abort(self, outcome: str) -> None:
        """abort: cut both connections; the client sees a short response, never a complete one."""
        if self.state == DONE:
            return
        self._drop_upstream()
        self.keep_alive = False
        self.client.abort()
        self.finish(outcome)

    def client_gone(self) -> None:
        """client_gone: the client connection closed; stop the upstream side too."""
        if self.state == DONE:
            return
        self._drop_upstream()
        self.finish(Outcome.CLIENT_GONE)

    def _drop_upstream(self) -> None:
        """_drop_upstream: close the upstream connection mid-exchange (it is never reused)."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()

    def force_close(self) -> None:
        """force_close: a drain or a shutdown ran out of time; close this exchange now."""
        if self.state == DONE:
            return
        if self.state in (QUEUED, HELD, CONNECTING):
            self.reply_error(503, "closed by cutover before the request was sent", Outcome.FORCED)
        elif self.state == SENT:
            # The server may have acted on it: no Retry-After, which invites a retry.
            self.reply_error(502, "closed by cutover while waiting for the upstream's answer",
                             Outcome.FORCED)
        elif self.state == TUNNEL:
            self.client.close_tunnel()
            self.finish(Outcome.FORCED)
        else:
            self.abort(Outcome.FORCED)

    def finish(self, outcome: str) -> None:
        """finish: the one exit; updates counters, tells the drain, hands the client its next request."""
        if self.state == DONE:
            return
        if self.state == HELD:
            self.client.proxy.router.unqueue(self)
            if self.cause is None:
                # Refused by a full queue (or a fence at shutdown) before it waited, else it
                # ended waiting: its client went away, or a drain or shutdown cut it.
                self.cause = LOG_REFUSED if outcome is Outcome.FAILED else LOG_HELD
        self.state = DONE
        self.outcome = outcome
        server = self.server
        if server is not None:
            server.inflight -= 1
            server.requests += 1
        client = self.client
        env = self.env
        access_log = client.proxy.access_log
        if access_log is not None:
            self.ended = monotonic()
            # This request's bytes: those read and written since the one before it ended
            # (ClientConnection.total_in/total_out), what is still to flush included.
            total_out = client.total_out
            for part in client.out:
                total_out += len(part)
            self.bytes_out = total_out - client.logged_out
            client.logged_out = total_out
            self.bytes_in = client.total_in - client.logged_in
            client.logged_in = client.total_in
            access_log.add(self)
        if env is not None:
            env.inflight -= 1
            env.active.discard(self)
            env.bytes_in += client.received   # the rest of its request body, a tunnel's bytes
            client.received = 0
            # The environment's metrics (see Environment.responses); once per request.
            elapsed = (self.ended or monotonic()) - self.started
            env.responses[self.status // 100] += 1
            env.latency_counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            env.latency_sum += elapsed
        else:
            client.proxy.unrouted[self.status // 100] += 1
        drain = self.drain
        if drain is not None:
            drain.finished(self, outcome)
        if client.paused & PAUSE_UPSTREAM:
            client.resume_reading(PAUSE_UPSTREAM)   # the upstream that pushed back is no longer ours
        client.exchange_done(self)
