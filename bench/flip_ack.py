"""flip_ack — how long a flip takes to be acknowledged by every worker (SPEC §9.1, issue 11):
the round trip of POST /v1/flip, which cutover answers only after each worker acked the new
generation, as p50/p99 over many alternating flips, for `workers: 1, 2, 4`, idle and under
wrk load. Every answer must be a 200 with `ack.complete` true and all N workers in
`ack.acked`. Before each flip, one GET /healthz on the admin API (no change, no worker, no
save) gives the admin round trip the flip's figure includes anyway.

The round trip also includes the state file's save (SPEC §8: written and fsynced before the
answer), which holds the history too: cutover runs with its own default `history_limit:
1000` (--history-limit); each flip writes the file, but encodes only its own event (admin/
state.py), so the figures hardly depend on how many flips came before.

    .venv/bin/python bench/flip_ack.py                 # workers 1,2,4; 200 flips idle + 200 loaded
    .venv/bin/python bench/flip_ack.py --workers 4 --flips 50 --json

Nothing is pinned: on a 2-core machine N workers, the supervisor, wrk and the backend share
the cores. Exit 0 when every phase ran, 1 when one could not (cutover did not start, an
admin call failed, wrk failed), 2 when the setup failed, 130 on Ctrl-C. A FAILed goal does
not change the exit code. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import build as compiled
import load
import procfs
import run
import services
import switch
import tools

HOST = "127.0.0.1"
GOAL_WORKERS = 4
GOAL_P99_MS = 20.0
LOAD_SETTLE = 1.0  # s of wrk before the first loaded flip
PHASE_LIMIT = 300.0  # s, at most, for one phase's flips


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4",
                   help="comma-separated worker counts to measure (default 1,2,4)")
    p.add_argument("--flips", type=int, default=200, help="flips per phase (default 200)")
    p.add_argument("--interval", type=float, default=0.1,
                   help="seconds between one answer and the next flip (default 0.1)")
    p.add_argument("--history-limit", type=int, default=1000,
                   help="cutover's history_limit, i.e. how many events the state file each flip "
                        "writes holds at most (default 1000, cutover's own)")
    p.add_argument("--connections", type=int, default=50,
                   help="wrk connections of the loaded phase (default 50)")
    p.add_argument("--no-load", action="store_true", help="leave the loaded phase out")
    p.add_argument("--build", choices=("compiled", "pure"), default="compiled",
                   help="which cutover (as in run.py; default compiled)")
    p.add_argument("--cutover", metavar="CMD", help="cutover command (overrides --build)")
    p.add_argument("--start-timeout", type=float, default=30,
                   help="seconds for cutover to answer 200 (default 30)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = p.parse_args(argv)
    try:
        args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        p.error(f"--workers: a comma-separated list of counts, got {args.workers!r}")
    if not args.workers or not all(1 <= n <= run.WORKERS_MAX for n in args.workers):
        p.error(f"--workers: each count 1-{run.WORKERS_MAX}")
    if not (1 <= args.flips <= 10000 and 0 <= args.interval <= 10
            and 1 <= args.connections <= 10000 and 1 <= args.history_limit <= 100000):
        p.error("a bound is out of range (flips 1-10000, interval 0-10 s, connections 1-10000, "
                "history limit 1-100000)")
    return args


def percentile(values: list[float], pct: float) -> float | None:
    """percentile: nearest rank (the smallest value with at least pct% of them at or below)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def _flips(admin: switch.Admin, count: int, interval: float, workers: int) -> dict:
    """_flips: count alternating flips, one after the other's answer; each one's round trip
    and whether its ack names every worker process listed by /v1/status."""
    status = await admin.wait_ready(switch.CALL_TIMEOUT)
    live = status["live"]
    pids = {w["pid"] for w in status.get("workers", []) if w.get("alive")}
    times, baseline, bad = [], [], []
    deadline = time.monotonic() + PHASE_LIMIT
    for i in range(count):
        if time.monotonic() > deadline:
            bad.append(f"stopped after {i} flips: the phase took more than {PHASE_LIMIT:g}s")
            break
        t0 = time.perf_counter()
        code, _ = await admin.call("GET", "/healthz")
        if code == 200:
            baseline.append((time.perf_counter() - t0) * 1000)
        to = switch.other_env(live)
        t0 = time.perf_counter()
        code, answer = await admin.call("POST", "/v1/flip", {"to": to, "reason": "bench ack"})
        ms = (time.perf_counter() - t0) * 1000
        ack = answer.get("ack") or {}
        acked = set(ack.get("acked", []))
        if code != 200 or not answer.get("changed"):
            bad.append(f"flip {i + 1} to {to} answered {code}: {answer.get('code')}: "
                       f"{answer.get('error')}")
            live = answer.get("live", live)
            continue
        live = to
        times.append(ms)
        if not ack.get("complete") or len(acked) != workers or acked != pids:
            bad.append(f"flip {i + 1} generation {answer.get('generation')}: ack complete "
                       f"{ack.get('complete')}, acked {sorted(acked)}, pending "
                       f"{ack.get('pending')}; the workers are {sorted(pids)}")
        if interval:
            await asyncio.sleep(interval)
    complete = len(times) - sum(1 for b in bad if " ack complete " in b)
    return {"flips": count, "answered": len(times), "complete": complete,
            "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "max_ms": max(times) if times else None, "min_ms": min(times) if times else None,
            "baseline_p50_ms": percentile(baseline, 50), "baseline_p99_ms": percentile(baseline, 99),
            "problems": bad[:5], "problem_count": len(bad), "ms": times}


