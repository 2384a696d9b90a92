"""The fleet's ack barrier (SPEC §9.2) on a real etcd: a change waits for every replica
registered when it committed; one that never acks is named pending once ack_timeout passes;
one gone before the commit is not waited for; one whose lease expires during the wait stays
pending; acks go in revision order. Each runs twice: with a view of the acks made for the wait,
and with one watching all along (FleetPlane's, admin/fleet/view.py), which may tell who was
registered without a read. Fencing by the lease: test_fleet_replica_fences_its_route_by_its_lease.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from admin.fleet.replica import Membership
from admin.fleet.view import FleetView


@pytest.fixture
def prefix(request) -> str:
    return f"/test/{request.node.name}"


@pytest.fixture(params=["own", "shared"])
async def view(request, client, prefix):
    """view: None (each wait makes its own) or a FleetView watching from before the test's changes."""
    if request.param == "own":
        yield None
        return
    shared = FleetView(client, prefix)
    shared.start()
    assert await shared.wait_live(5)
    yield shared
    await shared.close()


async def members(client, prefix, *names, ttl=2):
    made = [Membership(client, prefix, name, f"127.0.0.1:{8000 + i}", ttl) for i, name in enumerate(names)]
    for m in made:
        await m.start()
    return made


async def commit(client, prefix) -> int:
    return await client.put(f"{prefix}/state", b"{}")


async def test_a_change_acked_by_every_replica_is_complete(client, prefix, view):
    a, b, c = await members(client, prefix, "a", "b", "c")
    try:
        revision = await commit(client, prefix)
        for m in (a, b, c):
            await m.ack(2, revision)
        barrier = await a.wait_for_acks(revision, timeout=2, view=view)
        assert barrier.complete and sorted(barrier.acked) == ["a", "b", "c"]
        assert sorted(r.id for r in await a.replicas()) == ["a", "b", "c"]
    finally:
        for m in (a, b, c):
            await m.close()


async def test_the_wait_ends_on_the_last_ack_not_on_the_timeout(client, prefix, view):
    a, b = await members(client, prefix, "a", "b")
    try:
        revision = await commit(client, prefix)
        await a.ack(2, revision)

        async def late():
            await asyncio.sleep(0.2)
            await b.ack(2, revision)

        task = asyncio.create_task(late())
        started = time.monotonic()
        barrier = await a.wait_for_acks(revision, timeout=10, view=view)
        await task
        assert barrier.complete and time.monotonic() - started < 5
    finally:
        await a.close()
        await b.close()


async def test_a_replica_that_does_not_ack_in_time_is_named_pending(client, prefix, view):
    a, b = await members(client, prefix, "a", "b")
    try:
        revision = await commit(client, prefix)
        await a.ack(2, revision)
        await b.ack(1, revision - 1)                  # behind: it acked an older state only
        barrier = await a.wait_for_acks(revision, timeout=0.3, view=view)
        assert barrier.acked == ("a",) and barrier.pending == ("b",) and not barrier.complete
    finally:
        await a.close()
        await b.close()


async def test_a_later_ack_confirms_every_earlier_revision_and_acks_never_go_back(client, prefix, view):
    [a] = await members(client, prefix, "a")
    try:
        first = await commit(client, prefix)
        second = await commit(client, prefix)
        await a.ack(3, second)
        await a.ack(2, first)                         # older: ignored
        acks, _ = await a.acks()
        assert acks["a"] == {"generation": 3, "revision": second}
        assert (await a.wait_for_acks(first, timeout=1, view=view)).complete
    finally:
        await a.close()


async def test_a_replica_gone_before_the_commit_is_not_waited_for(client, prefix, view):
    a, b = await members(client, prefix, "a", "b")
    try:
        await b.close()                               # its lease revoked: no longer registered
        revision = await commit(client, prefix)
        await a.ack(2, revision)
        barrier = await a.wait_for_acks(revision, timeout=1, view=view)
        assert barrier.complete and barrier.acked == ("a",)
    finally:
        await a.close()


async def test_a_replica_registered_after_the_commit_is_not_waited_for(client, prefix, view):
    a, b = await members(client, prefix, "a", "b")
    try:
        revision = await commit(client, prefix)
        [c] = await members(client, prefix, "c")       # joins after the change: it reads the state itself
        for m in (a, b):
            await m.ack(2, revision)
        barrier = await a.wait_for_acks(revision, timeout=2, view=view)
        assert barrier.complete and barrier.acked == ("a", "b")
        await c.close()
    finally:
        await a.close()
        await b.close()


async def test_a_replica_whose_lease_expires_during_the_wait_stays_pending(client, prefix, view):
    a, b = await members(client, prefix, "a", "b", ttl=1)
    try:
        revision = await commit(client, prefix)
        await a.ack(2, revision)
        b._task.cancel()                              # b stops renewing: its lease runs out mid-wait
        barrier = await a.wait_for_acks(revision, timeout=2.5, view=view)
        assert barrier.pending == ("b",)
        assert [r.id for r in await a.replicas()] == ["a"]   # it is gone from the live set by now
    finally:
        await a.close()


async def test_the_replica_that_applied_a_change_counts_as_acked_while_its_own_ack_is_not_in_etcd(
        client, prefix, view):
    """A replica restarted while etcd was away takes a change before it registered again; its
    predecessor's replicas/<id> key still lives: its own barrier must not wait for an ack that
    only its registration, queued behind that very change, would write."""
    a, b = await members(client, prefix, "a", "b")
    try:
        revision = await commit(client, prefix)
        await b.ack(2, revision)                      # a applied it but wrote no ack
        barrier = await a.wait_for_acks(revision, timeout=1, view=view, applied_here=True)
        assert barrier.complete and sorted(barrier.acked) == ["a", "b"]
        barrier = await a.wait_for_acks(revision, timeout=0.3, view=view)
        assert barrier.pending == ("a",)              # without having applied it, it is pending
    finally:
        for m in (a, b):
            await m.close()
