"""An acknowledged change survives kill -9 (SPEC §8): `cutover serve` as a real process, killed
with SIGKILL right after the admin API answered 200, leaves a state file that holds the change,
and the next start serves it. A change whose state file was written but whose folder could
not be synced is applied (the file and the route agree), not refused.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from admin.state import FileStateStore, StateNotDurable
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.stores import FailingStore
from tests.support.wait import eventually


def write_config(tmp_path: Path, backends: dict, port: int, admin_port: int) -> Path:
    config = tmp_path / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'admin: {{listen: "127.0.0.1:{admin_port}", auth: none}}\n'
        "environments:\n"
        f'  blue: {{servers: ["{backends["blue"].address}"]}}\n'
        f'  green: {{servers: ["{backends["green"].address}"]}}\n'
        f'state_file: "{tmp_path / "state.json"}"\n'
        "drain_timeout: 5s\n")
    return config


async def serve(config: Path, admin_port: int) -> asyncio.subprocess.Process:
    """serve: `cutover serve` in a subprocess, returned once its admin API answers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with aiohttp.ClientSession() as session:
        async def answers() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{admin_port}/v1/status") as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            assert proc.returncode is None, "cutover serve exited during start-up"
            return False
        await eventually(answers, timeout=15, interval=0.05, what="cutover serve's admin API answering")
    return proc


async def test_a_flip_and_a_lock_answered_200_survive_sigkill(tmp_path, backends):
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, backends, port, admin_port)
    admin = f"http://127.0.0.1:{admin_port}"
    proc = await serve(config, admin_port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{admin}/v1/flip", json={"reason": "release 7"}) as resp:
                assert resp.status == 200 and (await resp.json())["generation"] == 2
            async with session.post(f"{admin}/v1/lock", json={"reason": "freeze"}) as resp:
                assert resp.status == 200
            proc.kill()                          # SIGKILL at once after the answer
            assert await asyncio.wait_for(proc.wait(), 5) == -9
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    state, _ = FileStateStore(tmp_path / "state.json").read()
    assert (state.live, state.previous, state.generation, state.locked, state.lock_reason) == \
        ("green", "blue", 2, True, "freeze")
    assert [(e["action"], e["reason"]) for e in state.history] == [("flip", "release 7"), ("lock", "freeze")]

    proc = await serve(config, admin_port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{admin}/v1/status") as resp:
                status = await resp.json()
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                body = await resp.text()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert (status["live"], status["generation"], status["locked"]) == ("green", 2, True)
    assert body == "green\n"


async def test_a_state_written_but_not_folder_synced_is_applied(make_stack):
    running = await make_stack()
    inner = running.controller.store
    running.controller.store = FailingStore(inner, StateNotDurable("written, syncing its folder failed"),
                                            write_first=True)
    result = await running.controller.flip()
    assert result["live"] == "green" and running.proxy.router.route.live == "green"
    assert inner.read()[0].live == "green"    # the file and the route agree
