"""procfs — read CPU time and resident memory of a process tree from /proc (Linux only).

Called by run.py around each measured wrk run (CPU) and while idle connections are held (RSS).
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_after_comm(pid: int) -> list[str]:
    """_stat_after_comm returns the fields of /proc/PID/stat that follow "(comm)".

    comm may itself contain spaces and parentheses, so split after the last ')'.
    Index 0 is field 3 (state) of proc(5), so field N is at index N - 3.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        text = f.read().decode("ascii", "replace")
    return text[text.rindex(")") + 2:].split()


def _parent_map() -> dict[int, int]:
    """_parent_map returns {pid: ppid} for every process visible now."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parents[int(entry)] = int(_stat_after_comm(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we were looking
    return parents


def process_tree(root: int) -> list[int]:
    """process_tree returns root and all its descendants (e.g. nginx master + workers)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """cpu_seconds sums utime + stime (fields 14 and 15, all threads) over pids, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_after_comm(pid)
        except OSError:
            continue
        ticks += int(fields[14 - 3]) + int(fields[15 - 3])
    return ticks / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    """rss_bytes sums VmRSS of /proc/PID/status over pids, in bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024  # the unit is always kB
                        break
        except OSError:
            continue
    return total


def cpu_busy_seconds(cpu: int) -> float:
    """cpu_busy_seconds: time CPU cpu spent not idle since boot (/proc/stat), in seconds.

    Busy = user + nice + system + irq + softirq + steal; guest time is already in user.
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:9]]
                user, nice, system, _idle, _iowait, irq, softirq, steal = v
                return (user + nice + system + irq + softirq + steal) / CLK_TCK
    raise ValueError(f"cpu{cpu} not in /proc/stat")
