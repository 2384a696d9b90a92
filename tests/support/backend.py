"""backend: the test backends, a real aiohttp application server on an ephemeral loopback port.

Each backend answers with its own name so tests can tell blue from green, and
offers the paths the data-plane tests need (slow, echo, chunked, headers,
status, close mid-response, WebSocket, and POST /__fail, which ``set_failing``
calls to make it answer 500). The ``backends`` fixture (plugin.py) starts two.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
from aiohttp import WSMsgType, web

from admin.story.demo_app import serve_app

STATE = web.AppKey("state", dict)


def make_app(name: str) -> web.Application:
    """make_app: the test application; ``name`` is echoed in every answer."""
    state = {"requests": 0, "fail": False}

    async def index(request: web.Request) -> web.Response:
        state["requests"] += 1
        if state["fail"]:
            return web.Response(status=500, text=f"{name} failing\n")
        return web.Response(text=f"{name}\n")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(status=500 if state["fail"] else 200, text="ok\n")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return web.Response(text=f"{name} slow\n")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Backend": name, "X-Length": str(len(body))})

    async def headers(request: web.Request) -> web.Response:
        pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response({"backend": name, "headers": pairs, "path": request.raw_path,
                                  "method": request.method})

    async def chunked(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        delay = float(request.query.get("delay", "0"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"{name} part {i}\n".encode())
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.Response:
        size = int(request.query.get("size", str(1 << 20)))
        return web.Response(body=b"x" * size)

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"{name} {code}\n")

    async def close_mid(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"partial")
        await asyncio.sleep(0.05)
        request.transport.close()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{name}: {msg.data}")
        return sock

    async def fail(request: web.Request) -> web.Response:
        state["fail"] = request.query.get("on", "1") == "1"
        return web.Response(text=json.dumps(state))

    app = web.Application()
    app[STATE] = state
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/headers", headers)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/close-mid", close_mid)
    app.router.add_get("/ws", ws)
    app.router.add_post("/__fail", fail)
    return app


class Backend:
    """Backend: one running test application server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.app = make_app(name)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return self.app[STATE]["requests"]

    async def start(self, port: int = 0, ssl_context: "ssl.SSLContext | None" = None) -> "Backend":
        """start: serve on 127.0.0.1:``port`` (0: a free one); over TLS with ``ssl_context``."""
        if ssl_context is None:
            self.runner, self.port = await serve_app(self.app, port, shutdown_timeout=0.5)
            return self
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ssl_context).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def set_failing(backend: Backend, on: bool) -> None:
    """set_failing: make ``backend`` answer 500 on / and /healthz (``on``), or 200 again."""
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(5):
            async with session.post(f"http://{backend.address}/__fail?on={'1' if on else '0'}") as resp:
                assert resp.status == 200


async def served_by(session: aiohttp.ClientSession, port: int, headers: dict | None = None) -> str:
    """served_by: the name of the backend that answers one request on a new connection to ``port``
    (a proxy in front of the test backends); the answer must be a 200."""
    async with session.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close", **(headers or {})}) as resp:
        text = await resp.text()
        assert resp.status == 200, (port, resp.status, text)
        return text.strip()
