"""wait: eventually, the one bounded poller of the suite.

Tests and helpers wait for a condition with it instead of a loop of their own: every wait is
bounded, and one that times out fails the test naming what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect


async def eventually(check, timeout: float = 2.0, interval: float = 0.01, what: str | None = None):
    """eventually: call ``check`` until it returns something truthy; returns that value.

    ``check`` is a plain or an async callable, called at once and then every ``interval``
    seconds. After ``timeout`` seconds the test fails with AssertionError naming ``what``
    (by default the source line of the check).
    """
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(interval)
    except TimeoutError:
        if not bound.expired():
            raise   # the check's own timeout, not this wait's
        raise AssertionError(f"{what or _described(check)}: not reached within {timeout}s") from None


def _described(check) -> str:
    """_described: the first source line of ``check`` (a lambda's is the line that waits on it)."""
    try:
        return inspect.getsourcelines(check)[0][0].strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
