"""HoldGate without sockets: the bounded queue new requests wait in while traffic is held."""

from __future__ import annotations

from proxy.hold import HoldGate


class Waiting:
    """Waiting: an exchange as the gate sees it: it proceeds when released, or is refused."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.refused = None

    def proceed(self) -> None:
        self.log.append(self)

    def reply_error(self, status: int, message: str) -> None:
        self.refused = (status, message)


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
