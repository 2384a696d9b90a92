"""admin/ reaches the data plane only through admin/plane.py: snapshots out, Changes in.

No admin module but plane.py and serve.py (the start-up that builds the plane) imports a
Router, Proxy, Environment or Server, or any class of the proxy modules that define the
live objects; whatever admin imports from the proxy package itself is exported by
proxy/__init__.py, and the modules that drive and read the data plane (the plane, the
controller, gates, analysis, metrics, readiness, the API) import from nothing else. And at
run time nothing the admin application or the Controller holds leads to a live data-plane
object except through the LocalPlane.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import logging
import types
from pathlib import Path

import aiohttp

import proxy
from admin.plane import LocalPlane
from adminapi import JsonAdmin as Admin, eventually
from adminapi import admin_session  # noqa: F401  (a fixture, used by name)
from proxy.backends import Environment, Server
from proxy.drain import Drain
from proxy.exchange import Exchange
from proxy.hold import HoldGate
from proxy.router import Router
from proxy.server import Proxy

ADMIN = Path(__file__).resolve().parent.parent / "admin"
BUILDERS = {"plane.py", "serve.py"}
READERS = ("plane.py", "controller.py", "gates.py", "analysis.py", "metrics.py", "readiness.py", "api.py")
LIVE_CLASSES = {"Router", "Proxy", "Environment", "Server", "Drain", "HoldGate", "Exchange", "ClientConnection",
                "UpstreamConnection", "HealthChecker"}
LIVE_MODULES = {"proxy.router", "proxy.server", "proxy.backends", "proxy.drain", "proxy.hold", "proxy.exchange",
                "proxy.downstream", "proxy.upstream", "proxy.health"}
LIVE = (Router, Proxy, Environment, Server, Drain, HoldGate, Exchange)


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


def held_objects(*roots) -> list:
    """held_objects: every live data-plane object reachable from ``roots`` other than through a LocalPlane.

    Follows instance attributes, containers, closures and bound methods; not modules,
    classes, globals, event loops, tasks or loggers (those reach everything).
    """
    found, seen, todo = [], set(), list(roots)
    skip = (type, types.ModuleType, asyncio.AbstractEventLoop, asyncio.Future, types.CoroutineType,
            types.FrameType, logging.Logger, logging.Handler, LocalPlane, str, bytes, int, float)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, LIVE):
            found.append(obj)
            continue
        if isinstance(obj, skip):
            continue
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif isinstance(obj, types.MethodType):
            todo.append(obj.__self__)
            todo.append(obj.__func__)
        elif isinstance(obj, types.FunctionType):
            todo.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            todo.extend(obj.__defaults__ or ())
            todo.extend((obj.__kwdefaults__ or {}).values())
        elif isinstance(obj, functools.partial):
            todo.extend((obj.func, obj.args, obj.keywords))
        else:
            todo.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(obj, slot):
                        todo.append(getattr(obj, slot))
    return found


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


async def test_what_the_admin_side_holds_reaches_the_data_plane_only_through_the_plane(make_stack, admin_session):
    running = await make_stack(analysis={"window": "5s", "interval": "50ms"},
                               gates={"smoke": [{"path": "/"}], "warmup": {"paths": ["/"], "requests": 2}})
    api = Admin(admin_session, running.admin_port)
    await api.ok("/v1/flip")
    await api.ok("/v1/hold", {"timeout": 30})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
            assert resp.status == 200
    assert (await api.status())["analysis"]["state"] == "running"
    plane = running.controller.plane
    assert isinstance(plane, LocalPlane) and held_objects(plane.proxy)    # the walk does find them behind it
    assert held_objects(running.admin.app, running.controller) == []
    await api.ok("/v1/resume")

    async def watched():
        return (await api.status())["analysis"]["probes"] > 0
    await eventually(watched, timeout=5)
