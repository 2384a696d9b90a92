"""A fleet of real `cutover serve` processes on a real etcd survives its faults (SPEC §9.2).

Three replicas, each a process with its own ports, state_file and replica_id, share one etcd
prefix (a short lease_ttl and ack_timeout, so that a lease runs out within the test). A flip
taken by one is served by all three (each with two workers) for the next request after its 200. A replica killed
with SIGKILL is named pending while its lease lives and not waited for once it expired; one
stopped with SIGSTOP is named pending and catches up after SIGCONT. With etcd stopped every
replica serves on and every mutation answers 503, a replica restarted meanwhile serves the
last route from its local copy (one that joined after the flip too), and once etcd is back
every replica says it is connected, acks what it serves, and a mutation works. A three-member
etcd cluster with one member stopped keeps the fleet working; a replica whose watch fell behind
a compaction still converges. Processes are ended by their PID only.

What these faults uncovered is pinned here too: a replica that started from its local copy
makes its first change on top of etcd's state when that is what its copy held (and conflicts
when it is not), and a member that is shutting down (gRPC CANCELED) is skipped for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from admin.controller import ControlError
from admin.fleet.etcd import EtcdClient, EtcdOutcomeUnknown, compare_create_revision, put_op
from admin.serve import start as start_stack
from tests.support.backend import served_by
from tests.support.cli import assert_failed, cutover
from tests.support.etcdserver import EtcdCluster
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.processes import serve_config
from tests.support.rawhttp import connect, read_response
from tests.support.stack import proxy_config
from tests.support.wait import eventually

LEASE_TTL = 2            # seconds: the shortest etcd grants with the election timeout below
ACK_TIMEOUT = "1s"       # shorter than the lease: a replica paused or killed just now is still live
START_TIMEOUT = 20.0     # seconds for a `cutover serve` to answer on its admin API
FAST_ELECTIONS = ("--heartbeat-interval", "50", "--election-timeout", "500")


class Replica:
    """Replica: one `cutover serve` process of the fleet; started, paused, killed by its PID."""

    def __init__(self, home: Path, replica_id: str, backends: dict, endpoints: list[str], prefix: str,
                 workers: int = 1, **extra: str) -> None:
        home.mkdir()
        self.id = replica_id
        self.endpoints, self.prefix = endpoints, prefix
        self.port, self.admin_port = free_port(), free_port()
        store = {"etcd": {"endpoints": endpoints, "prefix": prefix, "lease_ttl": f"{LEASE_TTL}s",
                          "request_timeout": "500ms"}}
        self.state_file = home / "state.json"
        self.config = serve_config(home, backends, self.port, self.admin_port,
                                   state_file=json.dumps(str(self.state_file)), store=json.dumps(store),
                                   fleet=json.dumps({"replica_id": replica_id, "ack_timeout": ACK_TIMEOUT}),
                                   workers=workers, **extra)
        self.log = home / "serve.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, http: aiohttp.ClientSession) -> Replica:
        """start: launch `cutover serve`; returns once its admin API answers."""
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "admin.cli", "serve", "--config", str(self.config), cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

        async def answers() -> bool:
            assert self.process.returncode is None, f"replica {self.id} exited at start:\n{self.log_tail()}"
            try:
                async with http.get(self.admin + "/v1/status", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await eventually(answers, timeout=START_TIMEOUT, interval=0.05, what=f"replica {self.id} answering")
        return self

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):     # it ended, not reaped yet
                os.kill(self.process.pid, signum)

    async def kill(self) -> None:
        """kill: SIGKILL (SIGCONT first, should it be paused: after SIGKILL the process may be
        gone and reaped already); returns once it is gone."""
        if self.process is not None and self.process.returncode is None:
            self.signal(signal.SIGCONT)
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 5)

    async def stop(self) -> int:
        """stop: SIGTERM, a graceful shutdown (its workers stopped with it); its exit status (bounded)."""
        self.signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def end(self) -> None:
        """end: after the test: SIGCONT and a graceful stop; SIGKILL if that does not end it in time."""
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGCONT)
        try:
            await self.stop()
        except TimeoutError:
            await self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
async def http():
    """http: the test's client of the replicas' admin APIs and listeners (every call bounded)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as made:
        yield made


