"""replica: a fleet member's registration, its acks, and the barrier a change waits at (SPEC §9.2).

Keys, under the fleet's prefix, each attached to the replica's lease (so they vanish when the
replica stops renewing it):
  replicas/<id>   {"id", "address", "pid", "started"}: this replica is live
  acks/<id>       {"generation", "revision"}: the newest state it applied to every local worker
A replica acks a state only after its local data plane (all its workers) applied it, and acks
are in revision order, so an ack of revision R' also confirms every earlier revision.

The barrier (``wait_for_acks``) is run by the replica that took a change: the replicas waited
for are those registered at the revision the change committed at (one gone before the commit
is not waited for); each must ack that revision or a later one within ack_timeout. One whose
lease expires during the wait stays pending: it may still be serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .etcd import EtcdClient, EtcdError
from .view import FleetView, json_object

log = logging.getLogger("cutover.fleet")


async def _nothing_to_read() -> bool:
    """_nothing_to_read: Membership's default ``reread``: nothing to take, go on registering."""
    return True


@dataclass(frozen=True)
class Replica:
    """Replica: one registered fleet member, as replicas/<id> holds it."""

    id: str
    address: str
    pid: int
    started: float


@dataclass(frozen=True)
class Barrier:
    """Barrier: how a change's wait ended: who acked it, who did not (by replica id)."""

    acked: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.pending


