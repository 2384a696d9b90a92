"""services — start, wait for and stop the processes under test: the nginx backend and the
three proxies (nginx, HAProxy, cutover), each from a generated config in a temp folder.

Called by run.py and flip_ack.py. Every process is started in its own session (process
group) pinned to its CPUs with taskset, so that stop() can end it and all its children (nginx
and cutover workers) by that group id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

import procfs

# The backend names the address that served the request: 127.0.0.1 = blue, 127.0.0.2 = green
# (same length for both, and the same for every target so the phases stay comparable).
BACKEND_BODY = "hello from $server_addr\n"


class StartError(Exception):
    """StartError: a service did not come up; the message says why (with its log tail)."""


@dataclass
class Service:
    """Service is one started process (and its children), pinned to its CPUs."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    admin_port: int | None = None  # cutover's admin API (127.0.0.1), for the switch phase
    workers: int = 1  # worker processes (nginx, cutover) or threads (HAProxy) it runs

    def pids(self) -> list[int]:
        """pids returns the process and its descendants, as they are now."""
        return procfs.process_tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class ServiceGroup:
    """ServiceGroup owns every started Service and stops them all on exit (also on Ctrl-C)."""

    def __init__(self, cpu_pinning: bool) -> None:
        self.services: list[Service] = []
        self.cpu_pinning = cpu_pinning

    def __enter__(self) -> "ServiceGroup":
        return self

    def __exit__(self, *exc) -> None:
        for service in reversed(self.services):
            stop(service)

    def start(self, name: str, argv: list[str], cpus: tuple[int, ...], workdir: Path) -> Service:
        """start runs argv pinned to cpus, output to workdir/NAME.log, in a new session."""
        if self.cpu_pinning:
            argv = ["taskset", "-c", cpu_list(cpus), *argv]
        log_path = workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=workdir, start_new_session=True,
            )
        service = Service(name, proc, log_path)
        self.services.append(service)
        return service


def cpu_list(cpus: tuple[int, ...]) -> str:
    """cpu_list: cpus as taskset -c takes them, e.g. "0,1"."""
    return ",".join(str(cpu) for cpu in cpus)


def stop(service: Service, grace: float = 5.0) -> None:
    """stop sends SIGTERM to the service's process group, then SIGKILL after grace seconds."""
    pgid = service.proc.pid  # start_new_session: the group id is the leader's pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            service.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give its children (nginx workers) a moment, then check the group.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
        if not _group_alive(pgid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------- ports and readiness

def free_port(hosts: tuple[str, ...] = ("127.0.0.1",), attempts: int = 50) -> int:
    """free_port returns a TCP port that can be bound on every one of hosts right now."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if all(_can_bind(host, port) for host in hosts[1:]):
            return port
    raise StartError(f"no free port found on {', '.join(hosts)}")


def _can_bind(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_ready(service: Service, host: str, port: int, timeout: float) -> None:
    """wait_ready waits until GET / on host:port answers 200, or raises StartError.

    Gives up early when the process exits; the error carries the end of its log.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not service.alive():
            raise StartError(f"{service.name} exited with code {service.proc.returncode}"
                             + _tail_suffix(service))
        try:
            status = http_get_status(host, port, timeout=1.0)
            if status == 200:
                return
            last = f"GET / answered {status}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise StartError(f"{service.name} not ready on {host}:{port} after {timeout:.0f}s ({last})"
                     + _tail_suffix(service))


def _tail_suffix(service: Service) -> str:
    tail = service.log_tail()
    return f"\nlast lines of its output:\n{tail}" if tail else ""


def http_get_status(host: str, port: int, timeout: float) -> int:
    """http_get_status sends one GET / with Connection: close and returns the status code."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad status line {head[:60]!r}")
    return int(parts[1])


# ---------------------------------------------------------------- configs

_NGINX_COMMON = """\
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$http
}
"""

_BACKEND_HTTP = """\
    server {
        listen 127.0.0.1:$port;
        listen 127.0.0.2:$port;
        location / {
            default_type text/plain;
            return 200 "hello from $$server_addr\\n";
        }
    }
