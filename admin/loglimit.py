"""loglimit: bounded logging of what untrusted clients cause (malformed requests, refused auth).

Anyone who can reach the admin listener can send malformed or unauthenticated requests
as fast as the socket takes them; each deserves a log line, but a flood must not flood
the log. ``LogLimit.log`` writes at most ``burst`` lines per ``window`` seconds and counts
the rest; when the window ends, one line says how many were left out. Used by listener.py
(requests aiohttp's parser refused) and api.py (mutations refused for their token or
their origin). Only the event loop calls it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable


class LogLimit:
    """LogLimit: at most ``burst`` lines per ``window`` seconds, then a count of those left out."""

    def __init__(self, logger: logging.Logger, what: str, burst: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.what = what          # what the lines are about, for the summary line
        self.burst = burst
        self.window = window
        self.clock = clock
        self._started = -window   # when the current window began
        self._written = 0         # lines written in it
        self._left_out = 0        # lines counted, not written, in it
        self._summary: asyncio.TimerHandle | None = None

    def log(self, level: int, message: str, *args: object) -> None:
        """log: ``logger.log(level, message, *args)`` unless this window's burst is spent."""
        now = self.clock()
        if now - self._started >= self.window:
            self._summarize()
            self._started, self._written = now, 0
        if self._written < self.burst:
            self._written += 1
            self.logger.log(level, message, *args)
            return
        self._left_out += 1
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return   # no loop: the next line's window change reports the count
            self._summary = loop.call_later(max(0.0, self._started + self.window - now), self._summarize)

    def _summarize(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self._left_out:
            self.logger.warning("%d more lines about %s left out (at most %d per %gs)",
                                self._left_out, self.what, self.burst, self.window)
            self._left_out = 0
