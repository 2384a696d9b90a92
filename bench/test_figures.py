"""The bench's own figures: the CPU of a process tree, CPU lists, shares of the workers.

Not part of the suite (testpaths is tests/); run with
    .venv/bin/python -m pytest -q bench/test_figures.py
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procfs  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import workers  # noqa: E402

BURN = 0.3  # CPU seconds the grandchild uses before it exits

# A parent that, on "go", starts a child that burns BURN s of CPU, reaps it, and says so.
PARENT = f"""
import subprocess, sys
print("ready", flush=True)
sys.stdin.readline()
subprocess.run([sys.executable, "-c", '''
import resource
def used():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
while used() < {BURN}:
    pass
'''], check=True)
print("reaped", flush=True)
sys.stdin.readline()
"""


def _line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the helper process did not answer in time"
    return proc.stdout.readline().strip()


def test_cpu_of_a_tree_keeps_a_child_that_exited_and_was_reaped():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert _line(proc) == "ready"
        before = procfs.cpu_seconds(procfs.process_tree(proc.pid))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line(proc) == "reaped"
        after = procfs.cpu_seconds(procfs.process_tree(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert after - before >= BURN - 0.05  # a clock tick or so of rounding


def test_cpu_busy_seconds_sums_the_cpus_given_and_names_a_missing_one():
    cpus = sorted(os.sched_getaffinity(0))
    first = procfs.cpu_busy_seconds(cpus[:1])
    assert procfs.cpu_busy_seconds(cpus) >= first
    with pytest.raises(ValueError, match="cpu100000"):
        procfs.cpu_busy_seconds([*cpus, 100000])


@pytest.mark.parametrize("text, cpus", [("1", (1,)), ("0,1", (0, 1)), ("0-3", (0, 1, 2, 3)),
                                        ("3,0-1", (0, 1, 3))])
def test_cpu_lists_read_as_taskset_writes_them(text, cpus):
    assert run.parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "3-1", "0,,1"])
def test_a_bad_cpu_list_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="CPU"):
        run.parse_cpus(text)


def test_shares_give_the_largest_deviation_from_an_even_share():
    s = workers.shares({101: 60, 102: 40})
    assert s["shares"] == {101: 60.0, 102: 40.0}
    assert s["max_deviation_pct"] == pytest.approx(20.0)
    assert workers.shares({1: 25, 2: 25, 3: 25, 4: 25})["max_deviation_pct"] == 0
    assert workers.shares({1: 0, 2: 0})["max_deviation_pct"] is None


def _kill(read: int, connect: int = 0, timeout: int = 0, non_2xx: int = 0, held: int = 20) -> dict:
    return {"socket_errors": {"connect": connect, "read": read, "write": 0, "timeout": timeout},
            "errors": read + connect + timeout + non_2xx, "killed_connections": held}


def test_kill_failures_count_only_what_the_killed_worker_did_not_hold():
    assert report.kill_failures_beyond(_kill(read=20)) == 0
    assert report.kill_failures_beyond(_kill(read=23)) == 3
    assert report.kill_failures_beyond(_kill(read=5, connect=1, timeout=2)) == 3
    assert report.kill_failures_beyond(_kill(read=0, non_2xx=4)) == 4


def test_established_to_counts_the_connections_a_process_holds_on_a_port():
    import socket
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            assert procfs.established_to(os.getpid(), port) == 3   # the accepted ends, not the clients'
        finally:
            for s in clients + accepted:
                s.close()


def test_the_kill_goal_against_nginx_compares_failures_per_connection_held():
    kill = {"errors": 27, "killed_connections": 27, "requests": 1000}
    ok = [g for g in report.workers_goals({}, {"kill": None, "nginx_kill": None}, 2, {})
          if "nginx" in g["goal"]]
    assert ok == []   # not measured: no row
    for theirs, result in (({"errors": 22, "killed_connections": 22, "requests": 2000}, "PASS"),
                           ({"errors": 10, "killed_connections": 30, "requests": 2000}, "PASS"),
                           ):
        goals = report.workers_goals({}, {"kill": {**kill, "socket_errors": {"read": 27, "write": 0},
                                                   "fresh_after_restart": 1, "fresh_on_live": 1,
                                                   "new_generation": 2, "generation_then": 2},
                                          "nginx_kill": theirs}, 2, {})
        [row] = [g for g in goals if "nginx" in g["goal"]]
        assert row["result"] == result and row["value"] == 1.0, row
    worse = {**kill, "errors": 40, "socket_errors": {"read": 40, "write": 0}, "fresh_after_restart": 1,
             "fresh_on_live": 1, "new_generation": 2, "generation_then": 2}
    [row] = [g for g in report.workers_goals({}, {"kill": worse, "nginx_kill": {"errors": 22, "killed_connections": 22,
                                                                               "requests": 2000}}, 2, {})
             if "nginx" in g["goal"]]
    assert row["result"] == "FAIL"