@pytest.fixture
async def fleet(tmp_path, backends, http, request):
    """fleet(count, endpoints, workers=1, **config) -> [Replica]: started at once, each seeing every replica
    this test started registered in etcd (a second call adds replicas to the fleet); all ended after."""
    started: list[Replica] = []
    prefix = f"/test/{request.node.name}"

    async def start(count: int, endpoints: list[str], workers: int = 1, **extra: str) -> list[Replica]:
        first = len(started)
        replicas = [Replica(tmp_path / f"r{i}", f"r{i}", backends, endpoints, prefix, workers, **extra)
                    for i in range(first, first + count)]
        started.extend(replicas)
        await asyncio.gather(*(r.start(http) for r in replicas))
        ids = sorted(r.id for r in started)
        for r in replicas:
            await eventually(lambda: members(http, r, ids), timeout=10, interval=0.05,
                             what=f"replica {r.id} seeing the whole fleet registered")
        return replicas

    yield start
    await asyncio.gather(*(r.end() for r in started))


async def status(http: aiohttp.ClientSession, replica: Replica) -> dict:
    async with http.get(replica.admin + "/v1/status") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def members(http: aiohttp.ClientSession, replica: Replica, ids: list[str]) -> bool:
    """members: whether ``replica``'s status lists exactly ``ids`` as the live fleet."""
    listed = (await status(http, replica))["fleet"]["replicas"]
    return sorted(m["id"] for m in listed) == ids


async def mutate(http: aiohttp.ClientSession, replica: Replica, path: str, body: dict | None = None
                 ) -> tuple[int, dict]:
    async with asyncio.timeout(15), http.post(replica.admin + path, json=body or {}) as resp:
        return resp.status, await resp.json()


async def acked(replica: Replica, generation: int) -> bool:
    """acked: whether etcd holds, for every replica registered, an ack of ``generation`` under the
    lease it registered with (not one a predecessor left under a lease still running out)."""
    async with EtcdClient(replica.endpoints, request_timeout=1.0) as client:
        registered, _ = await client.get_prefix(f"{replica.prefix}/replicas/")
        acks, _ = await client.get_prefix(f"{replica.prefix}/acks/")
    leases = {kv.key.rsplit("/", 1)[-1]: kv.lease for kv in registered}
    held = {kv.key.rsplit("/", 1)[-1]: (kv.lease, json.loads(kv.value)["generation"]) for kv in acks}
    return bool(leases) and all(held.get(name) == (lease, generation) for name, lease in leases.items())


async def converged(http: aiohttp.ClientSession, replicas: list[Replica], env: str, generation: int) -> bool:
    """converged: every replica serves ``env`` and reports ``generation``."""
    for r in replicas:
        if await served_by(http, r.port) != env or (await status(http, r))["generation"] != generation:
            return False
    return True


# ---------------------------------------------------------------- the tests


async def test_a_flip_on_one_replica_is_served_by_every_replica_for_the_next_request(fleet, etcd, http):
    replicas = await fleet(3, [etcd.endpoint], workers=2)   # a replica acks once both its workers applied
    for r in replicas:
        assert await served_by(http, r.port) == "blue"
    code, answer = await mutate(http, replicas[0], "/v1/flip")
    assert code == 200, answer
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}, answer
    for r in replicas:                              # new connections, whichever worker takes each
        assert [await served_by(http, r.port) for _ in range(4)] == ["green"] * 4, r.log_tail()
    code, answer = await mutate(http, replicas[2], "/v1/flip")          # and back, taken by another
    assert code == 200 and answer["live"] == "blue" and answer["ack"]["complete"], answer
    for r in replicas:
        assert [await served_by(http, r.port) for _ in range(4)] == ["blue"] * 4
        assert (await status(http, r))["generation"] == answer["generation"]


async def test_a_replica_killed_is_named_pending_while_its_lease_lives_and_not_waited_for_after(
        fleet, etcd, http):
    r0, r1, r2 = await fleet(3, [etcd.endpoint])
    await r2.kill()                                   # SIGKILL: no goodbye, its lease runs on
    code, answer = await mutate(http, r0, "/v1/flip")
    assert code == 202, answer
    assert answer["ack"] == {"complete": False, "acked": ["r0", "r1"], "pending": ["r2"]}, answer
    assert answer["live"] == "green"                  # committed, not confirmed everywhere
    await eventually(lambda: members(http, r1, ["r0", "r1"]), timeout=LEASE_TTL + 3, interval=0.1,
                     what="r2's lease expiring")
    code, answer = await mutate(http, r1, "/v1/flip")
    assert code == 200, answer
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1"], "pending": []}, answer
    for r in (r0, r1):
        assert await served_by(http, r.port) == "blue"


