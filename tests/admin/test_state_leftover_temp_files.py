"""A save killed between its temp file and its rename leaves garbage that the next start removes.

FileStateStore.remove_leftovers on its own; that serve's start calls it is
tests/e2e/test_start_removes_leftover_temp_files.py.
"""

from __future__ import annotations

from admin.state import FileStateStore, State
from tests.support.stores import leftover


def test_remove_leftovers_removes_only_this_state_files_temps(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    store.save(State(live="blue", previous=None, generation=4))
    ours = [leftover(tmp_path, tag="a1"), leftover(tmp_path, tag="b2")]
    other = leftover(tmp_path, name="other.json")
    unrelated = tmp_path / "state.json.tmp"
    unrelated.write_text("x")

    removed = store.remove_leftovers()

    assert sorted(removed) == sorted(ours)
    assert not any(path.exists() for path in ours)
    assert other.exists() and unrelated.exists()
    assert store.read()[0].generation == 4       # the state file itself is untouched


def test_remove_leftovers_escapes_glob_characters_in_the_name(tmp_path):
    store = FileStateStore(tmp_path / "st[a]te.json")
    ours = leftover(tmp_path, name="st[a]te.json")
    lookalike = leftover(tmp_path, name="sta.json")
    assert store.remove_leftovers() == [ours]
    assert lookalike.exists()


def test_remove_leftovers_without_a_folder_is_a_no_op(tmp_path):
    assert FileStateStore(tmp_path / "missing" / "state.json").remove_leftovers() == []
