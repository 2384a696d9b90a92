"""Header rules of the data plane: pure functions over split header lists.

Headers arrive from httptools one ``(name, value)`` pair at a time, ``bytes`` in
wire order and case. The protocols sort each pair as it arrives (``split_into``):
a name outside REQUEST_SPECIAL / RESPONSE_SPECIAL is copied through as the
flat parts ``name, b": ", value, b"\r\n"``; a special one goes to a list of
``(lowercase name, value)``. ``rewrite_request`` and ``rewrite_response`` then
apply every rule to the specials and the parts once per message. All of it is
free of I/O and tested by tables (tests/proxy/test_headers.py).
"""

from __future__ import annotations

from typing import Final

# RFC 9110 §7.6.1 and RFC 9112 §9.6: connection-specific fields never forwarded.
# te is special-cased (only "trailers" may pass), upgrade passes while tunnelling.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})

# Names the request rewrite looks at; any other header is copied as received.
REQUEST_SPECIAL: Final = HOP_BY_HOP | {
    b"host", b"content-length", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-cutover-env", b"x-cutover-token",   # the preview route's header and its token: never forwarded
    b"x-cutover-probe",                     # a drill probe: the answer names the environment that served it
    b"x-request-id",                        # checked (sane_request_id); the exchange sends its own line
}
# An upstream's own X-Request-Id is not relayed: the answer carries the id that went upstream.
RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length", b"x-request-id"}

_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Bytes a Host value may hold: reg-name, IP literal and port characters (RFC 3986 §3.2.2).
_HOST_CHARS: Final = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=:[]%")
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
# Bytes an X-Request-Id passed through may hold (SPEC §12), and how long it may be.
REQUEST_ID_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
REQUEST_ID_MAX: Final = 128
# The Connection values nearly every message carries, parsed once.
_PLAIN_CONNECTION: Final = {
    spelling: frozenset({spelling.lower()})
    for word in (b"close", b"keep-alive", b"upgrade")
    for spelling in (word, word.title(), word.upper())
}
# Those of them that a request's fast path may pass over (upgrade needs the general rules).
_KEEP_ALIVE_OR_CLOSE: Final = frozenset(s for s, tokens in _PLAIN_CONNECTION.items() if b"upgrade" not in tokens)


def head_may_end(tail: bytes, data: bytes) -> bool:
    """head_may_end: whether the empty line that ends a head (CRLF CRLF, RFC 9112 §2.1; llhttp
    accepts no other) can be in ``data``, read after ``tail``, the head's last bytes before it.

    Called by the protocols while a head spans reads: httptools grows a field that spans
    reads by concatenating the pieces (quadratic in their number), so reads that cannot end
    the head are gathered, up to flow.GATHER_BYTES, and parsed in one piece.
    """
    return b"\r\n\r\n" in data or b"\r\n\r\n" in tail[-3:] + data[:3]


class HeldReads:
    """HeldReads: the reads of a head that spans reads, not parsed yet.

    Each protocol (ClientConnection.gather, UpstreamConnection.gather) owns one and hands it
    every read of a head begun in an earlier read, after counting the read against its own
    limit. ``take`` holds a read that cannot end the head (answering b"") until one may end
    it or ``cap`` bytes wait, and then answers everything held as one piece to parse.
    """

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] | None = None
        self.size = 0                    # bytes in pieces

    def take(self, tail: bytes, data: bytes, cap: int) -> bytes:
        """take: ``data`` read after ``tail`` (the head's last parsed bytes): b"" or what to parse now."""
        pieces = self.pieces
        edge = tail if pieces is None else (tail + b"".join(pieces[-3:]))[-3:]
        if head_may_end(edge, data) or self.size + len(data) >= cap:
            if pieces is None:
                return data
            pieces.append(data)
            self.pieces = None
            self.size = 0
            return b"".join(pieces)
        if pieces is None:
            self.pieces = [data]
        else:
            pieces.append(data)
        self.size += len(data)
        return b""


