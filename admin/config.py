"""Loading and validation of cutover's YAML config (SPEC §3); the control plane's side of it.

`load_config` is the entry point for `cutover serve` and `cutover check-config`: it reads the
file, expands ${VAR} references, parses the YAML and turns it into a frozen `Config`. Every
mistake is a `ConfigError` whose message names the key path (`timeouts.connect`,
`environments.green.servers[0]`), so an operator can find the line to fix. The data plane never sees a Config: it is built from
`Config.settings()`, the frozen proxy.Settings (which holds no admin section).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy import LOG_FORMATS as FORMATS
from proxy import (AccessLogConfig, Address, EnvironmentConfig, HealthCheckConfig, LimitsConfig, ListenerTLS, Settings,
                   TimeoutsConfig)

__all__ = [
    "Address",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DriftGate",
    "EnvironmentConfig",
    "EtcdConfig",
    "EtcdTlsConfig",
    "FleetConfig",
    "GatesConfig",
    "HealthCheckConfig",
    "HoldConfig",
    "LimitsConfig",
    "SchemaGate",
    "SmokeProbe",
    "StoreConfig",
    "TimeoutsConfig",
    "WarmupGate",
    "effective_config",
    "expand_env",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
]


class ConfigError(Exception):
    """ConfigError: an invalid config, raised by every parser here and caught by the CLI.

    `key` is the key path (`environments.green.servers[0]`), `source` the file and `line` the
    1-based line, each None when unknown; str() joins them as `file:line: key: message`.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.source = source
        self.line = line

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        if self.source and self.line is not None:
            return f"{self.source}:{self.line}: {text}"
        if self.source:
            return f"{self.source}: {text}"
        if self.line is not None:
            return f"line {self.line}: {text}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_error, (self.message, self.key, self.source, self.line)

    def with_source(self, source: str) -> ConfigError:
        """ConfigError.with_source: a copy that names the file; used by load_config."""
        return ConfigError(self.message, key=self.key, source=source, line=self.line)


def _rebuild_error(message: str, key: str | None, source: str | None, line: int | None) -> ConfigError:
    """_rebuild_error: unpickles a ConfigError sent from a worker process."""
    return ConfigError(message, key=key, source=source, line=line)


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class HoldConfig:
    """HoldConfig: the `hold` section, read by the hold gate and the controller."""

    max_wait: float = 30.0  # seconds a hold lasts unless the request names a timeout
    max_queued: int = 10000  # waiting requests beyond this get 503; >= 0


@dataclass(frozen=True)
class AdminConfig:
    """AdminConfig: the `admin` section, read by the admin API server."""

    listen: Address = Address("127.0.0.1", 9901)
    token: str | None = None  # never "": an empty token is stored as None
    auth: str = "token"  # "token" | "none"; "none" only on a loopback listen
    read_token: str | None = None  # may only read (GET); never "", never equal to token
    tls: ListenerTLS | None = None  # admin.tls (admin/tlsconfig.py); None: plain HTTP


@dataclass(frozen=True)
class SmokeProbe:
    """SmokeProbe: one entry of `gates.smoke`, sent through the preview route before a flip."""

    path: str
    expect_status: int = 200
    expect_body_contains: str | None = None
    method: str = "GET"


@dataclass(frozen=True)
class DriftGate:
    """DriftGate: `gates.drift`, the fingerprint diff between the two environments."""

    path: str = "/__fingerprint"
    ignore: tuple[str, ...] = ()  # fingerprint keys allowed to differ


@dataclass(frozen=True)
class SchemaGate:
    """SchemaGate: `gates.schema`, a compatibility command or a recorded attestation."""

    command: str | None = None  # None = only an attestation can pass it


@dataclass(frozen=True)
class WarmupGate:
    """WarmupGate: `gates.warmup`, requests sent to the target before the switch."""

    paths: tuple[str, ...]  # non-empty
    requests: int = 10  # requests per path, >= 1


@dataclass(frozen=True)
class AnalysisConfig:
    """AnalysisConfig: `analysis`, the watch on the new live environment after a flip (SPEC §6).

    window 0 turns it off. A breach rolls back: probe_failures consecutive failed
    synthetic probes, or (with at least min_requests live requests in the window)
    a 5xx ratio above max_error_ratio or a p99 latency above max_p99.
    """

    window: float = 0.0
    interval: float = 1.0
    max_error_ratio: float = 0.05
    min_requests: int = 20
    max_p99: float | None = None
    probe_failures: int = 1
    probe_path: str = "/"


@dataclass(frozen=True)
class GatesConfig:
    """GatesConfig: the `gates` section, run by the controller before a flip; all optional."""

    smoke: tuple[SmokeProbe, ...] = ()
    drift: DriftGate | None = None
    schema: SchemaGate | None = None
    warmup: WarmupGate | None = None


@dataclass(frozen=True)
class FleetConfig:
    """FleetConfig: the `fleet` section; without a store it bounds the wait for the workers' acks."""

    ack_timeout: float = 10.0  # seconds a change waits for every worker (and replica) to apply it
    # This replica's name in the fleet (SPEC §9.2): printable ASCII, no "/" or spaces. parse_config
    # always sets it (default: host name + ":" + the listen port); None only in a Config built by hand.
    replica_id: str | None = None


@dataclass(frozen=True)
class EtcdTlsConfig:
    """EtcdTlsConfig: `store.etcd.tls`, files that exist when the config is read (absolute paths)."""

    ca: Path | None = None    # verifies etcd's certificate; None: the system's CAs
    cert: Path | None = None  # the client certificate, always with key
    key: Path | None = None


@dataclass(frozen=True)
class EtcdConfig:
    """EtcdConfig: `store.etcd`, where a fleet's state lives (SPEC §9.2); read by serve's fleet start.

    endpoints are "http(s)://host:port" origins, at least one, none twice; prefix starts with "/"
    and has no trailing "/"; username and password come both or neither (never "").
    """

    endpoints: tuple[str, ...]
    prefix: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: EtcdTlsConfig | None = None
    lease_ttl: int = 5               # whole seconds >= 1: a replica is live while its lease is
    request_timeout: float = 2.0     # seconds per etcd request to one endpoint, > 0 and <= 60


