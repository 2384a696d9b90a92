"""tlsconfig: the config's TLS sections (SPEC §12), parsed and checked for admin/config.py.

- `tls` (listen and preview_listen) and `admin.tls` (the admin listener): either one pair,
  `{cert, key}`, or `{certificates: [{cert, key}, ...]}` chosen by the client's server_name
  (the first when none matches); `min_version` "1.2" (default) or "1.3". -> proxy.ListenerTLS
- `environments.X.tls`: `{ca, verify, server_name}` for X's servers. -> proxy.UpstreamTLS

Paths are relative to the config's folder, like state_file. Every file is read and checked
at load time with the data plane's own loaders (proxy/tls.py), so a missing file, a PEM that
is not one, or a key that is not its certificate's is a config error naming its key path
(`tls.cert`, `tls.certificates[1].key`, `tls.certificates[1]` for the pair). The data plane
reads the files again in each process that serves (a worker builds its own contexts).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy import CertificateError, CertificateFiles, ListenerTLS, UpstreamTLS, load_certificate, upstream_context

from .config import ConfigError, _existing_file, _section, _show, _str

__all__ = ["effective_listener_tls", "effective_upstream_tls", "parse_listener_tls", "parse_upstream_tls"]

_VERSIONS = ("1.2", "1.3")


def parse_listener_tls(value: object, path: str, base_dir: Path, environ: Mapping[str, str]) -> ListenerTLS | None:
    """parse_listener_tls: `tls` or `admin.tls` (``path``); None when absent or null."""
    if value is None:
        return None
    data = _section(value, path, ("cert", "key", "certificates", "min_version"))
    version = data.get("min_version", ListenerTLS.min_version)
    if not isinstance(version, str) or version not in _VERSIONS:
        raise ConfigError(f'expected "1.2" or "1.3" (quoted: a YAML 1.2 is a number), got {_show(version)}',
                          key=f"{path}.min_version")
    if "certificates" in data:
        for name in ("cert", "key"):
            if name in data:
                raise ConfigError(f"{path}.certificates and {path}.{name} exclude each other: list every "
                                  "certificate under certificates", key=f"{path}.{name}")
        entries = data["certificates"]
        if not isinstance(entries, list):
            raise ConfigError(f"expected a list of {{cert, key}}, got {_show(entries)}", key=f"{path}.certificates")
        if not entries:
            raise ConfigError("must list at least one {cert, key}", key=f"{path}.certificates")
        pairs = tuple(_pair(entry, f"{path}.certificates[{i}]", base_dir, environ, version)
                      for i, entry in enumerate(entries))
    elif "cert" in data or "key" in data:
        pairs = (_pair({k: data[k] for k in ("cert", "key") if k in data}, path, base_dir, environ, version),)
    else:
        raise ConfigError("required: cert and key, or certificates: [{cert, key}, ...]", key=f"{path}.cert")
    return ListenerTLS(certificates=pairs, min_version=version)


def _pair(value: object, path: str, base_dir: Path, environ: Mapping[str, str], version: str) -> CertificateFiles:
    """_pair: one {cert, key} at ``path``, both files read and checked (load_certificate)."""
    data = _section(value, path, ("cert", "key"))
    for name, other in (("cert", "key"), ("key", "cert")):
        if data.get(name) is None:
            why = f"required with {path}.{other}" if data.get(other) is not None else "required"
            raise ConfigError(why, key=f"{path}.{name}")
    files = CertificateFiles(cert=str(_existing_file(data["cert"], f"{path}.cert", base_dir, environ)),
                             key=str(_existing_file(data["key"], f"{path}.key", base_dir, environ)))
    try:
        load_certificate(files, version)
    except CertificateError as exc:
        raise ConfigError(str(exc), key=f"{path}.{exc.part}" if exc.part else path) from None
    return files


def parse_upstream_tls(value: object, path: str, base_dir: Path, environ: Mapping[str, str]) -> UpstreamTLS | None:
    """parse_upstream_tls: `environments.X.tls` (``path``); None when absent or null.

    An empty mapping means TLS verified against the system's certificate store.
    """
    if value is None:
        return None
    data = _section(value, path, ("ca", "verify", "server_name"))
    ca = None
    if data.get("ca") is not None:
        ca = str(_existing_file(data["ca"], f"{path}.ca", base_dir, environ))
    verify = data.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"expected true or false, got {_show(verify)}", key=f"{path}.verify")
    server_name = None
    if data.get("server_name") is not None:
        server_name = _str(data["server_name"], f"{path}.server_name").strip().lower() or None
        if server_name is not None and (len(server_name) > 253 or any(
                not part or len(part) > 63 or not all(c.isalnum() or c == "-" for c in part)
                for part in server_name.rstrip(".").split("."))):
            raise ConfigError(f"expected a host name such as shop.internal, got {_show(data['server_name'])}",
                              key=f"{path}.server_name")
    tls = UpstreamTLS(ca=ca, verify=verify, server_name=server_name)
    try:
        upstream_context(tls)
    except CertificateError as exc:
        raise ConfigError(str(exc), key=f"{path}.{exc.part}") from None
    return tls


def effective_listener_tls(tls: ListenerTLS | None) -> dict[str, Any] | None:
    """effective_listener_tls: effective_config's `tls` / `admin.tls`, always the certificates form."""
    if tls is None:
        return None
    return {"certificates": [{"cert": c.cert, "key": c.key} for c in tls.certificates],
            "min_version": tls.min_version}


def effective_upstream_tls(tls: UpstreamTLS | None) -> dict[str, Any] | None:
    """effective_upstream_tls: effective_config's `environments.X.tls`."""
    if tls is None:
        return None
    return {"ca": tls.ca, "verify": tls.verify, "server_name": tls.server_name}
