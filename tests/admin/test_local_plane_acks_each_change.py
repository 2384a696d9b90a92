"""LocalPlane: a Change applied to this process's Router comes back as a complete Ack.

The plane is built as serve's start-up builds it (LocalPlane.build) and never started: no
listener, no socket. Its snapshots show what each change did; a drain's end reaches
``on_drain`` as a frozen DrainSnapshot, never the live Drain.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from admin.plane import Ack, Change, Hold, LocalPlane
from proxy import DrainSnapshot, Route
from tests.support.stack import proxy_config
from tests.support.wait import eventually


@dataclasses.dataclass(frozen=True)
class Unstarted:
    """Unstarted: a backend address nothing listens on (the plane is never started, nothing connects)."""

    address: str


@pytest.fixture
def plane(tmp_path):
    config = proxy_config(tmp_path, {"blue": Unstarted("127.0.0.1:9"), "green": Unstarted("127.0.0.1:10")})
    return LocalPlane.build(config.settings(), Route(3, "blue", previous="green", environments=("blue", "green")))


async def test_the_plane_serves_the_route_it_was_built_with(plane):
    route = plane.snapshot().router.route
    assert (route.generation, route.live, route.previous) == (3, "blue", "green")


async def test_a_route_change_is_acked_complete_by_this_process(plane):
    route = Route(4, "green", previous="blue", environments=("blue", "green"))
    ack = await plane.apply(Change(route=route))
    assert ack == Ack(generation=4, complete=True, acked=(os.getpid(),), pending=())
    assert plane.snapshot().router.route == route


async def test_a_hold_shows_its_deadline_and_a_release_ends_it(plane):
    ack = await plane.apply(Change(hold=Hold(True, 1_900_000_000.5)))
    assert ack.generation == 3 and ack.complete              # a hold does not change the route
    router = plane.snapshot().router
    assert (router.held, router.held_requests, router.hold_until) == (True, 0, 1_900_000_000.5)
    await plane.apply(Change(hold=Hold(False, None)))
    router = plane.snapshot().router
    assert (router.held, router.hold_until) == (False, None)


async def test_a_change_with_neither_part_changes_nothing(plane):
    before = plane.snapshot()
    assert await plane.apply(Change()) == Ack(3, True, (os.getpid(),), ())
    assert plane.snapshot() == before


async def test_a_drain_ends_as_a_frozen_snapshot_through_on_drain(plane):
    ended: list = []
    plane.on_drain(ended.append)
    await plane.apply(Change(route=Route(4, "green", previous="blue", environments=("blue", "green"))))
    await eventually(lambda: ended, timeout=2)   # nothing was in flight: the drain ends on the next loop pass
    [drain] = ended
    assert isinstance(drain, DrainSnapshot) and dataclasses.is_dataclass(drain)
    assert (drain.environment, drain.generation, drain.drained, drain.remaining) == ("blue", 4, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        drain.drained = 1
