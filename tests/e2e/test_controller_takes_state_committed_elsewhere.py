"""The controller and changes another writer made: the store's watch reports a commit made
elsewhere and the controller takes it (route, hold, lock) onto the data plane; a commit that
finds the store moved on answers 409 conflict after taking what is stored, and if_generation
keeps answering 412 as it always did.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

import admin.controller
import admin.serve
from admin.state import FileStateStore, State, StateError
from tests.support.adminapi import post
from tests.support.wait import eventually


class FedStore(FileStateStore):
    """FedStore: the file store, whose watch reports what the test puts in ``FedStore.news``.

    A StateError put there is raised by the watch (once), as a store that lost its watch would.
    """

    news: asyncio.Queue
    watches = 0      # watches begun
    ended = 0        # watches ended (raised, or stopped by their consumer)

    async def watch(self, since):
        type(self).watches += 1
        try:
            while True:
                item = await self.news.get()
                if isinstance(item, StateError):
                    raise item
                yield item
        finally:
            type(self).ended += 1


@pytest.fixture
def fed(monkeypatch):
    """fed: stacks started by make_stack use FedStore; returns the queue of news to report."""
    FedStore.news = asyncio.Queue()
    FedStore.watches = FedStore.ended = 0
    monkeypatch.setattr(admin.serve, "FileStateStore", FedStore)
    return FedStore.news


async def until_shown(session: aiohttp.ClientSession, running, key: str, value) -> dict:
    """until_shown: GET /v1/status until its ``key`` is ``value``; returns that status."""
    async def shown():
        answer = await status(session, running)
        return answer if answer[key] == value else None
    return await eventually(shown, timeout=5)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with asyncio.timeout(5):
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def status(session: aiohttp.ClientSession, running) -> dict:
    async with asyncio.timeout(5):
        async with session.get(f"http://127.0.0.1:{running.admin_port}/v1/status") as resp:
            return await resp.json()


def took(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took the state committed elsewhere" in r.getMessage()]


# --- the watch's news ---

async def test_a_flip_committed_elsewhere_is_taken_and_served(make_stack, fed):
    running = await make_stack()
    controller = running.controller
    elsewhere = State(live="green", previous="blue", generation=2,
                      history=[{"at": "2024-05-01T10:00:00.000Z", "action": "flip", "from": "blue",
                                "to": "green", "generation": 2, "reason": "on another router"}])
    await fed.put((elsewhere, "elsewhere-1"))
    await eventually(lambda: controller.state.generation == 2, timeout=5)
    assert controller.revision == "elsewhere-1"
    async with aiohttp.ClientSession() as session:
        assert await get(session, f"http://127.0.0.1:{running.proxy.port}/") == (200, "green\n")
        shown = await status(session, running)
        async with session.get(f"http://127.0.0.1:{running.admin_port}/v1/history") as resp:
            events = (await resp.json())["events"]
    assert (shown["live"], shown["previous"], shown["generation"]) == ("green", "blue", 2)
    assert [e["reason"] for e in events] == ["on another router"]


async def test_a_hold_committed_elsewhere_holds_and_its_resume_releases(make_stack, fed):
    running = await make_stack()
    controller = running.controller
    until_then = time.time() + 30
    await fed.put((State(live="blue", previous=None, generation=1, held=True, hold_until=until_then), "r-1"))
    await eventually(lambda: controller.state.held, timeout=5)
    async with aiohttp.ClientSession() as session:
        assert (await status(session, running))["held"] is True
        waiting = asyncio.ensure_future(get(session, f"http://127.0.0.1:{running.proxy.port}/"))
        await until_shown(session, running, "held_requests", 1)
        assert not waiting.done()
        await fed.put((State(live="blue", previous=None, generation=1), "r-2"))
        assert await asyncio.wait_for(waiting, 5) == (200, "blue\n")
        assert (await status(session, running))["held"] is False
    assert controller.revision == "r-2"


async def test_a_lock_committed_elsewhere_refuses_a_flip_here(make_stack, fed):
    running = await make_stack()
    await fed.put((State(live="blue", previous=None, generation=1, locked=True, lock_reason="freeze"), "r-1"))
    await eventually(lambda: running.controller.state.locked, timeout=5)
    async with aiohttp.ClientSession() as session:
        code, body = await post(session, running, "/v1/flip", {"force": True})
    assert code == 409 and body["code"] == "locked" and "freeze" in body["error"]


async def test_a_report_behind_the_current_generation_is_not_taken(make_stack, fed, caplog):
    caplog.set_level(logging.INFO, logger="cutover.controller")
    running = await make_stack()
    controller = running.controller
    await controller.flip(force=True)                           # generation 2 here
    await fed.put((State(live="blue", previous="green", generation=1), "old"))
    await fed.put((State(live="green", previous="blue", generation=2, locked=True), "newer"))
    await eventually(lambda: controller.revision == "newer", timeout=5)
    assert len(took(caplog)) == 1 and controller.state.locked
    assert controller.state.live == "green"


async def test_a_report_naming_an_environment_not_configured_is_logged_not_taken(make_stack, fed, caplog):
    caplog.set_level(logging.INFO, logger="cutover.controller")
    running = await make_stack()
    controller = running.controller
    await fed.put((State(live="purple", previous="blue", generation=5), "purple"))
    await fed.put((State(live="blue", previous=None, generation=5), "good"))
    await eventually(lambda: controller.revision == "good", timeout=5)
    assert len(took(caplog)) == 1
    assert any('names environment "purple"' in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)
    async with aiohttp.ClientSession() as session:
        assert await get(session, f"http://127.0.0.1:{running.proxy.port}/") == (200, "blue\n")


async def test_a_watch_that_fails_is_logged_and_watched_again(make_stack, fed, caplog, monkeypatch):
    monkeypatch.setattr(admin.controller, "_WATCH_RETRY", 0.01)
    running = await make_stack()
    await fed.put(StateError("the watch stream was cut (test)"))
    await fed.put((State(live="green", previous="blue", generation=2), "after"))
    await eventually(lambda: running.controller.revision == "after", timeout=5)
    assert FedStore.watches == 2
    assert any("the watch stream was cut (test)" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


async def test_close_ends_the_watch(make_stack, fed):
    running = await make_stack()
    assert (FedStore.watches, FedStore.ended) == (1, 0)
    await running.controller.close()
    assert (FedStore.watches, FedStore.ended) == (1, 1)


# --- two routers on one state file ---

async def test_a_commit_after_another_router_wrote_the_file_is_a_conflict_then_takes_its_state(make_stack):
    one = await make_stack()
    two = await make_stack()           # the same state file, read before one's flip
    async with aiohttp.ClientSession() as session:
        code, body = await post(session, one, "/v1/flip", {"reason": "on one"})
        assert code == 200 and body["generation"] == 2

        code, body = await post(session, two, "/v1/lock", {"reason": "on two"})
        assert code == 409 and body["code"] == "conflict" and body["generation"] == 2, body
        assert "changed since this router read it" in body["error"]
        shown = await status(session, two)
        assert (shown["live"], shown["generation"], shown["locked"]) == ("green", 2, False)
        assert await get(session, f"http://127.0.0.1:{two.proxy.port}/") == (200, "green\n")

        code, body = await post(session, two, "/v1/flip", {"if_generation": 1})
        assert code == 412 and body["code"] == "generation_mismatch" and body["generation"] == 2
        code, body = await post(session, two, "/v1/flip", {"if_generation": 2, "reason": "on two"})
        assert code == 200 and (body["live"], body["generation"]) == ("blue", 3)

        code, body = await post(session, one, "/v1/lock")      # one is behind now
        assert code == 409 and body["code"] == "conflict" and body["generation"] == 3

    state, _ = FileStateStore(two.controller.store.path).read()
    assert (state.live, state.generation, state.locked) == ("blue", 3, False)
    assert [(e["action"], e["reason"]) for e in state.history] == [("flip", "on one"), ("flip", "on two")]
