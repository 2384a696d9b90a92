"""The control plane's persistent runtime state (SPEC §8), behind a small store interface.

The controller loads a `State` once at start, checks it against the config with
`State.check_environments`, and saves it through a `StateStore` before it acknowledges any
mutation. The state holds runtime facts only (live, previous, generation, hold, lock, canary,
history); server lists always come from the config. `FileStateStore` keeps it in one JSON
file; an etcd store (SPEC §9) implements the same `StateStore` protocol.
"""

from __future__ import annotations

import difflib
import glob
import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FORMAT_VERSION", "FileStateStore", "State", "StateError", "StateNotDurable", "StateStore"]

FORMAT_VERSION = 1  # the "version" written with every state; a higher one is refused on load


class StateError(Exception):
    """StateError: a state that cannot be loaded or saved; the message names the store and why.

    Raised by `State.from_dict`, `State.check_environments` and the stores. At start it stops
    `cutover serve`; on save the controller must not acknowledge the mutation.
    """


class StateNotDurable(StateError):
    """StateNotDurable: the new state is in the file, but syncing its folder failed.

    The controller applies the change (the file already holds it) and logs a warning.
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

    def to_dict(self) -> dict:
        """to_dict: the JSON-ready form, with the format version; stores call it to save."""
        return {
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
            "history": [dict(event) for event in self.history],
            "attestations": [dict(a) for a in self.attestations],
        }

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

        A state naming an environment the config has not got (as live, previous or canary) is
        an error, not silently dropped (SPEC §8). History entries are not checked: they record
        what was true then.
        """
        known = list(names)
        for name in (self.live, self.previous, self.canary):
            if name is not None and name not in known:
                raise StateError(
                    f'state {source} names environment "{name}", '
                    f"which config has not got ({', '.join(known)})"
                )


class StateStore(Protocol):
    """StateStore: where the controller keeps its State; one per control plane."""

    def load(self) -> State | None:
        """load: the saved State, or None when nothing was saved yet; StateError if unusable."""
        ...

    def save(self, state: State) -> None:
        """save: store the State durably before returning; StateError if that failed.

        A store may trim `state.history` in place to the events it keeps.
        """
        ...

    def describe(self) -> str:
        """describe: where the state lives, for messages ("file /var/lib/cutover/state.json")."""
        ...


class FileStateStore:
    """FileStateStore: the State as one JSON file, replaced atomically on every save.

    The controller creates one from the config's state path. A save writes a temp file in the
    same folder, fsyncs it, renames it over the target and fsyncs the folder, so after a crash
    the file holds either the old or the new state, whole.
    """

    __slots__ = ("path", "history_limit")

    def __init__(self, path: Path | str, history_limit: int = 1000) -> None:
        if history_limit < 0:
            raise ValueError(f"history_limit must be >= 0, not {history_limit}")
        self.path = Path(path)
        self.history_limit = history_limit  # events kept on save, newest ones

    def describe(self) -> str:
        """describe: "file <path>", the source named in every StateError from this store."""
        return f"file {self.path}"

    def load(self) -> State | None:
        """load: the controller calls it once at start; None when the file does not exist.

        An unreadable file, invalid JSON or a wrong shape is a StateError: a corrupt state
        must stop the start, not be silently replaced.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            reason = _os_reason(err)
            raise StateError(f"state {self.describe()}: cannot read it: {reason}") from None
        if not raw.strip():
            raise StateError(f"state {self.describe()}: the file is empty")
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise StateError(f"state {self.describe()}: not valid JSON: {err}") from None
        return State.from_dict(data, self.describe())

    def remove_leftovers(self) -> list[Path]:
        """remove_leftovers: serve calls it once at start, before the first save.

        A process killed between mkstemp and rename leaves a `.<name>.*.tmp` beside the state
        file; the rename never happened, so the state file is whole and the temp file is
        garbage. Returns the paths removed; one that cannot be removed is left, not an error.
        check-config never calls it: a running router may be writing its temp file right now.
        """
        removed = []
        for temp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            try:
                temp.unlink()
            except OSError:
                continue
            removed.append(temp)
        return removed

    def save(self, state: State) -> None:
        """save: the controller calls it before acknowledging a mutation; durable on return.

        History is trimmed to the newest `history_limit` events, in the file and in
        `state.history`. On failure a StateError names the path and the OS error, the old file
        is left intact and no temp file is left behind.
        """
        data = state.to_dict()
        kept = data["history"][-self.history_limit:] if self.history_limit else []
        data["history"] = kept
        try:
            _parse(data)
            payload = (json.dumps(data, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()
        except _Invalid as err:
            raise StateError(f"refusing to save an invalid state to {self.path}: {err}") from None
        except (TypeError, ValueError) as err:
            raise StateError(
                f"refusing to save a state to {self.path}: history is not JSON: {err}"
            ) from None

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
            os.replace(temp, self.path)
        except BaseException as err:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise StateError(f"cannot save state to {self.path}: {_os_reason(err)}") from None
            raise
        try:
            _fsync_folder(folder)
        except OSError as err:
            raise StateNotDurable(
                f"state written to {self.path}, but syncing its folder failed, so the rename "
                f"may not survive a crash: {_os_reason(err)}"
            ) from None
        state.history[:] = kept


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
    "locked", "lock_reason", "canary", "canary_weight", "history", "attestations",
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

    if previous == live:
        raise _Invalid(f'"previous" must differ from "live", both are "{live}"')
    if canary == live:
        raise _Invalid(f'"canary" must be the idle environment, not the live one "{live}"')
    if canary_weight and canary is None:
        raise _Invalid(f'"canary_weight" is {canary_weight} but "canary" is null')
    return State(
        live=live, previous=previous, generation=generation, held=held, hold_until=hold_until,
        locked=locked, lock_reason=lock_reason, canary=canary, canary_weight=canary_weight,
        history=history, attestations=attestations,
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
