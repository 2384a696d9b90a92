"""Test etcd: a real ``etcd`` process (or three) on free loopback ports, with a temp data dir.

Used by the fleet's tests (tests/test_etcd_gateway_client.py first). `EtcdServer` is one
single-member cluster; `EtcdCluster` is several members that know each other by their
loopback peer URLs. Both are synchronous (a test that restarts a member while it awaits
something runs ``start``/``stop`` in a thread), every wait is bounded, and every process is
stopped by its PID — also at interpreter exit, if a test forgot.

`require_etcd` skips a test when the ``etcd`` binary is absent (.ci/run installs Debian's
etcd-server, so CI never skips). Watches need progress notifications to tell an idle stream
from a dead one; these servers send them every ``progress_interval`` (etcd's own default is
10 minutes).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

import pytest

from .ports import free_port

ETCD = shutil.which("etcd")
START_TIMEOUT = 15.0   # seconds for a member (or a cluster) to report healthy
STOP_TIMEOUT = 5.0     # seconds after SIGTERM before SIGKILL

_running: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


def require_etcd() -> str:
    """require_etcd: the path of the ``etcd`` binary; skips the calling test when there is none."""
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server; .ci/run does)")
    return ETCD


def _healthy(client_url: str) -> bool:
    try:
        # Short: a member without a leader yet holds /health until this passes.
        with urllib.request.urlopen(client_url + "/health", timeout=0.25) as answer:
            return b'"true"' in answer.read()
    except (OSError, urllib.error.URLError, ValueError):
        return False


class EtcdServer:
    """EtcdServer: one etcd member; alone it is a single-member cluster.

    ``endpoint`` is its client URL (http://127.0.0.1:port). ``start`` waits for /health;
    ``stop`` ends it (SIGTERM, then SIGKILL); ``start`` again restarts it on the same ports and
    data; ``pause``/``resume`` freeze it with SIGSTOP/SIGCONT (it keeps its sockets, so a
    client connects and then hears nothing). ``close`` stops it and deletes its data dir.
    """

    def __init__(self, name: str = "etcd0", *, initial_cluster: str | None = None,
                 client_port: int | None = None, peer_port: int | None = None,
                 cluster_token: str | None = None, progress_interval: str = "100ms",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self._chosen_ports = client_port is None and peer_port is None and initial_cluster is None
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token or f"cutover-{name}-{self.peer_port}"
        self.progress_interval = progress_interval
        self.extra_args = extra_args
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"cutover-{name}-"))
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint(self) -> str:
        """endpoint: the client URL, the one a client is given."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """peer_url: the URL other members reach this one on."""
        return f"http://127.0.0.1:{self.peer_port}"

    def argv(self) -> list[str]:
        """argv: the etcd command line for this member."""
        return [require_etcd(), "--name", self.name, "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
                "--initial-cluster-state", "new", "--initial-cluster-token", self.cluster_token,
                "--experimental-watch-progress-notify-interval", self.progress_interval,
                *self.extra_args]

    def launch(self) -> None:
        """launch: start the process without waiting for it (a cluster launches all, then waits)."""
        if self.running:
            return
        self._log = open(self.data_dir / "etcd.log", "ab")
        self.process = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        _running.add(self)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """wait_healthy: return once /health says true; RuntimeError with etcd's log if not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited ({self.returncode}):\n{self.log_tail()}")
            if _healthy(self.endpoint):
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout:g}s:\n{self.log_tail()}")

    def start(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """start: launch and wait until healthy; returns self.

        A first start on ports this server picked itself is tried again on new ones if another
        process took them in between (the port race of any "free port").
        """
        for attempt in range(3):
            self.launch()
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError:
                exited = self.process is not None and self.process.poll() is not None
                if not (exited and self._chosen_ports and "address already in use" in self.log_tail()
                        and attempt < 2):
                    self.stop()
                    raise
                self.stop()
                shutil.rmtree(self.data_dir / "data", ignore_errors=True)
                self.client_port, self.peer_port = free_port(), free_port()
        raise AssertionError("unreachable")

    @property
    def running(self) -> bool:
        """running: the process exists and has not exited (a paused one is running)."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """stop: SIGTERM (and SIGCONT, in case it is paused), then SIGKILL after ``timeout``."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        _running.discard(self)

    def kill(self) -> None:
        """kill: SIGKILL, no goodbye (a crash)."""
        if self.running:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.stop()

    def pause(self) -> None:
        """pause: SIGSTOP; connections are still accepted, nothing is answered."""
        if self.running:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """resume: SIGCONT after `pause`."""
        if self.running:
            os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """close: stop and delete the data dir."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """log_tail: the last lines etcd wrote (for error messages)."""
        try:
            text = (self.data_dir / "etcd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EtcdCluster:
    """EtcdCluster: ``size`` etcd members on loopback, one cluster; ``members[i]`` is an EtcdServer.

    ``endpoints`` lists every member's client URL, in member order. Stop and start one member
    with ``members[i].stop()`` / ``.start()``; the others keep quorum while a majority runs.
    """

    def __init__(self, size: int = 3, *, progress_interval: str = "100ms",
                 extra_args: tuple[str, ...] = ()) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"member{index}=http://127.0.0.1:{peer}" for index, (_, peer) in enumerate(ports))
        token = f"cutover-cluster-{ports[0][1]}"
        self.members = [EtcdServer(f"member{index}", initial_cluster=initial, client_port=client,
                                   peer_port=peer, cluster_token=token, progress_interval=progress_interval,
                                   extra_args=extra_args)
                        for index, (client, peer) in enumerate(ports)]

    @property
    def endpoints(self) -> list[str]:
        """endpoints: every member's client URL."""
        return [member.endpoint for member in self.members]

    def start(self, timeout: float = START_TIMEOUT) -> EtcdCluster:
        """start: launch every member, then wait until each one reports healthy (has a leader)."""
        try:
            for member in self.members:
                member.launch()
            deadline = time.monotonic() + timeout
            for member in self.members:
                member.wait_healthy(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """close: stop every member and delete their data."""
        for member in self.members:
            member.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.kill()