@dataclass(frozen=True)
class StoreConfig:
    """StoreConfig: the `store` section; absent (Config.store None), the state is state_file."""

    etcd: EtcdConfig


@dataclass(frozen=True)
class LogConfig:
    """LogConfig: the `log` section (SPEC §12); serve and every worker log this way (proxy/logs.py)."""

    format: str = "text"   # text | json
    level: str = "info"    # debug | info | warning | error: the least level written


@dataclass(frozen=True)
class Config:
    """Config: the whole validated config, built by parse_config / load_config."""

    listen: Address
    admin: AdminConfig
    environments: dict[str, EnvironmentConfig]  # in file order; exactly two
    live: str  # initial live environment, a key of environments
    state_file: Path  # absolute
    health_check: HealthCheckConfig
    drain_timeout: float  # seconds, >= 0
    timeouts: TimeoutsConfig
    limits: LimitsConfig
    hold: HoldConfig
    forwarded_headers: str  # "append" | "replace"
    gates: GatesConfig
    preview_listen: Address | None = None
    canary_header: str | None = None  # None = cookie stickiness
    analysis: AnalysisConfig = AnalysisConfig()
    history_limit: int = 1000  # history events kept, the newest; 1..HISTORY_LIMIT_MAX
    workers: int = 1  # data-plane processes; "auto" in the file is resolved to the CPU count
    worker_nice: int = 3  # with workers > 1: how much nicer (lower CPU priority) workers run than the supervisor
    fleet: FleetConfig = FleetConfig()
    store: StoreConfig | None = None  # None: the state is state_file (one router)
    access_log: AccessLogConfig | None = None  # None: no access log (access_log.path null)
    generate_request_id: bool = True  # request_id.generate
    log: LogConfig = LogConfig()
    tls: ListenerTLS | None = None  # the `tls` section (admin/tlsconfig.py): listen and preview_listen
    source: Path | None = None  # the file it was loaded from

    def settings(self) -> Settings:
        """settings: the data plane's part of this config; LocalPlane.build and workers build from it.

        The preview route's token is the admin token unless admin.auth is none.
        """
        return Settings(
            listen=self.listen, environments=tuple(self.environments.values()), live=self.live,
            drain_timeout=self.drain_timeout, timeouts=self.timeouts, limits=self.limits,
            health_check=self.health_check, max_queued=self.hold.max_queued,
            forwarded_headers=self.forwarded_headers, preview_listen=self.preview_listen,
            canary_header=self.canary_header,
            preview_token=self.admin.token if self.admin.auth != "none" else None,
            access_log=self.access_log, generate_request_id=self.generate_request_id, tls=self.tls,
            log_format=self.log.format, log_level=self.log.level,
        )


# --------------------------------------------------------------------------- scalars

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def _show(value: object) -> str:
    """_show: a short YAML-ish rendering of a bad value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def parse_duration(value: object, path: str) -> float:
    """parse_duration: seconds from "250ms", "2s", "1m", "1h", "1m30s" or a plain number.

    Called for every duration key. Zero is accepted here; callers that need > 0 check it.
    Booleans, negatives, non-finite numbers and anything else are a ConfigError naming path.
    """
    if isinstance(value, bool) or value is None:
        raise ConfigError(f'expected a duration like "250ms", "2s", "1m", got {_show(value)}', key=path)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not text or "".join(n + u for n, u in parts) != text:
                raise ConfigError(
                    f'expected a duration like "250ms", "2s", "1m", got {_show(value)}', key=path
                )
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f'expected a duration like "250ms", "2s", "1m", got {_show(value)}', key=path)
    if not math.isfinite(seconds):
        raise ConfigError(f"expected a finite duration, got {_show(value)}", key=path)
    if seconds < 0:
        raise ConfigError(f"must not be negative, got {_show(value)}", key=path)
    return seconds


_SIZE = re.compile(r"(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: object, path: str) -> int:
    """parse_size: a byte count from an int or "64k" / "1m" / "1g" (binary, as in nginx).

    Called for the limits.*_bytes keys; negatives, floats and booleans are a ConfigError.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"must not be negative, got {value}", key=path)
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            unit = (match.group(2) or "").lower()
            return int(match.group(1)) * (_SIZE_UNITS[unit[0]] if unit else 1)
    raise ConfigError(f'expected a byte count like 65536 or "64k", got {_show(value)}', key=path)


_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
# An IPv4 address as ipaddress writes it (four octets 0..255, no leading zero): taken as it is,
# without ipaddress (most of what loading a config of many servers costs).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def parse_address(value: object, path: str, *, allow_port_zero: bool = False) -> Address:
    """parse_address: an Address from "host:port" or "[v6]:port"; used for listens and servers.

    Port 0 (an ephemeral port) is accepted only with allow_port_zero, for listen addresses.
    """
    expected = 'expected "host:port"'
    if not isinstance(value, str):
        raise ConfigError(f"{expected}, got {_show(value)}", key=path)
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(f'{expected} (IPv6 as "[::1]:8080"), got {_show(value)}', key=path)
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{expected}: {_show(host)} is not an IPv6 address", key=path) from None
        host = str(ip)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{expected}, got {_show(value)}", key=path)
        if ":" in host:
            raise ConfigError(
                f'{expected} (write IPv6 in brackets, as "[::1]:8080"), got {_show(value)}', key=path
            )
        host = host.lower()
        try:
            if not _CANONICAL_IPV4.fullmatch(host):
                host = str(ipaddress.IPv4Address(host))
        except ValueError:
            numeric = re.fullmatch(r"[0-9.]+", host) is not None
            if numeric or not _HOSTNAME.fullmatch(host) or len(host) > 253:
                raise ConfigError(f"{expected}: {_show(host)} is not a valid host", key=path) from None
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"{expected}: port {_show(port_text)} is not a number", key=path)
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(f"port {port} is out of range {low}..65535", key=path)
    return Address(host, port)


