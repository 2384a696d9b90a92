"""Upgrade or restart under load (SPEC §9.1): SIGUSR2 to `cutover serve` starts a successor on
the very same listening sockets; the old process stops accepting only once the successor
serves, then drains and exits 0. Clients see no refused or failed request, the state (live,
generation) carries over, and the successor takes changes on the same admin address. A successor
that dies after its data plane served but before its admin API did is backed out: the old process
accepts again and serves on, nothing failed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp
import pytest

from tests.support.certs import client_context
from tests.support.paths import ROOT
from tests.support.rawhttp import read_response
from tests.support.ports import free_port
from tests.support.processes import gone, serve_config, serving, serving_status, start_serve, stop_serve, wait_gone
from tests.support.traffic import Traffic
from tests.support.wait import eventually



async def status(session, admin: int) -> dict:
    async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
        assert resp.status == 200
        return await resp.json()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigusr2_hands_over_to_a_successor_with_no_failed_request(tmp_path, backends, workers):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=workers,
                          health_check="{interval: 100ms, healthy_after: 1}")
    old, log_path = await start_serve(tmp_path, config)
    successor = None
    results: dict = {"ok": 0, "by_env": {}, "failed": []}
    stop = asyncio.Event()

    async def client(session):
        for _ in range(20000):
            if stop.is_set():
                return
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    body = (await resp.text()).strip()
                    if resp.status != 200:
                        results["failed"].append(resp.status)
                    else:
                        results["ok"] += 1
                        results["by_env"][body] = results["by_env"].get(body, 0) + 1
            except aiohttp.ClientError as exc:
                results["failed"].append(repr(exc))

    try:
        async with aiohttp.ClientSession() as api:
            first = await serving_status(api, admin, workers)
            assert first["pid"] == old.pid
            async with api.post(f"http://127.0.0.1:{admin}/v1/flip", json={}) as resp:
                assert resp.status == 200
                flipped = await resp.json()
            keepalive = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
            fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            async with keepalive, fresh:
                tasks = [asyncio.create_task(client(keepalive)) for _ in range(16)]
                tasks += [asyncio.create_task(client(fresh)) for _ in range(4)]
                try:
                    await hand_over_under_load(old, api, admin, results, stop, tasks)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            now = results["status"]
            successor = now["pid"]
            # the state carried over, and the successor steers
            assert (now["live"], now["generation"]) == ("green", flipped["generation"])
            assert len(now["workers"]) == workers and all(w["alive"] for w in now["workers"])
            async with api.post(f"http://127.0.0.1:{admin}/v1/flip", json={}) as resp:
                assert resp.status == 200
                assert (await resp.json())["live"] == "blue"
            async with fresh_session() as s, s.get(f"http://127.0.0.1:{port}/") as resp:
                assert (await resp.text()).strip() == "blue"
    finally:
        stop.set()
        await stop_both(old, successor, config)
    log = log_path.read_text()
    assert results["failed"] == [], (results["failed"][:5], log[-2000:])
    assert 0 < results["before"] < results["during"] < results["ok"]
    assert set(results["by_env"]) == {"green"}
    assert "upgrade: successor" in log and "serves; draining and exiting" in log


async def hand_over_under_load(old, api, admin: int, results: dict, stop: asyncio.Event, tasks: list) -> None:
    """hand_over_under_load: SIGUSR2 while the clients run; returns once the successor answers
    status and the clients ran on for a while; fills results["before"], ["during"], ["status"]."""
    await asyncio.sleep(0.5)
    results["before"] = results["ok"]
    old.send_signal(signal.SIGUSR2)
    assert await asyncio.wait_for(old.wait(), 20) == 0
    async with asyncio.timeout(10):
        while True:
            try:
                now = await status(api, admin)
                if now["pid"] != old.pid:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    results["status"] = now
    results["during"] = results["ok"]
    await asyncio.sleep(0.5)
    stop.set()
    async with asyncio.timeout(20):
        await asyncio.gather(*tasks)


async def stop_both(old, successor: int | None, config) -> None:
    """stop_both: SIGTERM to the old process, its successor and any other `cutover serve` of
    ``config`` (by PID); the old one is killed if it is still there; bounded waits."""
    for pid in {old.pid, successor, *serving(config)} - {None}:
        if not gone(pid):
            os.kill(pid, signal.SIGTERM)
    if old.returncode is None:
        old.kill()
        await old.wait()
    if successor is not None and not await wait_gone([successor], 10):
        os.kill(successor, signal.SIGKILL)


async def taken_over(api, admin: int, old, workers: int) -> dict:
    """taken_over: the status once a successor of ``old`` answers with ``workers`` workers (30 s at most)."""
    async def successor():
        try:
            now = await status(api, admin)
        except aiohttp.ClientError:
            return None
        return now if now["pid"] != old.pid and len(now["workers"]) == workers else None

    return await eventually(successor, timeout=30, what="the successor serving")


def fresh_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def test_a_mutation_waiting_during_the_handover_ends_quickly_and_its_retry_lands_on_the_successor(
        tmp_path, backends):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin)
    old, log_path = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as api:
            await serving_status(api, admin)
            old.send_signal(signal.SIGUSR2)
            await asyncio.sleep(0.05)               # the handover holds the controller's lock now
            try:
                async with asyncio.timeout(15):     # not aiohttp's 60 s (twice) of shutdown grace
                    async with api.post(f"http://127.0.0.1:{admin}/v1/lock", json={"reason": "r"}) as resp:
                        first = resp.status
            except aiohttp.ClientError:
                first = None                        # cut when the old process stopped: retried below
            assert await asyncio.wait_for(old.wait(), 20) == 0
            async with api.post(f"http://127.0.0.1:{admin}/v1/lock", json={"reason": "r"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["locked"] is True
            assert first in (None, 200, 503)
    finally:
        for pid in {old.pid, *serving(config)}:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
        if old.returncode is None:
            old.kill()
            await old.wait()


@pytest.mark.parametrize("before, after", [(1, 2), (2, 3), (2, 1)])
async def test_an_upgrade_that_changes_the_number_of_workers_is_refused_and_the_old_process_serves_on(
        tmp_path, backends, before, after):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=before)
    old, log_path = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as api:
            await serving_status(api, admin, before)
            serve_config(tmp_path, backends, port, admin, workers=after)      # the file now asks for more or fewer
            old.send_signal(signal.SIGUSR2)
            await eventually(lambda: "serving on as before" in log_path.read_text(), timeout=20)
            assert old.returncode is None and (await status(api, admin))["pid"] == old.pid
            async with fresh_session() as s, s.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
        log = log_path.read_text()
        assert "an upgrade keeps the number of workers" in log
    finally:
        for pid in {old.pid, *serving(config)}:
            if not gone(pid):
                os.kill(pid, signal.SIGTERM)
        if old.returncode is None:
            await asyncio.wait_for(old.wait(), 20)


# Started in every process of the test's `cutover serve` (PYTHONPATH): in a successor only (it
# inherits sockets), the process exits once its predecessor said "go" (DIE_AT=go), or right after
# it said "ready" itself (DIE_AT=ready): in both cases before its admin API serves.
DIE_EARLY = """\
import asyncio
import os
if os.environ.get("CUTOVER_INHERIT"):
    import admin.handoff

    original = admin.handoff.Inherited.ready_then_wait

    async def ready_then_die(self):
        if os.environ["DIE_AT"] == "ready":
            self.channel.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(self.channel, b"ready\\n")
        else:
            await original(self)
        os._exit(3)

    admin.handoff.Inherited.ready_then_wait = ready_then_die
