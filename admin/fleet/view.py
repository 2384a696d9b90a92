"""view: the fleet's registrations and acks as one long-lived etcd watch keeps them (SPEC §9.2).

FleetPlane keeps one FleetView for the life of the replica: its ack barrier waits on it (no
read of the acks, no new watch per change) and status's "fleet" is read from it (no etcd
read per status or metrics call). `Membership.wait_for_acks` makes a short-lived one when it
is given none.

Why one watch and not one per change: a watch that starts at a revision etcd has already
passed is caught up by etcd's background sync of "unsynced" watchers, which runs every
100 ms, so a barrier's own watch often waited for that tick; a watch that is synced gets each
change as it commits. The view reads replicas/ and acks/ in one transaction (one revision),
then watches [acks/, replicas/ + 1) from the revision after it — the history and drain keys
between the two are skipped. When the watch ends (compacted, stalled, canceled, etcd gone)
the view is not live until it has read both again and watches from there; retries back off
from 50 ms to 2 s and go on until `close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from .etcd import DEFAULT_IDLE_TIMEOUT, EtcdClient, EtcdError, Event, KeyValue, RangeResult, get_op, retry_delay
from .gateway import prefix_range_end

log = logging.getLogger("cutover.fleet")



def json_object(value: bytes) -> dict:
    """json_object: a key's value as the JSON object it should hold; {} when it holds anything else."""
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _int(value: object) -> int:
    try:
        return int(value or 0)        # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


class FleetView:
    """FleetView: replicas/<id> and acks/<id> under ``prefix``, kept up to date by one watch.

    ``replicas`` maps each registered id to its document ({"id", "address", "pid",
    "started"}), ``acks`` each id to its last ack ({"generation", "revision"}), both as of
    ``revision``; ``highest`` is the highest revision each id was seen acking while this view
    ran (an ack key deleted with its lease keeps it: an ack once given stays given). ``live``
    is true while the watch is up. `changed` returns an event set at the next change (or when
    the view goes down or up). `registered_at` tells who was registered at a revision when
    the view can know it without a read.
    """

    def __init__(self, client: EtcdClient, prefix: str, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.idle_timeout = idle_timeout
        self.replicas: dict[str, dict] = {}
        self.acks: dict[str, dict] = {}
        self.highest: dict[str, int] = {}
        self.revision = 0
        self.live = False
        self._since = 0      # the view has seen every change after this revision (its last read)
        self._moved = 0      # the revision of the last registration or expiry it saw
        self._changed = asyncio.Event()
        self._up = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """start: begin reading and watching in the background (once; the owner calls `close`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """close: stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._set_live(False)

    def changed(self) -> asyncio.Event:
        """changed: an event set at the next change the view takes (take it before looking)."""
        return self._changed

    async def wait_live(self, timeout: float) -> bool:
        """wait_live: wait (at most ``timeout`` s) until the view has read and watches; whether it does."""
        if self.live:
            return True
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._up.wait()
        except TimeoutError:
            pass
        return self.live

    def acked_since(self, revision: int) -> set[str]:
        """acked_since: the ids seen acking ``revision`` or a later one."""
        return {replica for replica, highest in self.highest.items() if highest >= revision}

    def registered_at(self, revision: int) -> list[str] | None:
        """registered_at: the ids registered at ``revision``, in key order; None when the view cannot tell.

        It can when it watches, has seen every change since before ``revision`` and one at
        ``revision`` or later (the change's own history event, or an ack), and no
        registration came or went after ``revision``: then who is registered now is who was.
        """
        if not self.live or not self._since <= revision <= self.revision or self._moved > revision:
            return None
        return sorted(self.replicas)

    # ------------------------------------------------------------ the watch

    def _key(self, kind: str) -> str:
        return f"{self.prefix}/{kind}/"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            if live:
                self._up.set()
            else:
                self._up = asyncio.Event()
            self._notify()

    def _take(self, kv: KeyValue, deleted: bool = False) -> None:
        for kind, table in (("replicas", self.replicas), ("acks", self.acks)):
            start = self._key(kind)
            if not kv.key.startswith(start):
                continue
            name = kv.key[len(start):]
            if kind == "replicas":
                self._moved = max(self._moved, kv.mod_revision)
            if deleted:
                table.pop(name, None)
                return
            doc = json_object(kv.value)
            table[name] = doc
            if kind == "acks":
                self.highest[name] = max(self.highest.get(name, 0), _int(doc.get("revision")))
            return

    async def _read(self) -> int:
        """_read: replicas/ and acks/ as of one revision (one transaction); that revision."""
        result = await self.client.txn([], [get_op(self._key("replicas"), prefix=True),
                                            get_op(self._key("acks"), prefix=True)])
        self.replicas.clear()
        self.acks.clear()
        for response in result.responses:
            if isinstance(response, RangeResult):
                for kv in response.kvs:
                    self._take(kv)
        self.revision = self._since = result.revision
        return result.revision

    def _apply(self, events: Sequence[Event]) -> None:
        for event in events:
            self._take(event.kv, deleted=event.type == "DELETE")
            self.revision = max(self.revision, event.revision)
        self._notify()

    async def _run(self) -> None:
        failures = 0
        end = prefix_range_end(self._key("replicas").encode()).decode("utf-8", "surrogateescape")
        while True:
            try:
                revision = await self._read()
                async with self.client.watch(self._key("acks"), revision + 1, range_end=end,
                                             idle_timeout=self.idle_timeout) as events:
                    self._set_live(True)
                    self._notify()                 # what was read counts as a change too
                    while True:
                        batch = await events.batch()
                        failures = 0
                        self._apply(batch)
            except asyncio.CancelledError:
                raise
            except EtcdError as exc:
                log.info("fleet: the watch of the fleet's acks ended (%s); reading them again", exc)
            except Exception:
                log.exception("fleet: the watch of the fleet's acks failed; reading them again")
            self._set_live(False)
            failures += 1
            await self.client.pause(retry_delay(failures))
