"""heap.settle: what a process holds once it serves is kept out of every later garbage
collection (proxy/heap.py), and what it makes afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from proxy.heap import settle


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_objects_alive_at_settle_leave_the_collected_generations_and_later_cycles_are_still_collected():
    before = Node()
    try:
        frozen = settle()
        assert frozen == gc.get_freeze_count() > 0
        # No collection walks it again: it is in no generation a collection looks at.
        assert not any(obj is before for obj in gc.get_objects())
        after = Node()
        assert any(obj is after for obj in gc.get_objects())
        # A cycle made after settle is still garbage the collector frees.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
