"""Gates: checks a switch must pass before traffic moves to a target environment (SPEC §6).

run_gates is called by the Controller (unless the call is forced) with GateInputs
(a snapshot source, the preview token, the attestations, the gates config) and
returns one GateResult per gate, in order: health (every server of the target
healthy), drift (fingerprints of both environments differ only in allow-listed
keys), schema (a command, or an attestation for exactly this pair of versions),
smoke (probes with expected status and body through the preview route) and
warm-up (requests to configured paths, last, so caches are warm when users
arrive). Later gates are skipped once one fails. The gates read the data plane
only through snapshots and send HTTP only through a Fetch, so they run without
a Router and, given a fake Fetch, without sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from proxy import Route, Snapshot

    from .config import GatesConfig

PROBE_TIMEOUT = 5.0          # seconds per smoke, warm-up or fingerprint request
SCHEMA_TIMEOUT = 120.0       # seconds for the schema command

# Fetch(method, url, headers, follow_redirects) -> (status, body as text): one HTTP request.
# Raises aiohttp.ClientError or asyncio.TimeoutError when no answer comes.
Fetch = Callable[[str, str, dict[str, str], bool], Awaitable[tuple[int, str]]]
# Opener(timeout) -> an async context manager giving a Fetch (http_fetch, or a test's own).
Opener = Callable[[float], AbstractAsyncContextManager[Fetch]]


@asynccontextmanager
async def http_fetch(timeout: float) -> AsyncIterator[Fetch]:
    """http_fetch: a Fetch over one aiohttp session (``timeout`` seconds per request), open for the block.

    run_gates and Analysis use it; their tests pass an opener of their own instead. An https
    URL is not verified: cutover's own TLS listener has a certificate for the public host,
    not the loopback address the probes use; the servers of an environment with tls are
    verified by the data plane, which serves them, not by these probes.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(ssl=False)) as session:
        async def fetch(method: str, url: str, headers: dict[str, str], follow: bool) -> tuple[int, str]:
            async with session.request(method, url, headers=headers, allow_redirects=follow) as resp:
                return resp.status, await resp.text(errors="replace")
        yield fetch


@dataclass(frozen=True)
class GateInputs:
    """GateInputs: everything the gates read, built by the Controller for one switch.

    ``snapshot`` is the data plane's read model (called when a gate needs the servers or
    listeners); ``preview_token`` is the token X-Cutover-Env needs (the admin token, None
    when auth is off); ``config_dir`` is where gates.schema.command runs; ``tls_environments``
    names the environments whose servers speak TLS (`environments.X.tls`), reached directly
    over https.
    """

    snapshot: Callable[[], "Snapshot"]
    gates: "GatesConfig"
    attestations: tuple[dict, ...] = ()
    preview_token: str | None = None
    config_dir: Path | None = None
    tls_environments: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GateResult:
    """GateResult: one gate's verdict on one target."""

    name: str
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return {"gate": self.name, "passed": self.passed, "reason": self.reason}


def health_gate(snapshot: "Snapshot", target: str) -> GateResult:
    """health_gate: every server of the target environment is healthy."""
    servers = snapshot.router.env(target).servers
    down = [s.address for s in servers if not s.healthy]
    if down:
        return GateResult("health", False, f"unhealthy servers in {target}: {', '.join(down)}")
    return GateResult("health", True, f"all {len(servers)} servers of {target} healthy")


def idle(route: "Route") -> str:
    """idle: where the preview listener sends requests under ``route`` (preview_routes asks).

    The canary while one runs, else the environment that is not live: the data plane's
    own rule (Router.idle), read off the route a snapshot carries.
    """
    return route.canary if route.canary_weight and route.canary else route.other(route.live)


def preview_routes(snapshot: "Snapshot", target: str, token: str | None,
                   tls_environments: frozenset[str] = frozenset()) -> list[tuple[str, dict]]:
    """preview_routes: (base URL, headers) pairs that reach ``target`` off the user's path.

    The preview listener when it serves the target, else the main listener with
    X-Cutover-Env and the admin token (when the data plane honours one), else every
    server of the target directly (over https when it is in ``tls_environments``).
    """
    if snapshot.preview_listen is not None and idle(snapshot.router.route) == target:
        return [(listen_url(snapshot.preview_listen, snapshot.tls), {})]
    if token and snapshot.preview_token_set:
        return [(listen_url(snapshot.listen, snapshot.tls), {"X-Cutover-Env": target, "X-Cutover-Token": token})]
    scheme = "https" if target in tls_environments else "http"
    return [(f"{scheme}://{server.address}", {}) for server in snapshot.router.env(target).servers]


