"""rawhttp: raw-HTTP helpers for the end-to-end tests that speak bytes on the wire.

Holds a strict HTTP/1.1 response reader (``Response``, ``read_response``),
client-side connection helpers (``connect``, ``send_collect``, ``raw_exchange``,
``status_of``, ``split_head``), and ``RawBackend``, an upstream written by hand to
record or misbehave on purpose, with the handlers several tests share (``answer_ok``,
``never_answer``). The ``raw_backend`` fixture (plugin.py) starts a proxy in front of one.
"""

from __future__ import annotations

import asyncio

# ---------------------------------------------------------------- client side


class Response:
    """Response: one HTTP response as read off a raw connection."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                 raw_body: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.headers = headers            # (lowercase name, value) in wire order
        self.body = body                  # de-chunked body
        self.raw_body = raw_body          # body bytes exactly as framed on the wire
        self.trailers = [] if trailers is None else trailers

    def get(self, name: bytes) -> bytes | None:
        """get: the first value of header ``name`` (lowercase), or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        """get_all: every value of header ``name`` (lowercase), in wire order."""
        return [v for n, v in self.headers if n == name]


async def read_response(reader: asyncio.StreamReader, method: bytes = b"GET") -> Response:
    """read_response: read one response (interim 1xx ones are returned on their own).

    Strict: the status line must be HTTP/1.x, a Transfer-Encoding must be
    chunked and every chunk must end in CRLF. The body is framed by chunked,
    Content-Length or the close of the connection; a response to ``method``
    HEAD, a 1xx, 204 or 304 has none.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    version, status, *_ = lines[0].split(b" ", 2)
    assert version in (b"HTTP/1.1", b"HTTP/1.0"), lines[0]
    status = int(status)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip()))
    resp = Response(status, headers)
    if status < 200 or status in (204, 304) or method == b"HEAD":
        return resp
    if resp.get(b"transfer-encoding") is not None:
        assert resp.get(b"transfer-encoding").lower() == b"chunked"
        raw, body = [], []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            chunk = await reader.readexactly(size + 2)
            assert chunk.endswith(b"\r\n")
            raw.append(chunk)
            body.append(chunk[:-2])
        while True:
            line = await reader.readuntil(b"\r\n")
            raw.append(line)
            if line == b"\r\n":
                break
            name, _, value = line[:-2].partition(b":")
            resp.trailers.append((name.lower(), value.strip()))
        resp.body = b"".join(body)
        resp.raw_body = b"".join(raw)
    elif resp.get(b"content-length") is not None:
        resp.body = resp.raw_body = await reader.readexactly(int(resp.get(b"content-length")))
    else:
        resp.body = resp.raw_body = await reader.read()   # close-delimited
    return resp


async def connect(port: int, limit: int = 1 << 20) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """connect: a new loopback connection to ``port``; ``limit`` is the reader's buffer limit."""
    return await asyncio.open_connection("127.0.0.1", port, limit=limit)


async def send_collect(port: int, data: bytes, timeout: float = 2.0) -> tuple[bytes, bool]:
    """send_collect: send ``data`` on a new connection; return (all bytes read, closed by the proxy)."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionResetError:
            pass
        return b"".join(chunks), True
    finally:
        writer.close()


async def raw_exchange(port: int, data: bytes, read_timeout: float = 3.0, until_close: bool = True) -> bytes:
    """raw_exchange: send raw bytes to 127.0.0.1:port and return what comes back.

    Reads until the server closes (``until_close``) or ``read_timeout`` passes.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(read_timeout):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if not until_close:
                        break
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(data: bytes) -> int:
    """status_of: the status code of a raw response, which must start with an HTTP/1.1 status line."""
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12])


def split_head(data: bytes, whole: bool = False) -> tuple[dict[bytes, bytes], bytes]:
    """split_head: (lowercase header fields, bytes after the head) of one raw response.

    With ``whole`` the data must hold the end of the head; without, what there is counts as head.
    """
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep or not whole, data[:200]
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.lower()] = value.strip()
    return fields, rest


# ---------------------------------------------------------------- upstream side


class RawBackend:
    """RawBackend: an upstream written by hand, to record or misbehave on purpose.

    ``handler(backend, reader, writer)`` serves one connection; it gets requests
    with ``backend.next_request``, which answers health probes itself and records
    every other request head in ``heads`` (and each body it reads in ``bodies``).
    ``connections`` is for handlers that count, ``event`` for handlers that wait
    on the test.
    """

    def __init__(self, handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0           # proxied connections, counted by handlers that care
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task] = set()
        self.event = asyncio.Event()   # for handlers that wait on the test

    @property
    def address(self) -> str:
        """address: "127.0.0.1:port" where this upstream listens (after start)."""
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> "RawBackend":
        """start: listen on an ephemeral loopback port; returns self."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """stop: stop listening and end every handler still running (waits at most 1 s)."""
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        try:
            async with asyncio.timeout(1):
                await asyncio.gather(*self.tasks, return_exceptions=True)
                await self.server.wait_closed()
        except TimeoutError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self.handler(self, reader, writer)
        except asyncio.CancelledError:
            pass   # stop() ends handlers still waiting; the task ends here either way
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def next_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           read_body: bool = True) -> tuple[bytes, bytes] | None:
        """next_request: (head, body) of the next proxied request; None at EOF or after a health probe.

        The body (Content-Length or chunked) is read and recorded in ``bodies``
        unless ``read_body`` is false: then it is left on ``reader`` and body is b"".
        """
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        if head.startswith(b"GET /healthz "):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            await writer.drain()
            return None
        self.heads.append(head)   # recorded as soon as the head arrives, body or not
        if not read_body:
            return head, b""
        body = b""
        lower = head.lower()
        if b"\r\ncontent-length:" in lower:
            length = int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            body = b"".join(parts)
        self.bodies.append(body)
        return head, body


async def answer_ok(backend: RawBackend, reader, writer) -> None:
    """answer_ok: a keep-alive upstream answering every request with 200 "raw"."""
    while await backend.next_request(reader, writer) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nraw\n")
        await writer.drain()


async def never_answer(backend: RawBackend, reader, writer) -> None:
    """never_answer: takes one request and says nothing until the test sets ``event`` (or stop() ends it)."""
    if await backend.next_request(reader, writer) is not None:
        await backend.event.wait()
