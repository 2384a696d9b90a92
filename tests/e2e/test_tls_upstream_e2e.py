"""End-to-end tests of upstream TLS (`environments.X.tls`, SPEC §12): a real proxy in front of a
test backend that serves only TLS, with certificates made at test time.

Pinned: a server verified against the environment's ca is served, over pooled connections
(one upstream TLS connection for requests in a row); one whose certificate the ca did not sign
is a 502, counted as a connect error, and its health checks fail too; verify false reaches it
anyway; server_name is what the certificate is verified against.
"""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from proxy.health import probe
from tests.support.backend import Backend
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually


@pytest.fixture
async def tls_backend(tls_files):
    """tls_backend(issued=tls_files.localhost) -> a Backend named blue serving only TLS with ``issued``."""
    started = []

    async def start(issued=None):
        issued = issued or tls_files.localhost
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(issued.cert, issued.key)
        backend = await Backend("blue").start(ssl_context=ctx)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


def environments(blue, green, tls) -> dict:
    return {"blue": {"servers": [blue.address], "tls": tls}, "green": {"servers": [green.address]}}


async def get(session, port, path="/"):
    async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"}) as resp:
        return resp.status, await resp.text()


def blue_server(proxy):
    return proxy.router.environments["blue"].servers[0]


async def test_a_verified_tls_server_is_served_over_pooled_connections(make_proxy, backends, tls_backend, tls_files,
                                                                       session):
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.authority.cert)}),
                             health_check=QUIET_HEALTH)
    for _ in range(3):
        assert await get(session, proxy.port) == (200, "blue\n")
    assert upstream.requests == 3
    server = blue_server(proxy)
    assert server.connections == 1 and len(server.idle) == 1   # one TLS connection, reused
    assert server.idle[0].transport.get_extra_info("ssl_object") is not None
    assert dict(server.snapshot().upstream_errors)["connect"] == 0


async def test_a_certificate_the_ca_did_not_sign_is_a_502_and_counted(make_proxy, backends, tls_backend, tls_files,
                                                                     session):
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.other.cert)}),
                             health_check=QUIET_HEALTH)
    status, text = await get(session, proxy.port)
    assert status == 502
    assert dict(blue_server(proxy).snapshot().upstream_errors)["connect"] == 1
    assert upstream.requests == 0


async def test_verify_false_reaches_a_server_no_ca_vouches_for(make_proxy, backends, tls_backend, tls_files, session):
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"verify": False}),
                             health_check=QUIET_HEALTH)
    assert await get(session, proxy.port) == (200, "blue\n")


async def test_server_name_is_what_the_certificate_is_verified_against(make_proxy, backends, tls_backend, tls_files,
                                                                      session):
    upstream = await tls_backend(tls_files.shop)   # shop.test (and 127.0.0.1)
    ca = str(tls_files.authority.cert)
    wrong = await make_proxy(environments=environments(upstream, backends["green"],
                                                       {"ca": ca, "server_name": "api.test"}),
                             health_check=QUIET_HEALTH)
    assert (await get(session, wrong.port))[0] == 502
    right = await make_proxy(environments=environments(upstream, backends["green"],
                                                       {"ca": ca, "server_name": "shop.test"}),
                             health_check=QUIET_HEALTH)
    assert await get(session, right.port) == (200, "blue\n")


async def test_health_checks_of_a_tls_environment_speak_tls(make_proxy, backends, tls_backend, tls_files):
    upstream = await tls_backend()
    good = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.authority.cert)}),
                            health_check=QUIET_HEALTH)
    assert await probe(blue_server(good), "/healthz", 2.0, good.upstream_tls["blue"]) == (True, "HTTP 200")
    bad = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.other.cert)}),
                           health_check={"interval": "50ms", "timeout": "1s"})
    healthy, reason = await probe(blue_server(bad), "/healthz", 2.0, bad.upstream_tls["blue"])
    assert not healthy and reason.startswith("TLS: certificate verify failed")
    await eventually(lambda: not blue_server(bad).healthy, timeout=5, what="blue marked down by its TLS health checks")
    assert blue_server(good).healthy


async def test_plain_environments_beside_a_tls_one_stay_plain(make_proxy, backends, tls_backend, tls_files):
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.authority.cert)}),
                             health_check=QUIET_HEALTH, preview_listen="127.0.0.1:0")
    assert set(proxy.upstream_tls) == {"blue"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.preview_port}/") as resp:
            assert (resp.status, await resp.text()) == (200, "green\n")


async def test_set_tls_changes_how_new_upstream_connections_are_verified(make_proxy, backends, tls_backend,
                                                                        tls_files, session):
    import dataclasses

    from proxy import UpstreamTLS
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.other.cert)}),
                             health_check=QUIET_HEALTH)
    assert (await get(session, proxy.port))[0] == 502

    def with_blue_tls(tls):
        return tuple(dataclasses.replace(e, tls=tls) if e.name == "blue" else e for e in proxy.settings.environments)

    proxy.set_tls(None, with_blue_tls(UpstreamTLS(ca=str(tls_files.authority.cert))))
    blue_server(proxy).set_healthy(True)   # the passive check marked it down after the 502
    assert await get(session, proxy.port) == (200, "blue\n")
    assert len(blue_server(proxy).idle) == 1
    proxy.set_tls(None, with_blue_tls(UpstreamTLS(ca=str(tls_files.other.cert))))   # a second change
    assert blue_server(proxy).idle == []   # pooled connections made under the old settings are closed
    assert (await get(session, proxy.port))[0] == 502


async def test_a_websocket_crosses_tls_on_both_sides(make_proxy, backends, tls_backend, tls_files, session):
    from tests.support.certs import client_context
    upstream = await tls_backend()
    proxy = await make_proxy(environments=environments(upstream, backends["green"], {"ca": str(tls_files.authority.cert)}),
                             tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    async with session.ws_connect(f"wss://127.0.0.1:{proxy.port}/ws", ssl=client_context(tls_files.authority),
                                  server_hostname="shop.test", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
        for word in ("one", "two"):
            await ws.send_str(word)
            msg = await ws.receive(timeout=5)
            assert msg.data == f"blue: {word}"
