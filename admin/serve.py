"""serve: run the router and its admin API from a config until SIGTERM or SIGINT.

Called by ``cutover serve``. The saved state (SPEC §8) decides the live
route; a state naming an environment the config lacks stops the start. The
first signal starts a graceful shutdown (stop accepting, let in-flight
requests finish up to drain_timeout, close idle connections, exit 0); a
second one exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import json
import logging
import os
import pickle
import signal
import socket
from dataclasses import dataclass

from aiohttp import web

from proxy import Address, CertificateError, Proxy, ServerTLS, Snapshot
from proxy import build as data_plane_build
from proxy import configure_logging, settle_heap

from .api import READINESS, admin_tokens, make_app
from .config import Config, ConfigError
from .controller import ControlError, Controller
from .early_signals import EARLY_SIGNALS
from .fleet.plane import FleetPlane
from .fleet.start import Fleet
from .handoff import Inherited, hand_over
from .listener import AdminRunner
from .plane import LocalPlane
from .workers import BindFailed, WorkerPlane, WorkerStartError, counters_only
from .state import FileStateStore, Revision, State, StateStore

log = logging.getLogger("cutover")


MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def upgrade_refusal(running: Running, pid: int | None = None) -> str | None:
    """upgrade_refusal: why SIGUSR2 must not hand over now, or None.

    As PID 1 (a container's entry point) this process's exit ends its successor too. During a
    hold the drain would release the held requests by the old route while the successor holds.
    """
    if (os.getpid() if pid is None else pid) == 1:
        return ("this is PID 1 (a container's entry point): its successor would end with it; "
                "restart the container, or run cutover under an init that keeps PID 1")
    if running.controller.state.held:
        return "traffic is held; resume first (the drain would release the held requests)"
    return None


def reuseport_migration(path: str = MIGRATE_REQ) -> str | None:
    """reuseport_migration: a warning when the kernel resets connections queued on a closing
    SO_REUSEPORT listener (net.ipv4.tcp_migrate_req is 0), else None (also where there is no such knob).

    Workers share listen through SO_REUSEPORT: with the knob at 0, connections still in the
    accept queue of a listener that closes (a stopping cutover beside its successor) are reset
    instead of moving to a listener that stays.
    """
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return None
    if value != "0":
        return None
    return ("net.ipv4.tcp_migrate_req is 0: connections queued on a closing listener are reset "
            "rather than moved to the listeners that stay; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1) "
            "before running a second cutover beside this one and stopping this one (the SIGUSR2 upgrade hands "
            "the same sockets over and is not affected)")


def build_warning() -> str | None:
    """build_warning: why this install runs slower than it should, or None; serve and demo print it.

    A regular install (`pip install .`) compiles the data plane when a C compiler and the
    Python headers are there and quietly falls back to pure Python otherwise (pip shows the
    build's own warning only with -v). The editable development install is pure Python on
    purpose, and a source tree run without installing is whatever was built into it: neither
    is warned about.
    """
    if data_plane_build() != "pure Python":
        return None
    try:
        direct_url = importlib.metadata.distribution("cutover").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        return None
    return ("the data plane runs as pure Python (about 0.7x the compiled build's throughput): "
            "the install found no C compiler or Python headers; install them (Debian: apt-get "
            "install gcc python3-dev) and reinstall with CUTOVER_COMPILE=require pip install .")


@dataclass
class Running:
    """Running: a started router with its admin API (for serve, the demo and tests).

    ``plane`` is a LocalPlane (workers: 1; ``proxy`` is its Proxy) or a WorkerPlane (``proxy`` None).
    """

    proxy: Proxy | None
    controller: Controller
    admin: web.AppRunner
    admin_port: int
    plane: LocalPlane | WorkerPlane | FleetPlane
    site: web.BaseSite | None = None
    admin_socket: socket.socket | None = None
    fleet: Fleet | None = None
    admin_tls: ServerTLS | None = None  # admin.tls's contexts; set_certificates swaps them (a reload)
    _admin_kept: int | None = None     # the admin socket's descriptor, kept while a successor starts

    def listener_fds(self) -> dict:
        """listener_fds: what a successor is handed: listen, preview and admin descriptors, and
        how many workers this router runs (a retired slot hands no socket)."""
        listen, preview = self.plane.listener_fds()
        return {"listen": listen, "preview": preview,
                "admin": self.admin_socket.fileno() if self.admin_socket is not None else -1,
                "workers": self.controller.config.workers}

    async def counters(self) -> bytes:
        """counters: the data plane's snapshot as it is now, pickled: what an upgrade's successor
        counts on from (admin/handoff.py)."""
        await self.plane.refresh()
        return pickle.dumps(self.plane.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)

    async def stop_accepting(self) -> None:
        """stop_accepting: neither the data plane nor the admin API accepts from now on (handoff);
        the admin socket is kept for resume_accepting."""
        await self.plane.stop_accepting()
        if self.site is not None:
            if self.admin_socket is not None and self._admin_kept is None:
                self._admin_kept = os.dup(self.admin_socket.fileno())
            await self.site.stop()
            self.site = None

    async def resume_accepting(self) -> None:
        """resume_accepting: the data plane and the admin API accept again (the successor died
        before it served, admin/handoff.py)."""
        await self.plane.resume_accepting()
        kept, self._admin_kept = self._admin_kept, None
        if kept is not None:
            self.admin_socket = socket.socket(fileno=kept)
            self.site = web.SockSite(self.admin, self.admin_socket,
                                     ssl_context=self.admin_tls.context if self.admin_tls is not None else None)
            await self.site.start()

    @property
    def port(self) -> int:
        """port: the port listen is bound to."""
        return self.plane.port

    async def stop(self, timeout: float | None = None) -> dict:
        """stop: /readyz turns 503, the hold timer stops, the data plane shuts down gracefully, then the admin API.

        The data plane's shutdown releases a hold; the state keeps it, so a restart holds
        again until the saved deadline.
        """
        self.admin.app[READINESS].begin_shutdown()
        self.controller.stop()
        result = await self.plane.shutdown(timeout)
        if self.fleet is not None:
            await self.fleet.close()
        await self.controller.close()      # the last drains' outcomes are in the store
        await self.admin.cleanup()
        return result


class StartError(Exception):
    """StartError: serve could not start a listener; the message names its config key, one line.

    Raised by start; ``cutover serve`` prints ``cutover: <message>`` and exits 1.
    """


@dataclass(frozen=True)
class StartPlan:
    """StartPlan: what serve starts from, as check_start found it.

    ``state`` is the saved state checked against the config, or a fresh one from config.live
    when ``saved`` is False (no state file yet); ``revision`` is the store's revision of what
    it read, the one the Controller's first commit expects.
    """

    store: FileStateStore
    state: State
    saved: bool
    revision: Revision = None


def check_start(config: Config) -> StartPlan:
    """check_start: every start-up check that needs no port; start and check-config call it.

    A non-loopback admin without a token is a ConfigError naming admin.token; an unreadable,
    corrupt or mismatched state file (one naming an environment the config lacks) a StateError
    naming the file. Reads the state file, writes nothing.
    """
    if not config.admin.listen.is_loopback and not config.admin.token:
        raise ConfigError("required unless admin.listen is loopback and admin.auth is none "
                          f'(admin.listen is "{config.admin.listen}")', key="admin.token")
    store = FileStateStore(config.state_file, history_limit=config.history_limit)
    saved, revision = store.read()
    return StartPlan(store, Controller.checked_state(config, saved, store.describe()), saved is not None,
                     revision)


def listen_failure(key: str, address: Address, exc: OSError) -> StartError:
    """listen_failure: the one-line StartError for a listener at config ``key`` that could not bind."""
    if exc.errno == errno.EADDRINUSE:
        return StartError(f"{key}: {address} is in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartError(f"{key}: {address} is not an address of this machine")
    if exc.errno == errno.EACCES:
        return StartError(f"{key}: {address}: permission denied (a port below 1024 needs privileges)")
    return StartError(f"{key}: cannot listen on {address}: {exc.strerror or exc}")


async def start(config: Config, inherited: Inherited | None = None) -> Running:
    """start: check, load the state, start the proxy and the admin API.

    With ``inherited`` (a predecessor's sockets, admin/handoff.py) it listens on those instead
    of binding, and starts its admin API only once the predecessor stopped accepting.
    Raises ConfigError or StateError (check_start), or StartError naming the config key of a
    listener that cannot bind; what had started is closed again first.
    """
    plan = check_start(config)
    if inherited is not None:
        # Closing a handed-over SO_REUSEPORT socket would reset what is queued on it, and a new
        # one cannot join a socket bound without SO_REUSEPORT: an upgrade keeps the number of
        # workers, else it is refused and the old serves on. A slot the predecessor retired
        # handed no socket: its worker binds a new one beside the others.
        theirs = inherited.workers if inherited.workers is not None else len(inherited.listens)
        if theirs != config.workers or len(inherited.listens) > theirs:
            raise StartError(f"workers: the running cutover has {theirs} and the config says {config.workers}; "
                             "an upgrade keeps the number of workers (stop and start cutover to change it)")
    for temp in plan.store.remove_leftovers():
        log.warning("removed %s, a state save interrupted before its rename", temp)
    store: StateStore = plan.store
    state, revision = plan.state, plan.revision
    fleet = None
    if config.store is not None:
        fleet, saved, revision = await Fleet.open(config, plan.store, f"{config.listen.host}:{config.listen.port}")
        store = fleet.store
        if saved is not None or fleet.connected:
            state = Controller.checked_state(config, saved, store.describe())
    route = Controller.route_of(state, tuple(config.environments))
    plane: LocalPlane | WorkerPlane
    if config.workers > 1:
        plane = WorkerPlane(config.settings(), route, config.workers, config.fleet.ack_timeout,
                            logging.getLevelName(logging.getLogger().getEffectiveLevel()), config.log.format,
                            config.worker_nice)
        try:
            if inherited is not None:
                if not config.preview_listen:
                    # The config no longer has a preview listener: the predecessor's close here
                    # (a connection to that port is refused, not left waiting on a socket nobody reads).
                    for sock in inherited.previews:
                        sock.close()
                plane.adopt(inherited.listens, inherited.previews if config.preview_listen else [])
            else:
                plane.bind()
        except BindFailed as exc:
            raise listen_failure(exc.key, exc.address, exc.error) from None
        except OSError as exc:
            raise listen_failure("listen", config.listen, exc) from None
        proxy = None
    else:
        plane = LocalPlane.build(config.settings(), route)
        proxy = plane.proxy
    steered: LocalPlane | WorkerPlane | FleetPlane = fleet.plane(plane) if fleet is not None else plane
    controller = Controller(config, steered, store, state, revision)
    controller.on_reload.append(lambda new, keys: _reloaded(new, keys, plane, steered))
    # A saved hold is back on the data plane before the first connection is accepted.
    await controller.start()
    if isinstance(plane, WorkerPlane):
        try:
            await plane.start()
        except WorkerStartError as exc:
            controller.stop()
            await plane.shutdown(0)
            await controller.close()
            raise StartError(str(exc)) from None
    else:
        socks = _single(inherited, config)
        try:
            await plane.proxy.start(*socks)
        except OSError as exc:
            # Proxy.start binds listen first: a port still 0 means that was the one that failed.
            key, address = (("listen", config.listen) if plane.proxy.port == 0
                            else ("preview_listen", config.preview_listen))
            controller.stop()
            await plane.proxy.shutdown(0)
            await controller.close()
            raise listen_failure(key, address, exc) from None
    if inherited is not None:
        carry_counters(plane, await inherited.ready_then_wait())
    runner = AdminRunner(make_app(controller, *admin_tokens(config)))
    await runner.setup()
    admin_tls = ServerTLS(config.admin.tls) if config.admin.tls is not None else None
    if admin_tls is not None:
        controller.on_reload.append(lambda new, keys: _admin_certificates(admin_tls, new))
    try:
        admin_sock = inherited.admin if inherited is not None else bind_admin(config.admin.listen)
        site = web.SockSite(runner, admin_sock, ssl_context=admin_tls.context if admin_tls is not None else None)
        await site.start()
        if inherited is not None:
            await inherited.serving()
    except OSError as exc:
        controller.stop()
        await plane.shutdown(0)
        await controller.close()
        await runner.cleanup()
        raise listen_failure("admin.listen", config.admin.listen, exc) from None
    admin_port = admin_sock.getsockname()[1]
    if fleet is not None:
        fleet.steer(controller)
        await fleet.join(controller.state, controller.revision)
    return Running(proxy, controller, runner, admin_port, steered, site, admin_sock, fleet, admin_tls)


def _admin_certificates(admin_tls: ServerTLS, config: Config) -> None:
    """_admin_certificates: a reload reads admin.tls's certificates again (new connections get them)."""
    if config.admin.tls is None:
        return                       # turning it off is a restart (admin/reload.py): not here
    try:
        admin_tls.set_certificates(config.admin.tls)
    except CertificateError as exc:
        log.error("reload: the admin API's certificates are not swapped: %s; serving the ones before", exc)


def _reloaded(config: Config, keys: list[str], plane: LocalPlane | WorkerPlane,
              steered: LocalPlane | WorkerPlane | FleetPlane) -> None:
    """_reloaded: what a reload changes outside the controller and the data plane's settings:
    this process's log lines, and how long a change waits for the workers' (and replicas') acks."""
    if "log.format" in keys or "log.level" in keys:
        configure_logging(config.log.format, config.log.level)
    if "fleet.ack_timeout" in keys:
        for each in (plane, steered):
            if isinstance(each, (WorkerPlane, FleetPlane)):
                each.ack_timeout = config.fleet.ack_timeout


def bind_admin(address: Address) -> socket.socket:
    """bind_admin: the admin API's listening socket (serve keeps it, to hand it to a successor)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def carry_counters(plane: LocalPlane | WorkerPlane, payload: bytes | None) -> None:
    """carry_counters: an upgrade's successor counts on from its predecessor's counters
    (``payload``, a pickled Snapshot from the handoff), so that requests, responses, bytes and
    errors never go back across it. Its gauges are not carried. A snapshot of other
    environments, or one this version cannot read (another layout), is left out: the counters
    then start from zero, as after a restart."""
    if payload is None:
        return
    try:
        theirs = pickle.loads(payload)      # noqa: S301 - from the predecessor that started this process
        ok = isinstance(theirs, Snapshot) and same_shape(plane.snapshot(), theirs)
    except Exception as exc:               # another version's snapshot layout
        log.warning("upgrade: the predecessor's counters cannot be read (%s); counting from zero", exc)
        return
    if not ok:
        log.warning("upgrade: the predecessor's counters are of other environments or another layout; "
                    "counting from zero")
        return
    plane.carry(counters_only(theirs))


def same_shape(ours: Snapshot, theirs: Snapshot) -> bool:
    """same_shape: whether ``theirs`` counts what ``ours`` counts, in the same places: the same
    environments in order, as many status classes and latency buckets, the same kinds of
    upstream errors (counters are added up position by position)."""
    kinds = tuple(kind for kind, _ in ours.router.environments[0].servers[0].upstream_errors) \
        if ours.router.environments and ours.router.environments[0].servers else None
    if ours.router.names() != theirs.router.names() or len(ours.unrouted) != len(theirs.unrouted):
        return False
    for mine, other in zip(ours.router.environments, theirs.router.environments):
        if (len(mine.responses), len(mine.latency_counts)) != (len(other.responses), len(other.latency_counts)):
            return False
        if kinds is not None and any(tuple(k for k, _ in s.upstream_errors) != kinds for s in other.servers):
            return False
    return True


def _single(inherited: Inherited | None, config: Config) -> tuple[socket.socket | None, socket.socket | None]:
    """_single: the listen and preview_listen sockets of a one-process data plane from ``inherited``.

    Sockets handed over beyond the first (a predecessor with more workers) are closed: what was
    queued on them is reset, unless net.ipv4.tcp_migrate_req moves it.
    """
    if inherited is None:
        return None, None
    extra = inherited.listens[1:] + inherited.previews[(1 if config.preview_listen else 0):]
    if extra:
        log.warning("upgrade: %d handed-over listening sockets are not needed with workers: 1; closing them",
                    len(extra))
        for sock in extra:
            sock.close()
    preview = inherited.previews[0] if inherited.previews and config.preview_listen else None
    return inherited.listens[0], preview


async def serve(config: Config, noted: list[int] | None = None) -> int:
    """serve: start everything, wait for a signal, shut down gracefully; returns the exit status.

    ``noted``: the EARLY_SIGNALS that came before (cmd_serve notes them from its start)."""
    # SIGHUP, SIGUSR1 and SIGUSR2 must not end the process while it starts (their default): one
    # that comes before it serves is noted here; a reload (SIGHUP) and a reopen of the access log
    # (SIGUSR1) are done once it serves, an upgrade (SIGUSR2) is refused. Workers ignore SIGHUP
    # themselves (proxy/agent.py; a uvloop parent spawns them with every signal at its default):
    # a reload reaches them through the plane.
    loop = asyncio.get_running_loop()
    early: list[int] = noted if noted is not None else []
    for signum in EARLY_SIGNALS:
        loop.add_signal_handler(signum, early.append, signum)
    running = await start(config, Inherited.take())
    settle_heap()       # start-up's objects out of every later collection (proxy/heap.py)
    route = running.plane.snapshot().router.route
    log.info("cutover listening on %s:%d, admin on %s:%d, live=%s generation=%d (state %s; data plane %s; "
             "workers %d)", config.listen.host, running.port, config.admin.listen.host, running.admin_port,
             route.live, route.generation, running.controller.store.describe(), data_plane_build(),
             config.workers, extra={"action": "start", "generation": route.generation, "env": route.live})
    if config.workers > 1:
        migrate = reuseport_migration()
        if migrate is not None:
            log.warning("%s", migrate)
    warning = build_warning()
    if warning:
        log.warning("%s", warning)
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("signal %s: draining (up to %ss)", signal.Signals(signum).name, config.drain_timeout)
        stopping.set()

    async def upgrade() -> None:
        async with running.controller.lock:     # no mutation from here on, unless it fails
            if stopping.is_set():
                return
            refusal = upgrade_refusal(running)
            if refusal is not None:
                log.warning("SIGUSR2: not upgrading: %s", refusal)
                return
            try:
                successor = await hand_over(running.listener_fds(), running.stop_accepting,
                                            running.resume_accepting, counters=running.counters)
            except Exception:
                # Past the successor's "ready" this process may have stopped accepting: exit
                # rather than linger serving nothing.
                log.exception("upgrade failed after the successor said it serves; exiting")
                stopping.set()
                raise
            if successor is not None:
                stopping.set()
                await asyncio.Event().wait()     # keep the lock: this process steers nothing any more

    upgrading: set[asyncio.Task] = set()

    def on_upgrade() -> None:
        if upgrading or stopping.is_set():
            log.warning("SIGUSR2: an upgrade or a shutdown is already under way")
            return
        log.info("SIGUSR2: upgrading: starting a successor on the same sockets")
        task = loop.create_task(upgrade())
        upgrading.add(task)
        task.add_done_callback(upgrading.discard)

    reloading: set[asyncio.Task] = set()

    async def reload() -> None:
        try:
            result = await running.controller.reload("SIGHUP")
        except ControlError as exc:
            log.error("SIGHUP: %s", exc)
            return
        except Exception:
            log.exception("SIGHUP: the reload failed")
            return
        if not result.get("changed"):
            log.info("SIGHUP: the config file is unchanged; nothing to reload")

    def on_reload() -> None:
        if stopping.is_set():
            log.warning("SIGHUP: shutting down; not reloading")
            return
        log.info("SIGHUP: reloading %s", config.source)
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    def on_reopen() -> None:
        # SIGUSR1 (log rotation): the access log opens its file again, in whichever process writes it.
        access_log = running.controller.config.access_log     # as the last reload left it
        if access_log is None:
            log.info("SIGUSR1: no access log to reopen")
            return
        log.info("SIGUSR1: reopening the access log %s", access_log.path)
        if running.proxy is not None:
            running.proxy.reopen_access_log()
            return
        local = running.plane.local if isinstance(running.plane, FleetPlane) else running.plane
        if isinstance(local, WorkerPlane):
            local.reopen_access_log()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGUSR2, on_upgrade)
    loop.add_signal_handler(signal.SIGUSR1, on_reopen)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    for signum in dict.fromkeys(early):          # each once, in the order they came
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR2:
            log.warning("%s came while starting: not upgrading (send it again now that this process serves)",
                        name)
            continue
        log.info("%s came while starting: handling it now", name)
        (on_reload if signum == signal.SIGHUP else on_reopen)()
    await stopping.wait()
    if reloading:
        # A reload under way ends first (bounded); one still waiting for the lock then is cancelled:
        # it must not apply to a data plane that stopped.
        await asyncio.wait(set(reloading), timeout=5)
        for task in list(reloading):
            task.cancel()
    result = await running.stop()
    for task in list(upgrading):
        task.cancel()
    generation = running.controller.state.generation
    log.info("stopped: %d connections open at shutdown, %d cut at drain_timeout; generation %d",
             result["connections"], result["cut"], generation, extra={"action": "stop", "generation": generation})
    return 0
