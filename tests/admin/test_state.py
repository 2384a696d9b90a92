"""Tests for admin/state.py: the State's strict form, and FileStateStore's atomic, durable saves."""

from __future__ import annotations

import inspect
import json
import os
import re
import stat
from pathlib import Path

import pytest

from admin.state import FORMAT_VERSION, FileStateStore, State, StateError, StateStore


def full_state() -> State:
    """full_state: a State with every field set away from its default."""
    return State(
        live="green",
        previous="blue",
        generation=7,
        held=True,
        hold_until=1_700_000_123.25,
        locked=True,
        lock_reason="release freeze",
        canary="blue",
        canary_weight=25,
        history=[
            {"at": "2024-05-01T10:00:00Z", "action": "flip", "from": "blue", "to": "green",
             "generation": 6, "reason": "deploy v2", "drained": 12, "forced_closed": 0,
             "dropped": 0},
            {"at": "2024-05-01T10:05:00Z", "action": "canary", "generation": 7, "weight": 25},
        ],
    )


def event(n: int) -> dict:
    return {"at": f"2024-05-01T10:00:{n:02d}Z", "action": "hold", "n": n}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def valid_dict(**changes) -> dict:
    data = full_state().to_dict()
    data.update(changes)
    return data


# --- round trip and the file's form ---

