"""EtcdStateStore: the fleet's State in etcd, one key per fact (SPEC §8, §9.2).

serve builds one for `store.etcd` (over an `EtcdClient`) and hands it to the Controller, which
sees only the `StateStore` protocol of admin/state.py. Keys, under the fleet's prefix P:

    P/state                                  the runtime facts: State.to_dict() without history, JSON
    P/seq                                    the number of the newest history event, decimal
    P/history/<seq, 20 digits>               one history event, JSON; the newest history_limit are kept
    P/drains/<generation, 20 digits>/<source>/<writer>
                                             one writer's outcome of the drain of `source` after the
                                             switch that made `generation`, JSON

The revision is the etcd ``mod_revision`` of P/state. `commit` is one transaction: the compare
on that revision (or "P/state does not exist" for None) and on P/seq, the put of the state,
its event and P/seq, and the trimming of what fell out of the history. `append`, `amend` and
`add_drain` write only their own keys, so the state key is never rewritten by them and no
replica rewrites another's event or drain outcome. Numbers are zero-padded, so key order is
number order and a range delete trims the oldest.

Trimming happens in the transaction that adds an event: history keys older than the newest
history_limit are deleted with it; drain keys go in a commit's transaction once their
generation is history_limit or more below the state's (every change of generation comes with
an event, so the entry they belonged to has been trimmed by then). Reads keep the newest
history_limit events too, so a lowered limit shows at once and trims on the next event.

A write whose answer was lost (`EtcdOutcomeUnknown`: it may or may not have been applied) is
never taken as done or as failed: the store sends the same transaction again, whose compares
make a second application impossible; its failure branch reads the state, P/seq and the event
keys tried, which tells "it landed" (the state key holds exactly the bytes written and the
event key the event written) from "another writer moved the state" (StateConflict). When
etcd stops answering meanwhile, `StoreUnavailable` says the outcome is unknown; a write that
did land then reaches the controller through `watch`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from admin.fleet.etcd import (
    DEFAULT_IDLE_TIMEOUT, Compare, EtcdClient, EtcdError, EtcdOutcomeUnknown, EtcdUnavailable, Event, KeyValue,
    RangeResult, RevisionCompacted, TxnOp, TxnResult, WatchCompacted, WatchStalled, compare_create_revision,
    compare_mod_revision, compare_value, delete_range_op, get_op, put_op, retry_delay,
)
from admin.state import Revision, State, StateConflict, StateError, drain_fields

__all__ = [
    "EtcdStateStore", "StoreUnavailable", "drain_key", "history_key", "parse_drain_key", "parse_history_key",
    "sum_drains",
]

log = logging.getLogger("cutover.fleet.store")

_WIDTH = 20                 # digits of a zero-padded number in a key: any int64 fits
_ATTEMPTS = 8               # transactions one write may send (P/seq taken by another writer meanwhile)
_UNKNOWN_ATTEMPTS = 2       # lost answers to a drain's create-only put before its outcome is unknown
_WATCH_FAILURES = 6         # consecutive failed re-reads or watches before watch raises


class StoreUnavailable(StateError):
    """StoreUnavailable: etcd did not answer (every endpoint down, paused or cut off).

    Nothing was written — unless the message says the outcome is unknown (the request reached
    etcd, no answer came), in which case the change may land and then comes back through
    `EtcdStateStore.watch`. ``code`` is the error code the controller answers with (503).
    """

    code = "store_unavailable"


# ---------------------------------------------------------------- keys and values (pure)


def history_key(prefix: str, seq: int) -> str:
    """history_key: the key of history event number ``seq`` (>= 1) under ``prefix``."""
    return f"{prefix}/history/{seq:0{_WIDTH}d}"


def parse_history_key(prefix: str, key: str) -> int | None:
    """parse_history_key: the event number in a `history_key`; None for a key that is not one."""
    rest = key.removeprefix(f"{prefix}/history/")
    if rest == key or len(rest) != _WIDTH or not rest.isascii() or not rest.isdigit():
        return None
    return int(rest)


def _drains_of(prefix: str, generation: int) -> str:
    return f"{prefix}/drains/{generation:0{_WIDTH}d}/"


def drain_key(prefix: str, generation: int, source: str, writer: str) -> str:
    """drain_key: where ``writer`` keeps its outcome of the drain of ``source`` after ``generation``.

    ``source`` and ``writer`` are percent-encoded, so neither can add a "/" to the key.
    """
    return (_drains_of(prefix, generation) + urllib.parse.quote(source, safe="") + "/"
            + urllib.parse.quote(writer, safe=""))


def parse_drain_key(prefix: str, key: str) -> tuple[int, str, str] | None:
    """parse_drain_key: (generation, source, writer) of a `drain_key`; None for a key that is not one."""
    rest = key.removeprefix(f"{prefix}/drains/")
    parts = rest.split("/")
    if rest == key or len(parts) != 3 or len(parts[0]) != _WIDTH or not parts[0].isascii() \
            or not parts[0].isdigit() or not parts[1] or not parts[2]:
        return None
    return int(parts[0]), urllib.parse.unquote(parts[1]), urllib.parse.unquote(parts[2])


def sum_drains(parts: Sequence[dict]) -> dict:
    """sum_drains: several replicas' outcomes of one drain as one (SPEC §9.2), as proxy.merge_drains.

    Counts add up, "interrupted" (any flag) is true when any part's is, "duration" is the
    longest (None when any is None); "environment", "generation" and any field that is
    neither a number nor a flag are the first part's. A field only some parts have is taken
    from those.
    """
    summed: dict = {}
    for part in parts:
        for name, value in part.items():
            if name not in summed:
                summed[name] = copy.deepcopy(value)
                continue
            have = summed[name]
            if name in _SAME_IN_EVERY_PART:
                continue
            if isinstance(value, bool) and isinstance(have, bool):
                summed[name] = have or value
            elif name == "duration":
                summed[name] = None if have is None or value is None else max(have, value)
            elif _number(have) and _number(value):
                summed[name] = have + value
    return summed


_SAME_IN_EVERY_PART = ("environment", "generation")   # a drain's identity: never summed


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _encode(document: Any) -> bytes:
    """_encode: the bytes stored for a JSON document (compact, keys sorted: equal documents, equal bytes)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """_Snapshot: everything of one fleet's state as of one store revision (``header``)."""

    state: State | None
    revision: int | None     # mod_revision of the state key; None when there is none
    seq: int                 # the newest history event's number (0: none yet)
    header: int              # the store revision read at
    kvs: tuple[KeyValue, ...] = ()    # the keys read (`_View` starts from them)


