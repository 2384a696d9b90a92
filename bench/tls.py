"""tls — cutover terminating TLS against nginx terminating TLS, same certificate, same cipher.

    python bench/tls.py                          # 2 rounds x 5 s, 50 connections, compiled build
    python bench/tls.py --rounds 3 --duration 10 --json

Both proxies sit in front of the nginx backend of bench/run.py (plain HTTP, keep-alive), serve
the one certificate made for the run (P-256, openssl), and accept TLS 1.3 only, so that wrk
negotiates the same suite with both (printed: TLS_AES_256_GCM_SHA384 with this OpenSSL); both
keep OpenSSL's session ticket defaults (two tickets after each full handshake). Two
phases per round and target, interleaved: keep-alive throughput (wrk over https, the
connections reused) and the full-handshake rate (wrk with `Connection: close`: one handshake
per request; no session resumption, wrk does not resume). Reported per phase: req/s, p99, the
proxy's CPU per request (its process tree, /proc) and the ratio cutover/nginx. Pinning as
bench/run.py's default: the proxy on CPU 0, wrk and the backend on CPU 1.

Only loopback addresses are targeted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build as compiled  # noqa: E402
import load  # noqa: E402
import procfs  # noqa: E402
import services  # noqa: E402

# The lines bench/services.py's nginx proxy gets after its listen to terminate TLS 1.3.
_NGINX_TLS_LINES = """\
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.3;
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """make_certificate: a self-signed P-256 certificate for bench.test and 127.0.0.1."""
    cert, key = folder / "bench.pem", folder / "bench.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def negotiated(port: int) -> tuple[str, str]:
    """negotiated: (TLS version, cipher suite) a default client gets from 127.0.0.1:``port``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="bench.test") as tls:
            return tls.version() or "", tls.cipher()[0]


def wait_tls_ready(service: services.Service, port: int, timeout: float) -> None:
    """wait_tls_ready: until GET / over TLS answers 200 (services.wait_ready speaks plain HTTP)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not service.alive():
            raise services.StartError(f"{service.name} exited: {service.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with ctx.wrap_socket(raw, server_hostname="bench.test") as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
                    if tls.recv(64).startswith(b"HTTP/1.1 200"):
                        return
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise services.StartError(f"{service.name} not ready on TLS port {port} after {timeout:.0f}s ({last})")


def wrk_https(wrk: str, port: int, connections: int, duration: int, fresh: bool) -> list[str]:
    """wrk_https: one wrk run at https://127.0.0.1:``port``/, pinned to the load CPU."""
    url = f"https://127.0.0.1:{port}/"
    if not url.startswith(f"https://{load.LOOPBACK_PREFIX}"):
        raise ValueError(f"refusing to load a non-loopback address: {url}")
    argv = ["taskset", "-c", "1", wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if fresh:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def measure(service: services.Service, wrk: str, port: int, connections: int, duration: int, fresh: bool) -> dict:
    """measure: one wrk run; req/s, p99, errors and the proxy's CPU microseconds per request."""
    pids = service.pids()
    cpu_before = procfs.cpu_seconds(pids)
    started = time.monotonic()
    result = load.parse_wrk(load.run_wrk(wrk_https(wrk, port, connections, duration, fresh), duration))
    wall = time.monotonic() - started
    cpu = procfs.cpu_seconds(service.pids()) - cpu_before
    return {"rps": result.rps, "p99_ms": result.p99_ms, "errors": result.errors, "requests": result.requests,
            "cpu_us_per_req": cpu / max(result.requests, 1) * 1e6, "cpu_pct": cpu / wall * 100}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--fresh-connections", type=int, default=20, help="wrk connections of the handshake phase")
    p.add_argument("--build", choices=("compiled", "pure"), default="compiled")
    p.add_argument("--cutover", help="cutover command to benchmark (overrides --build)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for tool in ("wrk", "nginx", "taskset", "openssl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            log(f"bench/tls.py needs {tool} (apt-get install -y wrk nginx-light openssl util-linux)")
            return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk") or "wrk"
    if args.cutover:
        cutover = shutil.which(args.cutover) or args.cutover
    elif args.build == "compiled":
        log("building the compiled cutover (bench/build.py) ...")
        cutover = str(compiled.install_venv(compiled.DEFAULT_VENV))
    else:
        cutover = str(Path(sys.executable).parent / "cutover")
    version = subprocess.run([cutover, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cutover-tls-bench-") as tmp_name, services.ServiceGroup(True) as group:
        tmp = Path(tmp_name)
        cert, key = make_certificate(tmp)
        _, backend_port = services.start_backend(group, tmp, nginx, (1,), 20)
        workdir = tmp / "nginx-tls"
        workdir.mkdir()
        nginx_port = services.free_port()
        http = Template(services._NGINX_PROXY_HTTP).substitute(
            port=nginx_port, backend=backend_port, listen_flags=" ssl",
            server_lines=Template(_NGINX_TLS_LINES).substitute(cert=cert, key=key))
        (workdir / "nginx.conf").write_text(Template(services._NGINX_COMMON).substitute(
            dir=workdir, http=http, workers=1))
        nginx_service = group.start("nginx-tls", [nginx, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"),
                                                  "-e", str(workdir / "error.log")], (0,), workdir)
        wait_tls_ready(nginx_service, nginx_port, 20)
        extra = f'tls: {{cert: "{cert}", key: "{key}", min_version: "1.3"}}\n'
        workdir_c = tmp / "cutover-tls"
        workdir_c.mkdir()
        port = services.free_port()
        admin = services.free_port()
        config = workdir_c / "cutover.yaml"
        config.write_text(Template(services._CUTOVER_CFG).substitute(
            port=port, admin=admin, backend=backend_port, dir=workdir_c, workers=1, extra=extra))
        cutover_service = group.start("cutover-tls", [cutover, "serve", "--config", str(config)], (0,), workdir_c)
        wait_tls_ready(cutover_service, port, 20)
        targets = {"nginx": (nginx_service, nginx_port), "cutover": (cutover_service, port)}
        suites = {name: negotiated(p) for name, (_, p) in targets.items()}
        log(f"cutover: {version}; negotiated: {suites}")
        results: dict[str, dict[str, list[dict]]] = {n: {"keepalive": [], "handshake": []} for n in targets}
        for round_no in range(args.rounds):
            for phase, fresh, conns in (("keepalive", False, args.connections),
                                        ("handshake", True, args.fresh_connections)):
                for name, (service, p_) in targets.items():
                    load.run_wrk(wrk_https(wrk, p_, conns, 1, fresh), 1)   # warm-up
                    r = measure(service, wrk, p_, conns, args.duration, fresh)
                    results[name][phase].append(r)
                    log(f"round {round_no + 1} {phase:9} {name:7} {r['rps']:9.0f} req/s  p99 {r['p99_ms']:.2f} ms  "
                        f"cpu {r['cpu_us_per_req']:.1f} us/req ({r['cpu_pct']:.0f}%)  errors {r['errors']}")
    summary: dict = {"cutover_version": version, "negotiated": suites, "rounds": args.rounds,
                     "duration": args.duration, "phases": {}}
    for phase in ("keepalive", "handshake"):
        best = {n: max(results[n][phase], key=lambda r: r["rps"]) for n in results}
        summary["phases"][phase] = {
            "best": best, "all": {n: results[n][phase] for n in results},
            "ratio_rps": best["cutover"]["rps"] / best["nginx"]["rps"] if best["nginx"]["rps"] else None,
            "ratio_cpu_per_req": (best["cutover"]["cpu_us_per_req"] / best["nginx"]["cpu_us_per_req"]
                                  if best["nginx"]["cpu_us_per_req"] else None)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"cutover {version}, TLS {suites['cutover']} (nginx {suites['nginx']}), best of {args.rounds} x "
              f"{args.duration}s, proxy on CPU 0, wrk + backend on CPU 1")
        for phase, data in summary["phases"].items():
            for name, r in data["best"].items():
                print(f"  {phase:9} {name:7} {r['rps']:9.0f} req/s  p99 {r['p99_ms']:7.2f} ms  "
                      f"cpu {r['cpu_us_per_req']:7.1f} us/req  errors {r['errors']}")
            print(f"  {phase:9} cutover/nginx: {data['ratio_rps']:.2f}x req/s, "
                  f"{data['ratio_cpu_per_req']:.2f}x CPU per request")
    failed = any(r["errors"] for n in results for ph in results[n].values() for r in ph)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