"""


@pytest.mark.parametrize("workers, die_at, tls", [(1, "go", False), (2, "go", False), (1, "ready", False),
                                                  (2, "go", True)])
async def test_a_successor_dying_before_its_admin_api_serves_is_backed_out_and_nothing_fails(
        tmp_path, backends, workers, die_at, tls, request):
    port, admin = free_port(), free_port()
    extra = {}
    if tls:
        files = request.getfixturevalue("tls_files")
        extra["tls"] = json.dumps(files.localhost.config())
    config = serve_config(tmp_path, backends, port, admin, workers=workers, **extra)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DIE_EARLY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]), "DIE_AT": die_at}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        old = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file)
    failed: list = []
    try:
        async with aiohttp.ClientSession() as api:
            await serving_status(api, admin, workers)
            if tls:
                old.send_signal(signal.SIGUSR2)
                await eventually(lambda: "before its admin API served" in log_path.read_text(), timeout=30,
                                 what="the predecessor backing out")
                trusting = client_context(files.authority)
                for _ in range(8):                 # fresh TLS connections, over every worker
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", port, ssl=trusting, server_hostname="localhost"), 5)
                    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
                    writer.close()
            else:
                traffic = Traffic(port, 8)
                async with traffic:
                    await eventually(lambda: traffic.seen.get("blue", 0) > 20, timeout=10)
                    old.send_signal(signal.SIGUSR2)
                    await eventually(lambda: "before its admin API served" in log_path.read_text(), timeout=30,
                                     what="the predecessor backing out")
                    count = traffic.seen["blue"]
                    await eventually(lambda: traffic.seen["blue"] > count + 50, timeout=10,
                                     what="requests served after the back-out")
                failed = traffic.failures
                async with fresh_session() as s, s.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200
            now = await serving_status(api, admin, workers)
            assert now["pid"] == old.pid and old.returncode is None
            async with api.post(f"http://127.0.0.1:{admin}/v1/flip", json={}) as resp:
                assert resp.status == 200 and (await resp.json())["ack"]["complete"]
    finally:
        await stop_serve(old)
    log = log_path.read_text()
    assert failed == [], (failed[:5], log[-2000:])
    assert "exited (status 3) before its admin API served" in log
    assert old.returncode == 0, log[-2000:]


async def test_an_upgrade_whose_config_drops_preview_listen_closes_the_handed_preview_sockets(tmp_path, backends):
    # With workers, the successor is handed every slot's preview socket; a config without
    # preview_listen must close them, so that the old preview port refuses connections instead
    # of queueing them on a socket nobody accepts from.
    port, admin, preview = free_port(), free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=2, preview_listen=f'"127.0.0.1:{preview}"')
    old, log_path = await start_serve(tmp_path, config)
    successor = None
    try:
        async with aiohttp.ClientSession() as api:
            await serving_status(api, admin, 2)
            serve_config(tmp_path, backends, port, admin, workers=2)      # no preview_listen any more
            old.send_signal(signal.SIGUSR2)

            now = await taken_over(api, admin, old, 2)
            successor = now["pid"]
            assert now["preview_listen"] is None
            assert await asyncio.wait_for(old.wait(), 20) == 0
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", preview), 5)
            except ConnectionRefusedError:
                pass
            else:
                writer.close()
                raise AssertionError("the old preview port still takes connections")
            async with fresh_session() as s, s.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
    finally:
        await stop_both(old, successor, config)
    assert "Traceback" not in log_path.read_text()


def requests_counted(metrics: str) -> float:
    """requests_counted: cutover_requests_total summed over environments and status classes."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("cutover_requests_total{"))


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_counters_go_on_from_the_predecessors_across_an_upgrade(tmp_path, backends, workers):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=workers)
    old, log_path = await start_serve(tmp_path, config)
    successor = None
    try:
        async with aiohttp.ClientSession() as api:
            await serving_status(api, admin, workers)
            async with fresh_session() as s:
                for _ in range(30):
                    async with s.get(f"http://127.0.0.1:{port}/") as resp:
                        assert resp.status == 200

            async def counted():
                async with api.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                    return requests_counted(await resp.text())

            before = await eventually(lambda: _at_least(counted, 30), timeout=10, what="30 requests counted")
            old.send_signal(signal.SIGUSR2)

            successor = (await taken_over(api, admin, old, workers))["pid"]
            assert await counted() >= before          # not back to zero
            async with fresh_session() as s:
                for _ in range(20):
                    async with s.get(f"http://127.0.0.1:{port}/") as resp:
                        assert resp.status == 200
            await eventually(lambda: _at_least(counted, before + 20), timeout=10, what="the successor's 20 on top")
    finally:
        await stop_both(old, successor, config)
    assert "Traceback" not in log_path.read_text() and "counting from zero" not in log_path.read_text()


async def _at_least(counted, floor: float) -> float | None:
    value = await counted()
    return value if value >= floor else None
