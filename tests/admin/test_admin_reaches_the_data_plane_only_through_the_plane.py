"""admin/ reaches the data plane only through admin/plane.py: snapshots out, Changes in.

No admin module but plane.py and serve.py (the start-up that builds the plane) imports a
Router, Proxy, Environment or Server, or any class of the proxy modules that define the
live objects; whatever admin imports from the proxy package itself is exported by
proxy/__init__.py, and the modules that drive and read the data plane (the plane, the
controller, gates, analysis, metrics, readiness, the API) import from nothing else. That at
run time nothing the admin side holds leads to a live object but through the LocalPlane is
tests/e2e/test_what_the_admin_side_holds_reaches_the_data_plane_only_through_the_plane.py.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import proxy
from tests.support.paths import ROOT

ADMIN = ROOT / "admin"
BUILDERS = {"plane.py", "serve.py"}
READERS = ("plane.py", "controller.py", "gates.py", "analysis.py", "metrics.py", "readiness.py", "api.py")
LIVE_CLASSES = {"Router", "Proxy", "Environment", "Server", "Drain", "HoldGate", "Exchange", "ClientConnection",
                "UpstreamConnection", "HealthChecker"}
LIVE_MODULES = {"proxy.router", "proxy.server", "proxy.backends", "proxy.drain", "proxy.hold", "proxy.exchange",
                "proxy.downstream", "proxy.upstream", "proxy.health"}


def exported() -> set[str]:
    """exported: the proxy package's public surface (its __all__, else its public names)."""
    return set(getattr(proxy, "__all__", None) or (n for n in vars(proxy) if not n.startswith("_")))


def imports(path: Path):
    """imports: (module, name or None, line) for every import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.module, alias.name, node.lineno


def test_no_admin_module_but_the_plane_and_the_start_up_imports_a_live_data_plane_object():
    public = exported()
    wrong, seen = [], 0
    for path in sorted(ADMIN.rglob("*.py")):
        if path.name in BUILDERS and path.parent == ADMIN:
            continue
        where = path.relative_to(ADMIN.parent)
        for module, name, line in imports(path):
            if module != "proxy" and not module.startswith("proxy."):
                continue
            seen += 1
            found = getattr(importlib.import_module(module), name) if name is not None else None
            if name is None and module in LIVE_MODULES:
                wrong.append(f"{where}:{line}: import {module}")
            elif name in LIVE_CLASSES or (isinstance(found, type) and found.__module__ in LIVE_MODULES):
                wrong.append(f"{where}:{line}: {module}.{name}")
            elif module == "proxy" and name is not None and name not in public:
                wrong.append(f"{where}:{line}: proxy.{name} is not exported by proxy/__init__.py")
    assert seen > 5                     # the walk does see admin's imports from proxy
    assert wrong == []


def test_the_readers_import_from_proxy_only_its_public_surface():
    public = exported()
    for reader in READERS:
        for module, name, line in imports(ADMIN / reader):
            if module == "proxy" or module.startswith("proxy."):
                assert module == "proxy" and name in public, f"admin/{reader}:{line}: {module}.{name}"
