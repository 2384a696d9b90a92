"""run — the cutover benchmark: the same wrk load against the backend directly, nginx,
HAProxy and cutover, pinned the same way, in interleaved rounds; then the RSS of each proxy
holding 1,000 idle keep-alive connections; then medians, ratios and the project's goals.

    .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--connections 50] [--json]
    .venv/bin/python bench/run.py --switch-only     # just the flips under load and rollbacks
    .venv/bin/python bench/run.py --workers 2       # cutover `workers: 2` vs nginx
                                                    # `worker_processes 2` (and cutover1)

Exit 0 when every selected target ran; 1 when one failed to run (cutover that does not come
up, a proxy that died, wrk that failed); 2 when the setup failed (tools, backend); 130 on
Ctrl-C. Goals that FAIL are figures, not a failed run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import build as compiled
import load
import procfs
import report
import services
import switch
import tools
import workers as worker_phases

# nginx1 and cutover1 (one worker, beside the N-worker nginx and cutover) only with --workers N > 1;
# cutoverlog is cutover with its access log on (json, to a file), for the access log's cost;
# nginxlog is nginx with an access log of the same fields (batched), the anchor's cost of one
TARGETS = ("direct", "nginx1", "nginx", "nginxlog", "haproxy", "cutover1", "cutover", "cutoverlog")
SINGLE = ("nginx1", "cutover1")
HOST = "127.0.0.1"
MB = 1024 * 1024
WORKERS_MAX = 64
ACCESS_LOG_CPU_LIMIT = 1.15   # cutoverlog's CPU per request at most this x cutover's (issue 13)


@dataclass
class Target:
    """Target is one thing wrk is pointed at; service is the process whose CPU/RSS we read
    (for direct that is the backend itself)."""

    name: str
    port: int
    service: services.Service


@dataclass
class Pinning:
    """Pinning: the CPUs of the proxy under test (all its processes) and of the load side
    (wrk, the backend, this script). They overlap (`shared`) by default with --workers N > 1:
    on a 2-core machine N workers need every core, which the load generator then shares."""

    proxy_cpus: tuple[int, ...]
    load_cpus: tuple[int, ...]
    enabled: bool

    @property
    def shared(self) -> bool:
        return bool(set(self.proxy_cpus) & set(self.load_cpus))

    @property
    def all_cpus(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.proxy_cpus) | set(self.load_cpus)))

    def load_argv(self, argv: list[str]) -> list[str]:
        """load_argv pins a load-side command (wrk) to the load CPUs."""
        return (["taskset", "-c", services.cpu_list(self.load_cpus), *argv] if self.enabled
                else argv)


def parse_cpus(text: str) -> tuple[int, ...]:
    """parse_cpus: a CPU list as taskset takes it ("1", "0,1", "0-3") as sorted CPU numbers;
    ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad CPU list {text!r} (e.g. 0 or 0,1 or 0-3)")
        lo, hi = int(low), int(high) if dash else int(low)
        if hi < lo:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds before each run")
    p.add_argument("--targets",
                   help=f"comma-separated subset of {','.join(TARGETS)} (default: all; "
                        "nginx1 and cutover1 only with --workers N > 1)")
    p.add_argument("--idle-connections", type=int, default=1000,
                   help="idle keep-alive connections for the RSS figure (default 1000)")
    p.add_argument("--idle-hold", type=float, default=2, help="seconds to hold them (default 2)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="cutover runs with `workers: N`, nginx with `worker_processes N`, "
                        "HAProxy with `nbthread N`; with N > 1 also nginx1 and cutover1 (one "
                        "worker each), the connection spread and a worker kill (default 1)")
    p.add_argument("--proxy-cpu", metavar="CPUS",
                   help="CPU(s) of the proxy under test, e.g. 0 or 0,1 (default: 0; with "
                        "--workers N > 1 every CPU)")
    p.add_argument("--load-cpu", metavar="CPUS",
                   help="CPU(s) of wrk and the backend (default: 1; with --workers N > 1 "
                        "every CPU, shared with the proxy)")
    p.add_argument("--spread-connections", type=int, default=1000, metavar="N",
                   help="wrk keep-alive connections of the spread phase, --workers N > 1 "
                        "(default 1000)")
    p.add_argument("--start-timeout", type=float, default=20,
                   help="seconds to wait for each server to answer 200 (default 20)")
    p.add_argument("--foreign-limit", type=float, default=10, metavar="PCT",
                   help="a run is disturbed when other processes took more than PCT%% of a "
                        "pinned CPU (default 10)")
    p.add_argument("--retry-disturbed", type=int, default=2, metavar="N",
                   help="measure a disturbed run again, at most N times, and keep the least "
                        "disturbed attempt (default 2; 0 = never)")
    p.add_argument("--build", choices=("compiled", "pure"), default="compiled",
                   help="which cutover to measure: compiled = what `pip install .` ships (built "
                        "by bench/build.py into bench/results/venv-compiled), pure = the one "
                        "beside this Python (an editable install runs pure Python)")
    p.add_argument("--cutover", metavar="CMD",
                   help="cutover command to benchmark (overrides --build)")
    p.add_argument("--switch-only", action="store_true",
                   help="run only the switch phase (flips under load, rollback recovery) "
                        "against cutover")
    p.add_argument("--no-switch", action="store_true", help="leave the switch phase out")
    p.add_argument("--switch-duration", type=float, default=10,
                   help="seconds of wrk load while flipping (default 10)")
    p.add_argument("--flip-interval", type=float, default=1,
                   help="seconds between flips under load (default 1)")
    p.add_argument("--rollback-repeats", type=int, default=10,
                   help="flip + rollback drills for the recovery time (default 10)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = p.parse_args(argv)
    if args.switch_only and args.no_switch:
        p.error("--switch-only and --no-switch exclude each other")
    if args.switch_only:
        args.targets = "cutover"
    if args.targets is None:
        args.targets = ",".join(t for t in TARGETS if args.workers > 1 or t not in SINGLE)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if not 1 <= args.workers <= WORKERS_MAX:
        p.error(f"--workers must be 1-{WORKERS_MAX}")
    if args.workers == 1 and set(SINGLE) & set(args.targets):
        p.error("nginx1 and cutover1 (one worker, beside the N-worker nginx and cutover) need "
                "--workers N > 1")
    args.targets = [t for t in TARGETS if t in args.targets]  # interleaved in this order
    try:
        args.proxy_cpus = parse_cpus(args.proxy_cpu) if args.proxy_cpu else None
        args.load_cpus = parse_cpus(args.load_cpu) if args.load_cpu else None
    except ValueError as e:
        p.error(f"--proxy-cpu/--load-cpu: {e}")
    if not 1 <= args.spread_connections <= 10000:
        p.error("--spread-connections must be 1-10000")
    for option in ("duration", "warmup", "switch_duration"):
        if getattr(args, option) != int(getattr(args, option)):
            p.error(f"--{option.replace('_', '-')} must be whole seconds (wrk's -d takes no "
                    f"fractions), got {getattr(args, option):g}")
    if not (1 <= args.rounds <= 100 and 1 <= args.duration <= 600 and 1 <= args.connections
            <= 10000 and 0 <= args.warmup <= 60 and 1 <= args.idle_connections <= 20000
            and 0 <= args.idle_hold <= 60 and 0 <= args.retry_disturbed <= 5
            and 1 <= args.switch_duration <= 600 and 0.2 <= args.flip_interval <= 60
            and 1 <= args.rollback_repeats <= 100):
        p.error("a bound is out of range (rounds 1-100, duration 1-600 s, connections "
                "1-10000, warmup 0-60 s, idle connections 1-20000, idle hold 0-60 s, "
                "retry-disturbed 0-5, switch duration 1-600 s, flip interval 0.2-60 s, "
                "rollback repeats 1-100)")
    return args


# ---------------------------------------------------------------- setup

def raise_nofile_limit(needed: int) -> None:
    """raise_nofile_limit lifts the soft RLIMIT_NOFILE (inherited by every child we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def choose_pinning(args, notes: list[str]) -> Pinning:
    """choose_pinning: the proxy's and the load side's CPUs (defaults: 0 and 1; with
    --workers N > 1 every CPU for both); pins only when every one is available, and pins
    this script to the load CPUs."""
    available = tuple(sorted(os.sched_getaffinity(0)))
    shared_default = args.workers > 1
    proxy = args.proxy_cpus or (available if shared_default else (0,))
    load_ = args.load_cpus or (available if shared_default else (1,))
    pin = Pinning(proxy, load_, True)
    if not set(pin.all_cpus) <= set(available):
        notes.append(f"WARNING: --proxy-cpu {services.cpu_list(proxy)} and --load-cpu "
                     f"{services.cpu_list(load_)} are not all available CPUs (have "
                     f"{list(available)}); running unpinned, figures are not comparable to "
                     "pinned runs")
        pin.enabled = False
        return pin
    if pin.shared:
        notes.append(f"the proxy (CPUs {services.cpu_list(proxy)}) shares CPUs with the load "
                     f"generator and the backend (CPUs {services.cpu_list(load_)}): req/s is "
                     "what the machine does with both; CPU us/req is the figure to compare")
    os.sched_setaffinity(0, set(load_))  # the idle-connection client is load, too
    return pin


def cutover_command(explicit: str | None, build: str) -> str | None:
    """cutover_command: --cutover if given, else the compiled build or the console script beside this Python."""
    if explicit:
        return shutil.which(explicit) or None
    if build == "compiled":
        log("building the compiled cutover (bench/build.py) ...")
        return str(compiled.install_venv(compiled.DEFAULT_VENV))
    beside = Path(sys.executable).parent / "cutover"
    return str(beside) if beside.exists() else shutil.which("cutover")


def start_targets(args, group, tmp, paths, pin, backend, backend_port, failures) -> list[Target]:
    """start_targets starts the selected proxies; one that does not come up is recorded in
    failures and skipped, the others go on."""
    targets = []
    cpus, n = pin.proxy_cpus, args.workers
    starters = {
        "nginx1": lambda: services.start_nginx_proxy(group, tmp, paths["nginx"], cpus,
                                                     backend_port, args.start_timeout, 1,
                                                     name="nginx1"),
        "nginx": lambda: services.start_nginx_proxy(group, tmp, paths["nginx"], cpus,
                                                    backend_port, args.start_timeout, n),
        "nginxlog": lambda: services.start_nginx_proxy(group, tmp, paths["nginx"], cpus,
                                                       backend_port, args.start_timeout, n, name="nginxlog",
                                                       access_log=Path(tmp) / "nginxlog" / "access.log"),
        "haproxy": lambda: services.start_haproxy(group, tmp, paths["haproxy"], cpus,
                                                  backend_port, args.start_timeout, n),
        "cutover1": lambda: services.start_cutover(group, tmp, paths["cutover"], cpus,
                                                   backend_port, args.start_timeout, 1,
                                                   name="cutover1"),
        "cutover": lambda: services.start_cutover(group, tmp, paths["cutover"], cpus,
                                                  backend_port, args.start_timeout, n),
        "cutoverlog": lambda: services.start_cutover(
            group, tmp, paths["cutover"], cpus, backend_port, args.start_timeout, n, name="cutoverlog",
            extra=f'access_log: {{path: "{access_log_path(tmp)}", format: json}}\n'),
    }
    for name in args.targets:
        if name == "direct":
            targets.append(Target("direct", backend_port, backend))
            continue
        if name.startswith("cutover") and not paths.get("cutover"):
            failures[name] = "skipped: the `cutover` console script was not found"
            log(f"cutover: {failures[name]}")
            continue
        log(f"starting {name} ...")
        try:
            service, port = starters[name]()
        except services.StartError as e:
            failures[name] = f"skipped: {name} did not come up: {e}"
            log(f"{name}: {failures[name]}")
            continue
        targets.append(Target(name, port, service))
    return targets


# ---------------------------------------------------------------- measuring

@dataclass
class CpuSnapshot:
    """CpuSnapshot: cumulative CPU seconds at one instant, read before and after a wrk run."""

    wall: float
    server: float  # the target's process tree: the proxy (for direct: the backend)
    server_root: float  # its root process alone: cutover's supervisor, nginx's master
    server_idle: int  # voluntary context switches of the tree: an event loop going idle
    server_preempted: int  # nonvoluntary ones: the scheduler gave its CPU to another process
    backend: float
    wrk: float  # finished children of this script, i.e. the wrk runs (RUSAGE_CHILDREN)
    busy_proxy_cpu: float  # all non-idle time of the pinned CPUs (/proc/stat), summed
    busy_load_cpu: float
    busy_all: float  # of every pinned CPU, each counted once (for shared CPUs)

    def __sub__(self, other: "CpuSnapshot") -> "CpuSnapshot":
        return CpuSnapshot(*(a - b for a, b in zip(astuple(self), astuple(other))))


def cpu_snapshot(target: Target, backend: services.Service, pin: Pinning) -> CpuSnapshot:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = target.service.pids()
    idle, preempted = procfs.context_switches(pids)
    return CpuSnapshot(
        wall=time.monotonic(),
        server=procfs.cpu_seconds(pids),
        server_root=procfs.own_cpu_seconds(target.service.proc.pid),
        server_idle=idle,
        server_preempted=preempted,
        backend=procfs.cpu_seconds(backend.pids()),
        wrk=children.ru_utime + children.ru_stime,
        busy_proxy_cpu=procfs.cpu_busy_seconds(pin.proxy_cpus) if pin.enabled else 0.0,
        busy_load_cpu=procfs.cpu_busy_seconds(pin.load_cpus) if pin.enabled else 0.0,
        busy_all=procfs.cpu_busy_seconds(pin.all_cpus) if pin.enabled else 0.0,
    )


def foreign_cpu_pct(d: CpuSnapshot, target: Target, pin: Pinning) -> tuple[float, float] | None:
    """foreign_cpu_pct: the share of the proxy CPUs and of the load CPUs used by anything but
    our processes during the run (other jobs on the machine, unattributed interrupts), in %
    of one core. Above ~10% the figures are disturbed. None when unpinned. When the two
    share CPUs, both are the same figure: every pinned CPU's busy time less all of ours."""
    if not pin.enabled:
        return None
    ours_on_proxy_cpu = 0.0 if target.name == "direct" else d.server
    if pin.shared:
        other = max(0.0, d.busy_all - ours_on_proxy_cpu - d.backend - d.wrk) / d.wall * 100
        return other, other
    other_proxy = max(0.0, d.busy_proxy_cpu - ours_on_proxy_cpu) / d.wall * 100
    other_load = max(0.0, d.busy_load_cpu - d.backend - d.wrk) / d.wall * 100
    return other_proxy, other_load


def access_log_path(tmp: Path) -> Path:
    """access_log_path: the file cutoverlog writes its access log to (in its own folder)."""
    return Path(tmp) / "cutoverlog" / "access.log"


def take_access_log(target: Target, r: dict) -> None:
    """take_access_log: after a cutoverlog run, count the lines its access log got (warm-up
    included, so at least the run's requests) and empty the file for the next run. Appending
    writers (O_APPEND) go on at the new end."""
    path = target.service.log_path.parent / "access.log"     # = access_log_path(tmp)
    deadline = time.monotonic() + 2
    lines = 0
    while time.monotonic() < deadline:      # the last batch is written within ~0.1 s
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if lines >= r["requests"]:
            break
        time.sleep(0.1)
    r["access_log_lines"] = lines
    os.truncate(path, 0)


def measure_round(target: Target, backend: services.Service, args, paths, pin: Pinning) -> dict:
    """measure_round: warm-up, then one wrk run with the CPU times read around it."""
    url = f"http://{HOST}:{target.port}/"
    if args.warmup > 0:
        load.run_wrk(pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections,
                                                 args.warmup, latency=False)), args.warmup)
    before = cpu_snapshot(target, backend, pin)
    text = load.run_wrk(pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections,
                                                    args.duration, latency=True)), args.duration)
    d = cpu_snapshot(target, backend, pin) - before
    foreign = foreign_cpu_pct(d, target, pin)
    result = load.parse_wrk(text)
    if result.requests == 0:
        raise load.WrkError(f"wrk completed no requests:\n{text.strip()}")
    return {
        "rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "requests": result.requests,
        "cpu_us_per_req": d.server / result.requests * 1e6,
        # with workers: N > 1, the supervisor's part of it (the rest is the workers')
        "root_cpu_us_per_req": d.server_root / result.requests * 1e6,
        # per 100 requests, how often the tree's processes went idle (blocked with nothing to
        # do) and were preempted (more runnable processes than CPUs): where the CPU time of
        # N processes sharing cores with the load side goes, beside the requests themselves
        "idle_per_100_req": d.server_idle / result.requests * 100,
        "preempted_per_100_req": d.server_preempted / result.requests * 100,
        "cpu_pct": d.server / d.wall * 100,
        "load_cpu_busy_pct": (d.busy_load_cpu / d.wall / len(pin.load_cpus) * 100
                              if pin.enabled else None),
        # direct leaves the proxy CPU unused: only the load CPU can disturb it
        "foreign_cpu_pct": None if not foreign else (
            foreign[1] if target.name == "direct" else max(foreign)),
        "foreign_proxy_cpu_pct": foreign[0] if foreign else None,
        "foreign_load_cpu_pct": foreign[1] if foreign else None,
        "errors": result.errors, "socket_errors": result.socket_errors,
        "non_2xx_3xx": result.non_2xx_3xx,
    }


