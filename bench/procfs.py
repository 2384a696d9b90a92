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
    """cpu_seconds: the CPU time of a process tree, in seconds: over pids, utime + stime (fields
    14 and 15, all threads) plus cutime + cstime (16 and 17: their children that exited and
    were reaped). Called by run.py with a whole tree, before and after a run.

    A child that exits between two readings (a cutover worker killed and restarted, an nginx
    worker replaced) moves from its own fields to its parent's cutime/cstime once reaped, so
    the CPU it used is still counted, once.
    """
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_after_comm(pid)
        except OSError:
            continue
        ticks += sum(int(fields[n - 3]) for n in (14, 15, 16, 17))
    return ticks / CLK_TCK


def own_cpu_seconds(pid: int) -> float:
    """own_cpu_seconds: utime + stime of pid alone (not its children), in seconds; 0 when it
    is gone. Called by run.py for the root of a tree (cutover's supervisor, nginx's master)."""
    try:
        fields = _stat_after_comm(pid)
    except OSError:
        return 0.0
    return (int(fields[14 - 3]) + int(fields[15 - 3])) / CLK_TCK


def context_switches(pids: list[int]) -> tuple[int, int]:
    """context_switches sums (voluntary, nonvoluntary) context switches of /proc/PID/status
    over pids: how often they blocked (an event loop going to sleep with nothing to do) and
    how often the scheduler took the CPU from them (more runnable processes than cores).
    Called by run.py around each run, as figures per request."""
    voluntary = nonvoluntary = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nonvoluntary += int(line.split()[1])
        except OSError:
            continue
    return voluntary, nonvoluntary


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


def cpu_busy_seconds(cpus: list[int] | tuple[int, ...]) -> float:
    """cpu_busy_seconds: time the CPUs cpus spent not idle since boot (/proc/stat), summed, in
    seconds. Called by run.py around each run, for the proxy's and the load side's CPUs.

    Busy = user + nice + system + irq + softirq + steal; guest time is already in user.
    """
    wanted = {f"cpu{cpu}" for cpu in cpus}
    found: set[str] = set()
    ticks = 0
    with open("/proc/stat") as f:
        for line in f:
            name = line.split(" ", 1)[0]
            if name in wanted:
                v = [int(x) for x in line.split()[1:9]]
                user, nice, system, _idle, _iowait, irq, softirq, steal = v
                ticks += user + nice + system + irq + softirq + steal
                found.add(name)
    if found != wanted:
        raise ValueError(f"{', '.join(sorted(wanted - found))} not in /proc/stat")
    return ticks / CLK_TCK


def established_to(pid: int, port: int) -> int:
    """established_to: how many ESTABLISHED TCP connections to local ``port`` process ``pid``
    holds (its socket descriptors matched with /proc/net/tcp and tcp6): how many connections a
    worker of nginx holds when it is killed. 0 when the process is gone."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEX_IP:HEX_PORT; st 01 is ESTABLISHED; field 9 is the inode
            if len(fields) > 9 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port \
                    and fields[9] in inodes:
                count += 1
    return count
