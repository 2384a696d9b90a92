"""AccessLog: one line per request (SPEC §12), written in batches off the per-request path.

Proxy owns one when the settings have an ``access_log`` (each worker process its own).
Exchange.finish hands the finished exchange to AccessLog.add, which formats its line at once
(json or combined: one bytes %-expression, compiled) and appends it to a list: no logging
call, no tuple or record kept. A line is bytes, which Python's cycle collector never tracks:
records kept for a batch's 100 ms (the exchanges themselves once, plain tuples later) made
the collector run more often and walk them, and formatting a batch at once on the loop held
every connection of a busy worker for milliseconds (its p99). Every FLUSH_INTERVAL, or once
HAND_BYTES gathered, the list goes to a writer thread, which joins it (a short copy: a batch
is at most about HAND_BYTES) and alone touches the file: a write that blocks (a slow
disk, a full pipe on standard output) stalls that thread, never the event loop. What waits
for the thread is bounded by PENDING_LIMIT bytes; a batch that would go over it is dropped
and its lines are counted (``dropped``, with the lines the thread failed to write:
Snapshot.access_log_dropped, cutover_access_log_dropped_lines_total).

Workers share one file: each process opens the path itself with O_APPEND and writes whole lines
only, cut at line ends: to a regular file in pieces of at most WRITE_PIECE bytes (a longer line
alone), one write(2) call each (appends do not interleave within one call), to a pipe or a
terminal in pieces of at most PIPE_BUF bytes (such writes are atomic; a line longer than
PIPE_BUF, rare, goes in one write of its own, which another process's write to the same pipe
may split). ``reopen`` (SIGUSR1, log rotation) hands the thread what gathered so far, for the
file as it was, then opens the path again: lines of requests that ended after the signal go to
the new file, and none is lost.

The formatting functions (json_entry, combined_entry; json_line and combined_line over an
Entry's fields) are pure, tested without sockets (tests/proxy/test_access_log_lines.py).
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
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .errors import Outcome

if TYPE_CHECKING:
    from .exchange import Exchange
    from .settings import AccessLogConfig

log = logging.getLogger("cutover.proxy")

FLUSH_INTERVAL: Final = 0.1   # seconds between two batches
# Bytes of lines handed to the writer at once, about: its join holds the GIL, and its write
# the CPU, briefly (bench/run.py, a pinned worker's p99 in six rounds each: 1.6-2.0 ms with
# 1 MiB hand-offs, 1.4-1.5 ms with these but for one round of 2.1 ms).
HAND_BYTES: Final = 256 << 10
PLACES: Final = 1024          # place_of texts kept, at most (cleared at a tick past it)
PENDING_LIMIT = 16 << 20      # bytes formatted and not yet written, at most
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
# A regular file is written this much at a time, cut at line ends, the CPU yielded between two
# pieces: one write(2) of a busy worker's batch (megabytes) ran for milliseconds on the CPU the
# loop waits for (the p99 of a worker pinned to one CPU went from 0.8 to 3-4 ms as the file grew).
WRITE_PIECE: Final = 64 << 10

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
    """Entry: the fields of one line, in order, as the pure formatters json_line and
    combined_line take them (AccessLog.add passes them from the exchange itself).

    Times are monotonic seconds (the log's offset turns them into wall clock); the
    milliseconds are None where the line says null; ``block`` is the forwarded request head
    (combined reads Referer and User-Agent from it).
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
# Each line is formatted to bytes by one bytes %-expression whose conversions are all
# %s of bytes and %d of ints: mypyc builds such an expression by copying its parts (no
# PyUnicode_Format, no float formatting, no encode); the milliseconds' three
# decimals come from _DOT_THREE.

# Bytes written into a JSON string as they are; others go through json.dumps.
_JSON_PLAIN: Final = bytes(b for b in range(0x20, 0x7f) if b not in b'"\\')
# Bytes written into a combined line's quoted field as they are; others as \xHH (as nginx does).
_COMBINED_PLAIN: Final = _JSON_PLAIN
# A translate table that keeps the plain bytes and changes every other one: a value is plain
# when translating it changes nothing (one pass, no table built per call as deletechars does).
_PLAIN_MAP: Final = bytes(b if b in _JSON_PLAIN else b ^ 1 for b in range(256))
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DOT_THREE: Final[tuple[bytes, ...]] = tuple(b".%03d" % n for n in range(1000))     # b".000" .. b".999"


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


def _micros(ms: float) -> int:
    """_micros: ``ms`` (milliseconds) in whole microseconds, rounded, never below 0."""
    us = int(ms * 1000 + 0.5)
    return us if us > 0 else 0


def millis(value: float) -> bytes:
    """millis: ``value`` (milliseconds) with three decimals, b"12.345" (to the nearest microsecond)."""
    us = _micros(value)
    return b"%s%s" % (_num(us // 1000), _DOT_THREE[us % 1000])


def json_string(value: bytes | None) -> bytes:
    """json_string: ``value`` as a JSON string (each byte outside printable ASCII as \\u00XX), or null."""
    if value is None:
        return b"null"
    return b'"%s"' % _json_text(value)


def _json_text(value: bytes) -> bytes:
    """_json_text: ``value`` as the inside of a JSON string: a plain value itself."""
    if value.translate(_PLAIN_MAP) == value:
        return value
    return json.dumps(value.decode("latin-1")).encode("ascii")[1:-1]


def combined_field(value: bytes) -> bytes:
    """combined_field: ``value`` for a quoted field of a combined line: '"', '\\' and bytes outside
    printable ASCII as \\xHH, as nginx writes them; empty is "-"."""
    if not value:
        return b"-"
    if value.translate(_PLAIN_MAP) == value:
        return value
    return b"".join(bytes((b,)) if b in _COMBINED_PLAIN else b"\\x%02X" % b for b in value)


# Outcome -> the line's outcome, where Outcome alone decides (see outcome_of).
_OUTCOMES: Final[dict[str | None, str]] = {Outcome.OK: OK, Outcome.CLIENT_GONE: CLIENT_GONE, Outcome.FORCED: DRAINED}


def place_of(env: str | None, server: str | None, generation: int | None, outcome: str) -> bytes:
    """place_of: the part of a json line from its environment to the request id's name (what
    repeats from line to line: AccessLog keeps it per environment, server, generation and outcome)."""
    return b',"env":%s,"server":%s,"generation":%s,"outcome":"%s","request_id":' % (
        b'"%s"' % env.encode() if env is not None else b"null",
        json_string(server.encode()) if server is not None else b"null",
        b"%d" % generation if generation is not None else b"null", outcome.encode())


def json_entry(started: float, ended: float, client: bytes, method: bytes, url: bytes, minor: int, status: int,
               bytes_in: int, bytes_out: int, connect_ms: float, response_ms: float, place: bytes,
               rid: bytes | None, offset: float, clock: Clock) -> bytes:
    """json_entry: the json line of a finished exchange (SPEC §12 fields, in that order).

    ``offset`` turns the monotonic times into wall-clock time (time.time() - time.monotonic());
    ``time`` is when the request head was complete. upstream_connect_ms is what opening upstream
    connections took (0 for a pooled one), null when no server was picked; upstream_response_ms
    runs from the request head written upstream to the response's final head, null when none
    came (each given negative for null: a float, never boxed; a time is never below 0).
    ``place`` is place_of the line's environment, server, generation and outcome.
    """
    stamp = int((started + offset) * 1000 + 0.5)
    second = stamp // 1000
    if second != clock.second:
        clock.at(second)
    took = _micros((ended - started) * 1000)
    # Each time as its whole milliseconds and its decimals (b"null" and b"" for null), the
    # request id with its quotes or null: one expression of parts that mostly exist already
    # (_num below 10,000, _DOT_THREE, the method's and a plain target's own bytes).
    connect = response = b"null"
    connect_dot = response_dot = b""
    if connect_ms >= 0:
        us = _micros(connect_ms)
        connect = _num(us // 1000)
        connect_dot = _DOT_THREE[us % 1000]
    if response_ms >= 0:
        us = _micros(response_ms)
        response = _num(us // 1000)
        response_dot = _DOT_THREE[us % 1000]
    # A passed-through id is sane and a generated one too: no escaping needed.
    quote = b'"' if rid is not None else b""
    rid_text: bytes = rid if rid is not None else b"null"
    return (b'{"time":"%s%sZ","client":"%s","method":"%s","target":"%s","protocol":"HTTP/1.%s","status":%s,'
            b'"bytes_in":%s,"bytes_out":%s,"duration_ms":%s%s,"upstream_connect_ms":%s%s,'
            b'"upstream_response_ms":%s%s%s%s%s%s}\n' % (
                clock.iso, _DOT_THREE[stamp - second * 1000], client, _method_text(method), _json_text(url),
                _num(minor), _num(status), _num(bytes_in), _num(bytes_out), _num(took // 1000),
                _DOT_THREE[took % 1000], connect, connect_dot, response, response_dot, place, quote, rid_text, quote))


def _num(value: int) -> bytes:
    """_num: b"%d" % value, from a table below 10,000 (no bytes made for a status, a size or
    milliseconds of most requests)."""
    if 0 <= value < 10000:
        return _INTS[value]
    return b"%d" % value


def _method_text(method: bytes) -> bytes:
    """_method_text: _json_text of a method, from a table for the methods seen before."""
    text = _METHODS.get(method)
    if text is None:
        text = _json_text(method)
        if len(_METHODS) < 64:
            _METHODS[method] = text
    return text


_METHODS: Final[dict[bytes, bytes]] = {}
_INTS: Final[tuple[bytes, ...]] = tuple(b"%d" % n for n in range(10000))


def json_line(entry: "tuple[Any, ...]", offset: float, clock: Clock) -> str:
    """json_line: the json line of an Entry (its fields in order, as a plain tuple or an Entry)."""
    (started, ended, client, method, url, minor, status, bytes_in, bytes_out, connect_ms, response_ms, env, server,
     generation, outcome, rid, _) = entry
    return json_entry(started, ended, client, method, url, minor, status, bytes_in, bytes_out,
                      -1.0 if connect_ms is None else max(connect_ms, 0.0),
                      -1.0 if response_ms is None else max(response_ms, 0.0),
                      place_of(env, server, generation, outcome), rid, offset, clock).decode("latin-1")


def header_value(block: bytes, name: bytes) -> bytes:
    """header_value: the first ``name`` field's value in a forwarded header block (``name``
    lowercase), b"" when there is none; combined_entry reads Referer and User-Agent from it."""
    at = (b"\n" + block.lower()).find(b"\n" + name + b":")   # at: where the name begins in block
    if at < 0:
        return b""
    start = at + len(name) + 1
    end = block.find(b"\r\n", start)
    return block[start:end if end >= 0 else len(block)].strip()


def combined_entry(started: float, client: bytes, method: bytes, url: bytes, minor: int, status: int,
                   bytes_out: int, rid: bytes | None, block: bytes, offset: float, clock: Clock) -> bytes:
    """combined_entry: the combined log format line (Apache's and nginx's ``combined``) of a
    finished exchange, followed by the request id:

        client - - [time] "METHOD target HTTP/1.x" status bytes_out "referer" "user-agent" request_id

    bytes_out counts the head too (as json's bytes_out); a missing value is "-".
    """
    second = int(started + offset)
    if second != clock.second:
        clock.at(second)
    return b'%s - - [%s] "%s %s HTTP/1.%d" %d %d "%s" "%s" %s\n' % (
        client, clock.clf, combined_field(method), combined_field(url), minor, status, bytes_out,
        combined_field(header_value(block, b"referer")), combined_field(header_value(block, b"user-agent")),
        rid if rid else b"-")


def combined_line(entry: "tuple[Any, ...]", offset: float, clock: Clock) -> str:
    """combined_line: the combined line of an Entry (its fields in order)."""
    (started, _, client, method, url, minor, status, _, bytes_out, _, _, _, _, _, _, rid, block) = entry
    return combined_entry(started, client, method, url, minor, status, bytes_out, rid, block, offset,
                          clock).decode("latin-1")


# ------------------------------------------------------------------ writing

_REOPEN: Any = object()
_STOP: Any = object()


class _Writer:
    """_Writer: the thread that owns the log's file descriptor and writes the batches in order."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.dropped = 0                 # lines that could not be written (the file would not open, a write failed)
        self._items: deque[tuple[Any, int]] = deque()    # (a batch's lines, their bytes), or a command
        self._pending = 0                # bytes in _items
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._pieces = False             # a pipe or a terminal: write at most PIPE_BUF at a time
        self._failing = False            # the last write failed (logged once until one succeeds)
        self._runner = threading.Thread(target=self._run, name="cutover-access-log", daemon=True)

    def start(self) -> None:
        self._runner.start()

    def put(self, lines: list[bytes], size: int) -> bool:
        """put: queue a batch of ``size`` bytes; False (nothing queued) when PENDING_LIMIT would be passed."""
        with self._cond:
            if self._pending + size > self.limit:
                return False
            self._pending += size
            self._items.append((lines, size))
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
                item, size = self._items.popleft()
                self._pending -= size
            if item is _STOP:
                break
            if item is _REOPEN:
                self._open()
                continue
            # One piece per batch, joined here, never on the loop; HAND_BYTES keeps the copy
            # (which holds the GIL below 1 MB) short.
            self._write(b"".join(item), len(item))
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
        piece = PIPE_BUF if self._pieces else WRITE_PIECE
        since = 0                            # bytes written since the CPU was last yielded
        try:
            while done < len(data):
                end = len(data)
                if end - done > piece:
                    cut = data.rfind(b"\n", done, done + piece) + 1
                    if cut <= done:          # one line longer than a piece goes alone
                        cut = data.find(b"\n", done) + 1 or end
                    end = cut
                while done < end:
                    wrote = os.write(fd, view[done:end])
                    done += wrote
                    since += wrote
                if since >= WRITE_PIECE and done < len(data):
                    since = 0
                    os.sched_yield()         # lets a thread that waits for this CPU (the loop's) run
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
    """AccessLog: the lines of one Proxy's finished exchanges, handed to the writer every FLUSH_INTERVAL."""

    def __init__(self, config: "AccessLogConfig", interval: float = FLUSH_INTERVAL,
                 limit: int = PENDING_LIMIT) -> None:
        self.config = config
        self.interval = interval
        # The lines formatted since the last hand-off (add appends) and their bytes.
        self.gathered: list[bytes] = []
        self.gathered_bytes = 0
        self.full = 0                    # lines dropped: PENDING_LIMIT bytes already waited, or not formatted
        self.lines = 0                   # lines handed to the writer
        # Monotonic to wall-clock seconds, taken again at each tick (the wall clock may be set).
        self.offset = time.time() - time.monotonic()
        self._json = config.format == "json"
        self._clock = Clock()
        # place_of per (environment, server, generation, outcome): the few that repeat.
        self._places: dict[tuple[str | None, str | None, int | None, str], bytes] = {}
        self._writer = _Writer(config.path, limit)
        self._failed = False             # a line could not be formatted (logged once)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dropped(self) -> int:
        """dropped: lines lost so far: not formatted, not queued (PENDING_LIMIT) or not written
        (open or write failed)."""
        return self.full + self._writer.dropped

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """start: start the writer thread and the flush timer; called by Proxy.start."""
        self._loop = loop
        self._writer.start()
        self._timer = loop.call_later(self.interval, self._tick)

    def add(self, ex: "Exchange") -> None:
        """add: the line of an exchange that just finished (Exchange.finish; ended and the byte
        counts set), formatted now: a line is bytes, which the cycle collector never tracks,
        and the cost is paid evenly, request by request, not in a burst per batch."""
        try:
            line = self._line(ex)
        except Exception:
            # Never on the fields Exchange gives; should it happen, the request's end goes on
            # (drain, counters, the next request) and the line is counted as dropped.
            self.full += 1
            if not self._failed:
                self._failed = True
                log.exception("access_log: formatting a line failed; such lines are dropped and counted")
            return
        self.gathered.append(line)
        self.gathered_bytes += len(line)
        if self.gathered_bytes >= HAND_BYTES:
            self.flush()

    def _line(self, ex: "Exchange") -> bytes:
        server, env, route = ex.server, ex.env, ex.route
        up_head, up_sent = ex.up_head, ex.up_sent
        if self._json:
            where = (env.name if env is not None else None, server.address if server is not None else None,
                     route.generation if route is not None else None, outcome_of(ex))
            place = self._places.get(where)
            if place is None:
                place = self._places[where] = place_of(*where)
            return json_entry(ex.started, ex.ended, ex.client.client_ip, ex.method, ex.url, ex.http_minor, ex.status,
                              ex.bytes_in, ex.bytes_out,
                              ex.connect_time * 1000 if server is not None or ex.tried or ex.connect_time else -1.0,
                              (up_head - up_sent) * 1000 if up_head and up_sent else -1.0, place, ex.request_id,
                              self.offset, self._clock)
        return combined_entry(ex.started, ex.client.client_ip, ex.method, ex.url, ex.http_minor, ex.status,
                              ex.bytes_out, ex.request_id, ex.head.block, self.offset, self._clock)

    def _tick(self) -> None:
        self.offset = time.time() - time.monotonic()
        if len(self._places) > PLACES:
            self._places.clear()
        self.flush()
        if self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def flush(self) -> None:
        """flush: hand the lines gathered so far to the writer thread, in one batch (the tick,
        HAND_BYTES gathered, reopen, close)."""
        lines = self.gathered
        if not lines:
            return
        size = self.gathered_bytes
        self.gathered = []
        self.gathered_bytes = 0
        if self._writer.put(lines, size):
            self.lines += len(lines)
        else:
            self.full += len(lines)

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
        self._loop = None
        self.flush()
        self._writer.command(_STOP)
        if not await asyncio.to_thread(self._writer.join, timeout):
            log.warning("access_log: the writer did not finish within %ss (a blocked output?)", timeout)