def _pct_text(label: str, pct: float | None) -> str:
    return "" if pct is None else f"  {label} {pct:.0f}%"


def _log_run(prefix: str, r: dict) -> None:
    log(f"{prefix} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
        f"cpu {r['cpu_us_per_req']:.1f} us/req ({r['cpu_pct']:.0f}%)  errors {r['errors']}"
        + _pct_text("load cpu", r["load_cpu_busy_pct"])
        + _pct_text("foreign", r["foreign_cpu_pct"]))


def measure_least_disturbed(target: Target, backend: services.Service, args, paths,
                            pin: Pinning, prefix: str) -> dict:
    """measure_least_disturbed measures once; while other processes took more than
    --foreign-limit of a pinned CPU, measures again (at most --retry-disturbed times) and
    keeps the least disturbed attempt. The choice looks at the disturbance, never the result."""
    best = None
    for attempt in range(1, args.retry_disturbed + 2):
        r = measure_round(target, backend, args, paths, pin)
        r["attempt"] = attempt
        disturbed = (r["foreign_cpu_pct"] or 0) > args.foreign_limit
        _log_run(prefix + (f" (attempt {attempt}, disturbed)" if disturbed else ""), r)
        if best is None or (r["foreign_cpu_pct"] or 0) < (best["foreign_cpu_pct"] or 0):
            best = r
        if not disturbed:
            break
    best["attempts"] = attempt
    return best


