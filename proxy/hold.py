"""HoldGate: the bounded queue that new requests wait in while traffic is held.

Router.hold creates one; Exchange.start enters it instead of reading the
route; Router.resume releases every waiting exchange in arrival order, and each
then reads the route as it is at that moment. The gate only holds and releases:
the admin's Controller keeps the hold's deadline and calls resume when it passes.
Only past max_queued does a request get 503 with Retry-After.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exchange import Exchange


class HoldGate:
    """HoldGate: exchanges waiting for resume, in arrival order."""

    __slots__ = ("max_queued", "waiting", "deadline")

    def __init__(self, max_queued: int, deadline: float | None) -> None:
        self.max_queued = max_queued
        self.deadline = deadline          # wall-clock time the Controller ends the hold (None: until resume)
        self.waiting: dict["Exchange", None] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def enter(self, ex: "Exchange") -> None:
        """enter: queue an exchange, or refuse it with 503 when the queue is full."""
        if len(self.waiting) >= self.max_queued:
            ex.reply_error(503, "traffic is held and the hold queue is full (hold.max_queued)")
            return
        self.waiting[ex] = None

    def leave(self, ex: "Exchange") -> None:
        """leave: an exchange ended while waiting (its client went away)."""
        self.waiting.pop(ex, None)

    def take(self) -> list["Exchange"]:
        """take: empty the queue; the waiting exchanges, in arrival order, for the caller to start."""
        waiting, self.waiting = self.waiting, {}
        return list(waiting)

    def release(self) -> int:
        """release: let every waiting exchange proceed; returns how many were waiting."""
        waiting, self.waiting = self.waiting, {}
        for ex in waiting:
            ex.proceed()
        return len(waiting)
