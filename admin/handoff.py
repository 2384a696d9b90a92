"""handoff: upgrade or restart cutover under load without refusing a connection (SIGUSR2).

``kill -USR2 <pid of cutover serve>`` starts a successor: the same command line (so a new
install's code and the config file as it is now) with the very listening sockets of listen,
preview_listen and the admin API handed over as inherited file descriptors. The sockets never
close, so no connection queued on them is reset (whatever net.ipv4.tcp_migrate_req says).

The two processes take turns over a socket pair, so that exactly one control plane steers
and no request is routed by a route the answer of a change has superseded:

1. The predecessor takes the controller's lock (no mutation runs from here on) and starts
   the successor.
2. The successor reads the state file (every acknowledged change is in it), starts its data
   plane on the inherited sockets, and says "ready". Both now accept, by the same route.
3. The predecessor stops accepting on its data plane and stops its admin listener (its
   backlog stays with the successor; it keeps its own descriptors of the sockets), then says
   "go", with its counters as they are then (requests, responses, bytes, errors: the
   successor counts on from them, so they never go back; what the predecessor finishes while
   it drains is not counted).
4. The successor starts its admin API on the inherited socket and says "serving"; the
   predecessor drains what it had in flight and exits 0.

If the successor fails to start (it exits, or is not ready within READY_TIMEOUT) the
predecessor goes on serving as before and logs why; nothing changed. If it exits after its
"ready" but before its "serving" (or does not serve within SERVING_TIMEOUT: it is killed),
the predecessor backs out: it accepts again on the sockets it kept, its admin API included,
and serves on as before. A successor that closes the channel without a word once it serves
(an older cutover) counts as serving unless it exits within a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("cutover.handoff")

INHERIT = "CUTOVER_INHERIT"   # environment variable: the handed-over file descriptors, as JSON
READY_TIMEOUT = 60.0          # seconds a successor may take to serve
GO_TIMEOUT = 30.0             # seconds a successor waits for its predecessor to stop accepting
SERVING_TIMEOUT = 30.0        # seconds a predecessor waits, after its "go", for the successor's "serving"
QUIET_GRACE = 1.0             # seconds a successor that closed the channel without a word has to exit


@dataclass
class Inherited:
    """Inherited: the sockets a predecessor handed this process, and the channel to it."""

    listens: list[socket.socket]
    previews: list[socket.socket]
    admin: socket.socket
    channel: socket.socket
    workers: int | None = None      # the predecessor's workers (None: an older one did not say)

    @classmethod
    def take(cls, environ: dict | None = None) -> "Inherited | None":
        """take: the sockets named by CUTOVER_INHERIT (removed from the environment), or None."""
        environ = os.environ if environ is None else environ
        text = environ.pop(INHERIT, None)
        if not text:
            return None
        fds = json.loads(text)
        return cls(listens=[socket.socket(fileno=fd) for fd in fds["listen"]],
                   previews=[socket.socket(fileno=fd) for fd in fds["preview"]],
                   admin=socket.socket(fileno=fds["admin"]), channel=socket.socket(fileno=fds["channel"]),
                   workers=fds.get("workers"))

    async def ready_then_wait(self) -> bytes | None:
        """ready_then_wait: tell the predecessor this data plane serves; return once it stopped
        accepting (its "go"), or it is gone, or GO_TIMEOUT passed: the counters its "go" carried
        (a pickled Snapshot), or None when none came."""
        loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        await loop.sock_sendall(self.channel, b"ready\n")
        got = b""
        try:
            async with asyncio.timeout(GO_TIMEOUT):
                while b"\n" not in got:
                    chunk = await loop.sock_recv(self.channel, 65536)
                    if not chunk:
                        return None          # gone: it backed out, or an older one closed after "go"
                    got += chunk
                line, _, got = got.partition(b"\n")
                size = int(line[3:]) if line.startswith(b"go ") and line[3:].isdigit() else 0
                while len(got) < size:
                    chunk = await loop.sock_recv(self.channel, max(65536, size - len(got)))
                    if not chunk:
                        return None
                    got += chunk
                return got[:size] or None
        except TimeoutError:
            log.warning("the predecessor's go (or all of the counters it carries) did not come within %ss; "
                        "going on", GO_TIMEOUT)
            return None

    async def serving(self) -> None:
        """serving: tell the predecessor the admin API serves too: it drains and exits now."""
        try:
            await asyncio.get_running_loop().sock_sendall(self.channel, b"serving\n")
        except OSError:
            pass            # a predecessor that does not wait for it has closed its end
        self.channel.close()


async def hand_over(fds: dict[str, list[int] | int], stop_accepting: Callable[[], Awaitable[None]],
                    resume_accepting: Callable[[], Awaitable[None]],
                    argv: list[str] | None = None,
                    counters: Callable[[], Awaitable[bytes]] | None = None) -> asyncio.subprocess.Process | None:
    """hand_over: start the successor with ``fds`` (listen, preview, admin); once its data plane
    serves, run ``stop_accepting`` and let it go on, its "go" carrying what ``counters`` gives
    then (the successor counts on from there); if it dies before its admin API serves, run
    ``resume_accepting``. Returns its process, or None when it did not take over (this process
    then serves on as before)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    passed = [*fds["listen"], *fds["preview"], fds["admin"], theirs.fileno()]   # type: ignore[misc]
    # (fds["workers"], the count of the predecessor's workers, travels in the JSON only)
    env = dict(os.environ)
    env[INHERIT] = json.dumps({**fds, "channel": theirs.fileno()})
    argv = argv or [sys.executable, *sys.orig_argv[1:]]
    try:
        process = await asyncio.create_subprocess_exec(*argv, pass_fds=passed, env=env)
    except OSError as exc:
        log.error("upgrade: cannot start the successor (%s); serving on", exc)
        ours.close()
        return None
    finally:
        theirs.close()
    ours.setblocking(False)
    log.info("upgrade: started successor %d; waiting until it serves", process.pid)
    exited = asyncio.ensure_future(process.wait())
    said = asyncio.ensure_future(loop.sock_recv(ours, 16))
    try:
        done, _ = await asyncio.wait({exited, said}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if said not in done or not said.result().startswith(b"ready"):
        said.cancel()
        ours.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.error("upgrade: the successor %d did not start (exit status %s); serving on as before",
                  process.pid, process.returncode)
        return None
    await stop_accepting()
    payload = b""
    if counters is not None:
        try:
            payload = await counters()
        except Exception:           # the counters are a courtesy: the handover goes on without them
            log.exception("upgrade: the counters could not be read; the successor counts from zero")
    # Sent while waiting for "serving": a successor that does not read its "go" (a payload over
    # the socket's buffer would block the send) is killed at SERVING_TIMEOUT like a silent one.
    send = asyncio.ensure_future(loop.sock_sendall(ours, b"go %d\n" % len(payload) + payload))
    served = await _serves(process, ours)
    if not send.done():
        send.cancel()
    elif not send.cancelled():
        send.exception()            # a successor gone before it read: _serves saw it exit (backed out)
    ours.close()
    if served:
        log.info("upgrade: successor %d serves; draining and exiting", process.pid)
        return process
    log.error("upgrade: the successor %d exited (status %s) before its admin API served; accepting again "
              "and serving on as before", process.pid, process.returncode)
    await resume_accepting()
    return None


async def _serves(process: asyncio.subprocess.Process, channel: socket.socket) -> bool:
    """_serves: whether the successor says "serving" (or closes the channel and lives on); False
    when it exits first or is silent for SERVING_TIMEOUT (then it is killed)."""
    loop = asyncio.get_running_loop()
    exited = asyncio.ensure_future(process.wait())
    said = asyncio.ensure_future(loop.sock_recv(channel, 16))
    try:
        done, _ = await asyncio.wait({exited, said}, timeout=SERVING_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        # A reset channel (the successor exited with "go" unread) is a channel closed, as EOF.
        if said in done and said.exception() is None and said.result().startswith(b"serving"):
            return True
        if said in done and exited not in done:
            done, _ = await asyncio.wait({exited}, timeout=QUIET_GRACE)     # closed without a word
            return exited not in done
        if exited not in done:
            log.error("upgrade: the successor %d did not serve its admin API within %ss; killing it",
                      process.pid, SERVING_TIMEOUT)
            process.kill()
            await process.wait()
        return False
    finally:
        said.cancel()
        exited.cancel()