def test_every_field_survives_save_and_load(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    state = full_state()
    store.save(state)
    assert store.read()[0] == full_state()


def test_defaults_survive_save_and_load(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    store.save(State(live="blue", previous=None, generation=1))
    assert store.read()[0] == State(live="blue", previous=None, generation=1)


def test_to_dict_from_dict_round_trip_without_a_store():
    state = full_state()
    assert State.from_dict(state.to_dict(), "test") == state


def test_to_dict_does_not_share_history_with_the_state():
    state = full_state()
    data = state.to_dict()
    data["history"].append(event(1))
    data["history"][0]["action"] = "changed"
    assert state.history == full_state().history


def test_a_copy_changes_without_changing_the_state_it_was_copied_from():
    state = full_state()
    state.registrations = {"green": {"servers": [{"address": "127.0.0.1:9", "weight": 1}], "fingerprint": "f"}}
    state.attestations = [{"from_version": "1", "to_version": "2", "by": "ci", "at": "2024-05-01T10:00:00Z"}]
    before = state.to_dict()
    copied = state.copy()
    assert copied == state
    copied.live, copied.generation, copied.locked = "blue", 99, False
    copied.history.append(event(1))
    copied.attestations[0]["by"] = "changed"
    copied.registrations["green"]["servers"][0]["weight"] = 5
    copied.registrations["blue"] = {"servers": [], "fingerprint": "g"}
    assert state.to_dict() == before
    # An event is amended in place (a drain's outcome): the copy's event is the same one.
    state.history[0]["drained"] = 13
    assert copied.history[0]["drained"] == 13


def test_facts_without_history_are_the_dict_without_its_history():
    state = full_state()
    facts = state.to_dict(history=False)
    assert "history" not in facts
    assert facts == {k: v for k, v in state.to_dict().items() if k != "history"}


def test_missing_file_loads_as_none(tmp_path):
    assert FileStateStore(tmp_path / "absent.json").read()[0] is None


def test_save_creates_missing_folders(tmp_path):
    path = tmp_path / "var" / "lib" / "cutover" / "state.json"
    FileStateStore(path).save(full_state())
    assert path.is_file()


def test_file_is_json_with_sorted_facts_and_one_history_event_per_line(tmp_path):
    path = tmp_path / "state.json"
    state = full_state()
    FileStateStore(path).save(state)
    text = path.read_text()
    data = json.loads(text)
    assert data["version"] == FORMAT_VERSION == 1
    facts = {key: value for key, value in data.items() if key != "history"}
    head, _, tail = text.partition(',\n "history": [\n')
    assert head + "\n}" == json.dumps(facts, sort_keys=True, indent=1)
    events = tail.removesuffix("\n ]\n}\n").split(",\n")
    assert [json.loads(line) for line in events] == data["history"] == state.history
    assert all(line == json.dumps(json.loads(line), sort_keys=True) for line in events)


def test_describe_names_the_file(tmp_path):
    path = tmp_path / "state.json"
    assert FileStateStore(path).describe() == f"file {path}"


def test_file_store_has_every_method_of_the_store_protocol_async_where_it_is(tmp_path):
    store: StateStore = FileStateStore(tmp_path / "state.json")
    for method in ("load", "commit", "append", "amend", "add_drain"):
        assert inspect.iscoroutinefunction(getattr(store, method)), method
    assert inspect.isasyncgenfunction(store.watch)
    assert callable(store.describe) and store.history_limit == 1000


def test_a_second_save_replaces_the_first(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    store.save(State(live="blue", previous=None, generation=1))
    store.save(State(live="green", previous="blue", generation=2))
    assert store.read()[0] == State(live="green", previous="blue", generation=2)


# --- atomicity and durability ---

def test_temp_file_is_renamed_from_the_same_folder(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    renames = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    FileStateStore(path).save(full_state())
    [(src, dst)] = renames
    assert src.parent == dst.parent == tmp_path and dst == path and src != path


def test_fsync_is_called_on_the_file_then_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        info = os.fstat(fd)
        synced.append("folder" if stat.S_ISDIR(info.st_mode) else ("file", info.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    FileStateStore(path).save(full_state())
    assert synced == [("file", path.stat().st_size), "folder"]


def test_file_is_synced_before_the_rename_and_folder_after(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    steps = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd):
        steps.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def recording_replace(src, dst):
        steps.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    FileStateStore(path).save(full_state())
    assert steps == ["fsync file", "replace", "fsync folder"]


def saved_once(tmp_path) -> tuple[FileStateStore, bytes]:
    store = FileStateStore(tmp_path / "state.json")
    store.save(State(live="blue", previous=None, generation=1))
    return store, store.path.read_bytes()


def test_crash_at_rename_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch):
    store, before = saved_once(tmp_path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StateError) as err:
        store.save(full_state())
    assert str(store.path) in str(err.value) and "No space left on device" in str(err.value)
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


def test_crash_at_file_fsync_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch):
    store, before = saved_once(tmp_path)

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError) as err:
        store.save(full_state())
    assert str(store.path) in str(err.value) and "Input/output error" in str(err.value)
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


def test_interrupt_mid_save_removes_the_temp_file_and_propagates(tmp_path, monkeypatch):
    store, before = saved_once(tmp_path)

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        store.save(full_state())
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_folder_fsync_is_reported(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json")
    real_fsync = os.fsync

    def folder_fails(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folder_fails)
    with pytest.raises(StateError, match="Input/output error") as err:
        store.save(full_state())
    assert str(store.path) in str(err.value)
    assert os.listdir(tmp_path) == ["state.json"]


def test_unserializable_history_is_refused_and_old_file_kept(tmp_path):
    store, before = saved_once(tmp_path)
    state = full_state()
    state.history.append({"at": "2024-05-01T11:00:00Z", "action": "flip", "when": object()})
    with pytest.raises(StateError, match=re.escape(str(store.path))):
        store.save(state)
    assert store.path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]


def test_invalid_state_is_refused_on_save_so_load_never_meets_it(tmp_path):
    store, before = saved_once(tmp_path)
    with pytest.raises(StateError, match="generation"):
        store.save(State(live="blue", previous=None, generation=0))
    assert store.path.read_bytes() == before


def test_unwritable_folder_raises_state_error_naming_the_path(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store = FileStateStore(blocker / "state.json")
    with pytest.raises(StateError, match=re.escape(str(blocker / "state.json"))):
        store.save(full_state())


# --- history limit ---

def test_history_is_trimmed_to_the_newest_events_on_save(tmp_path):
    store = FileStateStore(tmp_path / "state.json", history_limit=3)
    state = State(live="blue", previous=None, generation=1, history=[event(n) for n in range(5)])
    store.save(state)
    assert [e["n"] for e in store.read()[0].history] == [2, 3, 4]
    assert [e["n"] for e in state.history] == [2, 3, 4]


def test_history_under_the_limit_is_kept_whole(tmp_path):
    store = FileStateStore(tmp_path / "state.json", history_limit=3)
    store.save(State(live="blue", previous=None, generation=1, history=[event(0), event(1)]))
    assert [e["n"] for e in store.read()[0].history] == [0, 1]


def test_history_limit_zero_keeps_no_events(tmp_path):
    store = FileStateStore(tmp_path / "state.json", history_limit=0)
    store.save(State(live="blue", previous=None, generation=1, history=[event(0), event(1)]))
    assert store.read()[0].history == []


def test_failed_save_does_not_trim_the_history_in_memory(tmp_path, monkeypatch):
    store = FileStateStore(tmp_path / "state.json", history_limit=1)
    state = State(live="blue", previous=None, generation=1, history=[event(0), event(1)])

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StateError):
        store.save(state)
    assert len(state.history) == 2


# --- load refuses what it cannot trust ---

def test_corrupt_json_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "live": "blue",')
    with pytest.raises(StateError, match="not valid JSON") as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_empty_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("")
    with pytest.raises(StateError, match="empty") as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_non_utf8_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b'{"live": "\xff\xfe"}')
    with pytest.raises(StateError, match=re.escape(str(path))):
        FileStateStore(path).read()[0]


def test_unreadable_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateError, match="cannot read") as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_corrupt_file_is_not_replaced_by_load(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("garbage")
    with pytest.raises(StateError):
        FileStateStore(path).read()[0]
    assert path.read_text() == "garbage"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"generation": 0}, "generation"),
        ({"generation": -3}, "generation"),
        ({"generation": "7"}, "generation"),
        ({"generation": 7.0}, "generation"),
        ({"generation": True}, "generation"),
        ({"canary_weight": 101}, "canary_weight"),
        ({"canary_weight": -1}, "canary_weight"),
        ({"canary_weight": 2.5}, "canary_weight"),
        ({"live": None}, "live"),
        ({"live": ""}, "live"),
        ({"live": 3}, "live"),
        ({"previous": ["blue"]}, "previous"),
        ({"canary": 1}, "canary"),
        ({"held": "yes"}, "held"),
        ({"held": 1}, "held"),
        ({"locked": None}, "locked"),
        ({"lock_reason": 5}, "lock_reason"),
        ({"hold_until": "soon"}, "hold_until"),
        ({"hold_until": True}, "hold_until"),
        ({"hold_until": float("inf")}, "hold_until"),
        ({"history": {}}, "history"),
        ({"history": ["flip"]}, "history[0]"),
        ({"history": [{"at": "2024-05-01T10:00:00Z"}]}, "history[0].action"),
        ({"history": [{"action": "flip", "at": 5}]}, "history[0].at"),
        ({"version": "1"}, "version"),
        ({"version": 0}, "version"),
        ({"previous": "green"}, "previous"),
        ({"canary": "green"}, "canary"),
        ({"canary": None, "canary_weight": 10}, "canary_weight"),
    ],
)
def test_wrong_value_is_an_error_naming_the_key_and_file(tmp_path, changes, key):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(valid_dict(**changes)))
    with pytest.raises(StateError) as err:
        FileStateStore(path).read()[0]
    message = str(err.value)
    assert f'"{key}"' in message and str(path) in message


