"""End-to-end tests of the switch on loopback: swaps, drains, holds under concurrent load."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from proxy.exchange import SENT
from proxy.route import Route
from tests.support.rawhttp import connect, read_response
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually


def flipped(router, to: str) -> Route:
    old = router.route
    return Route(old.generation + 1, to, previous=old.live, environments=old.environments)


async def http_get(port: int, reader_writer, path: str = "/") -> tuple[int, bytes]:
    """One keep-alive GET on an open raw connection; returns (status, body)."""
    reader, writer = reader_writer
    writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
    return status, body


async def test_swap_during_32_keepalive_clients_fails_nothing(make_proxy):
    proxy = await make_proxy()
    url = f"http://127.0.0.1:{proxy.port}/"
    results = {"ok": 0, "failed": [], "after_swap": []}
    swapped_at = None

    async def client(session):
        for _ in range(400):
            started = time.monotonic()
            try:
                async with session.get(url) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        results["failed"].append(resp.status)
                        continue
                    results["ok"] += 1
                    if swapped_at is not None and started > swapped_at:
                        results["after_swap"].append(body.strip())
            except aiohttp.ClientError as exc:
                results["failed"].append(repr(exc))
            if swapped_at is not None and time.monotonic() - swapped_at > 0.5:
                return

    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(32)]
        await asyncio.sleep(0.3)
        drains = proxy.router.swap(flipped(proxy.router, "green"))
        swapped_at = time.monotonic()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
        drain = await asyncio.wait_for(drains[0].done, 5)
    assert results["failed"] == []
    assert results["ok"] > 100
    assert results["after_swap"] and set(results["after_swap"]) == {"green"}
    assert drain["dropped"] == 0 and drain["forced_closed"] == 0
    assert proxy.router.route.generation == 2


async def test_keepalive_connections_follow_the_new_route_on_their_next_request(make_proxy):
    proxy = await make_proxy()
    conns = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(8)]
    try:
        for rw in conns:
            assert await http_get(proxy.port, rw) == (200, b"blue\n")
        proxy.router.swap(flipped(proxy.router, "green"))
        for rw in conns:
            assert await http_get(proxy.port, rw) == (200, b"green\n")
        assert len(proxy.connections) == 8   # the same client connections, not new ones
    finally:
        for _, writer in conns:
            writer.close()


async def test_swap_during_slow_inflight_requests_drains_all_of_them(make_proxy, backends):
    proxy = await make_proxy()
    url = f"http://127.0.0.1:{proxy.port}/slow?s=0.6"
    async with aiohttp.ClientSession() as session:
        async def slow():
            async with session.get(url) as resp:
                return resp.status, await resp.text()

        tasks = [asyncio.create_task(slow()) for _ in range(20)]
        await eventually(lambda: proxy.router.environments["blue"].inflight >= 20, timeout=3)
        assert proxy.router.snapshot().env("blue").inflight == 20
        drains = proxy.router.swap(flipped(proxy.router, "green"))
        async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
            assert await resp.text() == "green\n"   # new requests go to green at once
        async with asyncio.timeout(5):
            answers = await asyncio.gather(*tasks)
        drain = await asyncio.wait_for(drains[0].done, 5)
    assert answers == [(200, "blue slow\n")] * 20
    assert drain["environment"] == "blue"
    assert drain["inflight_at_start"] == 20
    assert drain["drained"] == 20
    assert drain["dropped"] == 0 and drain["forced_closed"] == 0
    assert 0.3 < drain["duration"] < 3
    assert proxy.router.environments["blue"].inflight == 0


async def test_drain_with_nothing_in_flight_ends_at_once(make_proxy):
    proxy = await make_proxy()
    drains = proxy.router.swap(flipped(proxy.router, "green"))
    drain = await asyncio.wait_for(drains[0].done, 2)
    assert drain["inflight_at_start"] == 0 and drain["drained"] == 0
    assert drain["duration"] < 0.5


async def test_drain_timeout_closes_what_remains_and_counts_it(make_proxy):
    proxy = await make_proxy(drain_timeout="300ms")
    url = f"http://127.0.0.1:{proxy.port}/slow?s=3"
    async with aiohttp.ClientSession() as session:
        async def slow():
            try:
                async with session.get(url) as resp:
                    return resp.status
            except aiohttp.ClientError:
                return "cut"

        tasks = [asyncio.create_task(slow()) for _ in range(5)]
        await eventually(lambda: proxy.router.environments["blue"].inflight >= 5, timeout=3)
        drains = proxy.router.swap(flipped(proxy.router, "green"))
        drain = await asyncio.wait_for(drains[0].done, 3)
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 3)
    assert drain["forced_closed"] == 5 and drain["drained"] == 0 and drain["dropped"] == 0
    assert 0.25 < drain["duration"] < 1.5
    # Answered, not left hanging: the requests had reached blue, which may have acted on
    # them, so 502 without Retry-After (a 503 would invite a retry).
    assert answers == [502] * 5


async def test_websocket_stays_pinned_to_old_env_then_closes_at_drain_timeout(make_proxy):
    proxy = await make_proxy(drain_timeout="500ms")
    base = f"http://127.0.0.1:{proxy.port}"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(base + "/ws") as ws:
            await ws.send_str("one")
            assert (await asyncio.wait_for(ws.receive(), 2)).data == "blue: one"
            drains = proxy.router.swap(flipped(proxy.router, "green"))
            async with session.get(base + "/") as resp:
                assert await resp.text() == "green\n"
            await ws.send_str("two")
            assert (await asyncio.wait_for(ws.receive(), 2)).data == "blue: two"   # still pinned
            drain = await asyncio.wait_for(drains[0].done, 3)
            msg = await asyncio.wait_for(ws.receive(), 2)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert drain["forced_closed"] == 1 and drain["dropped"] == 0


async def test_forced_closes_of_long_lived_connections_are_staggered(make_proxy):
    proxy = await make_proxy(drain_timeout="200ms")
    base = f"http://127.0.0.1:{proxy.port}"
    closed_at = []
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(base + "/ws") for _ in range(6)]
        drains = proxy.router.swap(flipped(proxy.router, "green"))

        async def wait_closed(ws):
            await asyncio.wait_for(ws.receive(), 5)
            closed_at.append(time.monotonic())

        await asyncio.gather(*(wait_closed(ws) for ws in sockets))
        drain = await asyncio.wait_for(drains[0].done, 3)
        for ws in sockets:
            await ws.close()
    assert drain["forced_closed"] == 6
    assert max(closed_at) - min(closed_at) >= 0.15   # spread out, not all at one instant


async def test_idle_pooled_connections_to_the_old_env_are_closed_on_swap(make_proxy):
    proxy = await make_proxy()
    blue = proxy.router.environments["blue"].servers[0]
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(session.get(f"http://127.0.0.1:{proxy.port}/slow?s=0.1") for _ in range(4)))
    assert len(blue.idle) >= 1 and blue.connections >= 1
    drains = proxy.router.swap(flipped(proxy.router, "green"))
    assert blue.idle == []
    drain = await asyncio.wait_for(drains[0].done, 2)
    assert drain["idle_connections_closed"] >= 1
    await eventually(lambda: not blue.connections, timeout=2)


async def test_swap_back_before_the_drain_ends_interrupts_it(make_proxy):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/slow?s=0.5"))
        await eventually(lambda: proxy.router.environments["blue"].inflight, timeout=2)
        first = proxy.router.swap(flipped(proxy.router, "green"))
        second = proxy.router.swap(flipped(proxy.router, "blue"))
        result = await asyncio.wait_for(first[0].done, 2)
        assert result["interrupted"] is True
        resp = await asyncio.wait_for(task, 3)
        assert resp.status == 200
        green_drain = await asyncio.wait_for(second[0].done, 2)
        resp.release()
    assert green_drain["environment"] == "green"
    assert proxy.router.route.generation == 3 and proxy.router.route.live == "blue"


async def test_forced_close_at_drain_timeout_of_a_sent_request_is_502_without_retry_after(make_proxy):
    proxy = await make_proxy(drain_timeout="300ms", health_check=QUIET_HEALTH)
    blue = proxy.router.environments["blue"]
    reader, writer = await connect(proxy.port)
    try:
        writer.write(b"GET /slow?s=3 HTTP/1.1\r\nHost: app\r\n\r\n")
        await eventually(lambda: any(ex.state == SENT for ex in blue.active),
                         what="the request sent upstream")
        old = proxy.router.route
        drains = proxy.router.swap(Route(old.generation + 1, "green", previous=old.live,
                                         environments=old.environments))
        async with asyncio.timeout(2):
            resp = await read_response(reader)
            drain = await drains[0].done
    finally:
        writer.close()
    assert resp.status == 502
    assert resp.get(b"retry-after") is None
    assert drain["forced_closed"] == 1


async def test_hold_queues_requests_and_resume_serves_them_on_the_new_route(make_proxy):
    proxy = await make_proxy()
    router = proxy.router
    url = f"http://127.0.0.1:{proxy.port}/"
    async with aiohttp.ClientSession() as session:
        async def get():
            async with session.get(url) as resp:
                return resp.status, await resp.text()

        router.hold()
        tasks = [asyncio.create_task(get()) for _ in range(10)]
        await eventually(lambda: router.held_requests >= 10, timeout=3)
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in tasks)
        snapshot = router.snapshot()
        assert snapshot.held is True and snapshot.held_requests == 10
        router.swap(flipped(router, "green"))
        assert router.resume() == 10
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 3)
    assert answers == [(200, "green\n")] * 10
    assert router.held is False and router.held_requests == 0


async def test_a_router_hold_outlasts_its_deadline_until_resume(make_proxy):
    # The deadline is the Controller's: its timer calls resume (tests/e2e/test_hold_has_one_owner.py).
    proxy = await make_proxy()
    router = proxy.router
    async with aiohttp.ClientSession() as session:
        router.hold(until=time.time() + 0.1)
        request = asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/"))
        await eventually(lambda: router.held_requests >= 1, timeout=2)
        await asyncio.sleep(0.3)
        assert not request.done() and router.held and router.held_requests == 1
        assert router.resume() == 1
        async with await asyncio.wait_for(request, 3) as resp:
            assert resp.status == 200 and await resp.text() == "blue\n"
    assert router.held is False


async def test_hold_past_max_queued_answers_503_with_retry_after(make_proxy):
    proxy = await make_proxy(hold={"max_wait": "5s", "max_queued": 2})
    router = proxy.router
    url = f"http://127.0.0.1:{proxy.port}/"
    async with aiohttp.ClientSession() as session:
        router.hold()
        waiting = [asyncio.create_task(session.get(url)) for _ in range(2)]
        await eventually(lambda: router.held_requests >= 2, timeout=2)
        async with session.get(url) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert "max_queued" in await resp.text()
        router.resume()
        for resp in await asyncio.wait_for(asyncio.gather(*waiting), 3):
            assert resp.status == 200
            resp.release()


async def test_a_client_leaving_the_hold_queue_is_not_counted(make_proxy):
    proxy = await make_proxy()
    router = proxy.router
    router.hold()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: router.held_requests >= 1, timeout=2)
    writer.close()
    await eventually(lambda: not router.held_requests, timeout=2)
    assert router.resume() == 0


async def test_inflight_and_connection_counters_per_env_and_server(make_proxy):
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.get(f"http://127.0.0.1:{proxy.port}/slow?s=0.4")) for _ in range(3)]
        await eventually(lambda: proxy.router.environments["blue"].inflight >= 3, timeout=2)
        snapshot = proxy.router.snapshot()
        blue, green = snapshot.env("blue"), snapshot.env("green")
        assert blue.inflight == 3 and blue.servers[0].inflight == 3
        assert blue.connections == 3
        assert green.inflight == 0 and green.connections == 0
        for resp in await asyncio.gather(*tasks):
            resp.release()
    assert proxy.router.environments["blue"].inflight == 0


@pytest.mark.parametrize("weight, expected", [(0, {"blue"}), (100, {"green"})])
async def test_canary_weight_bounds(make_proxy, weight, expected):
    proxy = await make_proxy()
    old = proxy.router.route
    proxy.router.swap(Route(old.generation + 1, "blue", canary="green", canary_weight=weight,
                            environments=old.environments))
    seen = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                seen.add((await resp.text()).strip())
    assert seen == expected


async def test_canary_clients_keep_their_side_and_raising_the_weight_only_moves_old_to_new(make_proxy):
    proxy = await make_proxy()
    router = proxy.router
    url = f"http://127.0.0.1:{proxy.port}/"

    def set_weight(weight):
        old = router.route
        router.swap(Route(old.generation + 1, "blue", canary="green", canary_weight=weight,
                          environments=old.environments))

    sessions = [aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(30)]
    try:
        async def sides():
            out = []
            for session in sessions:
                seen = set()
                for _ in range(3):
                    async with session.get(url) as resp:
                        seen.add((await resp.text()).strip())
                assert len(seen) == 1, seen      # sticky while the weight stays
                out.append(seen.pop())
            return out

        set_weight(30)
        at_30 = await sides()
        set_weight(70)
        at_70 = await sides()
    finally:
        for session in sessions:
            await session.close()
    assert "green" in at_70 and "blue" in at_30
    for before, after in zip(at_30, at_70):
        assert not (before == "green" and after == "blue")   # never moved back
    assert at_70.count("green") >= at_30.count("green")
