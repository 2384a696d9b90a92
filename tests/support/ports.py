"""ports: loopback addresses where nothing listens, for tests of refused connects and of ports
a process is told to bind."""

from __future__ import annotations

import collections
import socket

# The ports handed out last: the kernel may give a port just closed to the next bind, and two
# ports asked for in a row (a listen and an admin.listen) must differ.
_RECENT: collections.deque[int] = collections.deque(maxlen=64)


def free_port() -> int:
    """free_port: a loopback port with nothing listening (connections to it are refused), none
    of the last 64 it handed out."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RECENT:
            _RECENT.append(port)
            return port


class Refused:
    """Refused: a backend address where nothing listens, to put in an environment's servers."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{free_port()}"
