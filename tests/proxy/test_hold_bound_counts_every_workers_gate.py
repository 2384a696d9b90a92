"""HoldTally: with workers, hold.max_queued bounds the router as a whole (SPEC §9.1): each
worker's gate counts what it holds in its cell of memory every worker maps, and admits a
request only while every cell adds up to the bound, wherever the connections landed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from proxy.hold import HoldGate, clear_slot, tallies, tally_memory
from tests.support.fakes import Waiting
from tests.support.paths import ROOT


@pytest.fixture
def shared():
    """shared: a memory-backed file for two slots' cells, and its mapping."""
    fd = os.memfd_create("test-hold-tally")
    yield fd, tally_memory(fd, 2)
    os.close(fd)            # the mapping stays until the tallies' views are gone


def test_a_request_is_admitted_while_the_gates_of_every_worker_add_up_to_the_bound(shared):
    fd, memory = shared
    (hold_a, _), (hold_b, _) = tallies(memory, 2, 0), tallies(memory, 2, 1)
    a, b = HoldGate(3, None, hold_a), HoldGate(3, None, hold_b)
    log = []
    held = [Waiting(log) for _ in range(3)]
    for ex in held:
        a.enter(ex)          # every held request on one worker: the bound is the router's, not a share of it
    assert len(a) == 3 and all(ex.refused is None for ex in held)
    late_b, late_a = Waiting(log), Waiting(log)
    b.enter(late_b)
    a.enter(late_a)
    assert late_b.refused[0] == 503 and "hold.max_queued" in late_b.refused[1]
    assert late_a.refused[0] == 503 and len(b) == 0
    assert hold_a.total() == hold_b.total() == 3
    a.leave(held[0])         # a client went away: its place is free on any worker
    again = Waiting(log)
    b.enter(again)
    assert again.refused is None and hold_a.total() == 3
    assert a.release() == 2 and hold_b.total() == 1
    assert b.release() == 1 and hold_a.total() == 0
    assert log == held[1:] + [again]


def test_the_fence_counts_apart_from_the_hold_and_an_exited_workers_cells_are_cleared(shared):
    fd, memory = shared
    hold_a, fence_a = tallies(memory, 2, 0)
    hold_b, fence_b = tallies(memory, 2, 1)
    hold, fence = HoldGate(1, None, hold_a), HoldGate(1, None, fence_a)
    log = []
    first, fenced = Waiting(log), Waiting(log)
    hold.enter(first)
    fence.enter(fenced)          # the hold's count does not fill the fence's queue
    assert first.refused is None and fenced.refused is None
    assert (hold_b.total(), fence_b.total()) == (1, 1)
    clear_slot(memory, 2, 0)     # slot 0's process exited: what it held went with it
    assert (hold_b.total(), fence_b.total()) == (0, 0)
    other = Waiting(log)
    HoldGate(1, None, hold_b).enter(other)
    assert other.refused is None


def test_another_process_that_maps_the_memory_counts_in_the_same_cells(shared):
    fd, memory = shared
    hold_a, _ = tallies(memory, 2, 0)
    assert hold_a.admit(0, 5)        # this process holds 1
    child = textwrap.dedent(f"""
        from proxy.hold import tallies, tally_memory
        hold, _ = tallies(tally_memory({fd}, 2), 2, 1)
        print(hold.total(), hold.admit(0, 2), hold.admit(1, 2), hold.total())
    """)
    out = subprocess.run([sys.executable, "-c", child], pass_fds=[fd], capture_output=True, text=True,
                         timeout=30, check=True, cwd=ROOT).stdout.split()
    assert out == ["1", "True", "False", "2"]     # it saw this process's 1; its second would pass 2
    assert hold_a.total() == 2                    # and this process sees its 1
