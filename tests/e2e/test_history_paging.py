"""GET /v1/history's paging (SPEC §7) and the history cap (config `history_limit`).

``?limit=N`` answers the newest N events, still oldest first; ``?since=ISO`` the events
recorded after that time; a bad value is a 400 naming the parameter. The number of events
kept is the config key ``history_limit`` (default 1000), in memory and in the state file
(the key itself: tests/admin/test_history_limit_config.py). Real stacks on loopback
(make_stack), real HTTP to the admin API.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.adminapi import Admin, assert_error


def at(event: dict) -> datetime:
    """at: an event's time as an aware datetime."""
    return datetime.fromisoformat(event["at"].replace("Z", "+00:00"))


async def lock_unlock(api: Admin, pairs: int) -> None:
    """lock_unlock: ``pairs`` lock + unlock calls, two history events each."""
    for i in range(pairs):
        await api.ok("/v1/lock", {"reason": f"lock {i}"})
        await api.ok("/v1/unlock", {"reason": f"unlock {i}"})


async def history(api: Admin, query: str) -> tuple[int, dict]:
    status, payload, _ = await api.get("/v1/history" + query)
    return status, payload


@pytest.fixture
async def api(make_stack, session):
    running = await make_stack()
    return Admin(session, running.admin_port)


async def test_limit_gives_the_newest_n_events_oldest_first(api):
    await lock_unlock(api, 3)
    everything = await api.events()
    assert len(everything) == 6
    for n in (1, 2, 5, 6, 7, 1000):
        status, payload = await history(api, f"?limit={n}")
        assert status == 200, payload
        assert payload["events"] == everything[-n:], n
    status, payload = await history(api, "?limit=2")
    assert [e["reason"] for e in payload["events"]] == ["lock 2", "unlock 2"]


async def test_since_gives_the_events_recorded_after_that_time(api):
    await lock_unlock(api, 3)
    everything = await api.events()
    status, payload = await history(api, "?since=2000-01-01T00:00:00Z")
    assert status == 200 and payload["events"] == everything
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    status, payload = await history(api, f"?since={future}")
    assert status == 200 and payload["events"] == []
    for cut in everything:
        status, payload = await history(api, f"?since={cut['at']}")
        assert status == 200, payload
        assert payload["events"] == [e for e in everything if at(e) > at(cut)], cut["at"]
    # the same instant written with an offset (the + percent-encoded, as a URL must carry it)
    first = at(everything[0]).astimezone(timezone(timedelta(hours=2)))
    status, payload = await history(api, "?since=" + first.isoformat().replace("+", "%2B"))
    assert status == 200 and payload["events"] == [e for e in everything if at(e) > at(everything[0])]


async def test_limit_and_since_together_give_the_newest_n_after_that_time(api):
    await lock_unlock(api, 2)
    everything = await api.events()
    status, payload = await history(api, "?since=2000-01-01T00:00:00Z&limit=3")
    assert status == 200 and payload["events"] == everything[-3:]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    status, payload = await history(api, f"?limit=3&since={future}")
    assert status == 200 and payload["events"] == []


async def test_history_without_a_query_still_answers_every_event(api):
    await lock_unlock(api, 2)
    status, payload = await history(api, "")
    assert status == 200 and [e["action"] for e in payload["events"]] == ["lock", "unlock"] * 2


@pytest.mark.parametrize(("query", "named"), [
    ("?limit=0", "limit"),
    ("?limit=-1", "limit"),
    ("?limit=abc", "limit"),
    ("?limit=1.5", "limit"),
    ("?limit=", "limit"),
    ("?limit=%20", "limit"),
    ("?limit=1e3", "limit"),
    ("?limit=" + "9" * 5000, "limit"),
    ("?limit=1&limit=2", "limit"),
    ("?since=yesterday", "since"),
    ("?since=", "since"),
    ("?since=2024-13-01T00:00:00Z", "since"),
    ("?since=2024-01-01T25:00:00Z", "since"),
    ("?since=1714560000", "since"),
    ("?since=2000-01-01T00:00:00Z&since=2001-01-01T00:00:00Z", "since"),
    ("?page=2", "page"),
    ("?limit=2&colour=blue", "colour"),
])
async def test_a_bad_query_is_a_400_naming_the_parameter(api, query, named):
    await lock_unlock(api, 1)
    status, payload = await history(api, query)
    assert_error(status, payload, 400, "bad_request")
    assert f'"{named}"' in payload["error"], payload


async def test_history_limit_caps_the_events_kept_in_memory_and_in_the_state_file(make_stack, session,
                                                                                  tmp_path):
    running = await make_stack(history_limit=3)
    api = Admin(session, running.admin_port)
    await lock_unlock(api, 3)
    events = await api.events()
    assert [e["reason"] for e in events] == ["unlock 1", "lock 2", "unlock 2"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [e["reason"] for e in saved["history"]] == ["unlock 1", "lock 2", "unlock 2"]


async def test_history_limit_defaults_to_1000(make_stack, session):
    running = await make_stack()
    assert running.controller.config.history_limit == 1000
    assert running.controller.store.history_limit == 1000
