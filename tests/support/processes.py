"""processes: `cutover serve` as a real process in tests: its config, starting it and waiting
until it serves, and whether a pid is gone.

Tests kill what they start by PID. A successor started by SIGUSR2 is its predecessor's
child, not the test's, so ``serving`` finds it by the test's own config path.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.paths import ROOT
from tests.support.wait import eventually


def serve_config(tmp_path: Path, backends: dict, port: int, admin: int, **extra: str | int) -> Path:
    """serve_config: a config file for `cutover serve` in front of ``backends`` on fixed ports."""
    lines = [f'listen: "127.0.0.1:{port}"', f'admin: {{listen: "127.0.0.1:{admin}", auth: none}}', "environments:"]
    lines += [f'  {name}: {{servers: ["{b.address}"]}}' for name, b in backends.items()]
    lines += [f"{key}: {value}" for key, value in {"drain_timeout": "5s", **extra}.items()]
    path = tmp_path / "cutover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def gone(pid: int) -> bool:
    """gone: the process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def wait_gone(pids, timeout: float) -> bool:
    """wait_gone: whether every one of ``pids`` exits within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return all(gone(p) for p in pids)


def serving(config: Path) -> set[int]:
    """serving: the pids of every `cutover serve` started with ``config``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(config).encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


async def start_serve(tmp_path, config, stdout=asyncio.subprocess.DEVNULL, env: dict | None = None,
                      cwd: Path = ROOT):
    """start_serve: `cutover serve --config` as the test's child; (process, its log file).

    The log (stderr) goes to a file: a successor inherits it (a pipe would outlive the old
    process); ``stdout`` is where its standard output goes (an access log on "-"); ``env`` its
    environment (default: the test's); ``cwd`` the folder whose admin/ and proxy/ it runs
    (default this checkout).
    """
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=cwd,
            stdout=stdout, stderr=log_file, env=env)
    return proc, log_path


async def serving_status(session, admin: int, workers: int = 1) -> dict:
    """serving_status: the status once the admin API answers and ``workers`` workers are alive."""
    async def ready():
        try:
            async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
                now = await resp.json()
        except aiohttp.ClientError:
            return None
        return now if len(now["workers"]) == workers and all(w["alive"] for w in now["workers"]) else None

    return await eventually(ready, timeout=20)


async def stop_serve(proc, timeout: float = 15.0) -> None:
    """stop_serve: SIGTERM to a `cutover serve` still running, by its PID; SIGKILL after ``timeout``."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
