"""A server registration is a fleet-wide fact (SPEC §9.2, §12): taken on one replica of a real
etcd fleet, it is committed in P/state and every replica's follower applies it to its data
plane; a reset on another replica returns every replica to the config's list.
"""

from __future__ import annotations

import pytest

from tests.support.adminapi import JsonAdmin as Admin
from tests.support.backend import Backend, served_by
from tests.support.wait import eventually


@pytest.fixture
async def registered():
    backend = await Backend("registered").start()
    yield backend
    await backend.stop()


async def test_a_registration_on_one_replica_is_served_by_every_replica(fleet_of, session, registered):
    replicas = await fleet_of(3, health_check={"interval": "50ms", "timeout": "1s"})
    status, answer = await Admin(session, replicas[0].admin_port).call(
        "PUT", "/v1/environments/blue/servers", {"servers": [registered.address]})
    assert status == 200 and answer["ack"]["complete"], answer

    async def everywhere(name: str) -> bool:
        return all([await served_by(session, r.port) == name for r in replicas])

    await eventually(lambda: everywhere("registered"), timeout=10, what="every replica serves the registration")
    for r in replicas:
        assert "blue" in r.controller.state.registrations
    status, answer = await Admin(session, replicas[2].admin_port).call("DELETE", "/v1/environments/blue/servers", {})
    assert status == 200 and answer["changed"], answer
    await eventually(lambda: everywhere("blue"), timeout=10, what="every replica serves the config's list again")
