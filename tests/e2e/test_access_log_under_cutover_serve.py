"""The access log of a real `cutover serve` process (SPEC §12): SIGUSR1 reopens the file under
load with no line lost, two workers append to one file without a torn line (and reopen on the
supervisor's SIGUSR1), and a standard output nobody reads does not stall serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp

from tests.support.logfile import ends_whole, logged_lines
from tests.support.ports import free_port
from tests.support.processes import serve_config, serving_status, start_serve, stop_serve
from tests.support.wait import eventually


async def start(tmp_path: Path, backends: dict, workers: int = 1, stdout=asyncio.subprocess.DEVNULL,
                **extra: str):
    """start: `cutover serve` with ``extra`` config keys; (process, port, admin port) once every worker serves."""
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=workers, **extra)
    proc, _ = await start_serve(tmp_path, config, stdout=stdout)
    try:
        async with aiohttp.ClientSession() as session:
            await serving_status(session, admin, workers)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, port, admin


class Load:
    """Load: ``clients`` tasks sending GET / (each its own request id) until stopped; the ids answered."""

    def __init__(self, port: int, clients: int, fresh: bool = False, limit: int = 3000) -> None:
        self.port = port
        self.answered: list[str] = []
        self.stopping = asyncio.Event()
        self.limit = limit
        self.fresh = fresh
        self.tasks = [asyncio.create_task(self.client(n)) for n in range(clients)]

    async def client(self, n: int) -> None:
        connector = aiohttp.TCPConnector(force_close=self.fresh)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(self.limit):
                if self.stopping.is_set():
                    return
                rid = f"load{n}.{i}"
                async with session.get(f"http://127.0.0.1:{self.port}/", headers={"X-Request-Id": rid}) as resp:
                    assert resp.status == 200 and resp.headers["X-Request-Id"] == rid
                    await resp.read()
                self.answered.append(rid)

    async def finish(self) -> list[str]:
        """finish: stop the clients now; the ids answered."""
        self.stopping.set()
        return await self.done()

    async def done(self) -> list[str]:
        """done: wait until each client sent its ``limit`` requests; the ids answered."""
        async with asyncio.timeout(30):
            await asyncio.gather(*self.tasks)
        return self.answered


async def test_sigusr1_reopens_the_file_under_load_and_no_line_is_lost(tmp_path, backends):
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    proc, port, _ = await start(tmp_path, backends, access_log=f'{{path: "{path}"}}')
    try:
        load = Load(port, clients=3)
        await eventually(lambda: len(logged_lines(path)) >= 30, timeout=10, what="lines in the first file")
        os.rename(path, rotated)
        proc.send_signal(signal.SIGUSR1)
        await eventually(lambda: len(logged_lines(path)) >= 30, timeout=10, what="lines in the reopened file")
        answered = await load.finish()
        await eventually(lambda: len(logged_lines(rotated)) + len(logged_lines(path)) == len(answered), timeout=5,
                         what="every answered request in one of the two files")
        old, new = logged_lines(rotated), logged_lines(path)
        assert sorted(line["request_id"] for line in old + new) == sorted(answered)   # each once, none lost
    finally:
        await stop_serve(proc)
    assert proc.returncode == 0
    assert ends_whole(path) and ends_whole(rotated)
    assert "SIGUSR1: reopening the access log" in (tmp_path / "serve.log").read_text()


async def test_two_workers_append_whole_lines_to_one_file_and_both_reopen(tmp_path, backends):
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    proc, port, admin = await start(tmp_path, backends, workers=2, access_log=f'{{path: "{path}"}}')
    try:
        answered = await Load(port, clients=8, fresh=True, limit=150).done()   # fresh connections: both serve
        await eventually(lambda: len(logged_lines(path)) == len(answered), timeout=10, what="every request logged")
        assert sorted(line["request_id"] for line in logged_lines(path)) == sorted(answered)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
                workers = (await resp.json())["workers"]
        assert len(workers) == 2 and all(w["requests"] > 0 for w in workers), workers
        os.rename(path, rotated)
        proc.send_signal(signal.SIGUSR1)           # forwarded to both workers
        await eventually(path.exists, timeout=5, what="the file reopened")
        more = await Load(port, clients=8, fresh=True, limit=40).done()
        await eventually(lambda: len(logged_lines(path)) == len(more), timeout=10)
        assert sorted(line["request_id"] for line in logged_lines(path)) == sorted(more)
        assert len(logged_lines(rotated)) == len(answered)
    finally:
        await stop_serve(proc)
    assert proc.returncode == 0
    assert ends_whole(path) and ends_whole(rotated)


async def test_a_standard_output_nobody_reads_does_not_stall_serving(tmp_path, backends):
    proc, port, _ = await start(tmp_path, backends, stdout=asyncio.subprocess.PIPE,
                                      access_log='{path: "-"}')
    try:
        # ~1500 lines of ~400 bytes: far more than a pipe holds (64 KiB), and nobody reads it.
        answered = await Load(port, clients=4, limit=375).done()
        assert len(answered) == 1500
        out = bytearray()
        async with asyncio.timeout(10):
            while out.count(b"\n") < len(answered):
                out += await proc.stdout.read(1 << 16)
        assert sorted(json.loads(line)["request_id"] for line in out.splitlines()) == sorted(answered)
    finally:
        await stop_serve(proc)
