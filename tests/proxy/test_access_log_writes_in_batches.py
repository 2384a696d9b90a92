"""The access log's writer (proxy/accesslog.py) without sockets: lines are written per batch,
never per request; a writer that falls behind drops whole batches and counts them, without
holding up the event loop; reopen sends later lines to the path opened again; close writes
what is left. Requests are driven through a Rig; the log writes real files and pipes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

from proxy.accesslog import HAND_BYTES, WRITE_PIECE, AccessLog
from proxy.settings import AccessLogConfig
from tests.support.fakes import Rig
from tests.support.logfile import logged_lines
from tests.support.wait import eventually

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def requests(rig: Rig, n: int, tag: str = "r") -> None:
    for i in range(n):
        rig.send(b"GET /%s%d HTTP/1.1\r\nHost: h\r\n\r\n" % (tag.encode(), i))
        rig.answer(OK)


def targets(path) -> list[str]:
    """targets: the target of each whole line in the file (tests/support/logfile.py)."""
    return [line["target"] for line in logged_lines(Path(path))]


async def started(rig: Rig, interval: float = 3600.0, limit: int | None = None) -> AccessLog:
    """started: rig's access log, started on this loop (a long interval: only explicit flushes write)."""
    log = rig.proxy.access_log
    assert log is not None
    log.interval = interval
    if limit is not None:
        log._writer.limit = limit
    log.start(asyncio.get_running_loop())
    return log


async def test_requests_are_written_when_the_batch_is_flushed_not_one_by_one(tmp_path):
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)
    try:
        await eventually(path.exists, what="the writer thread opened the file")
        requests(rig, 5)
        assert len(log.gathered) == 5
        await asyncio.sleep(0)                 # nothing is written before the flush
        assert path.read_bytes() == b""
        log.flush()
        assert log.gathered == [] and log.gathered_bytes == 0
        await eventually(lambda: targets(path) == [f"/r{i}" for i in range(5)])
        assert log.lines == 5 and log.dropped == 0
    finally:
        await log.close()


async def test_the_loop_timer_flushes_by_itself(tmp_path):
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig, interval=0.02)
    try:
        requests(rig, 3)
        await eventually(lambda: len(targets(path)) == 3, timeout=5)
    finally:
        await log.close()


async def test_close_writes_what_is_left(tmp_path):
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)
    requests(rig, 2)
    await log.close()
    assert targets(path) == ["/r0", "/r1"]


async def test_reopen_sends_later_lines_to_the_new_file_and_loses_none(tmp_path):
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)
    try:
        requests(rig, 3, "old")
        log.flush()
        await eventually(lambda: len(targets(path)) == 3)
        requests(rig, 2, "gathered")          # finished before the rotation, not flushed yet
        os.rename(path, rotated)
        log.reopen()
        await eventually(path.exists, what="the path opened again")
        requests(rig, 4, "new")
        log.flush()
        await eventually(lambda: len(targets(path)) == 4)
        assert targets(rotated) == ["/old0", "/old1", "/old2", "/gathered0", "/gathered1"]
        assert targets(path) == ["/new0", "/new1", "/new2", "/new3"]
    finally:
        await log.close()


async def test_a_blocked_pipe_never_blocks_the_loop_and_overflow_is_counted(tmp_path):
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    rig = Rig(access_log={"path": f"/proc/self/fd/{write_end}"})
    log = await started(rig, limit=200_000)
    try:
        # Nobody reads the pipe: once its buffer is full the writer thread blocks in write(2).
        for _ in range(40):
            requests(rig, 100)
            log.flush()                           # never waits for the thread
        assert log.dropped > 0 and log.lines + log.dropped == 4000
        assert rig.proxy.snapshot().access_log_dropped == log.dropped
        # Draining the pipe lets the writer go on; what was queued arrives as whole lines.
        got = bytearray()

        def drained() -> bool:
            try:
                while chunk := os.read(read_end, 1 << 16):
                    got.extend(chunk)
            except BlockingIOError:
                pass
            return got.count(b"\n") == log.lines

        await eventually(drained, timeout=10, what="every queued line written")
        assert all(json.loads(line)["status"] == 200 for line in got.splitlines())
    finally:
        os.set_blocking(read_end, True)
        await log.close()
        os.close(read_end)
        os.close(write_end)


