"""FileStateStore as an etcd-shaped store: commit is a compare-and-swap on the revision it read,
history grows by events (append, amend, add_drain) without moving that revision, everything is
durable across a reopen, and the file's format is the one it always was.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading

import pytest

from admin.state import (
    FileStateStore, State, StateConflict, StateError, StateNotDurable, add_drain_outcome, amend_event,
)


def flip(generation: int, source: str, target: str, at: str = "2024-05-01T10:00:00.000Z") -> dict:
    return {"at": at, "action": "flip", "from": source, "to": target, "generation": generation,
            "reason": None, "actor": "admin", "client": "127.0.0.1"}


def blue_at_1() -> State:
    return State(live="blue", previous=None, generation=1)


def green_at_2(*history: dict) -> State:
    return State(live="green", previous="blue", generation=2, history=list(history))


OUTCOME = {"drained": 3, "forced_closed": 1, "dropped": 0, "client_gone": 2, "remaining": 0,
           "duration": 0.25}


# --- load and commit ---

async def test_load_without_a_file_is_none_and_no_revision(tmp_path):
    assert await FileStateStore(tmp_path / "state.json").load() == (None, None)


async def test_load_gives_the_state_and_the_revision_read_gives(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    written = store.save(blue_at_1())
    state, revision = await store.load()
    assert state == blue_at_1() and revision == written == store.read()[1]
    assert isinstance(revision, str) and revision


async def test_a_first_commit_expects_nothing_and_creates_the_file(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    revision = await store.commit(blue_at_1(), None, flip(1, "blue", "blue"))
    state, read = FileStateStore(store.path).read()
    assert read == revision
    assert (state.live, state.generation) == ("blue", 1) and state.history == [flip(1, "blue", "blue")]


async def test_commit_writes_the_facts_and_adds_its_event_to_the_files_history(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    old = flip(1, "green", "blue", at="2024-05-01T09:00:00.000Z")
    store.save(State(live="blue", previous="green", generation=1, history=[old]))
    _, revision = await store.load()
    new = green_at_2({"at": "x", "action": "not written: the store keeps its own history"})
    event = flip(2, "blue", "green")
    await store.commit(new, revision, event)
    state, _ = FileStateStore(store.path).read()
    assert (state.live, state.previous, state.generation) == ("green", "blue", 2)
    assert state.history == [old, event]


async def test_commit_takes_its_state_and_event_before_it_waits_for_the_disk(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    revision = store.save(blue_at_1())
    state, event = green_at_2(), flip(2, "blue", "green")
    task = asyncio.ensure_future(store.commit(state, revision, event))
    await asyncio.sleep(0)             # the commit runs up to its thread, then the caller goes on
    state.live, state.previous, event["reason"] = "blue", None, "changed afterwards"
    await task
    saved, _ = store.read()
    assert saved.live == "green" and saved.history[-1]["reason"] is None


async def test_every_change_writes_from_a_thread_not_the_event_loop(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json")
    loop_thread = threading.get_ident()
    writers = []
    real_write = FileStateStore._write

    def recording_write(self, state, lines, check):
        writers.append(threading.get_ident())
        return real_write(self, state, lines, check)

    monkeypatch.setattr(FileStateStore, "_write", recording_write)
    revision = await store.commit(green_at_2(), None, flip(2, "blue", "green"))
    await store.append({"at": "2024-05-01T10:01:00.000Z", "action": "attest"})
    await store.amend(flip(2, "blue", "green"), {"recovery_ms": 1.5})
    await store.add_drain(2, "blue", OUTCOME)
    await store.commit(green_at_2(), revision)
    assert len(writers) == 5 and loop_thread not in writers


# --- compare-and-swap ---

async def test_a_commit_on_a_stale_revision_is_a_conflict_and_writes_nothing(tmp_path):
    path = tmp_path / "state.json"
    FileStateStore(path).save(blue_at_1())
    one, two = FileStateStore(path), FileStateStore(path)
    _, seen_by_one = await one.load()
    _, seen_by_two = await two.load()
    await one.commit(green_at_2(), seen_by_one, flip(2, "blue", "green"))
    after_one = path.read_bytes()

    with pytest.raises(StateConflict) as caught:
        await two.commit(State(live="blue", previous=None, generation=1, locked=True), seen_by_two,
                         {"at": "2024-05-01T10:02:00.000Z", "action": "lock"})
    assert str(path) in str(caught.value) and "generation 2" in str(caught.value)
    assert isinstance(caught.value, StateError)
    assert path.read_bytes() == after_one
    assert os.listdir(tmp_path) == ["state.json"]

    state, fresh = await two.load()              # read again, then the commit goes through
    assert state.live == "green"
    state.locked = True
    await two.commit(state, fresh, {"at": "2024-05-01T10:02:00.000Z", "action": "lock"})
    final, _ = FileStateStore(path).read()
    assert final.locked and final.live == "green"
    assert [e["action"] for e in final.history] == ["flip", "lock"]


async def test_expecting_no_file_conflicts_with_one_written_meanwhile(tmp_path):
    path = tmp_path / "state.json"
    late = FileStateStore(path)
    assert (await late.load())[1] is None
    FileStateStore(path).save(green_at_2())
    with pytest.raises(StateConflict):
        await late.commit(blue_at_1(), None)
    assert FileStateStore(path).read()[0].live == "green"


async def test_a_hold_or_lock_moves_the_revision_though_the_generation_stays(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    first = store.save(blue_at_1())
    held = await store.commit(State(live="blue", previous=None, generation=1, held=True,
                                    hold_until=1_700_000_000.5), first)
    assert held != first
    with pytest.raises(StateConflict):
        await FileStateStore(store.path).commit(State(live="blue", previous=None, generation=1,
                                                      locked=True), first)


async def test_appending_history_does_not_move_the_revision(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    revision = await store.commit(green_at_2(), None, flip(2, "blue", "green"))
    await store.append({"at": "2024-05-01T10:01:00.000Z", "action": "attest"})
    await store.amend(flip(2, "blue", "green"), {"recovery_ms": 2.0})
    await store.add_drain(2, "blue", OUTCOME)
    assert store.read()[1] == revision
    await store.commit(State(live="green", previous="blue", generation=2, locked=True), revision)


async def test_two_stores_changing_one_file_at_once_lose_no_event(tmp_path):
    path = tmp_path / "state.json"
    FileStateStore(path).save(blue_at_1())
    one, two = FileStateStore(path), FileStateStore(path)

    async def appends(store: FileStateStore, name: str) -> None:
        for n in range(15):
            await store.append({"at": f"2024-05-01T10:00:{n:02d}.000Z", "action": "attest", "by": name})

    await asyncio.wait_for(asyncio.gather(appends(one, "one"), appends(two, "two")), 30)
    history = FileStateStore(path).read()[0].history
    assert sorted((e["by"], e["at"]) for e in history) == sorted(
        (name, f"2024-05-01T10:00:{n:02d}.000Z") for name in ("one", "two") for n in range(15))


# --- history events: durable across a reopen ---

async def test_append_is_durable_across_a_reopen(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    await store.commit(blue_at_1(), None)
    event = {"at": "2024-05-01T10:01:00.000Z", "action": "attest", "by": "ci"}
    await store.append(event)
    state, _ = await FileStateStore(store.path).load()
    assert state.history == [event]


async def test_append_keeps_the_newest_history_limit_events(tmp_path):
    store = FileStateStore(tmp_path / "state.json", history_limit=2)
    await store.commit(blue_at_1(), None)
    for n in range(4):
        await store.append({"at": f"2024-05-01T10:00:0{n}.000Z", "action": "attest", "n": n})
    assert [e["n"] for e in store.read()[0].history] == [2, 3]


async def test_append_without_a_saved_state_is_an_error_naming_the_file(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    with pytest.raises(StateError, match="no state saved yet") as caught:
        await store.append({"at": "2024-05-01T10:00:00.000Z", "action": "attest"})
    assert str(store.path) in str(caught.value)


async def test_add_drain_fills_the_entry_of_its_switch_durably(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    canary = {"at": "2024-05-01T10:05:00.000Z", "action": "canary", "from": "green", "to": "green",
              "generation": 3}
    store.save(green_at_2(flip(2, "blue", "green")))
    await store.append(canary)
    await store.add_drain(2, "blue", OUTCOME)
    state, _ = await FileStateStore(store.path).load()
    entry = state.history[0]
    assert entry["drain"] == OUTCOME
    assert (entry["drained"], entry["forced_closed"], entry["dropped"]) == (3, 1, 0)
    assert state.history[1] == canary


async def test_add_drain_leaves_an_outcome_already_there_and_ignores_a_missing_entry(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    await store.commit(green_at_2(), None, flip(2, "blue", "green"))
    await store.add_drain(2, "blue", OUTCOME)
    before = store.path.read_bytes()
    await store.add_drain(2, "blue", {**OUTCOME, "drained": 99})
    await store.add_drain(7, "blue", OUTCOME)
    assert store.path.read_bytes() == before


async def test_amend_adds_fields_to_the_named_event_durably(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    hold = {"at": "2024-05-01T10:00:00.000Z", "action": "hold", "generation": 2}
    resume = {"at": "2024-05-01T10:00:01.000Z", "action": "resume", "generation": 2, "released": 0}
    store.save(green_at_2(hold, resume))
    await store.amend({"at": resume["at"], "action": "resume", "generation": 2}, {"released": 4})
    history = FileStateStore(store.path).read()[0].history
    assert history == [hold, {**resume, "released": 4}]


def test_the_history_rules_are_plain_functions_over_a_list():
    history = [flip(2, "blue", "green"), flip(3, "green", "blue", at="2024-05-01T10:01:00.000Z")]
    assert add_drain_outcome(history, 3, "green", OUTCOME) is True
    assert add_drain_outcome(history, 3, "green", OUTCOME) is False
    assert add_drain_outcome(history, 3, "blue", OUTCOME) is False
    assert "drain" not in history[0] and history[1]["drain"] == OUTCOME
    assert amend_event(history, flip(2, "blue", "green"), {"recovery_ms": 3.0}) is True
    assert history[0]["recovery_ms"] == 3.0
    assert amend_event(history, flip(9, "blue", "green"), {"recovery_ms": 1.0}) is False


# --- failures and the format ---

async def test_a_failed_commit_is_a_state_error_not_a_conflict_and_keeps_the_file(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json")
    revision = store.save(blue_at_1())
    before = store.path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StateError, match="No space left on device") as caught:
        await store.commit(green_at_2(), revision, flip(2, "blue", "green"))
    assert not isinstance(caught.value, StateConflict)
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


async def test_a_commit_not_folder_synced_reports_the_revision_it_wrote(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json")
    revision = store.save(blue_at_1())
    real_fsync = os.fsync

    def folder_fails(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folder_fails)
    with pytest.raises(StateNotDurable) as caught:
        await store.commit(green_at_2(), revision)
    monkeypatch.undo()
    assert caught.value.revision == store.read()[1] != revision


async def test_a_commit_on_a_corrupt_file_is_refused_naming_it(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    store.path.write_text("garbage")
    with pytest.raises(StateError, match="not valid JSON") as caught:
        await store.commit(blue_at_1(), None)
    assert not isinstance(caught.value, StateConflict)
    assert store.path.read_text() == "garbage"


async def test_an_old_file_loads_and_commits_in_the_same_format(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "live": "green", "generation": 4,
                                "history": [{"at": "2024-01-01T00:00:00Z", "action": "flip"}]}))
    store = FileStateStore(path)
    state, revision = await store.load()
    assert state == State(live="green", previous=None, generation=4,
                          history=[{"at": "2024-01-01T00:00:00Z", "action": "flip"}])
    state.locked, state.lock_reason = True, "freeze"
    await store.commit(state, revision, {"at": "2024-05-01T10:00:00.000Z", "action": "lock"})
    text = path.read_text()
    data = json.loads(text)
    facts = {key: value for key, value in data.items() if key != "history"}
    assert text.startswith(json.dumps(facts, sort_keys=True, indent=1)[:-2] + ',\n "history": [\n')
    assert sorted(data) == ["attestations", "canary", "canary_weight", "generation", "held",
                            "history", "hold_until", "live", "lock_reason", "locked", "previous",
                            "version"]
    assert data["version"] == 1 and data["locked"] is True and len(data["history"]) == 2


# --- watch ---

async def test_the_file_store_watch_reports_nothing_and_ends_when_cancelled(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    revision = store.save(blue_at_1())
    reported = []

    async def follow() -> None:
        async for change in store.watch(revision):
            reported.append(change)

    task = asyncio.ensure_future(follow())
    await store.commit(green_at_2(), revision)          # its own commit is no news
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done and reported == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert reported == []
