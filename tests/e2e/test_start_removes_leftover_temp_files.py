"""The start of a stack removes what an interrupted save left next to the state file, says so in
the log, and loads the saved state (FileStateStore.remove_leftovers itself:
tests/admin/test_state_leftover_temp_files.py).
"""

from __future__ import annotations

import json

from admin.state import State
from tests.support.stores import leftover


async def test_start_removes_leftovers_and_loads_the_saved_state(tmp_path, make_stack, caplog):
    (tmp_path / "state.json").write_text(json.dumps(State(live="green", previous="blue",
                                                          generation=9).to_dict()))
    temp = leftover(tmp_path)
    running = await make_stack()
    assert not temp.exists()
    assert running.controller.state.generation == 9 and running.controller.state.live == "green"
    assert any(temp.name in record.getMessage() for record in caplog.records)
