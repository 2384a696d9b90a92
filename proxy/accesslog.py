"""AccessLog: one line per request (SPEC §12), written in batches off the per-request path.

Proxy owns one when the settings have an ``access_log`` (each worker process its own). The
per-request cost is one tuple and one list append: Exchange.finish appends the finished
exchange's values (a plain tuple, laid out as Entry) to ``records`` (Proxy.access_records is
the same list). Such a tuple holds only numbers, strings and bytes, so Python's cycle
collector stops tracking it at its first pass (it does so for exact tuples only, hence no
NamedTuple on the request path):
keeping the exchanges themselves for a batch's 100 ms made them survive into the older
generations, and each full collection then walked thousands of them (measured: a 78 ms
stall and +7 us per request, against 0.5 ms and +0 with entries). Every FLUSH_INTERVAL a loop timer
formats what gathered (json or combined, one line each; CHUNK records per pass of the loop)
and hands the bytes to a writer thread (once per interval, or per HAND_BYTES when more
gathered), which alone touches the file: a write that blocks (a slow disk, a full pipe on
standard output) stalls that thread, never the event loop. What waits for the thread is
bounded by PENDING_LIMIT bytes; a batch that would go over it is dropped and its lines are
counted (``dropped``, with the lines the thread failed to write: Snapshot.access_log_dropped,
cutover_access_log_dropped_lines_total).

Workers share one file: each process opens the path itself with O_APPEND and writes whole
lines only, a batch in one write(2) call to a regular file (appends do not interleave within
one call) and in pieces of at most PIPE_BUF bytes, cut at line ends, to a pipe or a terminal
(such writes are atomic). ``reopen`` (SIGUSR1, log rotation) hands the thread what gathered
so far, for the file as it was, then opens the path again: lines of requests that ended after
the signal go to the new file, and none is lost.

The formatting functions are pure over entries, tested without sockets
(tests/proxy/test_access_log_lines.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import stat
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import Outcome

if TYPE_CHECKING:
    from .exchange import Exchange
    from .settings import AccessLogConfig

log = logging.getLogger("cutover.proxy")

FLUSH_INTERVAL = 0.1          # seconds between two batches
CHUNK = 256                   # records formatted in one pass of the loop; the rest in the passes after
HAND_BYTES = 1 << 20          # formatted bytes handed to the writer at once, at most about this
PENDING_LIMIT = 16 << 20      # bytes formatted and not yet written, at most
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)

# The `outcome` of a line (SPEC §12).
OK = "ok"                      # the whole response reached the client
CLIENT_GONE = "client_gone"    # the client went away first
UPSTREAM_RESET = "upstream_reset"   # no server could be reached, or it closed, reset or answered invalid HTTP
TIMEOUT = "timeout"            # timeouts.upstream_response (504) or timeouts.client_body (408) passed
DRAINED = "drained"            # cut by a drain at drain_timeout or by shutdown
HELD = "held"                  # ended while waiting in the hold gate (its client went away)
REFUSED = "refused"            # answered by cutover without an upstream: a bad request, a full hold queue,
                               # no healthy server, a body over limits.max_body_bytes


class Entry(NamedTuple):
    """Entry: the fields of the plain tuple entry_of makes, in order (``Entry(*record)`` names them).

    Times are monotonic seconds (a batch turns them into wall clock once); the milliseconds are
    None where the line says null; ``block`` is the forwarded request head (combined reads
    Referer and User-Agent from it).
    """

    started: float
    ended: float
    client: bytes
    method: bytes
    url: bytes
    http_minor: int
    status: int
    bytes_in: int
    bytes_out: int
    connect_ms: float | None
    response_ms: float | None
    env: str | None
    server: str | None
    generation: int | None
    outcome: str
    request_id: bytes | None
    block: bytes


Record = tuple[float, float, bytes, bytes, bytes, int, int, int, int, "float | None", "float | None",
               "str | None", "str | None", "int | None", str, "bytes | None", bytes]


def entry_of(ex: "Exchange") -> Record:
    """entry_of: the record (fields as Entry) of an exchange that just finished (Exchange.finish;
    ended and the byte counts set)."""
    server, env, route = ex.server, ex.env, ex.route
    up_head, up_sent = ex.up_head, ex.up_sent
    return (ex.started, ex.ended, ex.client.client_ip, ex.method, ex.url, ex.http_minor, ex.status,
                 ex.bytes_in, ex.bytes_out,
                 ex.connect_time * 1000 if server is not None or ex.tried or ex.connect_time else None,
                 (up_head - up_sent) * 1000 if up_head and up_sent else None,
                 env.name if env is not None else None, server.address if server is not None else None,
                 route.generation if route is not None else None, outcome_of(ex), ex.request_id, ex.head.block)


def outcome_of(ex: "Exchange") -> str:
    """outcome_of: the access log's outcome of a finished exchange.

    Exchange sets ``cause`` where the end has a cause the exchange's Outcome does not tell
    (a timeout, an upstream failure, a refusal, an end in the hold gate); otherwise the
    Outcome decides, and a failure is the upstream's when a server was picked or tried.
    """
    cause = ex.cause
    if cause is not None:
        return cause
    return _OUTCOMES.get(ex.outcome) or (UPSTREAM_RESET if ex.server is not None or ex.tried else REFUSED)


# ------------------------------------------------------------------ formatting
#
# A batch is formatted to bytes, each line by one bytes %-expression whose conversions are all
# %s of bytes and %d of ints: mypyc builds such an expression by copying its parts (no
# PyUnicode_Format, no float formatting, no encode of the batch); the milliseconds' three
# decimals come from _THREE.

# Bytes written into a JSON string as they are; others go through json.dumps.
_JSON_PLAIN = bytes(b for b in range(0x20, 0x7f) if b not in b'"\\')
# Bytes written into a combined line's quoted field as they are; others as \xHH (as nginx does).
_COMBINED_PLAIN = _JSON_PLAIN
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_THREE: tuple[bytes, ...] = tuple(b"%03d" % n for n in range(1000))     # b"000" .. b"999"


class Clock:
    """Clock: wall-clock text for log lines, formatted once per second (the formatters' cache)."""

    __slots__ = ("second", "iso", "clf")

    def __init__(self) -> None:
        self.second = -1
        self.iso = b""     # b"2024-05-01T12:00:00"
        self.clf = b""     # b"01/May/2024:12:00:00 +0000"

    def at(self, second: int) -> None:
        """at: format ``second`` (whole seconds since the epoch) into iso and clf."""
        t = time.gmtime(second)
        self.second = second
        self.iso = b"%04d-%02d-%02dT%02d:%02d:%02d" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
                                                       t.tm_sec)
        self.clf = b"%02d/%s/%04d:%02d:%02d:%02d +0000" % (t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                           t.tm_hour, t.tm_min, t.tm_sec)


