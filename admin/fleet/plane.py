"""plane: a fleet replica's data plane: its local plane (one process or its workers), then the fleet.

FleetPlane is the DataPlane the Controller drives when the state lives in etcd (SPEC §9.2).
Every change goes to the local plane first; once every local worker applied it, the replica
acks the change's store revision (admin/fleet/replica.py). A change this replica took
(``confirm``) then waits at the barrier: its Ack names the replicas that applied it and those
that did not within fleet.ack_timeout (the answer is then 202). A change taken from the store
(another replica's) is applied and acked, never waited on. Reads are the local plane's; the
fleet's acks and registrations come from one long-lived watch (FleetView, admin/fleet/view.py)
that the barrier waits on and status reads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..plane import Ack, Change, DataPlane, DrainCallback, WorkerInfo
from .etcd import EtcdError
from .replica import Membership
from .view import FleetView

log = logging.getLogger("cutover.fleet")

REFRESH_TIMEOUT = 1.0       # seconds a status read waits for etcd's view of the fleet


class FleetPlane:
    """FleetPlane: ``local`` (LocalPlane or WorkerPlane) behind this replica's Membership."""

    def __init__(self, local: Any, membership: Membership, ack_timeout: float) -> None:
        self.local: DataPlane = local
        self.membership = membership
        self.ack_timeout = ack_timeout
        self._members: list[dict] = []     # the fleet as last read (refresh)
        # The fleet's registrations and acks, watched from the first change or status on (start).
        self.view = FleetView(membership.client, membership.prefix)

    def start(self) -> None:
        """start: watch the fleet's acks and registrations from now on (Fleet.plane; else the first use)."""
        self.view.start()

    async def apply(self, change: Change) -> Ack:
        """apply: locally first; then this replica's ack; for its own changes, the barrier meanwhile.

        The barrier of a change this replica took starts with the ack write, not after it: it
        waits for this replica's ack like any other (so a failed write leaves it pending), and
        the apply returns only once the write is answered, so acks never overtake each other.
        """
        local = await self.local.apply(change)
        revision = change.revision
        if not isinstance(revision, int):
            return local
        if not change.confirm:
            await self._ack(local, revision)
            return local
        acking = asyncio.ensure_future(self._ack(local, revision))
        self.start()
        try:
            barrier = await self.membership.wait_for_acks(revision, self.ack_timeout, self.view,
                                                          applied_here=local.complete)
        except EtcdError as exc:
            log.warning("fleet: cannot read the replicas' acks of revision %d: %s", revision, exc)
            return Ack(local.generation, complete=False, acked=(), pending=(self.membership.id,))
        finally:
            await acking
        return Ack(local.generation, complete=barrier.complete, acked=barrier.acked, pending=barrier.pending)

    async def _ack(self, local: Ack, revision: int) -> None:
        """_ack: this replica's ack of ``revision``, once every local worker applied it (a failure is logged)."""
        if not local.complete:
            log.warning("fleet: not acking revision %d: worker(s) %s did not apply it", revision,
                        ", ".join(map(str, local.pending)))
            return
        try:
            await self.membership.ack(local.generation, revision)
        except EtcdError as exc:
            log.warning("fleet: cannot write this replica's ack of revision %d: %s", revision, exc)

    # The rest is the local plane's.

    def snapshot(self) -> Any:
        return self.local.snapshot()

    def on_drain(self, callback: DrainCallback) -> None:
        self.local.on_drain(callback)

    async def refresh(self) -> None:
        """refresh: the local plane's, and the fleet's members and acks.

        From the view while it watches (no etcd read); else read (bounded; what was last seen
        is kept when etcd is silent).
        """
        await self.local.refresh()
        self.start()
        if self.view.live:
            acks = self.view.acks
            self._members = [{"id": str(doc.get("id") or name), "address": str(doc.get("address") or ""),
                              "generation": _generation(acks.get(name)), "alive": True}
                             for name, doc in sorted(self.view.replicas.items())]
            return
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                replicas = await self.membership.replicas()
                acks, _ = await self.membership.acks()
        except (EtcdError, TimeoutError):
            return
        self._members = [{"id": r.id, "address": r.address,
                          "generation": int(acks.get(r.id, {}).get("generation") or 0), "alive": True}
                         for r in replicas]

    def fleet_info(self) -> dict:
        """fleet_info: GET /v1/status's "fleet" (SPEC §9.2): this replica and the live members."""
        return {"replica_id": self.membership.id, "replicas": list(self._members)}

    def workers_info(self) -> tuple[WorkerInfo, ...]:
        return self.local.workers_info()

    @property
    def port(self) -> int:
        return self.local.port

    def listener_fds(self) -> tuple[list[int], list[int]]:
        return self.local.listener_fds()

    async def stop_accepting(self) -> None:
        await self.local.stop_accepting()

    async def resume_accepting(self) -> bool:
        return await self.local.resume_accepting()

    async def shutdown(self, timeout: float | None = None) -> dict:
        """shutdown: the local plane drains; then the replica leaves the fleet (its lease revoked)."""
        result = await self.local.shutdown(timeout)
        await self.view.close()
        await self.membership.close()
        return result


def _generation(ack: dict | None) -> int:
    try:
        return int((ack or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0
