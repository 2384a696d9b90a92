"""HoldGate: the bounded queue that new requests wait in while traffic is held.

Router.hold creates one; Exchange.start enters it instead of reading the
route; Router.resume releases every waiting exchange in arrival order, and each
then reads the route as it is at that moment. The gate only holds and releases:
the admin's Controller keeps the hold's deadline and calls resume when it passes.
Only past max_queued does a request get 503 with Retry-After.

With workers (SPEC §9.1) max_queued bounds the router as a whole: each worker's gate counts
in a HoldTally, one cell per worker slot in memory every worker maps (the supervisor made it,
admin/workers.py), and admits a request only while the cells add up to max_queued at most,
wherever the connections landed.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exchange import Exchange

CELL_BYTES = 8      # one signed 64-bit count per worker slot and gate


class HoldTally:
    """HoldTally: how many requests every worker of one router holds in one kind of gate (the
    hold's, or the fence's), one cell per worker slot.

    Each worker writes only its own cell (the count its gate holds); the supervisor zeroes a
    slot's cells once that slot's process has exited, before it starts another. A request is
    admitted by writing its worker's count plus one first, then adding up every cell: over
    the bound, the cell goes back and the request is refused. Two workers admitting at once
    may both refuse (each saw the other's increment). They pass the bound only if a processor
    lets a worker read the others' cells before its own write is seen (x86 and ARM may, for a
    few nanoseconds; nothing here fences): then by at most one request per other worker.
    Aligned 8-byte cells are never read half-written.
    """

    __slots__ = ("cells", "slot")

    def __init__(self, cells: memoryview, slot: int) -> None:
        self.cells = cells
        self.slot = slot

    def admit(self, held: int, limit: int) -> bool:
        """admit: one more request on top of the ``held`` this worker holds, if the router's
        total stays within ``limit``."""
        cells = self.cells
        cells[self.slot] = held + 1
        if sum(cells) > limit:
            cells[self.slot] = held
            return False
        return True

    def count(self, held: int) -> None:
        """count: this worker holds ``held`` requests now (one left, or the gate was emptied)."""
        self.cells[self.slot] = held

    def total(self) -> int:
        """total: the requests every worker of the router holds, as the cells say now."""
        return sum(self.cells)


def tally_memory(fd: int, slots: int) -> mmap.mmap:
    """tally_memory: the cells of ``slots`` workers (a hold's and a fence's each) in the file
    ``fd``, sized here when it is new, mapped shared: every process that maps it sees the
    same cells."""
    size = 2 * slots * CELL_BYTES
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def tallies(memory: mmap.mmap, slots: int, slot: int) -> tuple[HoldTally, HoldTally]:
    """tallies: worker ``slot``'s tally of the hold and of the fence, in ``memory`` (tally_memory)."""
    cells = memoryview(memory).cast("q")
    return HoldTally(cells[:slots], slot), HoldTally(cells[slots:2 * slots], slot)


def clear_slot(memory: mmap.mmap, slots: int, slot: int) -> None:
    """clear_slot: worker ``slot`` holds nothing any more (its process exited)."""
    with memoryview(memory) as raw, raw.cast("q") as cells:
        cells[slot] = cells[slots + slot] = 0


class HoldGate:
    """HoldGate: exchanges waiting for resume, in arrival order; with a ``tally``, bounded
    together with the same gate of every other worker (the hold's and the fence's each have
    their own tally)."""

    __slots__ = ("max_queued", "waiting", "deadline", "tally")

    def __init__(self, max_queued: int, deadline: float | None, tally: HoldTally | None = None) -> None:
        self.max_queued = max_queued
        self.deadline = deadline          # wall-clock time the Controller ends the hold (None: until resume)
        self.waiting: dict["Exchange", None] = {}
        self.tally = tally

    def __len__(self) -> int:
        return len(self.waiting)

    def enter(self, ex: "Exchange") -> None:
        """enter: queue an exchange, or refuse it with 503 when the queue is full."""
        tally = self.tally
        if (len(self.waiting) >= self.max_queued if tally is None
                else not tally.admit(len(self.waiting), self.max_queued)):
            ex.reply_error(503, "traffic is held and the hold queue is full (hold.max_queued)")
            return
        self.waiting[ex] = None

    def leave(self, ex: "Exchange") -> None:
        """leave: an exchange ended while waiting (its client went away)."""
        if ex in self.waiting:
            del self.waiting[ex]
            if self.tally is not None:
                self.tally.count(len(self.waiting))

    def take(self) -> list["Exchange"]:
        """take: empty the queue; the waiting exchanges, in arrival order, for the caller to start."""
        waiting, self.waiting = self.waiting, {}
        if self.tally is not None:
            self.tally.count(0)
        return list(waiting)

    def release(self) -> int:
        """release: let every waiting exchange proceed; returns how many were waiting."""
        waiting = self.take()
        for ex in waiting:
            ex.proceed()
        return len(waiting)