async def test_a_replica_paused_is_named_pending_and_catches_up_when_it_continues(fleet, etcd, http):
    r0, r1, r2 = await fleet(3, [etcd.endpoint])
    r2.signal(signal.SIGSTOP)
    try:
        result = await cutover("--admin", r0.admin, "flip")        # the CLI: exit 1, naming it
        line = assert_failed(result, 1, "not_confirmed")
        assert "pending: r2" in line, line
        for r in (r0, r1):
            assert await served_by(http, r.port) == "green"
    finally:
        r2.signal(signal.SIGCONT)
    generation = (await status(http, r0))["generation"]
    await eventually(lambda: converged(http, [r2], "green", generation), timeout=10, interval=0.05,
                     what="r2 serving the flip it missed while paused")
    await eventually(lambda: members(http, r0, ["r0", "r1", "r2"]), timeout=10, interval=0.05,
                     what="r2 registered again")
    code, answer = await mutate(http, r1, "/v1/flip")
    assert code == 200, answer
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}, answer
    for r in (r0, r1, r2):
        assert await served_by(http, r.port) == "blue"


async def test_a_replica_paused_past_its_lease_serves_nothing_by_its_old_route_when_it_continues(
        fleet, etcd, http):
    """Fencing: r2 is paused until its lease ran out, so a flip answers 200 without it; requests
    already waiting in r2's sockets when it continues must go by the new route, never the old."""
    r0, r1, r2 = await fleet(3, [etcd.endpoint], workers=2)
    request = b"GET / HTTP/1.1\r\nHost: fleet\r\n\r\n"
    conns = [await connect(r2.port) for _ in range(12)]
    try:
        for reader, writer in conns:                 # keep-alive connections serving blue
            writer.write(request)
            assert (await asyncio.wait_for(read_response(reader), 5)).body.strip() == b"blue"
        r2.signal(signal.SIGSTOP)
        try:
            await eventually(lambda: members(http, r0, ["r0", "r1"]), timeout=LEASE_TTL + 5, interval=0.1,
                             what="r2's lease running out while it is paused")
            code, answer = await mutate(http, r0, "/v1/flip")
            assert code == 200 and answer["ack"]["acked"] == ["r0", "r1"], answer
            for reader, writer in conns:             # waiting in r2's sockets when it continues
                writer.write(request)
                await writer.drain()
        finally:
            r2.signal(signal.SIGCONT)
        served = [(await asyncio.wait_for(read_response(reader), 10)).body.strip() for reader, _ in conns]
        assert served == [b"green"] * len(conns), (served, r2.log_tail())
    finally:
        for _, writer in conns:
            writer.close()
    await eventually(lambda: members(http, r0, ["r0", "r1", "r2"]), timeout=10, interval=0.05,
                     what="r2 registered again")


async def test_an_analysis_whose_replica_is_killed_is_recorded_cancelled_once_by_another(fleet, etcd, http):
    """Analysis runs on the replica that took the flip; SIGKILLed while it runs, its lease lapses
    and one of the others records the analysis as cancelled: one entry in the fleet's history,
    naming the replica and the generation, seen on every replica left."""
    r0, r1, r2 = await fleet(3, [etcd.endpoint], analysis="{window: 60s, interval: 500ms}")
    code, answer = await mutate(http, r0, "/v1/flip")
    assert code == 200, answer
    generation = answer["generation"]
    assert (await status(http, r0))["analysis"]["state"] == "running"
    assert (await status(http, r1))["analysis"] is None          # it runs on r0 only
    await r0.kill()

    async def recorded(replica: Replica) -> list[dict]:
        async with http.get(replica.admin + "/v1/history") as resp:
            events = (await resp.json())["events"]
        return [e for e in events if e["action"] == "analysis_cancelled"]

    found = await eventually(lambda: recorded(r1), timeout=LEASE_TTL + 10, interval=0.1,
                             what="the analysis recorded as cancelled after r0's lease lapsed")
    assert len(found) == 1, found
    assert found[0]["analysis_generation"] == generation and "replica r0" in found[0]["reason"], found
    await eventually(lambda: recorded(r2), timeout=5, interval=0.1, what="r2 taking the record")
    assert len(await recorded(r2)) == 1 and len(await recorded(r1)) == 1
    for r in (r1, r2):                                            # the route stays as it was
        assert await served_by(http, r.port) == "green"


