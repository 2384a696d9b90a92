"""agent: a worker process's end of its supervisor channel (SPEC §9.1).

With ``workers: N`` the supervisor (admin/workers.py) binds the listeners and starts N
processes of ``python -m proxy.agent``, each with its own event loop, a Router, a Proxy
accepting on the sockets it was handed, and one channel: a Unix socket carrying
length-prefixed pickled tuples, both ways. A worker holds nothing of the control plane.

Its argv names the descriptors it was handed: the channel, listen (and preview) sockets, and
the memory every worker of the router counts its held requests in (--tally, its cells at
--slot of --slots: proxy/hold.py HoldTally); and --nice, how much it lowers its own CPU
priority as it starts (config worker_nice: the supervisor's work goes first on busy CPUs).

Supervisor -> worker:
  ("start", settings, route, hold, fence, health, check_health)   the first message, once
                                              (settings carry the current server lists)
  ("apply", seq, route | None, hold | None, servers | None, settings | None)
                                              take a reload's settings (Proxy.configure, and the
                                              log format and level) / set server lists
                                              (Router.set_servers) / swap the route / set or
                                              release the hold, then ack
  ("fence", until)                            move the fence (Router.fence: a fleet replica's
                                              lease), no answer
  ("snapshot", seq)                           answer with a snapshot now
  ("health", env, address, ok, reason)        one health-check result from the checking worker
                                              (counted once this worker's health checks exist:
                                              one sent while it starts waits for them)
  ("check",)                                  probe the servers from now on (the checking worker's
                                              slot was retired: admin/workers.py)
  ("close",)                                  accept no new connection (a successor takes over)
  ("open",)                                   accept again (the successor died before it served)
  ("reopen",)                                 open the access log's file again (SIGUSR1 to the supervisor)
  ("stop", timeout)                           drain (up to timeout) and exit
Worker -> supervisor:
  ("ready", pid, snapshot)          listening, serving the route it was started with
  ("ack", seq, generation, snapshot)   sent after the swap, never on receipt
  ("snapshot", seq | None, snapshot)   an answer, or the periodic push (seq None)
  ("drain", DrainSnapshot)          a drain of this worker ended
  ("health", env, address, ok, reason, healthy, ok_streak, fail_streak)   a probe result, from
                                    the one worker that checks, and the server's health and
                                    streaks once it counted it
  ("closed",)                       it accepts no new connection any more
  ("opened", ok)                    it accepts again (ok False: it could not)
  ("stopped", result)               Proxy.shutdown's counts, just before exit

A hold is (held, until), health a tuple of (env, address, healthy, ok_streak, fail_streak)
(what the checking worker last counted: a worker started from it counts on as the checker
does) and servers (lists, tag, at_start): lists {env: ((Address, weight), ...)} (admin/plane.py
Change). Servers are named by address, not by index: a list that changes moves the indexes.
The channel closing means the supervisor is gone: the worker stops accepting at once, drains
and exits, so no orphan keeps serving a route nobody steers (PR_SET_PDEATHSIG does the same on
Linux when the supervisor is killed before the channel is read).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

from . import CODE_CHANGED_STATUS, CODE_STAMP
from .channel import Channel
from .heap import settle as settle_heap
from .hold import tallies, tally_memory
from .logs import FORMATS
from .logs import configure as configure_logging
from .router import Router
from .server import Proxy, new_event_loop

log = logging.getLogger("cutover.worker")

SNAPSHOT_EVERY = 0.25         # seconds between the snapshots a worker pushes unasked


class Agent:
    """Agent: the worker: its Proxy and Router, driven by the messages of its channel."""

    def __init__(self, listen: socket.socket, preview: socket.socket | None,
                 tally: tuple[int, int, int] | None = None) -> None:
        self.listen = listen
        self.preview = preview
        self.tally = tally                # (descriptor, slot, slots) of the router's hold counts
        self.proxy: Proxy | None = None
        self.channel: Channel | None = None
        self.started: asyncio.Future[tuple] = asyncio.get_running_loop().create_future()
        self.stopping: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._pusher: asyncio.TimerHandle | None = None
        self.early: list[tuple] = []      # messages that came before the start completed
        self.early_health: list[tuple] = []   # probe results that came before the checks existed
        self.checking = False             # this worker probes the servers (check_health)
        self.check_wanted = False         # a "check" came before its Proxy started

    # ------------------------------------------------------------- messages

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "start":
            if not self.started.done():
                self.started.set_result(message)
            return
        proxy = self.proxy
        if kind == "stop":
            self.stop(message[1])
        elif kind == "reopen":
            self.reopen()
        elif kind == "close":
            if proxy is not None:
                proxy.stop_accepting(keep=True)
            else:
                self.stop(None)       # still starting: it never listens
            self.send(("closed",))
        elif kind == "open":
            if proxy is not None:
                asyncio.get_running_loop().create_task(self.reopen_listeners(proxy))
        elif proxy is None:
            # Sent while this worker starts: applied once its router exists, before it listens.
            self.early.append(message)
        elif kind == "apply":
            _, seq, route, hold, servers, settings = message
            router = proxy.router
            if settings is not None:
                if (settings.log_format, settings.log_level) != (proxy.settings.log_format, proxy.settings.log_level):
                    configure_logging(settings.log_format, settings.log_level, worker=os.getpid())
                proxy.configure(settings)
            if servers is not None:
                lists, tag, at_start = servers
                for name, entries in lists.items():
                    router.set_servers(name, entries, tag, at_start)
            if route is not None:
                router.swap(route)
            if hold is not None:
                held, until = hold
                if held:
                    router.hold(until)
                else:
                    router.resume()
            self.send(("ack", seq, router.route.generation, proxy.snapshot()))
        elif kind == "fence":
            proxy.router.fence(message[1])
        elif kind == "check":
            self.check_health(proxy)
        elif kind == "snapshot":
            self.send(("snapshot", message[1], proxy.snapshot()))
        elif kind == "health":
            _, env, address, ok, reason = message
            health = proxy.health
            if health is None:
                self.early_health.append(message)     # Proxy.start makes the checks: counted then
                return
            server = proxy.router.server(env, address)
            if server is not None:
                router = proxy.router
                router.relayed_health = True    # the checking worker logged this transition already
                try:
                    health.report(server, ok, reason)
                finally:
                    router.relayed_health = False
        else:
            log.error("supervisor channel: unknown message %r", kind)

    def check_health(self, proxy: Proxy) -> None:
        """check_health: this worker probes the servers and sends each result to the supervisor,
        which relays it to the other workers."""
        health = proxy.health
        if health is None:
            self.check_wanted = True        # told while starting: run starts them once it listens
            return
        if self.checking:
            return
        self.checking = True
        health.on_result.append(
            lambda server, ok, reason: self.send(("health", server.env.name, server.address, ok, reason,
                                                  server.healthy, server.ok_streak, server.fail_streak)))
        health.start()

    async def reopen_listeners(self, proxy: Proxy) -> None:
        """reopen_listeners: accept again after a "close" (the successor died before it served)."""
        try:
            opened = await proxy.resume_accepting()
        except OSError as exc:
            log.error("worker %d cannot accept again: %s", os.getpid(), exc)
            opened = False
        self.send(("opened", opened))

    def reopen(self) -> None:
        """reopen: the access log opens its file again (log rotation); sent by the supervisor on
        its SIGUSR1, or SIGUSR1 to this worker itself. Before the Proxy exists there is nothing
        open: it opens the path as it is then."""
        if self.proxy is not None:
            self.proxy.reopen_access_log()

    def on_close(self) -> None:
        if self.proxy is not None and not self.stopping.done():
            log.warning("supervisor gone: worker %d stops accepting and drains", os.getpid())
        self.stop(None)

    def send(self, message: tuple) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def stop(self, timeout: float | None) -> None:
        """stop: begin the worker's exit (drain up to ``timeout``, None: drain_timeout)."""
        if not self.stopping.done():
            self.stopping.set_result(timeout)

    # ---------------------------------------------------------------- run

    async def run(self, channel_sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        _, self.channel = await loop.create_unix_connection(
            lambda: Channel(self.on_message, self.on_close), sock=channel_sock)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, None)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen)
        first: list[asyncio.Future[Any]] = [self.started, self.stopping]
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if self.started not in done:
            return 0
        _, settings, route, hold, fence, health, check_health = self.started.result()
        router = Router.from_settings(settings, route)
        if self.tally is not None:
            fd, slot, slots = self.tally
            router.hold_tally, router.fence_tally = tallies(tally_memory(fd, slots), slots, slot)
        router.fence(fence)
        for env, address, healthy, ok_streak, fail_streak in health:
            server = router.server(env, address)
            if server is not None:
                server.set_healthy(healthy)
                server.ok_streak, server.fail_streak = ok_streak, fail_streak
        held, until = hold
        if held:
            router.hold(until)
        proxy = self.proxy = Proxy(settings, router)
        for message in self.early:
            self.on_message(message)
        self.early = []
        await proxy.start(sock=self.listen, preview_sock=self.preview, check_health=False)
        for message in self.early_health:
            self.on_message(message)
        self.early_health = []
        router.on_drain.append(lambda drain: self.send(("drain", drain.snapshot())))
        if check_health or self.check_wanted:
            self.check_health(proxy)
        settle_heap()       # start-up's objects out of every later collection (proxy/heap.py)
        self.send(("ready", os.getpid(), proxy.snapshot()))
        self._push()
        timeout = await self.stopping
        if self._pusher is not None:
            self._pusher.cancel()
        result = await proxy.shutdown(timeout)
        self.send(("stopped", result))
        if self.channel is not None:
            self.channel.close()
        return 0

    def _push(self) -> None:
        if self.proxy is not None and not self.stopping.done():
            self.send(("snapshot", None, self.proxy.snapshot()))
            self._pusher = asyncio.get_running_loop().call_later(SNAPSHOT_EVERY, self._push)