def run_rounds(targets: list[Target], backend: services.Service, args, paths, pin,
               failures: dict[str, str], notes: list[str]) -> dict[str, list[dict]]:
    """run_rounds: for each round, each target in turn (interleaved). A target that fails is
    recorded in failures and left out of the following rounds."""
    rounds: dict[str, list[dict]] = {t.name: [] for t in targets}
    for n in range(1, args.rounds + 1):
        for target in targets:
            if target.name in failures:
                continue
            prefix = f"[round {n}/{args.rounds}] {target.name:<8}"
            try:
                if not target.service.alive():
                    raise load.WrkError(f"{target.service.name} exited with code "
                                        f"{target.service.proc.returncode}")
                r = measure_least_disturbed(target, backend, args, paths, pin, prefix)
                if target.name == "cutoverlog":
                    take_access_log(target, r)
            except load.WrkError as e:
                failures[target.name] = f"failed in round {n}: {e}"
                log(f"{prefix} {failures[target.name]}")
                continue
            rounds[target.name].append(r)
            if (r["foreign_cpu_pct"] or 0) > args.foreign_limit:
                where = (f"{r['foreign_proxy_cpu_pct']:.0f}% of a core on CPUs "
                         f"{services.cpu_list(pin.all_cpus)}" if pin.shared else
                         f"{r['foreign_proxy_cpu_pct']:.0f}% of CPU(s) "
                         f"{services.cpu_list(pin.proxy_cpus)} and "
                         f"{r['foreign_load_cpu_pct']:.0f}% of CPU(s) "
                         f"{services.cpu_list(pin.load_cpus)}")
                notes.append(f"round {n} {target.name}: other processes took {where} "
                             f"(best of {r['attempts']} attempts); figures disturbed")
    return rounds


