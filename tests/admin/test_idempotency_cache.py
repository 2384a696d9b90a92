"""admin/idempotency.py on its own: the Idempotency-Key header's syntax, and the cache of first
answers, bounded in time (WINDOW) and size (MAX_KEYS) and scoped by identity, on a fake clock.
The retry-safe mutations it makes are tests/e2e/test_admin_idempotency.py.
"""

from __future__ import annotations

import asyncio

import pytest

from admin.controller import ControlError
from admin.idempotency import MAX_KEYS, WINDOW, Answer, IdempotencyCache, parse_key


@pytest.mark.parametrize("values,expected", [
    ([], None), (["abc"], "abc"), (['"abc"'], "abc"), (["x" * 255], "x" * 255),
    (["8e03978e-40d5-43e8-bc93-6894a57f9324"], "8e03978e-40d5-43e8-bc93-6894a57f9324"),
])
def test_parse_key_accepts(values, expected):
    assert parse_key(values) == expected


@pytest.mark.parametrize("values", [[""], ['""'], ["x" * 256], ["a b"], ["\x00"], ["\x7f"], ["é"], ["a", "b"],
                                    ['"a'], ['a"b'], ["a\\b"]])
def test_parse_key_refuses(values):
    with pytest.raises(ControlError) as caught:
        parse_key(values)
    assert caught.value.status == 400 and "Idempotency-Key" in str(caught.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str, status: int = 200) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, text.encode())


async def test_the_cache_forgets_an_answer_after_its_window():
    clock = Clock()
    cache = IdempotencyCache(clock=clock)
    calls = []

    async def run():
        calls.append(1)
        return answer(f"call {len(calls)}")
    first, replayed = await cache.run(("admin", "POST", "/v1/flip", "k"), b"{}", run)
    assert (first.body, replayed) == (b"call 1", False)
    clock.now += WINDOW - 1
    again, replayed = await cache.run(("admin", "POST", "/v1/flip", "k"), b"{}", run)
    assert (again.body, replayed) == (b"call 1", True)
    clock.now += 2
    later, replayed = await cache.run(("admin", "POST", "/v1/flip", "k"), b"{}", run)
    assert (later.body, replayed) == (b"call 2", False)


async def test_the_cache_holds_at_most_max_keys_answers():
    cache = IdempotencyCache(clock=Clock(), max_keys=10)

    async def run():
        return answer("ok")
    for i in range(25):
        await cache.run(("admin", "POST", "/v1/lock", f"k{i}"), b"", run)
        assert len(cache) <= 10
    assert MAX_KEYS >= 100


async def test_the_cache_scopes_keys_by_identity():
    cache = IdempotencyCache(clock=Clock())
    calls = []

    async def run():
        calls.append(1)
        return answer(str(len(calls)))
    await cache.run(("admin", "POST", "/v1/lock", "k"), b"", run)
    other, replayed = await cache.run(("none", "POST", "/v1/lock", "k"), b"", run)
    assert (other.body, replayed) == (b"2", False)


async def test_the_cache_refuses_when_full_of_calls_still_running():
    cache = IdempotencyCache(clock=Clock(), max_keys=2)
    gate = asyncio.Event()

    async def slow():
        await gate.wait()
        return answer("done")
    running = [asyncio.create_task(cache.run(("admin", "POST", "/v1/flip", f"k{i}"), b"", slow)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ControlError) as caught:
        await cache.run(("admin", "POST", "/v1/flip", "k3"), b"", slow)
    assert caught.value.status == 503
    gate.set()
    assert [(await task)[0].body for task in running] == [b"done", b"done"]


async def test_a_failed_first_call_lets_its_waiters_run_themselves():
    cache = IdempotencyCache(clock=Clock())
    gate = asyncio.Event()
    calls = []

    async def run():
        calls.append(1)
        if len(calls) == 1:
            await gate.wait()
            raise RuntimeError("bug")
        return answer("second")
    first = asyncio.create_task(cache.run(("admin", "POST", "/v1/flip", "k"), b"", run))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.run(("admin", "POST", "/v1/flip", "k"), b"", run))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    result, replayed = await waiter
    assert (result.body, replayed) == (b"second", False)
