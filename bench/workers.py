"""workers — the phases only cutover with `workers: N > 1` has (SPEC §9.1): how evenly the
kernel spreads connections over the workers, and a worker killed under load.

Called by run.py after the rounds, against the cutover target, with --workers N > 1. Both
read GET /v1/status `workers` ({pid, generation, inflight, connections, started, restarts,
alive, requests}; the list is in slot order, a restarted worker keeps its place).

- spread: wrk with many keep-alive connections; the connections each worker holds mid-run
  and the requests each served; then wrk with `Connection: close` (every request a fresh
  connection): the requests, i.e. the connections, each served. Each worker's share and the
  largest deviation from an even share, in percent.
- worker_kill: wrk; meanwhile SIGKILL one worker (the last slot: slot 0 runs the health
  checks), a flip while it is down (must answer, acked by the live ones), the wait until the
  supervisor restarted it (status: new pid, alive, restarts + 1, the current generation),
  requests on fresh connections (spread over every worker, the restarted one too: each must
  be served by the live environment), a flip back (acked by all N); then wrk's failed
  requests against the connections the killed worker held.
- nginx_worker_kill: the same kill against nginx (`worker_processes N`, reuseport) in the same
  run, so the failed requests of a SIGKILLed worker are set beside nginx's: a worker's open
  connections die with it in both (each wrk connection has a request in flight or on its way).

Only loopback addresses; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import load
import procfs
import switch

STATUS_EVERY = 0.02  # s between status polls while waiting for the restart
RESTART_WAIT = 15.0  # s for the supervisor to restart a killed worker
FRESH_PER_WORKER = 8  # fresh-connection requests per worker after the restart


class WorkersError(Exception):
    """WorkersError: a workers phase could not run; the message says why."""


def shares(counts: dict[int, int]) -> dict:
    """shares: each worker's share of counts (by pid) and the largest deviation from an even
    share, in percent of the even share (0 = perfectly even; 20 = some worker has 1.2x or
    0.8x its 1/N). Called for connections and for requests."""
    total = sum(counts.values())
    n = len(counts)
    if not n or not total:
        return {"total": total, "workers": n, "shares": {}, "max_deviation_pct": None}
    share = {pid: count / total for pid, count in counts.items()}
    deviation = max(abs(s * n - 1) for s in share.values()) * 100
    return {"total": total, "workers": n, "counts": counts,
            "shares": {pid: s * 100 for pid, s in share.items()},
            "max_deviation_pct": deviation}


async def _workers(admin: switch.Admin) -> tuple[dict, list[dict]]:
    """_workers: (the whole status, its workers list); raises WorkersError without one."""
    status, answer = await admin.call("GET", "/v1/status")
    if status != 200 or not isinstance(answer.get("workers"), list):
        raise WorkersError(f"GET /v1/status answered {status} without a workers list: "
                           f"{str(answer)[:200]}")
    return answer, answer["workers"]


async def _finish_wrk(wrk: subprocess.Popen, duration: float) -> load.WrkResult:
    """_finish_wrk: load.finish_wrk off the event loop (its phases poll the admin API meanwhile)."""
    return await asyncio.to_thread(load.finish_wrk, wrk, duration)


def _wrk_figures(result: load.WrkResult) -> dict:
    return {"requests": result.requests, "rps": result.rps, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms, "errors": result.errors,
            "non_2xx_3xx": result.non_2xx_3xx, "socket_errors": result.socket_errors}


# ---------------------------------------------------------------- spread

async def _one_spread(admin: switch.Admin, argv: list[str], duration: float,
                      connections_too: bool) -> dict:
    """_one_spread: one wrk run; the requests each worker served during it (status before and
    after) and, when connections_too, the connections each held mid-run."""
    _, before = await _workers(admin)
    wrk = load.start_wrk(argv)
    try:
        mid = None
        if connections_too:
            await asyncio.sleep(duration / 2)
            if wrk.poll() is None:
                _, mid = await _workers(admin)
        result = await _finish_wrk(wrk, duration)
    finally:
        load.stop_wrk(wrk)
    _, after = await _workers(admin)
    served = {w["pid"]: w["requests"] for w in before}
    if [w["pid"] for w in before] != [w["pid"] for w in after]:
        raise WorkersError("a worker was replaced during the spread run (pids "
                           f"{[w['pid'] for w in before]} -> {[w['pid'] for w in after]})")
    out = {**_wrk_figures(result),
           "requests_by_worker": shares({w["pid"]: w["requests"] - served[w["pid"]]
                                         for w in after})}
    if connections_too:
        out["connections_by_worker"] = (shares({w["pid"]: w["connections"] for w in mid})
                                        if mid else None)
    return out


def spread(admin_port: int, keepalive_argv: list[str], fresh_argv: list[str],
           duration: float, fresh_duration: float, log, host: str = "127.0.0.1") -> dict:
    """spread runs the keep-alive run, then the fresh-connections run; raises WorkersError or
    load.WrkError."""
    admin = switch.Admin(host, admin_port)

    async def run() -> dict:
        await admin.wait_ready(switch.CALL_TIMEOUT)
        keepalive = await _one_spread(admin, keepalive_argv, duration, connections_too=True)
        c = keepalive["connections_by_worker"] or {}
        log(f"[workers] spread, keep-alive: connections {_shares_text(c)}; requests "
            f"{_shares_text(keepalive['requests_by_worker'])}; errors {keepalive['errors']}")
        fresh = await _one_spread(admin, fresh_argv, fresh_duration, connections_too=False)
        log(f"[workers] spread, fresh connections: {_shares_text(fresh['requests_by_worker'])}; "
            f"errors {fresh['errors']}")
        return {"keepalive": keepalive, "fresh": fresh}

    return asyncio.run(run())


def _shares_text(s: dict) -> str:
    if not s.get("shares"):
        return "none"
    parts = " / ".join(f"{v:.1f}%" for v in s["shares"].values())
    return f"{parts} of {s['total']} (max deviation {s['max_deviation_pct']:.1f}%)"


# ---------------------------------------------------------------- worker kill

async def _flip(admin: switch.Admin, to: str, reason: str) -> dict:
    """_flip: POST /v1/flip; the answer's time and ack (a 202 names pending workers)."""
    t0 = time.perf_counter()
    status, answer = await admin.call("POST", "/v1/flip", {"to": to, "reason": reason})
    ms = (time.perf_counter() - t0) * 1000
    if status not in (200, 202):
        raise WorkersError(f"POST /v1/flip to {to} answered {status}: {answer.get('code')}: "
                           f"{answer.get('error')}")
    ack = answer.get("ack") or {}
    return {"to": to, "status": status, "ms": ms, "generation": answer.get("generation"),
            "complete": ack.get("complete"), "acked": ack.get("acked", []),
            "pending": ack.get("pending", [])}