def measure_memory(target: Target, args, notes: list[str]) -> dict | None:
    """measure_memory: RSS of the target's processes idle, then holding N idle connections."""
    if not target.service.alive():
        return None
    idle_rss = procfs.rss_bytes(target.service.pids())
    held = load.hold_idle_connections(HOST, target.port, args.idle_connections, args.idle_hold,
                                      lambda: procfs.rss_bytes(target.service.pids()))
    if held.opened < held.wanted or held.still_open < held.opened:
        notes.append(f"{target.name}: idle connections opened {held.opened}/{held.wanted}, "
                     f"still open after {args.idle_hold:g}s {held.still_open}"
                     + (f" (first error: {held.first_error})" if held.first_error else ""))
    log(f"[memory] {target.name:<8} RSS {idle_rss / MB:.1f} MB idle, {held.rss_bytes / MB:.1f} MB "
        f"with {held.opened} idle connections")
    return {"rss_idle_mb": idle_rss / MB, "rss_1k_mb": held.rss_bytes / MB,
            "idle_opened": held.opened, "idle_still_open": held.still_open}


def _with_foreign(target: Target, backend: services.Service, pin: Pinning, measure) -> dict:
    """_with_foreign runs measure() and adds the share of the pinned CPUs that other processes
    took meanwhile (as in the rounds; this script's own CPU, e.g. the probe, counts as ours)."""
    def own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    own_before, before = own(), cpu_snapshot(target, backend, pin)
    result = measure()
    d = cpu_snapshot(target, backend, pin) - before
    foreign = foreign_cpu_pct(d, target, pin)
    if foreign:
        other_load = max(0.0, foreign[1] - (own() - own_before) / d.wall * 100)
        foreign = (other_load if pin.shared else foreign[0], other_load)
    result.update({"foreign_cpu_pct": max(foreign) if foreign else None,
                   "foreign_proxy_cpu_pct": foreign[0] if foreign else None,
                   "foreign_load_cpu_pct": foreign[1] if foreign else None})
    return result


