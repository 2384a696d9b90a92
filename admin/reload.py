"""reload: what a re-read config changes, and what of it needs a restart (SPEC §12).

The Controller's reload (SIGHUP, `cutover reload`, POST /v1/reload) loads the config file
again and compares it with the one it runs: `changed_keys` lists the key paths whose
effective value differs (admin/config.py effective_config, defaults filled in, so a key
written out with its default value is no change), `restart_keys` those of them a running
router cannot take. Everything else is applied as it runs.

A restart is needed for the sockets (listen, preview_listen, admin.listen), the processes
(workers), the state store (store, state_file, history_limit: the store keeps the history
it was opened with), the replica's name in a fleet (fleet.replica_id), and the environments'
names and order (the saved state and every route name them).
"""

from __future__ import annotations

from typing import Any

from .config import Config, effective_config

__all__ = ["RESTART_KEYS", "changed_keys", "restart_keys"]

RESTART_KEYS = ("listen", "preview_listen", "admin.listen", "workers", "store", "state_file",
                "history_limit", "fleet.replica_id")

_MISSING = object()

# Secrets effective_config shows as "***": compared by their values instead.
_SECRETS = (("admin.token", lambda c: c.admin.token), ("admin.read_token", lambda c: c.admin.read_token),
            ("store.etcd.password", lambda c: c.store.etcd.password if c.store is not None else None))


def changed_keys(old: Config, new: Config) -> list[str]:
    """changed_keys: the key paths whose value differs between ``old`` and ``new``, in the order
    of the effective config ("timeouts.connect", "environments.green.servers", "gates.smoke").

    A section present in one and absent (null) in the other is one key ("canary"); lists are
    compared whole. Secrets are compared by value and named without it.
    """
    keys = _diff(effective_config(old), effective_config(new), "")
    if old.store is None and new.store is None:
        # Without a fleet the replica's name is unused (its default follows listen's port).
        keys = [key for key in keys if key != "fleet.replica_id"]
    for key, value in _SECRETS:
        if value(old) != value(new) and key not in keys and not any(key.startswith(k + ".") for k in keys):
            keys.append(key)
    return keys


def restart_keys(old: Config, new: Config, changed: list[str]) -> list[str]:
    """restart_keys: the keys of ``changed`` a running router cannot take (RESTART_KEYS, and
    "environments" when the environments' names or their order differ)."""
    out = [key for key in changed if any(key == k or key.startswith(k + ".") for k in RESTART_KEYS)]
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
