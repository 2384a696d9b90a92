"""Reload with workers (SPEC §12, §9.1): SIGHUP to `cutover serve` with workers: 2 applies the
edited config on every worker, the API's reload answers once each acked it, a SIGHUP to a worker
itself does not end it, and a worker restarted afterwards starts with the reloaded settings.
Processes are ended by their PID.
"""

from __future__ import annotations

import os
import signal

from tests.support.ports import free_port
from tests.support.processes import serve_config, serving_status, start_serve, stop_serve
from tests.support.rawhttp import raw_exchange, status_of
from tests.support.wait import eventually

WORKERS = 2
BIG = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n"


async def statuses_of_fresh_requests(port: int, count: int) -> list[int]:
    """statuses_of_fresh_requests: the status of ``count`` requests with a 3000-byte header, each
    on a new connection (the kernel spreads those over the workers)."""
    return [status_of(await raw_exchange(port, BIG)) for _ in range(count)]


async def test_sighup_applies_the_edited_config_on_every_worker_and_a_restarted_one_keeps_it(
        tmp_path, backends, session):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=WORKERS)
    proc, log_path = await start_serve(tmp_path, config)
    api = f"http://127.0.0.1:{admin}"
    try:
        before = await serving_status(session, admin, WORKERS)
        assert await statuses_of_fresh_requests(port, 20) == [200] * 20
        config.write_text(config.read_text() + "limits: {max_header_bytes: 2KiB}\n")
        os.kill(proc.pid, signal.SIGHUP)

        async def reloaded():
            async with session.get(api + "/v1/history") as resp:
                found = [e for e in (await resp.json())["events"] if e["action"] == "reload"]
            return found or None

        [event] = await eventually(reloaded, timeout=10, what="the reload event of the SIGHUP")
        assert event["reloaded"] == ["limits.max_header_bytes"] and event["reason"] == "SIGHUP"
        assert await statuses_of_fresh_requests(port, 20) == [431] * 20
        async with session.get(api + "/v1/status") as resp:
            served = {w["pid"]: w["requests"] for w in (await resp.json())["workers"]}
        # the 20 fresh 200s before the reload reached both workers (the 431s count as no environment's)
        assert all(served[w["pid"]] > w["requests"] for w in before["workers"]), (before["workers"], served)

        config.write_text(config.read_text() + 'timeouts: {connect: "1500ms"}\n')
        async with session.post(api + "/v1/reload", json={}) as resp:
            doc = await resp.json()
            assert resp.status == 200, doc
        assert doc["reloaded"] == ["timeouts.connect"]
        assert doc["ack"]["complete"] and sorted(doc["ack"]["acked"]) == sorted(served)

        hung_up = before["workers"][0]["pid"]
        os.kill(hung_up, signal.SIGHUP)           # a hangup of the process group reaches workers too
        async with session.post(api + "/v1/flip", json={}) as resp:
            flipped = await resp.json()
        assert hung_up in flipped["ack"]["acked"] and flipped["ack"]["complete"], flipped["ack"]

        victim = before["workers"][-1]["pid"]
        os.kill(victim, signal.SIGKILL)

        async def restarted():
            async with session.get(api + "/v1/status") as resp:
                workers = (await resp.json())["workers"]
            return all(w["alive"] for w in workers) and victim not in {w["pid"] for w in workers}

        await eventually(restarted, timeout=15, what="the killed worker restarted")
        assert await statuses_of_fresh_requests(port, 20) == [431] * 20
    finally:
        await stop_serve(proc)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert "SIGHUP: reloading" in log_path.read_text()
