"""The demo: blue and green pools, the router, steady load, a flip and a rollback under it.

``cutover demo`` starts two pools of the demo application on free loopback
ports (v1 as blue, v2 as green), the router and its admin API in front of
them, and a steady synthetic load of keep-alive clients plus slow requests in
flight; a third of the way through it flips to green through the admin API and
waits for blue's counted drain, two thirds through it rolls back and measures
the time to the first v1 answer. It prints a report and exits 0 only when no
request failed and nothing was dropped.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from pathlib import Path
import tempfile

import aiohttp

from proxy.config import parse_config

from .demo_app import DemoServer

CLIENTS = 16
SLOW_REQUESTS = 8


async def _client(session: aiohttp.ClientSession, url: str, until: float, stats: dict) -> None:
    while time.monotonic() < until:
        try:
            async with session.get(url) as resp:
                body = await resp.json()
                if resp.status == 200:
                    stats["versions"][body["version"]] += 1
                    stats["ok"] += 1
                else:
                    stats["failed"] += 1
                    stats["errors"].append(f"HTTP {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            stats["failed"] += 1
            stats["errors"].append(repr(exc))


async def _wait_for_drain(session: aiohttp.ClientSession, admin: str, generation: int, timeout: float) -> dict:
    """_wait_for_drain: the history entry of the switch to ``generation`` once its drain is recorded."""
    async with asyncio.timeout(timeout):
        while True:
            async with session.get(admin + "/v1/history") as resp:
                for event in (await resp.json())["events"]:
                    if event.get("generation") == generation and "drain" in event:
                        return event
            await asyncio.sleep(0.05)


async def _first_answer_from(session: aiohttp.ClientSession, url: str, version: str, started: float) -> float:
    """_first_answer_from: ms from ``started`` until a request answers from ``version``."""
    async with asyncio.timeout(5):
        while True:
            async with session.get(url) as resp:
                if (await resp.json())["version"] == version:
                    return (time.perf_counter() - started) * 1000


async def run_demo(json_output: bool = False, keep_running: bool = False, duration: float = 6.0) -> int:
    """run_demo: the whole demo; returns the exit status (0 only when nothing failed)."""
    from .serve import start

    pools = {"blue": [DemoServer("v1", "blue", i) for i in range(2)],
             "green": [DemoServer("v2", "green", i) for i in range(2)]}
    for servers in pools.values():
        for server in servers:
            await server.start()
    tmp = tempfile.TemporaryDirectory(prefix="cutover-demo-")
    config = parse_config({
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {name: {"servers": [s.address for s in servers]} for name, servers in pools.items()},
        "live": "blue",
        "state_file": "state.json",
        "drain_timeout": "10s",
        "health_check": {"interval": "250ms"},
    }, Path(tmp.name), {})
    running = await start(config)
    url = f"http://127.0.0.1:{running.proxy.port}/"
    admin = f"http://127.0.0.1:{running.admin_port}"
    log = (lambda *a: None) if json_output else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"blue (v1): {', '.join(s.address for s in pools['blue'])}")
    log(f"green (v2): {', '.join(s.address for s in pools['green'])}")
    log(f"router: {url}  admin: {admin}  live=blue generation=1")
    stats = {"ok": 0, "failed": 0, "errors": [], "versions": collections.Counter()}
    started = time.monotonic()
    until = started + duration
    connector = aiohttp.TCPConnector(limit=CLIENTS + SLOW_REQUESTS + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        load = [asyncio.create_task(_client(session, url, until, stats)) for _ in range(CLIENTS)]
        await asyncio.sleep(duration / 3)
        slow = [asyncio.create_task(_client(session, url + "?delay=1", time.monotonic() + 0.1, stats))
                for _ in range(SLOW_REQUESTS)]
        await asyncio.sleep(0.2)
        async with session.post(admin + "/v1/flip", json={"to": "green", "reason": "demo"}) as resp:
            flip = await resp.json()
        log(f"flip: blue -> green at t={time.monotonic() - started:.1f}s, generation {flip['generation']}")
        flip_entry = await _wait_for_drain(session, admin, flip["generation"], config.drain_timeout + 5)
        drain = flip_entry["drain"]
        log(f"drain of blue: drained={drain['drained']} dropped={drain['dropped']} "
            f"forced_closed={drain['forced_closed']} in {drain['duration'] * 1000:.0f} ms")
        await asyncio.sleep(max(0.0, started + 2 * duration / 3 - time.monotonic()))
        t0 = time.perf_counter()
        async with session.post(admin + "/v1/rollback", json={"reason": "demo drill"}) as resp:
            rollback = await resp.json()
        recovery_ms = await _first_answer_from(session, url, "v1", t0)
        log(f"rollback: green -> blue, generation {rollback['generation']}, "
            f"first v1 answer {recovery_ms:.1f} ms after the call")
        rollback_entry = await _wait_for_drain(session, admin, rollback["generation"], config.drain_timeout + 5)
        await asyncio.gather(*load, *slow)
    drains = [flip_entry["drain"], rollback_entry["drain"]]
    report = {
        "requests": stats["ok"] + stats["failed"],
        "failed": stats["failed"],
        "dropped": sum(d["dropped"] for d in drains),
        "forced_closed": sum(d["forced_closed"] for d in drains),
        "by_version": dict(stats["versions"]),
        "flip": {"generation": flip["generation"], "drain": drains[0]},
        "rollback": {"generation": rollback["generation"], "drain": drains[1],
                     "recovery_ms": round(recovery_ms, 3), "recorded_recovery_ms": rollback_entry.get("recovery_ms")},
        "errors": stats["errors"][:5],
        "router": url,
        "admin": admin,
    }
    passed = report["failed"] == 0 and report["dropped"] == 0 and report["forced_closed"] == 0
    report["passed"] = passed
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print(f"requests: {report['requests']}  failed: {report['failed']}  dropped: {report['dropped']}  "
              f"v1: {report['by_version'].get('v1', 0)}  v2: {report['by_version'].get('v2', 0)}")
        for name, d in (("flip", drains[0]), ("rollback", drains[1])):
            print(f"{name} drain: drained={d['drained']} dropped={d['dropped']} "
                  f"forced_closed={d['forced_closed']} duration={d['duration'] * 1000:.0f} ms")
        print(f"rollback recovery: {recovery_ms:.1f} ms to the first v1 answer "
              f"({rollback_entry.get('recovery_ms')} ms to apply)")
        print("PASS" if passed else "FAIL")
    if keep_running:
        log(f"still running: curl {url}   cutover status --admin {admin}   (Ctrl-C to stop)")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    await running.stop(2)
    for servers in pools.values():
        for server in servers:
            await server.stop()
    tmp.cleanup()
    return 0 if passed else 1