def millis(value: float) -> bytes:
    """millis: ``value`` (milliseconds) with three decimals, b"12.345" (to the nearest microsecond)."""
    us = int(value * 1000 + 0.5)
    if us < 0:
        us = 0
    return b"%d.%s" % (us // 1000, _THREE[us % 1000])


def json_string(value: bytes | None) -> bytes:
    """json_string: ``value`` as a JSON string (each byte outside printable ASCII as \\u00XX), or null."""
    if value is None:
        return b"null"
    if not value.translate(None, _JSON_PLAIN):
        return b'"%s"' % value
    return json.dumps(value.decode("latin-1")).encode("ascii")


def combined_field(value: bytes) -> bytes:
    """combined_field: ``value`` for a quoted field of a combined line: '"', '\\' and bytes outside
    printable ASCII as \\xHH, as nginx writes them; empty is "-"."""
    if not value:
        return b"-"
    if not value.translate(None, _COMBINED_PLAIN):
        return value
    return b"".join(bytes((b,)) if b in _COMBINED_PLAIN else b"\\x%02X" % b for b in value)


# Outcome -> the line's outcome, where Outcome alone decides (see outcome_of).
_OUTCOMES: dict[str | None, str] = {Outcome.OK: OK, Outcome.CLIENT_GONE: CLIENT_GONE, Outcome.FORCED: DRAINED}


def json_lines(batch: "list[Record]", offset: float, clock: Clock) -> bytes:
    """json_lines: the json lines of finished exchanges (SPEC §12 fields, in that order).

    ``offset`` turns the entries' monotonic times into wall-clock time (time.time() -
    time.monotonic(), taken once per batch); ``time`` is when the request head was complete.
    upstream_connect_ms is what opening upstream connections took (0 for a pooled one), null
    when no server was picked; upstream_response_ms runs from the request head written
    upstream to the response's final head, null when none came. What repeats from line to
    line (the request's client, method, target and protocol; its environment, server,
    generation and outcome) is formatted once per batch.
    """
    lines: list[bytes] = []
    requests: dict[tuple[bytes, bytes, bytes, int], bytes] = {}
    places: dict[tuple[str | None, str | None, int | None, str], bytes] = {}
    three = _THREE
    for (started, ended, client, method, url, minor, status, bytes_in, bytes_out, connect_ms, response_ms,
         env, server, generation, outcome, rid, _) in batch:
        key = (client, method, url, minor)
        request = requests.get(key)
        if request is None:
            request = requests[key] = b'","client":"%s","method":%s,"target":%s,"protocol":"HTTP/1.%d","status":' % (
                client, json_string(method), json_string(url), minor)
        where = (env, server, generation, outcome)
        place = places.get(where)
        if place is None:
            place = places[where] = b',"env":%s,"server":%s,"generation":%s,"outcome":"%s","request_id":' % (
                b'"%s"' % env.encode() if env is not None else b"null",
                json_string(server.encode()) if server is not None else b"null",
                b"%d" % generation if generation is not None else b"null", outcome.encode())
        stamp = int((started + offset) * 1000 + 0.5)
        second = stamp // 1000
        if second != clock.second:
            clock.at(second)
        connect = millis(connect_ms) if connect_ms is not None else b"null"
        response = millis(response_ms) if response_ms is not None else b"null"
        # A passed-through id is sane and a generated one too: no escaping needed.
        if rid is not None:
            lines.append(b'{"time":"%s.%sZ%s%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%s,"upstream_connect_ms":%s,'
                         b'"upstream_response_ms":%s%s"%s"}\n' % (
                             clock.iso, three[stamp - second * 1000], request, status, bytes_in, bytes_out,
                             millis((ended - started) * 1000), connect, response, place, rid))
        else:
            lines.append(b'{"time":"%s.%sZ%s%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%s,"upstream_connect_ms":%s,'
                         b'"upstream_response_ms":%s%snull}\n' % (
                             clock.iso, three[stamp - second * 1000], request, status, bytes_in, bytes_out,
                             millis((ended - started) * 1000), connect, response, place))
    return b"".join(lines)


def json_line(entry: Record, offset: float, clock: Clock) -> str:
    """json_line: the json line of one finished exchange (json_lines of a batch of one)."""
    return json_lines([entry], offset, clock).decode("latin-1")


def header_value(block: bytes, name: bytes) -> bytes:
    """header_value: the first ``name`` field's value in a forwarded header block (``name``
    lowercase), b"" when there is none; combined_lines reads Referer and User-Agent from it."""
    at = (b"\n" + block.lower()).find(b"\n" + name + b":")   # at: where the name begins in block
    if at < 0:
        return b""
    start = at + len(name) + 1
    end = block.find(b"\r\n", start)
    return block[start:end if end >= 0 else len(block)].strip()


def combined_lines(batch: "list[Record]", offset: float, clock: Clock) -> bytes:
    """combined_lines: the combined log format lines (Apache's and nginx's ``combined``) of
    finished exchanges, each followed by the request id:

        client - - [time] "METHOD target HTTP/1.x" status bytes_out "referer" "user-agent" request_id

    bytes_out counts the head too (as json's bytes_out); a missing value is "-".
    """
    lines: list[bytes] = []
    for (started, _, client, method, url, minor, status, _, bytes_out, _, _, _, _, _, _, rid, block) in batch:
        second = int(started + offset)
        if second != clock.second:
            clock.at(second)
        lines.append(b'%s - - [%s] "%s %s HTTP/1.%d" %d %d "%s" "%s" %s\n' % (
            client, clock.clf,
            combined_field(method), combined_field(url), minor, status, bytes_out,
            combined_field(header_value(block, b"referer")), combined_field(header_value(block, b"user-agent")),
            rid if rid else b"-"))
    return b"".join(lines)


def combined_line(entry: Record, offset: float, clock: Clock) -> str:
    """combined_line: the combined line of one finished exchange (combined_lines of a batch of one)."""
    return combined_lines([entry], offset, clock).decode("latin-1")


FORMATS = {"json": json_lines, "combined": combined_lines}


# ------------------------------------------------------------------ writing

_REOPEN: Any = object()
_STOP: Any = object()


class _Writer:
    """_Writer: the thread that owns the log's file descriptor and writes the batches in order."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.dropped = 0                 # lines that could not be written (the file would not open, a write failed)
        self._items: deque[tuple[Any, int]] = deque()
        self._pending = 0                # bytes in _items
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._pieces = False             # a pipe or a terminal: write at most PIPE_BUF at a time
        self._failing = False            # the last write failed (logged once until one succeeds)
        self._runner = threading.Thread(target=self._run, name="cutover-access-log", daemon=True)

    def start(self) -> None:
        self._runner.start()

    def put(self, data: bytes, lines: int) -> bool:
        """put: queue a batch; False (nothing queued) when PENDING_LIMIT would be passed."""
        with self._cond:
            if self._pending + len(data) > self.limit:
                return False
            self._pending += len(data)
            self._items.append((data, lines))
            self._cond.notify()
        return True

    def command(self, what: Any) -> None:
        with self._cond:
            self._items.append((what, 0))
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        """join: wait up to ``timeout`` for the thread to end; whether it did."""
        if self._runner.ident is None:
            return True
        self._runner.join(timeout)
        return not self._runner.is_alive()

    def _run(self) -> None:
        self._open()
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                data, lines = self._items.popleft()
                if isinstance(data, bytes):
                    self._pending -= len(data)
            if data is _STOP:
                break
            if data is _REOPEN:
                self._open()
                continue
            self._write(data, lines)
        if self._fd is not None and self.path != "-":
            os.close(self._fd)
        self._fd = None

    def _open(self) -> None:
        """_open: (re)open the path; on failure the previous file stays in use (none at first)."""
        if self.path == "-":
            fd = 1
        else:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                log.error("access_log.path: cannot open %s: %s%s", self.path, exc.strerror or exc,
                          "; writing on to the file open before" if self._fd is not None else
                          "; its lines are dropped until SIGUSR1 opens it")
                return
        old, self._fd = self._fd, fd
        try:
            self._pieces = not stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._pieces = True
        if old is not None and old != fd and self.path != "-":
            os.close(old)

    def _write(self, data: bytes, lines: int) -> None:
        fd = self._fd
        if fd is None:
            self.dropped += lines
            return
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                end = len(data)
                if self._pieces and end - done > PIPE_BUF:
                    cut = data.rfind(b"\n", done, done + PIPE_BUF) + 1
                    if cut <= done:          # one line longer than PIPE_BUF goes alone
                        cut = data.find(b"\n", done) + 1 or end
                    end = cut
                while done < end:
                    done += os.write(fd, view[done:end])
        except OSError as exc:
            self.dropped += data.count(b"\n", done)
            if not self._failing:
                self._failing = True
                log.error("access_log: writing %s failed: %s; lines are dropped and counted until a write succeeds",
                          "standard output" if self.path == "-" else self.path, exc.strerror or exc)
            return
        if self._failing:
            self._failing = False
            log.warning("access_log: writing %s works again", "standard output" if self.path == "-" else self.path)


class AccessLog:
    """AccessLog: the finished exchanges of one Proxy, formatted and written every FLUSH_INTERVAL."""

    def __init__(self, config: "AccessLogConfig", interval: float = FLUSH_INTERVAL,
                 limit: int = PENDING_LIMIT) -> None:
        self.config = config
        self.interval = interval
        # Finished exchanges not formatted yet: Exchange.finish appends (through Proxy.access_records).
        self.records: list[Any] = []
        self.full = 0                    # lines dropped because PENDING_LIMIT bytes already waited
        self.lines = 0                   # lines handed to the writer
        self._format = FORMATS[config.format]
        self._clock = Clock()
        self._writer = _Writer(config.path, limit)
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None     # the next chunk of a batch too big for one pass
        # The chunks of this batch formatted so far, their lines and bytes: handed to the writer in
        # one piece once the batch is done, at the next tick or past HAND_BYTES (one wake-up of its
        # thread per FLUSH_INTERVAL, not per chunk, and no piece much bigger than HAND_BYTES).
        self._formatted: list[bytes] = []
        self._formatted_lines = 0
        self._formatted_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dropped(self) -> int:
        """dropped: lines lost so far: not queued (PENDING_LIMIT) or not written (open or write failed)."""
        return self.full + self._writer.dropped

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """start: start the writer thread and the flush timer; called by Proxy.start."""
        self._loop = loop
        self._writer.start()
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if self._soon is None:
            self._chunk()
        else:
            # Chunks still follow one another (requests end faster than a pass formats them):
            # what they formatted goes to the writer now, one hand-off per interval still.
            self._hand()
        if self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def _chunk(self) -> None:
        """_chunk: format at most CHUNK records, the oldest, and leave the rest to the next pass of
        the loop: a busy worker's 100 ms of requests formatted at once would hold every one of
        its connections for milliseconds (its p99)."""
        self._soon = None
        records = self.records
        if not records:
            return
        batch = records[:CHUNK]
        del records[:CHUNK]
        self._format_batch(batch)
        if records and self._loop is not None:
            self._soon = self._loop.call_soon(self._chunk)
        else:
            self._hand()

    def flush(self) -> None:
        """flush: format every gathered record now and queue them for the writer thread (reopen, close)."""
        records = self.records
        if records:
            batch = records.copy()
            records.clear()
            self._format_batch(batch)
        self._hand()

    def _format_batch(self, batch: list[Any]) -> None:
        try:
            data = self._format(batch, time.time() - time.monotonic(), self._clock)
        except Exception:
            log.exception("access_log: formatting a batch failed; its %d lines are dropped", len(batch))
            self.full += len(batch)
            return
        self._formatted.append(data)
        self._formatted_lines += len(batch)
        self._formatted_bytes += len(data)
        if self._formatted_bytes >= HAND_BYTES:
            self._hand()

    def _hand(self) -> None:
        """_hand: queue what was formatted for the writer thread, in one piece."""
        lines = self._formatted_lines
        if not lines:
            return
        data = b"".join(self._formatted)      # one chunk: that chunk itself, not a copy
        self._formatted.clear()
        self._formatted_lines = self._formatted_bytes = 0
        if self._writer.put(data, lines):
            self.lines += lines
        else:
            self.full += lines

    def reopen(self) -> None:
        """reopen: SIGUSR1: what gathered goes to the file open now, later lines to the path opened again."""
        self.flush()
        self._writer.command(_REOPEN)

    async def close(self, timeout: float = 5.0) -> None:
        """close: write what is left and stop the thread (waits at most ``timeout``: a thread
        stuck on a blocked pipe is left behind, it is a daemon); called by Proxy.close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self._loop = None
        self.flush()
        self._writer.command(_STOP)
        if not await asyncio.to_thread(self._writer.join, timeout):
            log.warning("access_log: the writer did not finish within %ss (a blocked output?)", timeout)
