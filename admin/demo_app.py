"""The demo application: a small aiohttp service that says which version and pool it is.

``cutover demo`` starts two pools of it on loopback ports: v1 as blue, v2 as
green. Every answer names the version, so the switch is visible to clients.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

COUNTS = web.AppKey("counts", dict)


def make_demo_app(version: str, env: str, server: int) -> web.Application:
    """make_demo_app: the demo service of ``version`` running as server ``server`` of ``env``."""
    counts = {"requests": 0}

    async def index(request: web.Request) -> web.Response:
        counts["requests"] += 1
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(min(delay, 30.0))
        return web.json_response({"version": version, "env": env, "server": server, "ok": True})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def fingerprint(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"version": version, "python": "3", "features": ["orders"]}),
                            content_type="application/json")

    app = web.Application()
    app[COUNTS] = counts
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/__fingerprint", fingerprint)
    return app


class DemoServer:
    """DemoServer: one running demo application on an ephemeral loopback port."""

    def __init__(self, version: str, env: str, server: int) -> None:
        self.app = make_demo_app(version, env, server)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "DemoServer":
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
