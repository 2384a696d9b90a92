"""The demo: the whole blue-green story on loopback, with a report (SPEC §10).

``cutover demo`` starts the demo orders service as blue (v1) and green (v2)
on one SQLite database, checks v2's migration with schema-check and applies
it (expand step), starts the router with its admin API, preview listener,
gates and post-flip analysis, and puts a steady synthetic load on it. Then:
a preview smoke test of green, a flip under load that passes the gates
(health, drift, schema attestation, smoke, warm-up) and the analysis window
while probes run through the switch window, and a rollback drill. It prints
a report and exits 0 only when no request or probe failed and nothing was
dropped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from proxy.config import parse_config

from .demo_app import MIGRATION_V2, DemoServer, migrate_v2, prepare_database
from .drill import Probes, drill, probe_loop
from .schema_check import check_sql

CLIENTS = 12
SLOW_REQUESTS = 8


class Load:
    """Load: steady keep-alive clients (GETs and some order POSTs) and their tally."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self.versions: collections.Counter = collections.Counter()
        self.stop = asyncio.Event()

    async def client(self, session: aiohttp.ClientSession, url: str, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            post = index % 4 == 0 and n % 5 == 0
            try:
                if post:
                    resp_cm = session.post(url + "orders?item=demo")
                else:
                    resp_cm = session.get(url)
                async with resp_cm as resp:
                    body = await resp.json()
                    if resp.status == 200 and body.get("ok"):
                        self.ok += 1
                        self.versions[body["version"]] += 1
                    else:
                        self.failed += 1
                        self.errors.append(f"HTTP {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                self.failed += 1
                self.errors.append(repr(exc))

    async def slow(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url + "?delay=1") as resp:
                body = await resp.json()
                if resp.status == 200:
                    self.ok += 1
                    self.versions[body["version"]] += 1
                    return
                self.failed += 1
                self.errors.append(f"HTTP {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.failed += 1
            self.errors.append(repr(exc))


async def _history_entry(session: aiohttp.ClientSession, admin: str, generation: int, timeout: float) -> dict:
    """_history_entry: the switch to ``generation`` once its drain is recorded."""
    async with asyncio.timeout(timeout):
        while True:
            async with session.get(admin + "/v1/history") as resp:
                for event in (await resp.json())["events"]:
                    if event.get("generation") == generation and "drain" in event:
                        return event
            await asyncio.sleep(0.05)


def _config(tmp: Path, pools: dict) -> object:
    return parse_config({
        "listen": "127.0.0.1:0",
        "preview_listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {name: {"servers": [s.address for s in servers]} for name, servers in pools.items()},
        "live": "blue",
        "state_file": "state.json",
        "drain_timeout": "10s",
        "health_check": {"interval": "250ms"},
        "gates": {
            "smoke": [{"path": "/", "expect_status": 200, "expect_body_contains": '"ok": true'}],
            "drift": {"path": "/__fingerprint", "ignore": ["version", "build"]},
            "schema": {},
            "warmup": {"paths": ["/"], "requests": 20},
        },
        "analysis": {"window": "2s", "interval": "100ms", "min_requests": 50, "max_error_ratio": 0.01},
    }, tmp, {})


async def run_demo(json_output: bool = False, keep_running: bool = False, duration: float = 6.0,
                   objective_ms: float = 100.0) -> int:
    """run_demo: the whole story; returns the exit status (0 only when nothing failed)."""
    from .serve import build_warning, start

    say = (lambda *a: None) if json_output else (lambda *a: print(*a, file=sys.stderr, flush=True))
    warning = build_warning()
    if warning:
        print(f"cutover: warning: {warning}", file=sys.stderr, flush=True)
    tmp_dir = tempfile.TemporaryDirectory(prefix="cutover-demo-")
    tmp = Path(tmp_dir.name)
    db = str(tmp / "orders.sqlite")
    prepare_database(db)
    findings = [f for f in check_sql(MIGRATION_V2) if not f.suppressed]
    say(f"schema-check of v2's migration: {len(findings)} backward-incompatible change(s)")
    if findings:
        for f in findings:
            say(f"  line {f.line}: {f.rule}: {f.problem}")
    migrate_v2(db)
    pools = {"blue": [DemoServer("v1", "blue", i, db) for i in range(2)],
             "green": [DemoServer("v2", "green", i, db) for i in range(2)]}
    for servers in pools.values():
        for server in servers:
            await server.start()
    config = _config(tmp, pools)
    running = await start(config)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    preview = f"http://127.0.0.1:{running.proxy.preview_port}/"
    admin = f"http://127.0.0.1:{running.admin_port}"
    say(f"blue (v1): {', '.join(s.address for s in pools['blue'])}")
    say(f"green (v2): {', '.join(s.address for s in pools['green'])}")
    say(f"router: {url}  preview: {preview}  admin: {admin}")
    load = Load()
    report: dict = {"router": url, "preview": preview, "admin": admin,
                    "schema_check": {"findings": len(findings)}}
    started = time.monotonic()
    progress = asyncio.create_task(_progress(load, running, started, json_output))
    connector = aiohttp.TCPConnector(limit=CLIENTS + SLOW_REQUESTS + 4)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            clients = [asyncio.create_task(load.client(session, url, i)) for i in range(CLIENTS)]
            async with session.post(admin + "/v1/schema/attest", json={
                    "from_version": "v1", "to_version": "v2", "by": "cutover demo schema-check"}) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(admin + "/v1/schema/attest", json={
                    "from_version": "v2", "to_version": "v1", "by": "cutover demo schema-check"}) as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(preview) as resp:
                smoke = await resp.json()
            say(f"preview smoke test: {preview} answered {resp.status} from {smoke.get('version')}")
            report["preview_smoke"] = {"status": resp.status, "version": smoke.get("version")}
            await asyncio.sleep(duration / 3)

            probes = Probes()
            probes_stop = asyncio.Event()
            probe_task = asyncio.create_task(probe_loop(url, {"X-Cutover-Probe": "1"}, 0.005, probes_stop, probes))
            slow = [asyncio.create_task(load.slow(session, url)) for _ in range(SLOW_REQUESTS)]
            await asyncio.sleep(0.3)
            say("flip blue -> green: gates, swap, post-flip analysis ...")
            async with session.post(admin + "/v1/flip", json={"to": "green", "reason": "demo", "wait": True}) as resp:
                flip = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"flip refused: {flip.get('error')}")
            flip_entry = await _history_entry(session, admin, flip["generation"], config.drain_timeout + 5)
            await asyncio.gather(*slow)
            probes_stop.set()
            await probe_task
            drain = flip_entry["drain"]
            say("  gates: " + ", ".join(f"{g['gate']} {'ok' if g['passed'] else 'FAILED'}"
                                          for g in flip_entry.get("gates", [])))
            say(f"  drain of blue: drained={drain['drained']} dropped={drain['dropped']} "
                f"forced_closed={drain['forced_closed']} in {drain['duration'] * 1000:.0f} ms")
            say(f"  analysis: {flip['analysis']['state']} ({flip['analysis']['reason']})")
            say(f"  probes through the switch window: {len(probes.seen)}, failed {len(probes.failed)}")
            report["flip"] = {"generation": flip["generation"], "gates": flip_entry.get("gates", []),
                              "drain": drain, "analysis": flip["analysis"],
                              "probes": len(probes.seen), "failed_probes": len(probes.failed)}

            say("rollback drill: flip to blue and roll back under probes ...")
            drill_report = await drill(admin, None, settle=0.5, objective_ms=objective_ms)
            for s in drill_report["switches"]:
                say(f"  {s['action']} -> {s['to']}: first probe from {s['to']} after {s['recovery_ms']} ms")
            report["drill"] = drill_report
            drains = [drain]
            for s in drill_report["switches"]:
                entry = await _history_entry(session, admin, s["generation"], config.drain_timeout + 5)
                drains.append(entry["drain"])
            await asyncio.sleep(max(0.0, started + duration - time.monotonic()))
            load.stop.set()
            await asyncio.gather(*clients)
    finally:
        progress.cancel()
    report.update({
        "requests": load.ok + load.failed,
        "failed": load.failed,
        "dropped": sum(d["dropped"] for d in drains),
        "forced_closed": sum(d["forced_closed"] for d in drains),
        "drained": sum(d["drained"] for d in drains),
        "by_version": dict(load.versions),
        "recovery_ms": [s["recovery_ms"] for s in drill_report["switches"]],
        "errors": load.errors[:5],
        "seconds": round(time.monotonic() - started, 1),
    })
    passed = (report["failed"] == 0 and report["dropped"] == 0 and report["forced_closed"] == 0
              and not findings and report["flip"]["failed_probes"] == 0
              and report["flip"]["analysis"]["state"] == "passed" and drill_report["passed"])
    report["passed"] = passed
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if keep_running:
        say(f"still running: curl {url}   cutover status --admin {admin}   (Ctrl-C to stop)")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    await running.stop(2)
    for servers in pools.values():
        for server in servers:
            await server.stop()
    tmp_dir.cleanup()
    return 0 if passed else 1


async def _progress(load: Load, running, started: float, quiet: bool) -> None:
    """_progress: one updating status line on a terminal while the demo runs."""
    if quiet or not sys.stderr.isatty():
        return
    try:
        while True:
            route = running.proxy.router.route
            print(f"\r  {time.monotonic() - started:5.1f}s  requests {load.ok + load.failed}  "
                  f"failed {load.failed}  live {route.live}  generation {route.generation}   ",
                  end="", file=sys.stderr, flush=True)
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        print(file=sys.stderr)
        raise


def _print_report(r: dict) -> None:
    print("cutover demo report")
    print(f"  requests served     {r['requests']} (v1 {r['by_version'].get('v1', 0)}, "
          f"v2 {r['by_version'].get('v2', 0)}) in {r['seconds']} s")
    print(f"  failed              {r['failed']}")
    print(f"  dropped             {r['dropped']}  (drained {r['drained']}, forced closed {r['forced_closed']})")
    print(f"  schema-check        {r['schema_check']['findings']} incompatible change(s)")
    print("  flip gates          " + ", ".join(f"{g['gate']} {'ok' if g['passed'] else 'FAILED'}"
                                              for g in r["flip"]["gates"]))
    print(f"  switch-window probes {r['flip']['probes']}, failed {r['flip']['failed_probes']}")
    print(f"  post-flip analysis  {r['flip']['analysis']['state']}")
    flip_ms, rollback_ms = r["recovery_ms"]
    print(f"  drill               rollback recovery {rollback_ms} ms (objective "
          f"{r['drill']['objective_ms']:.0f} ms), flip incl. gates {flip_ms} ms, "
          f"failed probes {r['drill']['failed_probes']}")
    print("PASS" if r["passed"] else "FAIL")
