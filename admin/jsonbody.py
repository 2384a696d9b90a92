"""jsonbody: a mutation's request body, read within bounds and parsed into one JSON object.

api.body_of calls ``read_json_object`` for every POST: the body must be empty (= {}) or
``application/json`` (415 otherwise, so that a browser form or a ``text/plain`` fetch from
another site is never read as a command), not compressed (415: the admin listener does
not decompress, see listener.py), at most ``MAX_BODY_BYTES`` (413), nested at most
``MAX_DEPTH`` deep (400, checked before the parser runs, so no input reaches Python's
recursion limit), valid UTF-8 JSON (RFC 8259 §8.1) without duplicate keys, and an object.
Every refusal is a ControlError whose message names the problem and never echoes the body.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .controller import ControlError

MAX_BODY_BYTES = 64 * 1024   # also the admin app's client_max_size
MAX_DEPTH = 32               # arrays and objects inside each other; a mutation body needs 2
ACCEPTED = "application/json"

# A JSON string (RFC 8259 §7): brackets inside one do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


async def read_json_object(request: web.Request) -> dict:
    """read_json_object: api.body_of's first step: the request's body as a JSON object ({} if blank)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise too_large()
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":
        raise ControlError("unsupported_media_type",
                           f"a request body must not be compressed; got Content-Encoding {coding[:40]!r}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    except (RequestPayloadError, ConnectionError) as exc:
        # the answer may reach no one, but the log gets one line rather than a traceback
        raise ControlError("bad_request", f"the body could not be read ({type(exc).__name__}: "
                                          "bad framing, or the client went away)") from None
    declared = request.headers.get("Content-Type")
    if raw.strip() and (declared is None or request.content_type.lower() != ACCEPTED):
        given = request.content_type if declared is not None else "none"
        raise ControlError("unsupported_media_type",
                           f"a request body must be sent as Content-Type {ACCEPTED} (or be empty); got {given}")
    return parse_json_object(raw)


def too_large() -> ControlError:
    """too_large: the 413 for a body over MAX_BODY_BYTES (the API maps aiohttp's own to it too)."""
    return ControlError("payload_too_large", f"the request body is over {MAX_BODY_BYTES} bytes")


def parse_json_object(raw: bytes) -> dict:
    """parse_json_object: the JSON object ``raw`` holds; {} for a blank body; else ControlError 400.

    The tests call it directly with hostile bodies; read_json_object calls it for the API.
    """
    if not raw.strip():
        return {}
    if depth(raw) > MAX_DEPTH:
        raise ControlError("bad_request", f"body is not accepted: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ControlError("bad_request", f"body is not valid JSON: not UTF-8 ({exc.reason} "
                                          f"at byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ControlError("bad_request", f"body is not accepted: duplicate key {exc.args[0]!r}") from None
    except RecursionError:   # depth() bounds nesting already; this keeps any other path a 400
        raise ControlError("bad_request", "body is not accepted: JSON nested too deep") from None
    except ValueError as exc:
        raise ControlError("bad_request", f"body is not valid JSON: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise ControlError("bad_request", f"body must be a JSON object, not {_kind(data)}")
    return data


def depth(raw: bytes) -> int:
    """depth: how deep arrays and objects nest in ``raw`` (brackets inside strings do not count).

    A linear scan in C-speed steps (a regex, a translate, an accumulate); a malformed body
    may count wrong, but then the parser refuses it anyway.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


class _DuplicateKey(ValueError):
    """_DuplicateKey: an object with a key twice (RFC 8259 §4: names SHOULD be unique)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """_unique_keys: json's object_pairs_hook: an object, refusing a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key[:40])
        out[key] = value
    return out


def _short(exc: ValueError) -> str:
    """_short: a parser error as one short line (a JSONDecodeError names line and column)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
             type(None): "null"}
    return kinds.get(type(value), type(value).__name__)
