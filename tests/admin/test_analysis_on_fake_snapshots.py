"""Post-flip analysis over a fake snapshot source and fake probes: no Router, no Controller, no socket.

Analysis gets the generation and environment it watches, its config, a snapshot source, the
probe URL and ``on_breach``; FakePlane and FakeHTTP (tests/support/fakeplane.py) stand in for the
data plane and for HTTP. Windows are a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio

import aiohttp

from admin.analysis import Analysis, p99
from admin.config import AnalysisConfig
from proxy.backends import LATENCY_BUCKETS
from tests.support.fakeplane import FakeHTTP, FakePlane
from tests.support.wait import eventually

URL = "http://127.0.0.1:8000/healthz"


class Breaches:
    """Breaches: an on_breach that records (analysis, reason) and succeeds, or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Analysis, str]] = []
        self.error = error

    async def __call__(self, analysis: Analysis, reason: str) -> None:
        self.calls.append((analysis, reason))
        if self.error is not None:
            raise self.error


def config(**fields) -> AnalysisConfig:
    values = {"window": 0.15, "interval": 0.01, "min_requests": 10, "probe_path": "/healthz"}
    values.update(fields)
    return AnalysisConfig(**values)


async def outcome(analysis: Analysis) -> dict:
    return await asyncio.wait_for(asyncio.shield(analysis.done), 5)


def probes(plane: FakePlane, status: int = 200) -> FakeHTTP:
    """probes: probe answers that the data plane counts in the live environment, as the real one does."""
    def answer(method, url, headers):
        plane.finish(plane.route.live, status)
        return status, "ok"
    return FakeHTTP(answer=answer)


async def test_a_quiet_window_passes_and_counts_only_user_requests():
    plane = FakePlane(live="green")
    plane.finish("green", 200, count=50)                 # before the flip: not in the window
    http = probes(plane)
    breaches = Breaches()
    analysis = Analysis(2, "green", config(), plane, URL, breaches, opener=http)
    plane.finish("green", 200, count=3)                  # user requests in the window
    result = await outcome(analysis)
    assert result["state"] == "passed" and breaches.calls == []
    assert result["requests"] == 3 and result["errors"] == 0 and result["probes"] == len(http.requests) > 0
    assert set(http.urls()) == {URL}


async def test_a_5xx_ratio_above_the_limit_calls_on_breach_with_the_reason():
    plane = FakePlane(live="green")
    breaches = Breaches()
    analysis = Analysis(2, "green", config(window=5), plane, URL, breaches, opener=probes(plane))
    plane.finish("green", 200, count=8)
    plane.finish("green", 503, count=4)
    result = await outcome(analysis)
    assert result["state"] == "rolled_back" and result["requests"] == 12 and result["errors"] == 4
    [(called, reason)] = breaches.calls
    assert called is analysis
    assert reason == "analysis: 5xx ratio 33.3% over 12 requests > max_error_ratio 5.0%"


async def test_below_min_requests_errors_do_not_decide():
    plane = FakePlane(live="green")
    breaches = Breaches()
    analysis = Analysis(2, "green", config(), plane, URL, breaches, opener=probes(plane))
    plane.finish("green", 503, count=9)
    result = await outcome(analysis)
    assert result["state"] == "passed" and result["errors"] == 9 and breaches.calls == []


async def test_a_p99_above_max_p99_is_a_breach():
    plane = FakePlane(live="green")
    breaches = Breaches()
    analysis = Analysis(2, "green", config(window=5, max_p99=0.5), plane, URL, breaches, opener=probes(plane))
    plane.finish("green", 200, seconds=0.001, count=5)
    plane.finish("green", 200, seconds=2.0, count=5)
    result = await outcome(analysis)
    assert result["state"] == "rolled_back"
    assert breaches.calls[0][1] == "analysis: p99 latency above 2.5s > max_p99 0.5s"


async def test_consecutive_failed_probes_are_a_breach():
    plane = FakePlane(live="green")
    http = FakeHTTP({URL: aiohttp.ClientConnectionError("refused")})
    breaches = Breaches()
    analysis = Analysis(2, "green", config(window=5, probe_failures=3), plane, URL, breaches, opener=http)
    result = await outcome(analysis)
    assert result["state"] == "rolled_back" and result["failed_probes"] == 3 and len(http.requests) == 3
    assert breaches.calls[0][1] == "analysis: probe GET /healthz failed: ClientConnectionError"
    assert "rollback_ms" in result


async def test_while_traffic_is_held_no_probe_is_sent_and_the_window_waits():
    plane = FakePlane(live="green")
    plane.held = True
    http = FakeHTTP()
    analysis = Analysis(2, "green", config(window=0.05), plane, URL, Breaches(), opener=http)
    await eventually(lambda: plane.calls >= 30, timeout=5)   # well past the window while held
    assert http.requests == [] and analysis.state == "running"
    plane.held = False
    result = await outcome(analysis)
    assert result["state"] == "passed" and len(http.requests) > 0


async def test_a_breach_whose_rollback_fails_is_failed_not_rolled_back():
    plane = FakePlane(live="green")
    http = probes(plane, 500)
    breaches = Breaches(RuntimeError("state file unavailable"))
    analysis = Analysis(2, "green", config(window=5), plane, URL, breaches, opener=http)
    result = await outcome(analysis)
    assert result["state"] == "failed"
    assert result["reason"] == ("breach (probe GET /healthz answered 500) but rollback failed: "
                                "state file unavailable")


async def test_cancel_ends_the_watch_without_a_breach():
    plane = FakePlane(live="green")
    breaches = Breaches()
    analysis = Analysis(2, "green", config(window=5), plane, URL, breaches, opener=FakeHTTP())
    await asyncio.sleep(0.03)
    analysis.cancel("superseded by flip to generation 3")
    result = await outcome(analysis)
    assert (result["state"], result["reason"]) == ("cancelled", "superseded by flip to generation 3")
    assert breaches.calls == []


def test_p99_reads_the_bucket_bound():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert p99(counts) is None
    counts[0] = 99
    counts[3] = 1
    assert p99(counts) == LATENCY_BUCKETS[0]
    counts[3] = 2
    assert p99(counts) == LATENCY_BUCKETS[3]
    counts[-1] = 1000
    assert p99(counts) == float("inf")
