"""FileStateStore keeps what it last read or wrote: a change to a file it wrote itself neither
reads nor parses the file again (with a full history that parse and re-encode was most of a
flip's commit time), while a file another writer replaced or a tool edited is read again.
"""

from __future__ import annotations

import json
import os

import pytest

from admin.state import FileStateStore, State, StateConflict, StateError


def flip(generation: int, source: str, target: str) -> dict:
    return {"at": f"2024-05-01T10:00:{generation:02d}.000Z", "action": "flip", "from": source,
            "to": target, "generation": generation, "actor": "admin", "client": "127.0.0.1"}


OUTCOME = {"drained": 2, "forced_closed": 0, "dropped": 0, "client_gone": 0, "remaining": 0,
           "duration": 0.1}


def on_disk(path) -> State:
    state, _ = FileStateStore(path).read()
    assert state is not None
    return state


async def test_changes_to_a_file_this_store_wrote_never_read_it_again(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    store = FileStateStore(path)
    revision = await store.commit(State(live="green", previous="blue", generation=2), None,
                                  flip(2, "blue", "green"))

    def no_read(self):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(FileStateStore, "read", no_read)
    await store.append({"at": "2024-05-01T10:01:00.000Z", "action": "attest"})
    await store.add_drain(2, "blue", OUTCOME)
    await store.amend(flip(2, "blue", "green"), {"recovery_ms": 1.5})
    revision = await store.commit(State(live="blue", previous="green", generation=3), revision,
                                  flip(3, "green", "blue"))
    monkeypatch.undo()
    state = on_disk(path)
    assert (state.live, state.generation) == ("blue", 3)
    assert [event["action"] for event in state.history] == ["flip", "attest", "flip"]
    assert state.history[0]["drained"] == 2 and state.history[0]["recovery_ms"] == 1.5
    assert "drain" not in state.history[2]
    assert FileStateStore(path).read()[1] == revision


async def test_a_file_another_writer_replaced_is_read_again_before_a_change(tmp_path):
    path = tmp_path / "state.json"
    mine, theirs = FileStateStore(path), FileStateStore(path)
    revision = await mine.commit(State(live="green", previous="blue", generation=2), None,
                                 flip(2, "blue", "green"))
    _, seen = await theirs.load()
    await theirs.append({"at": "2024-05-01T10:02:00.000Z", "action": "attest"})
    await mine.append({"at": "2024-05-01T10:03:00.000Z", "action": "lock"})
    assert [event["action"] for event in on_disk(path).history] == ["flip", "attest", "lock"]

    await theirs.commit(State(live="blue", previous="green", generation=3), seen,
                        flip(3, "green", "blue"))
    with pytest.raises(StateConflict, match="generation 3"):
        await mine.commit(State(live="green", previous="blue", generation=3), revision,
                          flip(3, "blue", "green"))
    assert on_disk(path).live == "blue"


async def test_a_file_a_tool_edited_in_place_is_read_again(tmp_path):
    path = tmp_path / "state.json"
    store = FileStateStore(path)
    await store.commit(State(live="green", previous="blue", generation=2), None, flip(2, "blue", "green"))
    data = json.loads(path.read_text())
    data["history"][0]["reason"] = "edited by hand"
    with open(path, "r+") as file:   # same inode: only the size and the mtime tell
        file.write(json.dumps(data))
        file.truncate()
    await store.append({"at": "2024-05-01T10:03:00.000Z", "action": "lock"})
    history = on_disk(path).history
    assert history[0]["reason"] == "edited by hand" and history[1]["action"] == "lock"


async def test_a_change_that_failed_to_write_leaves_no_trace_in_the_next_one(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    store = FileStateStore(path)
    await store.commit(State(live="green", previous="blue", generation=2), None, flip(2, "blue", "green"))
    real_replace = os.replace

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StateError, match="No space left on device"):
        await store.add_drain(2, "blue", OUTCOME)
    monkeypatch.setattr(os, "replace", real_replace)
    await store.append({"at": "2024-05-01T10:03:00.000Z", "action": "lock"})
    history = on_disk(path).history
    assert "drain" not in history[0] and history[1]["action"] == "lock"
    await store.add_drain(2, "blue", OUTCOME)
    assert on_disk(path).history[0]["drained"] == 2


async def test_an_event_that_is_not_json_is_refused_and_the_file_kept(tmp_path):
    path = tmp_path / "state.json"
    store = FileStateStore(path)
    await store.commit(State(live="green", previous="blue", generation=2), None, flip(2, "blue", "green"))
    before = path.read_bytes()
    with pytest.raises(StateError, match="not JSON"):
        await store.append({"at": "2024-05-01T10:03:00.000Z", "action": "lock", "bad": float("nan")})
    with pytest.raises(StateError, match="history"):
        await store.append({"at": 5, "action": "lock"})
    assert path.read_bytes() == before
    await store.append({"at": "2024-05-01T10:04:00.000Z", "action": "lock"})
    assert len(on_disk(path).history) == 2