class _View:
    """_View: the keys the state is made of (P/state, P/seq, P/history/*, P/drains/*) as of ``header``.

    `EtcdStateStore.watch` starts one from a read and keeps it up to date with the events of a
    watch over [`first`, `end`) — every key of the fleet but the replicas' acks (P/acks/ sorts
    before P/drains/, P/state last), so one transaction's state, event, P/seq and trims arrive
    together, and the acks of every change wake no follower. Applied revision by revision, it
    holds what a read at that revision would hold: the state of each change is assembled from
    it, with no read of its own.
    """

    __slots__ = ("prefix", "keys", "header")

    def __init__(self, prefix: str, kvs: Sequence[KeyValue], header: int) -> None:
        self.prefix = prefix
        self.keys: dict[str, KeyValue] = {}
        self.header = header
        for kv in kvs:
            self._put(kv)

    @staticmethod
    def first(prefix: str) -> str:
        return f"{prefix}/drains/"

    @staticmethod
    def end(prefix: str) -> str:
        return f"{prefix}/state\0"

    def _put(self, kv: KeyValue) -> None:
        if self.first(self.prefix) <= kv.key < self.end(self.prefix) \
                and not kv.key.startswith(f"{self.prefix}/replicas/"):
            self.keys[kv.key] = kv

    def apply(self, events: Sequence[Event]) -> bool:
        """apply: the events of one revision (one transaction); whether it put the state key."""
        state = f"{self.prefix}/state"
        put = False
        for event in events:
            if event.type == "PUT":
                self._put(event.kv)
                put = put or event.kv.key == state
            else:
                self.keys.pop(event.kv.key, None)
            self.header = max(self.header, event.revision)
        return put

    def kvs(self) -> list[KeyValue]:
        """kvs: the keys held, in key order (as a range read answers them)."""
        return [self.keys[key] for key in sorted(self.keys)]


