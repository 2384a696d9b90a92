"""`cutover serve` with workers: 2 as real processes: SIGTERM drains every worker and exits 0;
a supervisor killed with SIGKILL takes its workers with it (no orphan serving a stale route)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from admin.serve import reuseport_migration
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.processes import gone, serve_config, wait_gone



async def start_serve(tmp_path: Path, backends: dict, workers: int = 2):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=workers)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with aiohttp.ClientSession() as session, asyncio.timeout(20):
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
                    status = await resp.json()
                    if len(status["workers"]) == workers and all(w["alive"] for w in status["workers"]):
                        return proc, port, [w["pid"] for w in status["workers"]]
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def test_sigterm_drains_every_worker_and_exits_0(tmp_path, backends):
    proc, port, pids = await start_serve(tmp_path, backends)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            slow = [asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?s=0.6")) for _ in range(8)]
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            for resp in await asyncio.wait_for(asyncio.gather(*slow), 5):
                assert resp.status == 200 and await resp.text() == "blue slow\n"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await wait_gone(pids, 5)
    out = (await proc.stdout.read()).decode()
    assert "draining" in out and "workers 2" in out
    if reuseport_migration() is not None:        # this kernel resets what a closing listener had queued
        assert "net.ipv4.tcp_migrate_req is 0" in out


async def test_a_supervisor_killed_with_sigkill_takes_its_workers_with_it(tmp_path, backends):
    proc, port, pids = await start_serve(tmp_path, backends)
    try:
        proc.kill()
        await proc.wait()
        assert await wait_gone(pids, 10), [p for p in pids if not gone(p)]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass                      # nobody listens on the port any more
        else:
            writer.close()
            raise AssertionError("a worker still accepts after its supervisor was killed")
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
