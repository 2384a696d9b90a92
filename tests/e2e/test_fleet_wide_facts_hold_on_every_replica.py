"""Fleet-wide facts (SPEC §9.2, issue 12 item 6) on a real etcd with three in-process replicas:
a hold taken on one replica holds new requests on every replica and ends at its timeout on every
replica, with exactly one resume in the fleet's history (each replica's timer fires, the first
resume commits, the others take it); a lock taken on one refuses a flip on another; a canary
client keeps its bucket on every replica. A reload applies to the replica that read its file,
and its history event is the fleet's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from admin.config import effective_config
from tests.support.adminapi import JsonAdmin as Admin
from tests.support.backend import served_by
from tests.support.wait import eventually


async def test_a_hold_holds_every_replica_and_ends_at_its_timeout_everywhere_with_one_resume(fleet_of, session):
    replicas = await fleet_of(3)
    answer = await Admin(session, replicas[0].admin_port).ok("/v1/hold", {"timeout": 1.5})
    assert answer["held"] and answer["ack"]["complete"], answer
    until = replicas[0].controller.state.hold_until
    for r in replicas:
        assert r.controller.state.held and r.controller.state.hold_until == until
    waiting = [asyncio.create_task(served_by(session, r.port)) for r in replicas]
    await eventually(lambda: all(r.controller.plane.snapshot().router.held_requests == 1 for r in replicas),
                     timeout=5, what="one request held on every replica")
    assert not any(task.done() for task in waiting)
    assert await asyncio.wait_for(asyncio.gather(*waiting), 10) == ["blue"] * 3   # released by the timeout

    async def resumed_everywhere() -> bool:
        return all(not r.controller.state.held for r in replicas)

    await eventually(resumed_everywhere, timeout=5, what="every replica's state not held")
    for r in replicas:
        events = (await Admin(session, r.admin_port).get("/v1/history"))[1]["events"]
        resumes = [e for e in events if e["action"] == "resume"]
        assert len(resumes) == 1 and resumes[0]["reason"] == "hold timeout", events
    assert all(not r.controller.plane.snapshot().router.held for r in replicas)


async def test_a_lock_taken_on_one_replica_refuses_a_flip_on_another(fleet_of, session):
    a, b, _ = await fleet_of(3)
    await Admin(session, a.admin_port).ok("/v1/lock", {"reason": "freeze"})
    # b learns of the lock through its watch; a flip on b before that is refused all the same
    # (409 conflict: its compare-and-swap finds the stored state moved), nothing written.
    await eventually(lambda: b.controller.state.locked, timeout=5, what="b's state locked")
    status, answer = await Admin(session, b.admin_port).call("POST", "/v1/flip", {})
    assert status == 409 and answer["code"] == "locked", answer
    assert await served_by(session, b.port) == "blue"


async def test_a_canary_client_keeps_its_bucket_on_every_replica(fleet_of, session):
    replicas = await fleet_of(3)
    answer = await Admin(session, replicas[1].admin_port).ok("/v1/canary", {"weight": 50})
    assert answer["ack"]["complete"], answer
    jar_free = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=5))
    async with jar_free as plain:
        for bucket in range(0, 100, 7):
            cookie = {"Cookie": f"cutover_canary={bucket}"}
            seen = {await served_by(plain, r.port, cookie) for r in replicas}
            assert len(seen) == 1, (bucket, seen)


async def test_a_reload_applies_to_its_own_replica_and_its_event_reaches_every_replica(fleet_of, session, tmp_path):
    a, b = await fleet_of(2)
    await Admin(session, b.admin_port).ok("/v1/lock", {})      # etcd holds a state: the reload is not its first commit
    await Admin(session, b.admin_port).ok("/v1/unlock", {})
    # a learns of both through its watch; a reload on a before that is refused (409 conflict:
    # its compare-and-swap finds the stored state moved), nothing written.
    await eventually(lambda: [e["action"] for e in a.controller.state.history][-2:] == ["lock", "unlock"],
                     timeout=5, what="a's history with b's lock and unlock")
    source = tmp_path / "a.yaml"
    written = effective_config(a.controller.config)
    source.write_text(json.dumps({**written, "timeouts": {**written["timeouts"], "connect": 0.75}}))
    a.controller.config = dataclasses.replace(a.controller.config, source=source)
    answer = await Admin(session, a.admin_port).ok("/v1/reload", {"reason": "tune a"})
    assert answer["reloaded"] == ["timeouts.connect"] and answer["ack"]["complete"], answer
    assert a.proxy.connect_timeout == 0.75 and b.proxy.connect_timeout == 2.0    # each replica its own file

    async def recorded_on_b():
        events = (await Admin(session, b.admin_port).get("/v1/history"))[1]["events"]
        return [e for e in events if e["action"] == "reload"] or None

    [event] = await eventually(recorded_on_b, timeout=5, what="the reload event in the fleet's history")
    assert event["reloaded"] == ["timeouts.connect"] and event["reason"] == "tune a"
    assert (await Admin(session, b.admin_port).ok("/v1/flip", {}))["ack"]["complete"]   # the fleet goes on
