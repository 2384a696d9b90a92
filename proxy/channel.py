"""channel: the framing of a supervisor channel (proxy/agent.py says what the messages are).

A message is a tuple, sent as its pickle behind a 4-byte big-endian length. Both ends are
cutover's own processes (the supervisor made the socket pair), so pickles are safe here;
a length over MAX_MESSAGE is taken as a broken channel and closes it.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cutover.channel")

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 << 20        # a message longer than this is a broken channel, not a message


def encode(message: tuple) -> bytes:
    """encode: one message as its length and its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Channel(asyncio.Protocol):
    """Channel: one end of a supervisor channel; each whole message goes to ``on_message``.

    Both ends are cutover's own processes (the supervisor made the socket pair), so the
    messages are pickles. ``on_close`` is called once when the other end is gone.
    """

    def __init__(self, on_message: Callable[[tuple], None], on_close: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > MAX_MESSAGE:
                log.error("supervisor channel: a message of %d bytes; closing it", length)
                if self.transport is not None:
                    self.transport.abort()
                return
            if len(buffer) < 4 + length:
                return
            message = pickle.loads(bytes(buffer[4:4 + length]))
            del buffer[:4 + length]
            try:
                self.on_message(message)
            except Exception:
                log.exception("supervisor channel: handling %r failed", message[:1])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_close()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, message: tuple) -> None:
        """send: queue ``message`` for the other end; dropped when the channel is closed."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