# Spellings -> the lowercase name if special, else b"": a dict lookup instead of
# lowering every name. Common spellings are there from the start; others are
# remembered up to a bound (names are peer-chosen: once it is full, a new
# spelling is only classified, never stored).
_COMMON_NAMES: Final = (
    b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"upgrade", b"te",
    b"trailer", b"expect", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"user-agent", b"accept",
    b"accept-encoding", b"accept-language", b"accept-ranges", b"cookie", b"set-cookie", b"referer",
    b"origin", b"authorization", b"cache-control", b"pragma", b"if-none-match", b"if-modified-since",
    b"content-type", b"content-encoding", b"content-language", b"content-disposition", b"date",
    b"server", b"etag", b"last-modified", b"expires", b"vary", b"location", b"age", b"via",
    b"x-request-id", b"traceparent", b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest",
    b"sec-ch-ua", b"sec-ch-ua-mobile", b"sec-ch-ua-platform", b"upgrade-insecure-requests", b"dnt",
    b"strict-transport-security", b"x-content-type-options", b"x-frame-options", b"access-control-allow-origin",
)


def _spellings(special_names: frozenset[bytes]) -> dict[bytes, bytes]:
    names: dict[bytes, bytes] = {}
    for lname in _COMMON_NAMES:
        title = b"-".join(part[:1].upper() + part[1:] for part in lname.split(b"-"))
        for spelling in (lname, title, lname.upper()):
            names[spelling] = lname if lname in special_names else b""
    return names


REQUEST_NAMES: Final[dict[bytes, bytes]] = _spellings(REQUEST_SPECIAL)
RESPONSE_NAMES: Final[dict[bytes, bytes]] = _spellings(RESPONSE_SPECIAL)
_NAMES_LIMIT: Final = 2048
_NAME_LENGTH_LIMIT: Final = 40


def name_kind(name: bytes, seen: dict[bytes, bytes], special_names: frozenset[bytes]) -> bytes:
    """name_kind: the lowercase name when ``name`` is in special_names, else b"";
    remembers the spelling in ``seen`` (REQUEST_NAMES or RESPONSE_NAMES)."""
    kind = seen.get(name)
    if kind is None:
        lname = name.lower()
        kind = lname if lname in special_names else b""
        if len(seen) < _NAMES_LIMIT and len(name) <= _NAME_LENGTH_LIMIT:
            seen[name] = kind
    return kind


def split_into(parts: list[bytes], special: list[tuple[bytes, bytes]], name: bytes, value: bytes,
               special_names: frozenset[bytes], seen: dict[bytes, bytes]) -> None:
    """split_into: sort one header into pass-through parts or the specials.

    Called by the protocols' on_header for every header of every message, with
    REQUEST_NAMES or RESPONSE_NAMES as ``seen`` (see name_kind).
    """
    lname = seen.get(name)
    if lname is None:
        lname = name_kind(name, seen, special_names)
    if lname:
        special.append((lname, value))
    else:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")


def split(headers: list[tuple[bytes, bytes]], special_names: frozenset[bytes]) -> tuple[list, list]:
    """split: (parts, special) for a whole header list, as the protocols build them."""
    parts: list[bytes] = []
    special: list[tuple[bytes, bytes]] = []
    if special_names is REQUEST_SPECIAL:
        seen = REQUEST_NAMES
    elif special_names is RESPONSE_SPECIAL:
        seen = RESPONSE_NAMES
    else:
        seen = {}   # another set: never mixed into the protocols' memory
    for name, value in headers:
        split_into(parts, special, name, value, special_names, seen)
    return parts, special


def _without(parts: list[bytes], tokens: "set[bytes] | frozenset[bytes]") -> list[bytes]:
    """_without: pass-through parts minus the fields that Connection names (RFC 9110 §7.6.1)."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in tokens:
            kept += parts[i:i + 4]
    return kept


def sane_request_id(value: bytes) -> bool:
    """sane_request_id: whether a client's X-Request-Id may be passed through (SPEC §12):
    1 to REQUEST_ID_MAX bytes of REQUEST_ID_CHARS. Called by rewrite_request; any other
    value is replaced by a generated id, never forwarded."""
    return 0 < len(value) <= REQUEST_ID_MAX and not value.translate(None, REQUEST_ID_CHARS)


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
    final blank line), framing and X-Forwarded-* included; X-Request-Id is never in it
    (the exchange adds the id it chose, see Exchange.attach).
    """

    __slots__ = ("block", "host", "content_length", "chunked", "upgrade",
                 "preview_env", "preview_token", "probe", "expect", "request_id")

    def __init__(self, block: bytes = b"", host: bytes | None = None, request_id: bytes | None = None) -> None:
        self.block = block
        self.host = host
        # The client's X-Request-Id when it sent exactly one and it is sane (sane_request_id), else None.
        self.request_id = request_id
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None   # the Upgrade value when the client asks to switch
        self.preview_env: bytes | None = None     # X-Cutover-Env: the environment asked for
        self.preview_token: bytes | None = None   # X-Cutover-Token: the admin token that allows it
        self.probe = False                        # X-Cutover-Probe was sent
        self.expect = False                       # Expect was sent: the body may wait for a 100 (RFC 9110 §10.1.1)


