"""The admin API (SPEC §7): a thin aiohttp layer over the Controller.

Each handler parses a JSON body (an empty body is {}), calls one Controller
method and answers its result as JSON. Errors are JSON
``{"error": "...", "code": "..."}``: every refusal is a ControlError with a stable
code, and STATUS below is the one table that gives each code its HTTP status.

Before any handler, the middleware refuses a request whose method is not safe
(a mutation) when its Origin, Sec-Fetch-Site or Host say a web page of another
site sent it (origin.py: 403 ``cross_origin`` / ``forbidden_host``), with or
without a token. Every /v1 endpoint then needs ``Authorization: Bearer <token>``
unless the config turned auth off on a loopback address: the admin token for
everything, the read token (``admin.read_token``) for GETs only (403
``forbidden`` on a mutation); both compared in constant time. Bodies are read by
jsonbody.py (415, 413, bounded depth). Each mutation logs one line: applied, no
change, replayed or refused; a repeated ``Idempotency-Key`` gets the first answer
(idempotency.py). Requests aiohttp's parser refuses never reach this module: the
listener (listener.py) answers them. /readyz is readiness (readiness.py),
/healthz liveness; neither needs a token, nor does /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from .config import Config
from .controller import Caller, ControlError, Controller
from .idempotency import HEADER as IDEMPOTENCY_KEY
from .idempotency import REPLAYED, Answer, IdempotencyCache, parse_key
from .jsonbody import MAX_BODY_BYTES, read_json_object, too_large
from .listener import REFUSALS
from .loglimit import LogLimit
from .metrics import make_registry, render
from .openapi import openapi_document
from .origin import AdminListener, refusal
from .readiness import Readiness
from .requests import ENDPOINTS, check_body, check_query

log = logging.getLogger("cutover.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROLLER = web.AppKey("controller", Controller)


@dataclass(slots=True)
class Tokens:
    """Tokens: the bearer tokens /v1 takes now: ``admin`` ("" when auth is off) and ``read``
    ("" when there is none); a reload replaces them (make_app's on_reload)."""

    admin: str
    read: str

    def set(self, admin: str | None, read: str | None) -> None:
        self.admin = admin or ""
        self.read = (read or "") if admin else ""


TOKENS = web.AppKey("tokens", Tokens)
RENDER = web.AppKey("render", object)
LISTENER = web.AppKey("listener", AdminListener)
READINESS = web.AppKey("readiness", Readiness)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyCache)
ACTOR = web.RequestKey("actor", str)                # which token the request carried (Caller.actor)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")          # RFC 9110 §9.2.1; anything else is a mutation


# The one table from error code to HTTP status (SPEC §7): every ControlError, whoever raised
# it, is answered with its code's status; the OpenAPI document lists the same codes.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "config_invalid": 400,        # a reload's file does not validate: nothing changed
    "unknown_environment": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "cross_origin": 403,
    "forbidden_host": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "locked": 409,
    "gate_failed": 409,
    "no_previous": 409,
    "no_canary": 409,
    "conflict": 409,
    "restart_required": 409,      # a reload changed what only a restart applies (SPEC §12)
    "superseded": 409,
    "generation_mismatch": 412,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "idempotency_key_reused": 422,
    "internal": 500,
    "state_unavailable": 503,
    "store_unavailable": 503,     # fleet: etcd did not answer, nothing changed (SPEC §9.2)
    "idempotency_busy": 503,
}


def status_of(code: str) -> int:
    """status_of: the HTTP status of an error code (ControlError.status); a code not in STATUS is a bug: 500."""
    return STATUS.get(code, 500)


