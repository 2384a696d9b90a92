"""The rollback drill: flip to the other environment and back under synthetic probes.

``cutover drill`` runs against a running router through its admin API (AdminClient). A
probe client sends ``GET <path>`` with ``X-Cutover-Probe`` over one keep-alive
connection every few milliseconds; the router answers each probe naming the
environment and generation that served it. The drill flips, waits, rolls
back, and measures for each switch the recovery time (from the admin call to
the first probe served by the new environment; the flip's includes its gates)
and counts failed probes. It exits 0 only when no probe failed, the flip
happened and the rollback's recovery time is within the objective.

TLS (SPEC §12): the admin calls go to an https admin URL verified against the CLI's --ca
(CUTOVER_CA), else the system's store, as every admin command's do. The probes go over https
when the status says the listener speaks TLS (``listen_tls``), verified against the same CA;
the listener is reached on the address the status names, so the certificate must name that
address, or ``server_name`` (--server-name) names what it must carry instead (also sent as
SNI, which picks the listener's certificate). Before any switch one probe checks that the
probes can speak to the listener: a certificate they do not trust, or a handshake that fails,
stops the drill then, with nothing switched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field

import aiohttp

from ..client import AdminClient, AdminError

ADMIN_TIMEOUT = 60.0    # seconds for one admin call (a flip includes its gates)
# OpenSSL's verify codes of a certificate that does not carry the name (or address) asked for.
X509_HOSTNAME_MISMATCH = 62
X509_IP_ADDRESS_MISMATCH = 64


@dataclass
class Probes:
    """Probes: what the probe loop saw: (perf_counter, environment or None, status or error)."""

    seen: list[tuple[float, str | None, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[float, str | None, str]]:
        return [p for p in self.seen if p[1] is None]

    def first_from(self, env: str, after: float) -> float | None:
        for at, served_by, _ in self.seen:
            if at >= after and served_by == env:
                return at
        return None


class Prober:
    """Prober: probes of one listener over one keep-alive connection; ``async with`` opens it.

    ``tls`` is how an https URL's certificate is verified (an SSLContext, or True for the
    system's store) and ``server_name`` the name it must carry (None: the URL's host). Used
    by the drill (probe_loop for the demo).
    """

    def __init__(self, url: str, headers: dict, tls: ssl.SSLContext | bool = True,
                 server_name: str | None = None) -> None:
        self.url = url
        self.headers = headers
        self.server_name = server_name
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=tls),
                                              timeout=aiohttp.ClientTimeout(total=5))

    async def __aenter__(self) -> "Prober":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    async def probe(self) -> tuple[float, str | None, str]:
        """probe: one probe as Probes keeps it; no answer raises aiohttp.ClientError or TimeoutError."""
        async with self._session.get(self.url, headers=self.headers, server_hostname=self.server_name) as resp:
            await resp.read()
            served_by = resp.headers.get("X-Cutover-Served-By", "").split(" ")[0] or None
            ok = resp.status < 500 and served_by is not None
            return time.perf_counter(), served_by if ok else None, str(resp.status)

    async def loop(self, interval: float, stop: asyncio.Event, probes: Probes) -> None:
        """loop: probe until ``stop``; a probe fails on a connection error, a timeout or a 5xx."""
        while not stop.is_set():
            try:
                probes.seen.append(await self.probe())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                probes.seen.append((time.perf_counter(), None, type(exc).__name__))
            await asyncio.sleep(interval)


async def probe_loop(url: str, headers: dict, interval: float, stop: asyncio.Event, probes: Probes) -> None:
    """probe_loop: Prober.loop on a plain listener (the demo's)."""
    async with Prober(url, headers) as prober:
        await prober.loop(interval, stop, probes)


class DrillError(Exception):
    """DrillError: the drill could not run; ``code`` is the exit status (2 = a switch was refused)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def listener_url(listen: str, path: str = "/", tls: bool = False) -> str:
    """listener_url: the URL of ``path`` on a listener named as the status names it ("host:port"),
    https when ``tls``.

    A wildcard host (0.0.0.0, ::) is reached on 127.0.0.1. Used by the drill and the demo.
    """
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
    return f"{'https' if tls else 'http'}://{host}:{port}{path}"


async def check_tls(prober: Prober) -> None:
    """check_tls: one probe before any switch; DrillError when TLS with the listener fails.

    A certificate the probes do not trust says which option fixes it: --server-name when it
    does not carry the name asked for, else --ca. Any other outcome is left to the probe loop.
    """
    where = f"the listener at {prober.url}"
    try:
        await prober.probe()
    except aiohttp.ClientConnectorCertificateError as exc:
        error = exc.certificate_error
        why = (getattr(error, "verify_message", None) or str(error)).rstrip(".")
        if getattr(error, "verify_code", None) in (X509_HOSTNAME_MISMATCH, X509_IP_ADDRESS_MISMATCH):
            fix = "give the name it carries with --server-name NAME"
        else:
            fix = "give its CA with --ca FILE or CUTOVER_CA"
        raise DrillError(f"{where} has a certificate the probes do not trust ({why}); {fix}; "
                         "nothing was switched (connection_failed)") from None
    except aiohttp.ClientSSLError as exc:
        why = getattr(exc.os_error, "reason", None) or exc.os_error
        raise DrillError(f"TLS with {where} failed ({why}); nothing was switched (connection_failed)") from None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass



async def _admin(what: str, call: Awaitable[dict]) -> dict:
    """_admin: the answer of one AdminClient call, or DrillError with the API's message and code.

    An answer's message is prefixed with ``what`` (the call); a call that got no answer
    already names the URL.
    """
    try:
        return await call
    except AdminError as exc:
        message = exc.message if exc.status == 0 else f"{what}: {exc.message}"
        raise DrillError(f"{message} ({exc.code})", 2 if exc.refused else 1) from None


async def drill(admin: str, token: str | None, path: str = "/", interval: float = 0.005,
                settle: float = 1.0, objective_ms: float = 100.0, ca: str | None = None,
                server_name: str | None = None, timeout: float = ADMIN_TIMEOUT) -> dict:
    """drill: flip and roll back under probes; returns the report.

    Called by ``cutover drill`` (run) and the demo. Every admin call goes through AdminClient;
    each switch carries a fresh Idempotency-Key, so the client's one retry (no answer came)
    cannot switch twice. ``ca`` (a PEM file) verifies an https admin URL and a TLS listener,
    ``server_name`` is the name the listener's certificate must carry (see the module docstring);
    ``timeout`` bounds each admin call (--request-timeout).
    """
    probe_headers = {"X-Cutover-Probe": "1"}
    if token:
        probe_headers["X-Cutover-Token"] = token
    try:
        client = AdminClient(admin, token, timeout, ca)
    except AdminError as exc:
        raise DrillError(f"{exc.message} ({exc.code})") from None
    async with client:
        status = await _admin("status", client.status())
        listen = status.get("listen")
        if not listen:
            raise DrillError("the router's status does not name its listen address")
        tls = status.get("listen_tls") is True
        url = listener_url(listen, path, tls)
        start_env = status["live"]
        other = next(name for name in status["environments"] if name != start_env)
        probes = Probes()
        # The probes trust what the admin client trusts (--ca, else the system's store).
        async with Prober(url, probe_headers, client.ssl, server_name if tls else None) as prober:
            if tls:
                await check_tls(prober)
            switches = await _switch_under_probes(client, prober, start_env, other, interval, settle, probes)
    failed = probes.failed
    # The objective is on the rollback (restoring the previous version); the flip's
    # time also covers its gates (smoke, warm-up, ...) and is reported as it is.
    rollback = switches[-1]["recovery_ms"]
    passed = not failed and rollback is not None and rollback <= objective_ms and \
        switches[0]["recovery_ms"] is not None
    return {
        "router": url, "server_name": server_name if tls else None, "admin": client.url,
        "probes": len(probes.seen), "failed_probes": len(failed),
        "failures": [reason for _, _, reason in failed[:5]], "switches": switches,
        "objective_ms": objective_ms, "passed": passed,
    }


async def _switch_under_probes(client: AdminClient, prober: Prober, start_env: str, other: str,
                               interval: float, settle: float, probes: Probes) -> list[dict]:
    """_switch_under_probes: flip to ``other`` and roll back to ``start_env`` while ``prober``
    probes into ``probes``; each switch's generation, call time and recovery time."""
    stop = asyncio.Event()
    task = asyncio.create_task(prober.loop(interval, stop, probes))
    switches = []
    try:
        await asyncio.sleep(settle)
        for action, target in (("flip", other), ("rollback", start_env)):
            key = str(uuid.uuid4())
            t0 = time.perf_counter()
            if action == "flip":
                call = client.flip(target, reason="drill", idempotency_key=key)
            else:
                call = client.rollback(reason="drill", idempotency_key=key)
            answer = await _admin(action, call)
            applied = (time.perf_counter() - t0) * 1000
            deadline = time.monotonic() + 5
            while probes.first_from(target, t0) is None and time.monotonic() < deadline:
                await asyncio.sleep(interval)
            first = probes.first_from(target, t0)
            switches.append({
                "action": action, "to": target, "generation": answer["generation"],
                "call_ms": round(applied, 3),
                "recovery_ms": round((first - t0) * 1000, 3) if first is not None else None,
            })
            await asyncio.sleep(settle)
    finally:
        stop.set()
        await task
    return switches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """add_arguments: the drill's own options (the admin URL and token come from the main CLI)."""
    parser.add_argument("--path", default="/", help="path to probe (default /)")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between probes")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of probes before and after each switch")
    parser.add_argument("--objective-ms", type=float, default=100.0, help="recovery-time objective (ms)")
    parser.add_argument("--server-name", metavar="NAME",
                        help="a TLS listener's certificate must carry NAME (also sent as SNI) instead of the "
                             "address the status names (a plain HTTP listener ignores it); the certificate is "
                             "verified against --ca (CUTOVER_CA; one file may hold several CAs), else the "
                             "system's store")


def print_report(report: dict) -> None:
    """print_report: the human-readable drill report."""
    named = f" (certificate checked for {report['server_name']})" if report.get("server_name") else ""
    print(f"drill against {report['router']}{named}: {report['probes']} probes, {report['failed_probes']} failed")
    for s in report["switches"]:
        recovery = f"{s['recovery_ms']:.1f} ms" if s["recovery_ms"] is not None else "never"
        print(f"  {s['action']:<8} -> {s['to']:<8} generation {s['generation']}: first probe from {s['to']} "
              f"after {recovery} (call {s['call_ms']:.1f} ms)")
    for failure in report["failures"]:
        print(f"  failed probe: {failure}")
    verdict = "PASS" if report["passed"] else "FAIL"
    print(f"{verdict}: rollback recovery objective {report['objective_ms']:.0f} ms, failed probes must be 0")


async def run(args: argparse.Namespace) -> int:
    """run: ``cutover drill``; exit 0 pass, 1 failed probes or recovery over the objective, 2 refused."""
    try:
        report = await drill(args.admin.rstrip("/"), args.token, args.path, args.interval, args.settle,
                             args.objective_ms, args.ca, args.server_name, args.timeout)
    except DrillError as exc:
        print(f"cutover: drill: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["passed"] else 1
