"""Signals that reach `cutover serve` while it starts (SPEC §12): a SIGHUP reloads the config
once the router serves, a SIGUSR1 reopens the access log then, a SIGUSR2 is refused with a
warning; none of them ends the process (their default action would). A sitecustomize on
PYTHONPATH holds admin.serve.start until the test has sent them. Processes are ended by PID.
"""

from __future__ import annotations

import os
import signal

from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.processes import serve_config, serving_status, start_serve, stop_serve
from tests.support.rawhttp import raw_exchange, status_of
from tests.support.wait import eventually

# Holds the start (after serve installed its early signal handlers) until RELEASE_AT exists,
# 20 s at most; HELD_AT says it is holding.
HOLD_START = """\
import asyncio
import os

import admin.serve

_start = admin.serve.start


async def held_start(config, inherited=None):
    open(os.environ["HELD_AT"], "w").close()
    for _ in range(400):
        if os.path.exists(os.environ["RELEASE_AT"]):
            break
        await asyncio.sleep(0.05)
    return await _start(config, inherited)


admin.serve.start = held_start
"""

BIG = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n"


async def test_hup_usr1_and_usr2_while_starting_end_nothing_and_the_reload_applies_once_serving(
        tmp_path, backends, session):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin,
                          access_log=f'{{path: "{tmp_path / "access.log"}", format: json}}')
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD_START)
    held, release = tmp_path / "held", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]),
           "HELD_AT": str(held), "RELEASE_AT": str(release)}
    proc, log_path = await start_serve(tmp_path, config, env=env)
    try:
        await eventually(held.exists, timeout=20, what="the start held")
        config.write_text(config.read_text() + "limits: {max_header_bytes: 2KiB}\n")
        for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1, signal.SIGHUP):
            os.kill(proc.pid, signum)
        release.touch()
        await serving_status(session, admin)

        async def reloads():
            async with session.get(f"http://127.0.0.1:{admin}/v1/history") as resp:
                found = [e for e in (await resp.json())["events"] if e["action"] == "reload"]
            return found or None

        [event] = await eventually(reloads, timeout=10, what="the reload of the SIGHUP")
        assert event["reloaded"] == ["limits.max_header_bytes"] and event["reason"] == "SIGHUP"
        assert status_of(await raw_exchange(port, BIG)) == 431
        text = log_path.read_text()
        assert "SIGHUP came while starting: handling it now" in text
        assert text.count("came while starting") == 3, text     # two SIGHUPs are one reload
        assert "SIGUSR2 came while starting: not upgrading" in text
        assert "SIGUSR1 came while starting: handling it now" in text
        assert "reopening the access log" in text
        assert proc.returncode is None
    finally:
        await stop_serve(proc)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
