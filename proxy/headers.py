"""Header rules of the data plane: pure functions over raw header lists.

Headers arrive from httptools as ``(name, value)`` pairs of ``bytes`` in wire
order and case. Every rule here works on lowercase names, is free of I/O and is
tested by tables (tests/test_headers.py). The protocols in downstream.py and
upstream.py call ``rewrite_request`` and ``rewrite_response`` once per message.
"""

from __future__ import annotations

# RFC 9110 §7.6.1 and RFC 9112 §9.6: connection-specific fields never forwarded.
# te is special-cased (only "trailers" may pass), upgrade passes while tunnelling.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})

# Names the request rewrite looks at; any other header is copied as received.
_REQUEST_SPECIAL = HOP_BY_HOP | {
    b"host", b"content-length", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}


class HeaderError(Exception):
    """HeaderError: a request head that must be refused; carries the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """connection_tokens: the lowercase option names listed in Connection header values."""
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


class RequestHead:
    """RequestHead: what rewrite_request learnt about a request head.

    ``block`` holds the header lines to send upstream (each ending in CRLF, no
    final blank line), framing and X-Forwarded-* included.
    """

    __slots__ = ("block", "host", "content_length", "chunked", "upgrade",
                 "expect_continue", "close")

    def __init__(self) -> None:
        self.block = b""
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None   # the Upgrade value when the client asks to switch
        self.expect_continue = False
        self.close = False                  # Connection: close was sent


def rewrite_request(headers: list[tuple[bytes, bytes]], http_minor: int, client_ip: bytes,
                    replace_forwarded: bool) -> RequestHead:
    """rewrite_request: validate a request head and build the header block to forward.

    Called by ClientConnection once per request, when the head is complete.
    Raises HeaderError for heads that must be refused (RFC 9112 §3.2, §6).
    """
    head = RequestHead()
    out: list[bytes] = []
    special = []
    for name, value in headers:
        lname = name.lower()
        if lname not in _REQUEST_SPECIAL:
            out += (name, b": ", value, b"\r\n")
        elif lname == b"host":
            if head.host is not None:
                raise HeaderError(400, "more than one Host header")
            head.host = value
            out += (name, b": ", value, b"\r\n")
        elif lname == b"expect":
            head.expect_continue = value.strip().lower() == b"100-continue"
            out += (name, b": ", value, b"\r\n")
        else:
            special.append((lname, value))
    xff = []
    tokens = None
    for lname, value in special:
        if lname == b"content-length":
            head.content_length = int(value)   # llhttp already refused bad and repeated ones
        elif lname == b"transfer-encoding":
            coding = value.strip().lower()
            if coding != b"chunked" or head.chunked:
                if not coding.endswith(b"chunked"):
                    # RFC 9112 §6.3: without chunked last the body length is unknowable.
                    raise HeaderError(400, "Transfer-Encoding without chunked as the final coding")
                raise HeaderError(501, "unsupported Transfer-Encoding: only chunked is accepted")
            head.chunked = True
        elif lname == b"connection":
            tokens = connection_tokens([value]) | (tokens or set())
        elif lname == b"upgrade":
            head.upgrade = value
        elif lname == b"x-forwarded-for":
            if not replace_forwarded:
                xff.append(value)
        elif lname == b"te":
            if b"trailers" in connection_tokens([value]):
                out.append(b"te: trailers\r\n")
        # x-forwarded-proto and x-forwarded-host are set below from what this proxy saw
    if head.chunked and http_minor == 0:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        raise HeaderError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if head.host is None and http_minor >= 1:
        raise HeaderError(400, "missing Host header")   # RFC 9112 §3.2
    if tokens is None:
        head.upgrade = None
    else:
        tokens.discard(b"host")   # a client cannot have Host stripped (RFC 9112 §3.2)
        if tokens - _CONNECTION_OPTIONS:
            out = _without(headers, tokens, _REQUEST_SPECIAL, out)
        head.close = b"close" in tokens
        if head.upgrade is not None and b"upgrade" in tokens:
            out += (b"connection: upgrade\r\nupgrade: ", head.upgrade, b"\r\n")
        else:
            head.upgrade = None
    if head.chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length is not None:
        out.append(b"content-length: %d\r\n" % head.content_length)
    if xff:
        xff.append(client_ip)
        out += (b"x-forwarded-for: ", b", ".join(xff), b"\r\nx-forwarded-proto: http\r\n")
    else:
        out += (b"x-forwarded-for: ", client_ip, b"\r\nx-forwarded-proto: http\r\n")
    if head.host is not None:
        out += (b"x-forwarded-host: ", head.host, b"\r\n")
    head.block = b"".join(out)
    return head


_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


def _without(headers: list[tuple[bytes, bytes]], tokens: set[bytes], special: frozenset,
             out: list[bytes]) -> list[bytes]:
    """_without: ``out`` rebuilt without the headers that Connection names (RFC 9110 §7.6.1).

    The rare path: the plain headers are emitted again from ``headers`` minus
    the named ones, followed by what ``out`` added after them.
    """
    kept: list[bytes] = []
    plain = 0
    for name, value in headers:
        lname = name.lower()
        if lname not in special or lname == b"host" or lname == b"expect":
            plain += 4
            if lname not in tokens:
                kept += (name, b": ", value, b"\r\n")
    return kept + out[plain:]


class ResponseHead:
    """ResponseHead: the header block of an upstream response, hop-by-hop removed.

    Framing (Content-Length or chunked to the client) is added by the caller,
    which knows the client's HTTP version and the request method.
    """

    __slots__ = ("block", "content_length", "chunked", "upgrade", "unknown_coding")

    def __init__(self) -> None:
        self.block = b""
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.unknown_coding: bytes | None = None   # a transfer coding other than chunked


def rewrite_response(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    """rewrite_response: strip hop-by-hop headers from an upstream response head.

    Called by Exchange once per response head (interim 1xx heads included).
    """
    head = ResponseHead()
    out: list[bytes] = []
    tokens = None
    for name, value in headers:
        lname = name.lower()
        if lname not in _RESPONSE_SPECIAL:
            out += (name, b": ", value, b"\r\n")
        elif lname == b"content-length":
            head.content_length = int(value)
        elif lname == b"transfer-encoding":
            coding = value.strip().lower()
            if coding == b"chunked":
                head.chunked = True
            else:
                head.unknown_coding = value
        elif lname == b"connection":
            tokens = connection_tokens([value]) | (tokens or set())
        elif lname == b"upgrade":
            head.upgrade = value
    if tokens is not None and tokens - _CONNECTION_OPTIONS:
        out = _without(headers, tokens, _RESPONSE_SPECIAL, [])
    head.block = b"".join(out)
    return head


_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}


def reason_phrase(status: int) -> bytes:
    """reason_phrase: the standard reason phrase for the statuses this proxy writes."""
    return _REASONS.get(status, b"Unknown")
