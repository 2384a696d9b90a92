"""plugin: the suite's fixtures, registered as a pytest plugin by tests/conftest.py.

Real test backends and a real proxy or stack (proxy + controller + admin API) on ephemeral
loopback ports, a RawBackend in front of which a proxy is started, aiohttp client sessions,
and a real etcd per test module with a client of it; everything a fixture started is stopped
after the test (the etcd after the module).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import uvloop

from admin.fleet.etcd import EtcdClient
from admin.serve import start as start_stack
from proxy.server import Proxy
from tests.support.backend import Backend
from tests.support.etcdserver import EtcdServer, require_etcd
from tests.support.rawhttp import RawBackend, answer_ok
from tests.support.stack import proxy_config

# The loops a test marked ``both_loops`` runs on: the one `cutover serve` runs on (uvloop) and
# the standard library's, which the rest of the suite uses.
BOTH_LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "both_loops: run the test once on each of BOTH_LOOPS")


def pytest_asyncio_loop_factories(config, item):
    """pytest_asyncio_loop_factories: pytest-asyncio's hook; one factory keeps the test's id."""
    return BOTH_LOOPS if item.get_closest_marker("both_loops") is not None else {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def backends():
    """backends: {"blue": Backend, "green": Backend}, started and stopped around the test."""
    pair = {"blue": await Backend("blue").start(), "green": await Backend("green").start()}
    yield pair
    for backend in pair.values():
        await backend.stop()


@pytest.fixture
async def extra():
    """extra: three more started test backends, named a, b and c (servers to register or reload)."""
    started = [await Backend(name).start() for name in ("a", "b", "c")]
    yield started
    for backend in started:
        await backend.stop()


@pytest.fixture
async def make_proxy(tmp_path, backends):
    """make_proxy(backend_map=None, **overrides) -> a started Proxy in front of ``backends``.

    Every proxy it started is shut down after the test.
    """
    started = []

    async def factory(backend_map=None, **overrides) -> Proxy:
        proxy = Proxy(proxy_config(tmp_path, backend_map or backends, **overrides).settings())
        await proxy.start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        await proxy.shutdown(0.5)


@pytest.fixture
async def make_stack(tmp_path, backends):
    """make_stack(backend_map=None, **overrides) -> admin.serve.Running: proxy + controller + admin API.

    The state file is tmp_path/state.json unless overridden, so a second stack
    started in the same test with the same overrides sees the first one's state.
    ``running.admin_port`` is the admin API's port; auth is off unless admin is overridden.
    """
    started = []

    async def factory(backend_map=None, **overrides):
        running = await start_stack(proxy_config(tmp_path, backend_map or backends, **overrides))
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop(0.5)


@pytest.fixture
async def raw_backend(make_proxy, backends):
    """raw_backend(handler=answer_ok, **overrides) -> (proxy, RawBackend): blue is the raw upstream.

    Green stays the ordinary test backend; every RawBackend is stopped after the test.
    """
    started = []

    async def factory(handler=answer_ok, **overrides):
        upstream = await RawBackend(handler).start()
        started.append(upstream)
        proxy = await make_proxy({"blue": upstream, "green": backends["green"]}, **overrides)
        return proxy, upstream

    yield factory
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def session():
    """session: one aiohttp.ClientSession for the test, closed after it."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def admin_session(session):
    """admin_session: ``session`` under the name the switch-rule tests give the one their Admin speaks on."""
    return session


@pytest.fixture(scope="module")
def etcd():
    """etcd: one single-member etcd for the module (Debian's etcd-server, skipped without it);
    progress notifications every 50 ms, and leases of 1 s allowed (etcd's shortest lease is 1.5
    election timeouts, rounded up to a second: 500 ms makes it 1 s)."""
    require_etcd()
    server = EtcdServer("etcd", progress_interval="50ms",
                        extra_args=("--heartbeat-interval", "50", "--election-timeout", "500"))
    server.start()
    yield server
    server.close()


@pytest.fixture
async def client(etcd):
    """client: an EtcdClient of ``etcd`` (3 s per request), closed after the test."""
    async with EtcdClient([etcd.endpoint], request_timeout=3.0) as made:
        yield made


@pytest.fixture
def fleet_of(make_stack, etcd, tmp_path, request):
    """fleet_of(count, ack_timeout="5s", **config) -> [stack]: ``count`` in-process replicas
    (``make_stack`` stacks with ids r0, r1, ...) sharing one etcd prefix, each with its own
    state_file; stopped after the test with the other stacks."""
    prefix = f"/test/{request.node.name}"

    async def start(count: int, **overrides):
        ack_timeout = overrides.pop("ack_timeout", "5s")
        stacks = []
        for i in range(count):
            stacks.append(await make_stack(
                state_file=str(tmp_path / f"replica{i}.json"),
                store={"etcd": {"endpoints": [etcd.endpoint], "prefix": prefix, "lease_ttl": "3s",
                                "request_timeout": "500ms"}},
                fleet={"replica_id": f"r{i}", "ack_timeout": ack_timeout}, **overrides))
        return stacks

    return start


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """tls_files: a TlsFiles (tests/support/certs.py) made once for the session with the openssl
    command: a test CA, an unrelated one, and certificates for shop.test, api.test and localhost
    (each also valid for 127.0.0.1), and one for shop.test alone."""
    from tests.support.certs import Authority, TlsFiles
    folder = tmp_path_factory.mktemp("tls")
    authority = Authority(folder / "ca")
    return TlsFiles(authority=authority, other=Authority(folder / "other", "another test CA"),
                    shop=authority.issue(("shop.test",)), api=authority.issue(("api.test", "*.api.test")),
                    localhost=authority.issue(("localhost",)),
                    public=authority.issue(("shop.test",), stem="public", loopback=False))
