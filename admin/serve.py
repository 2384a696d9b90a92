"""serve: run the router and its admin API from a config until SIGTERM or SIGINT.

Called by ``cutover serve``. The saved state (SPEC §8) decides the live
route; a state naming an environment the config lacks stops the start. The
first signal starts a graceful shutdown (stop accepting, let in-flight
requests finish up to drain_timeout, close idle connections, exit 0); a
second one exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import signal
from dataclasses import dataclass

from aiohttp import web

from proxy import build as data_plane_build
from proxy.config import Config
from proxy.router import Router
from proxy.server import Proxy

from .api import make_app
from .controller import Controller
from .state import FileStateStore

log = logging.getLogger("cutover")


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
    """Running: a started router with its admin API (for serve, the demo and tests)."""

    proxy: Proxy
    controller: Controller
    admin: web.AppRunner
    admin_port: int

    async def stop(self, timeout: float | None = None) -> dict:
        """stop: shut the data plane down gracefully, then the admin API."""
        result = await self.proxy.shutdown(timeout)
        await self.admin.cleanup()
        return result


async def start(config: Config) -> Running:
    """start: load the state, start the proxy and the admin API; raises StateError or OSError."""
    if not config.admin.listen.is_loopback and not config.admin.token:
        raise ValueError("admin.listen is not a loopback address and admin.token is not set")
    store = FileStateStore(config.state_file)
    for temp in store.remove_leftovers():
        log.warning("removed %s, a state save interrupted before its rename", temp)
    state = Controller.initial_state(config, store)
    router = Router.from_config(config)
    proxy = Proxy(config, router)
    controller = Controller(config, router, store, state, proxy)
    await proxy.start()
    controller.start()
    token = config.admin.token if config.admin.auth != "none" else None
    runner = web.AppRunner(make_app(controller, proxy, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.admin.listen.host, config.admin.listen.port)
    try:
        await site.start()
    except OSError:
        await proxy.shutdown(0)
        await runner.cleanup()
        raise
    admin_port = site._server.sockets[0].getsockname()[1]
    return Running(proxy, controller, runner, admin_port)


async def serve(config: Config) -> int:
    """serve: start everything, wait for a signal, shut down gracefully; returns the exit status."""
    running = await start(config)
    route = running.proxy.router.route
    log.info("cutover listening on %s:%d, admin on %s:%d, live=%s generation=%d (state %s; data plane %s)",
             config.listen.host, running.proxy.port, config.admin.listen.host, running.admin_port,
             route.live, route.generation, running.controller.store.describe(), data_plane_build())
    warning = build_warning()
    if warning:
        log.warning("%s", warning)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        log.info("signal %s: draining (up to %ss)", signal.Signals(signum).name, config.drain_timeout)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()
    result = await running.stop()
    log.info("stopped: %d connections open at shutdown, %d cut at drain_timeout",
             result["connections"], result["cut"])
    return 0
