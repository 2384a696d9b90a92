"""ports: loopback addresses where nothing listens, for tests of refused connects and of ports
a process is told to bind."""

from __future__ import annotations

import socket


def free_port() -> int:
    """free_port: a loopback port with nothing listening (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Refused:
    """Refused: a backend address where nothing listens, to put in an environment's servers."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"
