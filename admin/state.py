"""The control plane's persistent runtime state (SPEC §8), behind a store shaped for etcd.

The controller loads a `State` and its revision once at start, checks it against the config
with `State.check_environments`, and commits every mutation through a `StateStore` (a
compare-and-swap on the revision it read) before it acknowledges it. The state holds runtime
facts only (live, previous, generation, hold, lock, canary, attestations, server
registrations) and the history; server lists come from the config, or from a registration
only while the config's list it replaced is unchanged (its fingerprint, SPEC §8, §12). `FileStateStore` keeps it in one JSON file; an etcd
store (SPEC §9.2) implements the same `StateStore` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import difflib
import glob
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

try:
    import fcntl
except ImportError:        # Windows: FileStateStore locks within the process only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION", "FileStateStore", "Revision", "State", "StateConflict", "StateError",
    "StateNotDurable", "StateStore", "add_drain_outcome", "amend_event", "drain_fields",
]

FORMAT_VERSION = 1  # the "version" written with every state; a higher one is refused on load

Revision = str | int | None
"""Revision: what a store hands out with the state it read or wrote, handed back to `commit`.

Opaque to the controller, compared only by the store that issued it: etcd's revision of the
state key; for a file, a digest of the runtime facts it holds. None: nothing stored yet.
"""


class StateError(Exception):
    """StateError: a state that cannot be loaded or stored; the message names the store and why.

    Raised by `State.from_dict`, `State.check_environments` and the stores. At start it stops
    `cutover serve`; on commit the controller must not acknowledge the mutation.
    """


class StateNotDurable(StateError):
    """StateNotDurable: the new state is in the file, but syncing its folder failed.

    `revision` is the new state's. The controller applies the change (the file already holds
    it) and logs a warning.
    """

    def __init__(self, message: str, revision: Revision = None) -> None:
        super().__init__(message)
        self.revision = revision


class StateConflict(StateError):
    """StateConflict: a commit's expected revision is no longer the stored one; nothing was written.

    Another writer committed since this one read (another replica; for a file, another process
    on the same file). The controller reloads, applies what it finds and answers 409 conflict,
    as when the route moves while a flip's gates run.
    """


class _Invalid(Exception):
    """_Invalid: a problem with a state's data, before it is given a source to name."""


@dataclass(slots=True)
class State:
    """State: the runtime facts the controller owns and persists (SPEC §8).

    The controller mutates it in place and saves it after each mutation; `to_dict` and
    `from_dict` are the serialized form every store writes and reads.
    """

    live: str
    previous: str | None            # never equal to live
    generation: int                 # >= 1; +1 on every change of the route (SPEC §5)
    held: bool = False
    hold_until: float | None = None  # wall-clock epoch seconds when a hold resumes by itself
    locked: bool = False
    lock_reason: str | None = None
    canary: str | None = None       # the environment receiving the canary share; never live
    canary_weight: int = 0          # 0..100; above 0 only with a canary
    history: list[dict] = field(default_factory=list)  # SPEC §7 history events, oldest first
    # Schema-compatibility attestations (SPEC §6): {"from_version", "to_version", "by", "at"}.
    attestations: list[dict] = field(default_factory=list)
    # Server registrations (SPEC §12): environment -> {"servers": [{"address": "host:port",
    # "weight": int >= 1}, ...] (non-empty), "fingerprint": the config's list it replaced}.
    registrations: dict[str, dict] = field(default_factory=dict)

    def copy(self) -> State:
        """copy: a State with the same facts and lists of its own, to change without changing this
        one. The history's events are shared: an event changes only by being amended (a drain's
        outcome, a recovery time), which the copy's event should show too."""
        return replace(self, history=list(self.history), attestations=[dict(a) for a in self.attestations],
                       registrations=copy.deepcopy(self.registrations))

    def to_dict(self, history: bool = True) -> dict:
        """to_dict: the JSON-ready form, with the format version; stores call it to save.

        "registrations" is there only when there is one, so a state without any keeps the form
        it always had. ``history`` False leaves "history" out (the facts alone: what a file's
        revision digests, and the head the file store writes before its event lines).
        """
        out = {
            "version": FORMAT_VERSION,
            "live": self.live,
            "previous": self.previous,
            "generation": self.generation,
            "held": self.held,
            "hold_until": self.hold_until,
            "locked": self.locked,
            "lock_reason": self.lock_reason,
            "canary": self.canary,
            "canary_weight": self.canary_weight,
            "attestations": [dict(a) for a in self.attestations],
        }
        if history:
            out["history"] = [dict(event) for event in self.history]
        if self.registrations:
            out["registrations"] = {env: {"servers": [dict(s) for s in r["servers"]], "fingerprint": r["fingerprint"]}
                                    for env, r in self.registrations.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str) -> State:
        """from_dict: a validated State from `to_dict` output; stores call it to load.

        `source` is what `StateStore.describe()` returns ("file /var/lib/cutover/state.json");
        any wrong type, unknown key, value out of range or newer format version raises a
        StateError naming the key and the source.
        """
        try:
            return _parse(data)
        except _Invalid as err:
            raise StateError(f"state {source}: {err}") from None

    def check_environments(self, names: Iterable[str], source: str) -> None:
        """check_environments: the controller calls it at start with the config's environments.

        A state naming an environment the config has not got (as live, previous or canary, or
        with a server registration) is an error, not silently dropped (SPEC §8). History
        entries are not checked: they record what was true then.
        """
        known = list(names)
        for name in (self.live, self.previous, self.canary, *self.registrations):
            if name is not None and name not in known:
                raise StateError(
                    f'state {source} names environment "{name}", '
                    f"which config has not got ({', '.join(known)})"
                )


