"""Controller: the only thing that changes the route, writes the state and the history.

The admin API and the CLI (through the API) call one method per mutation.
Each mutation runs under one lock, so compare-and-swap and gates see a
stable route; it builds the new State, saves it through the store (so an
acknowledged change survives a crash), then applies it to the Router. Domain
errors are ControlError with an HTTP status and a stable code; the API maps
them in one place.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from proxy.config import Config
from proxy.drain import Drain
from proxy.route import Route
from proxy.router import Router

from .analysis import Analysis
from .gates import GateResult, run_gates
from .state import State, StateError, StateNotDurable, StateStore

log = logging.getLogger("cutover.controller")


class ControlError(Exception):
    """ControlError: a refused admin call; status is the HTTP status, code the stable error code."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


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
    """Controller: flip, rollback, hold, lock and canary over a Router, persisted in a StateStore."""

    def __init__(self, config: Config, router: Router, store: StateStore, state: State, proxy=None) -> None:
        self.config = config
        self.router = router
        self.proxy = proxy            # the data plane's listeners, for the gates' preview route
        self.store = store
        self.state = state
        self.lock = asyncio.Lock()          # one mutation at a time
        self.save_lock = asyncio.Lock()     # one store write at a time
        self._detail_pending = False
        self._detail_task: asyncio.Task | None = None
        self._details: dict[tuple[int, str], dict] = {}   # drain outcomes by (generation, from)
        self.counts = {action: 0 for action in ("flip", "rollback", "auto_rollback", "promote", "canary", "abort")}
        self.drain_counts = {"drained": 0, "forced_closed": 0, "dropped": 0, "client_gone": 0}
        self.last_recovery_ms: float | None = None
        self.analysis: Analysis | None = None   # the watch over the last flip or promote
        self._analyses: dict[int, Analysis] = {}  # the last few watches, by the generation they watch
        self.gate_counts: dict[tuple[str, str], int] = {}        # (gate, passed|failed) -> runs
        self.analysis_counts: dict[str, int] = {}                # finished analyses by outcome
        router.on_drain.append(self._drain_finished)
        router.on_resume.append(self._hold_expired)

    # ------------------------------------------------------------ building

    @staticmethod
    def initial_state(config: Config, store: StateStore) -> State:
        """initial_state: the saved state checked against the config, or a fresh one from config.live."""
        return Controller.checked_state(config, store.load(), store.describe())

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

    def start(self) -> None:
        """start: apply the loaded state to the router (called once, inside the event loop)."""
        self.router.route = self.route_of(self.state, tuple(self.router.environments))
        if self.state.held:
            remaining = (self.state.hold_until or 0) - time.time()
            if remaining > 0:
                self.router.hold(remaining)
            else:
                self.state.held = False
                self.state.hold_until = None
                self._record(self.state, "resume", "hold timeout (expired while cutover was stopped)",
                             released=0)
                self._save_later()
                log.info("resume: the saved hold expired while cutover was stopped")

    # -------------------------------------------------------------- reading

    def status(self) -> dict:
        """status: GET /v1/status (SPEC §7)."""
        status = self.router.status()
        status["locked"] = self.state.locked
        status["lock_reason"] = self.state.lock_reason
        status["hold_until"] = _iso(self.state.hold_until) if self.router.held else None
        status["analysis"] = self.analysis.to_dict() if self.analysis is not None else None
        if self.proxy is not None:
            status["listen"] = f"{self.config.listen.host}:{self.proxy.port}"
            status["preview_listen"] = (f"{self.config.preview_listen.host}:{self.proxy.preview_port}"
                                        if self.proxy.preview_port else None)
        return status

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
            seen = self.state.generation
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
                raise ControlError(409, "no_previous", "there is no previous environment to roll back to")
            gates = await self._gates(target, force, health_only=True)
            return await self._switch("rollback", target, reason, force, gates, started=started, caller=caller)

    async def auto_rollback(self, reason: str, analysis: Analysis | None = None) -> dict:
        """auto_rollback: a rollback decided by post-flip analysis; not stopped by a lock or gates."""
        started = time.perf_counter()
        async with self.lock:
            if analysis is not None and analysis is not self.analysis:
                raise ControlError(409, "superseded", "a newer switch replaced the analysed one")
            if self.state.previous is None:
                raise ControlError(409, "no_previous", "there is no previous environment to roll back to")
            return await self._switch("auto_rollback", self.state.previous, reason, True, [], started=started)

    async def wait_for_analysis(self, generation: int) -> dict | None:
        """wait_for_analysis: the outcome of the analysis of ``generation`` (None when none ran for it).

        The API's ``wait: true`` calls it with the generation its own flip or promote created, so
        it follows exactly that analysis: one a newer switch replaced answers ``cancelled``, and
        a newer switch's analysis is never taken for it.
        """
        analysis = self._analyses.get(generation)
        if analysis is None:
            return None
        return await asyncio.shield(analysis.done)

    async def promote(self, reason: str | None = None, force: bool = False, caller: Caller = INTERNAL) -> dict:
        """promote: flip to the canary environment (weights become 100/0 on the new live)."""
        async with self.lock:
            self._check_unlocked("promote")
            if not self.state.canary_weight or self.state.canary is None:
                raise ControlError(409, "no_canary", "no canary is running")
            target = self.state.canary
            seen = self.state.generation
        gates = await self._gates(target, force)
        async with self.lock:
            self._check_unchanged(seen, "promote")
            return await self._switch("promote", target, reason, force, gates, caller=caller)

    async def canary(self, weight: Any, reason: str | None = None, force: bool = False,
                     caller: Caller = INTERNAL) -> dict:
        """canary: send ``weight`` percent of new requests to the idle environment."""
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ControlError(400, "bad_request", '"weight" must be an integer from 0 to 100')
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
            raise ControlError(400, "bad_request", '"timeout" must be a number of seconds above 0 (at most 86400)')
        async with self.lock:
            state = self._next()
            state.held = True
            state.hold_until = time.time() + timeout
            self._record(state, "hold", reason, caller=caller, timeout=timeout)
            await self._save(state)
            self.router.hold(timeout)
            return self._answer(changed=True)

    async def resume(self, reason: str | None = None, caller: Caller = INTERNAL) -> dict:
        """resume: release every held request."""
        async with self.lock:
            if not self.state.held and not self.router.held:
                return self._answer(changed=False, released=0)
            state = self._next()
            state.held = False
            state.hold_until = None
            entry = self._record(state, "resume", reason, caller=caller, released=0)
            await self._save(state)
            entry["released"] = released = self.router.resume()
            self._save_later()
            return self._answer(changed=True, released=released)

    async def attest(self, from_version: Any, to_version: Any, by: Any = None, caller: Caller = INTERNAL) -> dict:
        """attest: record that migrating from_version -> to_version is schema-compatible (SPEC §6)."""
        for key, value in (("from_version", from_version), ("to_version", to_version)):
            if not isinstance(value, str) or not value:
                raise ControlError(400, "bad_request", f'"{key}" must be a non-empty string')
        if by is not None and not isinstance(by, str):
            raise ControlError(400, "bad_request", '"by" must be a string')
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
        self.router.swap(self.route_of(state, tuple(self.router.environments)))
        self._watch(action, state)
        if started is not None:
            entry["recovery_ms"] = round((time.perf_counter() - started) * 1000, 3)
            self.last_recovery_ms = entry["recovery_ms"]
            self._save_later()
        self.counts[action] += 1
        if action == "auto_rollback":   # the API logs the calls it answers; this one is cutover's own
            log.warning("auto_rollback %s -> %s generation %d (%s)", source, target, state.generation, reason)
        return self._answer(changed=True, change=_change(entry))

    def _watch(self, action: str, state: State) -> None:
        """_watch: end the previous analysis; start one over a new live environment after a flip or promote."""
        previous = self.analysis
        if previous is not None and previous.state == "running" and action != "auto_rollback":
            previous.cancel(f"superseded by {action} to generation {state.generation}")
        if action in ("flip", "promote") and self.config.analysis.window > 0 and self.proxy is not None:
            self.analysis = Analysis(self, state.generation, state.live, self.config.analysis)
            self._analyses[state.generation] = self.analysis
            while len(self._analyses) > 16:
                del self._analyses[next(iter(self._analyses))]
            self.analysis.done.add_done_callback(self._analysis_finished)

    async def _reweigh(self, action: str, canary: str | None, weight: int, reason: str | None,
                       caller: Caller = INTERNAL) -> dict:
        state = self._next()
        state.canary = canary
        state.canary_weight = weight
        state.generation += 1
        entry = self._record(state, action, reason, target=canary, caller=caller, weight=weight)
        await self._save(state)
        self.router.swap(self.route_of(state, tuple(self.router.environments)))
        self.counts[action] += 1
        return self._answer(changed=True, change=_change(entry))

    def _analysis_finished(self, done: asyncio.Future) -> None:
        if not done.cancelled():
            outcome = done.result()["state"]
            self.analysis_counts[outcome] = self.analysis_counts.get(outcome, 0) + 1

    async def _gates(self, target: str, force: bool, health_only: bool = False) -> list[GateResult]:
        if force:
            return []
        results = await run_gates(self, target, health_only=health_only)
        for result in results:
            key = (result.name, "passed" if result.passed else "failed")
            self.gate_counts[key] = self.gate_counts.get(key, 0) + 1
        failed = [r for r in results if not r.passed]
        if failed:
            why = "; ".join(f"{r.name}: {r.reason}" for r in failed)
            raise ControlError(409, "gate_failed", f"gate failed for {target}: {why}",
                               gates=[r.to_dict() for r in results])
        return results

    def _next(self) -> State:
        """_next: a copy of the state to change; it replaces the current one only once saved."""
        return State.from_dict(self.state.to_dict(), "memory")

    async def _save(self, state: State) -> None:
        """_save: make ``state`` durable, then current; ControlError 503 when the store fails."""
        async with self.save_lock:
            try:
                await self._write(state)
            except StateNotDurable as exc:
                log.warning("%s; applying it anyway, the file holds it", exc)
            except StateError as exc:
                raise ControlError(503, "state_unavailable", f"not applied: {exc}") from exc
            self._apply_details(state)
            self.state = state

    async def _write(self, state: State) -> None:
        """_write: store a snapshot of ``state`` from a thread (the caller holds save_lock).

        Proxying goes on while the disk syncs; the snapshot is taken under the
        lock, so an older state never lands after a newer one.
        """
        snapshot = State.from_dict(state.to_dict(), "memory")
        await asyncio.to_thread(self.store.save, snapshot)
        limit = getattr(self.store, "history_limit", None)
        if limit is not None and len(state.history) > limit:
            del state.history[:len(state.history) - limit]

    def _save_later(self) -> None:
        """_save_later: save a detail added after the acknowledged change (drain result, timing)."""
        self._detail_pending = True
        if self._detail_task is None or self._detail_task.done():
            self._detail_task = asyncio.get_running_loop().create_task(self._save_details())

    async def _save_details(self) -> None:
        while self._detail_pending:
            self._detail_pending = False
            async with self.save_lock:
                try:
                    await self._write(self.state)
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

    def _answer(self, **extra: Any) -> dict:
        status = self.status()
        status.update(extra)
        return status

    def _environment(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.router.environments:
            raise ControlError(400, "unknown_environment",
                               f"unknown environment {name!r}; configured: {', '.join(self.router.environments)}")
        return name

    def _other(self, name: str) -> str:
        return next(env for env in self.router.environments if env != name)

    def _check_generation(self, expected: Any) -> None:
        if expected is None:
            return
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise ControlError(400, "bad_request", '"if_generation" must be an integer')
        if expected != self.state.generation:
            raise ControlError(412, "generation_mismatch",
                               f"generation is {self.state.generation}, not {expected}",
                               generation=self.state.generation)

    def _check_unchanged(self, seen: int, action: str) -> None:
        """_check_unchanged: after gates ran without the lock, nothing may have moved meanwhile."""
        self._check_unlocked(action)
        if self.state.generation != seen:
            raise ControlError(409, "conflict", f"the route changed (generation {seen} -> "
                               f"{self.state.generation}) while the gates ran; {action} not applied",
                               generation=self.state.generation)

    def _check_unlocked(self, action: str) -> None:
        if self.state.locked:
            why = f" ({self.state.lock_reason})" if self.state.lock_reason else ""
            raise ControlError(409, "locked", f"switching is locked{why}; {action} refused until unlock")

    # ------------------------------------------------------- router events

    def _drain_finished(self, drain: Drain) -> None:
        """_drain_finished: add a drain's outcome to the history entry of the switch that started it."""
        result = drain.result()
        for key in self.drain_counts:
            self.drain_counts[key] += result[key]
        fields = {"drain": result, **{k: result[k] for k in ("drained", "forced_closed", "dropped")}}
        level = logging.WARNING if result["forced_closed"] or result["dropped"] else logging.INFO
        log.log(level, "drain of %s after generation %d ended in %.3fs: drained %d, forced_closed %d, "
                "dropped %d, client_gone %d", drain.env.name, drain.generation, result["duration"] or 0.0,
                result["drained"], result["forced_closed"], result["dropped"], result["client_gone"])
        self._details[(drain.generation, drain.env.name)] = fields
        while len(self._details) > 100:
            del self._details[next(iter(self._details))]
        self._apply_details(self.state)
        self._save_later()

    def _apply_details(self, state: State) -> None:
        """_apply_details: put the known drain outcomes into ``state``'s history entries.

        A mutation that copied the state before a drain ended would otherwise
        replace the entry that got the outcome.
        """
        if not self._details:
            return
        for entry in state.history:
            fields = self._details.get((entry.get("generation"), entry.get("from")))
            if fields is not None and "drain" not in entry:
                entry.update(fields)

    def _hold_expired(self, released: int, why: str) -> None:
        """_hold_expired: the router resumed by itself at the hold's timeout; record it."""
        asyncio.get_running_loop().create_task(self._record_resume(released, why))

    async def _record_resume(self, released: int, why: str) -> None:
        async with self.lock:
            if self.router.held or not self.state.held:
                return   # a newer hold, or a resume, came first: this timeout is history already
            state = self._next()
            state.held = False
            state.hold_until = None
            self._record(state, "resume", why, released=released)
            try:
                await self._save(state)
            except ControlError as exc:
                log.error("%s", exc)
                return
            log.info("resume (%s): %d held requests released", why, released)


def _parse_iso(text: Any) -> datetime | None:
    """_parse_iso: a history entry's "at" (now_iso's form) as an aware datetime, or None."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


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
