"""Gates: checks a switch must pass before traffic moves to a target environment (SPEC §6).

run_gates is called by the Controller (unless the call is forced) and returns
one GateResult per gate, in order: health (every server of the target
healthy), drift (fingerprints of both environments differ only in
allow-listed keys), schema (a command, or an attestation for exactly this pair
of versions), smoke (probes with expected status and body through the preview
route) and warm-up (requests to configured paths, last, so caches are warm
when users arrive). Later gates are skipped once one fails.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .controller import Controller

PROBE_TIMEOUT = 5.0          # seconds per smoke, warm-up or fingerprint request
SCHEMA_TIMEOUT = 120.0       # seconds for the schema command


@dataclass(frozen=True)
class GateResult:
    """GateResult: one gate's verdict on one target."""

    name: str
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return {"gate": self.name, "passed": self.passed, "reason": self.reason}


def health_gate(controller: "Controller", target: str) -> GateResult:
    """health_gate: every server of the target environment is healthy."""
    env = controller.router.environments[target]
    down = [s.address for s in env.servers if not s.healthy]
    if down:
        return GateResult("health", False, f"unhealthy servers in {target}: {', '.join(down)}")
    return GateResult("health", True, f"all {len(env.servers)} servers of {target} healthy")


def preview_routes(controller: "Controller", target: str) -> list[tuple[str, dict]]:
    """preview_routes: (base URL, headers) pairs that reach ``target`` off the user's path.

    The preview listener when it serves the target, else the main listener with
    X-Cutover-Env and the admin token, else every server of the target directly.
    """
    proxy = controller.proxy
    router = controller.router
    if proxy.preview_port and router.idle(router.route) == target:
        return [(base_url(proxy.config.preview_listen.host, proxy.preview_port), {})]
    if proxy.preview_token:
        return [(base_url(proxy.config.listen.host, proxy.port),
                 {"X-Cutover-Env": target, "X-Cutover-Token": proxy.preview_token.decode()})]
    return [(f"http://{server.address}", {}) for server in router.environments[target].servers]


def base_url(host: str, port: int) -> str:
    """base_url: http://host:port for a listen address (a wildcard one is reached on loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class GateRun:
    """GateRun: what the gates of one switch share: an HTTP session and the fingerprints fetched.

    Drift and schema both read fingerprints; each server is asked once per run.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._fingerprints: dict[str, dict | ValueError] = {}

    async def fingerprint(self, address: str, path: str) -> dict:
        """fingerprint: server_fingerprint, remembered (failures too) for the rest of the run."""
        key = address + path
        if key not in self._fingerprints:
            try:
                self._fingerprints[key] = await server_fingerprint(address, path, self.session)
            except ValueError as exc:
                self._fingerprints[key] = exc
        found = self._fingerprints[key]
        if isinstance(found, ValueError):
            raise found
        return found


async def _get(session: aiohttp.ClientSession, method: str, url: str, headers: dict) -> tuple[int, str]:
    async with session.request(method, url, headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.text(errors="replace")


async def smoke_gate(controller: "Controller", target: str, run: GateRun) -> GateResult:
    """smoke_gate: every configured probe answers as expected through the preview route."""
    probes = controller.config.gates.smoke
    routes = preview_routes(controller, target)
    if len(routes) == 1:
        # Through the router each probe meets one server: repeat it once per server of the
        # target, and the round robin among equally loaded servers lets each one answer.
        routes = routes * len(controller.router.environments[target].servers)
    for base, headers in routes:
        for probe in probes:
            url = base + probe.path
            try:
                status, body = await _get(run.session, probe.method, url, headers)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: {type(exc).__name__} {exc}")
            if status != probe.expect_status:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: status {status}, "
                                  f"expected {probe.expect_status}")
            if probe.expect_body_contains is not None and probe.expect_body_contains not in body:
                return GateResult("smoke", False, f"{probe.method} {probe.path}: body lacks "
                                  f"{probe.expect_body_contains!r}")
    return GateResult("smoke", True, f"{len(probes)} probe(s) passed on {target}")