def base_url(host: str, port: int, tls: bool = False) -> str:
    """base_url: http://host:port for a listen address (a wildcard one is reached on loopback);
    https:// for a TLS listener."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def listen_url(listen: str, tls: bool = False) -> str:
    """listen_url: base_url of a listener as a snapshot names it ("host:port", "[v6]:port");
    ``tls``: the listener serves TLS (Snapshot.tls)."""
    host, _, port = listen.rpartition(":")
    return base_url(host.removeprefix("[").removesuffix("]"), int(port), tls)


class GateRun:
    """GateRun: what the gates of one switch share: the inputs, a Fetch and the fingerprints fetched.

    Drift and schema both read fingerprints; each server is asked once per run.
    """

    def __init__(self, inputs: GateInputs, fetch: Fetch) -> None:
        self.inputs = inputs
        self.fetch = fetch
        self._fingerprints: dict[str, dict | ValueError] = {}

    async def fingerprint(self, env: str, address: str, path: str) -> dict:
        """fingerprint: server_fingerprint of a server of ``env``, remembered (failures too) for
        the rest of the run."""
        key = address + path
        if key not in self._fingerprints:
            scheme = "https" if env in self.inputs.tls_environments else "http"
            try:
                self._fingerprints[key] = await server_fingerprint(address, path, self.fetch, scheme)
            except ValueError as exc:
                self._fingerprints[key] = exc
        found = self._fingerprints[key]
        if isinstance(found, ValueError):
            raise found
        return found


async def smoke_gate(run: GateRun, target: str) -> GateResult:
    """smoke_gate: every configured probe answers as expected through the preview route."""
    probes = run.inputs.gates.smoke
    snapshot = run.inputs.snapshot()
    routes = preview_routes(snapshot, target, run.inputs.preview_token, run.inputs.tls_environments)
    if len(routes) == 1:
        # Through the router each probe meets one server: repeat it once per server of the
        # target, and the round robin among equally loaded servers lets each one answer.
        routes = routes * len(snapshot.router.env(target).servers)
    for base, headers in routes:
        for probe in probes:
            url = base + probe.path
            try:
                status, body = await run.fetch(probe.method, url, headers, False)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: {type(exc).__name__} {exc}")
            if status != probe.expect_status:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: status {status}, "
                                  f"expected {probe.expect_status}")
            if probe.expect_body_contains is not None and probe.expect_body_contains not in body:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: body lacks "
                                  f"{probe.expect_body_contains!r}")
    return GateResult("smoke", True, f"{len(probes)} probe(s) passed on {target}")


async def warmup_gate(run: GateRun, target: str) -> GateResult:
    """warmup_gate: send the configured warm-up requests to the target; 5xx or errors fail it."""
    warmup = run.inputs.gates.warmup
    sent = failed = 0
    last = ""
    routes = preview_routes(run.inputs.snapshot(), target, run.inputs.preview_token, run.inputs.tls_environments)
    for path in warmup.paths:
        for i in range(warmup.requests):
            base, headers = routes[i % len(routes)]
            sent += 1
            try:
                status, _ = await run.fetch("GET", base + path, headers, False)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failed += 1
                last = f"GET {path}: {type(exc).__name__}"
                continue
            if status >= 500:
                failed += 1
                last = f"GET {path}: status {status}"
    if failed:
        return GateResult("warmup", False, f"{failed} of {sent} warm-up requests failed (last: {last})")
    return GateResult("warmup", True, f"{sent} warm-up requests answered by {target}")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """flatten: nested JSON as {"a.b.c": value}; lists are compared whole."""
    if not isinstance(data, dict):
        return {prefix or "(root)": data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def drift(live: dict, target: dict, ignore: tuple[str, ...]) -> list[str]:
    """drift: the differences between two fingerprints, outside the allow-listed keys.

    A key is ignored when it, or a dotted prefix of it, is in ``ignore``.
    """
    a, b = flatten(live), flatten(target)
    out = []
    for key in sorted(set(a) | set(b)):
        parts = key.split(".")
        if any(".".join(parts[:i]) in ignore for i in range(1, len(parts) + 1)):
            continue
        if key not in a:
            out.append(f"{key}: only in target ({json.dumps(b[key])})")
        elif key not in b:
            out.append(f"{key}: missing in target (live has {json.dumps(a[key])})")
        elif a[key] != b[key]:
            out.append(f"{key}: live {json.dumps(a[key])} != target {json.dumps(b[key])}")
    return out


async def server_fingerprint(address: str, path: str, fetch: Fetch, scheme: str = "http") -> dict:
    """server_fingerprint: the JSON object one server answers at ``path`` (ValueError otherwise)."""
    try:
        status, text = await fetch("GET", f"{scheme}://{address}{path}", {}, True)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise ValueError(f"{address}: {type(exc).__name__}") from None
    if status != 200:
        raise ValueError(f"{address}: status {status}")
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(f"{address}: not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"{address}: not a JSON object")
    return data


async def fingerprint(run: GateRun, env: str, path: str) -> dict:
    """fingerprint: the JSON fingerprint of the first healthy server of ``env`` that answers."""
    servers = run.inputs.snapshot().router.env(env).servers
    servers = tuple(s for s in servers if s.healthy) or servers
    errors = []
    for server in servers:
        try:
            return await run.fingerprint(env, server.address, path)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(f"no fingerprint from {env} ({'; '.join(errors)})")


async def drift_gate(run: GateRun, target: str) -> GateResult:
    """drift_gate: the target's config fingerprint matches live's outside the allow-list."""
    gate = run.inputs.gates.drift
    live = run.inputs.snapshot().router.route.live
    if live == target:
        return GateResult("drift", True, "target is live")
    try:
        a = await fingerprint(run, live, gate.path)
    except ValueError as exc:
        return GateResult("drift", False, str(exc))
    for server in run.inputs.snapshot().router.env(target).servers:
        # Every server of the target is compared: one misconfigured copy is enough to refuse.
        try:
            b = await run.fingerprint(target, server.address, gate.path)
        except ValueError as exc:
            return GateResult("drift", False, f"no fingerprint from {target} ({exc})")
        diff = drift(a, b, gate.ignore)
        if diff:
            return GateResult("drift", False, f"{server.address}: {len(diff)} difference(s): "
                              + "; ".join(diff[:10]))
    return GateResult("drift", True, f"fingerprints of {live} and {target} match"
                      + (f" (ignoring {', '.join(gate.ignore)})" if gate.ignore else ""))


async def versions(run: GateRun, live: str, target: str) -> tuple[str, str]:
    """versions: (version serving now, version of the target), from the fingerprints' "version" key."""
    drift = run.inputs.gates.drift
    path = drift.path if drift else "/__fingerprint"
    out = []
    for env in (live, target):
        data = await fingerprint(run, env, path)
        if "version" not in data:
            raise ValueError(f'the fingerprint of {env} ({path}) has no "version"')
        out.append(str(data["version"]))
    return out[0], out[1]