async def test_a_path_that_cannot_be_opened_drops_and_counts_its_lines(tmp_path):
    missing = tmp_path / "gone" / "access.log"
    log = AccessLog(AccessLogConfig(path=str(missing)))
    rig = Rig()
    rig.proxy.access_log = log
    log.interval = 3600.0
    log.start(asyncio.get_running_loop())
    try:
        requests(rig, 3)
        log.flush()
        await eventually(lambda: log.dropped == 3)
        os.mkdir(tmp_path / "gone")
        log.reopen()                              # SIGUSR1 tries again
        requests(rig, 2)
        log.flush()
        await eventually(lambda: len(targets(missing)) == 2)
        assert log.dropped == 3
    finally:
        await log.close()


async def test_each_tick_hands_what_gathered_and_the_lines_stay_in_order(tmp_path):
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)
    try:
        requests(rig, 300)
        log._tick()                              # the timer: everything gathered, in one batch
        assert (log.lines, log.gathered) == (300, [])
        requests(rig, 300, tag="s")
        log._tick()
        await eventually(lambda: len(targets(path)) == 600, what="every line")
        assert targets(path) == [f"/r{i}" for i in range(300)] + [f"/s{i}" for i in range(300)]
        assert log.lines == 600 and log.dropped == 0
    finally:
        await log.close()


async def test_hand_bytes_gathered_go_to_the_writer_without_waiting_for_the_tick(tmp_path):
    """Requests that end faster than the interval hands them on would gather without bound;
    past HAND_BYTES the lines go to the writer at once."""
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)                     # its tick is an hour away
    long = "x" * 4000
    try:
        sent = 0
        while log.lines == 0 and sent < 2 * HAND_BYTES // len(long):
            requests(rig, 1, tag=f"{long}-{sent}-")
            sent += 1
        assert log.lines == sent and log.gathered == []
        await eventually(lambda: len(targets(path)) == sent, what="the handed lines")
        assert targets(path) == [f"/{long}-{i}-0" for i in range(sent)]
        written = path.read_bytes()           # handed once the line that passed HAND_BYTES came
        assert len(written) >= HAND_BYTES > len(written) - len(written.splitlines(keepends=True)[-1])
    finally:
        await log.close()


async def test_what_a_log_replaced_by_a_reload_drops_while_it_closes_is_counted(tmp_path):
    missing = tmp_path / "gone" / "access.log"          # a path the config would refuse now
    rig = Rig()
    before = rig.proxy.access_log = AccessLog(AccessLogConfig(path=str(missing)), interval=3600.0)
    before.start(asyncio.get_running_loop())
    await eventually(lambda: before._writer._fd is None and before._writer._runner.is_alive(),
                     what="the writer tried the path")
    requests(rig, 3)                                  # gathered, not handed yet: the tick is an hour away
    assert before.dropped == 0
    rig.proxy.configure(dataclasses.replace(rig.proxy.settings,
                                            access_log=AccessLogConfig(path=str(tmp_path / "new.log"))))
    assert rig.proxy.access_log is not before
    # Its last batch cannot be written either; the count never goes back while it closes.
    seen = []
    await eventually(lambda: seen.append(rig.proxy.snapshot().access_log_dropped) or seen[-1] == 3,
                     what="the closing log's drops counted")
    await eventually(lambda: not rig.proxy._closing_tasks, what="the replaced log closed")
    assert rig.proxy.snapshot().access_log_dropped == 3 and seen == sorted(seen)
    requests(rig, 2)
    await rig.proxy.access_log.close()
    assert len(targets(tmp_path / "new.log")) == 2 and rig.proxy.snapshot().access_log_dropped == 3


async def test_a_file_is_written_in_pieces_of_whole_lines_of_at_most_write_piece_bytes(tmp_path, monkeypatch):
    """One write(2) of a batch of megabytes ran for milliseconds on the CPU the loop waits for."""
    path = tmp_path / "access.log"
    rig = Rig(access_log={"path": str(path)})
    log = await started(rig)
    pieces: list[bytes] = []
    write = os.write

    def recorded(fd: int, data) -> int:
        done = write(fd, data)
        if fd == log._writer._fd:
            pieces.append(bytes(data[:done]))
        return done

    monkeypatch.setattr(os, "write", recorded)
    try:
        requests(rig, 100, tag="x" * 2000 + "-")      # lines of about 2.3 KB: about 230 KB
        log.flush()
        await eventually(lambda: len(targets(path)) == 100, what="every line")
        # The writer thread records a piece once its write returned: the file can show it first.
        await eventually(lambda: b"".join(pieces).count(b"\n") == 100, what="every piece recorded")
        assert b"".join(pieces) == path.read_bytes()
        assert len(pieces) >= 3 and all(len(piece) <= WRITE_PIECE and piece.endswith(b"\n") for piece in pieces)
    finally:
        await log.close()
