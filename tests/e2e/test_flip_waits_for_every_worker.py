"""workers: N (SPEC §9.1): a change answers only once every live worker applied it.

Real worker processes (python -m proxy.agent) behind one supervisor started in the test's
event loop (admin.serve.start); clients on loopback. Each request records when it started
and which environment answered, so "no request that starts after the 200 goes by the old
route, on any worker" is checked request by request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from tests.support.adminapi import JsonAdmin as Admin
from tests.support.wait import eventually


async def status_of(session, running) -> dict:
    async with session.get(f"http://127.0.0.1:{running.admin_port}/v1/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def get(session, port: int, path: str = "/", fresh: bool = False) -> tuple[int, str]:
    headers = {"Connection": "close"} if fresh else {}
    async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
        return resp.status, (await resp.text()).strip()


@pytest.mark.parametrize("workers", [2, 3])
async def test_no_request_started_after_the_flip_answer_goes_to_the_old_environment_on_any_worker(
        make_stack, workers):
    # Health checks that a loaded 2-core machine cannot fail by being slow: this test is about
    # the route, not about marking servers down.
    running = await make_stack(workers=workers, health_check={"interval": "1s", "timeout": "5s"})
    port = running.port
    answered_at: list[float] = []
    results: list[tuple[float, int, str]] = []     # (started, status, body)
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(session, fresh: bool):
        for _ in range(2000):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                status, body = await get(session, port, fresh=fresh)
                results.append((started, status, body))
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    keepalive = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    async with keepalive, fresh, aiohttp.ClientSession() as admin_session:
        api = Admin(admin_session, running.admin_port)
        tasks = [asyncio.create_task(client(keepalive, False)) for _ in range(32)]
        tasks += [asyncio.create_task(client(fresh, True)) for _ in range(8)]
        await eventually(lambda: asyncio.sleep(0, len(results) > 200), timeout=10)
        answer = await api.ok("/v1/flip", {})
        answered_at.append(time.monotonic())
        await eventually(lambda: asyncio.sleep(0, sum(1 for r in results if r[0] > answered_at[0]) > 300),
                         timeout=10)
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
        status = await status_of(admin_session, running)

    pids = [w["pid"] for w in status["workers"]]
    assert len(set(pids)) == workers and all(w["alive"] for w in status["workers"])
    assert answer["ack"] == {"complete": True, "acked": sorted(answer["ack"]["acked"]), "pending": []}
    assert sorted(answer["ack"]["acked"]) == sorted(pids)
    assert failures == []
    assert [(s, b) for _, s, b in results if s != 200] == []
    after = [body for started, _, body in results if started > answered_at[0]]
    assert after and set(after) == {"green"}
    # the load really was spread: every worker served requests
    assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
    assert all(w["generation"] == 2 for w in status["workers"])


async def test_status_and_metrics_sum_the_workers(make_stack, session):
    running = await make_stack(workers=2)
    for _ in range(40):
        assert await get(session, running.port, fresh=True) == (200, "blue")
    status = await status_of(session, running)
    assert sum(w["requests"] for w in status["workers"]) == 40
    assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
    async with session.get(f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'cutover_requests_total{code_class="2xx",environment="blue"} 40.0' in text
    assert "cutover_workers 2.0" in text
    assert "cutover_worker_restarts_total 0.0" in text


async def test_a_hold_holds_on_every_worker_and_resume_releases_them_all(make_stack, session):
    running = await make_stack(workers=2)
    api = Admin(session, running.admin_port)
    held = await api.ok("/v1/hold", {"timeout": 30})
    assert held["ack"]["complete"] and len(held["ack"]["acked"]) == 2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as clients:
        waiting = [asyncio.create_task(get(clients, running.port, fresh=True)) for _ in range(12)]

        async def all_held():
            status = await status_of(session, running)
            return status["held_requests"] == 12 and status

        status = await eventually(all_held, timeout=5)
        assert status["held"] is True
        assert not any(t.done() for t in waiting)
        resumed = await api.ok("/v1/resume", {})
        assert resumed["released"] == 12 and resumed["ack"]["complete"]
        async with asyncio.timeout(5):
            answers = await asyncio.gather(*waiting)
    assert answers == [(200, "blue")] * 12


async def test_a_drain_across_workers_is_recorded_once_summed_with_none_dropped(make_stack, session):
    running = await make_stack(workers=2)
    api = Admin(session, running.admin_port)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as clients:
        slow = [asyncio.create_task(get(clients, running.port, "/slow?s=0.8", fresh=True)) for _ in range(16)]

        async def all_in_flight():
            status = await status_of(session, running)
            return status["environments"]["blue"]["inflight"] == 16 and status

        status = await eventually(all_in_flight, timeout=5)
        assert all(w["inflight"] > 0 for w in status["workers"]), status["workers"]
        await api.ok("/v1/flip", {})
        async with asyncio.timeout(5):
            answers = await asyncio.gather(*slow)
    assert answers == [(200, "blue slow")] * 16

    async def drained():
        events = await api.events()
        flip = [e for e in events if e["action"] == "flip"][-1]
        return flip.get("drain") and flip

    flip = await eventually(drained, timeout=10)
    assert flip["drain"]["inflight_at_start"] == 16
    assert (flip["drain"]["drained"], flip["drain"]["dropped"], flip["drain"]["forced_closed"]) == (16, 0, 0)


async def test_a_killed_worker_is_restarted_with_the_current_route_and_changes_do_not_hang(make_stack, session):
    running = await make_stack(workers=2, fleet={"ack_timeout": "5s"},
                               health_check={"interval": "1s", "timeout": "5s"})
    api = Admin(session, running.admin_port)
    failures: list[str] = []
    stop = asyncio.Event()

    async def client():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as clients:
            for _ in range(5000):
                if stop.is_set():
                    return
                try:
                    status, _ = await get(clients, running.port, fresh=True)
                    if status != 200:
                        failures.append(str(status))
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

    load = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.3)
    before = (await status_of(session, running))["workers"]
    victim = before[1]["pid"]
    os.kill(victim, signal.SIGKILL)

    # While it is down (or coming back), a change waits only for the live worker.
    started = time.monotonic()
    answer = await api.ok("/v1/flip", {})
    assert time.monotonic() - started < 5          # bounded by ack_timeout, never hung
    assert victim not in answer["ack"]["acked"] and answer["ack"]["pending"] == []

    async def restarted():
        workers = (await status_of(session, running))["workers"]
        return all(w["alive"] for w in workers) and workers[1]["pid"] != victim and workers

    workers = await eventually(restarted, timeout=10)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*load)
    # Only what was in flight on the killed worker can fail (fresh connections: at most one
    # request per client); connections queued on its socket waited for the restart.
    assert len(failures) <= 4, failures
    assert workers[1]["restarts"] == 1 and workers[0]["restarts"] == 0
    assert workers[1]["generation"] == answer["generation"]
    for _ in range(30):                              # fresh connections reach both workers
        assert await get(session, running.port, fresh=True) == (200, "green")
    status = await status_of(session, running)
    assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
    async with session.get(f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
        assert "cutover_worker_restarts_total 1.0" in await resp.text()


async def test_a_worker_that_does_not_ack_in_time_is_named_pending_and_the_answer_is_202(make_stack, session):
    running = await make_stack(workers=2, fleet={"ack_timeout": "300ms"})
    api = Admin(session, running.admin_port)
    stuck = (await status_of(session, running))["workers"][0]["pid"]
    os.kill(stuck, signal.SIGSTOP)
    try:
        status, answer = await api.call("POST", "/v1/flip", {})
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert status == 202, answer
    assert answer["ack"]["complete"] is False and answer["ack"]["pending"] == [stuck]
    assert answer["live"] == "green"                 # committed, not confirmed everywhere

    async def caught_up():
        workers = (await status_of(session, running))["workers"]
        return all(w["generation"] == answer["generation"] for w in workers)

    assert await eventually(caught_up, timeout=5)


async def test_health_results_reach_every_worker(make_stack, backends, session):
    from tests.support.backend import Backend
    spare = await Backend("blue-2").start()
    try:
        running = await make_stack({"blue": [backends["blue"], spare], "green": backends["green"]}, workers=2,
                                   health_check={"interval": "50ms", "timeout": "500ms", "unhealthy_after": 1})
        async with session.post(f"http://{spare.address}/__fail?on=1") as resp:
            assert resp.status == 200

        async def marked_down():
            status = await status_of(session, running)
            return not status["environments"]["blue"]["servers"][1]["healthy"]

        await eventually(marked_down, timeout=5)
        await asyncio.sleep(0.2)
        # Every worker routes around it: none of these reaches the failing server.
        answers = [await get(session, running.port, fresh=True) for _ in range(40)]
        assert answers == [(200, "blue")] * 40
        status = await status_of(session, running)
        assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
    finally:
        await spare.stop()


@pytest.mark.parametrize("nice", [0, 5])
async def test_workers_run_worker_nice_nicer_than_their_supervisor_a_restarted_one_too(make_stack, nice):
    running = await make_stack(workers=2, worker_nice=nice)
    plane = running.plane
    own = os.getpriority(os.PRIO_PROCESS, 0)
    expected = min(19, own + nice)
    assert [os.getpriority(os.PRIO_PROCESS, w.pid) for w in plane.workers] == [expected, expected]
    old = plane.workers[0].pid
    plane.workers[0].process.kill()
    await eventually(lambda: plane.workers[0].alive and plane.workers[0].pid != old, timeout=15)
    assert os.getpriority(os.PRIO_PROCESS, plane.workers[0].pid) == expected


async def test_a_worker_started_after_a_health_transition_starts_with_it(make_stack, backends, session):
    """What a restarted worker starts with is the checking worker's last word on each server,
    not its last periodic snapshot (up to a quarter second older): a transition in between
    would otherwise be lost to it until the server's next transition. A server a registration
    adds starts down (until checked, as on the running workers); one it removes is left out."""
    from tests.support.backend import Backend
    running = await make_stack(workers=2, health_check={"interval": "1h", "timeout": "5s"})
    plane = running.plane
    checker = next(w for w in plane.workers if w.slot == plane.checker)
    other = next(w for w in plane.workers if w is not checker)
    address = backends["blue"].address
    health = lambda: {(e, a): counted for e, a, *counted in plane._health_now()}    # noqa: E731
    assert health()[("blue", address)][0] is True
    sent = []
    channel = other.channel
    channel.send = sent.append        # what the other worker would be told
    try:
        # The checker's word, as its channel delivers it, before any snapshot says so.
        plane._on_message(checker, checker.process, ("health", "blue", address, False, "HTTP 500", False, 0, 2))
    finally:
        del channel.send
    assert checker.snapshot.router.environments[0].servers[0].healthy        # its snapshot: older
    assert health()[("blue", address)] == [False, 0, 2]
    assert sent == [("health", "blue", address, False, "HTTP 500")]
    spare = await Backend("blue-2").start()
    try:
        answer = await Admin(session, running.admin_port).call("PUT", "/v1/environments/blue/servers",
                                                               {"servers": [spare.address]})
        assert answer[0] == 200, answer
        now = health()
        assert set(now) == {("blue", spare.address), ("green", backends["green"].address)}
        assert now[("blue", spare.address)][0] is False     # down until checked (healthy_after 2)
    finally:
        await spare.stop()


async def test_a_drain_of_a_change_answered_202_is_still_recorded_once_every_worker_reports(make_stack, session):
    running = await make_stack(workers=2, fleet={"ack_timeout": "300ms"})
    api = Admin(session, running.admin_port)
    pids = [w["pid"] for w in (await status_of(session, running))["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        status, answer = await api.call("POST", "/v1/flip", {})
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert status == 202 and sorted(answer["ack"]["pending"]) == sorted(pids)

    async def drained():
        flip = [e for e in await api.events() if e["action"] == "flip"][-1]
        return flip.get("drain") and flip

    flip = await eventually(drained, timeout=10)
    assert flip["drain"]["dropped"] == 0


async def test_a_worker_killed_by_a_realtime_signal_is_restarted_too(make_stack, session):
    running = await make_stack(workers=2)
    victim = (await status_of(session, running))["workers"][0]["pid"]
    os.kill(victim, signal.SIGRTMIN + 6)

    async def restarted():
        workers = (await status_of(session, running))["workers"]
        return workers[0]["pid"] != victim and workers[0]["alive"] and workers

    workers = await eventually(restarted, timeout=10)
    assert workers[0]["restarts"] == 1


async def test_a_stuck_worker_is_killed_and_restarted(make_stack, session, monkeypatch):
    import admin.workers
    monkeypatch.setattr(admin.workers, "STALL_LIMIT", 1.0)
    running = await make_stack(workers=2)
    stuck = (await status_of(session, running))["workers"][1]["pid"]
    os.kill(stuck, signal.SIGSTOP)                # alive, but its loop no longer runs

    async def replaced():
        workers = (await status_of(session, running))["workers"]
        return workers[1]["pid"] != stuck and workers[1]["alive"] and workers

    workers = await eventually(replaced, timeout=10)
    assert workers[1]["restarts"] == 1
    answer = await Admin(session, running.admin_port).ok("/v1/flip", {})
    assert answer["ack"]["complete"] and len(answer["ack"]["acked"]) == 2


async def test_after_a_backed_out_handover_the_workers_accept_again_and_a_stuck_one_is_still_replaced(
        make_stack, session, monkeypatch):
    import admin.workers
    monkeypatch.setattr(admin.workers, "STALL_LIMIT", 1.0)
    running = await make_stack(workers=2)
    await running.plane.stop_accepting()          # a successor said "ready" ...
    await eventually(lambda: running.plane._watchdog.done(), timeout=5,
                     what="the stall watch ending once the workers stopped accepting")
    assert await running.plane.resume_accepting()  # ... and died before it served: accept again
    assert (await get(session, running.port, fresh=True))[0] == 200
    stuck = (await status_of(session, running))["workers"][1]["pid"]
    os.kill(stuck, signal.SIGSTOP)

    async def replaced():
        workers = (await status_of(session, running))["workers"]
        return workers[1]["pid"] != stuck and workers[1]["alive"] and workers

    await eventually(replaced, timeout=10, what="the stuck worker replaced after the back-out")
    statuses = {(await get(session, running.port, fresh=True))[0] for _ in range(10)}
    assert statuses == {200}
