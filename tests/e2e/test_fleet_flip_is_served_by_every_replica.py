"""A fleet of replicas on one etcd (SPEC §9.2): a flip taken by one answers once every replica
applied it, and the next request to any replica after the answer goes to the new environment;
a replica that cannot ack in time is named pending (202); status shows the fleet and the store;
while etcd does not answer every replica serves on and mutations answer 503, nothing changed."""

from __future__ import annotations

import asyncio

from tests.support.adminapi import JsonAdmin as Admin
from tests.support.backend import served_by
from tests.support.wait import eventually


async def test_a_flip_on_one_replica_is_served_by_all_three_for_the_next_request(fleet_of, session):
    replicas = await fleet_of(3)
    for r in replicas:
        assert await served_by(session, r.port) == "blue"
    answer = await Admin(session, replicas[0].admin_port).ok("/v1/flip", {})
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}
    for r in replicas:
        assert await served_by(session, r.port) == "green"
    # and back, taken by another replica
    answer = await Admin(session, replicas[2].admin_port).ok("/v1/flip", {})
    assert answer["live"] == "blue" and answer["ack"]["complete"]
    for r in replicas:
        assert await served_by(session, r.port) == "blue"
        assert r.controller.state.generation == answer["generation"]


async def test_concurrent_flips_with_the_same_if_generation_exactly_one_wins(fleet_of, session):
    a, b = await fleet_of(2)
    generation = a.controller.state.generation
    answers = await asyncio.gather(
        Admin(session, a.admin_port).call("POST", "/v1/flip", {"if_generation": generation}),
        Admin(session, b.admin_port).call("POST", "/v1/flip", {"if_generation": generation}))
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 200 and statuses[1] in (409, 412), answers
    assert a.controller.state.generation == generation + 1


async def test_a_replica_that_cannot_ack_is_named_pending_and_the_answer_is_202(fleet_of, session):
    a, b = await fleet_of(2, ack_timeout="500ms")
    b.controller._follow_task.cancel()           # b stops taking the fleet's changes
    status, answer = await Admin(session, a.admin_port).call("POST", "/v1/flip", {})
    assert status == 202, answer
    assert answer["ack"] == {"complete": False, "acked": ["r0"], "pending": ["r1"]}
    assert answer["live"] == "green"              # committed, not confirmed everywhere


async def test_status_on_any_replica_shows_the_fleet_and_the_store(fleet_of, session):
    replicas = await fleet_of(2)
    for r in replicas:
        async def status_of() -> dict:
            async with session.get(f"http://127.0.0.1:{r.admin_port}/v1/status") as resp:
                return await resp.json()

        async def sees_both() -> bool:
            # r0 learns of r1 through its watch of the members, a moment after r1 registered
            return sorted(m["id"] for m in (await status_of())["fleet"]["replicas"]) == ["r0", "r1"]

        await eventually(sees_both, timeout=5)
        status = await status_of()
        assert status["fleet"]["replica_id"] in ("r0", "r1")
        assert status["store"]["kind"] == "etcd" and status["store"]["connected"] is True


async def test_status_on_every_replica_shows_each_replica_at_the_generation_it_acked_without_reading_etcd(
        fleet_of, session):
    replicas = await fleet_of(3)
    answer = await Admin(session, replicas[1].admin_port).ok("/v1/flip", {})

    async def fleet(r) -> dict:
        async with session.get(f"http://127.0.0.1:{r.admin_port}/v1/status") as resp:
            return {m["id"]: (m["generation"], m["alive"]) for m in (await resp.json())["fleet"]["replicas"]}

    expected = {f"r{i}": (answer["generation"], True) for i in range(3)}
    assert await fleet(replicas[1]) == expected          # the taker's view holds the acks its barrier saw
    for r in replicas:
        async def listed(r=r) -> bool:
            return await fleet(r) == expected

        await eventually(listed, what=f"{r} listing every replica at generation {answer['generation']}")
    # Status is read from the view the fleet's watch keeps: no etcd read per call.
    client = replicas[0].controller.plane.membership.client
    plain, reads = client.get_prefix, []

    async def counted(*args, **options):
        reads.append(args)
        return await plain(*args, **options)

    client.get_prefix = counted
    try:
        for _ in range(3):
            assert await fleet(replicas[0]) == expected
    finally:
        client.get_prefix = plain
    assert reads == []


async def test_while_etcd_does_not_answer_replicas_serve_on_and_mutations_are_refused(fleet_of, session, etcd):
    a, b = await fleet_of(2)
    generation = (await Admin(session, a.admin_port).ok("/v1/flip", {}))["generation"]
    etcd.pause()
    try:
        for r in (a, b):
            assert await served_by(session, r.port) == "green"          # fail static: the last route
        status, answer = await Admin(session, b.admin_port).call("POST", "/v1/rollback", {})
        assert status == 503 and answer["code"] == "store_unavailable", answer
        for r in (a, b):
            assert await served_by(session, r.port) == "green"          # nothing changed
        async with session.get(f"http://127.0.0.1:{b.admin_port}/v1/status") as resp:
            assert (await resp.json())["store"]["connected"] is False
    finally:
        etcd.resume()
    # The refused rollback's outcome was unknown (a 503 while etcd did not answer): its write
    # can still land once etcd answers. The next change names the generation it expects, so
    # it applies only if that write did not (412 if it did: blue is live either way).
    status, answer = await Admin(session, b.admin_port).call("POST", "/v1/flip",
                                                            {"to": "blue", "if_generation": generation})
    assert status in (200, 412), answer
    if status == 200:
        assert answer["live"] == "blue" and answer["ack"]["complete"], answer
    for r in (a, b):
        async def serves_blue(port=r.port) -> bool:
            return await served_by(session, port) == "blue"

        await eventually(serves_blue, timeout=5)


async def test_a_replica_that_finds_its_lease_expired_re_reads_the_state(fleet_of, session):
    a, b = await fleet_of(2, ack_timeout="300ms")
    b.controller._follow_task.cancel()           # b misses the fleet's changes (as if stalled)
    status, _ = await Admin(session, a.admin_port).call("POST", "/v1/flip", {})
    assert status == 202
    assert await served_by(session, b.port) == "blue"
    await b.fleet.client.revoke(b.fleet.membership.lease)      # its lease is gone: fencing

    async def caught_up():
        return await served_by(session, b.port) == "green"

    assert await eventually(caught_up, timeout=5)
    assert b.controller.state.generation == a.controller.state.generation
