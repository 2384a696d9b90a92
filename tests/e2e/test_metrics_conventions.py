"""/metrics follows Prometheus conventions: promtool accepts it, ratios are 0..1, unrouted
requests are their own family, and build, process, gate, switch and analysis facts are there,
as are TLS connections closed at the handshakes' bound."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess

import aiohttp
import pytest

import proxy
from proxy.snapshot import UPSTREAM_ERROR_KINDS
from tests.support.adminapi import Admin, post, scrape
from tests.support.ports import Refused
from tests.support.rawhttp import raw_exchange
from tests.support.wait import eventually


async def metrics(api: Admin) -> str:
    status, text, _ = await api.get("/metrics")
    assert status == 200
    return text


async def test_promtool_accepts_the_exposition(make_stack, session):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    stack = await make_stack(analysis={"window": "200ms", "interval": "50ms"})
    api = Admin(session, stack.admin_port)
    await api.ok("/v1/canary", {"weight": 10})
    await api.ok("/v1/promote")
    text = await metrics(api)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


async def test_weights_are_ratios_from_0_to_1(make_stack, session):
    stack = await make_stack()
    api = Admin(session, stack.admin_port)
    await api.ok("/v1/canary", {"weight": 25})
    samples = scrape(await metrics(api))
    assert samples[("cutover_weight_ratio", frozenset({("environment", "blue")}))] == 0.75
    assert samples[("cutover_weight_ratio", frozenset({("environment", "green")}))] == 0.25
    assert not any(name.startswith("cutover_weight_percent") for name, _ in samples)


async def test_requests_refused_before_routing_have_their_own_family(make_stack, session):
    stack = await make_stack()
    api = Admin(session, stack.admin_port)
    answer = await raw_exchange(stack.proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    samples = scrape(await metrics(api))
    assert samples[("cutover_unrouted_requests_total", frozenset({("code_class", "4xx")}))] == 1
    environments = {dict(labels).get("environment") for name, labels in samples if name == "cutover_requests_total"}
    assert environments == {"blue", "green"}      # no environment="" series


async def test_build_and_process_metrics_are_exposed(make_stack, session):
    stack = await make_stack()
    samples = scrape(await metrics(Admin(session, stack.admin_port)))
    (labels,) = [dict(labels) for name, labels in samples if name == "cutover_build_info"]
    assert labels["data_plane"] == proxy.build() and labels["version"]
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "python_info", "python_gc_collections_total"):
        assert any(sample == name for sample, _ in samples), name


async def test_gate_results_and_analysis_outcomes_are_counted(make_stack, session):
    stack = await make_stack(analysis={"window": "200ms", "interval": "50ms"})
    api = Admin(session, stack.admin_port)
    await api.ok("/v1/flip")
    passed = ("cutover_gate_checks_total", frozenset({("gate", "health"), ("result", "passed")}))
    running = ("cutover_analysis_running", frozenset())
    assert scrape(await metrics(api))[passed] == 1

    async def analysis_passed():
        samples = scrape(await metrics(api))
        return samples[running] == 0 and samples[
            ("cutover_analyses_total", frozenset({("outcome", "passed")}))] == 1
    assert await eventually(analysis_passed, timeout=5)


async def test_switch_metrics_count_each_action(make_stack):
    running = await make_stack()
    async with aiohttp.ClientSession() as session:
        await post(session, running, "/v1/canary", {"weight": 20})
        await post(session, running, "/v1/abort")
        await post(session, running, "/v1/canary", {"weight": 30})
        await post(session, running, "/v1/promote")
        async with session.get(f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
            text = await resp.text()
    for action, count in (("canary", 2), ("abort", 1), ("promote", 1), ("flip", 0)):
        assert f'cutover_switches_total{{action="{action}"}} {count}.0' in text, action


async def test_requests_bytes_and_upstream_errors_are_counted_per_server(make_stack, backends, session):
    refusing = Refused()
    # health checks every 30 s: the first one alone does not mark the refusing server down
    stack = await make_stack({"blue": backends["blue"], "green": refusing}, preview_listen="127.0.0.1:0",
                             health_check={"interval": "30s", "timeout": "500ms"})
    api = Admin(session, stack.admin_port)
    for _ in range(2):
        async with session.get(f"http://127.0.0.1:{stack.proxy.port}/") as resp:
            assert resp.status == 200 and await resp.text() == "blue\n"
    async with session.get(f"http://127.0.0.1:{stack.proxy.preview_port}/") as resp:
        assert resp.status == 502                # green, through the preview listener: connection refused
    samples = scrape(await metrics(api))
    blue = backends["blue"].address
    assert samples[("cutover_server_requests_total", frozenset({("environment", "blue"), ("server", blue)}))] == 2
    assert samples[("cutover_received_bytes_total", frozenset({("environment", "blue")}))] > 0
    assert samples[("cutover_sent_bytes_total", frozenset({("environment", "blue")}))] > 0
    errors = {(dict(labels)["server"], dict(labels)["kind"]): value for (name, labels), value in samples.items()
              if name == "cutover_upstream_errors_total"}
    assert set(errors) == {(server, kind) for server in (blue, refusing.address) for kind in UPSTREAM_ERROR_KINDS}
    assert errors[(refusing.address, "connect")] == 1
    assert sum(errors.values()) == 1


async def test_tls_connections_closed_at_the_handshakes_bound_are_counted(make_stack, session, tls_files):
    stack = await make_stack(tls=tls_files.shop.config(), limits={"max_connections": 1})
    api = Admin(session, stack.admin_port)
    silent = socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=5)   # a handshake, no hello
    try:
        await eventually(lambda: stack.proxy._server.handshaking)
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""     # closed as it was accepted
        writer.close()
        samples = scrape(await metrics(api))
        assert samples[("cutover_tls_connections_over_limit_total", frozenset())] == 1
    finally:
        silent.close()
