"""`log: {format: json, level}` (SPEC §12) under a real `cutover serve` with workers: every line
it and its workers write is one JSON object; the start, a flip, its drain outcome, a health
transition (written by the worker that checks) and the stop each have their line, with the
generation and what changed as fields; level warning leaves the info lines out."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from tests.support.backend import set_failing
from tests.support.ports import free_port
from tests.support.processes import serve_config, serving_status, start_serve
from tests.support.wait import eventually


def lines_of(path) -> list[dict]:
    text = path.read_text()
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(doc, dict) and {"time", "level", "logger", "message", "pid"} <= doc.keys()
               for doc in docs), text
    return docs


async def test_json_logs_name_start_change_drain_and_stop_with_their_generation(tmp_path, backends):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, workers=2, log='{format: json, level: info}',
                          drain_timeout="2s")
    proc, log_path = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await serving_status(session, admin, workers=2)
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
            async with session.post(f"http://127.0.0.1:{admin}/v1/flip", json={"reason": "release 42"}) as resp:
                assert resp.status == 200
                generation = (await resp.json())["generation"]

            def drained():
                return any(d.get("action") == "drain" for d in lines_of(log_path))

            await eventually(drained, timeout=10, what="the drain outcome line")
            await set_failing(backends["blue"], True)

            def unhealthy():
                return any(d.get("action") == "health" for d in lines_of(log_path))

            await eventually(unhealthy, timeout=15, what="blue's health transition line")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    docs = lines_of(log_path)
    by = {}
    for doc in docs:
        by.setdefault(doc.get("action"), []).append(doc)
    [start] = by["start"]
    assert start["generation"] == 1 and start["env"] == "blue" and start["pid"] == proc.pid
    [flip] = by["flip"]
    assert (flip["generation"], flip["from_env"], flip["to_env"], flip["changed"]) == (generation, "blue", "green", True)
    assert "release 42" in flip["message"]
    [drain] = by["drain"]
    assert (drain["generation"], drain["env"], drain["dropped"]) == (generation, "blue", 0)
    [stop] = by["stop"]
    assert stop["generation"] == generation
    [health] = by["health"]
    assert (health["generation"], health["env"], health["server"]) == (generation, "blue", backends["blue"].address)
    assert health["level"] == "warning" and health["worker"] != proc.pid   # the checking worker's own line


async def test_level_warning_leaves_the_info_lines_out(tmp_path, backends):
    port, admin = free_port(), free_port()
    config = serve_config(tmp_path, backends, port, admin, log="{format: json, level: warning}")
    proc, log_path = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await serving_status(session, admin)
            async with session.post(f"http://127.0.0.1:{admin}/v1/flip", json={"to": "nowhere"}) as resp:
                assert resp.status == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    docs = lines_of(log_path)
    assert docs and all(doc["level"] in ("warning", "error") for doc in docs), docs
    assert any(doc.get("code") == "unknown_environment" for doc in docs), docs
