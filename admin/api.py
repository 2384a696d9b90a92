"""The admin API (SPEC §7): a thin aiohttp layer over the Controller.

Each handler parses a JSON body (an empty body is {}), calls one Controller
method and answers its result as JSON. Every /v1 endpoint needs
``Authorization: Bearer <token>`` (compared in constant time) unless the
config turned auth off on a loopback address. Errors are JSON
``{"error": "...", "code": "..."}``; ControlError carries its own status and
code, and the few protocol errors (401, 404, 405, bad JSON) are mapped here.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from .controller import ControlError, Controller
from .metrics import make_registry, render
from .openapi import openapi_document

log = logging.getLogger("cutover.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROLLER = web.AppKey("controller", Controller)
TOKEN = web.AppKey("token", str)
RENDER = web.AppKey("render", object)

# The body keys each mutation accepts; anything else is a 400 naming the key.
FIELDS = {
    "flip": {"to", "reason", "force", "if_generation", "wait"},
    "rollback": {"reason", "force", "if_generation"},
    "hold": {"timeout", "reason"},
    "resume": {"reason"},
    "lock": {"reason"},
    "unlock": {"reason"},
    "canary": {"weight", "reason", "force"},
    "promote": {"reason", "force", "wait"},
    "abort": {"reason"},
    "attest": {"from_version", "to_version", "by"},
}


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """error: the JSON error answer every failure uses."""
    body = {"error": message, "code": code}
    body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="cutover"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """errors_and_auth: bearer auth on /v1, and every error as JSON."""
    token = request.app[TOKEN]
    if request.path.startswith("/v1/") and token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
        presented = value.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, token.encode()):
            return error(401, "unauthorized", "missing or wrong bearer token")
    try:
        return await handler(request)
    except ControlError as exc:
        return error(exc.status, exc.code, str(exc), **exc.extra)
    except web.HTTPMethodNotAllowed as exc:
        return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                     f"use {', '.join(sorted(exc.allowed_methods))}")
    except web.HTTPNotFound:
        return error(404, "not_found", f"no endpoint {request.path}")
    except web.HTTPException as exc:
        return error(exc.status, "http_error", exc.reason)
    except Exception as exc:   # a bug: answer JSON, keep the details in the log
        log.exception("admin %s %s failed", request.method, request.path)
        return error(500, "internal", f"internal error: {type(exc).__name__}")


async def body_of(request: web.Request, action: str) -> dict:
    """body_of: the JSON object a POST carried ({} when empty); bad JSON or unknown keys are 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, "bad_request", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError(400, "bad_request", "body must be a JSON object")
    unknown = sorted(set(data) - FIELDS[action])
    if unknown:
        raise ControlError(400, "bad_request", f"unknown field {unknown[0]!r} for {action}; "
                           f"accepted: {', '.join(sorted(FIELDS[action]))}")
    for key in ("reason", "to"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ControlError(400, "bad_request", f'"{key}" must be a string')
    for key in ("force", "wait"):
        if key in data and not isinstance(data[key], bool):
            raise ControlError(400, "bad_request", f'"{key}" must be true or false')
    return data


def mutation(action: str, call: Callable[[Controller, dict], Awaitable[dict]]) -> Handler:
    """mutation: a POST handler: parse the body, call the controller, answer the new status."""
    async def handler(request: web.Request) -> web.Response:
        data = await body_of(request, action)
        controller = request.app[CONTROLLER]
        result = await call(controller, data)
        if data.get("wait") and result.get("changed"):
            # CI blocks on the post-flip analysis: the answer carries its outcome.
            outcome = await controller.wait_for_analysis(result["generation"])
            if outcome is not None:
                result = controller.status()
                result.update(changed=True, analysis=outcome)
        log.info("admin %s from %s: generation %s", action, request.remote, result.get("generation"))
        return web.json_response(result)
    return handler


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].status())


async def history(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].history())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[RENDER](),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    live = controller.router.environments[controller.router.route.live]
    return web.json_response({"ok": True, "live": live.name, "live_healthy": live.healthy})


def make_app(controller: Controller, proxy, token: str | None) -> web.Application:
    """make_app: the admin application; ``token`` None or empty turns auth off (loopback only)."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=64 * 1024)
    app[CONTROLLER] = controller
    app[TOKEN] = token or ""
    registry = make_registry(proxy, controller)
    app[RENDER] = lambda: render(registry)
    c = Controller
    routes = [
        web.get("/v1/status", status),
        web.get("/v1/history", history),
        web.get("/v1/openapi.json", openapi),
        web.post("/v1/flip", mutation("flip", lambda ctl, d: c.flip(
            ctl, d.get("to"), d.get("reason"), d.get("force", False), d.get("if_generation")))),
        web.post("/v1/rollback", mutation("rollback", lambda ctl, d: c.rollback(
            ctl, d.get("reason"), d.get("force", False), d.get("if_generation")))),
        web.post("/v1/hold", mutation("hold", lambda ctl, d: c.hold(ctl, d.get("timeout"), d.get("reason")))),
        web.post("/v1/resume", mutation("resume", lambda ctl, d: c.resume(ctl, d.get("reason")))),
        web.post("/v1/lock", mutation("lock", lambda ctl, d: c.lock_switch(ctl, d.get("reason")))),
        web.post("/v1/unlock", mutation("unlock", lambda ctl, d: c.unlock(ctl, d.get("reason")))),
        web.post("/v1/canary", mutation("canary", lambda ctl, d: c.canary(
            ctl, d["weight"] if "weight" in d else _missing("weight"), d.get("reason"), d.get("force", False)))),
        web.post("/v1/promote", mutation("promote", lambda ctl, d: c.promote(
            ctl, d.get("reason"), d.get("force", False)))),
        web.post("/v1/abort", mutation("abort", lambda ctl, d: c.abort(ctl, d.get("reason")))),
        web.post("/v1/schema/attest", mutation("attest", lambda ctl, d: c.attest(
            ctl, d.get("from_version"), d.get("to_version"), d.get("by")))),
        web.get("/metrics", metrics),
        web.get("/healthz", healthz),
    ]
    app.add_routes(routes)
    return app


def _missing(key: str):
    raise ControlError(400, "bad_request", f'"{key}" is required')
