"""With workers (SPEC §9.1) hold.max_queued bounds the router as a whole: a hold queues up to
max_queued requests even when every one of them reached one worker, refuses the next with 503
on any worker, and what a killed worker held stops counting. Real `cutover serve` with
workers: 2, processes ended by their PID."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.support.ports import free_port
from tests.support.processes import serve_config, serving_status, start_serve, stop_serve
from tests.support.wait import eventually

MAX_QUEUED = 4
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def status(session, admin: int) -> dict:
    async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def held_request(port: int):
    """held_request: a connection that sent one request, and its reader."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    return reader, writer


async def test_a_hold_queues_max_queued_requests_on_one_worker_refuses_the_next_and_forgets_a_killed_workers(
        tmp_path, backends, session):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=2,
                          hold=f"{{max_wait: 60s, max_queued: {MAX_QUEUED}}}")
    proc, _ = await start_serve(tmp_path, config)
    kept = []
    try:
        workers = (await serving_status(session, admin, 2))["workers"]
        async with session.post(f"http://127.0.0.1:{admin}/v1/hold", json={}) as resp:
            assert resp.status == 200, await resp.text()
        target = workers[0]["pid"]
        # Connections land where the kernel's hash sends them: keep those on the first worker,
        # close the others (their held request leaves the queue), until it holds MAX_QUEUED.
        for _ in range(80):
            if len(kept) == MAX_QUEUED:
                break
            reader, writer = await held_request(port)
            expected = len(kept) + 1

            async def landed():
                now = await status(session, admin)
                if now["held_requests"] != expected:
                    return None
                return {w["pid"]: w["connections"] for w in now["workers"]}

            connections = await eventually(landed, timeout=10, what=f"{expected} requests held")
            if connections[target] == len(kept) + 1:
                kept.append((reader, writer))
            else:
                writer.close()
                await eventually(lambda: _held(session, admin, len(kept)), timeout=10,
                                 what="the closed connection's request out of the queue")
        assert len(kept) == MAX_QUEUED, "the kernel sent too few connections to one worker"
        # The router holds MAX_QUEUED: one more is refused whichever worker takes it.
        for _ in range(4):
            reader, writer = await held_request(port)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: " in head.lower(), head
            assert b"hold.max_queued" in await asyncio.wait_for(reader.read(200), 10)
            writer.close()
        # A killed worker's held requests stop counting: the other worker may hold MAX_QUEUED.
        os.kill(target, signal.SIGKILL)
        await eventually(lambda: _restarted(session, admin, target), timeout=20, what="the worker restarted")
        for reader, writer in kept:
            writer.close()
        kept = [await held_request(port) for _ in range(MAX_QUEUED)]
        await eventually(lambda: _held(session, admin, MAX_QUEUED), timeout=10,
                         what=f"{MAX_QUEUED} requests held after the kill")
        async with session.post(f"http://127.0.0.1:{admin}/v1/resume", json={}) as resp:
            assert resp.status == 200, await resp.text()
        for reader, _ in kept:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
    finally:
        for _, writer in kept:
            writer.close()
        await stop_serve(proc)


async def _held(session, admin: int, count: int) -> bool:
    return (await status(session, admin))["held_requests"] == count


async def _restarted(session, admin: int, killed: int) -> bool:
    workers = (await status(session, admin))["workers"]
    return all(w["alive"] and w["pid"] != killed for w in workers)


async def test_a_killed_workers_held_requests_stop_counting_before_its_slot_serves_again(make_stack, session):
    # The supervisor runs in the test's loop, so the test reads the cells the workers count in:
    # a killed worker's cell is cleared by its supervisor, not left for its successor to overwrite.
    running = await make_stack(workers=2, hold={"max_wait": "60s", "max_queued": MAX_QUEUED})
    plane = running.plane
    async with session.post(f"http://127.0.0.1:{running.admin_port}/v1/hold", json={}) as resp:
        assert resp.status == 200, await resp.text()
    held = [await held_request(running.port) for _ in range(MAX_QUEUED)]
    try:
        with memoryview(plane.tally) as raw, raw.cast("q") as cells, cells[:plane.count] as hold_cells:
            await eventually(lambda: sum(hold_cells) == MAX_QUEUED, timeout=10, what="every request counted")
            slot = next(i for i in range(plane.count) if hold_cells[i])
            victim, lost = plane.workers[slot].pid, hold_cells[slot]
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: plane.workers[slot].pid != victim and plane.workers[slot].alive, timeout=20,
                             what="the killed worker's slot serving again")
            # No request reached the new worker: only the supervisor can have zeroed the cell.
            assert hold_cells[slot] == 0 and sum(hold_cells) == MAX_QUEUED - lost, list(hold_cells)
    finally:
        for _, writer in held:
            writer.close()