# --------------------------------------------------------------------------- ${VAR}

_REFERENCE = re.compile(r"\$(?:(\$)|\{([^}\n]*)(\}?))")
_REFERENCE_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_QUOTE_OPENERS = " \t:[{,-?"


def _comment_start(line: str) -> int:
    """_comment_start: index of the YAML comment on line, or len(line) if there is none.

    Used by expand_env so that a ${VAR} in a comment is left alone. Tracks quoted scalars on
    the line; a quote only opens a scalar at its start, so "it's # x" still ends at the "#".
    """
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote == '"':
            if ch == "\\":
                i += 1
            elif ch == '"':
                quote = ""
        elif quote == "'":
            if ch == "'":
                quote = ""
        elif ch in "'\"" and (i == 0 or line[i - 1] in _QUOTE_OPENERS):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
        i += 1
    return len(line)


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """expand_env: replaces ${VAR} and ${VAR:-default} in config text; called by load_config.

    `$$` is a literal `$`; a `$` before anything else is kept as is. ${VAR:-default} gives
    the default when VAR is unset or empty. References inside YAML comments are not expanded.
    An unset VAR without a default, or a malformed ${...}, is a ConfigError naming it and
    its line.
    """
    if "$" not in text:
        return text                     # nothing to expand (and no line to scan for its comment)
    out: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if "$" not in line:
            out.append(line)
            continue
        cut = _comment_start(line)

        def substitute(match: re.Match[str], number: int = number) -> str:
            if match.group(1):
                return "$"
            body, closed = match.group(2), match.group(3)
            reference = _REFERENCE_BODY.fullmatch(body) if closed else None
            if reference is None:
                raise ConfigError(
                    f"malformed variable reference {match.group(0)!r} "
                    "(expected ${NAME} or ${NAME:-default}; write $$ for a literal $)",
                    line=number,
                )
            name, default = reference.group(1), reference.group(2)
            current = environ.get(name)
            if default is not None:
                return current if current else default
            if current is None:
                raise ConfigError(
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                    line=number,
                )
            return current

        out.append(_REFERENCE.sub(substitute, line[:cut]))
        out.append(line[cut:])
    return "".join(out)


