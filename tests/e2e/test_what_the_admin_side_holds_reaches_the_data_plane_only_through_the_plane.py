"""At run time nothing the admin application or the Controller holds leads to a live data-plane
object except through the LocalPlane (admin/plane.py): snapshots out, Changes in.

A real stack mid-flip, held, with its analysis running and /metrics scraped, is walked from
the admin application and the Controller. That no admin module imports a live object is
tests/admin/test_admin_reaches_the_data_plane_only_through_the_plane.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import types

import aiohttp

from admin.plane import LocalPlane
from proxy.backends import Environment, Server
from proxy.drain import Drain
from proxy.exchange import Exchange
from proxy.hold import HoldGate
from proxy.router import Router
from proxy.server import Proxy
from tests.support.adminapi import JsonAdmin as Admin
from tests.support.wait import eventually

LIVE = (Router, Proxy, Environment, Server, Drain, HoldGate, Exchange)


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
