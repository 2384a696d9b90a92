"""serve: run the data plane from a config until SIGTERM or SIGINT.

Called by ``cutover serve``. The first signal starts a graceful shutdown (stop
accepting, let in-flight requests finish up to drain_timeout, close idle
connections, exit 0); a second one exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from proxy.config import Config
from proxy.server import Proxy

log = logging.getLogger("cutover")


async def serve(config: Config) -> int:
    """serve: start the proxy, wait for a signal, shut down gracefully; returns the exit status."""
    proxy = Proxy(config)
    await proxy.start()
    log.info("cutover listening on %s:%d, live=%s generation=%d", config.listen.host, proxy.port,
             proxy.router.route.live, proxy.router.route.generation)
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
    result = await proxy.shutdown()
    log.info("stopped: %d connections open at shutdown, %d cut at drain_timeout",
             result["connections"], result["cut"])
    return 0
