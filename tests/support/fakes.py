"""fakes: the data plane without sockets, for the unit tests of the protocols, pool, router and drain.

``unstarted_proxy`` builds a Proxy that never listens; ``FakeTransport`` records what a
protocol writes and whether it paused, closed or aborted; ``Rig`` wires one client
connection and a pooled upstream connection per environment of such a proxy to fake
transports, so a test pushes bytes into ``data_received`` and reads what each side was sent.
``InFlight`` and ``Waiting`` stand in for exchanges as a Drain and a HoldGate see them.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from admin.config import parse_config
from proxy.downstream import ClientConnection
from proxy.errors import Outcome
from proxy.exchange import SENT
from proxy.server import Proxy
from proxy.upstream import UpstreamConnection


def unstarted_proxy(**overrides) -> Proxy:
    """unstarted_proxy: a Proxy that is never started (no socket); keyword arguments override top-level keys.

    Blue has one server, 127.0.0.1:1, and green one, 127.0.0.1:2, unless ``environments``
    says otherwise; nothing ever connects to them unless a test lets a connection attempt run.
    """
    data = {
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {"blue": {"servers": ["127.0.0.1:1"]}, "green": {"servers": ["127.0.0.1:2"]}},
        "state_file": "/tmp/cutover-unit-state.json",
    }
    data.update(overrides)
    return Proxy(parse_config(data, Path("/tmp"), {}).settings())


class FakeTransport:
    """FakeTransport: what a protocol writes (``data``), and whether it paused, closed or aborted it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("192.0.2.7", 4000) if name == "peername" else default

    def write(self, data):
        assert not self.closed, "write after close"
        self.data += data

    def writelines(self, parts):
        for part in parts:
            self.write(part)

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def get_write_buffer_size(self):
        return 0

    def take(self) -> bytes:
        """take: what was written since the last take."""
        out = bytes(self.data)
        self.data.clear()
        return out


class SocketTransport(FakeTransport):
    """SocketTransport: a fake transport whose "socket" is one end of a real socket pair (``peer`` the other)."""

    def __init__(self) -> None:
        super().__init__()
        self.sock, self.peer = socket.socketpair()

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else super().get_extra_info(name, default)


class Rig:
    """Rig: a never-started Proxy, one client connection and a pooled connection per environment, all fake.

    ``ups`` maps each environment to its (UpstreamConnection, FakeTransport); ``server``,
    ``up`` and ``up_t`` are blue's. ``send`` and ``answer`` end as a pass of the event loop
    does, by flushing what the protocols gathered.
    """

    def __init__(self, **overrides) -> None:
        self.proxy = unstarted_proxy(**overrides)
        self.proxy._loop = asyncio.get_running_loop()
        self.ups = {}
        for name, env in self.proxy.router.environments.items():
            server = env.servers[0]
            up = UpstreamConnection(self.proxy, server)
            transport = FakeTransport()
            up.connection_made(transport)
            server.idle.append(up)
            self.ups[name] = (up, transport)
        self.server = self.proxy.router.environments["blue"].servers[0]
        self.up, self.up_t = self.ups["blue"]
        self.client = ClientConnection(self.proxy)
        self.client_t = FakeTransport()
        self.client.connection_made(self.client_t)

    def send(self, data: bytes) -> None:
        self.client.data_received(data)
        self.proxy.flush_due()   # what the event loop does once a pass has handled its reads

    def answer(self, data: bytes, env: str = "blue") -> None:
        self.ups[env][0].data_received(data)
        self.proxy.flush_due()

    def env(self, name: str = "blue"):
        """env: the environment's snapshot, as the admin side would read it."""
        return self.proxy.snapshot().router.env(name)

    def errors(self, name: str = "blue") -> dict[str, int]:
        """errors: the upstream errors by kind of the environment's (first) server."""
        return dict(self.env(name).servers[0].upstream_errors)


class InFlight:
    """InFlight: an exchange in flight on an environment, as a Drain sees it (drain, state, force_close).

    ``forced_at`` is the event loop's time when it was force-closed (None until then).
    """

    def __init__(self, env, state: int = SENT) -> None:
        self.env = env
        self.drain = None
        self.state = state
        self.forced = False
        self.forced_at: float | None = None
        env.active.add(self)
        env.inflight += 1

    def end(self, outcome: str = Outcome.OK) -> None:
        self.env.active.discard(self)
        self.env.inflight -= 1
        if self.drain is not None:
            self.drain.finished(self, outcome)

    def force_close(self) -> None:
        self.forced = True
        self.forced_at = asyncio.get_running_loop().time()
        self.end(Outcome.FORCED)


class Waiting:
    """Waiting: an exchange as a HoldGate sees it: it proceeds when released (into ``log``), or is refused."""

    def __init__(self, log: list | None = None) -> None:
        self.log = log
        self.refused = None

    def proceed(self) -> None:
        if self.log is not None:
            self.log.append(self)

    def reply_error(self, status: int, message: str) -> None:
        self.refused = (status, message)
