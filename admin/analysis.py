"""Post-flip analysis: watch the new live environment and roll back on a breach (SPEC §6).

The Controller starts one Analysis after each flip or promote when
``analysis.window`` is set, with narrow inputs: a snapshot source, the probe URL
(the router's main listener: the user's path) and an ``on_breach`` callback.
Every ``interval`` it sends a synthetic probe and reads the live environment's
own counters since the flip from a snapshot. A breach calls ``on_breach`` at
once (the Controller's auto_rollback, which records ``auto_rollback`` with the
reason): ``probe_failures`` consecutive failed probes, or, once at least
``min_requests`` user requests finished in the window, a 5xx ratio above
``max_error_ratio`` or a p99 latency above ``max_p99``. While traffic is held
no probe is sent and the window is extended. The outcome is passed,
rolled_back, cancelled (a newer switch), or failed (a breach whose rollback
failed, or the analysis itself broke).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from proxy import LATENCY_BUCKETS

from .gates import Fetch, Opener, http_fetch

if TYPE_CHECKING:
    from proxy import EnvironmentSnapshot, Snapshot

    from .config import AnalysisConfig

log = logging.getLogger("cutover.analysis")


def p99(counts: list[int]) -> float | None:
    """p99: the upper bound of the latency bucket holding the 99th percentile (None when empty)."""
    total = sum(counts)
    if not total:
        return None
    need = 0.99 * total
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), counts):
        seen += count
        if seen >= need:
            return bound
    return float("inf")


class Analysis:
    """Analysis: one watch over the environment a switch made live.

    ``snapshot`` reads the data plane; ``probe_url`` is where the synthetic probes go;
    ``on_breach(analysis, reason)`` rolls back (its outcome decides rolled_back or failed);
    ``opener`` gives the probes' HTTP (http_fetch; tests pass one without sockets).
    """

    def __init__(self, generation: int, env: str, config: "AnalysisConfig", snapshot: Callable[[], "Snapshot"],
                 probe_url: str, on_breach: Callable[["Analysis", str], Awaitable[object]],
                 opener: Opener = http_fetch) -> None:
        self.generation = generation
        self.env = env
        self.config = config
        self._snapshot = snapshot
        self.probe_url = probe_url
        self._on_breach = on_breach
        self._opener = opener
        self.state = "running"          # running | passed | rolled_back | cancelled | failed
        self.reason: str | None = None
        self.started = time.time()
        self.probes = 0
        self.failed_probes = 0
        self.requests = 0
        self.errors = 0
        self.probe_answers = 0          # probe responses, and their 5xx: taken out of the live figures
        self.probe_errors = 0
        self.first_failure_at: float | None = None
        self.rolled_back_at: float | None = None
        self.done = asyncio.get_running_loop().create_future()
        environment = self._environment()
        self._responses = environment.responses
        self._latency = environment.latency_counts
        self._task = asyncio.create_task(self._run())

    def _environment(self) -> "EnvironmentSnapshot":
        """_environment: the watched environment in a fresh snapshot (its counters since start-up)."""
        return self._snapshot().router.env(self.env)

    def cancel(self, why: str) -> None:
        """cancel: a newer switch replaced this one; stop watching."""
        if self.state == "running":
            self.state = "cancelled"
            self.reason = why
            self._task.cancel()
            self._finish()

    def to_dict(self) -> dict:
        out = {"generation": self.generation, "environment": self.env, "state": self.state,
               "reason": self.reason, "window": self.config.window, "probes": self.probes,
               "failed_probes": self.failed_probes, "requests": self.requests, "errors": self.errors}
        if self.first_failure_at is not None and self.rolled_back_at is not None:
            out["rollback_ms"] = round((self.rolled_back_at - self.first_failure_at) * 1000, 3)
        return out

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.to_dict())

    def _live_breach(self) -> str | None:
        environment = self._environment()
        delta = [now - then for now, then in zip(environment.responses, self._responses)]
        # Only user traffic decides (SPEC §6: a minimum sample, so low traffic does not);
        # the probes speak for themselves through probe_failures.
        self.requests = max(0, sum(delta) - self.probe_answers)
        self.errors = max(0, delta[5] - self.probe_errors)
        if self.requests < self.config.min_requests:
            return None
        ratio = self.errors / self.requests
        if ratio > self.config.max_error_ratio:
            return (f"5xx ratio {ratio:.1%} over {self.requests} requests "
                    f"> max_error_ratio {self.config.max_error_ratio:.1%}")
        if self.config.max_p99 is not None:
            latency = p99([now - then for now, then in zip(environment.latency_counts, self._latency)])
            if latency is not None and latency > self.config.max_p99:
                return f"p99 latency above {latency if latency != float('inf') else LATENCY_BUCKETS[-1]}s " \
                       f"> max_p99 {self.config.max_p99}s"
        return None

    async def _probe(self, fetch: Fetch) -> str | None:
        self.probes += 1
        try:
            status, _ = await fetch("GET", self.probe_url, {}, True)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return f"probe GET {self.config.probe_path} failed: {type(exc).__name__}"
        self.probe_answers += 1
        if status < 500:
            return None
        self.probe_errors += 1
        return f"probe GET {self.config.probe_path} answered {status}"

    async def _run(self) -> None:
        deadline = time.monotonic() + self.config.window
        consecutive = 0
        try:
            async with self._opener(max(self.config.interval, 1.0)) as fetch:
                while time.monotonic() < deadline:
                    if self._snapshot().router.held:
                        # Traffic is held on purpose: a probe would only wait; the window waits too,
                        # by the time the hold really took (a busy loop may sleep longer than asked).
                        paused = time.monotonic()
                        await asyncio.sleep(self.config.interval)
                        deadline += time.monotonic() - paused
                        continue
                    failure = await self._probe(fetch)
                    if failure is None:
                        consecutive = 0
                    else:
                        self.failed_probes += 1
                        consecutive += 1
                        if self.first_failure_at is None:
                            self.first_failure_at = time.perf_counter()
                    breach = failure if consecutive >= self.config.probe_failures else self._live_breach()
                    if breach is None and failure is not None:
                        breach = self._live_breach()
                    if breach is not None:
                        await self._roll_back(breach)
                        return
                    await asyncio.sleep(min(self.config.interval, max(0.0, deadline - time.monotonic())))
                breach = self._live_breach()
                if breach is not None:
                    await self._roll_back(breach)
                    return
            self.state = "passed"
            self.reason = f"{self.probes} probes, {self.requests} requests, {self.errors} 5xx in the window"
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a bug here must not leave CI waiting forever
            log.exception("analysis of generation %d failed", self.generation)
            self.state = "failed"
            self.reason = f"analysis stopped: {type(exc).__name__}"
        finally:
            self._finish()

    async def _roll_back(self, breach: str) -> None:
        if self.first_failure_at is None:
            self.first_failure_at = time.perf_counter()
        self.reason = breach
        log.warning("analysis of generation %d on %s: %s; rolling back", self.generation, self.env, breach)
        try:
            await self._on_breach(self, f"analysis: {breach}")
        except Exception as exc:
            log.error("auto-rollback failed: %s", exc)
            self.state = "failed"
            self.reason = f"breach ({breach}) but rollback failed: {exc}"
            return
        self.rolled_back_at = time.perf_counter()
        self.state = "rolled_back"
