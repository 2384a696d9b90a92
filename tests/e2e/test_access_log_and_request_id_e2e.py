"""Access log and request ids with real sockets (SPEC §12), in one process: a flip window's
lines show both environments with their generations, each line tied to the answer its client
saw by the request id; the id a client sends is passed to the backend and back, a malformed
one is replaced, a missing one generated."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp

from tests.support.adminapi import post
from tests.support.logfile import logged_lines
from tests.support.rawhttp import connect, read_response
from tests.support.wait import eventually

GENERATED = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")


async def test_a_flip_window_logs_both_environments_with_their_generations(make_stack, session, tmp_path):
    path = tmp_path / "access.log"
    running = await make_stack(access_log={"path": str(path)})
    url = f"http://127.0.0.1:{running.port}/"
    answers: list[tuple[str, str, str]] = []      # (id sent, id answered, body)
    stop = asyncio.Event()

    async def client(n: int) -> None:
        async with aiohttp.ClientSession() as own:       # one keep-alive connection each
            for i in range(500):
                if stop.is_set():
                    return
                sent = f"c{n}.{i}"
                async with own.get(url, headers={"X-Request-Id": sent}) as resp:
                    assert resp.status == 200
                    answers.append((sent, resp.headers["X-Request-Id"], (await resp.text()).strip()))

    tasks = [asyncio.create_task(client(n)) for n in range(4)]
    try:
        await eventually(lambda: len(answers) >= 40, timeout=10)
        status, body = await post(session, running, "/v1/flip", {"to": "green"})
        assert status == 200, body
        before = len(answers)
        await eventually(lambda: len(answers) >= before + 40, timeout=10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await eventually(lambda: len(logged_lines(path)) == len(answers), timeout=5, what="every request logged")
    logged = {line["request_id"]: line for line in logged_lines(path)}
    for sent, answered, env in answers:
        assert answered == sent
        line = logged[sent]
        assert (line["env"], line["generation"], line["outcome"], line["status"]) == \
            (env, 1 if env == "blue" else 2, "ok", 200)
        assert line["server"] == running.proxy.router.environments[env].servers[0].address
    assert {line["env"] for line in logged.values()} == {"blue", "green"}


async def headers_seen(port: int, request: bytes) -> tuple[list[str], str | None, list[bytes]]:
    """headers_seen: (X-Request-Id values the backend got, the one of its answer, the answer's)."""
    reader, writer = await connect(port)
    try:
        writer.write(request)
        response = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
    seen = [v for k, v in json.loads(response.body)["headers"] if k.lower() == "x-request-id"]
    answered = response.get_all(b"x-request-id")
    return seen, answered[0].decode() if answered else None, answered


async def test_the_backend_and_the_client_see_the_same_id_passed_replaced_or_generated(make_proxy, tmp_path):
    path = tmp_path / "access.log"
    proxy = await make_proxy(access_log={"path": str(path)})
    cases = {
        "passed": b"X-Request-Id: deploy-7.step:2\r\n",
        "too long": b"X-Request-Id: " + b"x" * 129 + b"\r\n",
        "bad chars": b"X-Request-Id: a/b c\r\n",
        "two": b"X-Request-Id: one\r\nX-Request-Id: two\r\n",
        "none": b"",
    }
    ids = {}
    for name, field in cases.items():
        seen, answered, every = await headers_seen(
            proxy.port, b"GET /headers HTTP/1.1\r\nHost: t\r\n" + field + b"Connection: close\r\n\r\n")
        assert len(seen) == 1 and len(every) == 1 and seen[0] == answered, name
        ids[name] = answered
    assert ids["passed"] == "deploy-7.step:2"
    for name in ("too long", "bad chars", "two", "none"):
        assert GENERATED.fullmatch(ids[name]), (name, ids[name])
    assert len(set(ids.values())) == len(ids)
    await eventually(lambda: len(logged_lines(path)) == len(cases), timeout=5)
    assert [line["request_id"] for line in logged_lines(path)] == list(ids.values())
