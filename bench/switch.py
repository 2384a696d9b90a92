"""switch — the switch phase (SPEC §11): flips under wrk load through cutover's admin API,
then the rollback recovery time as a keep-alive probe client sees it.

Called by run.py after the other phases (or alone with --switch-only). The backend answers
"hello from <its address>", so every answer names the environment that served it:
blue = 127.0.0.1, green = 127.0.0.2 (the generated cutover config, services._CUTOVER_CFG).

- flips_under_load: wrk for N s; meanwhile a flip every interval, alternating blue/green
  (`POST /v1/flip {"to": ...}`), each followed by one probe request that must be served by
  the new environment (with N workers also `fresh` requests on new connections, which the
  kernel spreads over the workers: every one must be served by the new environment, and the
  flip's `ack` must name all N workers); then wrk's errors and, from /v1/history, each
  flip's drain figures.
- rollback_recovery: a probe task sends GET / back to back on one keep-alive connection; K
  times: flip, wait for the drain, wait until the probe is on the new environment, then
  `POST /v1/rollback` and the time from just before sending it until the first probe answer
  from the previous environment; plus the `recovery_ms` cutover recorded (time to apply).

Only loopback addresses; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import load

ENV_ADDRESS = {"blue": "127.0.0.1", "green": "127.0.0.2"}
ADDRESS_ENV = {v: k for k, v in ENV_ADDRESS.items()}
DRAIN_WAIT = 40.0  # s; cutover's default drain_timeout is 30 s, a drain ends by then
CALL_TIMEOUT = 10.0  # s, one admin call or one probe request
RECOVERY_WAIT = 5.0  # s, for the first answer from the previous environment
SETTLE = 0.1  # s on the new environment before each rollback
PROBE_MAX_REQUESTS = 5_000_000
PROBE_MAX_ERRORS = 1000


class SwitchError(Exception):
    """SwitchError: the switch phase could not run (admin API not answering, a refused
    rollback, a drain that was never recorded...); the message says why."""


def other_env(env: str) -> str:
    """other_env: the environment a flip from env goes to (also for workers.py)."""
    return "green" if env == "blue" else "blue"


def _stats(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# ---------------------------------------------------------------- tiny HTTP/1.1 client

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """_read_response reads one Content-Length response; returns (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad status line {lines[0][:60]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise ConnectionError("chunked response; expected Content-Length")
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), body


def _check_loopback(host: str) -> None:
    if not host.startswith(load.LOOPBACK_PREFIX):
        raise ValueError(f"refusing to connect to a non-loopback address: {host}")


class Admin:
    """Admin: calls to cutover's admin API (auth: none), one connection per call."""

    def __init__(self, host: str, port: int) -> None:
        _check_loopback(host)
        self.host, self.port = host, port

    async def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = b"" if body is None else json.dumps(body).encode()
        request = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Connection: close\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(request)
                    status, raw = await _read_response(reader)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            raise SwitchError(f"{method} {path} on the admin API {self.host}:{self.port} "
                              f"failed: {type(e).__name__}: {e}") from e
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw[:200].decode("latin-1")}
        return status, answer

    async def wait_ready(self, timeout: float) -> dict:
        """wait_ready: GET /v1/status until it answers 200 (bounded); returns the status."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                status, answer = await self.call("GET", "/v1/status")
                if status == 200:
                    return answer
                last = f"GET /v1/status answered {status}: {answer}"
            except SwitchError as e:
                last = str(e)
            await asyncio.sleep(0.1)
        raise SwitchError(f"admin API on {self.host}:{self.port} not ready after "
                          f"{timeout:.0f}s ({last})")

    async def switch(self, path: str, body: dict) -> tuple[dict, float]:
        """switch: POST a flip or rollback; returns (answer, ms until the answer), or raises
        SwitchError when it was refused. A 202 is applied but not acknowledged by every worker
        within fleet.ack_timeout (SPEC §9.1): returned, its `ack` names the pending ones."""
        t0 = time.perf_counter()
        status, answer = await self.call("POST", path, body)
        ms = (time.perf_counter() - t0) * 1000
        if status not in (200, 202):
            raise SwitchError(f"POST {path} {json.dumps(body)} answered {status}: "
                              f"{answer.get('code')}: {answer.get('error')}")
        return answer, ms

    async def history(self) -> list[dict]:
        status, answer = await self.call("GET", "/v1/history")
        if status != 200:
            raise SwitchError(f"GET /v1/history answered {status}: {answer}")
        return answer.get("events", [])

    async def wait_drains(self, generations: list[int], timeout: float) -> dict[int, dict]:
        """wait_drains: the history entries of these switches, polled until each carries its
        drain (bounded by timeout); entries still without one are returned as they are."""
        deadline = time.monotonic() + timeout
        wanted = set(generations)
        found: dict[int, dict] = {}
        while True:
            found = {e["generation"]: e for e in await self.history()
                     if e.get("generation") in wanted and e.get("action") in ("flip", "rollback")}
            if all("drain" in found.get(g, {}) for g in wanted) or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.05)


class Probe:
    """Probe: GET / on one keep-alive connection; answers which address served it."""

    def __init__(self, host: str, port: int) -> None:
        _check_loopback(host)
        self.host, self.port = host, port
        self.request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> str:
        """get: one request; returns the backend address named in the body (e.g. 127.0.0.2).
        Raises OSError/ConnectionError/TimeoutError (the connection is then reopened next time)."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.writer.write(self.request)
                status, body = await _read_response(self.reader)
        except BaseException:
            self.close()
            raise
        if status != 200:
            raise ConnectionError(f"GET / answered {status}")
        address = body.decode("latin-1").strip().rsplit(" ", 1)[-1]
        if address not in ADDRESS_ENV:
            raise ConnectionError(f"unexpected body {body[:60]!r}")
        return address

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------- flips under load

