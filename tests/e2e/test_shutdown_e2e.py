"""Graceful shutdown: in-process Proxy.shutdown and `cutover serve` under SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.wait import eventually


async def test_shutdown_finishes_inflight_and_closes_idle_connections(make_proxy):
    proxy = await make_proxy()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await idle_reader.readuntil(b"blue\n")
    async with aiohttp.ClientSession() as session:
        slow = [asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/slow?s=0.4")) for _ in range(5)]
        await eventually(lambda: proxy.router.environments["blue"].inflight >= 5, timeout=2)
        shutdown = asyncio.create_task(proxy.shutdown(5))
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""   # the idle one closes at once
        for resp in await asyncio.wait_for(asyncio.gather(*slow), 3):
            assert resp.status == 200
            assert resp.headers.get("Connection") == "close"
            assert await resp.text() == "blue slow\n"
        result = await asyncio.wait_for(shutdown, 3)
    assert result == {"connections": 6, "cut": 0}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.close()


async def test_shutdown_cuts_what_outlives_its_timeout(make_proxy):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/slow?s=3"))
        await eventually(lambda: proxy.router.environments["blue"].inflight, timeout=2)
        result = await asyncio.wait_for(proxy.shutdown(0.2), 2)
        resp = await asyncio.wait_for(task, 2)
        assert resp.status == 502 and "Retry-After" not in resp.headers   # it had been sent
        resp.release()
    assert result == {"connections": 1, "cut": 1}


async def start_serve(tmp_path: Path, backends: dict) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    config = tmp_path / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        'admin: {listen: "127.0.0.1:0", auth: none}\n'
        "environments:\n"
        f'  blue: {{servers: ["{backends["blue"].address}"]}}\n'
        f'  green: {{servers: ["{backends["green"].address}"]}}\n'
        "drain_timeout: 5s\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True
    await eventually(listening, timeout=10, interval=0.05, what="cutover serve listening")
    return proc, port


async def test_serve_drains_on_sigterm_and_exits_0(tmp_path, backends):
    proc, port = await start_serve(tmp_path, backends)
    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?s=0.5"))
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(task, 5)
            assert resp.status == 200 and await resp.text() == "blue slow\n"
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = (await proc.stdout.read()).decode()
    assert "draining" in out


async def test_serve_second_signal_exits_at_once(tmp_path, backends):
    proc, port = await start_serve(tmp_path, backends)
    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?s=5"))
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.2)
            assert proc.returncode is None      # still draining the slow request
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 2) == 1
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(task, 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_refuses_a_bad_config_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text('admin: {auth: none}\nenvironments:\n  blue: {servers: ["127.0.0.1:1"]}\n  green: {servers: ["nope"]}\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 1
    assert "environments.green.servers[0]" in err.decode()
