"""A worker process (python -m proxy.agent) driven over its channel by hand, as its supervisor
would: a change sent before the worker finished starting is applied before it listens, the ack
comes with the generation applied, and the channel closing makes the worker exit."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys

from admin.config import parse_config
from proxy import Channel, Route
from tests.support.paths import ROOT



async def test_a_change_sent_during_start_is_applied_before_the_worker_listens(tmp_path, backends):
    config = parse_config({
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {"blue": {"servers": [backends["blue"].address]},
                         "green": {"servers": [backends["green"].address]}},
        "state_file": str(tmp_path / "state.json")}, tmp_path, {})
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(64)
    port = listen.getsockname()[1]
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
        first = Route(1, "blue", environments=("blue", "green"))
        second = Route(2, "green", previous="blue", environments=("blue", "green"))
        channel.send(("start", config.settings(), first, (False, None), math.inf, (), False))
        channel.send(("apply", 7, second, None, None, None))     # before the worker could have started
        async with asyncio.timeout(15):
            seen = {}
            while "ready" not in seen or "ack" not in seen:
                message = await messages.get()
                seen.setdefault(message[0], message)
        _, seq, generation, snapshot = seen["ack"]
        assert (seq, generation, snapshot.router.route.live) == (7, 2, "green")
        assert seen["ready"][2].router.route.generation == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"green\n")
        writer.close()
        channel.close()                                # the supervisor is gone: the worker exits
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        listen.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