def _die_with(parent: int) -> None:
    """_die_with: SIGTERM this process when its parent dies (Linux), and exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """main: ``python -m proxy.agent --channel FD --listen FD [--preview FD] --parent PID``."""
    parser = argparse.ArgumentParser(prog="python -m proxy.agent", description="a cutover worker process")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--preview", type=int)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=FORMATS)
    parser.add_argument("--code", help="the supervisor's CODE_STAMP: refuse to run on other files")
    parser.add_argument("--tally", type=int, help="the memory the workers count their held requests in (FD)")
    parser.add_argument("--slot", type=int, default=0, help="this worker's slot (its cells in --tally)")
    parser.add_argument("--slots", type=int, default=1, help="how many slots --tally has cells for")
    parser.add_argument("--nice", type=int, default=0,
                        help="run this much nicer than the supervisor (config worker_nice)")
    args = parser.parse_args(argv)
    _die_with(args.parent)
    # Until run installs its handler, a SIGUSR1 (log rotation) must not end this worker; a SIGHUP
    # (a reload is the supervisor's, which reaches workers through the plane; a hangup of the
    # process group) never does. A uvloop parent spawns it with every signal reset to default.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(args.log_format, args.log_level, worker=os.getpid())
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError as exc:
            log.warning("worker %d cannot lower its CPU priority by %d (worker_nice): %s; it runs as its "
                        "supervisor does", os.getpid(), args.nice, exc)
    if args.code is not None and args.code != CODE_STAMP:
        # cutover was installed again since the supervisor started: this process would run other
        # code than the supervisor that talks to it (its messages, its snapshots' layout).
        log.error("the data plane's files changed since the supervisor started (code %s, supervisor's %s): "
                  "not serving; restart cutover serve or upgrade it (SIGUSR2)", CODE_STAMP, args.code)
        return CODE_CHANGED_STATUS
    channel = socket.socket(fileno=args.channel)
    listen = socket.socket(fileno=args.listen)
    preview = socket.socket(fileno=args.preview) if args.preview is not None else None
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def run() -> int:
        tally = (args.tally, args.slot, args.slots) if args.tally is not None else None
        return await Agent(listen, preview, tally).run(channel)

    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