async def fresh_requests(host: str, port: int, count: int) -> list[str]:
    """fresh_requests: `count` GET / at once, each on a new connection (which the kernel
    spreads over cutover's workers); the environment that served each (or "error: ...").
    Also called by workers.py."""
    async def one() -> str:
        probe = Probe(host, port)
        try:
            return ADDRESS_ENV[await probe.get()]
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            return f"error: {type(e).__name__}: {e}"
        finally:
            probe.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _flip_loop(admin: Admin, probe: Probe, wrk: subprocess.Popen, started: float,
                     duration: float, interval: float, fresh: int, log) -> list[dict]:
    """_flip_loop: a flip every interval while wrk runs (none in its last 0.5 s)."""
    live = (await admin.wait_ready(CALL_TIMEOUT))["live"]
    flips = []
    count = max(0, int((duration - 0.5) / interval))
    for k in range(1, count + 1):
        await asyncio.sleep(max(0.0, started + k * interval - time.monotonic()))
        if wrk.poll() is not None:
            break
        target = other_env(live)
        try:
            answer, ms = await admin.switch("/v1/flip", {"to": target, "reason": "bench"})
        except SwitchError as e:
            flips.append({"to": target, "error": str(e)})
            log(f"[switch] flip {k}/{count} to {target} refused: {e}")
            continue
        if not answer.get("changed"):
            flips.append({"to": target, "error": f"flip to {target} changed nothing: {answer}"})
            log(f"[switch] flip {k}/{count} to {target} changed nothing")
            live = answer.get("live", live)
            continue
        live = answer.get("live", target)
        try:
            next_env = ADDRESS_ENV[await probe.get()]
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            next_env = f"error: {type(e).__name__}: {e}"
        fresh_envs = await fresh_requests(probe.host, probe.port, fresh) if fresh else []
        ack = answer.get("ack") or {}
        flips.append({"from": other_env(target), "to": target, "generation": answer["generation"],
                      "changed": answer.get("changed"), "admin_ms": ms,
                      "next_request_env": next_env,
                      "fresh_on_new_env": sum(env == target for env in fresh_envs),
                      "fresh_errors": [env for env in fresh_envs if env.startswith("error")][:3],
                      "ack_complete": ack.get("complete"), "acked": len(ack.get("acked", [])),
                      "pending": ack.get("pending", [])})
    probe.close()
    return flips