class Membership:
    """Membership: this replica's lease, its replicas/<id> key and its acks.

    ``start`` registers; a renewal task keeps the lease alive every ttl/3 while ``healthy()``
    (the apply loop's own check) says so. Fencing: each renewal etcd confirms moves the data
    plane's fence (``fence``, Router.fence) to the time the lease is known to last — the
    monotonic time the renewal was sent plus the ttl etcd granted — so a request that starts
    later than that (this process was paused, partitioned or stalled past its lease, and the
    other replicas may have stopped waiting for it) waits instead of going by a route that may
    be stale. When the lease is found gone, ``reread`` (the controller takes the newest state
    and applies it) runs before it registers again, and only then is the fence moved ahead.
    While etcd does not answer the fence is lifted (inf): fail static, no change can commit.
    """

    def __init__(self, client: EtcdClient, prefix: str, replica_id: str, address: str, ttl: int,
                 healthy: Callable[[], bool] = lambda: True,
                 reread: Callable[[], Awaitable[bool]] | None = None,
                 fence: Callable[[float], None] = lambda until: None) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.id = replica_id
        self.address = address
        self.ttl = ttl
        self.healthy = healthy
        self.reread = reread or _nothing_to_read
        self.fence = fence
        self.lease = 0
        self.started = time.time()
        self._ack: tuple[int, int] | None = None    # (generation, revision) last acked
        self._task: asyncio.Task | None = None

    def key(self, kind: str, replica: str | None = None) -> str:
        return f"{self.prefix}/{kind}/{replica or self.id}"

    async def start(self) -> None:
        """start: take a lease and register under it (the caller read the state just before); then keep it alive.

        When etcd does not answer, the renewal task registers as soon as it does (re-reading
        the state first).
        """
        try:
            await self._register()
        except EtcdError as exc:
            self._unreachable(f"cannot register replica {self.id} yet: {exc}")
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _register(self) -> None:
        sent = time.monotonic()
        self.lease = await self.client.grant(self.ttl)
        doc = {"id": self.id, "address": self.address, "pid": os.getpid(), "started": self.started}
        await self.client.put(self.key("replicas"), json.dumps(doc).encode(), lease=self.lease)
        if self._ack is not None:
            await self._write_ack(*self._ack)
        self._confirmed(sent, self.ttl)

    def _confirmed(self, sent: float, ttl: float) -> None:
        """_confirmed: etcd granted ``ttl`` seconds to a lease renewal (or grant) sent at ``sent``."""
        self.fence(sent + min(ttl, self.ttl))

    def _unreachable(self, why: str) -> None:
        """_unreachable: etcd did not answer: serve on by the last route applied (fail static)."""
        log.warning("fleet: %s", why)
        self.fence(math.inf)

    async def _rejoin(self) -> None:
        """_rejoin: no lease (lost, or never taken): take the newest state, then register again.

        The fence stays where it is (past, when the lease was lost) until both are done, so no
        request goes by a route the fleet moved on from meanwhile.
        """
        self.lease = 0
        try:
            read = await self.reread()
        except Exception:
            log.exception("fleet: re-reading the state failed")
            read = False
        if not read:
            self._unreachable("cannot read the fleet's state to register again; serving the last route applied")
            return
        try:
            await self._register()
        except EtcdError as exc:
            self.lease = 0
            self._unreachable(f"cannot register replica {self.id} again: {exc}")
            return
        log.info("fleet: replica %s registered", self.id)

    async def _renew(self) -> None:
        interval = max(0.2, self.ttl / 3)
        while True:
            await asyncio.sleep(interval)
            if not self.healthy():
                log.warning("fleet: the apply loop is not healthy; the lease is not renewed")
                continue
            if not self.lease:
                await self._rejoin()
                continue
            sent = time.monotonic()
            try:
                left = await self.client.keepalive_once(self.lease)
            except EtcdError as exc:
                self._unreachable(f"cannot renew the lease: {exc}")
                continue
            if left > 0:
                self._confirmed(sent, left)
                continue
            log.warning("fleet: the lease of replica %s expired; re-reading the state and registering again",
                        self.id)
            await self._rejoin()

    async def ack(self, generation: int, revision: int) -> None:
        """ack: every local worker applied the state at ``revision`` (of ``generation``).

        Unregistered (etcd did not answer), the ack is kept and written when it registers.
        """
        if self._ack is not None and revision <= self._ack[1]:
            return
        self._ack = (generation, revision)
        if self.lease:
            await self._write_ack(generation, revision)

    async def _write_ack(self, generation: int, revision: int) -> None:
        doc = {"generation": generation, "revision": revision}
        await self.client.put(self.key("acks"), json.dumps(doc).encode(), lease=self.lease)

    async def replicas(self, revision: int | None = None) -> list[Replica]:
        """replicas: the members registered now (or at ``revision``)."""
        kvs, _ = await self.client.get_prefix(f"{self.prefix}/replicas/", revision=revision)
        out = []
        for kv in kvs:
            doc = json_object(kv.value)
            out.append(Replica(id=str(doc.get("id") or kv.key.rsplit("/", 1)[-1]),
                               address=str(doc.get("address") or ""), pid=int(doc.get("pid") or 0),
                               started=float(doc.get("started") or 0.0)))
        return out

    async def acks(self) -> tuple[dict[str, dict], int]:
        """acks: each live replica's last ack ({"generation", "revision"}), and the revision read at."""
        kvs, revision = await self.client.get_prefix(f"{self.prefix}/acks/")
        return {kv.key.rsplit("/", 1)[-1]: json_object(kv.value) for kv in kvs}, revision

    async def wait_for_acks(self, revision: int, timeout: float, view: FleetView | None = None,
                            applied_here: bool = False) -> Barrier:
        """wait_for_acks: wait until every replica registered at ``revision`` acked it (or later).

        ``applied_here``: this replica's data plane applied it already (the replica that took
        the change): it counts as acked whether or not its own ack reached etcd yet — it may be
        registering again (a lease lost, a restart while etcd was away) under its id.

        Bounded by ``timeout``; whoever has not acked by then is pending. The acks come from
        ``view`` (FleetPlane's, watching them all along: admin/fleet/view.py); without one, a
        view is made for this wait and closed after it. Who was registered at ``revision`` is
        read at that revision, unless the view tells first (`FleetView.registered_at`). A
        replica's ack key deleted during the wait (its lease expired) leaves it as it was:
        pending unless it acked.
        """
        deadline = time.monotonic() + timeout
        own = view is None
        watching = FleetView(self.client, self.prefix) if view is None else view
        watching.start()
        members = watching.registered_at(revision)
        # Who was registered is read only when the view cannot tell (yet): the read goes out at once.
        registered = asyncio.ensure_future(self.replicas(revision)) if members is None else None
        done: set[str] = {self.id} if applied_here else set()
        try:
            while True:
                changed = watching.changed()
                if members is None:
                    members = watching.registered_at(revision)
                if members is None and registered is not None and registered.done():
                    members = [r.id for r in registered.result()]     # an EtcdError raises here
                if members is not None:
                    done |= watching.acked_since(revision) & set(members)
                    if set(members) <= done:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                waiting = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({waiting} if members is not None or registered is None
                                       else {waiting, registered}, timeout=left,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
            if members is None and registered is not None:   # the time is up before the read answered
                members = [r.id for r in await registered]
        finally:
            if registered is not None:
                if not registered.done():
                    registered.cancel()
                await asyncio.gather(registered, return_exceptions=True)
            if own:
                await watching.close()
        members = members or []
        return Barrier(acked=tuple(m for m in members if m in done), pending=tuple(m for m in members
                                                                                  if m not in done))

    async def close(self) -> None:
        """close: stop renewing and give the lease back (its keys go with it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lease:
            try:
                await self.client.revoke(self.lease)
            except EtcdError as exc:
                log.warning("fleet: cannot revoke the lease: %s", exc)
