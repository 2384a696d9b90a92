"""A fingerprint answered in bytes that are not UTF-8 fails the drift gate, naming the server.

The gate used to fail with the codec's own message ("'utf-8' codec can't decode byte
0xff ..."), which named no server; the gates now read every answer through one Fetch that
replaces undecodable bytes, so such a fingerprint is "not JSON" like any other unreadable
one, and the reason names the server that sent it (SPEC §6: a failed gate says why).
"""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.support.adminapi import JsonAdmin as Admin


class App:
    """App: an application server whose /__fingerprint answers ``fingerprint`` (bytes, as JSON)."""

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/__fingerprint":
            return web.Response(body=self.fingerprint, content_type="application/json")
        return web.Response(text="ok\n")

    async def start(self) -> "App":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def pair():
    apps = {"blue": await App(b'{"version": "v1"}').start(), "green": await App(b'{"version": "\xff\xfe"').start()}
    yield apps
    for app in apps.values():
        await app.runner.cleanup()


async def test_a_fingerprint_in_bytes_that_are_not_utf8_is_a_failed_drift_gate(make_stack, admin_session, pair):
    running = await make_stack(pair, gates={"drift": {}})
    status, body = await Admin(admin_session, running.admin_port).call("POST", "/v1/flip", {})
    assert (status, body["code"]) == (409, "gate_failed"), body
    drift = body["gates"][-1]
    assert (drift["gate"], drift["passed"]) == ("drift", False)
    assert drift["reason"] == f"no fingerprint from green ({pair['green'].address}: not JSON)"
    assert running.controller.state.live == "blue"
