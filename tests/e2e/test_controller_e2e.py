"""The switch rules (SPEC §5) driven through the admin API, with real traffic through the proxy.

Each test starts the real proxy + controller + admin API (make_stack) in front of the real
blue/green test backends, sends load through the proxy and steers it over HTTP.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from yarl import URL

from tests.support.adminapi import JsonAdmin as Admin
from tests.support.wait import eventually

SLOW = "/slow?s=0.8"


async def fetch(session: aiohttp.ClientSession, url: str, timeout: float = 5) -> tuple[int, str, dict]:
    async with asyncio.timeout(timeout):
        async with session.get(url) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


async def wait_held(api: Admin, n: int) -> None:
    async def reached():
        return (await api.status())["held_requests"] == n
    await eventually(reached)


async def drained_entry(api: Admin, generation: int) -> dict:
    """drained_entry: the history entry of the switch to ``generation`` once its drain ended."""
    async def done():
        for event in await api.events():
            if event["generation"] == generation and event["action"] in ("flip", "rollback", "promote") \
                    and "drained" in event:
                return event
        return None
    return await eventually(done, timeout=3)


# ------------------------------------------------------------------- flip under load


async def test_a_flip_under_load_fails_nothing_and_counts_its_drain(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}"
    failed: list = []
    seen: list[tuple[float, str]] = []       # (monotonic start of the request, body)
    flip_acked: float | None = None
    stop = asyncio.Event()

    async def keepalive_client(session):
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, body, _ = await fetch(session, url + "/")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed.append(repr(exc))
                continue
            if status != 200:
                failed.append((status, body))
            seen.append((started, body.strip()))

    async def slow_request(session):
        try:
            return await fetch(session, url + SLOW)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed.append(repr(exc))
            return None

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as fast, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as slow_session:
        clients = [asyncio.create_task(keepalive_client(fast)) for _ in range(32)]
        slow = [asyncio.create_task(slow_request(slow_session)) for _ in range(20)]
        blue = running.proxy.router.environments["blue"]

        async def slow_ones_in_flight():
            return blue.inflight >= 20 and len(seen) > 50
        await eventually(slow_ones_in_flight)

        answer = await api.ok("/v1/flip", {"reason": "under load"})
        flip_acked = time.monotonic()
        assert (answer["live"], answer["generation"]) == ("green", 2)
        await asyncio.sleep(0.3)
        stop.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*clients)
            slow_results = await asyncio.gather(*slow)

    assert failed == []
    assert [(s, b) for s, b, _ in slow_results] == [(200, "blue slow\n")] * 20
    after = [body for started, body in seen if started > flip_acked]
    assert len(after) > 20
    assert set(after) == {"green"}
    assert "blue" in {body for started, body in seen if started < flip_acked}

    entry = await drained_entry(api, 2)
    assert (entry["action"], entry["from"], entry["to"], entry["reason"]) == ("flip", "blue", "green", "under load")
    assert entry["drained"] >= 20           # every slow request was in flight at the flip
    assert entry["dropped"] == 0 and entry["forced_closed"] == 0
    if "drain" in entry:                    # the detailed figures, when recorded
        assert entry["drain"]["inflight_at_start"] == entry["drained"] + entry["drain"].get("client_gone", 0)
        assert entry["drain"]["remaining"] == 0


# ------------------------------------------------------------------------ rollback


async def test_rollback_recovery_on_a_keepalive_client(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    await api.ok("/v1/flip", {"to": "green"})
    seen: list[tuple[float, float, str]] = []     # (start, end, body) in perf_counter time
    connections_made = []
    trace = aiohttp.TraceConfig()

    async def on_connection_create_end(session, context, params):
        connections_made.append(params)
    trace.on_connection_create_end.append(on_connection_create_end)
    failed = []
    stop = asyncio.Event()

    async def poll(session):
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with asyncio.timeout(5):
                    async with session.get(url) as resp:
                        body = (await resp.text()).strip()
                        if resp.status != 200:
                            failed.append((resp.status, body))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed.append(repr(exc))
                continue
            seen.append((started, time.perf_counter(), body))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     trace_configs=[trace]) as session:
        poller = asyncio.create_task(poll(session))
        async def warm():
            return len(seen) >= 20
        await eventually(warm)
        assert {body for _, _, body in seen} == {"green"}

        sent = time.perf_counter()
        answer = await api.ok("/v1/rollback", {"reason": "drill"})
        acked = time.perf_counter()
        assert (answer["live"], answer["previous"], answer["generation"]) == ("blue", "green", 3)

        async def blue_after_ack():
            return any(start > acked for start, _, body in seen)
        await eventually(blue_after_ack)
        stop.set()
        async with asyncio.timeout(5):
            await poller

    assert failed == []
    assert len(connections_made) == 1       # one keep-alive connection all along
    first_blue = next(end for start, end, body in seen if body == "blue")
    assert all(body == "blue" for start, _, body in seen if start > acked)
    assert all(body == "green" for _, end, body in seen if end < sent)
    recovery_ms = (first_blue - sent) * 1000
    print(f"\nrollback recovery on a keep-alive client: {recovery_ms:.2f} ms "
          f"(API answered after {(acked - sent) * 1000:.2f} ms)")

    event = (await api.events())[-1]
    assert (event["action"], event["from"], event["to"], event["reason"]) == ("rollback", "green", "blue", "drill")
    assert isinstance(event.get("recovery_ms"), (int, float)) and event["recovery_ms"] >= 0
    print(f"history recovery_ms: {event['recovery_ms']}")


# ---------------------------------------------------------------------------- hold


async def test_held_requests_go_to_the_environment_live_at_resume(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    assert (await api.ok("/v1/hold", {"timeout": 30}))["held"] is True
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        waiting = [asyncio.create_task(fetch(session, url)) for _ in range(10)]
        await wait_held(api, 10)
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)
        answer = await api.ok("/v1/flip", {"to": "green"})
        assert answer["held"] is True and answer["held_requests"] == 10 and answer["live"] == "green"
        answer = await api.ok("/v1/resume")
        assert answer["held"] is False and answer.get("released", 10) == 10
        async with asyncio.timeout(3):
            results = await asyncio.gather(*waiting)
    assert [(status, body) for status, body, _ in results] == [(200, "green\n")] * 10
    assert [e["action"] for e in await api.events()] == ["hold", "flip", "resume"]


async def test_a_hold_times_out_by_itself_and_serves_what_waited(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    held_at = time.monotonic()
    await api.ok("/v1/hold", {"timeout": 0.3})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        waiting = [asyncio.create_task(fetch(session, url)) for _ in range(5)]
        await wait_held(api, 5)
        async with asyncio.timeout(2):
            results = await asyncio.gather(*waiting)
        released_after = time.monotonic() - held_at
    assert [(status, body) for status, body, _ in results] == [(200, "blue\n")] * 5
    assert released_after >= 0.25, released_after      # they did wait for the hold
    status = await api.status()
    assert status["held"] is False and status["held_requests"] == 0

    async def resume_recorded():      # the history entry may follow the release by a moment
        events = await api.events()
        return events if len(events) >= 2 else None
    events = await eventually(resume_recorded)
    assert [e["action"] for e in events] == ["hold", "resume"]
    assert events[-1]["reason"] == "hold timeout"
    assert events[-1].get("released", 5) == 5


async def test_past_max_queued_a_held_request_gets_503_with_retry_after(make_stack, admin_session):
    running = await make_stack(hold={"max_wait": "5s", "max_queued": 3})
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    await api.ok("/v1/hold")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        waiting = [asyncio.create_task(fetch(session, url)) for _ in range(3)]
        await wait_held(api, 3)
        started = time.monotonic()
        status, body, headers = await fetch(session, url, timeout=2)
        assert status == 503, body
        assert time.monotonic() - started < 1.0           # refused at once, it does not wait
        assert "Retry-After" in headers
        assert int(headers["Retry-After"]) >= 0
        assert (await api.status())["held_requests"] == 3
        assert not any(task.done() for task in waiting)
        await api.ok("/v1/resume")
        async with asyncio.timeout(3):
            results = await asyncio.gather(*waiting)
    assert [(status, body) for status, body, _ in results] == [(200, "blue\n")] * 3


# -------------------------------------------------------------------------- canary


async def _canary_phases(api: Admin, url: str, sessions: list, weights: tuple[int, ...]) -> list[list[str]]:
    """_canary_phases: for each weight in turn, set it and ask every client where it lands.

    Each client sends 4 requests per weight (on new connections, so nothing is pinned by a
    connection) and must land on one environment every time.
    """
    async def where(session) -> str:
        envs = set()
        for _ in range(4):
            status, body, _ = await fetch(session, url)
            assert status == 200, body
            envs.add(body.strip())
        assert len(envs) == 1, f"a client moved between environments at one weight: {envs}"
        return envs.pop()

    phases = []
    for weight in weights:
        await api.ok("/v1/canary", {"weight": weight})
        async with asyncio.timeout(5):
            phases.append(list(await asyncio.gather(*(where(s) for s in sessions))))
    return phases


def assert_monotonic(phases: list[list[str]], weights: tuple[int, ...]) -> None:
    """assert_monotonic: raising the weight only ever moved clients from blue to green."""
    greens = [{i for i, env in enumerate(phase) if env == "green"} for phase in phases]
    print("\ncanary: " + ", ".join(f"{len(g)}/{len(phases[0])} on green at {w}%"
                                   for g, w in zip(greens, weights)))
    for (w1, g1), (w2, g2) in zip(zip(weights, greens), zip(weights[1:], greens[1:])):
        if w2 > w1:
            assert g1 <= g2, f"raising {w1}% -> {w2}% moved clients back to blue: {sorted(g1 - g2)}"
        elif w2 == w1:
            assert g1 == g2, f"clients moved at an unchanged weight {w1}%"


async def test_canary_is_sticky_per_cookie_and_raising_it_only_moves_clients_to_green(
        make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    # 40 clients, all from 127.0.0.1: each is told apart only by its own cookie jar
    # (unsafe=True: keep cookies set by an IP-address host), and opens a new connection
    # for every request.
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                      cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(40)]
    weights = (30, 30, 60, 100)
    try:
        phases = await _canary_phases(api, url, sessions, weights)
        buckets = []
        for session in sessions:
            cookie = session.cookie_jar.filter_cookies(URL(url)).get("cutover_canary")
            assert cookie is not None, "the canary assignment was not given back as a cookie"
            buckets.append(int(cookie.value))
    finally:
        for session in sessions:
            await session.close()
    assert_monotonic(phases, weights)
    # a client's environment is its bucket against the weight (bucket < N -> canary)
    for weight, phase in zip(weights, phases):
        assert phase == ["green" if b < weight else "blue" for b in buckets], (weight, buckets, phase)
    assert "green" in phases[0] and "blue" in phases[0]
    assert phases[2].count("green") > phases[0].count("green")
    assert phases[3] == ["green"] * 40


async def test_canary_is_sticky_per_configured_header(make_stack, admin_session):
    running = await make_stack(canary={"header": "X-User"})
    api = Admin(admin_session, running.admin_port)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    # no cookies at all: only the header tells the 40 clients apart
    sessions = [aiohttp.ClientSession(headers={"X-User": f"user-{i}"}, cookie_jar=aiohttp.DummyCookieJar(),
                                      connector=aiohttp.TCPConnector(force_close=True)) for i in range(40)]
    weights = (30, 30, 60, 0, 60, 100)
    try:
        phases = await _canary_phases(api, url, sessions, weights)
    finally:
        for session in sessions:
            await session.close()
    assert_monotonic(phases, weights)
    assert "green" in phases[0] and "blue" in phases[0]
    assert phases[2].count("green") > phases[0].count("green")
    assert phases[3] == ["blue"] * 40
    assert phases[4] == phases[2]            # the same clients come back to the canary
    assert phases[5] == ["green"] * 40


# ------------------------------------------------------------------------- restart


async def test_a_restart_keeps_the_route_lock_and_history(make_stack, admin_session):
    first = await make_stack()
    api = Admin(admin_session, first.admin_port)
    await api.ok("/v1/flip", {"reason": "release 42"})
    await api.ok("/v1/lock", {"reason": "freeze"})
    before = await api.events()
    await first.stop(0.5)

    second = await make_stack()
    api = Admin(admin_session, second.admin_port)
    assert second.proxy.port != 0
    status = await api.status()
    assert (status["live"], status["previous"], status["generation"], status["locked"]) == \
        ("green", "blue", 2, True)
    assert second.proxy.router.route.generation == 2
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            result = await fetch(session, f"http://127.0.0.1:{second.proxy.port}/")
            assert result[:2] == (200, "green\n")
    events = await api.events()
    assert [(e["action"], e["reason"], e["generation"]) for e in events] == \
        [(e["action"], e["reason"], e["generation"]) for e in before] == \
        [("flip", "release 42", 2), ("lock", "freeze", 2)]
    code, payload = await api.call("POST", "/v1/flip", {"force": True})
    assert code == 409 and payload["code"] == "locked"
    await api.ok("/v1/unlock")
    answer = await api.ok("/v1/rollback")
    assert (answer["live"], answer["generation"]) == ("blue", 3)
