"""reload: what a re-read config changes, and what of it needs a restart (SPEC §12).

The Controller's reload (SIGHUP, `cutover reload`, POST /v1/reload) loads the config file
again and compares it with the one it runs: `changed_keys` lists the key paths whose
effective value differs (admin/config.py effective_config, defaults filled in, so a key
written out with its default value is no change), `restart_keys` those of them a running
router cannot take. Everything else is applied as it runs.

A restart is needed for the sockets (listen, preview_listen, admin.listen, and turning
TLS on or off on them: tls, admin.tls), the processes (workers, and worker_nice with more
than one: a worker cannot raise its priority again), the state store (store,
state_file, history_limit: the store keeps the history it was opened with), the replica's
name in a fleet (fleet.replica_id), and the environments' names and order (the saved state
and every route name them).

Certificates are files: a renewed one keeps its path, so `changed_keys` also compares what
the TLS files hold (`tls_digests`) and names the section whose files changed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .config import Config, effective_config

__all__ = ["RESTART_KEYS", "changed_keys", "restart_keys"]

RESTART_KEYS = ("listen", "preview_listen", "admin.listen", "workers", "worker_nice", "store", "state_file",
                "history_limit", "fleet.replica_id")

_MISSING = object()

# Secrets effective_config shows as "***": compared by their values instead.
_SECRETS = (("admin.token", lambda c: c.admin.token), ("admin.read_token", lambda c: c.admin.read_token),
            ("store.etcd.password", lambda c: c.store.etcd.password if c.store is not None else None))


def tls_digests(config: Config) -> dict[str, str]:
    """tls_digests: for each TLS section of ``config`` (tls, admin.tls, environments.X.tls), a
    digest of the files it names, as they are now (a file that cannot be read counts as empty:
    load_config refused it already, or it went away since)."""
    sections: dict[str, list[str]] = {}
    for key, listener in (("tls", config.tls), ("admin.tls", config.admin.tls)):
        if listener is not None:
            sections[key] = [path for files in listener.certificates for path in (files.cert, files.key)]
    for name, env in config.environments.items():
        if env.tls is not None and env.tls.ca:
            sections[f"environments.{name}.tls"] = [env.tls.ca]
    out = {}
    for key, paths in sections.items():
        digest = hashlib.sha256()
        for path in paths:
            try:
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
            except OSError:
                digest.update(b"unreadable")
        out[key] = digest.hexdigest()
    return out


def changed_keys(old: Config, new: Config,
                 files: tuple[dict[str, str], dict[str, str]] | None = None) -> list[str]:
    """changed_keys: the key paths whose value differs between ``old`` and ``new``, in the order
    of the effective config ("timeouts.connect", "environments.green.servers", "gates.smoke").

    A section present in one and absent (null) in the other is one key ("canary"); lists are
    compared whole. Secrets are compared by value and named without it. With ``files`` (the
    tls_digests taken when ``old`` was applied, and ``new``'s now), a TLS section whose files
    now hold something else is named too ("tls": a renewed certificate).
    """
    keys = _diff(effective_config(old), effective_config(new), "")
    if old.store is None and new.store is None:
        # Without a fleet the replica's name is unused (its default follows listen's port).
        keys = [key for key in keys if key != "fleet.replica_id"]
    if old.workers == 1 and new.workers == 1:
        # One process has no workers to lower the priority of.
        keys = [key for key in keys if key != "worker_nice"]
    for key, value in _SECRETS:
        if value(old) != value(new) and key not in keys and not any(key.startswith(k + ".") for k in keys):
            keys.append(key)
    if files is not None:
        old_files, new_files = files
        for key, digest in new_files.items():
            if old_files.get(key, digest) != digest and not any(k == key or k.startswith(key + ".") for k in keys):
                keys.append(key)
    return keys


def restart_keys(old: Config, new: Config, changed: list[str]) -> list[str]:
    """restart_keys: the keys of ``changed`` a running router cannot take (RESTART_KEYS, and
    "environments" when the environments' names or their order differ)."""
    out = [key for key in changed if any(key == k or key.startswith(k + ".") for k in RESTART_KEYS)]
    for key, before, after in (("tls", old.tls, new.tls), ("admin.tls", old.admin.tls, new.admin.tls)):
        if (before is None) != (after is None):
            out.append(key)             # TLS turned on or off on a listener: its sockets' restart
    if list(old.environments) != list(new.environments):
        out.insert(0, "environments")
    return out


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in dict.fromkeys([*a, *b]):
            out += _diff(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [path]