def rewrite_request(parts: list[bytes], special: list[tuple[bytes, bytes]], http_minor: int,
                    client_ip: bytes, replace_forwarded: bool, proto: bytes = b"http") -> RequestHead:
    """rewrite_request: validate a request head and build the header block to forward.

    Called by ClientConnection once per request, when the head is complete,
    with the parts and specials its on_header gathered (see ``split``).
    Raises HeaderError for heads that must be refused (RFC 9112 §3.2, §6).
    Host leads the block; X-Forwarded-* and framing close it (X-Forwarded-Proto is ``proto``,
    "https" on a TLS listener). X-Request-Id is left out
    of the block: a sane one (only one field, sane_request_id) is head.request_id, any
    other is dropped (the exchange sends a generated one instead).
    """
    host = None
    rid = None
    for lname, value in special:
        if lname == b"host" and host is None:
            host = value
        elif lname == b"x-request-id" and rid is None:
            rid = value
        elif lname != b"connection" or value not in _KEEP_ALIVE_OR_CLOSE:
            break
    else:
        if host and not host.translate(None, _HOST_CHARS):
            # Most heads: one valid Host, perhaps Connection: keep-alive or close and an id, no body.
            return RequestHead(b"Host: %s\r\n%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n"
                               b"x-forwarded-host: %s\r\n" % (host, b"".join(parts), client_ip, proto, host), host,
                               rid if rid is not None and sane_request_id(rid) else None)
    head = RequestHead()
    ids = 0
    first: list[bytes] = []
    xff = []
    tokens = None
    for lname, value in special:
        if lname == b"host":
            if head.host is not None:
                raise HeaderError(400, "more than one Host header")
            if not value:
                raise HeaderError(400, "empty Host header")   # RFC 9110 §4.2.1
            if value.translate(None, _HOST_CHARS):
                raise HeaderError(400, "invalid Host header")   # RFC 9112 §3.2, RFC 3986 §3.2.2
            head.host = value
            first += (b"Host: ", value, b"\r\n")
        elif lname == b"content-length":
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
            plain = _PLAIN_CONNECTION.get(value)
            tokens = (plain or connection_tokens([value])) | (tokens or _NO_TOKENS)
        elif lname == b"upgrade":
            head.upgrade = value
        elif lname == b"expect":
            head.expect = True
            first += (b"Expect: ", value, b"\r\n")
        elif lname == b"x-forwarded-for":
            if not replace_forwarded:
                xff.append(value)
        elif lname == b"te":
            if b"trailers" in connection_tokens([value]):
                # RFC 9110 §10.1.4: TE is hop-by-hop, so it is named in Connection too.
                first.append(b"te: trailers\r\nconnection: te\r\n")
        elif lname == b"x-cutover-env":
            head.preview_env = value.strip()
        elif lname == b"x-cutover-token":
            head.preview_token = value.strip()
        elif lname == b"x-cutover-probe":
            head.probe = True
        elif lname == b"x-request-id":
            ids += 1
            # Two fields are two ids: neither is trusted, a generated one replaces both.
            head.request_id = value if ids == 1 and sane_request_id(value) else None
        # x-forwarded-proto and x-forwarded-host are set below from what this proxy saw
    if head.chunked and http_minor == 0:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        raise HeaderError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if head.host is None and http_minor >= 1:
        raise HeaderError(400, "missing Host header")   # RFC 9112 §3.2
    out = first + parts if first else parts
    if tokens is None:
        head.upgrade = None
    else:
        if tokens - _CONNECTION_OPTIONS:
            # Host, framing and X-Forwarded-* are specials, so no token can strip them.
            out = first + _without(parts, tokens)
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
        out += (b"x-forwarded-for: ", b", ".join(xff), b"\r\nx-forwarded-proto: ", proto, b"\r\n")
    else:
        out += (b"x-forwarded-for: ", client_ip, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
    if head.host is not None:
        out += (b"x-forwarded-host: ", head.host, b"\r\n")
    head.block = b"".join(out)
    return head


class ResponseHead:
    """ResponseHead: the header block of an upstream response, hop-by-hop removed.

    Framing (Content-Length or chunked to the client) is added by the caller,
    which knows the client's HTTP version and the request method.
    """

    __slots__ = ("block", "content_length", "chunked", "upgrade", "unknown_coding")

    def __init__(self, block: bytes = b"", content_length: int | None = None) -> None:
        self.block = block
        self.content_length = content_length
        self.chunked = False
        self.upgrade: bytes | None = None
        self.unknown_coding: bytes | None = None   # a transfer coding other than chunked


def rewrite_response(parts: list[bytes], special: list[tuple[bytes, bytes]]) -> ResponseHead:
    """rewrite_response: the header block of an upstream response, hop-by-hop headers gone.

    Called by Exchange once per response head (interim 1xx heads included),
    with the parts and specials UpstreamConnection.on_header gathered. An upstream's
    X-Request-Id is left out too: the exchange adds the id it sent upstream.
    """
    length = None
    for lname, value in special:
        if lname == b"content-length":
            length = int(value)
        elif lname == b"x-request-id":
            continue   # dropped: the exchange adds the request's own id
        elif lname != b"connection" or value not in _PLAIN_CONNECTION:
            break
    else:
        # Most responses: Content-Length and a plain keep-alive/close, nothing to strip.
        return ResponseHead(b"".join(parts), length)
    head = ResponseHead()
    tokens = None
    for lname, value in special:
        if lname == b"content-length":
            head.content_length = int(value)
        elif lname == b"transfer-encoding":
            if value.strip().lower() == b"chunked":
                head.chunked = True
            else:
                head.unknown_coding = value
        elif lname == b"connection":
            plain = _PLAIN_CONNECTION.get(value)
            tokens = (plain or connection_tokens([value])) | (tokens or _NO_TOKENS)
        elif lname == b"upgrade":
            head.upgrade = value
    if tokens is not None and tokens - _CONNECTION_OPTIONS:
        parts = _without(parts, tokens)
    head.block = b"".join(parts)
    return head


# RFC 9110 §15: the reason phrases this proxy writes (upstream phrases are not kept).
_REASONS: Final = {
    100: b"Continue", 101: b"Switching Protocols", 102: b"Processing", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 203: b"Non-Authoritative Information",
    204: b"No Content", 205: b"Reset Content", 206: b"Partial Content", 207: b"Multi-Status",
    300: b"Multiple Choices", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 402: b"Payment Required", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 406: b"Not Acceptable",
    407: b"Proxy Authentication Required", 408: b"Request Timeout", 409: b"Conflict",
    410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed", 413: b"Content Too Large",
    414: b"URI Too Long", 415: b"Unsupported Media Type", 416: b"Range Not Satisfiable",
    417: b"Expectation Failed", 421: b"Misdirected Request", 422: b"Unprocessable Content",
    425: b"Too Early", 426: b"Upgrade Required", 428: b"Precondition Required",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


# Indexed by status code: every code a parser can report (three digits).
STATUS_LINES: Final = tuple(b"HTTP/1.1 %03d %s\r\n" % (code, _REASONS.get(code, b"")) for code in range(1000))


def status_line(status: int) -> bytes:
    """status_line: "HTTP/1.1 <status> <reason>\\r\\n" with the standard reason phrase."""
    return STATUS_LINES[status] if 0 <= status < 1000 else b"HTTP/1.1 %d \r\n" % status


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """origin_form: (authority, path) of an absolute-form request target, else None.

    RFC 9112 §3.2.2: a server receiving absolute-form ignores Host and uses the
    target's authority; this proxy forwards the origin-form path with that Host.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    cut = len(rest)
    for mark in (b"/", b"?"):
        at = rest.find(mark)
        if at != -1 and at < cut:
            cut = at
    authority, path = rest[:cut], rest[cut:]
    if b"@" in authority:
        authority = authority.rpartition(b"@")[2]   # userinfo is never forwarded
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path