"""

# nginx's access log in the fields and order of cutover's json lines (SPEC §12), for the cost of
# an access log in the anchor (bench/run.py's nginxlog): a line of about the same length, the
# values as nginx has them (its times in seconds); those cutover knows and nginx does not (env,
# generation, outcome) are constants. Batched as cutover's are (a buffer, flushed at least
# every 100 ms); $path is the file.
_NGINX_JSON_LOG_FORMAT = (
    "    log_format cutover_json escape=json '{\"time\":\"$$time_iso8601\",\"client\":\"$$remote_addr\","
    "\"method\":\"$$request_method\",\"target\":\"$$request_uri\",\"protocol\":\"$$server_protocol\","
    "\"status\":$$status,\"bytes_in\":$$request_length,\"bytes_out\":$$bytes_sent,"
    "\"duration_ms\":$$request_time,\"upstream_connect_ms\":\"$$upstream_connect_time\","
    "\"upstream_response_ms\":\"$$upstream_header_time\",\"env\":\"blue\",\"server\":\"$$upstream_addr\","
    "\"generation\":1,\"outcome\":\"ok\",\"request_id\":\"$$request_id\"}';\n")
_NGINX_JSON_ACCESS_LOG = "        access_log $path cutover_json buffer=256k flush=100ms;\n"

# nginx as a proxy in front of the backend: $listen_flags (" reuseport", " ssl" or "") end its
# listen line, $server_lines (the ssl_* directives of bench/tls.py, an access_log, or "") follow it.
_NGINX_PROXY_HTTP = """\
    upstream backend {
        server 127.0.0.1:$backend;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$port$listen_flags;
$server_lines        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
"""

_HAPROXY_CFG = """\
global
    nbthread $threads
    maxconn 8192

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    server s1 127.0.0.1:$backend
"""

_CUTOVER_CFG = """\
listen: "127.0.0.1:$port"
admin: { listen: "127.0.0.1:$admin", auth: none }
environments:
  blue:  { servers: ["127.0.0.1:$backend"] }
  green: { servers: ["127.0.0.2:$backend"] }
live: blue
state_file: $dir/state.json
health_check: { path: /healthz, interval: 1s }
workers: $workers
$extra"""


def _write(path: Path, template: str, **values) -> Path:
    path.write_text(Template(template).substitute(**values))
    return path


def _nginx_argv(nginx: str, workdir: Path) -> list[str]:
    # -e: before the config is read nginx would open its default error log; point it here.
    return [nginx, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"),
            "-e", str(workdir / "error.log")]


def _workdir(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    return path


# ---------------------------------------------------------------- starters

def start_backend(group: ServiceGroup, tmp: Path, nginx: str, cpus: tuple[int, ...],
                  timeout: float) -> tuple[Service, int]:
    """start_backend starts the nginx backend (one worker) on 127.0.0.1:P and 127.0.0.2:P;
    returns (svc, P)."""
    workdir = _workdir(tmp, "backend")
    port = free_port(("127.0.0.1", "127.0.0.2"))
    http = Template(_BACKEND_HTTP).substitute(port=port)
    _write(workdir / "nginx.conf", _NGINX_COMMON, dir=workdir, http=http, workers=1)
    service = group.start("backend", _nginx_argv(nginx, workdir), cpus, workdir)
    wait_ready(service, "127.0.0.1", port, timeout)
    wait_ready(service, "127.0.0.2", port, timeout)
    return service, port


def start_nginx_proxy(group: ServiceGroup, tmp: Path, nginx: str, cpus: tuple[int, ...],
                      backend_port: int, timeout: float, workers: int = 1,
                      name: str = "nginx", access_log: Path | None = None) -> tuple[Service, int]:
    """start_nginx_proxy starts nginx as a keep-alive reverse proxy in front of the backend,
    with `worker_processes workers`. With more than one worker its listen has `reuseport`:
    each worker accepts on its own SO_REUSEPORT socket, as cutover's workers do. name names
    the service and its folder; access_log, a file, turns its access log on in cutover's json
    fields (_NGINX_JSON_LOG_FORMAT)."""
    workdir = _workdir(tmp, name)
    port = free_port()
    logging = Template(_NGINX_JSON_ACCESS_LOG).substitute(path=access_log) if access_log else ""
    http = Template(_NGINX_PROXY_HTTP).substitute(port=port, backend=backend_port,
                                                   listen_flags=" reuseport" if workers > 1 else "",
                                                   server_lines=logging)
    if access_log:
        http = Template(_NGINX_JSON_LOG_FORMAT).substitute() + http
    _write(workdir / "nginx.conf", _NGINX_COMMON, dir=workdir, http=http, workers=workers)
    service = group.start(name, _nginx_argv(nginx, workdir), cpus, workdir)
    service.workers = workers
    wait_ready(service, "127.0.0.1", port, timeout)
    return service, port


def start_haproxy(group: ServiceGroup, tmp: Path, haproxy: str, cpus: tuple[int, ...],
                  backend_port: int, timeout: float, threads: int = 1) -> tuple[Service, int]:
    """start_haproxy starts HAProxy (`nbthread threads`, foreground) in front of the backend."""
    workdir = _workdir(tmp, "haproxy")
    port = free_port()
    cfg = _write(workdir / "haproxy.cfg", _HAPROXY_CFG, port=port, backend=backend_port,
                 threads=threads)
    service = group.start("haproxy", [haproxy, "-db", "-f", str(cfg)], cpus, workdir)
    service.workers = threads
    wait_ready(service, "127.0.0.1", port, timeout)
    return service, port


def start_cutover(group: ServiceGroup, tmp: Path, cutover: str, cpus: tuple[int, ...],
                  backend_port: int, timeout: float, workers: int = 1,
                  name: str = "cutover", extra: str = "") -> tuple[Service, int]:
    """start_cutover runs `cutover serve --config FILE` with blue/green on the backend and
    `workers: workers` (with more than one, a supervisor and its worker processes, all in
    the service's process group). name names the service and its folder; extra is more
    top-level YAML (e.g. "history_limit: 50\n")."""
    workdir = _workdir(tmp, name)
    port = free_port()
    admin = free_port()
    while admin == port:
        admin = free_port()
    cfg = _write(workdir / "cutover.yaml", _CUTOVER_CFG, port=port, admin=admin,
                 backend=backend_port, dir=workdir, workers=workers, extra=extra)
    service = group.start(name, [cutover, "serve", "--config", str(cfg)], cpus, workdir)
    service.admin_port = admin
    service.workers = workers
    wait_ready(service, "127.0.0.1", port, timeout)
    return service, port