def flips_under_load(admin_port: int, port: int, wrk_argv: list[str], duration: float,
                     interval: float, log, host: str = "127.0.0.1", workers: int = 1) -> dict:
    """flips_under_load runs wrk (argv pinned and bounded by the caller's duration) and flips
    meanwhile; returns the figures. With workers > 1, each flip is followed by 4 x workers
    requests on fresh connections too. Raises load.WrkError or SwitchError."""
    admin, probe = Admin(host, admin_port), Probe(host, port)
    fresh = 4 * workers if workers > 1 else 0
    wrk = load.start_wrk(wrk_argv)
    try:
        flips = asyncio.run(_flip_loop(admin, probe, wrk, time.monotonic(), duration, interval,
                                       fresh, log))
        result = load.finish_wrk(wrk, duration)
    finally:
        load.stop_wrk(wrk)
    done = [f for f in flips if "generation" in f]
    entries = asyncio.run(admin.wait_drains([f["generation"] for f in done], DRAIN_WAIT))
    totals = dict.fromkeys(("drained", "forced_closed", "dropped", "client_gone"), 0)
    recorded = interrupted = 0
    durations = []
    for f in done:
        drain = entries.get(f["generation"], {}).get("drain")
        f["drain"] = drain
        if drain is None:
            continue
        recorded += 1
        interrupted += bool(drain.get("interrupted"))
        for key in totals:
            totals[key] += drain.get(key) or 0
        if drain.get("duration") is not None:
            durations.append(drain["duration"] * 1000)
    admin_ms = [f["admin_ms"] for f in done]
    return {
        "duration": duration, "interval": interval, "workers": workers,
        "flips": len(done), "flips_refused": len(flips) - len(done),
        "next_request_on_new_env": sum(f["next_request_env"] == f["to"] for f in done),
        # every worker acked: the answer came after each one's swap (SPEC §9.1)
        "acks_complete": sum(bool(f["ack_complete"]) and f["acked"] == workers for f in done),
        "fresh_requests": fresh * len(done),
        "fresh_on_new_env": sum(f["fresh_on_new_env"] for f in done),
        "admin_ms": _stats(admin_ms),
        "requests": result.requests, "rps": result.rps,
        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "non_2xx_3xx": result.non_2xx_3xx, "socket_errors": result.socket_errors,
        "errors": result.errors,
        "drain": {**totals, "recorded": recorded, "interrupted": interrupted,
                  "duration_ms": _stats(durations)},
        "events": flips,
    }


# ---------------------------------------------------------------- rollback recovery