def measure_switch(target: Target, backend: services.Service, args, paths, pin: Pinning,
                   failures: dict[str, str]) -> dict:
    """measure_switch: the switch phase against cutover: a warm-up, flips under wrk load
    (same connections and pinning), then the rollback drills. What could not be measured is
    recorded in failures["switch"]; the figures measured before are kept."""
    url = f"http://{HOST}:{target.port}/"
    admin = target.service.admin_port
    result: dict = {"admin": f"{HOST}:{admin}", "flips": None, "rollback": None}
    try:
        if args.warmup > 0:
            load.run_wrk(pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections,
                                                     args.warmup, latency=False)), args.warmup)
        log(f"[switch] wrk {args.switch_duration:g}s with {args.connections} connections, "
            f"a flip every {args.flip_interval:g}s (admin {HOST}:{admin}) ...")
        argv = pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections,
                                           args.switch_duration, latency=True))
        f = _with_foreign(target, backend, pin, lambda: switch.flips_under_load(
            admin, target.port, argv, args.switch_duration, args.flip_interval, log,
            workers=target.service.workers))
        result["flips"] = f
        d = f["drain"]
        log(f"[switch] {f['flips']} flips under load: {f['requests']} requests "
            f"({f['rps']:.0f} req/s), errors {f['errors']}; drains recorded {d['recorded']}/"
            f"{f['flips']}: drained {d['drained']}, forced_closed {d['forced_closed']}, "
            f"dropped {d['dropped']}" + _pct_text("foreign", f["foreign_cpu_pct"])
            + (f"; acked by all {f['workers']} workers {f['acks_complete']}/{f['flips']}, fresh "
               f"connections on the new env {f['fresh_on_new_env']}/{f['fresh_requests']}"
               if f["workers"] > 1 else ""))
        if not target.service.alive():
            raise switch.SwitchError(f"cutover exited with code {target.service.proc.returncode}")
        log(f"[switch] {args.rollback_repeats} x (flip, drain, rollback) with a keep-alive "
            "probe ...")
        result["rollback"] = _with_foreign(target, backend, pin, lambda: switch.rollback_recovery(
            admin, target.port, args.rollback_repeats, log))
    except (switch.SwitchError, load.WrkError) as e:
        phase = "rollback recovery" if result["flips"] else "flips under load"
        failures["switch"] = f"{phase} failed: {e}" + (
            "" if target.service.alive() else
            f" (cutover exited with code {target.service.proc.returncode})")
        log(f"[switch] {failures['switch']}")
    return result