def refused(exc: ControlError) -> web.Response:
    """refused: the JSON answer of a ControlError: its code's status, its message and extra fields."""
    return error(status_of(exc.code), exc.code, str(exc), **exc.extra)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """error: the JSON error answer every failure uses (refused for a ControlError, else the middleware's own)."""
    body = {"error": message, "code": code}
    body.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="cutover"'} if status == 401 else None
    resp = web.json_response(body, status=status, headers=headers)
    if status == 413:
        resp.force_close()     # the rest of an oversized body is not worth reading
    return resp


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """errors_and_auth: where a mutation comes from, bearer auth on /v1, and every error as JSON."""
    unsafe = request.method not in SAFE_METHODS
    if unsafe:
        cross_site = refusal(request.app[LISTENER], _bound_port(request), _one(request, "Host"),
                             _one(request, "Origin"), _one(request, "Sec-Fetch-Site"), request.scheme)
        if cross_site is not None:
            return _refuse(request, cross_site)
    if request.path.startswith("/v1/"):
        actor = authenticate(request)
        if actor is None:
            return _refuse(request, ControlError("unauthorized", "missing or wrong bearer token"))
        request[ACTOR] = actor
        if unsafe and actor == "read":
            return _refuse(request, ControlError("forbidden", f"the read token may only read; "
                                                              f"{request.method} needs the admin token"))
    try:
        return await handler(request)
    except ControlError as exc:
        return refused(exc)
    except web.HTTPRequestEntityTooLarge:
        return refused(too_large())
    except web.HTTPMethodNotAllowed as exc:
        return refused(ControlError("method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                                    f"use {', '.join(sorted(exc.allowed_methods))}"))
    except web.HTTPNotFound:
        return refused(ControlError("not_found", f"no endpoint {request.path}"))
    except web.HTTPException as exc:   # any other status aiohttp answers, passed through as it is
        return error(exc.status, "http_error", exc.reason)
    except Exception as exc:   # a bug: answer JSON, keep the details in the log
        log.exception("admin %s %s failed", request.method, request.path)
        return refused(ControlError("internal", f"internal error: {type(exc).__name__}"))


def authenticate(request: web.Request) -> str | None:
    """authenticate: the token a /v1 request carried: "admin", "read", "none" (auth off) or None (refused).

    Both tokens are compared, always, as SHA-256 digests with hmac.compare_digest: the time
    taken says neither which token matched nor how much of one.
    """
    tokens = request.app[TOKENS]
    token, read_token = tokens.admin, tokens.read
    if not token:
        return "none"
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
    presented = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
    is_admin = hmac.compare_digest(presented, hashlib.sha256(token.encode()).digest())
    is_read = hmac.compare_digest(presented, hashlib.sha256(read_token.encode()).digest()) and bool(read_token)
    if scheme.lower() != "bearer":
        return None
    return "admin" if is_admin else "read" if is_read else None


def caller_of(request: web.Request) -> Caller:
    """caller_of: who sent a mutation, for its history entry and its log line."""
    return Caller(request.get(ACTOR, "none"), request.remote)


def _refuse(request: web.Request, exc: ControlError) -> web.Response:
    """_refuse: the middleware's 401/403, logged in one line through the bounded REFUSALS log."""
    route = request.match_info.route
    what = route.name if route.name else f"{request.method} {_shown(request.path)}"
    who = f" by {request[ACTOR]}" if ACTOR in request else ""
    request.app[REFUSALS].log(logging.WARNING, "admin %s%s from %s refused: %s (%d)", what, who,
                              request.remote, exc.code, status_of(exc.code))
    return refused(exc)


def _one(request: web.Request, name: str) -> str | None:
    """_one: a header's value; several are joined, so that a check refuses them as malformed."""
    values = request.headers.getall(name, [])
    return None if not values else values[0] if len(values) == 1 else ", ".join(values)


def _bound_port(request: web.Request) -> int:
    """_bound_port: the port this request's connection arrived on (the admin listener's, as bound)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return sockname[1]
    return request.app[LISTENER].port


def _shown(text: str) -> str:
    """_shown: a request path as a log line may show it: printable ASCII, cut short."""
    text = "".join(c if " " < c <= "~" else "?" for c in text)
    return text if len(text) <= 80 else text[:77] + "..."


async def body_of(request: web.Request, action: str) -> dict:
    """body_of: the JSON object a POST carried ({} when empty), checked against the request table.

    Bad JSON, an unknown key or a value the table (requests.py) refuses is a 400 naming it.
    """
    data = await read_json_object(request)
    return check_body(ENDPOINTS[action], data)


def mutation(action: str, call: Callable[[Controller, dict, Caller], Awaitable[dict]]) -> Handler:
    """mutation: a POST handler: parse the body, call the controller, answer the new status.

    ``answered`` wraps it: the Idempotency-Key replay and the line a refusal logs.
    """
    async def handler(request: web.Request) -> web.Response:
        data = await body_of(request, action)
        controller = request.app[CONTROLLER]
        # a path's parameters ({env}) go with the body's fields; the table refuses them in a body
        result = await call(controller, {**data, **request.match_info}, caller_of(request))
        if data.get("wait"):
            # CI blocks on the analysis of the generation this call created. The answer keeps
            # what this call did ("change") and gives that analysis' outcome ("analysis": null for
            # a no-op or a change nothing analyses), around the status once the outcome is known.
            change = result.get("change") if result.get("changed") else None
            outcome = await controller.wait_for_analysis(change["generation"]) if change else None
            result = {**result, **controller.status(), "analysis": outcome}
        _log_applied(action, caller_of(request), data, result)
        ack = result.get("ack")
        # 202: committed, but not every worker confirmed it within fleet.ack_timeout (SPEC §9.1).
        return web.json_response(result, status=202 if ack is not None and not ack["complete"] else 200)
    return answered(action, handler)


def answered(action: str, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
    """answered: a mutation's ControlError as its JSON answer and log line; its Idempotency-Key replay.

    Without an Idempotency-Key the handler just runs. With one, the call runs through the
    application's IdempotencyCache, scoped by (actor, method, path, key) and compared by
    the parsed body; a replay answers the remembered status, headers and body again.
    """
    async def attempt(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ControlError as exc:
            _log_refused(action, caller_of(request), exc)
            return refused(exc)

    async def run(request: web.Request) -> web.Response:
        caller = caller_of(request)
        try:
            key = parse_key(request.headers.getall(IDEMPOTENCY_KEY, []))
            if key is None:
                return await attempt(request)
            # the handler reads the same bytes again: aiohttp keeps a body once read
            fingerprint = json.dumps(await read_json_object(request), sort_keys=True).encode()

            async def remembered() -> Answer:
                resp = await attempt(request)
                # every answer here is a json_response, whose body is bytes
                return Answer(resp.status, dict(resp.headers), bytes(resp.body or b""))
            answer, replayed = await request.app[IDEMPOTENCY].run(
                (caller.actor, request.method, request.path, key), fingerprint, remembered)
        except ControlError as exc:
            _log_refused(action, caller, exc)
            return refused(exc)
        resp = web.Response(status=answer.status, headers=answer.headers, body=answer.body)
        if replayed:
            resp.headers[REPLAYED] = "true"
            log.info("admin %s by %s from %s: replayed the first answer (%d) of its %s",
                     action, caller.actor, caller.client, answer.status, IDEMPOTENCY_KEY)
        return resp
    return run


def _log_applied(action: str, caller: Caller, data: dict, result: dict) -> None:
    """_log_applied: the one line of a mutation that was answered 2xx: applied or no change."""
    change = result.get("change") if result.get("changed") else None
    if not result.get("changed"):
        outcome = "no change"
    elif change and change.get("from") != change.get("to"):
        outcome = f"applied, {change['from']} -> {change['to']}"
    else:
        outcome = "applied"
    analysis = result.get("analysis") if data.get("wait") else None
    reason = data.get("reason")
    log.info("admin %s by %s from %s: %s; live %s, generation %s%s%s", action, caller.actor, caller.client,
             outcome, result.get("live"), result.get("generation"),
             f", analysis {analysis.get('state')}" if isinstance(analysis, dict) else "",
             f" (reason {reason!r})" if reason else "",
             extra={"action": action, "generation": result.get("generation"), "actor": caller.actor,
                    "client": caller.client, "changed": result.get("changed"),
                    "from_env": change.get("from") if change else None, "to_env": change.get("to") if change else None})


def _log_refused(action: str, caller: Caller, exc: ControlError) -> None:
    """_log_refused: the one line of a mutation refused after auth (locked, gate_failed, bad body, ...)."""
    status = status_of(exc.code)
    level = logging.ERROR if status >= 500 else logging.WARNING
    log.log(level, "admin %s by %s from %s refused: %s (%d): %s", action, caller.actor, caller.client,
            exc.code, status, " ".join(str(exc).split())[:300],
            extra={"action": action, "actor": caller.actor, "client": caller.client, "code": exc.code})


async def status(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    await controller.plane.refresh()
    return web.json_response(controller.status())


async def history(request: web.Request) -> web.Response:
    """history: GET /v1/history; ``?limit=N`` the newest N events, ``?since=ISO`` those after it."""
    query = check_query(ENDPOINTS["history"], request.query)
    return web.json_response(request.app[CONTROLLER].history(query.get("limit"), query.get("since")))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def metrics(request: web.Request) -> web.Response:
    await request.app[CONTROLLER].plane.refresh()
    return web.Response(body=request.app[RENDER](),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz(request: web.Request) -> web.Response:
    """healthz: GET /healthz (no auth), liveness: 200 while the process answers at all."""
    router = request.app[CONTROLLER].plane.snapshot().router
    live = router.env(router.route.live)
    return web.json_response({"ok": True, "live": live.name, "live_healthy": live.healthy})


async def readyz(request: web.Request) -> web.Response:
    """readyz: GET /readyz (no auth), readiness: 200 when ready, else 503 with the reasons."""
    report = request.app[READINESS].report()
    return web.json_response(report, status=200 if report["ready"] else 503)


def admin_tokens(config: Config) -> tuple[str | None, str | None]:
    """admin_tokens: the admin and read tokens ``config`` asks /v1 for (None, None: auth none)."""
    if config.admin.auth == "none":
        return None, None
    return config.admin.token, config.admin.read_token


def make_app(controller: Controller, token: str | None, read_token: str | None = None) -> web.Application:
    """make_app: the admin application; ``token`` None or empty turns auth off (loopback only).

    ``read_token`` (admin.read_token) may only read; serve.py runs the result with
    listener.AdminRunner. Status, /metrics, /healthz and /readyz read the data plane
    through ``controller.plane.snapshot``.
    """
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY_BYTES)
    app[CONTROLLER] = controller
    tokens = app[TOKENS] = Tokens("", "")
    tokens.set(token, read_token)
    # A reload's admin.token, admin.read_token and admin.auth apply to the next request.
    controller.on_reload.append(lambda config, keys: tokens.set(*admin_tokens(config)))
    app[LISTENER] = AdminListener.of(controller.config.admin.listen)
    app[READINESS] = Readiness(controller.plane.snapshot)
    app[IDEMPOTENCY] = IdempotencyCache()
    app[REFUSALS] = LogLimit(log, "malformed or refused admin requests")
    registry = make_registry(controller.plane.snapshot, controller)
    app[RENDER] = lambda: render(registry)
    c = Controller
    routes = [
        web.get("/v1/status", status),
        web.get("/v1/history", history),
        web.get("/v1/openapi.json", openapi),
        web.post("/v1/flip", mutation("flip", lambda ctl, d, who: c.flip(
            ctl, d.get("to"), d.get("reason"), d.get("force", False), d.get("if_generation"), caller=who)),
            name="flip"),
        web.post("/v1/rollback", mutation("rollback", lambda ctl, d, who: c.rollback(
            ctl, d.get("reason"), d.get("force", False), d.get("if_generation"), caller=who)), name="rollback"),
        web.post("/v1/hold", mutation("hold", lambda ctl, d, who: c.hold(
            ctl, d.get("timeout"), d.get("reason"), caller=who)), name="hold"),
        web.post("/v1/resume", mutation("resume", lambda ctl, d, who: c.resume(
            ctl, d.get("reason"), caller=who)), name="resume"),
        web.post("/v1/lock", mutation("lock", lambda ctl, d, who: c.lock_switch(
            ctl, d.get("reason"), caller=who)), name="lock"),
        web.post("/v1/unlock", mutation("unlock", lambda ctl, d, who: c.unlock(
            ctl, d.get("reason"), caller=who)), name="unlock"),
        web.post("/v1/reload", mutation("reload", lambda ctl, d, who: c.reload(
            ctl, d.get("reason"), caller=who)), name="reload"),
        web.post("/v1/canary", mutation("canary", lambda ctl, d, who: c.canary(
            ctl, d["weight"], d.get("reason"), d.get("force", False), caller=who)), name="canary"),
        web.post("/v1/promote", mutation("promote", lambda ctl, d, who: c.promote(
            ctl, d.get("reason"), d.get("force", False), caller=who)), name="promote"),
        web.post("/v1/abort", mutation("abort", lambda ctl, d, who: c.abort(
            ctl, d.get("reason"), caller=who)), name="abort"),
        web.post("/v1/schema/attest", mutation("attest", lambda ctl, d, who: c.attest(
            ctl, d.get("from_version"), d.get("to_version"), d.get("by"), caller=who)), name="attest"),
        web.put("/v1/environments/{env}/servers", mutation("servers", lambda ctl, d, who: c.register_servers(
            ctl, d["env"], d["servers"], d.get("reason"), caller=who)), name="servers"),
        web.delete("/v1/environments/{env}/servers", mutation("servers_reset", lambda ctl, d, who: c.reset_servers(
            ctl, d["env"], d.get("reason"), caller=who)), name="servers_reset"),
        web.get("/metrics", metrics),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]
    app.add_routes(routes)
    return app
