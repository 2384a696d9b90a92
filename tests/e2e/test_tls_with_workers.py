"""`cutover serve` with `workers: 2`, TLS on listen and to a TLS upstream, as real processes:
every worker builds its own contexts from the settings' paths and serves TLS, the supervisor's
/metrics sums the workers' refused handshakes, and a worker restarted after a server
registration still reaches its TLS environment over TLS."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
from contextlib import asynccontextmanager

import aiohttp

from tests.support.backend import Backend
from tests.support.certs import client_context
from tests.support.ports import free_port
from tests.support.processes import serving_status, start_serve
from tests.support.wait import eventually


@asynccontextmanager
async def serving_tls(tmp_path, backends, tls_files):
    """serving_tls: `cutover serve` (workers: 2, tls on listen, blue a TLS upstream); yields
    (listen port, admin port, the blue backend, the session, the log path)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_files.localhost.cert, tls_files.localhost.key)
    upstream = await Backend("blue").start(ssl_context=server_ctx)
    port, admin = free_port(), free_port()
    config = tmp_path / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'admin: {{listen: "127.0.0.1:{admin}", auth: none}}\n'
        "environments:\n"
        f'  blue: {{servers: ["{upstream.address}"], tls: {{ca: "{tls_files.authority.cert}"}}}}\n'
        f'  green: {{servers: ["{backends["green"].address}"]}}\n'
        f'tls: {{cert: "{tls_files.shop.cert}", key: "{tls_files.shop.key}"}}\n'
        "workers: 2\nstate_file: state.json\ndrain_timeout: 2s\n")
    proc, log = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as session:
            await serving_status(session, admin, workers=2)
            yield port, admin, upstream, session, log
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await upstream.stop()
    assert "Traceback" not in log.read_text()


async def get_over_tls(port: int, tls_files) -> bytes:
    """get_over_tls: GET / on a new TLS connection (Connection: close); the whole answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(tls_files.authority), server_hostname="shop.test"), 5)
    writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_every_worker_serves_tls_and_refused_handshakes_add_up(tmp_path, backends, tls_files):
    async with serving_tls(tmp_path, backends, tls_files) as (port, admin, upstream, session, _):
        for _ in range(24):   # new connections, spread over the workers by the kernel (SO_REUSEPORT)
            answer = await get_over_tls(port, tls_files)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"blue\n"), answer
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            assert not (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/")
            writer.close()

        async def spread_and_counted():
            async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
                status = await resp.json()
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                metrics = await resp.text()
            found = re.search(r"^cutover_tls_handshake_failures_total (\S+)$", metrics, re.M)
            per_worker = [w["requests"] for w in status["workers"]]
            if found and float(found.group(1)) == 6 and sum(per_worker) >= 24:
                return per_worker
            return None

        per_worker = await eventually(spread_and_counted, timeout=10, what="every worker's TLS requests counted")
        assert all(count > 0 for count in per_worker), per_worker
        assert upstream.requests == 24


async def test_a_worker_restarted_after_a_registration_still_speaks_tls_upstream(tmp_path, backends, tls_files):
    async with serving_tls(tmp_path, backends, tls_files) as (port, admin, upstream, session, _):
        # A registration (the same server, another weight) rebuilds the settings new workers start from.
        async with session.put(f"http://127.0.0.1:{admin}/v1/environments/blue/servers",
                               json={"servers": [{"address": upstream.address, "weight": 2}]}) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
            victim = (await resp.json())["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)

        async def restarted():
            async with session.get(f"http://127.0.0.1:{admin}/v1/status") as resp:
                workers = (await resp.json())["workers"]
            return all(w["alive"] for w in workers) and any(w["restarts"] == 1 for w in workers)

        await eventually(restarted, timeout=15, what="the killed worker restarted")
        answers = [await get_over_tls(port, tls_files) for _ in range(20)]   # over both workers
        assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"blue\n") for a in answers), \
            [a[:40] for a in answers if not a.startswith(b"HTTP/1.1 200")]