def _busy() -> float:
    return procfs.cpu_busy_seconds(sorted(os.sched_getaffinity(0)))


def _own() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def measure_phase(service: services.Service, backend: services.Service, workers: int,
                  args, wrk_argv: list[str] | None) -> dict:
    """measure_phase: the flips, with wrk running meanwhile when wrk_argv is given (stopped
    with SIGINT after the last flip, so it prints its report); plus the CPU other processes
    on the machine took meanwhile (foreign, % of one core)."""
    admin = switch.Admin(HOST, service.admin_port)
    ours = lambda: (procfs.cpu_seconds(service.pids()) + procfs.cpu_seconds(backend.pids())  # noqa: E731
                    + _own())
    wall0, busy0, ours0 = time.monotonic(), _busy(), ours()
    wrk = None
    if wrk_argv:
        wrk = subprocess.Popen(wrk_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(LOAD_SETTLE)
    try:
        if wrk is not None and wrk.poll() is not None:
            raise load.WrkError(f"wrk exited with {wrk.returncode}: {wrk.stderr.read().strip()}")
        result = asyncio.run(_flips(admin, args.flips, args.interval, workers))
        if wrk is not None:
            wrk.send_signal(signal.SIGINT)
            try:
                out, err = wrk.communicate(timeout=30)
            except subprocess.TimeoutExpired as e:
                raise load.WrkError("wrk did not stop within 30s of SIGINT") from e
            w = load.parse_wrk(out)
            result["wrk"] = {"requests": w.requests, "rps": w.rps, "p99_ms": w.p99_ms,
                             "errors": w.errors, "socket_errors": w.socket_errors,
                             "non_2xx_3xx": w.non_2xx_3xx}
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    wall = time.monotonic() - wall0
    result["foreign_cpu_pct"] = max(0.0, (_busy() - busy0) - (ours() - ours0)) / wall * 100
    return result


def measure_workers(n: int, group: services.ServiceGroup, tmp: Path, paths: dict,
                    backend: services.Service, backend_port: int, args) -> dict:
    """measure_workers: one cutover with `workers: n`, its idle and loaded phases, stopped
    again before the next count starts."""
    log(f"[workers {n}] starting cutover ...")
    service, port = services.start_cutover(group, tmp, paths["cutover"], (), backend_port,
                                           args.start_timeout, n, name=f"cutover-w{n}",
                                           extra=f"history_limit: {args.history_limit}\n")
    try:
        out = {"workers": n}
        for phase in ("idle", "load"):
            if phase == "load" and args.no_load:
                continue
            argv = (load.wrk_argv(paths["wrk"], f"http://{HOST}:{port}/", args.connections,
                                  PHASE_LIMIT + 60, latency=True) if phase == "load" else None)
            r = out[phase] = measure_phase(service, backend, n, args, argv)
            log(f"[workers {n}] {phase:<4} {r['answered']}/{r['flips']} flips answered, "
                f"{r['complete']} acked by all {n}: p50 {_ms(r['p50_ms'])} p99 {_ms(r['p99_ms'])} "
                f"max {_ms(r['max_ms'])} ms (GET /healthz p50 {_ms(r['baseline_p50_ms'])} p99 "
                f"{_ms(r['baseline_p99_ms'])})"
                + (f"; wrk {r['wrk']['rps']:.0f} req/s, errors {r['wrk']['errors']}"
                   if "wrk" in r else "") + f"; foreign {r['foreign_cpu_pct']:.0f}%")
            if not service.alive():
                raise switch.SwitchError(f"cutover exited with code {service.proc.returncode}")
        return out
    finally:
        services.stop(service)
        group.services.remove(service)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def goals(results: list[dict]) -> list[dict]:
    """goals: p99 under GOAL_P99_MS with GOAL_WORKERS workers (idle, and under load), and
    every answer acked by every worker (each count, each phase)."""
    out = []
    four = next((r for r in results if r["workers"] == GOAL_WORKERS), None)
    for phase in ("idle", "load"):
        label = f"flip ack p99 < {GOAL_P99_MS:g} ms, {GOAL_WORKERS}w, {phase}"
        p99 = ((four or {}).get(phase) or {}).get("p99_ms")
        if p99 is None:
            out.append({"goal": label, "value": None, "result": "n/a",
                        "detail": "not measured"})
        else:
            out.append({"goal": label, "value": p99, "limit": GOAL_P99_MS,
                        "result": "PASS" if p99 < GOAL_P99_MS else "FAIL",
                        "detail": f"p99 {p99:.1f} ms"})
    phases = [r[p] for r in results for p in ("idle", "load") if p in r]
    flips = sum(p["flips"] for p in phases)
    complete = sum(p["complete"] for p in phases)
    out.append({"goal": "every flip acked by all", "value": complete, "limit": flips,
                "result": "PASS" if phases and complete == flips else "FAIL",
                "detail": f"{complete}/{flips}"})
    errors = sum(p["wrk"]["errors"] for p in phases if "wrk" in p)
    if any("wrk" in p for p in phases):
        out.append({"goal": "0 failed under load", "value": errors, "limit": 0,
                    "result": "PASS" if errors == 0 else "FAIL", "detail": f"{errors} failed"})
    return out


def render(report: dict) -> str:
    """render: the text report: a line per worker count and phase, then the goals."""
    cfg = report["config"]
    lines = [f"flip acknowledged by every worker: POST /v1/flip round trip (it answers after "
             f"every worker's ack), {cfg['flips']} alternating flips per phase, "
             f"{cfg['interval'] * 1000:g} ms apart; history_limit {cfg['history_limit']}",
             "  " + "; ".join(report["versions"].values()),
             f"  nothing pinned: cutover's workers, its supervisor, wrk -t1 -c{cfg['connections']} "
             "(load) and the backend share the machine's cores",
             "",
             f"{'workers':<8}{'phase':<7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'acked by all':>14}"
             f"{'healthz p50/p99':>17}{'wrk req/s':>11}{'errors':>8}{'foreign':>9}"]
    lines.append("-" * len(lines[-1]))
    for r in report["results"]:
        for phase in ("idle", "load"):
            p = r.get(phase)
            if p is None:
                continue
            w = p.get("wrk")
            rps, errors = (f"{w['rps']:.0f}", str(w["errors"])) if w else ("-", "-")
            base = f"{_ms(p['baseline_p50_ms'])} / {_ms(p['baseline_p99_ms'])}"
            lines.append(f"{r['workers']:<8}{phase:<7}{_ms(p['p50_ms']):>8}{_ms(p['p99_ms']):>8}"
                         f"{_ms(p['max_ms']):>8}{p['complete']:>8}/{p['flips']:<5}"
                         f"{base:>17}{rps:>11}{errors:>8}{p['foreign_cpu_pct']:>8.0f}%")
    lines += ["", "goals (cutover)"]
    for g in report["goals"]:
        lines.append(f"  {g['goal']:<36}{g['detail']:<36}{g['result']}")
    notes = [f"workers {r['workers']} {phase}: {problem}" for r in report["results"]
             for phase in ("idle", "load") for problem in (r.get(phase) or {}).get("problems", [])]
    notes += [f"{k}: {v}" for k, v in report["failures"].items()]
    if notes:
        lines += ["", "notes"] + ["  " + n for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, run._raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results, failures = [], {}
    try:
        paths = tools.ensure(log)
        paths["cutover"] = run.cutover_command(args.cutover, args.build)
        if not paths["cutover"]:
            log("flip_ack: the `cutover` console script was not found")
            return 2
        versions = tools.versions(paths)
        run.raise_nofile_limit(args.connections * 4 + 1024)
        with tempfile.TemporaryDirectory(prefix="cutover-flip-ack-") as tmp_name, \
                services.ServiceGroup(False) as group:
            tmp = Path(tmp_name)
            log("starting backend ...")
            backend, backend_port = services.start_backend(group, tmp, paths["nginx"], (),
                                                           args.start_timeout)
            for n in args.workers:
                try:
                    results.append(measure_workers(n, group, tmp, paths, backend, backend_port,
                                                   args))
                except (services.StartError, switch.SwitchError, load.WrkError) as e:
                    failures[f"workers {n}"] = str(e).splitlines()[0]
                    log(f"[workers {n}] failed: {e}")
    except (tools.ToolError, services.StartError, compiled.BuildError) as e:
        log(f"flip_ack: {e}")
        return 2
    except KeyboardInterrupt:
        log("flip_ack: interrupted; every started process was stopped")
        return 130
    report = {"config": {"workers": args.workers, "flips": args.flips, "interval": args.interval,
                         "connections": args.connections, "load": not args.no_load,
                         "history_limit": args.history_limit},
              "versions": versions, "results": results, "goals": goals(results),
              "failures": failures, "exit_code": 1 if failures else 0}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
