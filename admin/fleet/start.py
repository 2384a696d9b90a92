"""start: what serve builds for `store.etcd` (SPEC §9.2): the client, the store, the membership.

``Fleet.open`` reads the fleet's state from etcd; when etcd does not answer, the replica fails
static: it serves the last state it applied, from its local copy (state_file), and takes the
fleet's state once etcd is back (the controller's follower watches). Every state this
replica reads, commits or takes is written to that local copy (``LocalCopy``), so a replica
restarted during an outage still serves the last route, and its first change once etcd is
back is made on top of etcd's state when that is what the copy held. ``Fleet.plane`` wraps
the local data plane in a FleetPlane once it serves; ``Fleet.close`` leaves the fleet.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..state import FileStateStore, Revision, State, StateError
from .analyses import AnalysisKeys
from .etcd import EtcdClient, EtcdError
from .plane import FleetPlane
from .replica import Membership
from .store import EtcdStateStore

log = logging.getLogger("cutover.fleet")

_OUTAGE_RETRY = 2.0   # seconds at most before a watch given up in an outage starts again


class LocalCopy:
    """LocalCopy: the fleet's StateStore, which also keeps this replica's copy of each state it
    reads, commits or takes in state_file (written off the event loop; a failed write is logged)."""

    def __init__(self, store: EtcdStateStore, copy: FileStateStore) -> None:
        self.store = store
        self.copy = copy
        self.history_limit = store.history_limit
        self.connected = True
        self.since = time.time()          # when ``connected`` last changed
        self.revision: Revision = None    # the newest revision read, committed or taken
        self._writing: asyncio.Task | None = None    # the newest local copy write
        # The state this replica serves from its local copy, while it has read none from etcd
        # (etcd did not answer at start): what its first commit was made on top of.
        self.from_copy: State | None = None

    def describe(self) -> str:
        return self.store.describe()

    def info(self) -> dict:
        """info: GET /v1/status's "store" (SPEC §9.2): etcd, whether it answers and since when."""
        return {"kind": "etcd", "connected": self.connected, "since": _iso(self.since), "revision": self.revision,
                "endpoints": list(self.store.client.endpoints), "prefix": self.store.prefix}

    def heard(self, answered: bool) -> None:
        """heard: the client's word after each etcd call (EtcdClient.on_answer, wired by Fleet.open).

        Any call counts, the lease's renewals and the watch's re-reads too: "connected" turns
        true again as soon as etcd answers, not only once a state comes back.
        """
        self._seen(answered)

    def _seen(self, ok: bool, revision: Revision = None) -> None:
        if ok != self.connected:
            self.connected, self.since = ok, time.time()
            log.warning("fleet: etcd %s", "answers again" if ok else "does not answer: failing static")
        if isinstance(revision, int) and (not isinstance(self.revision, int) or revision > self.revision):
            self.revision = revision

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            result = await call
        except StateError as exc:
            if getattr(exc, "code", None) == "store_unavailable":
                self._seen(False)
            raise
        self._seen(True)
        return result

    async def _keep(self, state: State) -> None:
        """_keep: write ``state`` as the local copy, in the background and in order.

        The copy serves only a restart while etcd is silent, so the change is not held up by
        its fsync: the write starts now, after the ones before it, and a failure is logged.
        """
        previous = self._writing

        async def write() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            try:
                await asyncio.to_thread(self.copy.save, state)
            except (StateError, OSError) as exc:
                log.warning("fleet: cannot write the local copy %s: %s", self.copy.describe(), exc)

        self._writing = asyncio.get_running_loop().create_task(write())

    async def flush(self) -> None:
        """flush: wait for the local copy writes started so far (serve's stop)."""
        if self._writing is not None:
            await asyncio.wait({self._writing})

    async def load(self) -> tuple[State | None, Revision]:
        """load: etcd's state, kept as the local copy too (what is read is what the replica serves
        next: at start, and when the controller re-reads or takes it after a conflict)."""
        saved, revision = await self._call(self.store.load())
        self._seen(True, revision)
        if saved is not None:
            await self._keep(saved)
        return saved, revision

    async def commit(self, state: State, expect: Revision, event: dict | None = None) -> Revision:
        """commit: one etcd transaction (EtcdStateStore.commit), then the local copy.

        A replica that started from its local copy expects no revision (it read none); its
        change compares etcd's revision instead when etcd holds what that copy held (the
        change was made on top of it), and is a conflict otherwise.
        """
        if expect is None and self.from_copy is not None:
            expect = await self._rebase(self.from_copy)
        revision = await self._call(self.store.commit(state, expect, event))
        self.from_copy = None
        self._seen(True, revision)
        await self._keep(state)
        return revision

    async def _rebase(self, served: State) -> Revision:
        """_rebase: etcd's revision when its state has the facts of ``served``; None otherwise
        (then the commit conflicts, unless etcd holds no state at all)."""
        stored, revision = await self._call(self.store.load())
        # The facts alone: events and drain outcomes are added without a commit.
        if stored is not None and stored.to_dict(history=False) == served.to_dict(history=False):
            return revision
        return None

    async def append(self, event: dict) -> None:
        await self._call(self.store.append(event))

    async def amend(self, event: dict, fields: dict) -> None:
        await self._call(self.store.amend(event, fields))

    async def add_drain(self, generation: int, source: str, outcome: dict) -> None:
        await self._call(self.store.add_drain(generation, source, outcome))

    async def watch(self, since: Revision) -> AsyncIterator[tuple[State, Revision]]:
        """watch: the etcd store's watch (EtcdStateStore.watch), each state kept as the local copy,
        and kept up through an outage of etcd.

        When the store's watch gives up because etcd does not answer, "connected" turns false
        and the watch starts again from the newest revision this replica holds as soon as a call
        of its client is answered again (the lease's renewals go on trying), at the latest after
        _OUTAGE_RETRY seconds: the first change once etcd is back reaches this replica within
        its ack_timeout. A state that cannot be used still raises (the follower logs it).
        """
        while True:
            try:
                async for state, revision in self.store.watch(since):
                    self._seen(True, revision)
                    self.from_copy = None
                    await self._keep(state)
                    yield state, revision
                return
            except StateError as exc:
                if getattr(exc, "code", None) != "store_unavailable":
                    raise
                self._seen(False)
                log.warning("fleet: watching %s: %s; watching again once etcd answers", self.describe(), exc)
            await self.store.client.pause(_OUTAGE_RETRY)
            if isinstance(self.revision, int) and (not isinstance(since, int) or self.revision > since):
                since = self.revision


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tls_context(config: Any) -> ssl.SSLContext | None:
    """tls_context: the SSL context store.etcd.tls asks for, or None."""
    if config is None:
        return None
    context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
    if config.cert:
        context.load_cert_chain(str(config.cert), str(config.key))
    return context


