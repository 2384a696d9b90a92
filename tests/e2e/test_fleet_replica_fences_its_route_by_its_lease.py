"""A fleet replica fences its route by its lease (SPEC §9.2), on a real etcd.

Each renewal etcd confirms moves the data plane's fence to the time the lease is known to
last (sent + ttl); when the lease is found gone the replica re-reads the state first, then
registers again, and only then moves the fence ahead — so no request goes by a route the fleet
may have moved on from. While etcd does not answer, the fence is lifted (fail static). The end
to end case — a paused replica continues and serves nothing by its old route — is in
test_fleet_survives_replica_and_etcd_faults.py.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from admin.fleet.etcd import EtcdClient
from admin.fleet.replica import Membership
from tests.support.ports import free_port
from tests.support.wait import eventually


@pytest.fixture
def prefix(request) -> str:
    return f"/test/{request.node.name}"


class Steps:
    """Steps: what the membership asked of the controller and the data plane, in order."""

    def __init__(self, read: bool = True) -> None:
        self.log: list[tuple[str, float]] = []
        self.read = read

    async def reread(self) -> bool:
        self.log.append(("reread", time.monotonic()))
        await asyncio.sleep(0.05)               # re-reading takes a while: nothing may move meanwhile
        self.log.append(("read", time.monotonic()))
        return self.read

    def fence(self, until: float) -> None:
        self.log.append(("fence", until))

    def fences(self) -> list[float]:
        return [value for step, value in self.log if step == "fence"]


async def test_each_confirmed_renewal_moves_the_fence_to_when_the_lease_is_known_to_end(client, prefix):
    steps = Steps()
    m = Membership(client, prefix, "a", "127.0.0.1:8000", ttl=2, fence=steps.fence)
    before = time.monotonic()
    await m.start()
    try:
        first = steps.fences()
        assert len(first) == 1 and before + 2 <= first[0] <= time.monotonic() + 2
        await eventually(lambda: len(steps.fences()) >= 3, timeout=5, what="two renewals")
        fences = steps.fences()
        assert fences == sorted(fences) and fences[-1] > first[0]
        assert all(value < time.monotonic() + 2.01 for value in fences)
        assert [step for step, _ in steps.log] == ["fence"] * len(steps.log)   # nothing to re-read
    finally:
        await m.close()


async def test_a_lost_lease_is_re_read_before_registering_and_only_then_is_the_fence_moved(client, prefix):
    steps = Steps()
    m = Membership(client, prefix, "a", "127.0.0.1:8000", ttl=1, reread=steps.reread, fence=steps.fence)
    await m.start()
    try:
        first = m.lease
        await client.revoke(first)               # as if paused past its ttl
        await eventually(lambda: any(step == "read" for step, _ in steps.log), timeout=5,
                         what="the state re-read")

        async def registered():
            return m.lease != first and [r.id for r in await m.replicas()] == ["a"]

        await eventually(registered, timeout=5, what="registered again")
        await eventually(lambda: steps.log[-1][0] == "fence", timeout=2)
        kinds = [step for step, _ in steps.log]
        at = kinds.index("reread")
        assert kinds[at:at + 3] == ["reread", "read", "fence"], kinds   # no fence moved while reading
        read_at = steps.log[at + 1][1]
        assert steps.log[at + 2][1] > read_at                            # the new lease's fence
        last_before = [value for step, value in steps.log[:at] if step == "fence"][-1]
        assert last_before <= steps.log[at][1] + 1.01    # the old fence was not extended past the loss
    finally:
        await m.close()


async def test_a_state_that_cannot_be_re_read_lifts_the_fence_and_does_not_register(client, prefix):
    steps = Steps(read=False)                      # the store does not answer the re-read
    m = Membership(client, prefix, "a", "127.0.0.1:8000", ttl=1, reread=steps.reread, fence=steps.fence)
    await m.start()
    try:
        await client.revoke(m.lease)
        await eventually(lambda: math.inf in steps.fences(), timeout=5, what="the fence lifted")
        assert m.lease == 0 and await m.replicas() == []
    finally:
        m.reread = Steps().reread
        await m.close()


async def test_etcd_not_answering_lifts_the_fence_fail_static(prefix):
    steps = Steps()
    async with EtcdClient([f"http://127.0.0.1:{free_port()}"], request_timeout=0.5) as nobody:
        m = Membership(nobody, prefix, "a", "127.0.0.1:8000", ttl=1, reread=steps.reread, fence=steps.fence)
        await m.start()
        try:
            assert steps.fences() == [math.inf] and m.lease == 0
            await eventually(lambda: len(steps.fences()) >= 2, timeout=5, what="a retry")
            assert set(steps.fences()) == {math.inf}
        finally:
            await m.close()
