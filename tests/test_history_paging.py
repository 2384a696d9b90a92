"""GET /v1/history's paging (SPEC §7) and the history cap (config `history_limit`).

``?limit=N`` answers the newest N events, still oldest first; ``?since=ISO`` the events
recorded after that time; a bad value is a 400 naming the parameter. The number of events
kept is the config key ``history_limit`` (default 1000), in memory and in the state file.
Real stacks on loopback (make_stack), real HTTP to the admin API.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adminapi import Admin, assert_error, session  # noqa: F401  (session is a fixture)
from admin.config import ConfigError, effective_config, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "config" / "cutover.yaml"


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


def config_with(**top) -> dict:
    return {"admin": {"auth": "none"}, "environments": {"blue": {"servers": ["127.0.0.1:9001"]},
                                                         "green": {"servers": ["127.0.0.1:9101"]}},
            **top}


@pytest.mark.parametrize("value", [0, -1, 100001, "1000", 1.5, True, None, [10]])
def test_a_bad_history_limit_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(history_limit=value), Path("/srv"), {})
    assert caught.value.key == "history_limit"
    assert re.search(r"expected an integer|must be between 1 and 100000", caught.value.message), caught.value


def test_history_limit_is_read_and_shown_in_the_effective_config():
    cfg = parse_config(config_with(history_limit=50), Path("/srv"), {})
    assert cfg.history_limit == 50
    assert effective_config(cfg)["history_limit"] == 50
    assert parse_config(config_with(), Path("/srv"), {}).history_limit == 1000


def test_the_reference_config_documents_history_limit_with_its_default(tmp_path):
    text = REFERENCE.read_text()
    line = re.search(r"^history_limit: *(\d+)", text, re.MULTILINE)
    assert line is not None and line.group(1) == "1000"
    comment = text[:line.start()].rsplit("\n\n", 1)[-1]
    assert "Default 1000" in comment and "history" in comment
    cfg = load_config(Path(shutil.copy(REFERENCE, tmp_path / "cutover.yaml")), {"CUTOVER_TOKEN": "t"})
    assert cfg.history_limit == 1000
