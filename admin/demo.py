"""The demo: blue and green pools, the router, steady load, and one switch under it.

``cutover demo`` starts two pools of the demo application on free loopback
ports (v1 as blue, v2 as green), the router in front of them, and a steady
synthetic load of keep-alive clients plus a few slow requests in flight; half
way through it swaps the live route to green, waits for blue's drain, and
prints a report. It exits 0 only when no request failed and nothing was
dropped.
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
from proxy.route import Route
from proxy.server import Proxy

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


async def run_demo(json_output: bool = False, keep_running: bool = False, duration: float = 6.0) -> int:
    """run_demo: the whole demo; returns the exit status (0 only when nothing failed)."""
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
    proxy = Proxy(config)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}/"
    log = (lambda *a: None) if json_output else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"blue (v1): {', '.join(s.address for s in pools['blue'])}")
    log(f"green (v2): {', '.join(s.address for s in pools['green'])}")
    log(f"router: {url}  live=blue generation=1")
    stats = {"ok": 0, "failed": 0, "errors": [], "versions": collections.Counter()}
    started = time.monotonic()
    until = started + duration
    connector = aiohttp.TCPConnector(limit=CLIENTS + SLOW_REQUESTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        load = [asyncio.create_task(_client(session, url, until, stats)) for _ in range(CLIENTS)]
        await asyncio.sleep(duration / 2)
        slow = [asyncio.create_task(_client(session, url + "?delay=1", time.monotonic() + 0.1, stats))
                for _ in range(SLOW_REQUESTS)]
        await asyncio.sleep(0.2)
        router = proxy.router
        old = router.route
        t0 = time.perf_counter()
        drains = router.swap(Route(old.generation + 1, "green", previous="blue", environments=old.environments))
        swap_ms = (time.perf_counter() - t0) * 1000
        log(f"flip: blue -> green at t={time.monotonic() - started:.1f}s, generation {old.generation + 1}")
        drain = await asyncio.wait_for(drains[0].done, config.drain_timeout + 5)
        log(f"drain of blue: drained={drain['drained']} dropped={drain['dropped']} "
            f"forced_closed={drain['forced_closed']} in {drain['duration'] * 1000:.0f} ms")
        await asyncio.gather(*load, *slow)
    report = {
        "requests": stats["ok"] + stats["failed"],
        "failed": stats["failed"],
        "by_version": dict(stats["versions"]),
        "swap_ms": round(swap_ms, 3),
        "drain": drain,
        "errors": stats["errors"][:5],
        "router": url,
    }
    passed = report["failed"] == 0 and drain["dropped"] == 0 and drain["forced_closed"] == 0
    report["passed"] = passed
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print(f"requests: {report['requests']}  failed: {report['failed']}  "
              f"v1: {report['by_version'].get('v1', 0)}  v2: {report['by_version'].get('v2', 0)}")
        print(f"drain: drained={drain['drained']} dropped={drain['dropped']} "
              f"forced_closed={drain['forced_closed']} duration={drain['duration'] * 1000:.0f} ms")
        print("PASS" if passed else "FAIL")
    if keep_running:
        log(f"still running: curl {url}  (Ctrl-C to stop)")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    await proxy.shutdown(2)
    for servers in pools.values():
        for server in servers:
            await server.stop()
    tmp.cleanup()
    return 0 if passed else 1