def drain_fields(outcome: dict) -> dict:
    """drain_fields: what a drain's outcome adds to its switch's history entry (SPEC §5).

    The whole `Drain.result()` under "drain", and its three counts at the top of the entry.
    The controller (for its copy of the history) and the stores call it.
    """
    return {"drain": dict(outcome), **{key: outcome[key] for key in ("drained", "forced_closed", "dropped")}}


def add_drain_outcome(history: list[dict], generation: int, source: str, outcome: dict) -> bool:
    """add_drain_outcome: add `outcome` to the newest entry of `generation` switched away from `source`.

    The entry of the switch that started the drain: its "generation" is the one the switch
    made and its "from" the environment that drained. An entry that has a drain outcome already
    keeps it. Returns whether an entry took it (False when it is no longer in the history).
    """
    index = _drain_entry(history, generation, source)
    if index is None:
        return False
    history[index].update(drain_fields(outcome))
    return True


def amend_event(history: list[dict], event: dict, fields: dict) -> bool:
    """amend_event: add `fields` to the newest entry that is `event` (same "at", "action", "generation").

    Those three name an entry: one controller records one event at a time, each with the time
    it was recorded. Returns whether an entry took them (False when it is no longer there).
    """
    index = _event_entry(history, event)
    if index is None:
        return False
    history[index].update(fields)
    return True


def _drain_entry(history: list[dict], generation: int, source: str) -> int | None:
    """_drain_entry: the index of the entry `add_drain_outcome` would give a drain outcome, or None."""
    for index in range(len(history) - 1, -1, -1):
        entry = history[index]
        if entry.get("generation") == generation and entry.get("from") == source:
            return None if "drain" in entry else index
    return None


def _event_entry(history: list[dict], event: dict) -> int | None:
    """_event_entry: the index of the newest entry that is `event` (see `amend_event`), or None."""
    key = (event.get("at"), event.get("action"), event.get("generation"))
    for index in range(len(history) - 1, -1, -1):
        entry = history[index]
        if (entry.get("at"), entry.get("action"), entry.get("generation")) == key:
            return index
    return None


