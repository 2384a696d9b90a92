"""Canned error responses and the outcomes an exchange can end with.

Every reply the proxy writes itself goes through ``error_response``: a short
plain-text body naming the problem (none in an answer to HEAD), Content-Length
framing, and ``connection: close`` (after an error the connection is not trusted
further).
"""

from __future__ import annotations

import os
import ssl
from typing import Final

from .headers import status_line


class Outcome:
    """Outcome: how an exchange ended; a drain counts these.

    Plain string constants, compared with ``is``: the hot path reads them once
    per request, and an Enum member lookup costs several times a class attribute.
    """

    OK: Final = "ok"                    # the whole response reached the client
    CLIENT_GONE: Final = "client_gone"  # the client went away first
    FAILED: Final = "failed"            # the proxy answered an error or cut the response short
    FORCED: Final = "forced"            # closed by a drain at drain_timeout or by shutdown


def error_response(status: int, message: str, extra: bytes = b"", head_only: bool = False) -> bytes:
    """error_response: a complete HTTP/1.1 reply with a one-line text body; closes the connection.

    ``head_only`` answers a HEAD request: the same header fields, Content-Length
    included, and no content (RFC 9110 §9.3.2, §8.6).
    """
    body = message.encode("utf-8", "replace") + b"\n"
    return b"".join((
        status_line(status),
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body),
        extra,
        b"connection: close\r\nx-cutover-error: 1\r\n\r\n",
        b"" if head_only else body,
    ))


def describe_os_error(exc: OSError) -> str:
    """describe_os_error: "Connection refused" rather than asyncio's "Connect call failed (...)";
    for a TLS failure what OpenSSL found ("TLS: certificate verify failed: ...")."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