def test_canary_weight_bounds_are_accepted(tmp_path):
    for weight in (0, 100):
        State.from_dict(valid_dict(canary_weight=weight), "test")


@pytest.mark.parametrize("key", ["version", "live", "generation"])
def test_missing_required_key_is_an_error_naming_it(tmp_path, key):
    data = valid_dict()
    del data[key]
    path = tmp_path / "state.json"
    write_json(path, data)
    with pytest.raises(StateError, match=f'"{key}" is missing') as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_optional_keys_take_their_defaults(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"version": 1, "live": "green", "generation": 4})
    assert FileStateStore(path).read()[0] == State(live="green", previous=None, generation=4)


def test_unknown_key_is_an_error_naming_it_and_the_file(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, valid_dict(wieghts={"blue": 100}))
    with pytest.raises(StateError, match='unknown key "wieghts"') as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_top_level_must_be_an_object(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, [1, 2])
    with pytest.raises(StateError, match="must be a JSON object") as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_newer_format_version_is_refused_before_its_new_keys(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, valid_dict(version=2, replicas=["a", "b"]))
    with pytest.raises(StateError, match="written by a newer cutover") as err:
        FileStateStore(path).read()[0]
    assert str(path) in str(err.value)


def test_hold_until_as_integer_loads_as_float():
    state = State.from_dict(valid_dict(hold_until=1_700_000_000), "test")
    assert state.hold_until == 1_700_000_000.0 and isinstance(state.hold_until, float)


def test_from_dict_names_the_source_it_is_given():
    with pytest.raises(StateError, match=r"^state etcd key /cutover/state: "):
        State.from_dict(valid_dict(generation=0), "etcd key /cutover/state")


# --- the state against the config ---

@pytest.mark.parametrize(
    "state",
    [
        State(live="purple", previous="blue", generation=3),
        State(live="blue", previous="purple", generation=3),
        State(live="blue", previous="green", generation=3, canary="purple", canary_weight=5),
    ],
)
def test_environment_missing_from_config_is_an_error(state):
    with pytest.raises(StateError) as err:
        state.check_environments(["blue", "green"], "file /var/lib/cutover/state.json")
    assert str(err.value) == (
        'state file /var/lib/cutover/state.json names environment "purple", '
        "which config has not got (blue, green)"
    )


def test_environments_in_config_pass_and_history_is_not_checked():
    state = State(live="green", previous="blue", generation=3, canary="blue", canary_weight=5,
                  history=[{"at": "2024-05-01T10:00:00Z", "action": "flip",
                            "from": "purple", "to": "green"}])
    state.check_environments(iter(["blue", "green"]), "file state.json")


def test_check_environments_with_a_store_description(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    store.save(State(live="purple", previous=None, generation=1))
    expected = "^" + re.escape(f"state file {store.path} names")
    with pytest.raises(StateError, match=expected):
        store.read()[0].check_environments(["blue", "green"], store.describe())
