"""Controller: the only thing that changes the route, writes the state and the history.

The admin API and the CLI (through the API) call one method per mutation.
Each mutation runs under one lock, so compare-and-swap and gates see a
stable route; it builds the new State, saves it through the store (so an
acknowledged change survives a crash), then sends it to the data plane as one
Change (plane.py) and answers once the Ack is back. It reads the data plane
only through snapshots. The hold is the Controller's: the State keeps its
deadline and the Controller runs the one timer that ends it; the data plane
only holds and releases. Domain errors are ControlError with a stable code;
api.py maps codes to HTTP statuses in one table.

Server lists come from the config, or from a registration (SPEC §12: ``register_servers``,
``reset_servers``), a runtime fact kept in the State with the fingerprint of the config's list
it replaced. At start, and when a state committed elsewhere is taken, a registration whose
fingerprint no longer matches the config's list is dropped (the config wins), with a
``servers_reset`` history event that says why. A registration changes no route generation.

``reload`` re-reads the config file (SPEC §12): validated whole, refused when it changes what
needs a restart (admin/reload.py), else applied to the data plane as one Change (settings
and server lists) and recorded as a ``reload`` event naming the keys that changed.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, NoReturn

from proxy import Address, DrainSnapshot, EnvironmentConfig, EnvironmentSnapshot, Route, merge_drains

from .analysis import Analysis
from .config import Config, ConfigError, load_config, parse_address, parse_servers
from .gates import GateInputs, GateResult, listen_url, run_gates
from .plane import Ack, Change, DataPlane, Hold
from .reload import changed_keys, restart_keys, tls_digests
from .state import (Revision, State, StateConflict, StateError, StateNotDurable, StateStore, amend_event,
                    drain_fields)

log = logging.getLogger("cutover.controller")

_RESUME_RETRY = 1.0  # seconds before a timed-out hold's resume is saved again after the store failed
_WATCH_RETRY = 1.0   # seconds before the follower watches the store again after a failed watch


class ControlError(Exception):
    """ControlError: a refused admin call: a stable code, a message for a person, extra answer fields.

    Raised by the Controller and the admin modules before it (request parsing, auth,
    idempotency); api.py's STATUS table gives each code its HTTP status.
    """

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra

    @property
    def status(self) -> int:
        """status: the HTTP status api.STATUS maps this code to (the answer's and the log line's)."""
        from .api import status_of   # api.py imports this module: look the table up when asked
        return status_of(self.code)


@dataclass(frozen=True, slots=True)
class Caller:
    """Caller: who asked for a mutation, as its history entry records it (SPEC §7 "actor", "client").

    The admin API builds one per call; what cutover does by itself (auto-rollback, a hold
    timing out) records INTERNAL.
    """

    actor: str = "cutover"       # "admin" | "read" (a token's scope) | "none" (auth off) | "cutover"
    client: str | None = None    # the client's address; never a token


INTERNAL = Caller()


def now_iso() -> str:
    """now_iso: the current time as ISO-8601 UTC with milliseconds, as history entries carry it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Controller:
    """Controller: flip, rollback, hold, lock and canary over a DataPlane, persisted in a StateStore."""

    def __init__(self, config: Config, plane: DataPlane, store: StateStore, state: State,
                 revision: Revision = None) -> None:
        self.config = config
        self.plane = plane
        self.environments = tuple(config.environments)   # in config order, as the data plane has them
        self.store = store
        self.state = state
        self.lock = asyncio.Lock()          # one mutation at a time
        self.save_lock = asyncio.Lock()     # one store write at a time
        self.revision = revision            # the store's revision of ``state``: what the next commit expects
        self._later: collections.deque[Callable[[], Awaitable[None]]] = collections.deque()  # detail writes
        self._detail_task: asyncio.Task | None = None
        self._follow_task: asyncio.Task | None = None   # takes what the store reports committed elsewhere
        self._details: dict[tuple[int, str], dict] = {}   # drain outcomes by (generation, from)
        self.counts = {action: 0 for action in ("flip", "rollback", "auto_rollback", "promote", "canary", "abort")}
        self.drain_counts = {"drained": 0, "forced_closed": 0, "dropped": 0, "client_gone": 0}
        self.last_recovery_ms: float | None = None
        # Reloads by result: applied, unchanged, config_invalid, restart_required (cutover_reloads_total).
        self.reload_counts = {"applied": 0, "unchanged": 0, "config_invalid": 0, "restart_required": 0}
        self._tls_files = tls_digests(config)     # what the TLS files held when this config was applied
        self.analysis: Analysis | None = None   # the watch over the last flip or promote
        self._analyses: dict[int, Analysis] = {}  # the last few watches, by the generation they watch
        self.gate_counts: dict[tuple[str, str], int] = {}        # (gate, passed|failed) -> runs
        self.analysis_counts: dict[str, int] = {}                # finished analyses by outcome
        # A fleet replica's record of its analyses in etcd (admin/fleet/analyses.py): called with
        # (generation, "running") when one starts and (generation, outcome) when it ends.
        self.on_analysis: Callable[[int, str], None] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None      # ends the current hold at its deadline
        self._released_unsaved = 0     # requests a timed-out hold released while its resume could not be saved
        self._ack: Ack | None = None   # the Ack of the change the mutation being answered made
        # Server list changes this controller recorded, by tag: the history event, and the
        # outcome of the drain of the servers each removed, summed over the parts reported.
        self._server_changes: dict[str, dict] = {}
        # Counts the changes of the server lists on the data plane (a registration, a reset, a
        # reload, a list dropped or taken): a flip whose gates checked the lists before one of
        # them is a conflict, as one whose route moved (_check_unchanged).
        self.servers_epoch = 0
        # Called with (new config, changed keys) once a reload applied, before its answer: what
        # lives outside the controller and the data plane follows (serve: logging, the admin
        # tokens, the planes' ack_timeout).
        self.on_reload: list[Callable[[Config, list[str]], None]] = []
        plane.on_drain(self._drain_finished)

    # ------------------------------------------------------------ building

    @staticmethod
    async def initial_state(config: Config, store: StateStore) -> tuple[State, Revision]:
        """initial_state: the stored state checked against the config (or a fresh one), and its revision.

        For a start from any store; check_start reads a state file itself (check-config is
        synchronous) and hands the Controller the revision it read.
        """
        saved, revision = await store.load()
        return Controller.checked_state(config, saved, store.describe()), revision

    @staticmethod
    def checked_state(config: Config, saved: State | None, source: str) -> State:
        """checked_state: ``saved`` checked against the config, or a fresh state when None.

        Called through initial_state, and by check_start (serve and check-config), which need
        to know whether a state was saved. StateError when it names an unknown environment.
        """
        if saved is None:
            return State(live=config.live, previous=None, generation=1)
        saved.check_environments(config.environments, source)
        return saved

    @staticmethod
    def route_of(state: State, environments: tuple[str, ...]) -> Route:
        """route_of: the Route a state stands for."""
        return Route(state.generation, state.live, previous=state.previous, canary=state.canary,
                     canary_weight=state.canary_weight, environments=environments)

    async def start(self) -> None:
        """start: put a saved hold back on the data plane (serve's start-up calls it once).

        The plane was built serving route_of(state); a hold saved with a deadline still ahead
        holds again until that same deadline, one that passed meanwhile is recorded as resumed.
        The config's server lists it was built with give way to the registrations still valid
        (those whose config list changed are dropped first, see _drop_stale).
        """
        await self._drop_stale("at start")
        lists = {name: self.servers_of(self.state, name) for name in self.state.registrations}
        if lists:
            await self.plane.apply(Change(servers=lists, servers_at_start=True, revision=self.revision))
        if self.state.held:
            remaining = (self.state.hold_until or 0) - time.time()
            if remaining > 0:
                await self.plane.apply(Change(hold=Hold(True, self.state.hold_until), revision=self.revision))
                self._arm_hold_timer(self.state.hold_until)
            else:
                await self._end_hold("hold timeout (expired while cutover was stopped)")
        self._follow_task = asyncio.get_running_loop().create_task(self._follow())

    def stop(self) -> None:
        """stop: disarm the hold timer (serve's Running.stop, before the data plane shuts down).

        A hold still running stays in the state, so the next start holds again until its
        saved deadline instead of this process recording a resume while it stops.
        """
        self._arm_hold_timer(None)

    async def close(self) -> None:
        """close: stop following the store, then let the pending detail writes end (at most 5 s).

        serve's Running.stop calls it after the data plane has shut down, so the outcomes of
        the last drains are in the store before the process exits.
        """
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.wait({self._follow_task})
        if self._detail_task is not None and not self._detail_task.done():
            await asyncio.wait({self._detail_task}, timeout=5)

    # -------------------------------------------------------------- reading

    def status(self) -> dict:
        """status: GET /v1/status (SPEC §7), from one snapshot of the data plane and the state."""
        snapshot = self.plane.snapshot()
        router = snapshot.router
        route = router.route
        return {
            "live": route.live,
            "previous": route.previous,
            "generation": route.generation,
            "held": router.held,
            "held_requests": router.held_requests,
            "fenced_requests": router.fenced_requests,
            "weights": route.weights,
            "environments": {env.name: _environment_status(
                env, "registered" if env.name in self.state.registrations else "config")
                for env in router.environments},
            "draining": {drain.environment: _drain_result(drain) for drain in router.drains if not drain.tag},
            "locked": self.state.locked,
            "lock_reason": self.state.lock_reason,
            "hold_until": _iso(self.state.hold_until) if router.held else None,
            "analysis": self.analysis.to_dict() if self.analysis is not None else None,
            "listen": snapshot.listen,
            "preview_listen": snapshot.preview_listen,
            # Whether each listener speaks TLS (SPEC §12): the data plane's for listen and
            # preview_listen (null without one), the config's admin.tls for the admin API
            # (turning either on or off needs a restart, so the running config says it).
            "listen_tls": snapshot.tls,
            "preview_listen_tls": snapshot.tls if snapshot.preview_listen is not None else None,
            "admin_tls": self.config.admin.tls is not None,
            "store": self.store.info(),
            "fleet": self.plane.fleet_info() if hasattr(self.plane, "fleet_info") else None,
            "pid": os.getpid(),
            "workers": [{"pid": w.pid, "generation": w.generation, "inflight": w.inflight,
                         "connections": w.connections, "started": _iso(w.started) if w.started else None,
                         "restarts": w.restarts, "alive": w.alive, "requests": w.requests, "error": w.error}
                        for w in self.plane.workers_info()],
        }

    def history(self, limit: int | None = None, since: datetime | None = None) -> dict:
        """history: GET /v1/history, oldest first: the newest ``limit`` events recorded after ``since``.

        ``since`` is an aware datetime; an event is after it when its "at" is later (an "at"
        that is no ISO-8601 time is never after anything).
        """
        events = self.state.history
        if since is not None:
            events = [e for e in events if (_parse_iso(e.get("at")) or since) > since]
        if limit is not None:
            events = events[-limit:] if limit > 0 else []
        return {"events": copy.deepcopy(events)}

    # ------------------------------------------------------------ mutations

    async def flip(self, to: str | None = None, reason: str | None = None, force: bool = False,
                   if_generation: int | None = None, caller: Caller = INTERNAL) -> dict:
        """flip: switch all traffic to ``to`` (default: the other environment)."""
        async with self.lock:
            self._check_generation(if_generation)
            target = self._environment(to) if to is not None else self._other(self.state.live)
            if target == self.state.live and not self.state.canary_weight:
                return self._answer(changed=False)
            self._check_unlocked("flip")
            if target == self.state.live:
                # A flip to the live environment during a canary only resets the weights.
                return await self._reweigh("flip", None, 0, reason, caller)
            seen = (self.state.generation, self.servers_epoch)
        # The gates may take minutes (a schema command, warm-up): they run without the
        # lock, so hold, lock and resume answer at once meanwhile.
        gates = await self._gates(target, force)
        async with self.lock:
            self._check_unchanged(seen, "flip")
            return await self._switch("flip", target, reason, force, gates, caller=caller)

    async def rollback(self, reason: str | None = None, force: bool = False,
                       if_generation: int | None = None, caller: Caller = INTERNAL) -> dict:
        """rollback: flip back to ``previous``, recording the recovery time."""
        started = time.perf_counter()
        async with self.lock:
            self._check_generation(if_generation)
            self._check_unlocked("rollback")
            target = self.state.previous
            if target is None:
                raise ControlError("no_previous", "there is no previous environment to roll back to")
            gates = await self._gates(target, force, health_only=True)
            return await self._switch("rollback", target, reason, force, gates, started=started, caller=caller)

    async def auto_rollback(self, reason: str, analysis: Analysis | None = None) -> dict:
        """auto_rollback: a rollback decided by post-flip analysis; not stopped by a lock or gates."""
        started = time.perf_counter()
        async with self.lock:
            if analysis is not None and analysis is not self.analysis:
                raise ControlError("superseded", "a newer switch replaced the analysed one")
            if self.state.previous is None:
                raise ControlError("no_previous", "there is no previous environment to roll back to")
            return await self._switch("auto_rollback", self.state.previous, reason, True, [], started=started)

    async def wait_for_analysis(self, generation: int) -> dict | None:
        """wait_for_analysis: the outcome of the analysis of ``generation`` (None when none ran for it).

        The API's ``wait: true`` calls it with the generation its own flip or promote created, so
        it follows exactly that analysis: one a newer switch replaced answers ``cancelled``, and
        a newer switch's analysis is never taken for it.
        """
        analysis = self._analyses.get(generation)
        if analysis is None:
            entry = self._cancelled_entry(generation)     # a fleet: the replica that ran it is gone
            if entry is not None:
                return {"generation": generation, "state": "cancelled", "reason": entry.get("reason")}
            return None
        return await asyncio.shield(analysis.done)

    async def promote(self, reason: str | None = None, force: bool = False, caller: Caller = INTERNAL) -> dict:
        """promote: flip to the canary environment (weights become 100/0 on the new live)."""
        async with self.lock:
            self._check_unlocked("promote")
            if not self.state.canary_weight or self.state.canary is None:
                raise ControlError("no_canary", "no canary is running")
            target = self.state.canary
            seen = (self.state.generation, self.servers_epoch)
        gates = await self._gates(target, force)
        async with self.lock:
            self._check_unchanged(seen, "promote")
            return await self._switch("promote", target, reason, force, gates, caller=caller)

    async def canary(self, weight: Any, reason: str | None = None, force: bool = False,
                     caller: Caller = INTERNAL) -> dict:
        """canary: send ``weight`` percent of new requests to the idle environment."""
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ControlError("bad_request", '"weight" must be an integer from 0 to 100')
        async with self.lock:
            self._check_unlocked("canary")
            idle = self._other(self.state.live)
            if weight == self.state.canary_weight:
                return self._answer(changed=False)
            if weight > 0 and weight > self.state.canary_weight:
                await self._gates(idle, force, health_only=True)
            return await self._reweigh("canary", idle if weight else None, weight, reason, caller)

    async def abort(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """abort: canary weight back to 0; every request goes to live again.

        Allowed under a lock: it only ever moves traffic back to the live environment.
        With no canary running it is a no-op (``changed: false``), like ``canary 0``: a
        cleanup step a pipeline runs unconditionally must not fail when there is nothing to undo.
        """
        async with self.lock:
            if not self.state.canary_weight:
                return self._answer(changed=False)
            return await self._reweigh("abort", None, 0, reason, caller)

    async def hold(self, timeout: Any = None, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """hold: new requests wait until resume or ``timeout`` seconds (default hold.max_wait)."""
        if timeout is None:
            timeout = self.config.hold.max_wait
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
            raise ControlError("bad_request", '"timeout" must be a number of seconds above 0 (at most 86400)')
        async with self.lock:
            state = self._next()
            state.held = True
            state.hold_until = time.time() + timeout
            self._record(state, "hold", reason, caller=caller, timeout=timeout)
            await self._save(state)
            await self._apply(Change(hold=Hold(True, state.hold_until)))
            self._arm_hold_timer(state.hold_until)
            return self._answer(changed=True)

    async def resume(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """resume: release every held request."""
        async with self.lock:
            if not self.state.held:
                return self._answer(changed=False, released=0)
            state = self._next()
            state.held = False
            state.hold_until = None
            entry = self._record(state, "resume", reason, caller=caller, released=0)
            await self._save(state)
            self._arm_hold_timer(None)
            released = await self._release()
            self._amend_later(entry, released=released)
            return self._answer(changed=True, released=released)

    async def attest(self, from_version: Any, to_version: Any, by: Any = None, caller: Caller = INTERNAL) -> dict:
        """attest: record that migrating from_version -> to_version is schema-compatible (SPEC §6)."""
        for key, value in (("from_version", from_version), ("to_version", to_version)):
            if not isinstance(value, str) or not value:
                raise ControlError("bad_request", f'"{key}" must be a non-empty string')
        if by is not None and not isinstance(by, str):
            raise ControlError("bad_request", '"by" must be a string')
        async with self.lock:
            state = self._next()
            state.attestations = [a for a in state.attestations
                                  if (a["from_version"], a["to_version"]) != (from_version, to_version)]
            state.attestations.append({"from_version": from_version, "to_version": to_version,
                                       "by": by, "at": now_iso()})
            del state.attestations[:-100]
            self._record(state, "attest", f"{from_version} -> {to_version}", caller=caller, by=by)
            await self._save(state)
            return self._answer(changed=True, attestations=copy.deepcopy(state.attestations))

    async def lock_switch(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """lock_switch: refuse flip, rollback and canary (even forced) until unlock."""
        async with self.lock:
            if self.state.locked and self.state.lock_reason == reason:
                return self._answer(changed=False)
            state = self._next()
            state.locked = True
            state.lock_reason = reason
            self._record(state, "lock", reason, caller=caller)
            await self._save(state)
            return self._answer(changed=True)

    async def unlock(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """unlock: allow switching again."""
        async with self.lock:
            if not self.state.locked:
                return self._answer(changed=False)
            state = self._next()
            state.locked = False
            state.lock_reason = None
            self._record(state, "unlock", reason, caller=caller)
            await self._save(state)
            return self._answer(changed=True)

    # --------------------------------------------------------------- reload

    async def reload(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """reload: read the config file again and apply what changed (SIGHUP, POST /v1/reload).

        The file is validated whole first: 400 config_invalid naming the key (nothing
        changes); 409 restart_required naming every key that cannot change while running
        (nothing changes). Otherwise one Change puts the data plane's settings and the changed
        server lists on every worker (a removed server is drained, an added one takes traffic
        once healthy), the rest of the config (gates, analysis, hold.max_wait, tokens) applies
        to the next call, and a registration whose config list changed is dropped (the config
        wins, a servers_reset event). The ``reload`` event names the keys in ``reloaded``; it
        is committed first (a fleet's other replicas take it at once), so a store that does not
        take it answers 503 as any mutation does, and nothing changes. An unchanged file answers changed false and records nothing. The file
        is the one this router started from (Config.source).
        """
        source = self.config.source
        if source is None:
            raise ControlError("bad_request", "this router was not started from a config file: nothing to re-read")
        async with self.lock:          # read under the lock too: two reloads apply in the order they read
            try:
                # A reload creates nothing: a new state_file is a restart (restart_keys).
                new = await asyncio.to_thread(load_config, source, None, False)
            except ConfigError as exc:
                self.reload_counts["config_invalid"] += 1
                raise ControlError("config_invalid", f"not reloaded, nothing changed: {exc}",
                                   errors=[{"key": exc.key, "line": exc.line, "message": exc.message}]) from None
            old = self.config
            files = tls_digests(new)     # read once: compared now, kept for the next reload
            keys = changed_keys(old, new, (self._tls_files, files))
            restart = restart_keys(old, new, keys)
            if restart:
                self.reload_counts["restart_required"] += 1
                raise ControlError("restart_required", f"not reloaded, nothing changed: {', '.join(restart)} "
                                   "cannot change while cutover runs; restart it to apply them", keys=restart)
            if not keys:
                self.reload_counts["unchanged"] += 1
                return self._answer(changed=False, reloaded=[])
            state = self._next()
            entry = self._record(state, "reload", reason, caller=caller, reloaded=keys, config=str(source))
            # A commit (the facts as they are), not a history append: in a fleet every replica
            # takes a new revision, so the event is in every replica's history at once.
            await self._save(state)
            self.config = new
            self._tls_files = files
            self.reload_counts["applied"] += 1
            lists = {name: self.servers_of(self.state, name) for name in self.environments
                     if f"environments.{name}.servers" in keys and name not in self.state.registrations}
            tag = f"{entry['at']} reload"
            if lists:
                self._server_changes[tag] = {"event": {k: entry[k] for k in ("at", "action", "generation")},
                                             "parts": []}
            if lists:
                self.servers_epoch += 1
            self._ack = await self.plane.apply(Change(settings=new.settings(), servers=lists or None,
                                                      servers_tag=tag))
            await self._drop_stale("at reload")
            for callback in self.on_reload:
                callback(new, keys)
            log.info("reload of %s: %s%s", source, ", ".join(keys), f" ({reason})" if reason else "",
                     extra={"action": "reload", "generation": self.state.generation})
            return self._answer(changed=True, reloaded=keys)

    # -------------------------------------------------------------- servers

    def servers_of(self, state: State, name: str) -> tuple[tuple[Address, int], ...]:
        """servers_of: environment ``name``'s server list under ``state``: its registration, else the config's."""
        registration = state.registrations.get(name)
        if registration is None:
            env = self.config.environments[name]
            return tuple(zip(env.servers, env.weights))
        return tuple((parse_address(s["address"], "address"), s["weight"]) for s in registration["servers"])

    async def register_servers(self, name: Any, servers: Any, reason: str | None = None,
                               caller: Caller = INTERNAL) -> dict:
        """register_servers: ``servers`` replace environment ``name``'s list at runtime (PUT
        /v1/environments/{env}/servers, SPEC §12), until reset or until the config's list changes.

        Checked as the config's list is (parse_servers), and no server may be in the other
        environment's list. Refused (409 locked) while locked for an environment that receives
        traffic (live, or the canary): a lock freezes what serves users; the idle environment
        may still be prepared. The route generation does not move.
        """
        name = self._registered_environment(name)
        try:
            parsed = parse_servers(self.config, name, servers)
        except ConfigError as exc:
            raise ControlError("bad_request", str(exc)) from None
        async with self.lock:
            self._check_unlocked_servers(name)
            new = tuple(zip(parsed.servers, parsed.weights))
            for other in self.environments:
                if other == name:
                    continue
                theirs = {str(a) for a, _ in self.servers_of(self.state, other)}
                for index, (address, _) in enumerate(new):
                    if str(address) in theirs:
                        raise ControlError("bad_request", f'servers[{index}]: "{address}" is also a server of '
                                           f"environment {other} (a blue-green pair needs two separate copies)")
            old = self.servers_of(self.state, name)
            if new == old and name in self.state.registrations:
                return self._answer(changed=False)
            state = self._next()
            state.registrations[name] = {
                "servers": [{"address": str(a), "weight": w} for a, w in new],
                "fingerprint": fingerprint(self.config.environments[name])}
            return await self._change_servers(state, "servers", name, old, new, reason, caller)

    async def reset_servers(self, name: Any, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """reset_servers: environment ``name`` serves the config's list again (DELETE
        /v1/environments/{env}/servers); without a registration it is a no-op."""
        name = self._registered_environment(name)
        async with self.lock:
            if name not in self.state.registrations:
                return self._answer(changed=False)
            self._check_unlocked_servers(name)
            old = self.servers_of(self.state, name)
            state = self._next()
            del state.registrations[name]
            return await self._change_servers(state, "servers_reset", name, old, self.servers_of(state, name),
                                              reason, caller)

    async def _change_servers(self, state: State, action: str, name: str, old: tuple, new: tuple,
                              reason: str | None, caller: Caller = INTERNAL) -> dict:
        """_change_servers: record, commit and apply a new server list for ``name`` (the caller holds the lock)."""
        before = {str(a) for a, _ in old}
        after = [str(a) for a, _ in new]
        entry = self._record(state, action, reason, caller=caller, environment=name, servers=after,
                             added=[a for a in after if a not in before],
                             removed=[a for a in sorted(before) if a not in after])
        await self._save(state)
        tag = f"{entry['at']} {action} {name}"
        self._server_changes[tag] = {"event": {key: entry[key] for key in ("at", "action", "generation")},
                                     "parts": []}
        while len(self._server_changes) > 100:
            del self._server_changes[next(iter(self._server_changes))]
        self.servers_epoch += 1
        await self._apply(Change(servers={name: new}, servers_tag=tag))
        log.info("%s of %s: %s (added %s, removed %s)%s", action, name, ", ".join(after) or "-",
                 ", ".join(entry["added"]) or "-", ", ".join(entry["removed"]) or "-",
                 f" ({reason})" if reason else "")
        return self._answer(changed=True)

    async def _drop_stale(self, when: str) -> None:
        """_drop_stale: drop each registration whose config list changed since (the config wins),
        or that the config's rules refuse now; one ``servers_reset`` event each. The caller holds
        the lock, or runs before anything else (start). A commit that fails is logged: the data
        plane serves the config's list anyway, and the next start tries again."""
        for name in list(self.state.registrations):
            why = self._stale(self.state, name)
            if why is None:
                continue
            state = self._next()
            del state.registrations[name]
            servers = [str(a) for a, _ in self.servers_of(state, name)]
            self._record(state, "servers_reset", f"config changed: {why}", environment=name, servers=servers)
            log.warning("registration of %s dropped %s: %s; serving the config's list %s", name, when, why,
                        ", ".join(servers))
            try:
                await self._save(state)
            except ControlError as exc:
                log.error("could not save that the registration of %s was dropped: %s", name, exc)
                self.state.registrations.pop(name, None)
            self.servers_epoch += 1
            await self.plane.apply(Change(servers={name: self.servers_of(self.state, name)},
                                          servers_tag=f"{when} {name}", revision=self.revision))

    def _stale(self, state: State, name: str) -> str | None:
        """_stale: why ``state``'s registration of ``name`` no longer stands, or None when it does."""
        registration = state.registrations[name]
        if registration["fingerprint"] != fingerprint(self.config.environments[name]):
            return f"environments.{name}.servers is not the list the registration replaced"
        try:
            parse_servers(self.config, name, registration["servers"])
        except ConfigError as exc:
            return f"the registered list is refused by this config ({exc})"
        return None

    def _registered_environment(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.environments:
            # the path names a resource that does not exist: 404 (a flip's body naming one is 400)
            raise ControlError("not_found", f"unknown environment {name!r}: no /v1/environments/{name}/servers; "
                               f"configured: {', '.join(self.environments)}")
        return name

    def _check_unlocked_servers(self, name: str) -> None:
        if self.state.locked and (name == self.state.live or (name == self.state.canary and self.state.canary_weight)):
            why = f" ({self.state.lock_reason})" if self.state.lock_reason else ""
            raise ControlError("locked", f"switching is locked{why}; {name} receives traffic, so its servers "
                               "are not replaced until unlock")

    def _server_drain_finished(self, drain: DrainSnapshot) -> None:
        """_server_drain_finished: a drain of the servers a list change removed ended (one part per
        worker): its summed outcome goes to that change's history entry."""
        result = _drain_result(drain)
        log.log(logging.WARNING if result["forced_closed"] or result["dropped"] else logging.INFO,
                "drain of removed servers %s of %s ended in %.3fs: drained %d, forced_closed %d, dropped %d",
                ", ".join(drain.servers), drain.environment, result["duration"] or 0.0, result["drained"],
                result["forced_closed"], result["dropped"])
        change = self._server_changes.get(drain.tag)
        if change is None:
            return          # a change of the start, or one another replica recorded
        change["parts"].append(drain)
        total = _drain_result(merge_drains(change["parts"]))
        fields = drain_fields(total)
        event = change["event"]
        amend_event(self.state.history, event, fields)
        self._write_later(lambda: self.store.amend(event, fields))

    # -------------------------------------------------------------- helpers

    async def _switch(self, action: str, target: str, reason: str | None, force: bool,
                gates: list[GateResult], started: float | None = None, caller: Caller = INTERNAL) -> dict:
        """_switch: make ``target`` live: save, swap, count; the drain result comes later."""
        state = self._next()
        source = state.live
        state.previous = source
        state.live = target
        state.canary = None
        state.canary_weight = 0
        state.generation += 1
        entry = self._record(state, action, reason, source=source, target=target, caller=caller, forced=force)
        if gates:
            entry["gates"] = [g.to_dict() for g in gates]
        await self._save(state)
        await self._apply(Change(route=self.route_of(state, self.environments)))
        self._watch(action, state)
        if started is not None:
            self.last_recovery_ms = round((time.perf_counter() - started) * 1000, 3)
            self._amend_later(entry, recovery_ms=self.last_recovery_ms)
        self.counts[action] += 1
        if action == "auto_rollback":   # the API logs the calls it answers; this one is cutover's own
            log.warning("auto_rollback %s -> %s generation %d (%s)", source, target, state.generation, reason)
        return self._answer(changed=True, change=_change(entry))

    def _watch(self, action: str, state: State) -> None:
        """_watch: end the previous analysis; start one over a new live environment after a flip or promote."""
        previous = self.analysis
        if previous is not None and previous.state == "running" and action != "auto_rollback":
            previous.cancel(f"superseded by {action} to generation {state.generation}")
        if action in ("flip", "promote") and self.config.analysis.window > 0:
            snapshot = self.plane.snapshot
            now = snapshot()
            url = listen_url(now.listen, now.tls) + self.config.analysis.probe_path
            self.analysis = Analysis(state.generation, state.live, self.config.analysis, snapshot, url,
                                     self._breach)
            self._analyses[state.generation] = self.analysis
            while len(self._analyses) > 16:
                del self._analyses[next(iter(self._analyses))]
            self.analysis.done.add_done_callback(self._analysis_finished)
            if self.on_analysis is not None:
                self.on_analysis(state.generation, "running")

    async def _reweigh(self, action: str, canary: str | None, weight: int, reason: str | None,
                       caller: Caller = INTERNAL) -> dict:
        state = self._next()
        state.canary = canary
        state.canary_weight = weight
        state.generation += 1
        entry = self._record(state, action, reason, target=canary, caller=caller, weight=weight)
        await self._save(state)
        await self._apply(Change(route=self.route_of(state, self.environments)))
        self.counts[action] += 1
        return self._answer(changed=True, change=_change(entry))

    async def _breach(self, analysis: Analysis, reason: str) -> None:
        """_breach: an analysis found the new live environment failing: roll back (its on_breach)."""
        await self.auto_rollback(reason, analysis=analysis)

    def _analysis_finished(self, done: asyncio.Future) -> None:
        if not done.cancelled():
            result = done.result()
            outcome = result["state"]
            self.analysis_counts[outcome] = self.analysis_counts.get(outcome, 0) + 1
            if self.on_analysis is not None:
                self.on_analysis(result["generation"], outcome)

    def cancel_analysis(self, generation: int, why: str) -> None:
        """cancel_analysis: stop this replica's running analysis of ``generation`` (the fleet stopped counting on it)."""
        analysis = self._analyses.get(generation)
        if analysis is not None and analysis.state == "running":
            analysis.cancel(why)

    async def record_analysis_cancelled(self, generation: int, why: str) -> bool:
        """record_analysis_cancelled: put `analysis_cancelled` for ``generation`` in the history (SPEC §9.2).

        A fleet replica calls it when the replica that ran that analysis is gone
        (admin/fleet/analyses.py). Every replica may: the first commit wins, the others find
        the entry (True) or lose the compare (a ControlError: they try again on the state they
        took). Returns whether the entry is in the history now.
        """
        async with self.lock:
            if self._cancelled_entry(generation) is not None:
                return True
            state = self._next()
            self._record(state, "analysis_cancelled", why, analysis_generation=generation)
            await self._save(state)
            log.warning("analysis of generation %d recorded as cancelled: %s", generation, why,
                        extra={"action": "analysis_cancelled", "generation": generation})
            return True

    def _cancelled_entry(self, generation: int) -> dict | None:
        for entry in reversed(self.state.history):
            if entry.get("action") == "analysis_cancelled" and entry.get("analysis_generation") == generation:
                return entry
        return None

    async def _gates(self, target: str, force: bool, health_only: bool = False) -> list[GateResult]:
        if force:
            return []
        results = await run_gates(self._gate_inputs(), target, health_only=health_only)
        for result in results:
            key = (result.name, "passed" if result.passed else "failed")
            self.gate_counts[key] = self.gate_counts.get(key, 0) + 1
        failed = [r for r in results if not r.passed]
        if failed:
            why = "; ".join(f"{r.name}: {r.reason}" for r in failed)
            raise ControlError("gate_failed", f"gate failed for {target}: {why}",
                               gates=[r.to_dict() for r in results])
        return results

    def _gate_inputs(self) -> GateInputs:
        """_gate_inputs: what the gates read: snapshots, the preview token, attestations, gates config."""
        token = self.config.admin.token if self.config.admin.auth != "none" else None
        return GateInputs(snapshot=self.plane.snapshot, gates=self.config.gates,
                          attestations=tuple(copy.deepcopy(self.state.attestations)),
                          preview_token=token or None,
                          config_dir=self.config.source.parent if self.config.source else None,
                          tls_environments=frozenset(n for n, e in self.config.environments.items() if e.tls))

    def _next(self) -> State:
        """_next: a copy of the state to change; it replaces the current one only once saved."""
        return self.state.copy()

    async def _save(self, state: State) -> None:
        """_save: commit ``state`` and its new event to the store, then make it current.

        Every caller holds self.lock. The event is the one the mutation's _record added (the
        copy from _next has one event more than the current state). ControlError
        store_unavailable when the store did not answer (a StateError whose ``code`` says so:
        etcd unreachable), state_unavailable when it failed otherwise; conflict when the stored
        state moved since this controller read it (another writer), after taking what is stored now.
        """
        event = state.history[-1] if len(state.history) > len(self.state.history) else None
        async with self.save_lock:
            try:
                self.revision = await self.store.commit(state, self.revision, event)
            except StateNotDurable as exc:
                log.warning("%s; applying it anyway, the file holds it", exc)
                self.revision = exc.revision
            except StateConflict as exc:
                await self._conflicted(exc)
            except StateError as exc:
                if getattr(exc, "code", None) == "store_unavailable":
                    raise ControlError("store_unavailable", f"not applied: {exc}") from exc
                raise ControlError("state_unavailable", f"not applied: {exc}") from exc
            limit = self.store.history_limit
            if len(state.history) > limit:
                del state.history[:len(state.history) - limit]
            self._apply_details(state)
            self.state = state

    async def _conflicted(self, conflict: StateConflict) -> NoReturn:
        """_conflicted: a commit found the store moved on: take what it holds, answer conflict.

        The same answer as a route that moved while a flip's gates ran; with the stored state
        taken, a retry's if_generation is checked against it (412 when it moved).
        """
        try:
            saved, revision = await self.store.load()
        except StateError as exc:
            if getattr(exc, "code", None) == "store_unavailable":
                raise ControlError("store_unavailable", f"not applied: {conflict}; reading it again "
                                   f"failed: {exc}") from exc
            raise ControlError("state_unavailable", f"not applied: {conflict}; reading it again "
                               f"failed: {exc}") from exc
        if saved is not None:
            await self._take(saved, revision, force=True)
        raise ControlError("conflict", f"not applied: {conflict}", generation=self.state.generation)

    def _amend_later(self, entry: dict, **fields: Any) -> None:
        """_amend_later: add what a mutation learnt after its commit (recovery time, released count).

        ``entry`` (the current state's event) takes ``fields`` at once; the store's copy
        takes them in the background, after the answer.
        """
        entry.update(fields)
        event = {key: entry.get(key) for key in ("at", "action", "generation")}
        self._write_later(lambda: self.store.amend(event, fields))

    def _write_later(self, write: Callable[[], Awaitable[None]]) -> None:
        """_write_later: run a store write that adds a detail to an acknowledged change, in order."""
        self._later.append(write)
        if self._detail_task is None or self._detail_task.done():
            self._detail_task = asyncio.get_running_loop().create_task(self._write_details())

    async def _write_details(self) -> None:
        while self._later:
            write = self._later.popleft()
            async with self.save_lock:
                try:
                    await write()
                except StateNotDurable as exc:
                    log.warning("%s", exc)
                except StateError as exc:
                    log.error("could not save a history detail: %s", exc)

    def _record(self, state: State, action: str, reason: str | None, source: str | None = None,
                target: str | None = None, caller: Caller = INTERNAL, **extra: Any) -> dict:
        entry = {"at": now_iso(), "action": action, "from": source if source is not None else state.live,
                 "to": target if target is not None else state.live, "generation": state.generation,
                 "reason": reason, "actor": caller.actor, "client": caller.client}
        entry.update(extra)
        state.history.append(entry)
        return entry

    async def _apply(self, change: Change) -> None:
        """_apply: put a mutation's change on the data plane; its answer (_answer) carries the Ack."""
        self._ack = await self.plane.apply(replace(change, revision=self.revision, confirm=True))

    def _answer(self, **extra: Any) -> dict:
        """_answer: a mutation's answer: the status, what the call adds, and the Ack of its change.

        ``ack`` (SPEC §9.1) names the processes that applied the change and those that did
        not within fleet.ack_timeout; the API answers 202 when any is pending.
        """
        status = self.status()
        status.update(extra)
        ack, self._ack = self._ack, None
        if ack is not None:
            status["ack"] = ack.to_dict()
        return status

    def _environment(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.environments:
            raise ControlError("unknown_environment",
                               f"unknown environment {name!r}; configured: {', '.join(self.environments)}")
        return name

    def _other(self, name: str) -> str:
        return next(env for env in self.environments if env != name)

    def _check_generation(self, expected: Any) -> None:
        if expected is None:
            return
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise ControlError("bad_request", '"if_generation" must be an integer')
        if expected != self.state.generation:
            raise ControlError("generation_mismatch",
                               f"generation is {self.state.generation}, not {expected}",
                               generation=self.state.generation)

    def _check_unchanged(self, seen: tuple[int, int], action: str) -> None:
        """_check_unchanged: after gates ran without the lock, nothing may have moved meanwhile:
        ``seen`` is the (generation, servers_epoch) the gates started from."""
        self._check_unlocked(action)
        generation, epoch = seen
        if self.state.generation != generation:
            raise ControlError("conflict", f"the route changed (generation {generation} -> "
                               f"{self.state.generation}) while the gates ran; {action} not applied",
                               generation=self.state.generation)
        if self.servers_epoch != epoch:
            raise ControlError("conflict", f"the server lists changed (a registration or a reload) while the "
                               f"gates ran; they checked the lists before; {action} not applied",
                               generation=self.state.generation)

    def _check_unlocked(self, action: str) -> None:
        if self.state.locked:
            why = f" ({self.state.lock_reason})" if self.state.lock_reason else ""
            raise ControlError("locked", f"switching is locked{why}; {action} refused until unlock")

    # -------------------------------------------------- data plane events

    def _drain_finished(self, drain: DrainSnapshot) -> None:
        """_drain_finished: add a drain's outcome to the history entry of the switch that started it."""
        if drain.tag:
            self._server_drain_finished(drain)
            return
        result = _drain_result(drain)
        for key in self.drain_counts:
            self.drain_counts[key] += result[key]
        fields = drain_fields(result)
        level = logging.WARNING if result["forced_closed"] or result["dropped"] else logging.INFO
        log.log(level, "drain of %s after generation %d ended in %.3fs: drained %d, forced_closed %d, "
                "dropped %d, client_gone %d", drain.environment, drain.generation, result["duration"] or 0.0,
                result["drained"], result["forced_closed"], result["dropped"], result["client_gone"],
                extra={"action": "drain", "generation": drain.generation, "env": drain.environment,
                       "drained": result["drained"], "forced_closed": result["forced_closed"],
                       "dropped": result["dropped"]})
        generation, source = drain.generation, drain.environment
        self._details[(generation, source)] = fields
        while len(self._details) > 100:
            del self._details[next(iter(self._details))]
        self._apply_details(self.state)
        self._write_later(lambda: self.store.add_drain(generation, source, result))

    def _apply_details(self, state: State) -> None:
        """_apply_details: put the known drain outcomes into ``state``'s history entries.

        A state taken from the store (``_take``: committed elsewhere, or read again after a
        conflict) holds the entries as the store had them, which may be without an outcome
        this router learnt since. (A mutation's own copy shares the entries: State.copy.)
        """
        if not self._details:
            return
        for entry in state.history:
            fields = self._details.get((entry.get("generation"), entry.get("from")))
            if fields is not None and "drain" not in entry:
                entry.update(fields)

    # ------------------------------------------------------- the store's news

    async def _follow(self) -> None:
        """_follow: take each state the store reports committed elsewhere (start runs it, close stops it).

        A watch that fails is logged and started again after _WATCH_RETRY seconds, from the
        revision held then.
        """
        while True:
            try:
                async for saved, revision in self.store.watch(self.revision):
                    async with self.lock:
                        await self._take(saved, revision)
                return
            except StateError as exc:
                log.error("watching %s failed: %s; watching again in %gs", self.store.describe(),
                          exc, _WATCH_RETRY)
            await asyncio.sleep(_WATCH_RETRY)

    async def reread(self) -> bool:
        """reread: read the store now and take what it holds if it moved (a fleet replica whose
        lease expired, SPEC §9.2 fencing); a store that does not answer leaves everything as is.
        Returns whether the store answered (what it holds is on the data plane now)."""
        async with self.lock:
            try:
                saved, revision = await self.store.load()
            except StateError as exc:
                log.warning("re-reading %s failed: %s; serving on the last state taken", self.store.describe(), exc)
                return False
            if saved is not None and revision != self.revision:
                await self._take(saved, revision)
            return True

    async def _take(self, saved: State, revision: Revision, force: bool = False) -> bool:
        """_take: make a state committed elsewhere current, and put its route and hold on the data plane
        (with its revision, which a fleet replica acks, also when neither moved).

        The caller holds self.lock: the follower, and _conflicted (``force``: the store's
        state wins whatever it is). The follower skips what this controller holds already
        (its revision) and a report behind it (a lower generation). A state naming an
        environment the config has not got is logged, not taken. Returns whether it was taken.
        """
        if not force and (revision == self.revision or saved.generation < self.state.generation):
            return False
        try:
            saved.check_environments(self.environments, self.store.describe())
        except StateError as exc:
            log.error("not taking a state committed elsewhere: %s", exc)
            return False
        before, self.state, self.revision = self.state, saved, revision
        self._apply_details(saved)
        route = self.route_of(saved, self.environments)
        moved = route != self.route_of(before, self.environments)
        held = (saved.held, saved.hold_until) != (before.held, before.hold_until)
        # Sent even when neither route nor hold moved (a lock, an attestation, or the state a
        # replica started from its local copy): a fleet replica acks each revision it takes.
        hold = Hold(saved.held, saved.hold_until if saved.held else None) if held else None
        lists = {}
        for name in self.environments:
            if name in saved.registrations and self._stale(saved, name) is not None:
                continue        # dropped below; until then the data plane keeps what it serves
            servers = self.servers_of(saved, name)
            if servers != self.servers_of(before, name):
                lists[name] = servers
        if lists:
            self.servers_epoch += 1
        await self.plane.apply(Change(route=route if moved else None, hold=hold, revision=revision,
                                      servers=lists or None, servers_tag=f"{revision} taken"))
        if held:
            self._arm_hold_timer(saved.hold_until if saved.held else None)
        if saved.generation != before.generation and self.analysis is not None \
                and self.analysis.state == "running":
            self.analysis.cancel(f"superseded by a change committed elsewhere (generation {saved.generation})")
        log.info("took the state committed elsewhere: live %s, generation %d, held %s, locked %s",
                 saved.live, saved.generation, saved.held, saved.locked)
        if not force:
            await self._drop_stale("in a state committed elsewhere")
        return True

    # ----------------------------------------------------------------- hold

    def _arm_hold_timer(self, until: float | None) -> None:
        """_arm_hold_timer: the one hold timer, set to end the hold at ``until`` (wall clock), or stopped.

        hold and start set it after the data plane acked the hold; resume stops it.
        """
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._released_unsaved = 0
        if until is not None:
            self._hold_timer = asyncio.get_running_loop().call_later(
                max(0.0, until - time.time()), self._hold_timed_out)

    def _hold_timed_out(self) -> None:
        """_hold_timed_out: the hold reached its deadline (the timer's callback)."""
        self._hold_timer = None
        asyncio.get_running_loop().create_task(self._end_hold("hold timeout"))

    async def _end_hold(self, why: str) -> None:
        """_end_hold: release the held requests at once, then record the resume, under the lock.

        A hold or resume that came between the timer and this task has re-armed or
        stopped the timer, or already saved the resume: then this timeout is history. If the
        resume cannot be saved, the data plane stays released and the save is tried again
        every _RESUME_RETRY seconds, so the state never keeps a hold nothing is timing.
        """
        async with self.lock:
            if self._hold_timer is not None or not self.state.held:
                return
            released = self._released_unsaved + await self._release()
            self._ack = None            # a timer's change has no answer to carry its Ack
            state = self._next()
            state.held = False
            state.hold_until = None
            self._record(state, "resume", why, released=released)
            try:
                await self._save(state)
            except ControlError as exc:
                self._released_unsaved = released
                log.error("%s; the hold is released, its resume is saved again in %ss", exc, _RESUME_RETRY)
                self._hold_timer = asyncio.get_running_loop().call_later(_RESUME_RETRY, self._hold_timed_out)
                return
            self._released_unsaved = 0
            log.info("resume (%s): %d held requests released", why, released)

    async def _release(self) -> int:
        """_release: end the hold on the data plane; returns how many requests it was holding."""
        await self.plane.refresh()
        held = self.plane.snapshot().router.held_requests
        await self._apply(Change(hold=Hold(False, None)))
        return held


def _parse_iso(text: Any) -> datetime | None:
    """_parse_iso: a history entry's "at" (now_iso's form) as an aware datetime, or None."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _environment_status(env: EnvironmentSnapshot, source: str) -> dict:
    """_environment_status: one environment of GET /v1/status (SPEC §7, §12).

    ``servers`` is its current list, ``servers_source`` where that list comes from (config |
    registered); ``retired_servers`` those a new list removed that have not finished yet.
    """
    return {"healthy": env.healthy, "inflight": env.inflight, "connections": env.connections,
            "servers_source": source,
            "servers": [{"address": s.address, "healthy": s.healthy, "inflight": s.inflight,
                         "connections": s.connections} for s in env.servers],
            "retired_servers": [{"address": s.address, "healthy": s.healthy, "inflight": s.inflight,
                                 "connections": s.connections} for s in env.retired]}


def fingerprint(env: EnvironmentConfig) -> str:
    """fingerprint: what identifies the config's server list of ``env`` (addresses and weights, in order).

    A registration keeps the fingerprint of the list it replaced; when the config's list no
    longer has it, the config wins (Controller._drop_stale).
    """
    text = json.dumps([[str(a), w] for a, w in zip(env.servers, env.weights)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _drain_result(drain: DrainSnapshot) -> dict:
    """_drain_result: a drain's figures as status "draining" and the history entry's "drain" show them
    (``servers`` and ``tag`` only for a drain of removed servers)."""
    out = asdict(drain)
    if not drain.tag:
        del out["servers"], out["tag"]
    else:
        del out["tag"]
        out["servers"] = list(drain.servers)
    return out


def _change(entry: dict) -> dict:
    """_change: what one route change did, for its answer: action, from, to and the generation it made.

    Every answer of a call that changed the route carries it as ``change``; the API's
    ``wait: true`` keeps it when the status around it has moved on (an auto-rollback).
    """
    return {key: entry[key] for key in ("action", "from", "to", "generation")}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
