"""fleet_flip: how long a fleet flip takes, from the call to every replica serving the new environment.

Starts a single-member etcd (Debian's etcd-server) on free loopback ports, two backends (blue,
green), and N `cutover serve` replicas sharing one state in etcd; optionally keeps each
replica under load (keep-alive clients counting failed requests). Then flips --flips times,
alternating, on replicas in turn: each flip's time is from sending the call until a fresh
request to every replica answers from the new environment; the answer's ack must be complete.
With --dead, one more replica is started and SIGKILLed first (its lease must expire before
flips stop waiting for it; the flips are measured after that).

    python bench/fleet_flip.py [--replicas 3] [--flips 50] [--load 8] [--dead]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_etcd(tmp: Path) -> tuple[asyncio.subprocess.Process, str]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("fleet_flip: etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
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
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def start_backend(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request):
        return web.Response(text=name + "\n")
    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def start_replica(tmp: Path, index: int, etcd: str, blue: int, green: int) -> dict:
    port, admin = free_port(), free_port()
    folder = tmp / f"r{index}"
    folder.mkdir()
    config = folder / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\nadmin: {{listen: "127.0.0.1:{admin}", auth: none}}\n'
        f'environments:\n  blue: {{servers: ["127.0.0.1:{blue}"]}}\n  green: {{servers: ["127.0.0.1:{green}"]}}\n'
        f'state_file: {folder / "state.json"}\ndrain_timeout: 5s\n'
        f'store: {{etcd: {{endpoints: ["{etcd}"], prefix: /bench/fleet, lease_ttl: 2s}}}}\n'
        f'fleet: {{replica_id: r{index}, ack_timeout: 5s}}\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "serve", "--config", str(config), cwd=ROOT,
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


async def serving(session, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}) as r:
        return (await r.text()).strip()


async def load(session, port: int, stop: asyncio.Event, counts: dict) -> None:
    while not stop.is_set():
        try:
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                await r.read()
                counts["ok" if r.status == 200 else "failed"] += 1
        except aiohttp.ClientError:
            counts["failed"] += 1


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cutover-fleet-bench-"))
    procs = []
    runners = []
    try:
        etcd_proc, etcd = await start_etcd(tmp)
        procs.append(etcd_proc)
        for name in ("blue", "green"):
            runners.append(await start_backend(name))
        blue, green = runners[0][1], runners[1][1]
        replicas = [await start_replica(tmp, i, etcd, blue, green) for i in range(args.replicas)]
        procs += [r["proc"] for r in replicas]
        notes = []
        if args.dead:
            dead = await start_replica(tmp, args.replicas, etcd, blue, green)
            procs.append(dead["proc"])
            dead["proc"].kill()
            await dead["proc"].wait()
            await asyncio.sleep(2.5)          # its lease (2 s) runs out
            notes.append("one more replica was SIGKILLed before the flips (lease 2 s, expired)")
        stop = asyncio.Event()
        counts = {"ok": 0, "failed": 0}
        loaders = []
        clients = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        probes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        admin = aiohttp.ClientSession()
        async with clients, probes, admin:
            for r in replicas:
                loaders += [asyncio.create_task(load(clients, r["port"], stop, counts)) for _ in range(args.load)]
            await asyncio.sleep(0.5)
            times, incomplete = [], 0
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
                while pending:
                    results = await asyncio.gather(*(serving(probes, r["port"]) for r in pending))
                    pending = [r for r, seen in zip(pending, results) if seen != expected]
                times.append((time.perf_counter() - started) * 1000)
            stop.set()
            await asyncio.gather(*loaders)
        return {"replicas": args.replicas, "flips": args.flips, "load_clients_per_replica": args.load,
                "ms": {"p50": round(statistics.median(times), 2), "p99": round(pct(times, 99), 2),
                       "max": round(max(times), 2)},
                "incomplete_acks": incomplete, "requests": counts, "notes": notes}
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
        for runner, _ in runners:
            await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--flips", type=int, default=50)
    p.add_argument("--load", type=int, default=8, help="keep-alive clients per replica (0: no load)")
    p.add_argument("--dead", action="store_true", help="also a replica killed before the flips")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ms = report["ms"]
        print(f"{report['replicas']} replicas, {report['flips']} flips, {report['load_clients_per_replica']} "
              f"keep-alive clients per replica: call -> every replica serving the new environment "
              f"p50 {ms['p50']} ms, p99 {ms['p99']} ms, max {ms['max']} ms; incomplete acks "
              f"{report['incomplete_acks']}; requests ok {report['requests']['ok']}, failed "
              f"{report['requests']['failed']}")
        for note in report["notes"]:
            print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
