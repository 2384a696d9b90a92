"""Shared fixtures: real test backends and a real proxy on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend import Backend  # noqa: E402
from admin.config import parse_config  # noqa: E402
from proxy.server import Proxy  # noqa: E402
from admin.serve import start as start_stack  # noqa: E402


@pytest.fixture
async def backends():
    """backends: {"blue": Backend, "green": Backend}, started and stopped around the test."""
    pair = {"blue": await Backend("blue").start(), "green": await Backend("green").start()}
    yield pair
    for backend in pair.values():
        await backend.stop()


def proxy_config(tmp_path: Path, backends: dict, **overrides):
    """proxy_config: a Config for the test backends; keyword arguments override top-level keys."""
    data = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {
            name: {"servers": [b.address for b in (group if isinstance(group, list) else [group])]}
            for name, group in backends.items()
        },
        "live": "blue",
        "state_file": str(tmp_path / "state.json"),
        "health_check": {"interval": "100ms", "timeout": "500ms"},
        "drain_timeout": "5s",
    }
    data.update(overrides)
    return parse_config(data, tmp_path, {})


@pytest.fixture
async def make_proxy(tmp_path, backends):
    """make_proxy(**overrides) -> started Proxy in front of ``backends``; all closed after the test."""
    started = []

    async def factory(backend_map=None, **overrides) -> Proxy:
        proxy = Proxy(proxy_config(tmp_path, backend_map or backends, **overrides).settings())
        await proxy.start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        await proxy.shutdown(0.5)


async def raw_exchange(port: int, data: bytes, read_timeout: float = 3.0, until_close: bool = True) -> bytes:
    """raw_exchange: send raw bytes to 127.0.0.1:port and return what comes back.

    Reads until the server closes (``until_close``) or ``read_timeout`` passes.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(read_timeout):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if not until_close:
                        break
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()


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