async def schema_gate(run: GateRun, target: str) -> GateResult:
    """schema_gate: an attestation for exactly this pair of versions, or the configured command passes."""
    gate = run.inputs.gates.schema
    live = run.inputs.snapshot().router.route.live
    try:
        old, new = await versions(run, live, target)
    except ValueError as exc:
        return GateResult("schema", False, f"cannot tell the versions: {exc}")
    for attestation in run.inputs.attestations:
        if attestation["from_version"] == old and attestation["to_version"] == new:
            by = attestation.get("by") or "someone"
            return GateResult("schema", True, f"attested compatible {old} -> {new} by {by}")
    if gate.command is None:
        return GateResult("schema", False, f"no attestation for {old} -> {new} "
                          "(POST /v1/schema/attest or configure gates.schema.command)")
    cwd = run.inputs.config_dir
    env = dict(os.environ, CUTOVER_FROM_ENV=live, CUTOVER_TO_ENV=target,
               CUTOVER_FROM_VERSION=old, CUTOVER_TO_VERSION=new)
    try:
        proc = await asyncio.create_subprocess_shell(gate.command, cwd=cwd, env=env,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return GateResult("schema", False, f"cannot run {gate.command!r}: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), SCHEMA_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return GateResult("schema", False, f"{gate.command!r} did not finish within {SCHEMA_TIMEOUT:.0f}s")
    lines = out.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if proc.returncode != 0:
        return GateResult("schema", False, f"{gate.command!r} exited {proc.returncode}: {last}")
    return GateResult("schema", True, f"{gate.command!r} passed for {old} -> {new}" + (f": {last}" if last else ""))


async def run_gates(inputs: GateInputs, target: str, health_only: bool = False,
                    opener: Opener = http_fetch) -> list[GateResult]:
    """run_gates: every configured gate against ``target``, in order, stopping at the first failure.

    The Controller calls it; ``opener`` gives the gates' HTTP (tests pass one without sockets).
    """
    results = [health_gate(inputs.snapshot(), target)]
    if health_only or not results[0].passed:
        return results
    gates = inputs.gates
    steps = []
    if gates.drift is not None:
        steps.append(drift_gate)
    if gates.schema is not None:
        steps.append(schema_gate)
    if gates.smoke:
        steps.append(smoke_gate)
    if gates.warmup is not None:
        steps.append(warmup_gate)
    if not steps:
        return results
    async with opener(PROBE_TIMEOUT) as fetch:
        run = GateRun(inputs, fetch)
        for step in steps:
            result = await step(run, target)
            results.append(result)
            if not result.passed:
                break
    return results