def measure_spread(target: Target, args, paths, pin: Pinning, failures: dict[str, str]) -> dict | None:
    """measure_spread: how the kernel spread --spread-connections keep-alive connections, and
    then fresh connections, over cutover's N workers (workers.py). What could not be measured
    is recorded in failures["spread"]."""
    url = f"http://{HOST}:{target.port}/"
    keepalive = pin.load_argv(load.wrk_argv(paths["wrk"], url, args.spread_connections,
                                            args.duration, latency=True))
    fresh_duration = min(args.duration, 5.0)
    fresh = pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections, fresh_duration,
                                        latency=True, fresh=True))
    log(f"[workers] spread over {args.workers} workers: wrk {args.duration:g}s with "
        f"{args.spread_connections} keep-alive connections, then {fresh_duration:g}s of fresh "
        f"connections ({args.connections} at a time) ...")
    try:
        return worker_phases.spread(target.service.admin_port, keepalive, fresh, args.duration,
                                    fresh_duration, log)
    except (worker_phases.WorkersError, switch.SwitchError, load.WrkError) as e:
        failures["spread"] = f"spread phase failed: {e}"
        log(f"[workers] {failures['spread']}")
        return None


def measure_kill(target: Target, args, paths, pin: Pinning, failures: dict[str, str]) -> dict | None:
    """measure_kill: wrk --duration s against cutover; a third of the way in, SIGKILL of one
    worker (workers.py). What could not be measured is recorded in failures["kill"]."""
    url = f"http://{HOST}:{target.port}/"
    argv = pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections, args.duration,
                                       latency=True))
    log(f"[workers] wrk {args.duration:g}s with {args.connections} connections; SIGKILL of one "
        f"of the {args.workers} workers after {args.duration / 3:.1f}s ...")
    try:
        k = worker_phases.worker_kill(target.service.admin_port, target.port, argv,
                                      args.duration, args.duration / 3, log)
    except (worker_phases.WorkersError, switch.SwitchError, load.WrkError) as e:
        failures["kill"] = f"worker kill phase failed: {e}" + (
            "" if target.service.alive() else
            f" (cutover exited with code {target.service.proc.returncode})")
        log(f"[workers] {failures['kill']}")
        return None
    log(f"[workers] kill: {k['errors']} failed of {k['requests']} (killed worker held "
        f"{k['killed_connections']} connections, {k['killed_inflight']} in flight); "
        f"restarted in {k['restart_ms']:.0f} ms")
    return k


