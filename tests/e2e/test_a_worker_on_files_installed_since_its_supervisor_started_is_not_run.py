"""workers: N after cutover was installed again in place (SPEC §9.1): a worker restarted from
files that changed since its supervisor started refuses to run (proxy/agent.py compares
proxy.CODE_STAMP with the supervisor's); its slot is retired, not restarted in a loop: its
sockets close so new connections reach the live workers, health checks move to one of them,
changes wait for the live workers only, and status names the slot's error.

The supervisor runs in the test's event loop (admin.serve.start); the install is simulated by
giving the supervisor another stamp, which is what a worker started from other files sees.
"""

from __future__ import annotations

import os
import signal

import proxy
from tests.support.adminapi import JsonAdmin as Admin
from tests.support.wait import eventually


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

    async def retired():
        workers = (await api.status())["workers"]
        return workers if workers[0]["error"] else None

    workers = await eventually(retired, timeout=15, what="slot 0 retired")
    assert "changed since this supervisor started" in workers[0]["error"]
    assert workers[0]["alive"] is False and workers[0]["pid"] not in (None, checker)   # it was started, refused
    assert workers[0]["restarts"] == 1 and workers[1]["alive"] and workers[1]["error"] is None
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
