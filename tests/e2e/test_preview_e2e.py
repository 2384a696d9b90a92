"""The preview route: the idle environment off the user's path (preview_listen or X-Cutover-Env)."""

from __future__ import annotations

import aiohttp

from proxy.route import Route
from tests.support.rawhttp import raw_exchange

TOKEN = "t0ken"


async def get(port: int, path: str = "/", headers: dict | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as resp:
            return resp.status, await resp.text()


async def test_preview_listener_reaches_the_idle_environment_and_follows_flips(make_proxy):
    proxy = await make_proxy(preview_listen="127.0.0.1:0")
    assert await get(proxy.preview_port) == (200, "green\n")
    assert await get(proxy.port) == (200, "blue\n")
    old = proxy.router.route
    proxy.router.swap(Route(old.generation + 1, "green", previous="blue", environments=old.environments))
    assert await get(proxy.preview_port) == (200, "blue\n")
    assert await get(proxy.port) == (200, "green\n")


async def test_preview_goes_to_the_canary_while_one_runs(make_proxy):
    proxy = await make_proxy(preview_listen="127.0.0.1:0")
    old = proxy.router.route
    proxy.router.swap(Route(old.generation + 1, "blue", canary="green", canary_weight=10,
                            environments=old.environments))
    assert await get(proxy.preview_port) == (200, "green\n")


async def test_preview_requests_are_not_held(make_proxy):
    proxy = await make_proxy(preview_listen="127.0.0.1:0")
    proxy.router.hold(5)
    try:
        assert await get(proxy.preview_port) == (200, "green\n")
    finally:
        proxy.router.resume()


async def test_x_cutover_env_header_with_the_admin_token(make_proxy):
    proxy = await make_proxy(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    status, body = await get(proxy.port, "/headers", {"X-Cutover-Env": "green", "X-Cutover-Token": TOKEN})
    assert status == 200 and '"backend": "green"' in body
    assert "x-cutover" not in body.lower()       # neither header reaches the application
    assert await get(proxy.port, "/", {"X-Cutover-Env": "blue", "X-Cutover-Token": TOKEN}) == (200, "blue\n")


async def test_x_cutover_env_without_or_with_a_wrong_token_is_403(make_proxy):
    proxy = await make_proxy(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    status, body = await get(proxy.port, "/", {"X-Cutover-Env": "green"})
    assert status == 403 and "X-Cutover-Token" in body
    status, _ = await get(proxy.port, "/", {"X-Cutover-Env": "green", "X-Cutover-Token": "nope"})
    assert status == 403


async def test_x_cutover_env_is_never_honoured_when_admin_auth_is_off(make_proxy):
    proxy = await make_proxy()   # admin.auth none: there is no token to prove
    out = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Cutover-Env: green\r\n"
                                         b"X-Cutover-Token: \r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403 ")


async def test_x_cutover_env_naming_an_unknown_environment_is_400(make_proxy):
    proxy = await make_proxy(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    status, body = await get(proxy.port, "/", {"X-Cutover-Env": "purple", "X-Cutover-Token": TOKEN})
    assert status == 400 and "purple" in body
