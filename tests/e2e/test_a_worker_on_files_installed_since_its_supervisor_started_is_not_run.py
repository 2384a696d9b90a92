"""workers: N after cutover was installed again in place (SPEC §9.1): a worker restarted from
files that changed since its supervisor started refuses to run (proxy/agent.py compares
proxy.CODE_STAMP with the supervisor's); its slot is retired, not restarted in a loop: its
sockets close so new connections reach the live workers, health checks move to one of them,
changes wait for the live workers only, and status names the slot's error.

The first test runs the supervisor in the test's event loop (admin.serve.start) and simulates
the install by giving the supervisor another stamp, which is what a worker started from other
files sees; the second runs `cutover serve` from a copy of the code and changes a file of it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import proxy
from tests.support.adminapi import JsonAdmin as Admin
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.processes import (gone, serve_config, serving, serving_status, start_serve, stop_serve,
                                     wait_gone)
from tests.support.rawhttp import raw_exchange, status_of
from tests.support.wait import eventually

CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def retired(api: Admin, slot: int) -> list[dict]:
    """retired: status's workers once ``slot`` (of two) is retired: its error says why, it was
    started again once (and refused), the other slot serves with no error."""
    async def refused():
        workers = (await api.status())["workers"]
        return workers if workers[slot]["error"] else None

    workers = await eventually(refused, timeout=15, what=f"slot {slot} retired")
    other = workers[1 - slot]
    assert "changed since this supervisor started" in workers[slot]["error"]
    assert workers[slot]["restarts"] == 1 and other["alive"] and other["error"] is None
    return workers


async def test_a_worker_restarted_on_other_files_is_refused_and_the_live_worker_serves_and_checks(
        make_stack, backends, session, monkeypatch):
    running = await make_stack(workers=2, fleet={"ack_timeout": "5s"},
                               health_check={"interval": "50ms", "timeout": "500ms", "unhealthy_after": 1})
    api = Admin(session, running.admin_port)
    before = (await api.status())["workers"]
    assert [w["error"] for w in before] == [None, None]
    monkeypatch.setattr(proxy, "CODE_STAMP", "installed-before")   # the files changed since
    checker = before[0]["pid"]                                      # slot 0 runs the health checks
    os.kill(checker, signal.SIGKILL)

    workers = await retired(api, 0)
    assert workers[0]["alive"] is False and workers[0]["pid"] not in (None, checker)   # it was started, refused
    # An upgrade hands the successor the open sockets only (it binds the missing slot again).
    fds = running.listener_fds()
    assert len(fds["listen"]) == 1 and fds["listen"][0] >= 0

    answer = await api.ok("/v1/flip", {})
    assert answer["ack"] == {"complete": True, "acked": [workers[1]["pid"]], "pending": []}, answer["ack"]
    for _ in range(30):          # fresh connections: none is left on the retired slot's socket
        async with session.get(f"http://127.0.0.1:{running.port}/", headers={"Connection": "close"},
                               timeout=5) as resp:
            assert (resp.status, (await resp.text()).strip()) == (200, "green")

    # The live worker probes the servers now: a failing green server is marked down.
    async with session.post(f"http://{backends['green'].address}/__fail?on=1") as resp:
        assert resp.status == 200

    async def marked_down():
        return not (await api.status())["environments"]["green"]["servers"][0]["healthy"]

    await eventually(marked_down, timeout=5, what="green marked down by the live worker's checks")
    still = (await api.status())["workers"]
    assert still[0]["restarts"] == 1 and still[0]["pid"] == workers[0]["pid"]     # never started again


async def test_after_a_real_install_in_place_a_restarted_worker_refuses_and_the_upgrade_serves_every_slot(
        tmp_path, backends, session):
    # cutover runs from its own copy of admin/ and proxy/ (and the compiled library, if any);
    # a file of that copy then changes, as `pip install` over a running cutover would do it.
    install = tmp_path / "install"
    for package in ("admin", "proxy"):
        shutil.copytree(ROOT / package, install / package, ignore=shutil.ignore_patterns("__pycache__"))
    for library in ROOT.glob("cutover_dataplane*"):
        shutil.copy2(library, install)
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=2, fleet="{ack_timeout: 5s}")
    proc, log_path = await start_serve(tmp_path, config, cwd=install)
    api = Admin(session, admin)
    successor = None
    try:
        first = await serving_status(session, admin, 2)
        with open(install / "proxy" / "route.py", "a") as f:
            f.write("\n# installed again\n")
        killed = first["workers"][1]["pid"]
        os.kill(killed, signal.SIGKILL)

        workers = await retired(api, 1)
        assert [status_of(await raw_exchange(port, CLOSE)) for _ in range(20)] == [200] * 20
        answer = await api.ok("/v1/flip", {})
        assert answer["ack"]["acked"] == [workers[0]["pid"]] and answer["ack"]["complete"], answer["ack"]
        # The upgrade runs the files as they are now: every slot serves again.
        proc.send_signal(signal.SIGUSR2)

        async def upgraded():
            now = await api.status()
            workers = now["workers"]
            done = (now["pid"] != proc.pid and len(workers) == 2
                    and all(w["alive"] and w["error"] is None for w in workers))
            return now if done else None

        now = await eventually(upgraded, timeout=30, what="the successor serving with both workers")
        successor = now["pid"]
        assert now["live"] == answer["live"]
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert [status_of(await raw_exchange(port, CLOSE)) for _ in range(20)] == [200] * 20
    finally:
        # A successor that started but never served both slots is found by its command line.
        others = ({successor} | serving(config)) - {None, proc.pid}
        for pid in others:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
        await stop_serve(proc)
        await wait_gone(others, 15)
    log = log_path.read_text()
    assert "refused to run" in log and "Traceback" not in log
