"""HoldGate without sockets: the bounded queue new requests wait in while traffic is held.

Router.hold puts one in front of the route (a second hold keeps its queue and takes the new
deadline), Router.resume releases it; a request released from it reads the route as it is
at that moment.
"""

from __future__ import annotations

from proxy.hold import HoldGate
from proxy.route import Route
from tests.support.fakes import Rig, Waiting, unstarted_proxy


def test_the_gate_queues_up_to_max_queued_and_refuses_the_next_with_503():
    gate = HoldGate(2, None)
    log = []
    a, b, c = Waiting(log), Waiting(log), Waiting(log)
    for ex in (a, b, c):
        gate.enter(ex)
    assert len(gate) == 2 and a.refused is None and b.refused is None
    status, message = c.refused
    assert status == 503 and "hold.max_queued" in message
    assert log == []   # nobody proceeds while held


def test_release_lets_every_waiting_exchange_proceed_in_arrival_order_and_empties_the_gate():
    gate = HoldGate(10, 1234.5)
    log = []
    waiting = [Waiting(log) for _ in range(5)]
    for ex in waiting:
        gate.enter(ex)
    assert gate.release() == 5
    assert log == waiting and len(gate) == 0
    assert gate.release() == 0 and log == waiting   # released once only


def test_an_exchange_that_leaves_is_not_released_and_frees_its_place():
    gate = HoldGate(2, None)
    log = []
    a, b, c = Waiting(log), Waiting(log), Waiting(log)
    gate.enter(a)
    gate.enter(b)
    gate.leave(a)            # its client went away
    gate.leave(a)            # twice is harmless
    gate.enter(c)
    assert c.refused is None
    assert gate.release() == 2 and log == [b, c]


def test_a_second_hold_keeps_the_queue_and_takes_the_new_deadline_until_resume_releases_it():
    router = unstarted_proxy(hold={"max_queued": 3}).router   # never started: no socket
    router.hold(until=1000.0)
    gate = router.hold_gate
    assert router.held and gate.max_queued == 3 and gate.deadline == 1000.0
    log = []
    first, second = Waiting(log), Waiting(log)
    gate.enter(first)
    gate.enter(second)
    router.hold(until=2000.0)                 # held again: a new deadline, the same queue
    assert router.hold_gate is gate and gate.deadline == 2000.0 and router.held_requests == 2
    assert router.resume() == 2 and log == [first, second]
    assert not router.held and router.held_requests == 0 and router.resume() == 0


async def test_a_request_released_from_the_gate_goes_by_the_route_as_it_is_at_resume():
    rig = Rig()
    router = rig.proxy.router
    router.hold()
    rig.send(b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
    assert router.held_requests == 1 and rig.up_t.take() == b""      # nothing went upstream
    router.swap(Route(generation=2, live="green", previous="blue", environments=("blue", "green")))
    assert router.resume() == 1
    rig.proxy.flush_due()
    _, green = rig.ups["green"]
    assert green.take().startswith(b"GET /held HTTP/1.1\r\n") and rig.up_t.take() == b""
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ngreen", env="green")
    assert rig.client_t.take().endswith(b"\r\n\r\ngreen")