@dataclass
class ProbeLoop:
    """ProbeLoop: GET / back to back on one keep-alive connection; records each change of
    the serving address with the time its answer was read."""

    probe: Probe
    deadline: float
    requests: int = 0
    errors: int = 0
    first_error: str = ""
    last: str | None = None
    changes: list[tuple[float, str]] = field(default_factory=list)
    stopping: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while (not self.stopping and time.monotonic() < self.deadline
               and self.requests < PROBE_MAX_REQUESTS and self.errors < PROBE_MAX_ERRORS):
            try:
                address = await self.probe.get()
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                self.errors += 1
                self.first_error = self.first_error or f"{type(e).__name__}: {e}"
                await asyncio.sleep(0.01)
                continue
            t = time.perf_counter()
            self.requests += 1
            if address != self.last:
                self.last = address
                self.changes.append((t, address))
                self.changed.set()
        self.probe.close()

    async def first_answer_from(self, address: str, after: float, timeout: float) -> float | None:
        """first_answer_from: the time of the first answer from address read after `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, a in self.changes:
                if t > after and a == address:
                    return t
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_on(self, address: str, timeout: float) -> bool:
        """wait_on: until the latest answer came from address (bounded)."""
        deadline = time.monotonic() + timeout
        while self.last != address and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self.last == address


async def _rollbacks(admin: Admin, probe: Probe, repeats: int, log) -> dict:
    live = (await admin.wait_ready(CALL_TIMEOUT))["live"]
    loop_ = ProbeLoop(probe, time.monotonic()
                      + repeats * (2 * DRAIN_WAIT + 3 * RECOVERY_WAIT + SETTLE) + RECOVERY_WAIT)
    task = asyncio.create_task(loop_.run())
    runs = []
    try:
        if not await loop_.wait_on(ENV_ADDRESS[live], RECOVERY_WAIT):
            raise SwitchError(f"the probe was not served by {live} (live) within "
                              f"{RECOVERY_WAIT:g}s ({loop_.first_error or 'no error'})")
        for i in range(1, repeats + 1):
            away = other_env(live)
            flip, _ = await admin.switch("/v1/flip", {"to": away, "reason": "bench rollback drill"})
            drained = await admin.wait_drains([flip["generation"]], DRAIN_WAIT)
            if "drain" not in drained.get(flip["generation"], {}):
                raise SwitchError(f"the drain of flip generation {flip['generation']} was not "
                                  f"recorded within {DRAIN_WAIT:g}s")
            if not await loop_.wait_on(ENV_ADDRESS[away], RECOVERY_WAIT):
                raise SwitchError(f"after the flip to {away} the probe was not served by it "
                                  f"within {RECOVERY_WAIT:g}s")
            await asyncio.sleep(SETTLE)  # a steady stream of answers from `away` first
            t0 = time.perf_counter()
            rollback, ack_ms = await admin.switch("/v1/rollback", {"reason": "bench"})
            t_first = await loop_.first_answer_from(ENV_ADDRESS[live], t0, RECOVERY_WAIT)
            if t_first is None:
                raise SwitchError(f"after rollback {i} no probe answer from {live} within "
                                  f"{RECOVERY_WAIT:g}s ({loop_.first_error or 'no error'})")
            recovery_ms = (t_first - t0) * 1000
            entries = await admin.wait_drains([rollback["generation"]], DRAIN_WAIT)
            entry = entries.get(rollback["generation"], {})
            runs.append({"flip_generation": flip["generation"],
                         "rollback_generation": rollback["generation"],
                         "to": live, "recovery_ms": recovery_ms, "ack_ms": ack_ms,
                         "recorded_recovery_ms": entry.get("recovery_ms"),
                         "drain": entry.get("drain")})
            log(f"[switch] rollback {i}/{repeats} {away} -> {live}: first answer from {live} "
                f"after {recovery_ms:.1f} ms (answer {ack_ms:.1f} ms, recorded "
                f"{entry.get('recovery_ms')} ms)")
    finally:
        loop_.stopping = True
        try:
            await asyncio.wait_for(task, CALL_TIMEOUT + 1)
        except TimeoutError:
            pass
    recorded = [r["recorded_recovery_ms"] for r in runs if r["recorded_recovery_ms"] is not None]
    return {
        "repeats": repeats,
        "recovery_ms": _stats([r["recovery_ms"] for r in runs]),
        "ack_ms": _stats([r["ack_ms"] for r in runs]),
        "recorded_recovery_ms": _stats(recorded),
        "probe": {"requests": loop_.requests, "errors": loop_.errors,
                  "first_error": loop_.first_error},
        "runs": runs,
    }


def rollback_recovery(admin_port: int, port: int, repeats: int, log,
                      host: str = "127.0.0.1") -> dict:
    """rollback_recovery measures `repeats` rollbacks as a probe client sees them; raises
    SwitchError when one could not be measured."""
    return asyncio.run(_rollbacks(Admin(host, admin_port), Probe(host, port), repeats, log))
