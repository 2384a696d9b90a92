"""settings: the frozen settings the data plane is built from (SPEC §3, §4).

admin/config.py loads and validates the YAML config and hands the data plane only this
(Config.settings()). Everything is a frozen dataclass of plain values, small and picklable,
so the same value can be sent to a worker process. The admin section is not here: the preview route's token is a setting of its
own (preview_token), chosen by the control plane.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["AccessLogConfig", "Address", "CertificateFiles", "EnvironmentConfig", "HealthCheckConfig", "LimitsConfig",
           "ListenerTLS", "Settings", "TimeoutsConfig", "UpstreamTLS"]


@dataclass(frozen=True)
class Address:
    """Address: a "host:port" from the config, built by parse_address for listeners and servers.

    host is lowercased and IP literals are canonical, so equal addresses compare equal.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Address.is_loopback: 127.0.0.0/8, ::1 (also IPv4-mapped) or "localhost"."""
        if self.host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback

    @property
    def is_wildcard(self) -> bool:
        """Address.is_wildcard: 0.0.0.0 or ::, i.e. every interface."""
        return self.host in ("0.0.0.0", "::")


@dataclass(frozen=True)
class HealthCheckConfig:
    """HealthCheckConfig: the `health_check` section, read by the health checker."""

    path: str = "/healthz"
    interval: float = 1.0  # seconds, > 0
    timeout: float = 1.0  # seconds, > 0
    healthy_after: int = 2  # consecutive successes that bring a server back, >= 1
    unhealthy_after: int = 2  # consecutive failures that mark a server down, >= 1


@dataclass(frozen=True)
class TimeoutsConfig:
    """TimeoutsConfig: the `timeouts` section in seconds, each > 0; read by the data plane."""

    connect: float = 2.0
    upstream_response: float = 30.0
    client_header: float = 10.0
    keepalive_idle: float = 60.0
    client_body: float = 30.0  # between two reads of a request body; over it -> 408


@dataclass(frozen=True)
class LimitsConfig:
    """LimitsConfig: the `limits` section, read by the data plane."""

    max_header_bytes: int = 65536  # >= 1; over it -> 431
    max_body_bytes: int | None = None  # None = unlimited; over it -> 413
    max_connections: int = 10000  # >= 1
    max_response_header_bytes: int = 65536  # >= 1; an upstream head (or trailers) over it -> 502


@dataclass(frozen=True)
class AccessLogConfig:
    """AccessLogConfig: the `access_log` section (SPEC §12), read by proxy/accesslog.py.

    path is "-" for standard output or an absolute file path (admin/config.py resolves a
    relative one against the config's folder); Settings.access_log None means no access log.
    """

    path: str = "-"
    format: str = "json"  # "json" | "combined"


@dataclass(frozen=True)
class CertificateFiles:
    """CertificateFiles: one certificate of a `tls` section (SPEC §12): absolute paths of PEM files.

    cert holds the certificate (then its chain), key its private key; admin/config.py checked
    both at load time, proxy/tls.py reads them again in each process that serves them.
    """

    cert: str
    key: str


@dataclass(frozen=True)
class ListenerTLS:
    """ListenerTLS: the top-level `tls` (listen and preview_listen) or `admin.tls` section.

    certificates are in config order, the first being the one served when the client's
    server_name (SNI) matches none or it sent none; proxy/tls.py's ServerTLS builds from it.
    """

    certificates: tuple[CertificateFiles, ...]  # non-empty
    min_version: str = "1.2"  # "1.2" | "1.3": the oldest TLS version accepted


@dataclass(frozen=True)
class UpstreamTLS:
    """UpstreamTLS: `environments.X.tls`, how the proxy and its health checks reach X's servers.

    ca is an absolute path of PEM certificates to trust (None: the system's store);
    server_name is sent as SNI and verified (None: each server's host).
    """

    ca: str | None = None
    verify: bool = True
    server_name: str | None = None


@dataclass(frozen=True)
class EnvironmentConfig:
    """EnvironmentConfig: one entry of `environments`, read by the backends and health checks."""

    name: str
    servers: tuple[Address, ...]  # non-empty, no duplicates
    weights: tuple[int, ...] = ()  # one per server, each >= 1; () means 1 each
    tls: UpstreamTLS | None = None  # None: plain HTTP to these servers

    def __post_init__(self) -> None:
        if not self.weights:
            object.__setattr__(self, "weights", (1,) * len(self.servers))


@dataclass(frozen=True)
class Settings:
    """Settings: what a Router and a Proxy read; built by admin/config.py's Config.settings().

    environments are in config order; live is the route's environment when no saved state
    names one. preview_token is what X-Cutover-Token must equal for the preview headers
    (None: the preview route needs no token, as with admin.auth none). access_log and
    generate_request_id are the `access_log` and `request_id` sections, log_format and
    log_level the `log` section (SPEC §12), tls the top-level `tls` section (each
    environment's own is EnvironmentConfig.tls). A reload hands a running Proxy new Settings
    (Proxy.configure): everything here but listen, preview_listen and the environments'
    names applies to it as it runs; server lists change through Router.set_servers.
    """

    listen: Address
    environments: tuple[EnvironmentConfig, ...]
    live: str
    drain_timeout: float = 30.0
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    health_check: HealthCheckConfig = HealthCheckConfig()
    max_queued: int = 10000  # hold.max_queued: held requests beyond it get 503
    forwarded_headers: str = "append"  # "append" | "replace"
    preview_listen: Address | None = None
    canary_header: str | None = None  # None = cookie stickiness
    preview_token: str | None = None
    access_log: AccessLogConfig | None = None  # None: no access log
    generate_request_id: bool = True  # request_id.generate: make an id for a request without a sane one
    tls: ListenerTLS | None = None  # the `tls` section: None serves plain HTTP on listen and preview_listen
    log_format: str = "text"  # log.format: how this process writes its log lines (text | json)
    log_level: str = "info"   # log.level: the least level written