def measure_nginx_kill(target: Target, args, paths, pin: Pinning, failures: dict[str, str]) -> dict | None:
    """measure_nginx_kill: the same wrk run and SIGKILL of one worker against nginx with N
    workers, for the figure beside cutover's. What could not be measured is in failures["nginx_kill"]."""
    url = f"http://{HOST}:{target.port}/"
    argv = pin.load_argv(load.wrk_argv(paths["wrk"], url, args.connections, args.duration,
                                       latency=True))
    log(f"[workers] nginx: wrk {args.duration:g}s; SIGKILL of one of its {args.workers} workers ...")
    try:
        k = worker_phases.nginx_worker_kill(target.service.proc.pid, target.port, argv, args.duration,
                                            args.duration / 3, log)
    except (worker_phases.WorkersError, load.WrkError) as e:
        failures["nginx_kill"] = f"nginx worker kill phase failed: {e}"
        log(f"[workers] {failures['nginx_kill']}")
        return None
    log(f"[workers] nginx kill: {k['errors']} failed of {k['requests']} (killed worker held "
        f"{k['killed_connections']} connections); replaced in {k['restart_ms']:.0f} ms")
    return k


# ---------------------------------------------------------------- main

def benchmark(args, paths, pin, notes, failures) -> tuple[dict, dict, dict | None, dict | None]:
    """benchmark starts everything in a temp dir, measures, and always stops what it started.

    Order: rounds, memory, (N > 1) spread, switch, (N > 1) worker kill — the kill last, since
    it replaces a worker."""
    with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp_name, \
            services.ServiceGroup(pin.enabled) as group:
        tmp = Path(tmp_name)
        log("starting backend ...")
        backend, backend_port = services.start_backend(group, tmp, paths["nginx"], pin.load_cpus,
                                                       args.start_timeout)
        targets = start_targets(args, group, tmp, paths, pin, backend, backend_port, failures)
        rounds, memory = {}, {}
        if not args.switch_only:
            rounds = run_rounds(targets, backend, args, paths, pin, failures, notes)
            for target in targets:
                if target.name not in failures:
                    memory[target.name] = measure_memory(target, args, notes)
        switched = None
        cutover = next((t for t in targets if t.name == "cutover"), None)
        usable = cutover is not None and "cutover" not in failures
        phases = None
        if workers_wanted(args) and usable:
            phases = {"spread": measure_spread(cutover, args, paths, pin, failures), "kill": None}
        if switch_wanted(args) and usable:
            switched = measure_switch(cutover, backend, args, paths, pin, failures)
        if phases is not None:
            if cutover.service.alive():
                phases["kill"] = measure_kill(cutover, args, paths, pin, failures)
            else:
                failures["kill"] = (f"not run: cutover exited with code "
                                    f"{cutover.service.proc.returncode}")
            nginx = next((t for t in targets if t.name == "nginx"), None)
            if nginx is not None and "nginx" not in failures:
                phases["nginx_kill"] = measure_nginx_kill(nginx, args, paths, pin, failures)
        return rounds, memory, switched, phases


def switch_wanted(args) -> bool:
    """switch_wanted: the switch phase runs unless --no-switch, and only against cutover."""
    return not args.no_switch and "cutover" in args.targets


def workers_wanted(args) -> bool:
    """workers_wanted: the spread and worker-kill phases run with --workers N > 1, against
    cutover, unless --switch-only."""
    return args.workers > 1 and not args.switch_only and "cutover" in args.targets


