"""load — drive load at a target: wrk runs (and parsing wrk's report), and the idle
keep-alive connections of the memory measurement.

Called by run.py. Only loopback addresses are ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass, field

LOOPBACK_PREFIX = "127."

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


class WrkError(Exception):
    """WrkError: wrk failed, timed out, or printed a report that could not be parsed."""


@dataclass
class WrkResult:
    """WrkResult is one parsed wrk report. Latencies are in milliseconds."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    # wrk prints "Socket errors:" only when one is non-zero
    socket_errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("connect", "read", "write", "timeout"), 0))
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """parse_wrk reads req/s, total requests, p50/p99 and error counts from wrk --latency."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    p50 = re.search(rf"^\s*50(?:\.0+)?%\s+{_DURATION}\s*$", text, re.M)
    p99 = re.search(rf"^\s*99(?:\.0+)?%\s+{_DURATION}\s*$", text, re.M)
    if not (rps and total and p50 and p99):
        raise WrkError(f"cannot parse wrk output:\n{text.strip()}")
    result = WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_to_ms(*p50.groups()),
        p99_ms=_to_ms(*p99.groups()),
    )
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, sock.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        result.non_2xx_3xx = int(non2xx.group(1))
    return result


def wrk_argv(wrk: str, url: str, connections: int, duration: float, latency: bool,
             fresh: bool = False) -> list[str]:
    """wrk_argv builds one wrk command line: one thread, fixed connections and duration.

    fresh: every request sends `Connection: close`, so each one is a new connection (the
    spread of fresh connections over cutover's workers).
    """
    if not url.startswith(f"http://{LOOPBACK_PREFIX}"):
        raise ValueError(f"refusing to load a non-loopback address: {url}")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s"]
    if latency:
        argv.append("--latency")
    if fresh:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def run_wrk(argv: list[str], duration: float) -> str:
    """run_wrk runs wrk (argv already pinned by the caller) and returns its stdout.

    Bounded: killed after duration + 30 s. subprocess.run kills wrk on Ctrl-C as well.
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired as e:
        raise WrkError(f"wrk did not finish within {duration + 30:.0f}s") from e
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def start_wrk(argv: list[str]) -> subprocess.Popen:
    """start_wrk starts wrk (argv already pinned and bounded by the caller) in the background,
    for a phase that does something else meanwhile; finish_wrk then stop_wrk end it."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(wrk: subprocess.Popen, duration: float) -> WrkResult:
    """finish_wrk waits for a started wrk (bounded: duration + 30 s) and parses its report;
    WrkError when it did not finish, failed, or printed no report."""
    try:
        out, err = wrk.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired as e:
        raise WrkError(f"wrk did not finish within {duration + 30:.0f}s") from e
    if wrk.returncode != 0:
        raise WrkError(f"wrk exited with {wrk.returncode}: {err.strip() or out}")
    return parse_wrk(out)


def stop_wrk(wrk: subprocess.Popen) -> None:
    """stop_wrk kills a started wrk that is still running (a phase that failed meanwhile)."""
    if wrk.poll() is None:
        wrk.kill()
        wrk.wait()


# ---------------------------------------------------------------- idle connections

@dataclass
class IdleResult:
    """IdleResult: how many idle keep-alive connections were opened and the RSS while held."""

    wanted: int
    opened: int
    still_open: int
    rss_bytes: int
    first_error: str = ""


async def _read_response(reader: asyncio.StreamReader) -> int:
    """_read_response reads one Content-Length response entirely and returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise ValueError("chunked response; the benchmark backend sends Content-Length")
    await reader.readexactly(length)
    return status


async def _open_one(host: str, port: int, timeout: float):
    """_open_one opens a connection, does one keep-alive GET / and returns (reader, writer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Connection: keep-alive\r\n\r\n".encode())
        status = await asyncio.wait_for(_read_response(reader), timeout)
        if status != 200:
            raise ConnectionError(f"GET / answered {status}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _hold_idle(host, port, count, hold, rss_of, parallel, timeout) -> IdleResult:
    sem = asyncio.Semaphore(parallel)

    async def one():
        async with sem:
            return await _open_one(host, port, timeout)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    conns = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    try:
        await asyncio.sleep(hold)
        rss = rss_of()
        still_open = sum(1 for reader, _ in conns if not reader.at_eof())
    finally:
        for _, writer in conns:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    first = f"{type(errors[0]).__name__}: {errors[0]}" if errors else ""
    return IdleResult(count, len(conns), still_open, rss, first)


def hold_idle_connections(host: str, port: int, count: int, hold: float, rss_of,
                          parallel: int = 100, timeout: float = 5.0) -> IdleResult:
    """hold_idle_connections opens count keep-alive connections (one GET / each), holds them
    idle for hold seconds, calls rss_of() while they are held, then closes them all."""
    if not host.startswith(LOOPBACK_PREFIX):
        raise ValueError(f"refusing to connect to a non-loopback address: {host}")
    return asyncio.run(_hold_idle(host, port, count, hold, rss_of, parallel, timeout))
