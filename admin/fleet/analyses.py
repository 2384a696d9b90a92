"""analyses: a post-flip analysis as a fleet fact, so that its runner's death is recorded (SPEC §9.2).

Gates and analysis run on the replica that took the call. While its analysis of generation G
runs, that replica holds P/analysis/<G> = {"replica", "generation", "state": "running",
"started"} under its lease. When the analysis ends, the key is written once more with the
outcome and no lease, then deleted: etcd's delete event then carries the outcome (the watch asks
for the previous value). When the replica dies, is paused or is cut off past its lease, etcd
deletes the key with its lease: the delete then carries "running". Every replica watches
P/analysis/; the first that sees a running analysis deleted records `analysis_cancelled` for G
in the fleet's history (one commit; the others' commits of the same event lose the compare and
find it recorded). The runner, when it sees its own running key deleted, cancels its analysis:
the fleet has stopped counting on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from .etcd import EtcdClient, EtcdError, WatchCompacted, retry_delay
from .replica import Membership
from .view import json_object

log = logging.getLogger("cutover.fleet")

_WIDTH = 20                 # digits of the generation in a key, so keys sort by generation


class AnalysisKeys:
    """AnalysisKeys: this replica's analyses in etcd and the watch over everybody's (see the module docstring).

    ``record`` is the controller's way to commit the `analysis_cancelled` event (it answers
    whether the event is in the history now); ``cancel_own`` stops this replica's running
    analysis of a generation.
    """

    def __init__(self, client: EtcdClient, prefix: str, membership: Membership,
                 record: Callable[[int, str], Awaitable[bool]], cancel_own: Callable[[int, str], None]) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.membership = membership
        self.record = record
        self.cancel_own = cancel_own
        self._task: asyncio.Task | None = None
        self._writes: set[asyncio.Task] = set()
        self._order = asyncio.Lock()     # writes go out one at a time, in the order they were noted

    def key(self, generation: int) -> str:
        return f"{self.prefix}/analysis/{generation:0{_WIDTH}d}"

    # ------------------------------------------------------------ this replica's

    def note(self, generation: int, state: str) -> None:
        """note: the controller's hook (Controller.on_analysis): this replica's analysis of
        ``generation`` is "running", or ended with ``state`` (passed, failed, rolled_back,
        cancelled). Never waits: the write runs in the background."""
        self._later(self._started(generation) if state == "running" else self._ended(generation, state))

    def _later(self, work: Awaitable[None]) -> None:
        async def in_order() -> None:
            async with self._order:
                await work

        task = asyncio.get_running_loop().create_task(in_order())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _started(self, generation: int) -> None:
        lease = self.membership.lease
        if not lease:
            log.warning("fleet: analysis of generation %d runs unregistered (no lease): a death of this "
                        "replica would not be seen by the others", generation)
            return
        doc = {"replica": self.membership.id, "generation": generation, "state": "running", "started": time.time()}
        try:
            await self.client.put(self.key(generation), json.dumps(doc).encode(), lease=lease)
        except EtcdError as exc:
            log.warning("fleet: cannot record that the analysis of generation %d runs: %s", generation, exc)

    async def _ended(self, generation: int, outcome: str) -> None:
        doc = {"replica": self.membership.id, "generation": generation, "state": outcome, "ended": time.time()}
        try:
            current = await self.client.get(self.key(generation))
            if current is None or json_object(current.value).get("replica") != self.membership.id:
                return        # never written (unregistered), or gone with a lease that lapsed
            await self.client.put(self.key(generation), json.dumps(doc).encode())
            await self.client.delete(self.key(generation))
        except EtcdError as exc:
            log.warning("fleet: cannot record that the analysis of generation %d ended: %s", generation, exc)

    # ----------------------------------------------------------------- everybody's

    def start(self) -> None:
        """start: watch every replica's analyses until `close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._writes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _watch(self) -> None:
        failures = 0
        start = 0
        while True:
            try:
                if not start:
                    _, header = await self.client.get_prefix(f"{self.prefix}/analysis/")
                    start = header + 1
                async with self.client.watch(f"{self.prefix}/analysis/", start, prev_kv=True) as events:
                    async for event in events:
                        failures = 0
                        start = event.kv.mod_revision + 1
                        if event.type == "DELETE" and event.prev_kv is not None:
                            await self._deleted(json_object(event.prev_kv.value))
            except WatchCompacted as exc:     # a delete may have been missed: read from now on
                log.info("fleet: the watch of the analyses fell behind a compaction (%s); reading again", exc)
                start = 0
                continue
            except EtcdError as exc:
                failures += 1
                log.info("fleet: the watch of the analyses ended (%s); watching again", exc)
                await self.client.pause(retry_delay(failures))

    async def _deleted(self, doc: dict) -> None:
        """_deleted: a key of P/analysis/ is gone; when it still said running, its runner is gone."""
        if doc.get("state") != "running":
            return
        generation, replica = doc.get("generation"), str(doc.get("replica") or "?")
        if not isinstance(generation, int):
            return
        why = f"replica {replica}, which ran it, stopped renewing its lease (gone, paused or cut off)"
        if replica == self.membership.id:
            self.cancel_own(generation, f"this replica's lease lapsed while it ran: {why}")
        for attempt in range(5):
            try:
                if await self.record(generation, why):
                    return
            except Exception as exc:      # a conflict: another replica recorded first, or a change came
                log.info("fleet: recording the cancelled analysis of generation %d: %s", generation, exc)
            await asyncio.sleep(0.05 * (attempt + 1))
        log.warning("fleet: could not record that the analysis of generation %d was cancelled", generation)

