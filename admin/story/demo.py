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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from ..config import Config, parse_config

from ..client import AdminClient, AdminError
from .demo_app import MIGRATION_V2, DemoServer, migrate_v2, prepare_database
from .drill import DrillError, Probes, drill, listener_url, probe_loop
from .schema_check import check_sql

CLIENTS = 12
SLOW_REQUESTS = 8
ADMIN_TIMEOUT = 60.0    # seconds for one admin call (the flip waits for its gates and analysis)


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


class DemoError(Exception):
    """DemoError: a step of the demo could not be done; run_demo prints it as one line and exits 1."""


async def _step(what: str, call: Awaitable[dict]) -> dict:
    """_step: the answer of one AdminClient call, or DemoError naming the step and the API's code."""
    try:
        return await call
    except AdminError as exc:
        raise DemoError(f"{what}: {exc.message} ({exc.code})") from None


async def _history_entry(client: AdminClient, generation: int, timeout: float) -> dict:
    """_history_entry: the switch to ``generation`` once its drain is recorded."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                history = await _step("history", client.history())
                for event in history.get("events", []):
                    if event.get("generation") == generation and "drain" in event:
                        return event
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise DemoError(f"the history recorded no drain for generation {generation} "
                        f"within {timeout:g}s") from None


def _config(tmp: Path, pools: dict) -> Config:
    """_config: the demo router's config: loopback listeners on free ports, every gate, a short analysis."""
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
    """run_demo: ``cutover demo``, the whole story; returns the exit status (0 only when nothing failed).

    A step that cannot be done (a refused call, a listener that cannot bind) is one line on
    stderr, exit 1; whatever had started is stopped either way.
    """
    from ..serve import StartError, build_warning, start

    say = (lambda *a: None) if json_output else (lambda *a: print(*a, file=sys.stderr, flush=True))
    warning = build_warning()
    if warning:
        print(f"cutover: warning: {warning}", file=sys.stderr, flush=True)
    tmp_dir = tempfile.TemporaryDirectory(prefix="cutover-demo-")
    pools: dict[str, list[DemoServer]] = {}
    running = None
    try:
        tmp = Path(tmp_dir.name)
        db = str(tmp / "orders.sqlite")
        prepare_database(db)
        findings = [f for f in check_sql(MIGRATION_V2) if not f.suppressed]
        say(f"schema-check of v2's migration: {len(findings)} backward-incompatible change(s)")
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
        async with AdminClient(f"http://127.0.0.1:{running.admin_port}", timeout=ADMIN_TIMEOUT) as client:
            report = await _story(client, pools, len(findings), config.drain_timeout, duration,
                                  objective_ms, say, json_output)
            if json_output:
                print(json.dumps(report, indent=2))
            else:
                _print_report(report)
            if keep_running:
                say(f"still running: curl {report['router']}   cutover status --admin {client.url}   "
                    "(Ctrl-C to stop)")
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    pass
        return 0 if report["passed"] else 1
    except (DemoError, DrillError, StartError) as exc:
        print(f"cutover: demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if running is not None:
            await running.stop(2)
        for servers in pools.values():
            for server in servers:
                await server.stop()
        tmp_dir.cleanup()


async def _story(client: AdminClient, pools: dict[str, list[DemoServer]], findings: int, drain_timeout: float,
                 duration: float, objective_ms: float, say: Callable[..., None], quiet: bool) -> dict:
    """_story: run_demo's steps against the started router; returns the report.

    The router's listeners come from its status (``listen``, ``preview_listen``); every admin
    call goes through ``client``; load, probes and the preview smoke test are plain HTTP to
    the router's listeners.
    """
    status = await _step("status", client.status())
    if not status.get("listen") or not status.get("preview_listen"):
        raise DemoError("the router's status does not name its listen and preview_listen addresses")
    url = listener_url(status["listen"])
    preview = listener_url(status["preview_listen"])
    say(f"blue (v1): {', '.join(s.address for s in pools['blue'])}")
    say(f"green (v2): {', '.join(s.address for s in pools['green'])}")
    say(f"router: {url}  preview: {preview}  admin: {client.url}")
    load = Load()
    report: dict = {"router": url, "preview": preview, "admin": client.url,
                    "schema_check": {"findings": findings}}
    started = time.monotonic()
    progress = asyncio.create_task(_progress(load, client, started, quiet))
    connector = aiohttp.TCPConnector(limit=CLIENTS + SLOW_REQUESTS + 4)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            clients = [asyncio.create_task(load.client(session, url, i)) for i in range(CLIENTS)]
            try:
                for source, target in (("v1", "v2"), ("v2", "v1")):
                    await _step(f"attest {source} -> {target}", client.attest(
                        source, target, by="cutover demo schema-check", idempotency_key=str(uuid.uuid4())))
                async with session.get(preview) as resp:
                    smoke = await resp.json()
                say(f"preview smoke test: {preview} answered {resp.status} from {smoke.get('version')}")
                report["preview_smoke"] = {"status": resp.status, "version": smoke.get("version")}
                await asyncio.sleep(duration / 3)

                probes = Probes()
                probes_stop = asyncio.Event()
                probe_task = asyncio.create_task(probe_loop(url, {"X-Cutover-Probe": "1"}, 0.005, probes_stop,
                                                            probes))
                slow = [asyncio.create_task(load.slow(session, url)) for _ in range(SLOW_REQUESTS)]
                try:
                    await asyncio.sleep(0.3)
                    say("flip blue -> green: gates, swap, post-flip analysis ...")
                    flip = await _step("flip blue -> green", client.flip(
                        "green", reason="demo", wait=True, idempotency_key=str(uuid.uuid4())))
                    flip_entry = await _history_entry(client, flip["generation"], drain_timeout + 5)
                    await asyncio.gather(*slow)
                finally:
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
                drill_report = await drill(client.url, None, settle=0.5, objective_ms=objective_ms)
                for s in drill_report["switches"]:
                    say(f"  {s['action']} -> {s['to']}: first probe from {s['to']} after {s['recovery_ms']} ms")
                report["drill"] = drill_report
                drains = [drain]
                for s in drill_report["switches"]:
                    entry = await _history_entry(client, s["generation"], drain_timeout + 5)
                    drains.append(entry["drain"])
                await asyncio.sleep(max(0.0, started + duration - time.monotonic()))
            finally:
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
    report["passed"] = (report["failed"] == 0 and report["dropped"] == 0 and report["forced_closed"] == 0
                        and not findings and report["flip"]["failed_probes"] == 0
                        and report["flip"]["analysis"]["state"] == "passed" and drill_report["passed"])
    return report


async def _progress(load: Load, client: AdminClient, started: float, quiet: bool) -> None:
    """_progress: one updating status line on a terminal while the demo runs (the route from the status)."""
    if quiet or not sys.stderr.isatty():
        return
    live, generation = "?", "?"
    try:
        while True:
            try:
                status = await client.status()
                live, generation = status.get("live", "?"), status.get("generation", "?")
            except AdminError:
                pass                    # the line keeps the last route it saw
            print(f"\r  {time.monotonic() - started:5.1f}s  requests {load.ok + load.failed}  "
                  f"failed {load.failed}  live {live}  generation {generation}   ",
                  end="", file=sys.stderr, flush=True)
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        print(file=sys.stderr)
        raise


def _print_report(r: dict) -> None:
    """_print_report: run_demo's report as text on stdout (--json prints the dict instead)."""
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
