"""fleet_flip: how long a fleet flip takes, from the call to every replica serving the new environment.

Starts a single-member etcd (Debian's etcd-server) on free loopback ports, the backends (blue,
green), and N `cutover serve` replicas sharing one state in etcd; optionally keeps each
replica under load (keep-alive clients counting failed requests). Then flips --flips times,
alternating, on replicas in turn: each flip's time is from sending the call until a fresh
request to every replica answers from the new environment; the answer's ack must be complete.
With --dead, one more replica is started and SIGKILLed first (its lease must expire before
flips stop waiting for it; the flips are measured after that). With --outage S, after the
flips etcd is stopped for S seconds (SIGTERM, then started again on the same ports and data):
meanwhile a flip is sent every 0.5 s to the replicas in turn (each must answer 503
store_unavailable), every replica must keep serving the last route, the load must not fail;
once etcd is back every replica must say it is connected at the generation it had (no
mutation lost, none half-applied) and a flip must be acked by all.

The backend is nginx when it is installed (the one bench/run.py uses: 127.0.0.1:P answers
blue, 127.0.0.2:P green), else two aiohttp servers in a process of their own. The load's
clients run in a process of their own too, so that this one, which times the flips, only
sends the calls and the probes. `--build compiled` measures what `pip install .` ships
(bench/build.py builds it into bench/results/venv-compiled), `--build pure` (the default)
this checkout run by the interpreter; `--cutover CMD` another cutover.

    python bench/fleet_flip.py [--replicas 3] [--flips 50] [--load 8] [--dead] [--build pure|compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

import procfs                    # bench/procfs.py: CPU time from /proc
import services                  # bench/services.py: run.py's nginx backend

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_etcd(tmp: Path, ports: tuple[int, int] | None = None
                     ) -> tuple[asyncio.subprocess.Process, str, tuple[int, int]]:
    """start_etcd: etcd on ``ports`` (client, peer; free ones by default) with its data in tmp/etcd;
    (its process, its client URL, the two ports)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("fleet_flip: etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = ports or (free_port(), free_port())
    url = f"http://127.0.0.1:{client}"
    proc = await asyncio.create_subprocess_exec(
        etcd, "--name", "bench", "--data-dir", str(tmp / "etcd"), "--listen-client-urls", url,
        "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--experimental-watch-progress-notify-interval",
        "1s", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with aiohttp.ClientSession() as s, asyncio.timeout(20):
        while True:
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return proc, url, (client, peer)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


class Backends:
    """Backends: blue and green, as "host:port" each, and what each one's answer holds."""

    def __init__(self, blue: str, green: str, bodies: dict[str, str], kind: str) -> None:
        self.blue, self.green, self.bodies, self.kind = blue, green, bodies, kind

    def environment(self, body: str) -> str:
        """environment: which environment answered ``body`` ("?" for neither)."""
        return next((env for env, text in self.bodies.items() if text == body.strip()), "?")


def start_nginx_backend(group, tmp: Path) -> Backends:
    """start_nginx_backend: bench/run.py's nginx backend (one worker): blue 127.0.0.1:P, green 127.0.0.2:P."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    _, port = services.start_backend(group, tmp, nginx, (), timeout=20)
    return Backends(f"127.0.0.1:{port}", f"127.0.0.2:{port}",
                    {"blue": "hello from 127.0.0.1", "green": "hello from 127.0.0.2"}, "nginx (1 worker)")


def serve_backends(blue: int, green: int, limit: float) -> None:
    """serve_backends: the aiohttp backends, in the process `--backends-child` starts (at most ``limit`` s)."""
    async def main() -> None:
        runners = []
        for name, port in (("blue", blue), ("green", green)):
            async def answer(request, name=name):
                return web.Response(text=name + "\n")
            app = web.Application()
            app.router.add_get("/{tail:.*}", answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        print("ready", flush=True)
        await asyncio.sleep(limit)
        for runner in runners:
            await runner.cleanup()
    asyncio.run(main())


async def start_python_backends(procs: list) -> Backends:
    blue, green = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--backends-child", f"{blue},{green}", stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    procs.append(proc)
    async with asyncio.timeout(20):
        await proc.stdout.readline()
    return Backends(f"127.0.0.1:{blue}", f"127.0.0.1:{green}", {"blue": "blue", "green": "green"},
                    "aiohttp (a process of its own)")


def cutover_argv(args) -> list[str]:
    """cutover_argv: how a replica is started: --cutover, the compiled build, or this checkout."""
    if args.cutover:
        found = shutil.which(args.cutover)
        if found is None:
            raise SystemExit(f"fleet_flip: --cutover {args.cutover}: no such command")
        return [str(Path(found).resolve())]
    if args.build == "compiled":
        import build as compiled          # bench/build.py
        print("fleet_flip: building the compiled cutover (bench/build.py) ...", file=sys.stderr)
        return [str(compiled.install_venv(compiled.DEFAULT_VENV))]
    return [sys.executable, "-m", "admin.cli"]


async def start_replica(tmp: Path, index: int, etcd: str, backends: Backends, command: list[str]) -> dict:
    port, admin = free_port(), free_port()
    folder = tmp / f"r{index}"
    folder.mkdir()
    config = folder / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\nadmin: {{listen: "127.0.0.1:{admin}", auth: none}}\n'
        f'environments:\n  blue: {{servers: ["{backends.blue}"]}}\n  green: {{servers: ["{backends.green}"]}}\n'
        f'state_file: {folder / "state.json"}\ndrain_timeout: 5s\n'
        f'store: {{etcd: {{endpoints: ["{etcd}"], prefix: /bench/fleet, lease_ttl: 2s}}}}\n'
        f'fleet: {{replica_id: r{index}, ack_timeout: 5s}}\n')
    # The checkout's own modules come from ROOT; an installed cutover must not see them.
    proc = await asyncio.create_subprocess_exec(
        *command, "serve", "--config", str(config), cwd=ROOT if command[0] == sys.executable else folder,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with aiohttp.ClientSession() as s, asyncio.timeout(30):
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{admin}/v1/status") as r:
                    if r.status == 200:
                        return {"id": f"r{index}", "port": port, "admin": admin, "proc": proc}
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def serving(session, port: int, backends: Backends) -> str:
    async with session.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}) as r:
        return backends.environment(await r.text())


def run_load(ports: list[int], clients: int, limit: float) -> None:
    """run_load: ``clients`` keep-alive clients per port, in the process `--load-child` starts.

    Runs until a line (or the end) on stdin, at most ``limit`` seconds; then prints the counts
    of ok and failed requests as JSON.
    """
    async def main() -> None:
        counts = {"ok": 0, "failed": 0}
        stop = asyncio.Event()

        async def one(session, port: int) -> None:
            while not stop.is_set():
                try:
                    async with session.get(f"http://127.0.0.1:{port}/") as r:
                        await r.read()
                        counts["ok" if r.status == 200 else "failed"] += 1
                except aiohttp.ClientError:
                    counts["failed"] += 1

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.create_task(one(session, port)) for port in ports for _ in range(clients)]
            print("started", flush=True)
            try:
                async with asyncio.timeout(limit):
                    await reader.readline()
            except TimeoutError:
                pass
            stop.set()
            await asyncio.gather(*tasks)
        print(json.dumps(counts), flush=True)
    asyncio.run(main())


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def start_load(ports: list[int], clients: int, procs: list) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load-child", ",".join(map(str, ports)), "--load", str(clients),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    procs.append(proc)
    async with asyncio.timeout(20):
        await proc.stdout.readline()
    return proc


async def stop_load(proc: asyncio.subprocess.Process) -> dict:
    proc.stdin.write(b"stop\n")
    await proc.stdin.drain()
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
        await proc.wait()
    return json.loads(line)


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cutover-fleet-bench-"))
    procs: list = []
    group = services.ServiceGroup(cpu_pinning=False)     # the nginx backend, when it is used
    try:
        return await measure(args, tmp, procs, group)
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        group.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)


async def measure(args, tmp: Path, procs: list, group) -> dict:
    command = cutover_argv(args)
    etcd_proc, etcd, etcd_ports = await start_etcd(tmp)
    procs.append(etcd_proc)
    use_nginx = args.backend == "nginx" or (args.backend == "auto" and shutil.which("nginx"))
    backends = start_nginx_backend(group, tmp) if use_nginx else await start_python_backends(procs)
    replicas = [await start_replica(tmp, i, etcd, backends, command) for i in range(args.replicas)]
    procs += [r["proc"] for r in replicas]
    notes = [f"backend: {backends.kind}; cutover: {' '.join(command)}"]
    if args.dead:
        dead = await start_replica(tmp, args.replicas, etcd, backends, command)
        procs.append(dead["proc"])
        dead["proc"].kill()
        await dead["proc"].wait()
        await asyncio.sleep(2.5)          # its lease (2 s) runs out
        notes.append("one more replica was SIGKILLed before the flips (lease 2 s, expired)")
    loader = await start_load([r["port"] for r in replicas], args.load, procs) if args.load else None
    probes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    admin = aiohttp.ClientSession()
    async with probes, admin:
        await asyncio.sleep(0.5)
        times, incomplete = [], 0
        etcd_cpu = procfs.cpu_seconds([etcd_proc.pid])
        expected = "blue"
        for i in range(args.flips):
            taker = replicas[i % len(replicas)]
            expected = "green" if expected == "blue" else "blue"
            started = time.perf_counter()
            async with admin.post(f"http://127.0.0.1:{taker['admin']}/v1/flip", json={"to": expected}) as resp:
                answer = await resp.json()
            if not answer.get("ack", {}).get("complete"):
                incomplete += 1
            pending = list(replicas)
            async with asyncio.timeout(30):       # a flip never served everywhere ends the run
                while pending:
                    results = await asyncio.gather(*(serving(probes, r["port"], backends) for r in pending))
                    pending = [r for r, seen in zip(pending, results) if seen != expected]
            times.append((time.perf_counter() - started) * 1000)
        etcd_cpu = procfs.cpu_seconds([etcd_proc.pid]) - etcd_cpu
        outage = None
        if args.outage:
            outage = await etcd_outage(args.outage, tmp, etcd_proc, etcd_ports, procs, replicas, admin, probes,
                                       backends, expected)
    counts = await stop_load(loader) if loader is not None else {"ok": 0, "failed": 0}
    return {"outage": outage, "replicas": args.replicas, "flips": args.flips, "load_clients_per_replica": args.load,
            "ms": {"p50": round(statistics.median(times), 2), "p99": round(pct(times, 99), 2),
                   "max": round(max(times), 2)},
            "incomplete_acks": incomplete, "requests": counts,
            "etcd_cpu_ms_per_flip": round(etcd_cpu * 1000 / max(len(times), 1), 2), "notes": notes}


async def etcd_outage(seconds: float, tmp: Path, etcd_proc, ports: tuple[int, int], procs: list, replicas: list[dict],
                      admin, probes, backends: Backends, live: str) -> dict:
    """etcd_outage: etcd stopped for ``seconds`` under the load (see the module docstring)."""
    async def generations() -> list[int]:
        found = []
        for r in replicas:
            async with admin.get(f"http://127.0.0.1:{r['admin']}/v1/status") as resp:
                found.append((await resp.json())["generation"])
        return found

    before = await generations()
    etcd_proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(etcd_proc.wait(), 15)
    answers: dict[str, int] = {}
    stale = 0
    stop_at = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop_at:
        taker = replicas[i % len(replicas)]
        i += 1
        async with admin.post(f"http://127.0.0.1:{taker['admin']}/v1/flip", json={}) as resp:
            answer = await resp.json()
            key = f"{resp.status} {answer.get('code', '')}".strip()
            answers[key] = answers.get(key, 0) + 1
        seen = await asyncio.gather(*(serving(probes, r["port"], backends) for r in replicas))
        stale += sum(env != live for env in seen)
        await asyncio.sleep(0.5)
    new_proc, _, _ = await start_etcd(tmp, ports)
    procs.append(new_proc)
    back = time.perf_counter()
    async with asyncio.timeout(60):
        while True:
            connected = []
            for r in replicas:
                async with admin.get(f"http://127.0.0.1:{r['admin']}/v1/status") as resp:
                    connected.append((await resp.json())["store"]["connected"])
            if all(connected):
                break
            await asyncio.sleep(0.1)
    reconnected_ms = (time.perf_counter() - back) * 1000
    after = await generations()
    target = "green" if live == "blue" else "blue"
    async with admin.post(f"http://127.0.0.1:{replicas[0]['admin']}/v1/flip", json={"to": target}) as resp:
        final = {"status": resp.status, "ack": (await resp.json()).get("ack")}
    return {"seconds": seconds, "mutations": sum(answers.values()), "answers": answers,
            "served_other_than_live": stale, "generations_before": before, "generations_after": after,
            "reconnected_ms": round(reconnected_ms, 1), "flip_after": final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--flips", type=int, default=50)
    p.add_argument("--load", type=int, default=8, help="keep-alive clients per replica (0: no load)")
    p.add_argument("--dead", action="store_true", help="also a replica killed before the flips")
    p.add_argument("--outage", type=float, default=0, metavar="S",
                   help="after the flips, stop etcd for S seconds under the load (0: no outage)")
    p.add_argument("--build", choices=("pure", "compiled"), default="pure",
                   help="pure: this checkout run by the interpreter; compiled: what `pip install .` ships")
    p.add_argument("--cutover", metavar="CMD", help="cutover command to measure (overrides --build)")
    p.add_argument("--backend", choices=("auto", "nginx", "python"), default="auto",
                   help="auto: nginx when installed, else aiohttp servers in a process of their own")
    p.add_argument("--json", action="store_true")
    p.add_argument("--load-child", help=argparse.SUPPRESS)       # ports: run the load (internal)
    p.add_argument("--backends-child", help=argparse.SUPPRESS)   # blue,green: serve them (internal)
    args = p.parse_args(argv)
    if args.load_child:
        run_load([int(port) for port in args.load_child.split(",")], args.load, limit=600)
        return 0
    if args.backends_child:
        blue, green = (int(port) for port in args.backends_child.split(","))
        serve_backends(blue, green, limit=3600)
        return 0
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ms = report["ms"]
        print(f"{report['replicas']} replicas, {report['flips']} flips, {report['load_clients_per_replica']} "
              f"keep-alive clients per replica: call -> every replica serving the new environment "
              f"p50 {ms['p50']} ms, p99 {ms['p99']} ms, max {ms['max']} ms; incomplete acks "
              f"{report['incomplete_acks']}; requests ok {report['requests']['ok']}, failed "
              f"{report['requests']['failed']}; etcd CPU {report['etcd_cpu_ms_per_flip']} ms per flip")
        outage = report["outage"]
        if outage:
            print(f"etcd stopped {outage['seconds']:g} s: {outage['mutations']} flips sent, answers "
                  f"{outage['answers']}; replicas serving other than the last route: "
                  f"{outage['served_other_than_live']}; generations {outage['generations_before']} before, "
                  f"{outage['generations_after']} after; every replica connected again "
                  f"{outage['reconnected_ms']} ms after etcd restarted; then a flip: {outage['flip_after']}")
        for note in report["notes"]:
            print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