class StateStore(Protocol):
    """StateStore: where the controller keeps its State; one per control plane (SPEC §8, §9.2).

    Shaped for etcd, which a file can also do. The runtime facts (everything but history) change
    only through `commit`, a compare-and-swap on the revision the caller last read or wrote.
    History is added to, never rewritten whole by the caller: a mutation's event goes with its
    commit, and `append`, `amend` and `add_drain` add events or fields to one. `watch` reports
    commits made elsewhere. Every method is called from the event loop and none blocks it; a
    store copies what it needs of its arguments before its first await.
    """

    history_limit: int  # events kept, the newest; the controller trims its own copy the same

    def describe(self) -> str:
        """describe: where the state lives, for messages ("file /var/lib/cutover/state.json")."""
        ...

    def info(self) -> dict:
        """info: the status's "store": {"kind": "file", "path"}, or etcd's {"kind", "connected", ...}."""
        ...

    async def load(self) -> tuple[State | None, Revision]:
        """load: the stored State and its revision; (None, None) when nothing was stored yet.

        StateError when what is stored is unusable.
        """
        ...

    async def commit(self, state: State, expect: Revision, event: dict | None = None) -> Revision:
        """commit: store `state`'s runtime facts if the stored revision is still `expect`.

        `event`, when given, is added to the history in the same write (etcd: the same
        transaction); `state.history` itself is not written, the store keeps its own. Returns the
        new revision, durable on return. StateConflict when the stored state moved since
        `expect` (nothing written); StateNotDurable when written but maybe not durable (its
        `revision` is the new one); any other StateError: nothing written.
        """
        ...

    async def append(self, event: dict) -> None:
        """append: add one history event that changes no runtime fact; durable on return.

        A mutation's own event goes with its `commit` instead. etcd: one key per event, so no
        other event is rewritten. StateError when not stored.
        """
        ...

    async def amend(self, event: dict, fields: dict) -> None:
        """amend: add `fields` to the history entry `event` (see `amend_event`); durable on return.

        The controller adds what it learns after the answer: a rollback's recovery time, how
        many held requests a resume released. Nothing happens when the entry is gone.
        """
        ...

    async def add_drain(self, generation: int, source: str, outcome: dict) -> None:
        """add_drain: add a drain's outcome to the entry of the switch that started it (SPEC §5).

        `generation` is the switch's, `source` the environment that drained, `outcome` what
        `Drain.result()` gave; see `add_drain_outcome`. Durable on return. etcd: a key per
        replica's outcome beside the entry's key, summed when read (SPEC §9.2), so the
        replicas never rewrite one another's entry.
        """
        ...

    def watch(self, since: Revision) -> AsyncIterator[tuple[State, Revision]]:
        """watch: each state committed elsewhere after revision `since`, with its revision, in order.

        The controller's follower consumes it for as long as the controller runs and stops it
        by cancelling its task. A store raises StateError when it cannot watch (the follower
        logs it and watches again).
        """
        ...