async def test_an_analysis_that_ended_is_not_recorded_cancelled_when_its_replica_dies_later(fleet, etcd, http):
    r0, r1 = await fleet(2, [etcd.endpoint], analysis="{window: 1s, interval: 200ms}")
    code, answer = await mutate(http, r0, "/v1/flip")
    assert code == 200, answer

    async def passed() -> bool:
        return ((await status(http, r0))["analysis"] or {}).get("state") == "passed"

    await eventually(passed, timeout=10, interval=0.1, what="the analysis passing")
    await r0.kill()
    await eventually(lambda: members(http, r1, ["r1"]), timeout=LEASE_TTL + 5, interval=0.1,
                     what="r0's lease expiring")
    async with http.get(r1.admin + "/v1/history") as resp:
        events = (await resp.json())["events"]
    assert not [e for e in events if e["action"] == "analysis_cancelled"], events


async def test_with_etcd_stopped_replicas_serve_on_refuse_mutations_and_converge_once_it_is_back(
        fleet, etcd, http):
    r0, r1 = await fleet(2, [etcd.endpoint])
    code, answer = await mutate(http, r0, "/v1/flip")
    assert code == 200 and answer["ack"]["complete"], answer
    generation = answer["generation"]
    [r2] = await fleet(1, [etcd.endpoint])          # joins later: it read the flip from etcd at start
    assert await served_by(http, r2.port) == "green"
    await asyncio.to_thread(etcd.stop)
    try:
        for r in (r0, r1, r2):
            assert await served_by(http, r.port) == "green"              # fail static: the last route
        code, answer = await mutate(http, r1, "/v1/rollback")
        assert code == 503 and answer["code"] == "store_unavailable", answer
        code, answer = await mutate(http, r2, "/v1/lock", {"reason": "freeze"})
        assert code == 503 and answer["code"] == "store_unavailable", answer
        store = (await status(http, r1))["store"]
        assert store["connected"] is False and store["since"], store
        assert await r2.stop() == 0                                  # restarted during the outage
        await r2.start(http)
        for r in (r0, r1, r2):
            assert await served_by(http, r.port) == "green", r.log_tail()  # r2 from its local copy
            state = await status(http, r)
            assert (state["live"], state["generation"], state["locked"]) == ("green", generation, False)
    finally:
        await asyncio.to_thread(etcd.start)

    async def connected() -> bool:
        return all([(await status(http, r))["store"]["connected"] for r in (r0, r1, r2)])

    await eventually(connected, timeout=10, interval=0.1, what="every replica hearing etcd again")
    await eventually(lambda: acked(r0, generation), timeout=10, interval=0.1,
                     what=f"every replica acking generation {generation} under its own lease")
    code, answer = await mutate(http, r2, "/v1/rollback")
    assert code == 200, (answer.get("ack"), [r.log_tail(25) for r in (r0, r1, r2)])
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}, answer
    assert answer["generation"] == generation + 1
    assert await converged(http, [r0, r1, r2], "blue", generation + 1)


async def test_a_three_member_etcd_with_one_member_stopped_keeps_the_fleet_working(fleet, http):
    cluster = EtcdCluster(3, progress_interval="50ms", extra_args=FAST_ELECTIONS)
    await asyncio.to_thread(cluster.start)
    try:
        r0, r1, r2 = await fleet(3, cluster.endpoints)
        code, answer = await mutate(http, r0, "/v1/flip")
        assert code == 200 and answer["ack"]["complete"], answer
        first = cluster.members[0]                   # every replica's first endpoint
        await asyncio.to_thread(first.stop)
        for name, code, answer in [("r1", *await mutate(http, r1, "/v1/flip")),
                                   ("r2", *await mutate(http, r2, "/v1/flip"))]:
            assert code == 200, (name, answer)
            assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}, answer
        assert await converged(http, [r0, r1, r2], "green", answer["generation"])
    finally:
        await asyncio.to_thread(cluster.close)


async def compact_now(replica: Replica) -> int:
    """compact_now: compact etcd's history up to its current revision; that revision."""
    async with EtcdClient(replica.endpoints, request_timeout=2.0) as client:
        _, revision = await client.get_prefix(replica.prefix + "/")
        await client.compact(revision, physical=True)
    return revision


