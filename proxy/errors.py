"""Canned error responses and the outcomes an exchange can end with.

Every reply the proxy writes itself goes through ``error_response``: a short
plain-text body naming the problem, Content-Length framing, and
``connection: close`` (after an error the connection is not trusted further).
"""

from __future__ import annotations

import enum
import os

from .headers import status_line


class Outcome(enum.Enum):
    """Outcome: how an exchange ended; a drain counts these."""

    OK = "ok"                    # the whole response reached the client
    CLIENT_GONE = "client_gone"  # the client went away first
    FAILED = "failed"            # the proxy answered an error or cut the response short
    FORCED = "forced"            # closed by a drain at drain_timeout or by shutdown


def error_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """error_response: a complete HTTP/1.1 reply with a one-line text body; closes the connection."""
    body = message.encode("utf-8", "replace") + b"\n"
    return b"".join((
        status_line(status),
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body),
        extra,
        b"connection: close\r\nx-cutover-error: 1\r\n\r\n",
        body,
    ))


def describe_os_error(exc: OSError) -> str:
    """describe_os_error: "Connection refused" rather than asyncio's "Connect call failed (...)"."""
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