def build_report(args, pin, versions, rounds, memory, notes, failures, switched=None,
                 phases=None) -> dict:
    summaries = {name: report.target_summary(rounds.get(name, []), memory.get(name))
                 for name in args.targets if rounds.get(name)}
    for name, s in summaries.items():
        if s.get("errors"):
            notes.append(f"{name}: wrk reported {s['errors']} errors (must be 0)")
    goals = [] if args.switch_only else report.goals(
        summaries, rss_subject="cutover1" if args.workers > 1 else "cutover")
    if workers_wanted(args):
        why = failures.get("cutover")
        goals += report.workers_goals(summaries, phases, args.workers,
                                      {k: failures.get(k) or why for k in ("spread", "kill")})
        notes += report.workers_notes(phases)
    if "cutoverlog" in args.targets and not args.switch_only:
        goals.append(access_log_goal(summaries, rounds.get("cutoverlog", []), notes))
    if switch_wanted(args):
        why = failures.get("switch") or failures.get("cutover")
        goals += report.switch_goals(switched, why.splitlines()[0] if why else None)
        notes += report.switch_notes(switched, args.foreign_limit)
    return {
        "config": {"workers": args.workers, "spread_connections": args.spread_connections,
                   "rounds": args.rounds, "duration": args.duration,
                   "connections": args.connections, "warmup": args.warmup,
                   "idle_connections": args.idle_connections, "idle_hold": args.idle_hold,
                   "foreign_limit": args.foreign_limit,
                   "retry_disturbed": args.retry_disturbed,
                   "switch_only": args.switch_only, "switch": switch_wanted(args),
                   "switch_duration": args.switch_duration,
                   "flip_interval": args.flip_interval,
                   "rollback_repeats": args.rollback_repeats},
        "pinning": {**asdict(pin), "shared": pin.shared},
        "versions": versions,
        "order": args.targets,
        "targets": summaries,
        "rounds": rounds,
        "ratios": report.ratios(summaries),
        "switch": switched,
        "workers": phases,
        "goals": goals,
        "failures": failures,
        "notes": notes,
    }


def access_log_goal(summaries: dict, logged: list[dict], notes: list[str]) -> dict:
    """access_log_goal: cutover's CPU per request with the access log on (json, to a file:
    cutoverlog) within ACCESS_LOG_CPU_LIMIT x of off (cutover), medians of the same rounds.
    A run whose log got fewer lines than wrk's requests is noted: that log was not written.
    With nginxlog measured too, the detail gives nginx's own ratio (its log on / off) beside."""
    label = f"CPU/req access log <= {ACCESS_LOG_CPU_LIMIT}x off"
    on, off = summaries.get("cutoverlog", {}), summaries.get("cutover", {})
    for n, r in enumerate(logged, 1):
        if r.get("access_log_lines", 0) < r["requests"]:
            notes.append(f"round {n} cutoverlog: its access log got {r.get('access_log_lines', 0)} lines "
                         f"for {r['requests']} requests")
    ratio = report._ratio(on.get("cpu_us_per_req"), off.get("cpu_us_per_req"))
    if ratio is None:
        return {"goal": label, "value": None, "limit": ACCESS_LOG_CPU_LIMIT, "result": "n/a",
                "why": "cutover or cutoverlog was not measured"}
    anchor = report._ratio(summaries.get("nginxlog", {}).get("cpu_us_per_req"),
                           summaries.get("nginx", {}).get("cpu_us_per_req"))
    return {"goal": label, "value": ratio, "limit": ACCESS_LOG_CPU_LIMIT, "nginx": anchor,
            "result": "PASS" if ratio <= ACCESS_LOG_CPU_LIMIT else "FAIL",
            "detail": f"{ratio:.2f}x ({on['cpu_us_per_req']:.1f} vs {off['cpu_us_per_req']:.1f} us)"
                      + (f"; nginx {anchor:.2f}x" if anchor is not None else "")}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Cleanup runs on SIGTERM as on Ctrl-C; SIGINT is set explicitly because a shell starting
    # us in the background (`&`, no job control) leaves it ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    notes: list[str] = []
    failures: dict[str, str] = {}
    try:
        paths = tools.ensure(log)
        wants_cutover = any(t.startswith("cutover") for t in args.targets)
        paths["cutover"] = cutover_command(args.cutover, args.build) if wants_cutover else None
        versions = tools.versions(paths)
        raise_nofile_limit(args.idle_connections * 3 + args.connections * 4
                           + args.spread_connections * 4 + 1024)
        pin = choose_pinning(args, notes)
        rounds, memory, switched, phases = benchmark(args, paths, pin, notes, failures)
    except (tools.ToolError, services.StartError, compiled.BuildError) as e:
        log(f"bench: {e}")
        return 2
    except KeyboardInterrupt:
        log("bench: interrupted; every started process was stopped")
        return 130
    result = build_report(args, pin, versions, rounds, memory, notes, failures, switched, phases)
    result["exit_code"] = 1 if failures else 0
    print(json.dumps(result, indent=2) if args.json else report.render(result))
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
