"""The CLI's side of retry safety: one Idempotency-Key per invocation, reused on its one retry.

A small loopback HTTP server records each request's method, path and Idempotency-Key, and
drops the first connections (closed or reset after the request came, before any answer), so
the client's retry and its header can be seen without the admin API's own part.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from admin.client import AdminClient, AdminError
from tests.support.cli import TOKEN, assert_failed, cutover, url_of

ANSWER = {"live": "blue", "previous": "green", "generation": 3, "changed": True,
          "change": {"action": "rollback", "from": "green", "to": "blue", "generation": 3}}


class Recorder:
    """Recorder: an HTTP/1.1 server on 127.0.0.1 that records requests and drops the first ``drop``."""

    def __init__(self, drop: int = 0, how: str = "close", answer: dict | None = None,
                 status: int = 200, silent: bool = False) -> None:
        self.drop = drop
        self.how = how
        self.answer = answer or ANSWER
        self.status = status
        self.silent = silent
        self.requests: list[tuple[str, str, str | None]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> "Recorder":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        method, path, _ = request_line.split(" ", 2)
        self.requests.append((method, path, headers.get("idempotency-key")))
        if self.silent:
            await reader.read()          # never answers; returns when the client hangs up
            writer.close()
            return
        if len(self.requests) <= self.drop:
            if self.how == "reset":
                writer.transport.abort()
            else:
                writer.close()
            return
        body = json.dumps(self.answer).encode()
        writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_mutation_is_retried_once_with_the_same_key_when_no_answer_came(how):
    async with Recorder(drop=1, how=how) as server:
        result = await cutover("rollback", "--admin", server.url)
    assert (result.rc, result.err) == (0, ""), result
    assert result.out == "rolled back green -> blue (generation 3)\n"
    (m1, p1, k1), (m2, p2, k2) = server.requests
    assert (m1, p1) == (m2, p2) == ("POST", "/v1/rollback")
    assert k1 == k2 and uuid.UUID(k1).version == 4


async def test_each_invocation_sends_a_fresh_key():
    async with Recorder() as server:
        for _ in range(2):
            assert (await cutover("lock", "--admin", server.url)).rc == 0
    keys = [key for _, _, key in server.requests]
    assert len(keys) == 2 and None not in keys and keys[0] != keys[1]


@pytest.mark.parametrize("where", ["before", "after"])
async def test_idempotency_key_option_sends_the_callers_key(where):
    option = ["--idempotency-key", "ci-run-42-rollback"]
    async with Recorder(drop=1) as server:
        before, after = (option, []) if where == "before" else ([], option)
        result = await cutover(*before, "rollback", "--admin", server.url, *after)
    assert result.rc == 0, result
    assert [key for _, _, key in server.requests] == ["ci-run-42-rollback"] * 2


async def test_reads_send_no_key_and_are_retried_once_too():
    async with Recorder(drop=1, answer={"events": []}) as server:
        result = await cutover("history", "--admin", server.url)
    assert (result.rc, result.out) == (0, "no events\n")
    assert server.requests == [("GET", "/v1/history", None)] * 2


@pytest.mark.parametrize("command", ["flip", "history"])
async def test_only_one_retry_then_exit_1(command):
    async with Recorder(drop=5) as server:
        result = await cutover(command, "--admin", server.url)
    assert_failed(result, 1, "connection_failed")
    assert len(server.requests) == 2


async def test_a_timeout_is_not_retried():
    async with Recorder(silent=True) as server:
        result = await cutover("flip", "--admin", server.url, "--timeout", "0.5")
    assert_failed(result, 1, "timeout")
    assert len(server.requests) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9", 'a"b', "a\\b"])
async def test_a_malformed_key_is_a_usage_error(key):
    result = await cutover("rollback", "--idempotency-key", key, "--admin", "http://127.0.0.1:1")
    assert result.rc == 1 and result.err.count("\n") == 1
    assert result.err.startswith("cutover: rollback: argument --idempotency-key: ")


async def test_client_sends_the_key_it_is_given_and_retries_only_keyed_mutations():
    async with Recorder(drop=1) as server:
        async with AdminClient(server.url, timeout=5) as client:
            answer = await client.flip("green", idempotency_key="k-1")
    assert answer == ANSWER
    assert server.requests == [("POST", "/v1/flip", "k-1")] * 2

    async with Recorder(drop=1) as server:
        async with AdminClient(server.url, timeout=5) as client:
            with pytest.raises(AdminError) as failed:
                await client.flip("green")          # no key: a retry might apply it twice
    assert failed.value.code == "connection_failed"
    assert server.requests == [("POST", "/v1/flip", None)]


async def test_an_answer_not_confirmed_everywhere_exits_1_naming_the_pending():
    answer = {**ANSWER, "ack": {"complete": False, "acked": ["r1"], "pending": ["r2", "r3"]}}
    async with Recorder(answer=answer, status=202) as server:
        result = await cutover("rollback", "--admin", server.url)
    line = assert_failed(result, 1, "not_confirmed")
    assert result.out == "rolled back green -> blue (generation 3)\n"
    assert "r2, r3" in line and "committed" in line


async def test_a_ci_retry_with_the_same_key_rolls_back_once(make_stack):
    """End to end with the admin API's side: the second `rollback` with K does not undo the first."""
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    await running.controller.flip()                                      # generation 2, green live
    args = ("rollback", "--idempotency-key", "ci-1234-rollback", "--admin", url_of(running), "--token", TOKEN)
    first, again = await cutover(*args), await cutover(*args)
    assert first.rc == again.rc == 0, (first, again)
    assert first.out == again.out == "rolled back green -> blue (generation 3)\n"
    assert (running.controller.state.live, running.controller.state.generation) == ("blue", 3)
    assert [e["action"] for e in running.controller.history()["events"]] == ["flip", "rollback"]