async def warmup_gate(controller: "Controller", target: str, run: GateRun) -> GateResult:
    """warmup_gate: send the configured warm-up requests to the target; 5xx or errors fail it."""
    warmup = controller.config.gates.warmup
    sent = failed = 0
    last = ""
    routes = preview_routes(controller, target)
    for path in warmup.paths:
        for i in range(warmup.requests):
            base, headers = routes[i % len(routes)]
            sent += 1
            try:
                status, _ = await _get(run.session, "GET", base + path, headers)
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


async def server_fingerprint(address: str, path: str, session: aiohttp.ClientSession) -> dict:
    """server_fingerprint: the JSON object one server answers at ``path`` (ValueError otherwise)."""
    try:
        async with session.get(f"http://{address}{path}") as resp:
            status = resp.status
            text = await resp.text()
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


async def fingerprint(controller: "Controller", env: str, path: str, run: GateRun) -> dict:
    """fingerprint: the JSON fingerprint of the first healthy server of ``env`` that answers."""
    servers = [s for s in controller.router.environments[env].servers if s.healthy] or \
        controller.router.environments[env].servers
    errors = []
    for server in servers:
        try:
            return await run.fingerprint(server.address, path)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(f"no fingerprint from {env} ({'; '.join(errors)})")


async def drift_gate(controller: "Controller", target: str, run: GateRun) -> GateResult:
    """drift_gate: the target's config fingerprint matches live's outside the allow-list."""
    gate = controller.config.gates.drift
    live = controller.router.route.live
    if live == target:
        return GateResult("drift", True, "target is live")
    try:
        a = await fingerprint(controller, live, gate.path, run)
    except ValueError as exc:
        return GateResult("drift", False, str(exc))
    for server in controller.router.environments[target].servers:
        # Every server of the target is compared: one misconfigured copy is enough to refuse.
        try:
            b = await run.fingerprint(server.address, gate.path)
        except ValueError as exc:
            return GateResult("drift", False, f"no fingerprint from {target} ({exc})")
        diff = drift(a, b, gate.ignore)
        if diff:
            return GateResult("drift", False, f"{server.address}: {len(diff)} difference(s): "
                              + "; ".join(diff[:10]))
    return GateResult("drift", True, f"fingerprints of {live} and {target} match"
                      + (f" (ignoring {', '.join(gate.ignore)})" if gate.ignore else ""))


async def versions(controller: "Controller", target: str, run: GateRun) -> tuple[str, str]:
    """versions: (version serving now, version of the target), from the fingerprints' "version" key."""
    path = controller.config.gates.drift.path if controller.config.gates.drift else "/__fingerprint"
    live = controller.router.route.live
    out = []
    for env in (live, target):
        data = await fingerprint(controller, env, path, run)
        if "version" not in data:
            raise ValueError(f'the fingerprint of {env} ({path}) has no "version"')
        out.append(str(data["version"]))
    return out[0], out[1]


async def schema_gate(controller: "Controller", target: str, run: GateRun) -> GateResult:
    """schema_gate: an attestation for exactly this pair of versions, or the configured command passes."""
    gate = controller.config.gates.schema
    live = controller.router.route.live
    try:
        old, new = await versions(controller, target, run)
    except ValueError as exc:
        return GateResult("schema", False, f"cannot tell the versions: {exc}")
    for attestation in controller.state.attestations:
        if attestation["from_version"] == old and attestation["to_version"] == new:
            by = attestation.get("by") or "someone"
            return GateResult("schema", True, f"attested compatible {old} -> {new} by {by}")
    if gate.command is None:
        return GateResult("schema", False, f"no attestation for {old} -> {new} "
                          "(POST /v1/schema/attest or configure gates.schema.command)")
    cwd = controller.config.source.parent if controller.config.source else None
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


async def run_gates(controller: "Controller", target: str, health_only: bool = False) -> list[GateResult]:
    """run_gates: every configured gate against ``target``, in order, stopping at the first failure."""
    results = [health_gate(controller, target)]
    if health_only or not results[0].passed:
        return results
    gates = controller.config.gates
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
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        run = GateRun(session)
        for step in steps:
            result = await step(controller, target, run)
            results.append(result)
            if not result.passed:
                break
    return results