async def test_a_replica_whose_watch_fell_behind_a_compaction_still_converges(fleet, etcd, http):
    r0, r1, r2 = await fleet(3, [etcd.endpoint])
    r2.signal(signal.SIGSTOP)                       # its watch stops at the revision it had read
    try:
        code, answer = await mutate(http, r0, "/v1/flip")
        assert code == 202 and answer["ack"]["pending"] == ["r2"], answer
        await compact_now(r0)                       # the flip's revision is history now
    finally:
        r2.signal(signal.SIGCONT)
    await eventually(lambda: converged(http, [r0, r1, r2], "green", answer["generation"]), timeout=10,
                     interval=0.05, what="r2 taking the flip from behind the compaction")
    await eventually(lambda: acked(r0, answer["generation"]), timeout=10, interval=0.05,
                     what="r2 registered again and acking the flip")
    await compact_now(r0)                           # past what every replica watches from
    code, answer = await mutate(http, r1, "/v1/flip")
    assert code == 200, answer
    assert answer["ack"] == {"complete": True, "acked": ["r0", "r1", "r2"], "pending": []}, answer
    assert await converged(http, [r0, r1, r2], "blue", answer["generation"])


async def test_a_replica_started_from_its_local_copy_changes_the_fleet_once_etcd_is_back(
        etcd, backends, tmp_path, request):
    # In one process, with the followers and the lease renewals stopped (a replica that joins
    # once etcd is back re-reads the state first: fencing): the change is taken before any re-read.
    def config(name: str):
        return proxy_config(tmp_path, backends, state_file=str(tmp_path / f"{name}.json"),
                            store={"etcd": {"endpoints": [etcd.endpoint], "prefix": f"/test/{request.node.name}",
                                            "lease_ttl": f"{LEASE_TTL}s", "request_timeout": "500ms"}},
                            fleet={"replica_id": name, "ack_timeout": ACK_TIMEOUT})

    first = await start_stack(config("a"))
    try:
        assert (await first.controller.flip())["generation"] == 2
    finally:
        await first.stop(0.5)
    for name in ("b", "c"):                        # two replicas whose last state is that flip
        shutil.copy(tmp_path / "a.json", tmp_path / f"{name}.json")
    started = []
    await asyncio.to_thread(etcd.stop)
    try:
        for name in ("b", "c"):
            started.append(await start_stack(config(name)))
            started[-1].controller._follow_task.cancel()
            started[-1].fleet.membership._task.cancel()
        b, c = started
        assert [r.controller.state.generation for r in started] == [2, 2]     # from the local copies
        assert [r.controller.store.info()["connected"] for r in started] == [False, False]
    finally:
        await asyncio.to_thread(etcd.start)
    try:
        await eventually(lambda: all(r.controller.store.info()["connected"] for r in started), timeout=10,
                         interval=0.05, what="both replicas hearing etcd again")
        # etcd holds what b's copy holds: b's change was made on top of it, and is no conflict
        answer = await b.controller.rollback(reason="after the outage")
        assert (answer["live"], answer["generation"]) == ("blue", 3), answer
        # c's copy is behind etcd now: its change would undo b's, so it is refused, and c takes b's
        with pytest.raises(ControlError) as refused:
            await c.controller.flip()
        assert refused.value.code == "conflict"
        assert (c.controller.state.live, c.controller.state.generation) == ("blue", 3)
    finally:
        for r in started:
            await r.stop(0.5)


async def test_an_etcd_member_shutting_down_is_skipped_for_the_next_one(etcd, request):
    # A member that is stopping still answers on its client port for a moment, every call with
    # gRPC CANCELED ("the client connection is closing", HTTP 408): it cannot serve; another may.
    async def closing(_request: web.Request) -> web.Response:
        message = "grpc: the client connection is closing"
        return web.json_response({"error": message, "code": 1, "message": message}, status=408)

    app = web.Application()
    app.router.add_post("/{path:.*}", closing)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    stopping = f"http://127.0.0.1:{sock.getsockname()[1]}"
    key = f"/test/{request.node.name}/k"
    try:
        async with EtcdClient([stopping, etcd.endpoint], request_timeout=2.0) as client:
            await client.get(key)                                  # a read moves on to the next member
            assert client.endpoint == etcd.endpoint
        async with EtcdClient([stopping, etcd.endpoint], request_timeout=2.0) as client:
            with pytest.raises(EtcdOutcomeUnknown):                # a write may have been applied
                await client.txn([compare_create_revision(key, "==", 0)], [put_op(key, b"v")])
            assert client.endpoint == etcd.endpoint
    finally:
        await runner.cleanup()
