"""accept_spread: how evenly the kernel spreads new connections over N accepting processes.

The two ways SPEC §9.1 allows workers to share a listen address, measured side by side:
  reuseport  each process accepts on its own SO_REUSEPORT socket (what cutover does)
  inherited  every process accepts on one socket inherited from the parent
Each process runs a uvloop server with a minimal HTTP/1.1 answer and counts the connections
it accepted; wrk drives keep-alive load (-c connections) and then fresh connections
(Connection: close). The report gives each process's share and the largest deviation from
an even share, in percent.

    python bench/accept_spread.py [--processes 4] [--connections 64] [--duration 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
CLOSE_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def listening(port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


def serve(sock: socket.socket, counts, slot: int) -> None:
    """serve: one process: answer every request, count accepted connections in counts[slot]."""
    import uvloop

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            with counts.get_lock():
                counts[slot] += 1

        def data_received(self, data):
            n = data.count(b"\r\n\r\n")
            close = b"onnection: close" in data or b"onnection: Close" in data
            self.transport.write((CLOSE_ANSWER if close else ANSWER) * max(n, 1))
            if close:
                self.transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Answer, sock=sock)
        await asyncio.Event().wait()
        server.close()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    uvloop.run(main())


def run_mode(mode: str, processes: int, connections: int, duration: float, wrk: str) -> dict:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    counts = multiprocessing.Array("q", processes)
    shared = listening(port, False) if mode == "inherited" else None
    procs = []
    ctx = multiprocessing.get_context("fork")
    for slot in range(processes):
        sock = shared if shared is not None else listening(port, True)
        proc = ctx.Process(target=serve, args=(sock, counts, slot), daemon=True)
        proc.start()
        procs.append(proc)
        if shared is None:
            sock.close()
    time.sleep(0.5)
    result = {}
    try:
        for phase, extra in (("keepalive", []), ("fresh", ["-H", "Connection: close"])):
            for i in range(processes):
                counts[i] = 0
            subprocess.run([wrk, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", *extra,
                            f"http://127.0.0.1:{port}/"], check=True, capture_output=True, timeout=duration + 30)
            got = list(counts)
            total = sum(got) or 1
            even = total / processes
            result[phase] = {"connections": got,
                             "shares_pct": [round(100 * c / total, 1) for c in got],
                             "max_deviation_pct": round(100 * max(abs(c - even) for c in got) / even, 1)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)
        if shared is not None:
            shared.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("accept_spread: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    report = {mode: run_mode(mode, args.processes, args.connections, args.duration, wrk)
              for mode in ("reuseport", "inherited")}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.processes} processes, wrk -c {args.connections}, {args.duration:g}s per phase")
    for mode, phases in report.items():
        for phase, r in phases.items():
            print(f"  {mode:9} {phase:9} shares {r['shares_pct']} %  max deviation from even "
                  f"{r['max_deviation_pct']}%  (connections {sum(r['connections'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