async def _kill(admin: switch.Admin, port: int, argv: list[str], duration: float,
                kill_after: float, log) -> dict:
    status, workers = await _workers(admin)
    live = status["live"]
    n = len(workers)
    wrk = load.start_wrk(argv)
    try:
        await asyncio.sleep(kill_after)
        if wrk.poll() is not None:
            raise WorkersError("wrk ended before the kill")
        _, workers = await _workers(admin)
        slot = n - 1
        victim = workers[slot]
        pid = victim["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        log(f"[workers] SIGKILL worker {pid} (slot {slot}: {victim['connections']} connections, "
            f"{victim['inflight']} in flight)")
        # A change while it is down waits only for the live workers and must not hang.
        down_flip = await _flip(admin, switch.other_env(live), "bench: flip while a worker is down")
        restarted = None
        deadline = time.monotonic() + RESTART_WAIT
        while time.monotonic() < deadline:
            current, workers = await _workers(admin)
            w = workers[slot]
            if w["pid"] != pid and w["alive"] and w["restarts"] > victim["restarts"]:
                restarted = (time.perf_counter() - killed, w, current["generation"])
                break
            await asyncio.sleep(STATUS_EVERY)
        if restarted is None:
            raise WorkersError(f"worker slot {slot} was not restarted within {RESTART_WAIT:g}s "
                               f"after SIGKILL of {pid}")
        restart_s, new, generation = restarted
        log(f"[workers] restarted as {new['pid']} after {restart_s * 1000:.0f} ms, generation "
            f"{new['generation']} (current {generation})")
        # The live environment is now the one the flip while down went to, on every worker.
        fresh = await switch.fresh_requests(admin.host, port, FRESH_PER_WORKER * n)
        fresh_on_live = sum(env == down_flip["to"] for env in fresh)
        log(f"[workers] after the restart, fresh connections served by {down_flip['to']} (live): "
            f"{fresh_on_live}/{len(fresh)}")
        up_flip = await _flip(admin, live, "bench: flip after the restart")
        result = await _finish_wrk(wrk, duration)
    finally:
        load.stop_wrk(wrk)
    try:
        os.kill(pid, 0)
        victim_gone = False
    except ProcessLookupError:
        victim_gone = True
    return {**_wrk_figures(result), "workers": n, "killed_pid": pid, "slot": slot,
            "killed_connections": victim["connections"], "killed_inflight": victim["inflight"],
            "killed_gone": victim_gone, "restart_ms": restart_s * 1000,
            "new_pid": new["pid"], "restarts": new["restarts"],
            "new_generation": new["generation"], "generation_then": generation,
            "fresh_after_restart": len(fresh), "fresh_on_live": fresh_on_live,
            "fresh_errors": [env for env in fresh if env.startswith("error")][:3],
            "flip_while_down": down_flip, "flip_after_restart": up_flip}


def worker_kill(admin_port: int, port: int, argv: list[str], duration: float, kill_after: float,
                log, host: str = "127.0.0.1") -> dict:
    """worker_kill: wrk for duration s, the kill after kill_after s; raises WorkersError or
    load.WrkError."""
    admin = switch.Admin(host, admin_port)

    async def run() -> dict:
        await admin.wait_ready(switch.CALL_TIMEOUT)
        return await _kill(admin, port, argv, duration, kill_after, log)

    return asyncio.run(run())


# ---------------------------------------------------------------- nginx worker kill

async def _kill_nginx(master: int, port: int, argv: list[str], duration: float, kill_after: float,
                      log) -> dict:
    wrk = load.start_wrk(argv)
    try:
        await asyncio.sleep(kill_after)
        if wrk.poll() is not None:
            raise WorkersError("wrk ended before the kill")
        before = sorted(pid for pid in procfs.process_tree(master) if pid != master)
        if not before:
            raise WorkersError(f"nginx master {master} has no worker to kill")
        pid = before[-1]
        held = procfs.established_to(pid, port)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        log(f"[workers] SIGKILL nginx worker {pid} (of {len(before)}: {held} connections)")
        respawned = None
        deadline = time.monotonic() + RESTART_WAIT
        while time.monotonic() < deadline:
            now = [p for p in procfs.process_tree(master) if p != master]
            if pid not in now and len(now) >= len(before):
                respawned = time.perf_counter() - killed
                break
            await asyncio.sleep(STATUS_EVERY)
        if respawned is None:
            raise WorkersError(f"nginx did not replace worker {pid} within {RESTART_WAIT:g}s")
        result = await _finish_wrk(wrk, duration)
    finally:
        load.stop_wrk(wrk)
    return {**_wrk_figures(result), "workers": len(before), "killed_pid": pid,
            "killed_connections": held, "restart_ms": respawned * 1000}


def nginx_worker_kill(master: int, port: int, argv: list[str], duration: float, kill_after: float,
                      log) -> dict:
    """nginx_worker_kill: wrk for duration s against nginx on ``port``; SIGKILL of one of its
    workers after kill_after s (the connections it held counted first); the wait until the
    master replaced it. Raises WorkersError or load.WrkError."""
    return asyncio.run(_kill_nginx(master, port, argv, duration, kill_after, log))
