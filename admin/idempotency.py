"""idempotency: retry-safe mutations; a repeated ``Idempotency-Key`` gets the first answer again.

A CI job that retries a flip after a client timeout must not flip twice (SPEC §7). The
admin API's mutation handler reads the key with ``parse_key`` and runs the call through
``IdempotencyCache.run``, scoped by (token identity, method, path, key):

- The first call with a key runs; its answer (status, headers, body) is remembered for
  ``WINDOW`` seconds after it was answered. A repeat within the window applies nothing and
  gets that answer again (the API marks it ``Idempotent-Replayed: true``).
- A repeat whose body differs (compared as parsed JSON, so ``{}`` and an empty body are
  the same request) is 422 ``idempotency_key_reused``, as the IETF
  httpapi-idempotency-key draft (draft-ietf-httpapi-idempotency-key-header) has it.
- A repeat while the first call still runs waits for it and gets the same answer (the
  draft suggests 409 there; waiting gives a CI retry the real outcome instead).
- Only answers below 500 are remembered: a 5xx (``state_unavailable``: nothing was saved,
  nothing applied) is handed to the calls waiting for it and then forgotten, so a retry
  runs again and can succeed. If the first call raised, its waiters run the call themselves.
- Memory is bounded: at most ``MAX_KEYS`` keys; expired answers go first, then the oldest
  answered one; when every slot holds a call still running, a new key is 503.
Keys (``parse_key``): 1 to 255 visible ASCII characters (RFC 9110 §5.6.2 VCHAR) other than
``"`` and backslash, optionally quoted as the draft's Structured Field string (RFC 8941 §3.3.3),
so ``"k"`` and ``k`` are the same key; one header per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .controller import ControlError

WINDOW = 600.0          # seconds an answer is remembered (SPEC §7: 10 minutes)
MAX_KEYS = 1000         # keys remembered at once, answered and running
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

Scope = tuple[str, str, str, str]   # (actor, method, path, key)


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer: one HTTP answer as remembered and replayed (the API builds a fresh Response each time)."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    done: asyncio.Future            # -> Answer, or None when the first call raised
    answered_at: float | None = None
    order: int = 0                  # answer order, for evicting the oldest answered entry


def parse_key(values: Sequence[str]) -> str | None:
    """parse_key: the Idempotency-Key of a request from all its header values; None without one."""
    if not values:
        return None
    if len(values) > 1:
        raise ControlError("bad_request", f"send one {HEADER} header, not {len(values)}")
    key = values[0]
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" and c not in '"\\' for c in key):
        raise ControlError("bad_request", f"{HEADER} must be 1 to {MAX_KEY_LENGTH} visible ASCII "
                                          f'characters (no spaces, control bytes, " or \\)')
    return key


class IdempotencyCache:
    """IdempotencyCache: the answers of recent mutations by scope; one per admin application."""

    def __init__(self, window: float = WINDOW, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._entries: dict[Scope, _Entry] = {}
        self._answered = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, scope: Scope, fingerprint: bytes,
                  call: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
        """run: (the answer, whether it is a replay) for one mutation carrying a key.

        ``fingerprint`` identifies the request's body; ``call`` runs the mutation and
        answers it (its exceptions propagate to this caller only).
        """
        while True:
            self._expire()
            entry = self._entries.get(scope)
            if entry is None:
                return await self._first(scope, fingerprint, call), False
            if entry.fingerprint != fingerprint:
                raise ControlError("idempotency_key_reused",
                                   f"this {HEADER} was used with another body for {scope[1]} {scope[2]} "
                                   f"in the last {self.window:g} seconds; send a new key")
            answer = await asyncio.shield(entry.done)
            if answer is not None:
                return answer, True
            # the first call raised and was forgotten: run it (or wait for whoever does now)

    async def _first(self, scope: Scope, fingerprint: bytes, call: Callable[[], Awaitable[Answer]]) -> Answer:
        self._make_room()
        entry = _Entry(fingerprint, asyncio.get_running_loop().create_future())
        self._entries[scope] = entry
        try:
            answer = await call()
        except BaseException:
            del self._entries[scope]
            entry.done.set_result(None)
            raise
        if answer.status < 500:
            self._answered += 1
            entry.answered_at, entry.order = self.clock(), self._answered
        else:
            del self._entries[scope]
        entry.done.set_result(answer)
        return answer

    def _expire(self) -> None:
        now = self.clock()
        for scope in [s for s, e in self._entries.items()
                      if e.answered_at is not None and now - e.answered_at >= self.window]:
            del self._entries[scope]

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_keys:
            answered = [(e.order, s) for s, e in self._entries.items() if e.answered_at is not None]
            if not answered:
                raise ControlError("idempotency_busy", f"{self.max_keys} mutations with an {HEADER} "
                                                       "are still running; retry later")
            del self._entries[min(answered)[1]]
