"""HealthChecker: active HTTP checks of every server of every environment.

One loop per server sends ``GET <path>`` on a fresh connection every
interval; 2xx and 3xx count as success. ``unhealthy_after`` consecutive
failures mark a server down and ``healthy_after`` successes bring it back.
The checker knows only its narrow callback, ``set_status(server, healthy,
reason)`` (Router.set_health); passive failures reset its success streak.
``update`` follows a server list that changed (Router.on_servers, through the Proxy):
a loop starts for each added server and stops for each one gone. A server of an
environment with `tls` is checked over TLS, with the data plane's context (proxy/tls.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable, Iterable

from .backends import Server
from .errors import describe_os_error

log = logging.getLogger("cutover.health")


async def probe(server: Server, path: str, timeout: float,
                tls: tuple[ssl.SSLContext, str | None] | None = None) -> tuple[bool, str]:
    """probe: one check; returns (healthy, reason). ``tls``: (context, server_name) for a TLS server."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if tls is None:
                reader, writer = await asyncio.open_connection(server.host, server.port)
            else:
                reader, writer = await asyncio.open_connection(server.host, server.port, ssl=tls[0],
                                                               server_hostname=tls[1] or server.host)
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cutover-health\r\n"
                         b"Connection: close\r\n\r\n" % (path.encode(), server.address.encode()))
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer within {timeout}s"
    except OSError as exc:
        return False, describe_os_error(exc)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False, "not an HTTP response (status line too long)"
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "not an HTTP response"
    status = int(parts[1])
    if 200 <= status < 400:
        return True, f"HTTP {status}"
    return False, f"HTTP {status}"


class HealthChecker:
    """HealthChecker: runs probe() on every server and applies the streak rules."""

    def __init__(self, servers: Iterable[Server], path: str, interval: float, timeout: float,
                 healthy_after: int, unhealthy_after: int,
                 set_status: Callable[[Server, bool, str], None],
                 tls: dict[str, tuple[ssl.SSLContext, str | None]] | None = None) -> None:
        self.servers = list(servers)
        # {environment name: (context, server_name)}: Proxy.upstream_tls, which Proxy.set_tls updates.
        self.tls = tls if tls is not None else {}
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.healthy_after = healthy_after
        self.unhealthy_after = unhealthy_after
        self.set_status = set_status
        # Called with every probe's result after it is counted: a worker that checks for its
        # supervisor's other workers sends them on (proxy/agent.py).
        self.on_result: list[Callable[[Server, bool, str], None]] = []
        self._tasks: dict[Server, asyncio.Task] = {}
        self._running = False

    def configure(self, path: str, interval: float, timeout: float, healthy_after: int,
                  unhealthy_after: int) -> None:
        """configure: a reload's health_check (Proxy.configure): each server's next probe uses
        them; the streaks counted so far stay (a server keeps its health). A new interval starts
        every server's checks again at once, not after the old interval's wait."""
        self.path = path
        restart = interval != self.interval and self._running
        self.interval = interval
        self.timeout = timeout
        self.healthy_after = healthy_after
        self.unhealthy_after = unhealthy_after
        if restart:
            for task in self._tasks.values():
                task.cancel()
            self._tasks = {}
            self.start()

    def start(self) -> None:
        """start: one checking task per server."""
        self._running = True
        for server in self.servers:
            if server not in self._tasks:
                self._tasks[server] = asyncio.create_task(self._run(server))

    def update(self, servers: Iterable[Server]) -> None:
        """update: check exactly ``servers`` from now on; called by Proxy when a server list changed.

        A checker that was never started (a worker that only counts forwarded results) only
        keeps the list.
        """
        self.servers = list(servers)
        if not self._running:
            return
        wanted = set(self.servers)
        for server, task in list(self._tasks.items()):
            if server not in wanted:
                task.cancel()
                del self._tasks[server]
        self.start()

    async def stop(self) -> None:
        """stop: cancel the checking tasks and wait for them."""
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = {}

    def report(self, server: Server, ok: bool, reason: str) -> None:
        """report: count one result; call set_status when a streak crosses its threshold."""
        if ok:
            server.fail_streak = 0
            server.ok_streak += 1
            if not server.healthy and server.ok_streak >= self.healthy_after:
                self.set_status(server, True, reason)
        else:
            server.ok_streak = 0
            server.fail_streak += 1
            if server.healthy and server.fail_streak >= self.unhealthy_after:
                self.set_status(server, False, reason)

    async def _run(self, server: Server) -> None:
        while True:
            try:
                ok, reason = await probe(server, self.path, self.timeout, self.tls.get(server.env.name))
                self.report(server, ok, reason)
                for callback in self.on_result:
                    callback(server, ok, reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health check of %s failed", server.address)
            await asyncio.sleep(self.interval)
