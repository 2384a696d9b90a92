"""fakeplane: fake data planes for socket-free tests of gates and analysis: snapshots built from a few values.

``FakePlane`` holds servers, counters, the route and the hold as plain attributes a test
changes between calls; calling it (or ``snapshot()``) builds the frozen proxy Snapshot the
real data plane would give. ``FakeHTTP`` is an opener for gates.run_gates and Analysis:
each request is answered from a table (or a callable) and recorded, no socket involved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from proxy import (LATENCY_BUCKETS, EnvironmentSnapshot, Route, RouterSnapshot, ServerSnapshot,
                   Snapshot)


class FakePlane:
    """FakePlane: a snapshot source over two environments whose figures a test sets."""

    def __init__(self, servers: dict[str, list[str]] | None = None, live: str = "blue") -> None:
        servers = servers or {"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001"]}
        self.names = tuple(servers)
        self.route = Route(1, live, environments=self.names)
        self.servers = {name: list(addresses) for name, addresses in servers.items()}
        self.down: set[str] = set()                      # addresses failing their health checks
        self.responses = {name: [0] * 6 for name in self.names}
        self.latency = {name: [0] * (len(LATENCY_BUCKETS) + 1) for name in self.names}
        self.held = False
        self.listen = "127.0.0.1:8000"
        self.preview_listen: str | None = None
        self.preview_token_set = False
        self.calls = 0                                   # snapshots taken

    def finish(self, env: str, status: int, seconds: float = 0.001, count: int = 1) -> None:
        """finish: ``count`` requests of ``env`` ended with ``status`` after ``seconds``."""
        self.responses[env][status // 100] += count
        bucket = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        self.latency[env][bucket] += count

    def __call__(self) -> Snapshot:
        return self.snapshot()

    def snapshot(self) -> Snapshot:
        self.calls += 1
        environments = []
        for name in self.names:
            servers = tuple(ServerSnapshot(address=a, healthy=a not in self.down, inflight=0, connections=0,
                                           weight=1, requests=0, upstream_errors=())
                            for a in self.servers[name])
            environments.append(EnvironmentSnapshot(
                name=name, healthy=any(s.healthy for s in servers), inflight=0, connections=0, servers=servers,
                responses=tuple(self.responses[name]), latency_counts=tuple(self.latency[name]),
                latency_sum=0.0, bytes_in=0, bytes_out=0))
        router = RouterSnapshot(route=self.route, held=self.held, held_requests=0, hold_until=None,
                                environments=tuple(environments), drains=())
        return Snapshot(router=router, listen=self.listen, preview_listen=self.preview_listen,
                        client_connections=0, unrouted=(0,) * 6, client_body_timeouts=0,
                        preview_token_set=self.preview_token_set)


Answer = tuple[int, str] | Exception


class FakeHTTP:
    """FakeHTTP: an opener whose Fetch answers from ``answers`` (url -> (status, body) or an exception).

    ``answer(method, url, headers)`` may be given instead, for answers that depend on the call;
    a URL with no answer gets (200, ""). ``requests`` records (method, url, headers) in order.
    """

    def __init__(self, answers: dict[str, Answer] | None = None,
                 answer: Callable[[str, str, dict], Answer] | None = None) -> None:
        self.answers = answers or {}
        self.answer = answer
        self.requests: list[tuple[str, str, dict]] = []
        self.opened: list[float] = []      # the timeout of each session opened

    @asynccontextmanager
    async def __call__(self, timeout: float) -> AsyncIterator:
        self.opened.append(timeout)

        async def fetch(method: str, url: str, headers: dict, follow: bool) -> tuple[int, str]:
            self.requests.append((method, url, dict(headers)))
            found = self.answer(method, url, headers) if self.answer else self.answers.get(url, (200, ""))
            if isinstance(found, Exception):
                raise found
            return found
        yield fetch

    def urls(self) -> list[str]:
        return [url for _, url, _ in self.requests]
