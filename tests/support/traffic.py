"""traffic: keep-alive clients sending GET / to a proxy for as long as a test lets them, counting
which backend answered each request and every request that failed."""

from __future__ import annotations

import asyncio

import aiohttp


class Traffic:
    """Traffic: ``clients`` keep-alive clients on one session, each at most ``limit`` requests.

    ``seen`` counts the answers by body (a test backend answers its name), ``failures`` lists
    every answer that was not a 200 and every request that got none. ``stop`` ends them.
    """

    def __init__(self, port: int, clients: int, limit: int = 3000) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.clients = clients
        self.limit = limit
        self.seen: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients))
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """stop: let every client finish its request in flight, then close the session."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _client(self) -> None:
        assert self._session is not None
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            try:
                async with self._session.get(self.url) as resp:
                    text = (await resp.text()).strip()
                    if resp.status != 200:
                        self.failures.append(f"{resp.status} {text}")
                    self.seen[text] = self.seen.get(text, 0) + 1
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))