# --------------------------------------------------------------------------- structure helpers


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _section(value: object, path: str, known: tuple[str, ...]) -> dict[str, Any]:
    """_section: value as a mapping with only known keys; null means an empty section."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {_show(value)}", key=path or None)
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(f"keys must be strings, got {_show(name)}", key=path or None)
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key ({suggestion})", key=_key(path, name))
    return value


def _int(value: object, path: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {_show(value)}", key=path)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"must be {bound}, got {value}", key=path)
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_show(value)}", key=path)
    return value


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"expected one of {', '.join(choices)}, got {_show(value)}", key=path)
    return value  # type: ignore[return-value]


def _positive_duration(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        raise ConfigError(f"must be greater than 0, got {_show(value)}", key=path)
    return seconds


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"expected a list, got {_show(value)}", key=path)
    return value


_REQUEST_PATH = re.compile(r"/[\x21-\x7e]*")


def _request_path(value: object, path: str) -> str:
    text = _str(value, path)
    if not _REQUEST_PATH.fullmatch(text):
        raise ConfigError(
            f'expected a request path starting with "/" (no spaces, non-ASCII percent-encoded), '
            f"got {_show(value)}",
            key=path,
        )
    return text


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_METHOD = re.compile(r"[A-Z][A-Z_-]*")
_ENV_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_BEARER = re.compile(r"[\x21-\x7e]+")  # what fits in `Authorization: Bearer <token>`


def _same_socket(a: Address, b: Address) -> bool:
    """_same_socket: whether two listen addresses would try to bind the same port."""
    if a.port == 0 or b.port != a.port:
        return False
    return a.host == b.host or a.is_wildcard or b.is_wildcard


# --------------------------------------------------------------------------- sections

# The most history events a state may keep: the state file is rewritten whole on every save.
HISTORY_LIMIT_MAX = 100_000

_TOP = (
    "listen",
    "preview_listen",
    "admin",
    "environments",
    "live",
    "state_file",
    "history_limit",
    "health_check",
    "drain_timeout",
    "timeouts",
    "limits",
    "hold",
    "forwarded_headers",
    "canary",
    "gates",
    "analysis",
    "workers",
    "worker_nice",
    "fleet",
    "store",
    "access_log",
    "request_id",
    "log",
    "tls",
)

WORKERS_MAX = 256
WORKER_NICE_MAX = 19     # the nice increment that takes a worker from 0 to the lowest priority


def _admin(value: object) -> AdminConfig:
    data = _section(value, "admin", ("listen", "token", "auth", "read_token", "tls"))
    listen = AdminConfig.listen
    if "listen" in data:
        listen = parse_address(data["listen"], "admin.listen", allow_port_zero=True)
    token = _bearer(data.get("token"), "admin.token")
    read_token = _bearer(data.get("read_token"), "admin.read_token")
    if read_token is not None and read_token == token:
        raise ConfigError("must differ from admin.token (it may only read)", key="admin.read_token")
    auth = _choice(data.get("auth", "token"), "admin.auth", ("token", "none"))
    if auth == "none" and not listen.is_loopback:
        raise ConfigError(
            f'"none" is accepted only on a loopback admin.listen, got "{listen}"', key="admin.auth"
        )
    if token is None and auth != "none":
        raise ConfigError(
            "required unless admin.listen is loopback and admin.auth is none", key="admin.token"
        )
    return AdminConfig(listen=listen, token=token, auth=auth, read_token=read_token)


def _bearer(value: object, path: str) -> str | None:
    """_bearer: a token for `Authorization: Bearer <token>`; an empty one is None (unset)."""
    if value is None:
        return None
    token = _str(value, path) or None
    if token is not None and not _BEARER.fullmatch(token):
        raise ConfigError("must be printable ASCII without spaces", key=path)
    return token


def _environment(name: object, value: object, listens: list[Address]) -> EnvironmentConfig:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise ConfigError(
            f"environment name {_show(name)} must match ^[a-z][a-z0-9_-]{{0,31}}$",
            key=f"environments.{name}",
        )
    path = f"environments.{name}"
    data = _section(value, path, ("servers", "tls"))
    if "servers" not in data:
        raise ConfigError("required", key=f"{path}.servers")
    entries = _list(data["servers"], f"{path}.servers")
    if not entries:
        raise ConfigError("must list at least one server", key=f"{path}.servers")
    servers: list[Address] = []
    weights: list[int] = []
    index: dict[Address, int] = {}     # where each address is listed (a list of hundreds stays linear)
    for i, entry in enumerate(entries):
        where = f"{path}.servers[{i}]"
        if isinstance(entry, dict):
            item = _section(entry, where, ("address", "weight"))
            if "address" not in item:
                raise ConfigError("required", key=f"{where}.address")
            address = parse_address(item["address"], f"{where}.address")
            weight = _int(item.get("weight", 1), f"{where}.weight", 1)
        else:
            address = parse_address(entry, where)
            weight = 1
        if address in index:
            raise ConfigError(f'"{address}" is already listed as servers[{index[address]}]', key=where)
        index[address] = i
        for listen in listens:
            if address.port == listen.port and (
                address.host == listen.host or (listen.is_wildcard and address.is_loopback)
            ):
                raise ConfigError(f'"{address}" is cutover\'s own listen address', key=where)
        servers.append(address)
        weights.append(weight)
    return EnvironmentConfig(name=name, servers=tuple(servers), weights=tuple(weights))


def _environments(value: object, listens: list[Address]) -> dict[str, EnvironmentConfig]:
    if value is None:
        raise ConfigError("required: two environments, e.g. blue and green", key="environments")
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {_show(value)}", key="environments")
    if len(value) != 2:
        names = ", ".join(str(n) for n in value) or "none"
        raise ConfigError(f"expected exactly two environments, got {len(value)} ({names})", key="environments")
    environments: dict[str, EnvironmentConfig] = {}
    owner: dict[Address, str] = {}
    for name, body in value.items():
        env = _environment(name, body, listens)
        for i, address in enumerate(env.servers):
            if address in owner:
                raise ConfigError(
                    f'"{address}" is also in environments.{owner[address]} '
                    "(a blue-green pair needs two separate copies)",
                    key=f"environments.{name}.servers[{i}]",
                )
            owner[address] = env.name
        environments[env.name] = env
    return environments


def parse_servers(cfg: Config, name: str, value: object) -> EnvironmentConfig:
    """parse_servers: a server list for environment ``name`` of ``cfg``, checked as the config's
    `environments.NAME.servers` is ("host:port" or {address, weight}; non-empty, no duplicate,
    not one of cutover's own listen addresses).

    The Controller calls it for a server registration (SPEC §12); errors name the list's own
    key path (`servers[1]: expected "host:port"`). That no server is in both environments is
    the caller's check: the other environment's list may be a registration too.
    """
    listens = [a for a in (cfg.listen, cfg.admin.listen, cfg.preview_listen) if a is not None and a.port]
    try:
        return _environment(name, {"servers": value}, listens)
    except ConfigError as err:
        prefix = f"environments.{name}."
        key = err.key[len(prefix):] if err.key and err.key.startswith(prefix) else err.key
        raise ConfigError(err.message, key=key) from None


def _health_check(value: object) -> HealthCheckConfig:
    path = "health_check"
    data = _section(value, path, ("path", "interval", "timeout", "healthy_after", "unhealthy_after"))
    d = HealthCheckConfig()
    return HealthCheckConfig(
        path=_request_path(data.get("path", d.path), f"{path}.path"),
        interval=_positive_duration(data.get("interval", d.interval), f"{path}.interval"),
        timeout=_positive_duration(data.get("timeout", d.timeout), f"{path}.timeout"),
        healthy_after=_int(data.get("healthy_after", d.healthy_after), f"{path}.healthy_after", 1),
        unhealthy_after=_int(data.get("unhealthy_after", d.unhealthy_after), f"{path}.unhealthy_after", 1),
    )


def _timeouts(value: object) -> TimeoutsConfig:
    names = tuple(f.name for f in dataclasses.fields(TimeoutsConfig))
    data = _section(value, "timeouts", names)
    d = TimeoutsConfig()
    return TimeoutsConfig(
        **{n: _positive_duration(data.get(n, getattr(d, n)), f"timeouts.{n}") for n in names}
    )


def _limits(value: object) -> LimitsConfig:
    data = _section(value, "limits", ("max_header_bytes", "max_body_bytes", "max_connections",
                                       "max_response_header_bytes"))
    d = LimitsConfig()
    header = parse_size(data.get("max_header_bytes", d.max_header_bytes), "limits.max_header_bytes")
    if header < 1:
        raise ConfigError(f"must be >= 1, got {header}", key="limits.max_header_bytes")
    body = data.get("max_body_bytes")
    if body is not None:
        body = parse_size(body, "limits.max_body_bytes")
    response_header = parse_size(data.get("max_response_header_bytes", d.max_response_header_bytes),
                                 "limits.max_response_header_bytes")
    if response_header < 1:
        raise ConfigError(f"must be >= 1, got {response_header}", key="limits.max_response_header_bytes")
    return LimitsConfig(
        max_header_bytes=header,
        max_body_bytes=body,
        max_connections=_int(data.get("max_connections", d.max_connections), "limits.max_connections", 1),
        max_response_header_bytes=response_header,
    )


def _hold(value: object) -> HoldConfig:
    data = _section(value, "hold", ("max_wait", "max_queued"))
    d = HoldConfig()
    return HoldConfig(
        max_wait=_positive_duration(data.get("max_wait", d.max_wait), "hold.max_wait"),
        max_queued=_int(data.get("max_queued", d.max_queued), "hold.max_queued", 0),
    )


def _workers(value: object) -> int:
    """_workers: `workers`, a count of processes or "auto" (one per CPU this process may use)."""
    if value == "auto":
        try:
            return max(1, min(WORKERS_MAX, len(os.sched_getaffinity(0))))
        except (AttributeError, OSError):
            return max(1, min(WORKERS_MAX, os.cpu_count() or 1))
    if isinstance(value, str):
        raise ConfigError(f'must be a number of processes or "auto", got {_show(value)}', key="workers")
    return _int(value, "workers", 1, WORKERS_MAX)


_REPLICA_ID = re.compile(r"[\x21-\x2e\x30-\x7e]{1,128}")  # printable ASCII but "/": one etcd key segment


def _fleet(value: object, listen: Address) -> FleetConfig:
    """_fleet: the `fleet` section; replica_id defaults to this host's name and the listen port."""
    data = _section(value, "fleet", ("ack_timeout", "replica_id"))
    replica_id = data.get("replica_id")
    if replica_id is None:
        replica_id = f"{socket.gethostname()}:{listen.port}"
    elif not isinstance(replica_id, str) or not _REPLICA_ID.fullmatch(replica_id):
        raise ConfigError(f"expected 1 to 128 printable ASCII characters without spaces or \"/\", "
                          f"got {_show(replica_id)}", key="fleet.replica_id")
    return FleetConfig(ack_timeout=_positive_duration(data.get("ack_timeout", FleetConfig.ack_timeout),
                                                      "fleet.ack_timeout"),
                       replica_id=replica_id)


_ETCD_PREFIX = re.compile(r"(/[\x21-\x2e\x30-\x7e]+)+")  # "/a/b": no empty segment, no trailing "/"
REQUEST_TIMEOUT_MAX = 60.0        # seconds: store.etcd.request_timeout at most
LEASE_TTL_MAX = 9_000_000_000     # seconds: the longest lease etcd grants


def _store(value: object, base_dir: Path, environ: Mapping[str, str]) -> StoreConfig | None:
    """_store: the `store` section (SPEC §9.2); None when absent. etcd is the one kind of store.

    Checks that every store.etcd.tls file exists (relative paths are relative to base_dir).
    """
    if value is None:
        return None
    data = _section(value, "store", ("etcd",))
    if data.get("etcd") is None:
        raise ConfigError("required: the store's kind (etcd is the one there is)", key="store.etcd")
    path = "store.etcd"
    body = _section(data["etcd"], path, ("endpoints", "prefix", "username", "password", "tls",
                                         "lease_ttl", "request_timeout"))
    endpoints = _etcd_endpoints(body.get("endpoints"))
    if "prefix" not in body:
        raise ConfigError('required: the key prefix of this fleet, e.g. "/cutover/shop"', key=f"{path}.prefix")
    prefix = _str(body["prefix"], f"{path}.prefix")
    if not _ETCD_PREFIX.fullmatch(prefix):
        raise ConfigError('expected a key prefix like "/cutover/shop": starting with "/", no trailing "/", '
                          f"no empty segment, printable ASCII without spaces, got {_show(prefix)}",
                          key=f"{path}.prefix")
    username = _optional_str(body.get("username"), f"{path}.username")
    password = _optional_str(body.get("password"), f"{path}.password")
    if username is not None and password is None:
        raise ConfigError("required with store.etcd.username", key=f"{path}.password")
    if password is not None and username is None:
        raise ConfigError("required with store.etcd.password", key=f"{path}.username")
    tls = _etcd_tls(body.get("tls"), base_dir, environ)
    if tls is not None and not any(e.startswith("https://") for e in endpoints):
        raise ConfigError("set, but no endpoint in store.etcd.endpoints is https://", key=f"{path}.tls")
    ttl = parse_duration(body.get("lease_ttl", EtcdConfig.lease_ttl), f"{path}.lease_ttl")
    if ttl < 1 or ttl != int(ttl) or ttl > LEASE_TTL_MAX:
        raise ConfigError(f"must be a whole number of seconds from 1s to {LEASE_TTL_MAX}s (etcd leases "
                          f"count whole seconds), got {_show(body.get('lease_ttl'))}", key=f"{path}.lease_ttl")
    timeout = _positive_duration(body.get("request_timeout", EtcdConfig.request_timeout),
                                 f"{path}.request_timeout")
    if timeout > REQUEST_TIMEOUT_MAX:
        raise ConfigError(f"must be at most {REQUEST_TIMEOUT_MAX:g}s, got {_show(body.get('request_timeout'))}",
                          key=f"{path}.request_timeout")
    return StoreConfig(etcd=EtcdConfig(endpoints=endpoints, prefix=prefix, username=username,
                                       password=password, tls=tls, lease_ttl=int(ttl),
                                       request_timeout=timeout))


def _optional_str(value: object, path: str) -> str | None:
    """_optional_str: a string, or None when null or empty (as `${VAR:-}` gives)."""
    return None if value is None else _str(value, path) or None


def _etcd_endpoints(value: object) -> tuple[str, ...]:
    """_etcd_endpoints: `store.etcd.endpoints`, each as its origin "http(s)://host:port"."""
    path = "store.etcd.endpoints"
    if value is None:
        raise ConfigError('required: etcd client URLs, e.g. ["http://127.0.0.1:2379"]', key=path)
    items = _list(value, path)
    if not items:
        raise ConfigError("must list at least one etcd client URL", key=path)
    endpoints: list[str] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        expected = f'expected an etcd client URL "http://host:port" or "https://host:port", got {_show(item)}'
        if not isinstance(item, str):
            raise ConfigError(expected, key=where)
        try:
            url = urllib.parse.urlsplit(item.strip())
            port = url.port
        except ValueError:
            raise ConfigError(expected, key=where) from None
        if url.scheme not in ("http", "https") or not url.hostname or port is None or port < 1 \
                or url.username is not None or url.path not in ("", "/") or url.query or url.fragment:
            raise ConfigError(expected, key=where)
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        origin = f"{url.scheme}://{host}:{port}"
        if origin in endpoints:
            raise ConfigError(f'"{origin}" is already listed as endpoints[{endpoints.index(origin)}]', key=where)
        endpoints.append(origin)
    return tuple(endpoints)


def _etcd_tls(value: object, base_dir: Path, environ: Mapping[str, str]) -> EtcdTlsConfig | None:
    """_etcd_tls: `store.etcd.tls`; None when absent or empty. cert and key come both or neither."""
    data = _section(value, "store.etcd.tls", ("ca", "cert", "key"))
    files: dict[str, Path | None] = {}
    for name in ("ca", "cert", "key"):
        files[name] = None
        if data.get(name) is not None:
            files[name] = _existing_file(data[name], f"store.etcd.tls.{name}", base_dir, environ)
    if files["cert"] is not None and files["key"] is None:
        raise ConfigError("required with store.etcd.tls.cert", key="store.etcd.tls.key")
    if files["key"] is not None and files["cert"] is None:
        raise ConfigError("required with store.etcd.tls.key", key="store.etcd.tls.cert")
    if not any(files.values()):
        return None
    return EtcdTlsConfig(**files)


def _absolute(text: str, base_dir: Path, environ: Mapping[str, str]) -> Path:
    """_absolute: a path of the config made absolute: relative to base_dir, "~/" from HOME."""
    if text == "~" or text.startswith("~/"):
        text = (environ.get("HOME") or str(Path.home())) + text[1:]
    file = Path(text)
    if not file.is_absolute():
        file = Path(base_dir) / file
    return Path(os.path.abspath(file))


def _existing_file(value: object, path: str, base_dir: Path, environ: Mapping[str, str]) -> Path:
    """_existing_file: an absolute path (relative to base_dir, "~/" from HOME) of a file that exists."""
    text = _str(value, path).strip()
    if not text:
        raise ConfigError("must not be empty", key=path)
    file = _absolute(text, base_dir, environ)
    if not file.is_file():
        why = "is not a file" if file.exists() else "does not exist"
        raise ConfigError(f"{file} {why}", key=path)
    return file


def _access_log(value: object, base_dir: Path, environ: Mapping[str, str]) -> AccessLogConfig | None:
    """_access_log: the `access_log` section (SPEC §12); None when its path is null (the default).

    A file path is made absolute (relative to base_dir, "~/" from HOME); its folder must exist.
    The file itself is opened by the data plane (each worker, proxy/accesslog.py).
    """
    data = _section(value, "access_log", ("path", "format"))
    fmt = _choice(data.get("format", AccessLogConfig.format), "access_log.format", ("json", "combined"))
    path = data.get("path")
    if path is None:
        return None
    text = _str(path, "access_log.path").strip()
    if not text:
        raise ConfigError('must not be empty (null: no access log, "-": standard output)', key="access_log.path")
    if text == "-":
        return AccessLogConfig(path="-", format=fmt)
    file = _absolute(text, base_dir, environ)
    if file.is_dir():
        raise ConfigError(f"{file} is a folder, expected a file path", key="access_log.path")
    if not file.parent.is_dir():
        raise ConfigError(f"the folder {file.parent} does not exist", key="access_log.path")
    return AccessLogConfig(path=str(file), format=fmt)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log(value: object) -> LogConfig:
    """_log: the `log` section (SPEC §12): the format of every cutover process's log lines and the least level written."""
    data = _section(value, "log", ("format", "level"))
    fmt = _choice(data.get("format", LogConfig.format), "log.format", FORMATS)
    level = data.get("level", LogConfig.level)
    if isinstance(level, str):
        level = level.lower()
    return LogConfig(format=fmt, level=_choice(level, "log.level", LOG_LEVELS))


def _request_id(value: object) -> bool:
    """_request_id: the `request_id` section; whether ids are made up for requests without a sane one."""
    data = _section(value, "request_id", ("generate",))
    generate = data.get("generate", True)
    if not isinstance(generate, bool):
        raise ConfigError(f"expected true or false, got {_show(generate)}", key="request_id.generate")
    return generate


def _analysis(value: object) -> AnalysisConfig:
    data = _section(value, "analysis", ("window", "interval", "max_error_ratio", "min_requests",
                                         "max_p99", "probe_failures", "probe_path"))
    d = AnalysisConfig()
    ratio = data.get("max_error_ratio", d.max_error_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"expected a ratio from 0 to 1, got {_show(ratio)}", key="analysis.max_error_ratio")
    max_p99 = data.get("max_p99")
    return AnalysisConfig(
        window=parse_duration(data.get("window", d.window), "analysis.window"),
        interval=_positive_duration(data.get("interval", d.interval), "analysis.interval"),
        max_error_ratio=float(ratio),
        min_requests=_int(data.get("min_requests", d.min_requests), "analysis.min_requests", 1),
        max_p99=None if max_p99 is None else _positive_duration(max_p99, "analysis.max_p99"),
        probe_failures=_int(data.get("probe_failures", d.probe_failures), "analysis.probe_failures", 1),
        probe_path=_request_path(data.get("probe_path", d.probe_path), "analysis.probe_path"),
    )


def _canary(value: object) -> str | None:
    data = _section(value, "canary", ("header",))
    header = data.get("header")
    if header is None:
        return None
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
        raise ConfigError(f"expected an HTTP header name, got {_show(header)}", key="canary.header")
    return header


def _smoke_probe(value: object, path: str) -> SmokeProbe:
    data = _section(value, path, ("path", "method", "expect_status", "expect_body_contains"))
    if "path" not in data:
        raise ConfigError("required", key=f"{path}.path")
    method = _str(data.get("method", "GET"), f"{path}.method")
    if not _METHOD.fullmatch(method):
        raise ConfigError(f"expected an HTTP method such as GET, got {_show(method)}", key=f"{path}.method")
    contains = data.get("expect_body_contains")
    if contains is not None:
        contains = _str(contains, f"{path}.expect_body_contains") or None
    return SmokeProbe(
        path=_request_path(data["path"], f"{path}.path"),
        expect_status=_int(data.get("expect_status", 200), f"{path}.expect_status", 100, 599),
        expect_body_contains=contains,
        method=method,
    )


def _gates(value: object) -> GatesConfig:
    data = _section(value, "gates", ("smoke", "drift", "schema", "warmup"))
    smoke = tuple(
        _smoke_probe(item, f"gates.smoke[{i}]")
        for i, item in enumerate(_list(data.get("smoke"), "gates.smoke"))
    )

    drift = None
    if "drift" in data and data["drift"] is not None:
        body = _section(data["drift"], "gates.drift", ("path", "ignore"))
        ignore = []
        for i, key in enumerate(_list(body.get("ignore"), "gates.drift.ignore")):
            if not isinstance(key, str) or not key:
                raise ConfigError(f"expected a non-empty string, got {_show(key)}", key=f"gates.drift.ignore[{i}]")
            ignore.append(key)
        drift = DriftGate(
            path=_request_path(body.get("path", DriftGate.path), "gates.drift.path"),
            ignore=tuple(ignore),
        )

    schema = None
    if "schema" in data and data["schema"] is not None:
        body = _section(data["schema"], "gates.schema", ("command",))
        command = body.get("command")
        if command is not None:
            command = _str(command, "gates.schema.command").strip() or None
        schema = SchemaGate(command=command)

    warmup = None
    if "warmup" in data and data["warmup"] is not None:
        body = _section(data["warmup"], "gates.warmup", ("paths", "requests"))
        paths = _list(body.get("paths"), "gates.warmup.paths")
        if not paths:
            raise ConfigError("must list at least one path", key="gates.warmup.paths")
        warmup = WarmupGate(
            paths=tuple(_request_path(p, f"gates.warmup.paths[{i}]") for i, p in enumerate(paths)),
            requests=_int(body.get("requests", WarmupGate.requests), "gates.warmup.requests", 1),
        )
    return GatesConfig(smoke=smoke, drift=drift, schema=schema, warmup=warmup)


def _state_file(value: object, base_dir: Path, environ: Mapping[str, str]) -> Path:
    text = _str(value, "state_file").strip()
    if not text:
        raise ConfigError("must not be empty", key="state_file")
    if text == "~" or text.startswith("~/"):
        home = environ.get("HOME") or str(Path.home())
        text = home + text[1:]
    path = Path(text)
    if not path.is_absolute():
        path = Path(base_dir) / path
    return Path(os.path.abspath(path))


def parse_config(data: object, base_dir: Path, environ: Mapping[str, str] | None = None) -> Config:
    """parse_config: a validated Config from already-parsed YAML (after ${VAR} expansion).

    Called by load_config, and by tests and the demo with a dict. base_dir anchors a relative
    state_file (and store.etcd.tls files); environ supplies HOME for a "~/" path. Writes no files;
    reads only whether the store.etcd.tls files exist.
    """
    if environ is None:
        environ = os.environ
    if data is None:
        raise ConfigError("the config is empty; at least `environments` is required")
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping of keys, got {_show(data)}")
    top = _section(data, "", _TOP)

    listen = parse_address(top.get("listen", "127.0.0.1:8080"), "listen", allow_port_zero=True)
    admin = _admin(top.get("admin"))
    if _same_socket(admin.listen, listen):
        raise ConfigError(f'"{admin.listen}" is also the address of listen', key="admin.listen")
    preview = None
    if top.get("preview_listen") is not None:
        preview = parse_address(top["preview_listen"], "preview_listen", allow_port_zero=True)
        for name, other in (("listen", listen), ("admin.listen", admin.listen)):
            if _same_socket(preview, other):
                raise ConfigError(f'"{preview}" is also the address of {name}', key="preview_listen")

    listens = [a for a in (listen, admin.listen, preview) if a is not None and a.port]
    environments = _environments(top.get("environments"), listens)

    live = top.get("live")
    if live is None:
        live = next(iter(environments))
    elif not isinstance(live, str) or live not in environments:
        raise ConfigError(
            f"{_show(live)} is not one of the environments ({', '.join(environments)})", key="live"
        )

    # TLS files are read and checked here (admin/tlsconfig.py, which imports this module).
    from .tlsconfig import parse_listener_tls, parse_upstream_tls
    admin_tls = top["admin"].get("tls") if isinstance(top.get("admin"), dict) else None
    admin = dataclasses.replace(admin, tls=parse_listener_tls(admin_tls, "admin.tls", base_dir, environ))
    for name, body in top["environments"].items():
        if isinstance(body, dict) and body.get("tls") is not None:
            environments[name] = dataclasses.replace(environments[name], tls=parse_upstream_tls(
                body["tls"], f"environments.{name}.tls", base_dir, environ))

    return Config(
        tls=parse_listener_tls(top.get("tls"), "tls", base_dir, environ),
        listen=listen,
        admin=admin,
        environments=environments,
        live=live,
        state_file=_state_file(top.get("state_file", "var/cutover-state.json"), base_dir, environ),
        history_limit=_int(top.get("history_limit", Config.history_limit), "history_limit", 1, HISTORY_LIMIT_MAX),
        health_check=_health_check(top.get("health_check")),
        drain_timeout=parse_duration(top.get("drain_timeout", 30.0), "drain_timeout"),
        timeouts=_timeouts(top.get("timeouts")),
        limits=_limits(top.get("limits")),
        hold=_hold(top.get("hold")),
        forwarded_headers=_choice(
            top.get("forwarded_headers", "append"), "forwarded_headers", ("append", "replace")
        ),
        gates=_gates(top.get("gates")),
        preview_listen=preview,
        canary_header=_canary(top.get("canary")),
        analysis=_analysis(top.get("analysis")),
        workers=_workers(top.get("workers", 1)),
        worker_nice=_int(top.get("worker_nice", Config.worker_nice), "worker_nice", 0, WORKER_NICE_MAX),
        fleet=_fleet(top.get("fleet"), listen),
        store=_store(top.get("store"), base_dir, environ),
        access_log=_access_log(top.get("access_log"), base_dir, environ),
        generate_request_id=_request_id(top.get("request_id")),
        log=_log(top.get("log")),
    )


# --------------------------------------------------------------------------- files


class _NoDuplicateKeys:
    """_NoDuplicateKeys: the construct_mapping of a yaml loader that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


class _StrictLoader(_NoDuplicateKeys, yaml.SafeLoader):
    """_StrictLoader: yaml.SafeLoader that refuses duplicate keys in a mapping; its messages
    name what is wrong for every YAML error (load_config reads a file that fails with it)."""


# libyaml's parser when PyYAML has it (its wheels do): a config of a few hundred servers is
# read in a few milliseconds instead of tens, which a reload under load notices.
_FastStrictLoader: Any = (type("_FastStrictLoader", (_NoDuplicateKeys, yaml.CSafeLoader), {})
                          if hasattr(yaml, "CSafeLoader") else _StrictLoader)



def load_config(path: str | Path, environ: Mapping[str, str] | None = None, create_folder: bool = True) -> Config:
    """load_config: reads, expands and validates a config file; called by serve, check-config
    and a reload (which creates nothing: ``create_folder`` False).

    environ defaults to os.environ. Creates the state_file's folder. Every failure, including
    an unreadable file and a YAML syntax error (with its line), is a ConfigError naming the file.
    """
    if environ is None:
        environ = os.environ
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", source=name) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", source=name) from None
    try:
        text = expand_env(text, environ)
        try:
            try:
                data = yaml.load(text, Loader=_FastStrictLoader)  # noqa: S506 - a safe loader
            except yaml.YAMLError:
                # Read again by the pure parser, whose messages the errors below are made of.
                data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            if exc.context:
                context = exc.context
                if exc.context_mark and mark and exc.context_mark.line != mark.line:
                    context = f"{context} started on line {exc.context_mark.line + 1}"
                problem = f"{problem} ({context})"
            raise ConfigError(f"YAML error: {problem}", line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"YAML error: {exc}") from None
        base_dir = Path(os.path.abspath(path)).parent
        config = parse_config(data, base_dir, environ)
    except ConfigError as exc:
        raise exc.with_source(name) from None
    folder = config.state_file.parent
    try:
        if create_folder:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the folder {folder}: {exc.strerror or exc}", key="state_file", source=name
        ) from None
    if config.state_file.is_dir():
        raise ConfigError(f"{config.state_file} is a folder, expected a file path", key="state_file", source=name)
    return dataclasses.replace(config, source=Path(os.path.abspath(path)))


def effective_config(cfg: Config) -> dict[str, Any]:
    """effective_config: the config with every default filled in, as a JSON-able dict.

    Printed by check-config and served by the admin API. Durations are seconds, addresses
    "host:port", and a set admin token is "***". The result is itself a valid config.
    """
    from .tlsconfig import effective_listener_tls, effective_upstream_tls
    gates = cfg.gates
    return {
        "listen": str(cfg.listen),
        "preview_listen": str(cfg.preview_listen) if cfg.preview_listen else None,
        "admin": {
            "listen": str(cfg.admin.listen),
            "token": "***" if cfg.admin.token else None,
            "auth": cfg.admin.auth,
            "read_token": "***" if cfg.admin.read_token else None,
            # A TLS section is shown only when set: without one, the output is what it always was.
            **({"tls": effective_listener_tls(cfg.admin.tls)} if cfg.admin.tls else {}),
        },
        "environments": {
            name: {
                "servers": [
                    {"address": str(a), "weight": w} for a, w in zip(env.servers, env.weights)
                ],
                **({"tls": effective_upstream_tls(env.tls)} if env.tls else {}),
            }
            for name, env in cfg.environments.items()
        },
        "live": cfg.live,
        "state_file": str(cfg.state_file),
        "history_limit": cfg.history_limit,
        "health_check": dataclasses.asdict(cfg.health_check),
        "drain_timeout": cfg.drain_timeout,
        "timeouts": dataclasses.asdict(cfg.timeouts),
        "limits": dataclasses.asdict(cfg.limits),
        "hold": dataclasses.asdict(cfg.hold),
        "forwarded_headers": cfg.forwarded_headers,
        "canary": {"header": cfg.canary_header} if cfg.canary_header else None,
        "gates": {
            "smoke": [dataclasses.asdict(p) for p in gates.smoke],
            "drift": {"path": gates.drift.path, "ignore": list(gates.drift.ignore)} if gates.drift else None,
            "schema": {"command": gates.schema.command} if gates.schema else None,
            "warmup": {"paths": list(gates.warmup.paths), "requests": gates.warmup.requests}
            if gates.warmup
            else None,
        },
        "analysis": dataclasses.asdict(cfg.analysis),
        "workers": cfg.workers,
        "worker_nice": cfg.worker_nice,
        "fleet": dataclasses.asdict(cfg.fleet),
        "store": _effective_store(cfg.store),
        "access_log": {"path": cfg.access_log.path if cfg.access_log else None,
                       "format": cfg.access_log.format if cfg.access_log else AccessLogConfig.format},
        "request_id": {"generate": cfg.generate_request_id},
        "log": {"format": cfg.log.format, "level": cfg.log.level},
        **({"tls": effective_listener_tls(cfg.tls)} if cfg.tls else {}),
    }


def _effective_store(store: StoreConfig | None) -> dict[str, Any] | None:
    """_effective_store: effective_config's `store`; a set password is "***"."""
    if store is None:
        return None
    etcd = store.etcd
    tls = None
    if etcd.tls is not None:
        tls = {name: str(getattr(etcd.tls, name)) if getattr(etcd.tls, name) else None
               for name in ("ca", "cert", "key")}
    return {"etcd": {
        "endpoints": list(etcd.endpoints),
        "prefix": etcd.prefix,
        "username": etcd.username,
        "password": "***" if etcd.password else None,
        "tls": tls,
        "lease_ttl": etcd.lease_ttl,
        "request_timeout": etcd.request_timeout,
    }}
