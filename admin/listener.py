"""listener: the admin API's HTTP server: aiohttp's, answering the requests its parser refuses quietly.

aiohttp parses each request before any middleware runs; a request it cannot parse (a
token from a CRLF secret file ending in a stray CR, a NUL or DEL in a header, a bad
request line) goes to ``RequestHandler.handle_error``, which by default answers a
text/plain 400 quoting the offending header line and logs a traceback quoting it too:
the admin token in clear text, once per request, for anyone who can connect. aiohttp has
no option for this (aio-libs/aiohttp#3287), so serve.py runs the admin application with
``AdminRunner``: the same AppRunner, whose server builds ``QuietRequestHandler``s. Those
answer a short JSON error naming the kind of problem, never a header value, and log one
line per refused request without header values, at most a few per minute (LogLimit).

Relies on aiohttp 3.x's ``web.Server`` keeping its handler arguments in ``_kwargs`` and its
loop in ``_loop`` (true from 3.0 to 3.14); tests/e2e/test_admin_hostile_input.py pins the
behaviour, so an aiohttp that changes them fails there, not silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import http_exceptions as hx
from aiohttp import web

from .loglimit import LogLimit

log = logging.getLogger("cutover.admin")

REFUSALS = web.AppKey("refusals", LogLimit)   # lines about refused untrusted requests, bounded

# What each parser error means, without the bytes it quotes (most specific class first).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (hx.LineTooLong, "a request line or header is too long"),
    (hx.BadHttpMethod, "the method is not a valid token"),
    (hx.BadStatusLine, "the request line is malformed (method, target or HTTP version)"),
    (hx.InvalidURLError, "the request target is malformed"),
    (hx.InvalidHeader, "a header name or value is malformed"),
    (hx.PayloadEncodingError, "the body's framing (Content-Length, chunked) is malformed"),
    (hx.BadHttpMessage, "malformed bytes: a control character such as CR, NUL or DEL in a header, "
                        "a line not ended by CRLF, or a bad chunk size"),
)


def reason_of(exc: BaseException | None, status: int) -> str:
    """reason_of: what was wrong with a request, in words that quote nothing it carried."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if status == 504:
        return "the request took too long"
    return "internal error" if status >= 500 else "malformed request"


class QuietRequestHandler(web.RequestHandler):
    """QuietRequestHandler: aiohttp's connection handler with a JSON ``handle_error`` that leaks nothing."""

    __slots__ = ("refusals",)

    def __init__(self, manager: web.Server, *, refusals: LogLimit, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.refusals = refusals

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """handle_error: aiohttp calls it for a request its parser refused (or a handler crash).

        ``message`` (which quotes the offending bytes) is never used; the line logged names
        the client, the status and ``reason_of``.
        """
        reason = reason_of(exc, status)
        level = logging.ERROR if status >= 500 else logging.WARNING
        what = type(exc).__name__ if exc is not None else "no exception"
        self.refusals.log(level, "admin: malformed request from %s refused with %d: %s (%s)",
                          request.remote, status, reason, what)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed instead")
        code = "bad_request" if status < 500 else "internal"
        resp = web.json_response({"error": f"malformed request: {reason}", "code": code}, status=status)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """log_exception: aiohttp's other error lines (a body that fails after the answer, ...).

        Such an exception can quote request bytes and may be caused by anyone who can
        connect: one bounded line naming its type, no traceback, no message.
        """
        exc = kwargs.get("exc_info")
        what = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        self.refusals.log(logging.WARNING, "admin: a connection ended in %s (%s)", what,
                          reason_of(exc if isinstance(exc, BaseException) else None, 400))


class QuietServer(web.Server):
    """QuietServer: aiohttp's server building QuietRequestHandler connections."""

    def __init__(self, *args: Any, refusals: LogLimit, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusals = refusals

    def __call__(self) -> web.RequestHandler:
        return QuietRequestHandler(self, loop=self._loop, refusals=self.refusals, **self._kwargs)


SHUTDOWN_GRACE = 3.0


class AdminRunner(web.AppRunner):
    """AdminRunner: serve.py's AppRunner for the admin application (no access log, no decompression).

    Its refused-request lines go through the application's ``app[REFUSALS]`` (make_app
    sets it), the same LogLimit as the API's refused mutations.
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        # At shutdown (SIGTERM, or a SIGUSR2 handover) a call still running or waiting for the
        # controller's lock gets SHUTDOWN_GRACE seconds, not aiohttp's 60: its client retries
        # with the same Idempotency-Key (on the successor after a handover).
        kwargs.setdefault("shutdown_timeout", SHUTDOWN_GRACE)
        kwargs.setdefault("auto_decompress", False)   # a mutation body is never compressed (jsonbody.py)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return QuietServer(made.request_handler, request_factory=made.request_factory,
                           handler_cancellation=made.handler_cancellation,
                           loop=asyncio.get_running_loop(), refusals=self.app[REFUSALS], **made._kwargs)