def _revisions(events: Sequence[Event]) -> list[tuple[int, list[Event]]]:
    """_revisions: a watch batch's events grouped by revision, in order."""
    groups: list[tuple[int, list[Event]]] = []
    for event in events:
        if groups and groups[-1][0] == event.revision:
            groups[-1][1].append(event)
        else:
            groups.append((event.revision, [event]))
    return groups


# ---------------------------------------------------------------- the store


class EtcdStateStore:
    """EtcdStateStore: a `StateStore` (admin/state.py) on etcd; one per control plane of a fleet.

    ``client`` is the fleet's EtcdClient (its owner closes it), ``prefix`` the fleet's key
    prefix ("/cutover/shop": starts with "/", no trailing "/"), ``history_limit`` the events
    kept. ``writer`` names this store's drain outcomes (the replica id; a random one if not
    given). ``watch_idle_timeout`` is how long `watch` lets its stream stay silent (no event, no
    progress notification) before it re-reads the state and watches again. See the module
    docstring for the keys, the transactions and lost answers.
    """

    __slots__ = ("client", "prefix", "history_limit", "writer", "watch_idle_timeout", "_seq", "_own", "_committing",
                 "_settled", "_parsed")

    def __init__(self, client: EtcdClient, prefix: str, history_limit: int = 1000, *,
                 writer: str | None = None, watch_idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f'an etcd state prefix starts with "/" and has no trailing "/", not {prefix!r}')
        if isinstance(history_limit, bool) or not isinstance(history_limit, int) or history_limit < 0:
            raise ValueError(f"history_limit must be >= 0, not {history_limit!r}")
        if writer is not None and (not isinstance(writer, str) or not writer):
            raise ValueError(f"a writer id is a non-empty string, not {writer!r}")
        if not watch_idle_timeout > 0:
            raise ValueError("watch_idle_timeout must be > 0 seconds")
        self.client = client
        self.prefix = prefix
        self.history_limit = history_limit
        self.writer = writer or uuid.uuid4().hex[:16]
        self.watch_idle_timeout = float(watch_idle_timeout)
        self._seq: int | None = None   # the newest event's number as last seen (None: not read yet)
        self._own = 0                  # the newest revision this store committed itself
        self._committing = 0           # own commits sent and not answered yet
        self._settled = asyncio.Event()    # set while none is: a watch event may be one of them
        self._settled.set()
        # Each history event as last parsed, by key: (its mod_revision, the JSON). Assembling a
        # state parses only the events added or amended since (`_assemble`).
        self._parsed: dict[str, tuple[int, Any]] = {}

    @property
    def _state_key(self) -> str:
        return f"{self.prefix}/state"

    @property
    def _seq_key(self) -> str:
        return f"{self.prefix}/seq"

    def describe(self) -> str:
        """describe: "etcd <endpoints> prefix <prefix>", the source named in every StateError from this store."""
        return f"etcd {','.join(self.client.endpoints)} prefix {self.prefix}"

    def info(self) -> dict:
        """info: GET /v1/status's "store"; serve's LocalCopy adds whether etcd answers and since when."""
        return {"kind": "etcd", "endpoints": list(self.client.endpoints), "prefix": self.prefix,
                "connected": True, "since": None, "revision": self._own or None}

    def _error(self, message: str) -> StateError:
        return StateError(f"state {self.describe()}: {message}")

    def _unavailable(self, message: str) -> StoreUnavailable:
        return StoreUnavailable(f"state {self.describe()}: {message}")

    # ------------------------------------------------------------ reading

    async def load(self) -> tuple[State | None, Revision]:
        """load: the State (history assembled, drain outcomes folded in) and its revision; (None, None) if none.

        StoreUnavailable when etcd does not answer; StateError when what is stored is unusable.
        """
        snapshot = await self._snapshot()
        return snapshot.state, snapshot.revision

    async def _snapshot(self, revision: int | None = None) -> _Snapshot:
        """_snapshot: one range read of every key under the prefix, now or as of ``revision``.

        RevisionCompacted passes through (`watch` reads the current state instead).
        """
        try:
            kvs, header = await self.client.get_prefix(self.prefix + "/", revision=revision)
        except RevisionCompacted:
            raise
        except EtcdUnavailable as exc:
            raise self._unavailable(f"cannot read it: {exc}") from None
        except EtcdError as exc:
            raise self._error(f"cannot read it: {exc}") from None
        snapshot = self._assemble(kvs, header)
        if revision is None:
            self._seq = max(self._seq or 0, snapshot.seq)
        return snapshot

    def _assemble(self, kvs: Sequence[KeyValue], header: int) -> _Snapshot:
        """_assemble: the State that the keys of one read (or a `_View`) make up (see the module docstring).

        A history event whose key and mod_revision were parsed before is not parsed again
        (``_parsed``); the state gets a copy of it, which the drain outcomes are folded into.
        Events are shared no deeper than their top level, as the controller's copies of a state
        share them (nobody changes a nested value of a recorded event in place).
        """
        state_kv = None
        seq = 0
        events: list[tuple[int, KeyValue]] = []
        drains: dict[tuple[int, str], dict[str, dict]] = {}
        for kv in kvs:
            if kv.key == self._state_key:
                state_kv = kv
            elif kv.key == self._seq_key:
                seq = self._seq_value(kv)
            elif kv.key.startswith(f"{self.prefix}/history/"):
                number = parse_history_key(self.prefix, kv.key)
                if number is None:
                    raise self._error(f"{kv.key} is not a history key (history/<{_WIDTH} digits>)")
                events.append((number, kv))
            elif kv.key.startswith(f"{self.prefix}/drains/"):
                parsed = parse_drain_key(self.prefix, kv.key)
                if parsed is None:
                    raise self._error(f"{kv.key} is not a drain key (drains/<generation>/<source>/<writer>)")
                generation, source, writer = parsed
                drains.setdefault((generation, source), {})[writer] = self._drain_value(kv)
            # Anything else under the prefix (the replicas' registrations and acks) is not state.
        if state_kv is None:
            return _Snapshot(None, None, seq, header, tuple(kvs))
        facts = self._json(state_kv, "the state")
        if not isinstance(facts, dict):
            raise self._error(f"{state_kv.key} must hold a JSON object")
        if "history" in facts:
            raise self._error(f'{state_kv.key} holds "history": events live in their own keys')
        kept = events[-self.history_limit:] if self.history_limit else []
        history = []
        parsed: dict[str, tuple[int, Any]] = {}
        for _, kv in kept:
            known = self._parsed.get(kv.key)
            if known is not None and known[0] == kv.mod_revision:
                event = known[1]
            else:
                event = self._json(kv, "a history event")
                if not isinstance(event, dict):
                    raise self._error(f"{kv.key} must hold a JSON object")
            parsed[kv.key] = (kv.mod_revision, event)
            history.append(dict(event))
        self._parsed = parsed
        for (generation, source), parts in sorted(drains.items()):
            _fold_drain(history, generation, source, parts)
        state = State.from_dict({**facts, "history": history}, self.describe())
        return _Snapshot(state, state_kv.mod_revision, max(seq, events[-1][0] if events else 0), header,
                         tuple(kvs))

    def _json(self, kv: KeyValue, what: str) -> Any:
        try:
            return json.loads(kv.value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._error(f"{kv.key} ({what}) is not valid JSON: {exc}") from None

    def _seq_value(self, kv: KeyValue) -> int:
        text = kv.value.decode("ascii", "replace")
        if not text.isdigit():
            raise self._error(f"{kv.key} must hold the newest event's number, not {kv.value[:40]!r}")
        return int(text)

    def _drain_value(self, kv: KeyValue) -> dict:
        outcome = self._json(kv, "a drain outcome")
        if not isinstance(outcome, dict) or not all(
                _number(outcome.get(name)) for name in ("drained", "forced_closed", "dropped")):
            raise self._error(f"{kv.key} must hold a drain outcome (an object with drained, forced_closed, "
                              "dropped)")
        return outcome

    # ------------------------------------------------------------ writing

    async def commit(self, state: State, expect: Revision, event: dict | None = None) -> Revision:
        """commit: one transaction: if P/state's mod_revision is ``expect``, put the state and ``event``.

        See `StateStore.commit` and the module docstring. ``expect`` None means "no state
        stored yet". Returns the new revision. StateConflict when the state moved (nothing
        written); StoreUnavailable when etcd does not answer (nothing written, or the outcome
        unknown — the message says which); StateError when etcd refuses the request.
        """
        facts = state.to_dict(history=False)
        events = [event] if event is not None else []
        State.from_dict({**facts, "history": events}, self.describe())   # refuses what would not load
        value = self._encoded(facts)
        added = self._encoded(event) if event is not None and self.history_limit else None
        if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
            raise StateConflict(f"state {self.describe()}: revision {expect!r} was not handed out by this "
                                "store; nothing written")
        key = self._state_key
        condition = (compare_create_revision(key, "==", 0) if expect is None
                     else compare_mod_revision(key, "==", expect))
        trims = []
        if self.history_limit and state.generation > self.history_limit:
            trims.append(delete_range_op(f"{self.prefix}/drains/",
                                         _drains_of(self.prefix, state.generation - self.history_limit + 1)))

        def verdict(current: KeyValue | None, landed: KeyValue | None, lost: bool) -> int | None:
            if landed is not None:
                return landed.create_revision        # its event is stored: it landed, its answer was lost
            if lost and added is None and current is not None and current.value == value \
                    and current.mod_revision != expect:
                return current.mod_revision          # no event to tell by: the state holds what was written
            moved = current.mod_revision if current is not None else None
            if moved != expect:
                now = f"revision {moved}" if moved is not None else "no state"
                raise StateConflict(f"state {self.describe()} changed since this router read it "
                                    f"(revision {expect} expected, it is at {now}); nothing written")
            return None                               # the state is as expected: P/seq moved, try again

        self._committing += 1
        self._settled.clear()
        try:
            revision = await self._write([condition], [put_op(key, value)], added, trims, verdict)
            self._own = max(self._own, revision)
        finally:
            self._committing -= 1
            if not self._committing:
                self._settled.set()
        return revision

    async def append(self, event: dict) -> None:
        """append: add one history event (its own key, and P/seq) without touching the state key.

        See `StateStore.append`. StateError when no state is stored yet (as the file store);
        StoreUnavailable when etcd does not answer.
        """
        added = self._encoded(_checked_event(event, self.describe()))
        if not self.history_limit:
            return
        exists = compare_create_revision(self._state_key, ">", 0)

        def verdict(current: KeyValue | None, landed: KeyValue | None, lost: bool) -> int | None:
            if landed is not None:
                return landed.create_revision
            if current is None:
                raise self._error("no state saved yet to add history to")
            return None

        await self._write([exists], [], added, [], verdict)

    async def _write(self, compares: list[Compare], puts: list[TxnOp], added: bytes | None,
                     trims: list[TxnOp], verdict: Callable[[KeyValue | None, KeyValue | None, bool], int | None]
                     ) -> int:
        """_write: the transaction of commit and append, sent until it is answered (at most _ATTEMPTS).

        With an event (``added``) it also compares P/seq with the number last seen, puts the
        event at the next number, P/seq, and deletes the events that fall out of the history.
        A failed compare reads the state, P/seq and every event key tried, and asks
        ``verdict(state key, the event key tried that holds our event or None)``: a revision (it
        landed), None (try again with P/seq as read) or an exception. Returns the txn's revision.
        """
        tried: list[int] = []
        unknown: EtcdOutcomeUnknown | None = None
        for attempt in range(_ATTEMPTS):
            conditions = list(compares)
            success = list(puts)
            number = 0
            if added is not None:
                seq = self._seq or 0
                number = seq + 1
                if seq:
                    conditions.append(compare_value(self._seq_key, "==", str(seq).encode()))
                else:
                    conditions.append(compare_create_revision(self._seq_key, "==", 0))
                success += [put_op(history_key(self.prefix, number), added),
                            put_op(self._seq_key, str(number).encode())]
                if number > self.history_limit:
                    success.append(delete_range_op(f"{self.prefix}/history/",
                                                   history_key(self.prefix, number + 1 - self.history_limit)))
                if number not in tried:
                    tried.append(number)
            success += trims
            failure = [get_op(self._state_key), get_op(self._seq_key)]
            failure += [get_op(history_key(self.prefix, each)) for each in tried]
            try:
                result = await self.client.txn(conditions, success, failure)
            except EtcdOutcomeUnknown as exc:
                lost = unknown is not None
                unknown = exc
                if lost:
                    break            # a second lost answer: etcd is not answering
                await self.client.pause(retry_delay(1))
                continue
            except EtcdUnavailable as exc:
                if unknown is not None:
                    raise self._outcome_unknown(unknown) from None
                raise self._unavailable(f"not written, etcd did not answer: {exc}") from None
            except EtcdError as exc:
                raise self._error(f"etcd refused the write: {exc}") from None
            if result.succeeded:
                if added is not None:
                    self._seq = number
                return result.revision
            current, seq_now, events = self._failure(result, tried)
            # Only a write whose answer was lost may have landed: an identical event from another
            # writer (the same change in the same millisecond) must not pass for this one's.
            landed = next(((tried_number, kv) for tried_number, kv in events
                           if kv is not None and kv.value == added), None) if unknown is not None else None
            if landed is not None:
                self._seq = max(self._seq or 0, landed[0])
            answer = verdict(current, landed[1] if landed is not None else None, unknown is not None)
            if answer is not None:
                return answer
            self._seq = seq_now
        if unknown is not None:
            raise self._outcome_unknown(unknown)
        raise self._unavailable(f"not written: other writers moved {self._seq_key} {_ATTEMPTS} times in a row")

    def _failure(self, result: TxnResult, tried: list[int]
                 ) -> tuple[KeyValue | None, int, list[tuple[int, KeyValue | None]]]:
        """_failure: what a failed `_write` read: the state key, P/seq's number, each event key tried."""
        def one(index: int) -> KeyValue | None:
            response = result.responses[index] if index < len(result.responses) else None
            if not isinstance(response, RangeResult):
                raise self._error("etcd answered a failed write without the reads it asked for")
            return response.kvs[0] if response.kvs else None

        seq_kv = one(1)
        seq = self._seq_value(seq_kv) if seq_kv is not None else 0
        return one(0), seq, [(each, one(2 + index)) for index, each in enumerate(tried)]

    def _outcome_unknown(self, exc: EtcdError) -> StoreUnavailable:
        return self._unavailable(f"etcd did not answer whether the change was stored ({exc}); it is not "
                                 "reported applied here, and if it was stored it is taken from the watch")

    async def amend(self, event: dict, fields: dict) -> None:
        """amend: add ``fields`` to the history event ``event`` (see `amend_event`), in its own key only.

        Reads the history keys, rewrites the newest one that is ``event`` with a compare on its
        mod_revision (read again and retried when another writer amended it meanwhile, or when
        the answer was lost). Nothing happens when the event is no longer kept.
        """
        wanted = (event.get("at"), event.get("action"), event.get("generation"))
        added = copy.deepcopy(fields)
        self._encoded(added)
        problem: EtcdError | None = None
        for attempt in range(_ATTEMPTS):
            try:
                kvs, _ = await self.client.get_prefix(f"{self.prefix}/history/")
            except EtcdUnavailable as exc:
                raise (self._outcome_unknown(problem) if problem else
                       self._unavailable(f"not amended, etcd did not answer: {exc}")) from None
            except EtcdError as exc:
                raise self._error(f"cannot read the history: {exc}") from None
            target = None
            for kv in reversed(kvs[-self.history_limit:] if self.history_limit else []):
                entry = self._json(kv, "a history event")
                if isinstance(entry, dict) and (entry.get("at"), entry.get("action"),
                                                entry.get("generation")) == wanted:
                    target = (kv, entry)
                    break
            if target is None:
                return
            kv, entry = target
            value = self._encoded({**entry, **added})
            if value == kv.value:
                return                                    # already amended (a lost answer that landed)
            try:
                result = await self.client.txn([compare_mod_revision(kv.key, "==", kv.mod_revision)],
                                               [put_op(kv.key, value)])
            except EtcdOutcomeUnknown as exc:
                problem = exc
                await self.client.pause(retry_delay(attempt + 1))
                continue
            except EtcdUnavailable as exc:
                raise (self._outcome_unknown(problem) if problem else
                       self._unavailable(f"not amended, etcd did not answer: {exc}")) from None
            except EtcdError as exc:
                raise self._error(f"etcd refused the write: {exc}") from None
            if result.succeeded:
                return
        raise (self._outcome_unknown(problem) if problem else
               self._unavailable(f"not amended: {event!r} changed under it {_ATTEMPTS} times"))

    async def add_drain(self, generation: int, source: str, outcome: dict) -> None:
        """add_drain: put this writer's outcome of a drain in its own key (SPEC §9.2: summed when read).

        The first outcome a writer gives for one drain is kept (a create-only put, as the file
        store keeps an entry's first outcome). It is written whether or not the entry is still
        in the history (reads fold it only into an entry that is); keys of drains whose entry
        fell out of the history are trimmed by a later commit.
        """
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ValueError(f"a drain's generation is an int >= 1, not {generation!r}")
        key = drain_key(self.prefix, generation, source, self.writer)
        value = self._encoded(copy.deepcopy(outcome))
        problem: EtcdError | None = None
        for attempt in range(_UNKNOWN_ATTEMPTS):
            try:
                await self.client.txn([compare_create_revision(key, "==", 0)], [put_op(key, value)])
                return                   # written, or there already: either way the key holds an outcome
            except EtcdOutcomeUnknown as exc:
                problem = exc            # the next create-only put tells: it answers either way
                await self.client.pause(retry_delay(attempt + 1))
            except EtcdUnavailable as exc:
                raise (self._outcome_unknown(problem) if problem else
                       self._unavailable(f"drain outcome not written, etcd did not answer: {exc}")) from None
            except EtcdError as exc:
                raise self._error(f"etcd refused the write: {exc}") from None
        raise self._outcome_unknown(problem or EtcdError("no answer"))   # both answers lost

    def _encoded(self, document: Any) -> bytes:
        try:
            return _encode(document)
        except (TypeError, ValueError) as exc:
            raise self._error(f"refusing to store what is not JSON: {exc}") from None

    # ------------------------------------------------------------ watching

    async def watch(self, since: Revision) -> AsyncIterator[tuple[State, Revision]]:
        """watch: each state committed elsewhere after revision ``since``, with its revision, in order.

        Reads the keys of the state as of ``since`` (now, when ``since`` is None or compacted),
        then watches them (every key of the fleet but the acks, see `_View`) from the revision
        read + 1, and yields the state of each change as of that change's revision: the state
        key's value and the history as the events of that revision and the ones before left it
        (events added, amended and trimmed, drain outcomes added and trimmed), with no read per
        change. Changes this store committed itself are skipped, and so are changes older than
        the newest of them (a commit here compared the revision it read, so it was made on top
        of those), and a deletion of P/state (by hand: there is no state to take). When the
        watch ends — compacted, stalled (silent for watch_idle_timeout), canceled or etcd
        gone — it reads the state again, yields it if it is newer than the last one yielded,
        and watches from the revision of that read: the newest state is never skipped. Retries
        back off from 50 ms to 2 s, and a retry waiting out an outage goes as soon as the client
        hears etcd again (EtcdClient.pause); after _WATCH_FAILURES failures in a row (reads that
        etcd did not answer, watches that ended at once) it raises StoreUnavailable (the fleet's
        LocalCopy watches again once etcd answers), and a state that cannot be used raises
        StateError (the controller's follower logs it and watches again).
        """
        given = isinstance(since, int) and not isinstance(since, bool)
        last: int = since if isinstance(since, int) and given else 0
        failures = 0
        view: _View | None = None
        if given and last > 0:
            try:
                snapshot = await self._snapshot(last)
                # The header of a read at a past revision is the store's revision now, not that one.
                view = _View(self.prefix, snapshot.kvs, last)
            except RevisionCompacted:
                pass                     # read now instead
            except StoreUnavailable as exc:
                failures += 1
                log.warning("watch of %s cannot read revision %d (%s); reading the state again",
                            self.describe(), last, exc)
        while True:
            if view is None:
                snapshot = await self._reread(failures)
                view = _View(self.prefix, snapshot.kvs, snapshot.header)
                if snapshot.state is not None and snapshot.revision is not None \
                        and self._newer(snapshot.revision, last):
                    last = snapshot.revision
                    yield snapshot.state, last
            delivered = False
            try:
                async with self.client.watch(_View.first(self.prefix), view.header + 1,
                                             range_end=_View.end(self.prefix),
                                             idle_timeout=self.watch_idle_timeout) as events:
                    while True:
                        batch = await events.batch()
                        delivered, failures = True, 0
                        for revision, group in _revisions(batch):
                            if not view.apply(group):
                                continue
                            # The event of an own commit can come before its answer: wait for the
                            # answer, so that _own tells whether this change is news.
                            await self._settled.wait()
                            if not self._newer(revision, last):
                                continue
                            snapshot = self._assemble(view.kvs(), revision)
                            if snapshot.state is None or snapshot.revision is None:
                                continue
                            last = snapshot.revision
                            yield snapshot.state, last
            except (WatchCompacted, WatchStalled) as exc:
                log.info("watch of %s ended (%s); reading the state again", self.describe(), exc)
            except (EtcdError, StoreUnavailable) as exc:
                failures = 0 if delivered else failures + 1
                log.warning("watch of %s ended (%s); reading the state again", self.describe(), exc)
                if failures >= _WATCH_FAILURES:
                    raise self._unavailable(f"the watch failed {failures} times in a row: {exc}") from None
                if failures:
                    await self.client.pause(retry_delay(failures))
            view = None

    def _newer(self, revision: int | None, last: int) -> bool:
        """_newer: ``revision`` is news for a watch that yielded ``last``: after it, and not this store's own."""
        return revision is not None and revision > max(last, self._own)

    async def _reread(self, failures: int) -> _Snapshot:
        """_reread: `_snapshot` now, retried with backoff while etcd does not answer (see `watch`)."""
        while True:
            try:
                return await self._snapshot()
            except StoreUnavailable as exc:
                failures += 1
                if failures >= _WATCH_FAILURES:
                    raise self._unavailable(f"cannot read the state to watch it, {failures} times in a "
                                            f"row: {exc}") from None
                await self.client.pause(retry_delay(failures))


def _fold_drain(history: list[dict], generation: int, source: str, parts: dict[str, dict]) -> None:
    """_fold_drain: put the replicas' outcomes of one drain, summed, into the entry of its switch.

    The entry is the newest of ``generation`` switched away from ``source`` (as
    `add_drain_outcome`); one that carries a "drain" already keeps it. The summed "drain"
    also lists each replica's own outcome under "replicas".
    """
    for entry in reversed(history):
        if entry.get("generation") == generation and entry.get("from") == source:
            if "drain" not in entry:
                ordered = dict(sorted(parts.items()))
                summed = sum_drains(list(ordered.values()))
                summed["replicas"] = ordered
                entry.update(drain_fields(summed))
            return


def _checked_event(event: Any, source: str) -> dict:
    """_checked_event: ``event`` if it is a history event (an object with string "at" and "action")."""
    if not isinstance(event, dict) or not all(isinstance(event.get(key), str) for key in ("at", "action")):
        raise StateError(f"state {source}: refusing to store a history event without string "
                         f'"at" and "action": {event!r}')
    return copy.deepcopy(event)