class FileStateStore:
    """FileStateStore: the State as one JSON file, replaced atomically on every change.

    serve builds one from the config's state path. Every change is a check of the file, the
    change, and a write: a temp file in the same folder, fsynced, renamed over the target, then
    the folder fsynced, so after a crash (kill -9 included) the file holds either the old or the
    new state, whole. The check, the change and the write run under a lock on the folder, from a
    thread (the event loop is never blocked by the disk).

    The revision is a digest of the runtime facts the file holds, so `commit` refuses when the
    file no longer holds what this store last read or wrote, and appending history does not
    move it. A file holds its history inline, so `append`, `amend` and `add_drain` rewrite the
    one file (an etcd store keeps one key per event instead). What the store last read or wrote
    is kept with the file's identity then (inode, size, mtime): while the file is that one, a
    change neither re-reads nor re-parses it, and only the events it adds or amends are encoded
    again (the file is written one history event per line), so a change costs about one fsync
    with a full history, not a parse and an encode of it. One router per state file is the
    setup it is for (a fleet shares etcd, SPEC §9.2): a second writer on the same file is caught
    by `commit`'s check (its rename gives the file a new identity), never reported by `watch`,
    which reports nothing.
    """

    __slots__ = ("path", "history_limit", "_known")

    def __init__(self, path: Path | str, history_limit: int = 1000) -> None:
        if history_limit < 0:
            raise ValueError(f"history_limit must be >= 0, not {history_limit}")
        self.path = Path(path)
        self.history_limit = history_limit  # events kept on save, newest ones
        self._known: _Known | None = None   # the file as this store last read or wrote it

    def describe(self) -> str:
        """describe: "file <path>", the source named in every StateError from this store."""
        return f"file {self.path}"

    def info(self) -> dict:
        """info: GET /v1/status's "store" (SPEC §9.2): this file."""
        return {"kind": "file", "path": str(self.path), "connected": True}

    async def load(self) -> tuple[State | None, Revision]:
        """load: `read` from a thread; the controller calls it after a commit's conflict."""
        return await asyncio.to_thread(self.read)

    def read(self) -> tuple[State | None, Revision]:
        """read: the State in the file and its revision, blocking; (None, None) when there is no file.

        check_start (serve and check-config) calls it once; `load` after a conflict. An
        unreadable file, invalid JSON or a wrong shape is a StateError: a corrupt state must
        stop the start, not be silently replaced. The State returned is the caller's own.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as err:
            reason = _os_reason(err)
            raise StateError(f"state {self.describe()}: cannot read it: {reason}") from None
        if not raw.strip():
            raise StateError(f"state {self.describe()}: the file is empty")
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise StateError(f"state {self.describe()}: not valid JSON: {err}") from None
        state = State.from_dict(data, self.describe())
        return state, _revision(state)

    async def commit(self, state: State, expect: Revision, event: dict | None = None) -> Revision:
        """commit: write `state`'s facts and the file's history plus `event`, if the file still has `expect`.

        See `StateStore.commit`. The conflict check compares the facts the file holds now with
        the ones this store read or wrote last (`expect`).
        """
        facts = replace(state, history=[], attestations=[dict(a) for a in state.attestations])
        added = copy.deepcopy(event) if event is not None else None
        return await asyncio.to_thread(self._commit, facts, expect, added)

    def _commit(self, facts: State, expect: Revision, event: dict | None) -> Revision:
        with self._locked():
            known = self._current()
            revision = known.revision if known is not None else None
            if revision != expect:
                now = f"generation {known.state.generation}" if known is not None else "no file"
                raise StateConflict(f"state {self.describe()} changed since this router read it "
                                    f"(it now holds {now}); nothing written")
            history = list(known.state.history) if known is not None else []
            lines = list(known.lines) if known is not None else []
            if event is not None:
                history.append(event)
                lines.append(_event_line(event, self.path))
            facts.history = history
            return self._write(facts, lines, check=[event] if event is not None else [])

    async def append(self, event: dict) -> None:
        """append: see `StateStore.append`; the file rewritten under its lock, one event encoded."""
        added = copy.deepcopy(event)

        def add(history: list[dict], lines: list[bytes]) -> list[dict]:
            history.append(added)
            lines.append(_event_line(added, self.path))
            return [added]

        await asyncio.to_thread(self._change_history, add)

    async def amend(self, event: dict, fields: dict) -> None:
        """amend: see `StateStore.amend`; no write when the entry is no longer in the file."""
        key, added = dict(event), copy.deepcopy(fields)
        await asyncio.to_thread(self._change_history,
                                lambda history, lines: self._update(history, lines,
                                                                    _event_entry(history, key), added))

    async def add_drain(self, generation: int, source: str, outcome: dict) -> None:
        """add_drain: see `StateStore.add_drain`; no write when the entry is gone or has one already."""
        added = drain_fields(copy.deepcopy(outcome))
        await asyncio.to_thread(
            self._change_history,
            lambda history, lines: self._update(history, lines,
                                                _drain_entry(history, generation, source), added))

    def _update(self, history: list[dict], lines: list[bytes], index: int | None,
                fields: dict) -> list[dict]:
        """_update: entry `index` of `history` replaced by a copy with `fields`, its line encoded again."""
        if index is None:
            return []
        entry = {**history[index], **fields}
        history[index] = entry
        lines[index] = _event_line(entry, self.path)
        return [entry]

    def _change_history(self, change: Callable[[list[dict], list[bytes]], list[dict]]) -> None:
        """_change_history: let `change` edit copies of the file's history and its lines; write if it did.

        `change` returns the events it added or changed (checked before the write), none for
        no change.
        """
        with self._locked():
            known = self._current()
            if known is None:
                raise StateError(f"state {self.describe()}: no state saved yet to add history to")
            history, lines = list(known.state.history), list(known.lines)
            changed = change(history, lines)
            if changed:
                self._write(replace(known.state, history=history), lines, check=changed)

    async def watch(self, since: Revision) -> AsyncIterator[tuple[State, Revision]]:
        """watch: reports nothing, ever: a file tells no one it changed (see the class docstring).

        It waits until its consumer cancels it, as a store with other writers would wait for
        their next commit.
        """
        news: asyncio.Future[tuple[State, Revision]] = asyncio.get_running_loop().create_future()
        yield await news   # never done: nothing reports a change to a file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """_locked: hold the folder's lock around a read-check-save (creating the folder first).

        flock on the folder, so two stores on one file, in one process or two, take turns; it
        waits at most _LOCK_WAIT seconds, then StateError. Without flock (Windows) a lock of
        this process stands in.
        """
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(f"cannot save state to {self.path}: {_os_reason(err)}") from None
        if fcntl is None:
            with _PROCESS_LOCK:
                yield
            return
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as err:
            raise StateError(f"cannot save state to {self.path}: {_os_reason(err)}") from None
        try:
            deadline = time.monotonic() + _LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateError(f"cannot save state to {self.path}: another process has "
                                         f"held the lock on {folder} for {_LOCK_WAIT:g}s") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)   # closing the descriptor releases the lock

    def remove_leftovers(self) -> list[Path]:
        """remove_leftovers: serve calls it once at start, before the first save.

        A process killed between mkstemp and rename leaves a `.<name>.*.tmp` beside the state
        file; the rename never happened, so the state file is whole and the temp file is
        garbage. Returns the paths removed; one that cannot be removed is left, not an error.
        check-config never calls it: a running router may be writing its temp file right now.
        """
        removed = []
        if not self.path.parent.is_dir():
            return removed
        with self._locked():     # temp files are written only under this lock: what is seen here is left over
            for temp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                try:
                    temp.unlink()
                except OSError:
                    continue
                removed.append(temp)
        return removed

    def save(self, state: State) -> Revision:
        """save: replace the file with `state`, history included, durably; returns its revision.

        Blocking, no check and no lock of its own: tools and tests call it to seed a state file
        no router is using (the changes above write through `_write` under the lock). History is
        trimmed to the newest `history_limit` events, in the file and in `state.history`. On
        failure a StateError names the path and the OS error, the old file is left intact and no
        temp file is left behind; StateNotDurable when only the folder's fsync failed.
        """
        lines = [_event_line(event, self.path) for event in state.history]
        revision = self._write(state, lines, check=state.history)
        state.history[:] = state.history[-self.history_limit:] if self.history_limit else []
        return revision

    def _current(self) -> _Known | None:
        """_current: the file as it is now, from what this store knows while the file is unchanged.

        Called under the lock. None when there is no file; a file some other writer replaced
        (or a tool edited) is read and parsed again.
        """
        try:
            identity = _identity(os.stat(self.path))
        except FileNotFoundError:
            self._known = None
            return None
        except OSError as err:
            raise StateError(f"state {self.describe()}: cannot read it: {_os_reason(err)}") from None
        known = self._known
        if known is not None and known.identity == identity:
            return known
        self._known = None
        state, revision = self.read()
        if state is None:
            return None
        lines = [_event_line(event, self.path) for event in state.history]
        known = _Known(identity, state, lines, str(revision))
        self._known = known if _identity(os.stat(self.path)) == identity else None
        return known

    def _write(self, state: State, lines: list[bytes], check: list[dict]) -> Revision:
        """_write: replace the file with `state`'s facts and `lines` (its history, one event each).

        `check`: the events not yet validated (the others came from a file already checked).
        History is trimmed to the newest `history_limit` events. What is written becomes what
        this store knows; on any failure it forgets, and the next change reads the file again.
        """
        self._known = None
        keep = self.history_limit
        history = state.history[-keep:] if keep else []
        lines = lines[-keep:] if keep else []
        facts = state.to_dict(history=False)
        try:
            _parse({**facts, "history": check})
            head = json.dumps(facts, sort_keys=True, indent=1, allow_nan=False)
        except _Invalid as err:
            raise StateError(f"refusing to save an invalid state to {self.path}: {err}") from None
        except (TypeError, ValueError) as err:
            raise StateError(f"refusing to save a state to {self.path}: not JSON: {err}") from None
        # "history" goes last, one event per line, so a change encodes only the events it touched
        body = b",\n".join(lines)
        payload = b"".join((head[:-2].encode(), b',\n "history": [\n', body,
                            b"\n ]\n}\n" if lines else b"]\n}\n"))

        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as err:
            raise StateError(f"cannot save state to {self.path}: {_os_reason(err)}") from None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
                identity = _identity(os.fstat(file.fileno()))
            os.replace(temp, self.path)
        except BaseException as err:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise StateError(f"cannot save state to {self.path}: {_os_reason(err)}") from None
            raise
        written = replace(state, history=history)
        revision = _revision(written)
        try:
            _fsync_folder(folder)
        except OSError as err:
            raise StateNotDurable(
                f"state written to {self.path}, but syncing its folder failed, so the rename "
                f"may not survive a crash: {_os_reason(err)}", revision
            ) from None
        self._known = _Known(identity, written, lines, revision)
        return revision


@dataclass(frozen=True, slots=True)
class _Known:
    """_Known: a state file as a FileStateStore last read or wrote it; never changed in place."""

    identity: tuple[int, int, int, int]  # the file's (device, inode, size, mtime_ns) then
    state: State                          # its facts and history (the lists are not changed)
    lines: list[bytes]                    # its history events, each encoded, same order
    revision: str


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """_identity: what tells one state file from the next: every write renames a new inode in."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _event_line(event: dict, path: Path) -> bytes:
    """_event_line: one history event as the file holds it: compact JSON, keys sorted, one line."""
    try:
        return json.dumps(event, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise StateError(f"refusing to save a state to {path}: history is not JSON: {err}") from None


_LOCK_WAIT = 10.0                  # seconds a change waits for another process's lock on the folder
_PROCESS_LOCK = threading.Lock()   # where there is no flock


def _revision(state: State) -> str:
    """_revision: a FileStateStore's revision, a digest of every runtime fact (all but history)."""
    facts = state.to_dict(history=False)
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fsync_folder(folder: Path) -> None:
    """_fsync_folder: make a rename inside `folder` durable (POSIX; Windows cannot open folders)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(err: OSError) -> str:
    """_os_reason: an OSError as "strerror (errno N)" without repeating the file name."""
    if err.strerror:
        return f"{err.strerror} (errno {err.errno})" if err.errno else err.strerror
    return str(err) or type(err).__name__


_FIELDS = (
    "version", "live", "previous", "generation", "held", "hold_until",
    "locked", "lock_reason", "canary", "canary_weight", "history", "attestations", "registrations",
)
_REQUIRED = ("version", "live", "generation")


def _parse(data: Any) -> State:
    """_parse: from_dict and FileStateStore.save share it; raises _Invalid with the problem."""
    if not isinstance(data, dict):
        raise _Invalid(f"must be a JSON object, not {_kind(data)}")
    if "version" not in data:
        raise _Invalid('"version" is missing')
    version = _int(data, "version")
    if version > FORMAT_VERSION:
        raise _Invalid(
            f"format version {version} was written by a newer cutover "
            f"(this one reads version {FORMAT_VERSION})"
        )
    if version < 1:
        raise _Invalid(f'"version" must be >= 1, not {version}')
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise _Invalid(f'unknown key "{key}"{hint}')
    for key in _REQUIRED:
        if key not in data:
            raise _Invalid(f'"{key}" is missing')

    live = _name(data, "live")
    if live is None:
        raise _Invalid('"live" must be an environment name, not null')
    previous = _name(data, "previous")
    generation = _int(data, "generation")
    if generation < 1:
        raise _Invalid(f'"generation" must be >= 1, not {generation}')
    held = _bool(data, "held")
    hold_until = data.get("hold_until")
    if hold_until is not None:
        if isinstance(hold_until, bool) or not isinstance(hold_until, (int, float)):
            raise _Invalid(f'"hold_until" must be epoch seconds or null, not {_kind(hold_until)}')
        if not math.isfinite(hold_until):
            raise _Invalid(f'"hold_until" must be finite, not {hold_until}')
        hold_until = float(hold_until)
    locked = _bool(data, "locked")
    lock_reason = data.get("lock_reason")
    if lock_reason is not None and not isinstance(lock_reason, str):
        raise _Invalid(f'"lock_reason" must be a string or null, not {_kind(lock_reason)}')
    canary = _name(data, "canary")
    canary_weight = _int(data, "canary_weight") if "canary_weight" in data else 0
    if not 0 <= canary_weight <= 100:
        raise _Invalid(f'"canary_weight" must be 0..100, not {canary_weight}')
    history = _history(data.get("history", []))
    attestations = _attestations(data.get("attestations", []))
    registrations = _registrations(data.get("registrations", {}))

    if previous == live:
        raise _Invalid(f'"previous" must differ from "live", both are "{live}"')
    if canary == live:
        raise _Invalid(f'"canary" must be the idle environment, not the live one "{live}"')
    if canary_weight and canary is None:
        raise _Invalid(f'"canary_weight" is {canary_weight} but "canary" is null')
    return State(
        live=live, previous=previous, generation=generation, held=held, hold_until=hold_until,
        locked=locked, lock_reason=lock_reason, canary=canary, canary_weight=canary_weight,
        history=history, attestations=attestations, registrations=registrations,
    )


def _attestations(value: Any) -> list[dict]:
    """_attestations: a copy of the attestation list; each with string from_version and to_version."""
    if not isinstance(value, list):
        raise _Invalid(f'"attestations" must be a list, not {_kind(value)}')
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Invalid(f'"attestations[{index}]" must be an object, not {_kind(item)}')
        for key in ("from_version", "to_version"):
            if not isinstance(item.get(key), str):
                raise _Invalid(f'"attestations[{index}].{key}" must be a string')
        out.append(dict(item))
    return out


def _registrations(value: Any) -> dict[str, dict]:
    """_registrations: a copy of the server registrations, each {"servers": [...], "fingerprint"}.

    Only the shape is checked here; the Controller checks the addresses as the config's at start.
    """
    if not isinstance(value, dict):
        raise _Invalid(f'"registrations" must be an object, not {_kind(value)}')
    out = {}
    for env, item in value.items():
        where = f"registrations.{env}"
        if not env:
            raise _Invalid('"registrations" has an empty environment name')
        if not isinstance(item, dict):
            raise _Invalid(f'"{where}" must be an object, not {_kind(item)}')
        for key in item:
            if key not in ("servers", "fingerprint"):
                raise _Invalid(f'unknown key "{where}.{key}"')
        if not isinstance(item.get("fingerprint"), str) or not item["fingerprint"]:
            raise _Invalid(f'"{where}.fingerprint" must be a non-empty string, not {_kind(item.get("fingerprint"))}')
        servers = item.get("servers")
        if not isinstance(servers, list) or not servers:
            raise _Invalid(f'"{where}.servers" must be a non-empty list, not {_kind(servers)}')
        copied = []
        for index, server in enumerate(servers):
            at = f"{where}.servers[{index}]"
            if not isinstance(server, dict) or set(server) - {"address", "weight"}:
                raise _Invalid(f'"{at}" must be an object with "address" and "weight", not {_kind(server)}')
            if not isinstance(server.get("address"), str):
                raise _Invalid(f'"{at}.address" must be a string, not {_kind(server.get("address"))}')
            weight = server.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise _Invalid(f'"{at}.weight" must be an integer >= 1, not {_kind(weight)}')
            copied.append({"address": server["address"], "weight": weight})
        out[env] = {"servers": copied, "fingerprint": item["fingerprint"]}
    return out


def _history(value: Any) -> list[dict]:
    """_history: a copy of the event list; each event an object with string "at" and "action"."""
    if not isinstance(value, list):
        raise _Invalid(f'"history" must be a list, not {_kind(value)}')
    events = []
    for index, event in enumerate(value):
        if not isinstance(event, dict):
            raise _Invalid(f'"history[{index}]" must be an object, not {_kind(event)}')
        for key in ("at", "action"):
            if not isinstance(event.get(key), str):
                kind = _kind(event.get(key))
                raise _Invalid(f'"history[{index}].{key}" must be a string, not {kind}')
        events.append(dict(event))
    return events


def _name(data: dict, key: str) -> str | None:
    """_name: an environment name (non-empty string) or None."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f'"{key}" must be an environment name or null, not {_kind(value)}')
    return value


def _int(data: dict, key: str) -> int:
    """_int: an integer (a JSON bool is not one)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f'"{key}" must be an integer, not {_kind(value)}')
    return value


def _bool(data: dict, key: str) -> bool:
    """_bool: true or false; missing means false."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _Invalid(f'"{key}" must be true or false, not {_kind(value)}')
    return value


def _kind(value: Any) -> str:
    """_kind: a value as an error message shows it: its JSON type and, if short, itself."""
    kinds = {type(None): "null", bool: "boolean", int: "number", float: "number",
             str: "string", list: "list", dict: "object"}
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, (bool, int, float, str)) and len(repr(value)) <= 40:
        return f"{kind} {json.dumps(value)}"
    return kind