@dataclass
class Fleet:
    """Fleet: this replica's client, store and membership, as serve's start-up built them."""

    client: EtcdClient
    store: LocalCopy
    membership: Membership
    ack_timeout: float
    connected: bool          # etcd answered at start (else the replica fails static)
    analyses: AnalysisKeys | None = None   # this replica's analyses in etcd, and the watch of all (steer)

    @classmethod
    async def open(cls, config: Config, local_copy: FileStateStore, address: str) -> tuple["Fleet", State | None,
                                                                                          Revision]:
        """open: connect and read the fleet's state; (fleet, saved state or None, its revision).

        When etcd does not answer, the state is the local copy's and the revision None (the
        follower takes the fleet's state when etcd answers again).
        """
        etcd = config.store.etcd
        client = EtcdClient(etcd.endpoints, username=etcd.username, password=etcd.password,
                            ssl=tls_context(etcd.tls), request_timeout=etcd.request_timeout)
        replica_id = config.fleet.replica_id or address
        store = LocalCopy(EtcdStateStore(client, etcd.prefix, config.history_limit, writer=replica_id), local_copy)
        client.on_answer = store.heard
        membership = Membership(client, etcd.prefix, replica_id, address, etcd.lease_ttl)
        try:
            saved, revision = await store.load()
            connected = True
        except StateError as exc:
            log.warning("fleet: etcd does not answer (%s): serving the local copy %s until it does",
                        exc, local_copy.describe())
            saved, revision = local_copy.read()[0], None
            store.from_copy = saved
            connected = False
        return cls(client, store, membership, config.fleet.ack_timeout, connected), saved, revision

    def plane(self, local: Any) -> FleetPlane:
        """plane: the DataPlane the controller drives: ``local`` behind this replica's membership.

        Its view of the fleet's acks starts watching at once (serve calls this on its event loop),
        and the membership's lease renewals move ``local``'s fence from now on.
        """
        plane = FleetPlane(local, self.membership, self.ack_timeout)
        plane.start()
        # The renewal never waits for a worker's ack: the fence goes to every worker at once, in
        # order with the changes before it (LocalPlane/WorkerPlane.set_fence).
        self.membership.fence = local.set_fence
        return plane

    def steer(self, controller: Any) -> None:
        """steer: what the membership and the analyses ask of ``controller`` (serve, once it exists).

        A lost lease re-reads through it; its analyses are kept in etcd, and an analysis whose
        replica is gone is recorded through it (admin/fleet/analyses.py).
        """
        self.membership.reread = controller.reread
        self.analyses = AnalysisKeys(self.client, self.membership.prefix, self.membership,
                                     controller.record_analysis_cancelled, controller.cancel_analysis)
        controller.on_analysis = self.analyses.note
        self.analyses.start()

    async def join(self, state: State, revision: Revision) -> None:
        """join: register this replica and ack the state its data plane serves (once it serves)."""
        await self.membership.start()
        if isinstance(revision, int):
            try:
                await self.membership.ack(state.generation, revision)
            except EtcdError as exc:   # written again when it registers
                log.warning("fleet: cannot ack revision %d yet: %s", revision, exc)

    async def close(self) -> None:
        """close: leave the fleet; the local copy's last write ends first."""
        await self.store.flush()
        if self.analyses is not None:
            await self.analyses.close()
        await self.membership.close()
        await self.client.close()
