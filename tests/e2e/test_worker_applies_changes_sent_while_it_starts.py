"""A worker process (python -m proxy.agent) driven over its channel by hand, as its supervisor
would: a change sent before the worker finished starting is applied before it listens, the ack
comes with the generation applied, a probe result relayed while it starts is counted, and the
channel closing makes the worker exit."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace

from admin.config import parse_config
from proxy import Channel, Route
from tests.support.paths import ROOT


@contextlib.asynccontextmanager
async def worker_process(tmp_path, backends, **config_keys) -> AsyncIterator[SimpleNamespace]:
    """worker_process: a worker on its own listening socket, its channel's end held here (its
    messages in a queue); not sent "start" yet."""
    config = parse_config({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {"blue": {"servers": [backends["blue"].address]},
                         "green": {"servers": [backends["green"].address]}},
        "state_file": str(tmp_path / "state.json"), **config_keys}, tmp_path, {})
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(64)
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.agent", "--channel", str(theirs.fileno()), "--listen", str(listen.fileno()),
        "--parent", str(os.getpid()), pass_fds=(theirs.fileno(), listen.fileno()), cwd=ROOT)
    theirs.close()
    messages: asyncio.Queue = asyncio.Queue()
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: Channel(messages.put_nowait, closed.set), sock=ours)
    try:
        yield SimpleNamespace(settings=config.settings(), port=listen.getsockname()[1], proc=proc,
                              channel=channel, messages=messages)
        channel.close()                                # the supervisor is gone: the worker exits
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        listen.close()
        if proc.returncode is None:
            proc.kill()


async def get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_change_sent_during_start_is_applied_before_the_worker_listens(tmp_path, backends):
    async with worker_process(tmp_path, backends) as worker:
        first = Route(1, "blue", environments=("blue", "green"))
        second = Route(2, "green", previous="blue", environments=("blue", "green"))
        worker.channel.send(("start", worker.settings, first, (False, None), math.inf, (), False))
        worker.channel.send(("apply", 7, second, None, None, None))     # before the worker could have started
        async with asyncio.timeout(15):
            seen = {}
            while "ready" not in seen or "ack" not in seen:
                message = await worker.messages.get()
                seen.setdefault(message[0], message)
        _, seq, generation, snapshot = seen["ack"]
        assert (seq, generation, snapshot.router.route.live) == (7, 2, "green")
        assert seen["ready"][2].router.route.generation == 2
        assert (await get(worker.port)).endswith(b"green\n")


async def test_a_probe_result_sent_while_a_worker_starts_is_counted_once_it_checks(tmp_path, backends):
    """A result the supervisor relays right after "start" comes before the worker's health checks
    exist: it is counted once they do, not lost, and on from the streak the checking worker had
    counted (the worker would otherwise route around a server the others take as healthy)."""
    async with worker_process(tmp_path, backends, health_check={"interval": "1h", "healthy_after": 2}) as worker:
        route = Route(1, "blue", environments=("blue", "green"))
        blue = backends["blue"].address
        # Started as the checker last counted blue's one server: down, one good result in a row;
        # then its next result: good, the second in a row, so up.
        worker.channel.send(("start", worker.settings, route, (False, None), math.inf,
                             (("blue", blue, False, 1, 0),), False))
        worker.channel.send(("health", "blue", blue, True, "HTTP 200"))
        async with asyncio.timeout(15):
            while (await worker.messages.get())[0] != "ready":
                pass
        answer = await get(worker.port)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"blue\n"), answer
