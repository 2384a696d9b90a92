"""workers: the supervisor's data plane, N worker processes behind one DataPlane (SPEC §9.1).

With ``workers: N > 1`` serve's start-up builds a WorkerPlane instead of a LocalPlane. It
binds listen (and preview_listen) once per worker slot with SO_REUSEPORT and keeps those
sockets: the kernel spreads new connections evenly over the slots by their addresses, and a
worker that dies leaves its socket open here, so connections queued on it wait for the
restarted worker instead of being reset. Each worker is ``python -m proxy.agent`` with its
slot's sockets and a channel (proxy/agent.py: the messages).

Every Change goes to every live worker; ``apply`` returns once each acked the generation
(sent after its swap) or ``fleet.ack_timeout`` passed, naming the workers still pending. A
worker that starts or restarts gets the current route and hold first, and applies every
change sent before it listens. Reads merge the workers' snapshots (proxy.merge): counters
add up, including those of workers that exited, so they never go back. A drain is reported
once, summed over the workers that applied its change. Health checks run in one worker (the
first slot, the next one if that slot is retired); every result reaches the others, which
count it with their own streaks. A worker started from files that changed since the
supervisor started (cutover installed again in place) refuses to run (proxy.CODE_STAMP): its
slot is retired, not restarted, until an upgrade (SIGUSR2) or a restart.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import proxy as data_plane
from proxy import (LATENCY_BUCKETS, UPSTREAM_ERROR_KINDS, Address, Channel, DrainSnapshot,
                   EnvironmentSnapshot, Route, RouterSnapshot, ServerSnapshot, Settings, Snapshot, merge_snapshots,
                   serving)

from .plane import Ack, Change, DrainCallback, Hold, WorkerInfo, servers_only

log = logging.getLogger("cutover.workers")

START_TIMEOUT = 30.0        # seconds a worker may take to listen
STOP_GRACE = 5.0            # seconds past the drain a worker may take to exit before it is killed
REFRESH_TIMEOUT = 1.0       # seconds a read waits for the workers' fresh snapshots
DRAIN_REPORT_GRACE = 5.0    # seconds past drain_timeout a drain waits for every worker's part
STALL_LIMIT = 5.0           # seconds a live worker may go without a message (it pushes 4 a second) before
                            # it is taken for stuck, killed and restarted


# What a worker that exits with CODE_CHANGED_STATUS found (proxy/agent.py).
CODE_CHANGED = ("cutover's data plane files changed since this supervisor started (installed again?); "
                "upgrade it (SIGUSR2) or restart it to serve with every worker")


class WorkerStartError(Exception):
    """WorkerStartError: a worker did not start; the message says which and why."""


class BindFailed(OSError):
    """BindFailed: a listener could not bind; ``key`` is its config key, ``address`` its address."""

    def __init__(self, key: str, address: Address, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.key, self.address, self.error = key, address, error


def bind(address: Address, port: int) -> socket.socket:
    """bind: a listening SO_REUSEPORT socket on ``address`` (``port`` instead of its port when set)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, port or address.port))
        sock.listen(data_plane.LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def blank_snapshot(settings: Settings, route: Route) -> Snapshot:
    """blank_snapshot: the data plane before any worker started: every counter 0, servers healthy."""
    errors = tuple((kind, 0) for kind in UPSTREAM_ERROR_KINDS)
    envs = tuple(EnvironmentSnapshot(
        name=e.name, healthy=True, inflight=0, connections=0,
        servers=tuple(ServerSnapshot(address=str(a), healthy=True, inflight=0, connections=0, weight=w, requests=0,
                                     upstream_errors=errors) for a, w in zip(e.servers, e.weights)),
        responses=(0,) * 6, latency_counts=(0,) * (len(LATENCY_BUCKETS) + 1), latency_sum=0.0, bytes_in=0,
        bytes_out=0) for e in settings.environments)
    router = RouterSnapshot(route=route, held=False, held_requests=0, hold_until=None, environments=envs, drains=())
    return Snapshot(router=router, listen=f"{settings.listen.host}:{settings.listen.port}", preview_listen=None,
                    client_connections=0, unrouted=(0,) * 6, client_body_timeouts=0,
                    preview_token_set=settings.preview_token is not None, tls=settings.tls is not None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def counters_only(snapshot: Snapshot) -> Snapshot:
    """counters_only: ``snapshot`` with its gauges zeroed: what an exited worker still adds to the sums.

    Its servers and environments count as healthy (what merging takes as "no opinion"): health
    is the live workers'.
    """
    def env(e):
        servers = tuple(dataclasses.replace(s, inflight=0, connections=0, healthy=True) for s in e.servers)
        return dataclasses.replace(e, inflight=0, connections=0, servers=servers, retired=(), healthy=True)
    router = dataclasses.replace(snapshot.router, held=False, held_requests=0, hold_until=None, drains=(),
                                 fenced_requests=0, environments=tuple(env(e) for e in snapshot.router.environments))
    return dataclasses.replace(snapshot, router=router, client_connections=0)


def _shared_file() -> int:
    """_shared_file: a descriptor of a file no path names (memory-backed where the system has
    memfd), for memory the workers share."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("cutover-hold-tally", os.MFD_CLOEXEC)
        except OSError as exc:      # an old kernel, or a sandbox that refuses it
            log.info("no memfd for the workers' hold counts (%s); using a temporary file", exc)
    fd, path = tempfile.mkstemp(prefix="cutover-hold-tally-")
    os.unlink(path)
    return fd


class Worker:
    """Worker: one slot, its sockets and its current process."""

    def __init__(self, slot: int, listen: socket.socket, preview: socket.socket | None) -> None:
        self.slot = slot
        self.listen = listen
        self.preview = preview
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.pid: int | None = None
        self.ready: asyncio.Future[None] | None = None
        self.alive = False
        self.started: float | None = None
        self.started_mono = 0.0
        self.restarts = 0
        self.crashes = 0               # exits in a row that came soon after a start
        self.generation = 0
        self.snapshot: Snapshot | None = None
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.stopped: asyncio.Future[dict] | None = None
        self.gone: asyncio.Event = asyncio.Event()
        self.heard = 0.0               # monotonic time of its last message
        self.error: str | None = None  # why the slot has no process and gets none (its code changed)


class WorkerPlane:
    """WorkerPlane: the DataPlane of a supervisor and its worker processes."""

    def __init__(self, settings: Settings, route: Route, count: int, ack_timeout: float,
                 log_level: str = "INFO", log_format: str = "text", nice: int = 0) -> None:
        self.settings = settings
        self.route = route
        self.hold = Hold(False)
        self.fence = math.inf           # Router.fence of every worker (a fleet replica's lease)
        self.count = count
        self.ack_timeout = ack_timeout
        self.log_level = log_level
        self.log_format = log_format     # the workers log as the supervisor does (config `log`)
        # Config worker_nice: each worker lowers its CPU priority by this much as it starts, so
        # the supervisor's work (admin answers, acks, the state's save) goes first when the
        # workers keep the CPUs busy.
        self.nice = nice
        self.workers: list[Worker] = []
        # hold.max_queued bounds the router as a whole: every worker counts what its gates hold
        # in this memory (proxy/hold.py HoldTally), which each maps from the descriptor it is
        # given; made by start.
        self.tally_fd = -1
        self.tally: mmap.mmap | None = None
        self.retired: Snapshot | None = None     # the counters of exited workers, summed
        self.port = 0
        self.preview_port: int | None = None
        self.closing = False
        self._seq = itertools.count(1)
        self._drain_callbacks: list[DrainCallback] = []
        self._drains: dict[tuple[str, int], dict[int, DrainSnapshot]] = {}
        self._expected: dict[tuple[str, int], set[int]] = {}
        self._drain_timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        # (env, address) -> (healthy, ok_streak, fail_streak): the checking worker's last word
        self._health: dict[tuple[str, str], tuple[bool, int, int]] = {}
        self._reported: collections.deque[tuple[str, int]] = collections.deque(maxlen=64)
        self._tasks: set[asyncio.Task] = set()
        self.on_restart: list[Callable[[WorkerInfo], None]] = []
        self.checker = 0               # the slot whose worker runs the health checks
        self._watchdog: asyncio.Task | None = None

    # ---------------------------------------------------------------- start

    def adopt(self, listens: list[socket.socket], previews: list[socket.socket]) -> None:
        """adopt: listen on sockets a predecessor handed over (admin/handoff.py) instead of binding.

        Slots beyond what was handed over bind more sockets on the same ports (SO_REUSEPORT);
        handed sockets beyond the slots are closed.
        """
        s = self.settings
        self.port = listens[0].getsockname()[1]
        self.preview_port = previews[0].getsockname()[1] if previews else None
        for extra in listens[self.count:] + previews[self.count:]:
            extra.close()
        workers = []
        for slot in range(self.count):
            listen = listens[slot] if slot < len(listens) else bind(s.listen, self.port)
            preview = None
            if s.preview_listen is not None:
                preview = previews[slot] if slot < len(previews) else bind(s.preview_listen, self.preview_port or 0)
                self.preview_port = preview.getsockname()[1]
            workers.append(Worker(slot, listen, preview))
        self.workers = workers

    def listener_fds(self) -> tuple[list[int], list[int]]:
        """listener_fds: the listen and preview_listen sockets of every slot (what a successor is handed)."""
        kept = [w for w in self.workers if w.listen.fileno() >= 0]     # a retired slot's are closed
        return ([w.listen.fileno() for w in kept], [w.preview.fileno() for w in kept if w.preview is not None])

    def bind(self) -> None:
        """bind: every slot's listen and preview_listen sockets; BindFailed names the key."""
        s = self.settings
        sockets: list[tuple[socket.socket, socket.socket | None]] = []
        try:
            port, preview_port = 0, 0
            for _ in range(self.count):
                try:
                    listen = bind(s.listen, port)
                except OSError as exc:
                    raise BindFailed("listen", s.listen, exc) from None
                port = listen.getsockname()[1]
                preview = None
                if s.preview_listen is not None:
                    try:
                        preview = bind(s.preview_listen, preview_port)
                    except OSError as exc:
                        listen.close()
                        raise BindFailed("preview_listen", s.preview_listen, exc) from None
                    preview_port = preview.getsockname()[1]
                sockets.append((listen, preview))
        except BindFailed:
            for listen, preview in sockets:
                listen.close()
                if preview is not None:
                    preview.close()
            raise
        self.port = port
        self.preview_port = preview_port or None
        self.workers = [Worker(slot, listen, preview) for slot, (listen, preview) in enumerate(sockets)]

    async def start(self) -> None:
        """start: bind (unless done), start every worker and wait until each listens."""
        if not self.workers:
            self.bind()
        self.tally_fd = _shared_file()
        self.tally = data_plane.tally_memory(self.tally_fd, self.count)
        for worker in self.workers:
            await self._spawn(worker)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_stalls())
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for worker in self.workers:
                    await self._wait_ready(worker)
        except TimeoutError:
            raise WorkerStartError(f"a worker did not listen within {START_TIMEOUT:.0f}s") from None

    async def _watch_stalls(self) -> None:
        """_watch_stalls: kill a live worker that sent nothing for STALL_LIMIT (its loop is stuck:
        it would hold every change to ack_timeout and strand the connections of its socket);
        the restart path starts a new one."""
        while not self.closing:
            await asyncio.sleep(STALL_LIMIT / 5)
            now = time.monotonic()
            for worker in self.workers:
                process = worker.process
                if (worker.alive and not self.closing and now - worker.heard > STALL_LIMIT
                        and process is not None and process.returncode is None):
                    log.error("worker %s (slot %d) sent nothing for %.1fs: killing it to restart it",
                              worker.pid, worker.slot, now - worker.heard)
                    process.kill()

    async def _wait_ready(self, worker: Worker) -> None:
        ready = worker.ready
        if ready is None:
            raise WorkerStartError(f"worker slot {worker.slot} was not started")
        gone = asyncio.ensure_future(worker.gone.wait())
        try:
            await asyncio.wait({ready, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not ready.done():
            code = worker.process.returncode if worker.process is not None else None
            if code == data_plane.CODE_CHANGED_STATUS:
                raise WorkerStartError(f"worker {worker.pid} refused to run: {CODE_CHANGED}")
            raise WorkerStartError(f"worker {worker.pid} exited with status {code} before it listened")

    async def _spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), worker.listen.fileno()]
        argv = [sys.executable, "-m", "proxy.agent", "--channel", str(theirs.fileno()),
                "--listen", str(worker.listen.fileno()), "--parent", str(os.getpid()),
                "--log-level", self.log_level, "--log-format", self.log_format, "--code", data_plane.CODE_STAMP,
                "--tally", str(self.tally_fd), "--slot", str(worker.slot), "--slots", str(self.count),
                "--nice", str(self.nice)]
        fds.append(self.tally_fd)
        if worker.preview is not None:
            fds.append(worker.preview.fileno())
            argv += ["--preview", str(worker.preview.fileno())]
        env = dict(os.environ)
        # The worker imports the very data plane this process runs (pure or compiled).
        root = str(Path(data_plane.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=fds, stdin=subprocess.DEVNULL, env=env, start_new_session=False)
        finally:
            theirs.close()
        worker.pid = worker.process.pid
        worker.ready = loop.create_future()
        worker.stopped = loop.create_future()
        worker.gone = asyncio.Event()
        worker.alive = False
        worker.generation = 0
        worker.started = time.time()
        worker.started_mono = worker.heard = time.monotonic()
        process = worker.process
        _, worker.channel = await loop.create_unix_connection(
            lambda: Channel(lambda m: self._on_message(worker, process, m), lambda: self._on_close(worker, process)),
            sock=ours)
        health = self._health_now()
        worker.channel.send(("start", self.settings, self.route, (self.hold.held, self.hold.until), self.fence,
                             health, worker.slot == self.checker))

    # ------------------------------------------------------------- messages

    def _on_message(self, worker: Worker, process: Any, message: tuple) -> None:
        if worker.process is not process:
            return
        worker.heard = time.monotonic()
        kind = message[0]
        if kind == "ready":
            _, pid, snapshot = message
            self._seen(worker, snapshot)
            worker.generation = snapshot.router.route.generation
            worker.alive = True
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)
        elif kind == "ack":
            _, seq, generation, snapshot = message
            self._seen(worker, snapshot)
            worker.generation = generation
            future = worker.waiting.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(generation)
        elif kind == "snapshot":
            _, seq, snapshot = message
            self._seen(worker, snapshot)
            future = worker.waiting.pop(seq, None) if seq is not None else None
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "drain":
            if message[1].tag:
                self._server_drain_part(message[1])
            else:
                self._drain_part(worker.slot, message[1])
        elif kind == "health":
            # One probe result, and the server's health and streaks once the checker counted it:
            # what a worker started from now on starts with. The result goes to every other worker,
            # one still starting too (sent after its "start", it counts it once its checks exist).
            _, env, address, ok, reason, healthy, ok_streak, fail_streak = message
            if address in self._addresses().get(env, ()):   # not a removed server still probed while it drains
                self._health[(env, address)] = (healthy, ok_streak, fail_streak)
            for other in self.workers:
                if other is not worker and other.channel is not None:
                    other.channel.send(("health", env, address, ok, reason))
        elif kind == "closed":
            future = worker.waiting.pop(0, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "opened":
            future = worker.waiting.pop(-1, None)
            if future is not None and not future.done():
                future.set_result(message[1])
        elif kind == "stopped":
            if worker.stopped is not None and not worker.stopped.done():
                worker.stopped.set_result(message[1])

    def _on_close(self, worker: Worker, process: Any) -> None:
        if worker.process is not process:
            return
        was_alive = worker.alive
        worker.alive = False
        worker.channel = None
        for future in worker.waiting.values():
            if not future.done():
                future.set_result(None)
        worker.waiting.clear()
        if worker.snapshot is not None:
            part = counters_only(worker.snapshot)
            self.retired = part if self.retired is None else merge_snapshots([self.retired, part], self.route)
            worker.snapshot = None
        for key, expected in list(self._expected.items()):
            if worker.slot in expected and worker.slot not in self._drains.get(key, {}):
                expected.discard(worker.slot)
                if not self.closing:
                        log.warning("worker %s exited during the drain of %s (generation %d); its part is lost",
                                worker.pid, key[0], key[1])
                self._drain_check(key)
        task = asyncio.get_running_loop().create_task(self._reap(worker, process, was_alive))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, worker: Worker, process: Any, was_alive: bool) -> None:
        try:
            async with asyncio.timeout(STOP_GRACE):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        # What it held went with it (its connections closed): the router's hold counts the others'.
        if self.tally is not None:
            data_plane.clear_slot(self.tally, self.count, worker.slot)
        worker.gone.set()
        if self.closing:
            return
        code = process.returncode
        if code == data_plane.CODE_CHANGED_STATUS or (not was_alive and data_plane.code_stamp() != data_plane.CODE_STAMP):
            # It refused the files, or (an older or broken install: it could not even say so)
            # it exited before it served while the files are not the ones this process runs.
            self._retire(worker)
            return
        cause = f"signal {_signal_name(-code)}" if code is not None and code < 0 else f"status {code}"
        quick = time.monotonic() - worker.started_mono < 1.0
        worker.crashes = worker.crashes + 1 if quick or not was_alive else 0
        if worker.crashes:
            await asyncio.sleep(min(5.0, 0.1 * 2 ** (worker.crashes - 1)))
        if self.closing:
            return
        old = worker.pid
        worker.restarts += 1
        for attempt in itertools.count():
            try:
                await self._spawn(worker)
                break
            except OSError as exc:
                log.error("worker slot %d: cannot start a worker (%s); trying again", worker.slot, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
                if self.closing:
                    return
        log.warning("worker %s (slot %d) exited with %s; restarted as worker %s with generation %d",
                    old, worker.slot, cause, worker.pid, self.route.generation)
        for callback in self.on_restart:
            callback(self._info(worker))

    def _retire(self, worker: Worker) -> None:
        """_retire: the slot of a worker that refused to run on files that changed since this
        supervisor started. Started again it would run the same files, so the slot stays empty
        until this supervisor is upgraded (SIGUSR2) or restarted; changes wait for the live
        workers only. Its sockets close, so the kernel sends new connections to the other
        workers' (those queued on it move there with net.ipv4.tcp_migrate_req, else are reset),
        unless no other slot keeps one: then connections wait in its queue for the upgrade."""
        worker.error = CODE_CHANGED
        others = [w for w in self.workers if w is not worker and w.error is None]
        if others:
            worker.listen.close()
            if worker.preview is not None:
                worker.preview.close()
            if worker.slot == self.checker:
                # Health checks move to a live slot if there is one (told now), else to the next
                # one (started with them).
                heir = next((w for w in others if w.alive), others[0])
                self.checker = heir.slot
                if heir.channel is not None:
                    heir.channel.send(("check",))
        log.error("worker %s (slot %d) refused to run: %s; slot %d is not started again%s", worker.pid,
                  worker.slot, CODE_CHANGED, worker.slot,
                  "" if any(w.alive for w in others) else "; NO worker serves now")

    def _seen(self, worker: Worker, snapshot: Snapshot) -> None:
        """_seen: ``worker``'s latest snapshot; the checking worker's also says each server's health."""
        worker.snapshot = snapshot
        if worker.slot == self.checker:
            self._remember_health(snapshot)

    def _health_now(self) -> tuple[tuple[str, str, bool, int, int], ...]:
        """_health_now: each current server's health and streaks as the checking worker last said
        them (its snapshots and each probe result, in the order it sent them; a checker that
        exited: its last word), else (it said nothing yet) as any live worker last saw them."""
        if not self._health:
            for worker in sorted(self.workers, key=lambda w: w.slot):
                if worker.alive and worker.snapshot is not None:
                    self._remember_health(worker.snapshot)
                    break
        current = self._addresses()
        return tuple((env, address, *counted) for (env, address), counted in self._health.items()
                     if address in current.get(env, ()))

    def _remember_health(self, snapshot: Snapshot) -> None:
        """_remember_health: the health a snapshot gives its servers (a snapshot has no streaks: those
        of a server whose health it does not change are kept, from the probe results)."""
        health = self._health
        for env in snapshot.router.environments:
            for server in env.servers:
                key = (env.name, server.address)
                known = health.get(key)
                if known is None or known[0] != server.healthy:
                    health[key] = (server.healthy, 0, 0)

    def _addresses(self) -> dict[str, set[str]]:
        """_addresses: each environment's current server list, as the addresses snapshots name."""
        return {e.name: {str(a) for a in e.servers} for e in self.settings.environments}

    def _new_servers(self, lists: dict, before: dict[str, set[str]], at_start: bool) -> None:
        """_new_servers: a change of server lists (``before``: the addresses each list had): what a
        worker started later takes for each server, as Router.set_servers has it on the running
        ones. A server the change adds is down until checked, unless the list is the one the router
        starts with; one a drain still holds (removed, then listed again) is taken back as it is
        (the checker's last snapshot says how); a removed one is forgotten."""
        checker = next((w for w in self.workers if w.slot == self.checker), None)
        draining = {(env.name, s.address): s.healthy for env in checker.snapshot.router.environments
                    for s in env.retired} if checker is not None and checker.snapshot is not None else {}
        for name, entries in lists.items():
            listed = {str(address) for address, _ in entries}
            for key in [k for k in self._health if k[0] == name and k[1] not in listed]:
                del self._health[key]
            if not at_start:
                for address in listed - before.get(name, set()):
                    self._health[(name, address)] = (draining.get((name, address), False), 0, 0)

    # --------------------------------------------------------------- drains

    def _server_drain_part(self, drain: DrainSnapshot) -> None:
        """_server_drain_part: one worker's drain of the servers a new list removed, passed on as it is.

        Each worker starts it when its own fallback ends, so the parts are not waited for
        together: the Controller adds them up by their tag.
        """
        for callback in self._drain_callbacks:
            try:
                callback(drain)
            except Exception:
                log.exception("drain callback failed")

    def _drain_part(self, slot: int, drain: DrainSnapshot) -> None:
        key = (drain.environment, drain.generation)
        if key in self._reported:
            return          # a part later than the give-up timer: that drain was recorded without it
        self._drains.setdefault(key, {})[slot] = drain
        self._drain_check(key)

    def _expect_drains(self, before: Route, route: Route, slots: set[int]) -> None:
        """_expect_drains: the drains ``route`` starts (of the environments ``before`` sent traffic
        to and it does not) are reported once each of ``slots`` reported its part."""
        for name in serving(before) - serving(route):
            key = (name, route.generation)
            self._expected[key] = set(slots)
            loop = asyncio.get_running_loop()
            self._drain_timers[key] = loop.call_later(self.settings.drain_timeout + DRAIN_REPORT_GRACE,
                                                      self._drain_give_up, key)
            self._drain_check(key)

    def _drain_give_up(self, key: tuple[str, int]) -> None:
        expected = self._expected.get(key)
        if expected is not None:
            missing = expected - set(self._drains.get(key, {}))
            if missing and self._drains.get(key):
                log.warning("drain of %s (generation %d): no report from worker slot(s) %s",
                            key[0], key[1], sorted(missing))
            expected.clear()
            self._drain_check(key, final=True)

    def _drain_check(self, key: tuple[str, int], final: bool = False) -> None:
        expected = self._expected.get(key)
        parts = self._drains.get(key, {})
        if expected is None or (not final and not expected <= set(parts)):
            return
        self._expected.pop(key, None)
        self._drains.pop(key, None)
        self._reported.append(key)
        timer = self._drain_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if not parts:
            return      # this environment did not drain at that generation
        merged = data_plane.merge_drains(list(parts.values()))
        for callback in self._drain_callbacks:
            try:
                callback(merged)
            except Exception:
                log.exception("drain callback failed")

    def on_drain(self, callback: DrainCallback) -> None:
        """on_drain: ``callback`` gets each drain once, summed over the workers that ran it."""
        self._drain_callbacks.append(callback)

    # -------------------------------------------------------------- changes

    def _request(self, worker: Worker, message: Callable[[int], tuple]) -> asyncio.Future[Any]:
        seq = next(self._seq)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.waiting[seq] = future
        channel = worker.channel
        if channel is None:
            future.set_result(None)
        else:
            channel.send(message(seq))
        return future

    async def apply(self, change: Change) -> Ack:
        """apply: send ``change`` to every worker; return once each live one acked it or ack_timeout passed.

        A worker still starting gets it too (it applies it before it listens) but is not
        waited for; one that exits during the wait is not waited for either (it restarts
        with the current route).
        """
        before = self.route
        if change.route is not None:
            self.route = change.route
        if change.hold is not None:
            self.hold = change.hold
        if change.settings is not None:
            # A reload: every worker from now on, restarted ones too, reads these (with the
            # server lists they serve now, which only a change of servers replaces).
            serving = {e.name: e for e in self.settings.environments}
            self.settings = dataclasses.replace(change.settings, environments=tuple(
                dataclasses.replace(e, servers=serving[e.name].servers, weights=serving[e.name].weights)
                if e.name in serving else e for e in change.settings.environments))
            self.log_level, self.log_format = change.settings.log_level.upper(), change.settings.log_format
        servers = None
        if change.servers is not None:
            # What a worker that starts from now on is built with ("start" carries the settings).
            lists = change.servers
            before = self._addresses()
            self.settings = dataclasses.replace(self.settings, environments=tuple(
                dataclasses.replace(e, servers=tuple(a for a, _ in lists[e.name]),
                                    weights=tuple(w for _, w in lists[e.name]))
                if e.name in lists else e for e in self.settings.environments))
            servers = (dict(lists), change.servers_tag, change.servers_at_start)
            self._new_servers(lists, before, change.servers_at_start)
        route = change.route
        hold = (change.hold.held, change.hold.until) if change.hold is not None else None
        live = [w for w in self.workers if w.alive]
        waits = {}
        for worker in self.workers:
            if worker.channel is None:
                continue
            settings = self.settings if change.settings is not None else None
            future = self._request(worker, lambda seq: ("apply", seq, route, hold, servers, settings))
            if worker in live:
                waits[worker] = (worker.pid, future)
        if waits:
            await asyncio.wait([f for _, f in waits.values()], timeout=self.ack_timeout)
        generation = self.route.generation
        acked = tuple(pid for w, (pid, f) in waits.items() if f.done() and f.result() == generation)
        # A worker waited for that is still the same live process and did not ack this generation.
        pending = tuple(pid for w, (pid, f) in waits.items() if pid not in acked and w.alive and w.pid == pid)
        if route is not None:
            # Every worker it was sent to drains (a late one too); the give-up timer bounds the wait.
            self._expect_drains(before, route, {w.slot for w in waits})
        if pending:
            log.warning("generation %d: worker(s) %s did not acknowledge within fleet.ack_timeout (%ss)",
                        generation, ", ".join(map(str, pending)), self.ack_timeout)
        return Ack(generation, complete=not pending, acked=acked, pending=pending)

    def set_fence(self, until: float) -> None:
        """set_fence: every worker serves by its route only while ``time.monotonic() <= until``
        (Router.fence; inf lifts it), a worker started later too. Sent in order with the changes
        before it and not waited for: a fleet replica's lease renewal must not wait for a
        worker's ack (admin/fleet/start.py)."""
        self.fence = until
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(("fence", until))

    # ---------------------------------------------------------------- reads

    async def refresh(self) -> None:
        """refresh: ask every live worker for a snapshot now; wait (bounded) for the answers."""
        futures = [self._request(w, lambda seq: ("snapshot", seq)) for w in self.workers if w.alive]
        if futures:
            await asyncio.wait(futures, timeout=REFRESH_TIMEOUT)

    def snapshot(self) -> Snapshot:
        """snapshot: the workers' latest snapshots merged, with the counters of exited workers."""
        parts = [w.snapshot for w in self.workers if w.snapshot is not None]
        if self.retired is not None:
            parts.append(servers_only(self.retired, self._addresses()))
        if not parts:
            parts = [blank_snapshot(self.settings, self.route)]    # before the first worker listens
        merged = merge_snapshots(parts, self.route)
        merged = dataclasses.replace(merged, router=dataclasses.replace(merged.router, environments=tuple(
            self._current_servers(env) for env in merged.router.environments)))
        router = dataclasses.replace(merged.router, held=self.hold.held, hold_until=self.hold.until if self.hold.held
                                     else None)
        listen = f"{self.settings.listen.host}:{self.port}"
        preview = self.settings.preview_listen
        return dataclasses.replace(merged, router=router, listen=listen,
                                   preview_listen=f"{preview.host}:{self.preview_port}" if preview is not None
                                   and self.preview_port else None)

    def carry(self, counters: Snapshot) -> None:
        """carry: count on from ``counters`` (an upgrade's predecessor's, gauges zeroed), as from
        the workers that exited."""
        self.retired = counters if self.retired is None else merge_snapshots([self.retired, counters], self.route)

    def _current_servers(self, env: EnvironmentSnapshot) -> EnvironmentSnapshot:
        """_current_servers: ``env`` with the servers of its current list, in its order (the counters
        of exited workers still name servers an older list had)."""
        config = next((e for e in self.settings.environments if e.name == env.name), None)
        if config is None:
            return env
        by_address = {s.address: s for s in env.servers}
        servers = tuple(by_address[str(a)] for a in config.servers if str(a) in by_address)
        current = {s.address for s in servers}
        retired = tuple(s for s in env.retired if s.address not in current)
        return dataclasses.replace(env, servers=servers, retired=retired)

    def _info(self, worker: Worker) -> WorkerInfo:
        snap = worker.snapshot
        envs = snap.router.environments if snap is not None else ()
        return WorkerInfo(pid=worker.pid, generation=worker.generation, inflight=sum(e.inflight for e in envs),
                          connections=snap.client_connections if snap is not None else 0,
                          started=worker.started, restarts=worker.restarts, alive=worker.alive,
                          requests=sum(sum(e.responses) for e in envs), error=worker.error)

    def workers_info(self) -> tuple[WorkerInfo, ...]:
        """workers_info: every slot's current process, for status and /metrics."""
        return tuple(self._info(w) for w in self.workers)

    def reopen_access_log(self) -> None:
        """reopen_access_log: SIGUSR1 to the supervisor: every worker opens its access log again
        (each writes the file itself; proxy/agent.py). A worker still starting opens the path
        as it is when it starts."""
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(("reopen",))

    # ------------------------------------------------------------- shutdown

    async def stop_accepting(self) -> None:
        """stop_accepting: every worker accepts no new connection (a successor holds the same
        sockets and accepts from now on); no worker is restarted any more. Bounded wait."""
        self.closing = True
        loop = asyncio.get_running_loop()
        futures = []
        for worker in self.workers:
            if worker.channel is not None:
                future = worker.waiting[0] = loop.create_future()
                worker.channel.send(("close",))
                futures.append(future)
        if futures:
            await asyncio.wait(futures, timeout=STOP_GRACE)

    async def resume_accepting(self) -> bool:
        """resume_accepting: after stop_accepting, every worker accepts again, and a worker that
        exited meanwhile is started again (the successor died before it served: this supervisor
        serves on). Bounded wait; whether every worker accepts again."""
        self.closing = False
        loop = asyncio.get_running_loop()
        if self._watchdog is not None and self._watchdog.done():
            self._watchdog = loop.create_task(self._watch_stalls())     # it ended with closing
        futures = []
        for worker in self.workers:
            if worker.channel is not None:
                future = worker.waiting[-1] = loop.create_future()
                worker.channel.send(("open",))
                futures.append(future)
            elif worker.gone.is_set() and worker.error is None:
                task = loop.create_task(self._spawn(worker))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if futures:
            await asyncio.wait(futures, timeout=STOP_GRACE)
        return all(f.done() and f.result() for f in futures)

    async def shutdown(self, timeout: float | None = None) -> dict:
        """shutdown: every worker stops accepting and drains (up to ``timeout``), then exits.

        Returns the counts summed over the workers: connections open at the start, and how
        many had to be cut.
        """
        self.closing = True
        timeout = self.settings.drain_timeout if timeout is None else timeout
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.send(("stop", timeout))
        total = {"connections": 0, "cut": 0}
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                async with asyncio.timeout(timeout + STOP_GRACE):
                    await worker.gone.wait()
            except TimeoutError:
                log.warning("worker %s did not exit within %ss of its drain; killed", worker.pid, STOP_GRACE)
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.wait()
            if worker.stopped is not None and worker.stopped.done():
                for key in total:
                    total[key] += worker.stopped.result().get(key, 0)
        for task in list(self._tasks):
            task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for timer in self._drain_timers.values():
            timer.cancel()
        for worker in self.workers:
            worker.listen.close()
            if worker.preview is not None:
                worker.preview.close()
        if self.tally is not None:
            self.tally.close()
            os.close(self.tally_fd)
            self.tally = None
        return total
