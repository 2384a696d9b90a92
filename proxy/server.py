"""Proxy: the listener, its client connections, the upstream connector and the ticker.

``Proxy(settings)`` builds a Router from the settings (or takes one), ``start``
listens and starts health checks, ``shutdown`` stops gracefully (SPEC §4:
stop accepting, finish in-flight requests up to drain_timeout, close idle
keep-alive connections, then cut what is left). The ticker keeps a coarse
monotonic clock and enforces every timeout by scanning connections, so the
per-request path sets no timers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from . import pool
from .accesslog import AccessLog
from .backends import Environment
from .downstream import ClientConnection
from .errors import describe_os_error
from .exchange import RESPONDING, SENT
from .flow import LISTEN_BACKLOG, PREVIEW_BACKLOG
from .health import HealthChecker
from .requestid import new_prefix
from .router import Router
from .snapshot import Snapshot
from .tls import CertificateError, ServerTLS, upstream_contexts
from .tlsstream import TLSListener, listening_sockets
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    import ssl

    from .backends import Server
    from .settings import EnvironmentConfig, ListenerTLS, Settings, UpstreamTLS
    from .exchange import Exchange

log = logging.getLogger("cutover.proxy")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """new_event_loop: a uvloop loop where uvloop is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:   # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Proxy:
    """Proxy: one listening data plane in front of a Router."""

    # What _read takes from the settings (at start and at each reload).
    connect_timeout: float
    upstream_timeout: float
    client_header_timeout: float
    keepalive_timeout: float
    client_body_timeout: float
    max_header_bytes: int
    max_response_header_bytes: int
    max_body_bytes: int | None
    max_connections: int
    replace_forwarded: bool
    preview_token: bytes | None      # X-Cutover-Env is honoured only with this token; None = never
    tick_interval: float

    def __init__(self, settings: "Settings", router: Router | None = None) -> None:
        self.settings = settings
        self.router = router or Router.from_settings(settings)
        self._read(settings)
        self.connections: set[ClientConnection] = set()
        self.unrouted = [0] * 6         # requests answered before reaching an environment, by status class
        self.client_body_timeouts = 0   # requests cut with 408 at timeouts.client_body
        # Where ClientConnection counts the bytes of answers no environment gave (refusals before
        # routing, a full hold queue): never one of the router's environments, never in a snapshot.
        self.unrouted_env = Environment("")
        self.clock = time.monotonic()
        self.closing = False
        self.health: HealthChecker | None = None
        self._server: Any = None        # the event loop's servers (uvloop's own types), or TLSListeners
        # The listen and preview descriptors stop_accepting(keep=True) kept (a handover in progress).
        self._kept: tuple[list[int], list[int]] | None = None
        self._preview: Any = None
        self.preview_port: int | None = None
        self._ticker: Any = None
        self._idle: asyncio.Event | None = None
        self._loop: Any = None          # the running event loop, from start
        self._port = 0
        # Connections with bytes to write at the end of this pass of the event loop (flush_soon).
        self._due: list[ClientConnection | UpstreamConnection] = []
        # The access log (SPEC §12), which Exchange.finish hands each finished exchange: None
        # without an access log.
        self.access_log: AccessLog | None = None
        # Access logs a reload replaced, writing their last lines, and the tasks closing them.
        self._closing_logs: set[AccessLog] = set()
        self._closing_tasks: set[Any] = set()
        if settings.access_log is not None:
            self.access_log = AccessLog(settings.access_log)
        self.access_log_dropped = 0     # lines the access logs a reload replaced and closed had dropped
        # Request ids made up for requests without a sane X-Request-Id (requestid.py); None: none are.
        self.request_prefix: bytes | None = new_prefix() if settings.generate_request_id else None
        self.request_seq = 0
        # TLS (SPEC §12, proxy/tls.py): the listeners' contexts (None: plain HTTP), what
        # X-Forwarded-Proto says, and {environment: (client context, server_name)} upstream.
        self.tls: ServerTLS | None = ServerTLS(settings.tls) if settings.tls is not None else None
        self.forwarded_proto = b"https" if self.tls is not None else b"http"
        self.upstream_tls: dict[str, tuple["ssl.SSLContext", str | None]] = upstream_contexts(settings.environments)
        self.upstream_tls_config: dict[str, "UpstreamTLS | None"] = {e.name: e.tls for e in settings.environments}

    def _read(self, settings: "Settings") -> None:
        """_read: the timeouts, limits and header rules of ``settings`` (the start's, a reload's).

        Every connection reads them from here when it uses them, so a reload applies to the
        next header, body, idle wait or upstream answer of each open connection too.
        """
        t = settings.timeouts
        self.connect_timeout = t.connect
        self.upstream_timeout = t.upstream_response
        self.client_header_timeout = t.client_header
        self.keepalive_timeout = t.keepalive_idle
        self.client_body_timeout = t.client_body
        self.max_header_bytes = settings.limits.max_header_bytes
        self.max_response_header_bytes = settings.limits.max_response_header_bytes
        self.max_body_bytes = settings.limits.max_body_bytes
        self.max_connections = settings.limits.max_connections
        self.replace_forwarded = settings.forwarded_headers == "replace"
        token = settings.preview_token
        self.preview_token = token.encode() if token else None
        self.tick_interval = max(0.02, min(0.5, min(t.connect, t.upstream_response,
                                                   t.client_header, t.keepalive_idle, t.client_body) / 4))

    def configure(self, settings: "Settings") -> None:
        """configure: a reload (SPEC §12): ``settings`` apply from now on, no connection dropped.

        Timeouts, limits, forwarded headers, the preview token and request ids apply to what
        each connection does next; the router's drain_timeout, hold.max_queued and canary
        header to what starts next (Router.configure); the health checks run with the new
        path, interval, timeout and thresholds from their next probe, each server keeping its
        health. A changed access_log opens the new one and closes the old after writing what
        it gathered. The TLS certificates are read again (set_tls): new connections get them. listen, preview_listen and the server lists are not read here (a restart
        changes the first two, Router.set_servers the lists). Called by LocalPlane.apply and
        by a worker's agent.
        """
        old = self.settings
        self.settings = settings
        self._read(settings)
        for listener in (self._server, self._preview):
            if isinstance(listener, TLSListener):   # its handshakes' bounds
                listener.handshake_timeout = self.client_header_timeout
                listener.max_handshakes = self.max_connections
        self.router.configure(settings.drain_timeout, settings.max_queued, settings.canary_header)
        hc = settings.health_check
        if self.health is not None:
            self.health.configure(hc.path, hc.interval, hc.timeout, hc.healthy_after, hc.unhealthy_after)
        if settings.generate_request_id != (self.request_prefix is not None):
            self.request_prefix = new_prefix() if settings.generate_request_id else None
        if settings.access_log != old.access_log:
            self._swap_access_log(settings)
        try:
            # Certificates are read again on every reload (renewed files keep their paths).
            self.set_tls(settings.tls, settings.environments)
        except (CertificateError, ValueError) as exc:
            log.error("reload: the TLS certificates are not swapped: %s; serving the ones before", exc)

    def _swap_access_log(self, settings: "Settings") -> None:
        """_swap_access_log: the access log of ``settings`` from now on; the one before writes
        what it gathered and closes in the background."""
        before = self.access_log
        self.access_log = None
        if settings.access_log is not None:
            self.access_log = AccessLog(settings.access_log)
            if self._loop is not None:
                self.access_log.start(self._loop)
        if before is not None:
            if self._loop is None:
                self.access_log_dropped += before.dropped
            else:
                # Counted with the open logs' until it closed: what its last writes drop counts too.
                self._closing_logs.add(before)
                task = self._loop.create_task(self._retire_access_log(before))
                self._closing_tasks.add(task)
                task.add_done_callback(self._closing_tasks.discard)

    async def _retire_access_log(self, log: AccessLog) -> None:
        try:
            await log.close()
        finally:
            self._closing_logs.discard(log)
            self.access_log_dropped += log.dropped

    # --------------------------------------------------------------- start

    async def start(self, sock: socket.socket | None = None, preview_sock: socket.socket | None = None,
                    check_health: bool = True) -> None:
        """start: listen (on ``sock`` / ``preview_sock`` when given, else the settings' addresses)
        and start health checks.

        A worker (proxy/agent.py) is handed sockets its supervisor bound; with ``check_health``
        False its checker probes nothing and only counts results reported to it (HealthChecker.report).
        """
        loop = self._loop = asyncio.get_running_loop()
        listen = self.settings.listen
        self._server = await self._listen(self._client, sock, listen.host, listen.port, LISTEN_BACKLOG)
        self._port = self._server.sockets[0].getsockname()[1]
        preview = self.settings.preview_listen
        if preview_sock is not None or preview is not None:
            self._preview = await self._listen(self._preview_client, preview_sock, preview.host if preview else "",
                                               preview.port if preview else 0, PREVIEW_BACKLOG)
            self.preview_port = self._preview.sockets[0].getsockname()[1]
        self.clock = time.monotonic()
        self._ticker = loop.call_later(self.tick_interval, self._tick)
        if self.access_log is not None:
            self.access_log.start(loop)
        hc = self.settings.health_check
        self.health = HealthChecker(self.router.checked_servers(), hc.path, hc.interval, hc.timeout,
                                    hc.healthy_after, hc.unhealthy_after, self.router.set_health,
                                    self.upstream_tls)
        self.router.on_servers.append(self._servers_changed)
        if check_health:
            self.health.start()

    def _servers_changed(self) -> None:
        """_servers_changed: a server list changed (Router.set_servers): the health checks follow it."""
        if self.health is not None:
            self.health.update(self.router.checked_servers())

    def _client(self) -> Any:
        return ClientConnection(self)

    def _preview_client(self) -> Any:
        return ClientConnection(self, preview=True)

    @property
    def port(self) -> int:
        """port: the port actually listened on (config may say 0 for an ephemeral one)."""
        return self._port

    def snapshot(self) -> Snapshot:
        """snapshot: the data plane as plain values: Router.snapshot, the listeners, the client side.

        Called by admin/plane.py's LocalPlane when the admin side reads the data plane
        (status, scrape, probe), never per request. listen and preview_listen are the
        configured host with the port as bound (preview_listen is None until it listens).
        """
        preview = self.settings.preview_listen
        return Snapshot(
            router=self.router.snapshot(),
            listen=f"{self.settings.listen.host}:{self._port}",
            preview_listen=(f"{preview.host}:{self.preview_port}"
                            if preview is not None and self.preview_port else None),
            client_connections=len(self.connections),
            unrouted=tuple(self.unrouted),
            client_body_timeouts=self.client_body_timeouts,
            preview_token_set=self.preview_token is not None,
            access_log_dropped=self.access_log_dropped + sum(log.dropped for log in self._closing_logs)
            + (self.access_log.dropped if self.access_log is not None else 0),
            tls_handshake_failures=self.tls.handshake_failures if self.tls is not None else 0,
            tls_over_limit=self.tls.over_limit if self.tls is not None else 0,
            tls=self.tls is not None,
        )

    def set_tls(self, tls: "ListenerTLS | None", environments: "tuple[EnvironmentConfig, ...]") -> None:
        """set_tls: serve ``tls``'s certificates and reach each environment by its `tls` from now on.

        The reload's hook for "certificates re-read" (SPEC §12): every file is read and checked
        first (proxy/tls.py's CertificateError, nothing changed, when one is bad). New client
        connections get the new certificates, open ones keep theirs; new upstream connections
        and health checks use the new contexts, and an environment whose `tls` changed loses
        its idle pooled connections. Whether the listeners serve TLS at all is fixed at start
        (ValueError when ``tls`` would turn it on or off: a restart).
        """
        if (tls is None) != (self.tls is None):
            raise ValueError("tls: turning TLS on or off on listen and preview_listen needs a restart")
        upstream = upstream_contexts(environments)
        if tls is not None and self.tls is not None:
            self.tls.set_certificates(tls)
        before = self.upstream_tls_config
        self.upstream_tls_config = {env.name: env.tls for env in environments}
        self.upstream_tls.clear()
        self.upstream_tls.update(upstream)   # the one dict the health checker reads too
        for env in environments:
            if before.get(env.name, env.tls) != env.tls and env.name in self.router.environments:
                for server in self.router.environments[env.name].servers:
                    pool.close_idle(server)

    def reopen_access_log(self) -> None:
        """reopen_access_log: SIGUSR1 (log rotation): the access log opens its path again.

        Called by serve's signal handler (one process) or by the worker's agent (proxy/agent.py).
        """
        if self.access_log is not None:
            self.access_log.reopen()

    # ----------------------------------------------------------- upstream

    def connect(self, server: "Server", ex: "Exchange") -> None:
        """connect: open a new upstream connection for ``ex`` (called by Exchange)."""
        self._loop.create_task(self._connect(server, ex))

    async def _connect(self, server: "Server", ex: "Exchange") -> None:
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout):
                tls = self.upstream_tls.get(server.env.name) if self.upstream_tls else None
                if tls is None:
                    _, conn = await self._loop.create_connection(
                        partial(UpstreamConnection, self, server), server.host, server.port)
                else:
                    _, conn = await self._loop.create_connection(
                        partial(UpstreamConnection, self, server), server.host, server.port,
                        ssl=tls[0], server_hostname=tls[1] or server.host)
        except TimeoutError:
            ex.connect_time += time.monotonic() - began
            ex.connect_failed(server, f"no connection within timeouts.connect ({self.connect_timeout}s)")
            return
        except OSError as exc:
            ex.connect_time += time.monotonic() - began
            ex.connect_failed(server, describe_os_error(exc))
            return
        ex.connect_time += time.monotonic() - began   # the access log's upstream_connect_ms
        ex.attach(conn, reused=False)

    def flush_soon(self, conn: ClientConnection | UpstreamConnection) -> None:
        """flush_soon: write what ``conn`` gathered once this pass of the event loop has
        handled every read that was ready.

        Writes made in one burst wake a peer that sleeps in epoll once rather
        than once per message, which on a busy proxy is a large part of the
        kernel's cost per request. Callers set conn.flush_due, so each
        connection is queued once per pass.
        """
        if not self._due:
            self._loop.call_soon(self.flush_due)
        self._due.append(conn)

    def flush_due(self) -> None:
        """flush_due: flush every connection queued by flush_soon, in the order queued."""
        due = self._due
        self._due = []
        for conn in due:
            conn.flush()

    # -------------------------------------------------------------- ticker

    def _tick(self) -> None:
        now = self.clock = time.monotonic()
        try:
            self._check_timeouts(now)
        except Exception:
            log.exception("timeout scan failed")
        self._ticker = self._loop.call_later(self.tick_interval, self._tick)

    def _check_timeouts(self, now: float) -> None:
        upstream_timeout = self.upstream_timeout
        send_timeout = self.keepalive_timeout
        body_timeout = self.client_body_timeout
        for conn in list(self.connections):
            if conn.closed:
                # A client that never reads what is left to flush holds its slot: cut it.
                if now - conn.closed_at > send_timeout:
                    conn.transport.abort()
                continue
            if conn.tunnel is not None:
                continue
            if conn.in_head and not conn.paused and now > conn.head_deadline:
                conn.timed_out_head()
                continue
            queue = conn.queue
            if not queue:
                if not conn.in_head and now > conn.idle_deadline:
                    conn.close()
                continue
            ex = queue[0]
            up = ex.conn
            if ex is conn.reading and not conn.paused and (
                    not ex.head.expect or up is not None and up.got_bytes):
                # Its request body is still coming and this proxy reads it: the wait is the
                # client's, and the upstream cannot be expected to answer before it ends
                # (unless the client waits for its 100 Continue, RFC 9110 §10.1.1).
                if now - ex.body_at > body_timeout:
                    ex.client_timed_out()
                continue
            if up is not None and (ex.state == SENT or ex.state == RESPONDING):
                # A response paused by a slow client is cut only after keepalive_idle.
                limit = send_timeout if up.reading_paused else upstream_timeout
                if now - up.active_at > limit:
                    ex.timed_out()
        idle_limit = now - self.keepalive_timeout
        for env in self.router.environments.values():
            for server in env.servers:
                pool.expire(server, idle_limit)

    # ------------------------------------------------------------ shutdown

    def connection_closed(self, conn: ClientConnection) -> None:
        """connection_closed: called by ClientConnection.connection_lost."""
        if self._idle is not None and not self.connections:
            self._idle.set()

    def listener_fds(self) -> tuple[list[int], list[int]]:
        """listener_fds: the file descriptors of the listen and preview_listen sockets (a successor
        is handed them: admin/handoff.py)."""
        listen = [s.fileno() for s in self._server.sockets] if self._server is not None else []
        preview = [s.fileno() for s in self._preview.sockets] if self._preview is not None else []
        return listen, preview

    def stop_accepting(self, keep: bool = False) -> None:
        """stop_accepting: accept no new connection from now on; the open ones go on.

        A successor that was handed the same listening sockets (SIGUSR2, admin/handoff.py)
        accepts what comes next; shutdown calls it first. With ``keep`` this process keeps its
        own descriptors of the sockets, so that `resume_accepting` can take them back should
        the successor die before it serves.
        """
        self.closing = True
        if keep and self._kept is None:
            self._kept = ([os.dup(s.fileno()) for s in self._server.sockets] if self._server is not None else [],
                          [os.dup(s.fileno()) for s in self._preview.sockets] if self._preview is not None else [])
        for server in (self._server, self._preview):
            if server is not None:
                server.close()

    async def resume_accepting(self) -> bool:
        """resume_accepting: accept again on the sockets stop_accepting(keep=True) kept (a
        successor died before it served: this process serves on). False when none were kept."""
        kept, self._kept = self._kept, None
        if kept is None or self._loop is None:
            return False
        listens, previews = kept
        for fd in listens[1:] + previews[1:]:
            os.close(fd)                # one socket per listener, as start and a successor use
        self.closing = False
        for conn in self.connections:   # made meanwhile (a TLS handshake then in flight): kept alive again
            conn.closing = False
        if listens:
            self._server = await self._listen(self._client, socket.socket(fileno=listens[0]), "", 0, LISTEN_BACKLOG)
        if previews:
            self._preview = await self._listen(self._preview_client, socket.socket(fileno=previews[0]), "", 0,
                                               PREVIEW_BACKLOG)
        return True

    async def _listen(self, factory: Any, sock: socket.socket | None, host: str, port: int, backlog: int) -> Any:
        """_listen: a listener serving ``factory``'s connections on ``sock``, else on host:port.

        Plain HTTP is the event loop's server. TLS is a TLSListener (proxy/tlsstream.py), whose
        handshakes are bounded like a request head (timeouts.client_header).
        """
        if self.tls is None:
            if sock is not None:
                return await self._loop.create_server(factory, sock=sock, backlog=backlog)
            return await self._loop.create_server(factory, host, port, backlog=backlog, reuse_address=True)
        sockets = [sock] if sock is not None else listening_sockets(host, port)
        return TLSListener(self._loop, sockets, self.tls, factory, self.client_header_timeout, backlog,
                           self.max_connections)

    def _close_kept(self) -> None:
        kept, self._kept = self._kept, None
        for fd in (kept[0] + kept[1]) if kept is not None else []:
            os.close(fd)

    async def shutdown(self, timeout: float | None = None) -> dict:
        """shutdown: stop accepting, let in-flight requests finish, then cut the rest.

        Returns counts: connections open at the start, and how many had to be cut.
        """
        timeout = self.settings.drain_timeout if timeout is None else timeout
        self.stop_accepting()
        self._close_kept()
        if self.router.hold_gate is not None:
            self.router.resume()
        self.router.refuse_fenced("cutover is stopping and this replica's route is not confirmed (fleet lease)")
        open_at_start = len(self.connections)
        self._idle = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        if not self.connections:
            self._idle.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        cut = 0
        for conn in list(self.connections):
            cut += 1
            for ex in list(conn.queue):
                ex.force_close()
            conn.abort()
            conn.transport.abort()   # also when a graceful close is still waiting to flush
        for env in self.router.environments.values():
            pool.close_environment(env)
        await self.close()
        return {"connections": open_at_start, "cut": cut}

    async def close(self) -> None:
        """close: stop the ticker and the health checks, write the access log's last lines
        (after shutdown, or in tests)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.health is not None:
            await self.health.stop()
        if self.access_log is not None and self._loop is not None:
            await self.access_log.close()
        if self._closing_tasks:
            await asyncio.wait(set(self._closing_tasks))
        for server in (self._server, self._preview):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._server = self._preview = None
