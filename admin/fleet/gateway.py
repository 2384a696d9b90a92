"""etcd's v3 JSON gateway, the wire format: values, decoding, errors, txn building (no I/O).

`admin.fleet.etcd` (the client) is the only caller; callers of the client import these names
from there. Every function here is pure, so each quirk of the gateway is pinned by a table test
without sockets (tests/test_etcd_gateway_client.py):

- keys and values are base64 (the protobuf ``bytes`` mapping); int64 fields are JSON strings;
- fields at their default are omitted: a txn whose compare failed has no ``succeeded``, an
  empty range no ``kvs`` and no ``count``, a PUT event no ``type``, an expired lease's
  keepalive no ``TTL``, a compaction's cancel header no ``revision``;
- an error is ``{"error", "code", "message"}`` with an HTTP status; a stream's error line is
  ``{"error": {"grpc_code", "http_code", "message", ...}}`` (``{"code", "message"}`` without
  ``error`` from newer gateways); each becomes an `EtcdRequestError` with the gRPC code;
- a watch cancels with ``canceled`` and, for compaction, ``compact_revision``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODE_UNAUTHENTICATED", "CODE_UNKNOWN", "UNAVAILABLE_CODES", "Compare", "DeleteResult",
    "EtcdAuthError", "EtcdError", "EtcdOutcomeUnknown", "EtcdProtocolError", "EtcdRequestError",
    "EtcdUnavailable", "Event", "KeyValue", "LeaseInfo", "LeaseNotFound", "PutResult", "RangeResult",
    "RevisionCompacted", "Status", "TxnOp", "TxnResult", "WatchCanceled", "WatchCompacted",
    "WatchError", "WatchMessage", "WatchStalled", "compare_create_revision", "compare_mod_revision",
    "compare_value", "compare_version", "decode_bytes_field", "decode_key", "delete_op",
    "delete_range_op", "encode_key",
    "get_op", "header_revision", "int_field", "json_object", "key_bytes", "parse_error",
    "parse_key_value", "parse_kvs", "parse_status", "parse_txn", "parse_watch_message",
    "prefix_range_end", "put_op", "range_request", "token_rejected",
]

# gRPC status codes (grpc/codes) that etcd's errors carry.
CODE_CANCELED = 1
CODE_UNKNOWN = 2
CODE_DEADLINE_EXCEEDED = 4
CODE_NOT_FOUND = 5
CODE_PERMISSION_DENIED = 7
CODE_OUT_OF_RANGE = 11
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16
# The member that answered cannot serve now (no leader, raft timed out, or it is stopping: its
# gateway's connection to itself is closing, CANCELED with HTTP 408): another one may.
UNAVAILABLE_CODES = frozenset({CODE_CANCELED, CODE_DEADLINE_EXCEEDED, CODE_UNAVAILABLE})


# ---------------------------------------------------------------- errors


class EtcdError(Exception):
    """EtcdError: anything the etcd client raises; callers that only need "etcd failed" catch this."""


class EtcdUnavailable(EtcdError):
    """EtcdUnavailable: no endpoint answered; ``reasons`` holds one line per endpoint tried.

    Raised by every call when each endpoint is unreachable, timed out or said it cannot serve
    (etcd's "unavailable"); by a watch also when its stream breaks. Nothing was applied —
    except for the subclass `EtcdOutcomeUnknown`.
    """

    def __init__(self, message: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)


class EtcdOutcomeUnknown(EtcdUnavailable):
    """EtcdOutcomeUnknown: a mutation reached ``endpoint`` but no answer came; it may be applied.

    Never retried by the client (a second attempt could apply it twice, or fail a compare that
    the first one passed). The state store re-reads before it answers.
    """

    def __init__(self, message: str, endpoint: str) -> None:
        super().__init__(message, (message,))
        self.endpoint = endpoint


class EtcdProtocolError(EtcdError):
    """EtcdProtocolError: an answer that is not what etcd's gateway sends (not JSON, bad base64)."""


class EtcdRequestError(EtcdError):
    """EtcdRequestError: etcd refused the request; ``code`` is the gRPC code, ``message`` etcd's text.

    ``status`` is the HTTP status the gateway answered with (200 for an error line in a stream),
    ``endpoint`` the endpoint that answered. Nothing was applied.
    """

    def __init__(self, code: int, message: str, status: int = 0, endpoint: str = "") -> None:
        where = f" (from {endpoint})" if endpoint else ""
        super().__init__(f"etcd refused the request: {message} [gRPC code {code}, HTTP {status}]{where}")
        self.code = code
        self.message = message
        self.status = status
        self.endpoint = endpoint


class EtcdAuthError(EtcdRequestError):
    """EtcdAuthError: authentication failed or is missing, or the user may not do this."""


class LeaseNotFound(EtcdRequestError):
    """LeaseNotFound: the lease named in the request has expired or was revoked."""


class RevisionCompacted(EtcdRequestError):
    """RevisionCompacted: the revision asked for (a read or a compaction) is already compacted."""


class WatchError(EtcdError):
    """WatchError: a watch ended; its caller re-reads the state and watches again."""


class WatchCompacted(WatchError):
    """WatchCompacted: etcd canceled the watch because its start revision is compacted.

    ``compact_revision`` is the oldest revision etcd still has: a re-read gives the state at
    or after it, and a new watch starts after that read.
    """

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd canceled the watch: revisions before {compact_revision} are compacted")
        self.compact_revision = compact_revision


class WatchCanceled(WatchError):
    """WatchCanceled: etcd canceled the watch for another reason (``reason``, as etcd gave it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"etcd canceled the watch: {reason}")
        self.reason = reason


class WatchStalled(WatchError):
    """WatchStalled: nothing came on the watch stream for ``idle_timeout`` seconds, not even progress."""

    def __init__(self, endpoint: str, idle_timeout: float) -> None:
        super().__init__(f"the watch on {endpoint} sent nothing for {idle_timeout:g}s, not even a "
                         "progress notification: treated as stalled")
        self.endpoint = endpoint
        self.idle_timeout = idle_timeout


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class KeyValue:
    """KeyValue: one key as etcd stores it, at ``mod_revision``.

    ``version`` counts the puts since the key was created (0 for a deleted key in a DELETE
    event); ``lease`` is the lease it is attached to, 0 for none.
    """

    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """Event: one change seen by a watch; ``type`` is "PUT" or "DELETE", ``kv`` the key after it.

    For a DELETE, ``kv`` holds only the key and the revision of the delete. ``prev_kv`` is the
    key before the change when the watch asked for it (None otherwise, or when it was new).
    """

    type: str
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        """revision: the store revision of this change."""
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class RangeResult:
    """RangeResult: the keys a range (a get) found, in key order, and how many matched in all."""

    kvs: tuple[KeyValue, ...]
    count: int
    more: bool = False


@dataclass(frozen=True, slots=True)
class PutResult:
    """PutResult: a put inside a txn; ``revision`` is the store revision after the txn."""

    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """DeleteResult: a delete inside a txn; how many keys it deleted."""

    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    """TxnResult: whether every compare held, the store revision after the txn, each op's result.

    ``responses`` follows the ``success`` ops when ``succeeded``, the ``failure`` ops otherwise.
    """

    succeeded: bool
    revision: int
    responses: tuple[RangeResult | PutResult | DeleteResult, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """LeaseInfo: a lease's remaining ``ttl`` in seconds (-1: expired or revoked) and its keys."""

    id: int
    ttl: int
    granted_ttl: int = 0
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    """Status: what the member at ``endpoint`` says about itself and its cluster.

    ``revision`` is the cluster's current store revision, ``leader`` the member id of the
    leader (0: none known), ``member_id`` the id of the member that answered.
    """

    endpoint: str
    version: str
    member_id: int
    leader: int
    revision: int
    raft_term: int
    raft_index: int
    db_size: int

    @property
    def is_leader(self) -> bool:
        """is_leader: the member that answered is the leader."""
        return self.leader != 0 and self.leader == self.member_id


# ---------------------------------------------------------------- encoding (pure)


def key_bytes(key: str) -> bytes:
    """key_bytes: the bytes etcd stores for ``key`` (UTF-8; `decode_key` gives it back)."""
    if not isinstance(key, str):
        raise TypeError(f"an etcd key is a str, not {type(key).__name__}")
    return key.encode("utf-8", "surrogateescape")


def decode_key(data: bytes) -> str:
    """decode_key: a stored key as str; bytes that are not UTF-8 survive a round trip."""
    return data.decode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_key(key: str) -> str:
    """encode_key: ``key`` as the gateway takes it (base64 of its UTF-8 bytes)."""
    return _b64(key_bytes(key))


def _value_bytes(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"an etcd value is bytes, not {type(value).__name__} (encode it first)")
    return bytes(value)


def decode_bytes_field(document: dict, name: str) -> bytes:
    """decode_bytes_field: a ``bytes`` field (base64 in JSON); b"" when the gateway left it out."""
    text = document.get(name)
    if text is None:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise EtcdProtocolError(f"etcd's {name!r} is not base64: {str(text)[:80]!r}") from None


def int_field(document: dict, name: str) -> int:
    """int_field: an int64 field, which the gateway sends as a string and leaves out when it is 0."""
    value = document.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EtcdProtocolError(f"etcd's {name!r} is not an integer: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise EtcdProtocolError(f"etcd's {name!r} is not an integer: {value!r}") from None


def json_object(document: Any, what: str) -> dict:
    """json_object: ``document`` if it is a JSON object; EtcdProtocolError naming ``what`` if not."""
    if not isinstance(document, dict):
        raise EtcdProtocolError(f"etcd's {what} is not a JSON object: {str(document)[:120]!r}")
    return document


def prefix_range_end(prefix: bytes) -> bytes:
    """prefix_range_end: the range end that selects every key starting with ``prefix``.

    The prefix with its last byte below 0xff incremented (the 0xff bytes after it dropped);
    b"\\0" — "to the end of the keyspace" — when there is none (an empty prefix, or all 0xff).
    """
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] < 0xFF:
            return prefix[:index] + bytes((prefix[index] + 1,))
    return b"\0"


def range_request(key: str, prefix: bool) -> dict:
    """range_request: ``key`` and ``range_end`` of a range or delete; with ``prefix``, every key under it."""
    raw = key_bytes(key)
    if prefix:
        return {"key": _b64(raw or b"\0"), "range_end": _b64(prefix_range_end(raw))}
    if not raw:
        raise ValueError("an etcd key must not be empty")
    return {"key": _b64(raw)}


def parse_key_value(document: dict) -> KeyValue:
    """parse_key_value: a gateway ``mvccpb.KeyValue`` (base64 key and value, int64 strings)."""
    document = json_object(document, "key-value")
    return KeyValue(key=decode_key(decode_bytes_field(document, "key")),
                    value=decode_bytes_field(document, "value"),
                    create_revision=int_field(document, "create_revision"),
                    mod_revision=int_field(document, "mod_revision"),
                    version=int_field(document, "version"), lease=int_field(document, "lease"))


def header_revision(document: dict) -> int:
    """header_revision: the store revision in an answer's ``header`` (0 when it was left out)."""
    return int_field(json_object(document.get("header") or {}, "header"), "revision")


def parse_kvs(document: dict, name: str = "kvs") -> tuple[KeyValue, ...]:
    """parse_kvs: the key-values listed under ``name`` (none when the gateway left it out)."""
    items = document.get(name) or []
    if not isinstance(items, list):
        raise EtcdProtocolError(f"etcd's {name!r} is not a list")
    return tuple(parse_key_value(item) for item in items)


def _range_result(document: dict) -> RangeResult:
    document = json_object(document, "range response")
    return RangeResult(kvs=parse_kvs(document), count=int_field(document, "count"),
                       more=bool(document.get("more")))


def parse_txn(document: dict) -> TxnResult:
    """parse_txn: a ``/v3/kv/txn`` answer; a missing ``succeeded`` means the compare failed."""
    document = json_object(document, "txn response")
    responses: list[RangeResult | PutResult | DeleteResult] = []
    for item in document.get("responses") or []:
        item = json_object(item, "txn op response")
        if "response_range" in item:
            responses.append(_range_result(item["response_range"]))
        elif "response_put" in item:
            put = json_object(item["response_put"], "put response")
            previous = put.get("prev_kv")
            responses.append(PutResult(revision=header_revision(put),
                                       prev_kv=parse_key_value(previous) if previous else None))
        elif "response_delete_range" in item:
            deleted = json_object(item["response_delete_range"], "delete response")
            responses.append(DeleteResult(deleted=int_field(deleted, "deleted"),
                                          prev_kvs=parse_kvs(deleted, "prev_kvs")))
        else:
            raise EtcdProtocolError(f"etcd's txn answered an op of an unknown kind: {sorted(item)}")
    return TxnResult(succeeded=document.get("succeeded") is True, revision=header_revision(document),
                     responses=tuple(responses))


def parse_status(document: dict, endpoint: str) -> Status:
    """parse_status: a ``/v3/maintenance/status`` answer from ``endpoint``."""
    document = json_object(document, "status response")
    header = json_object(document.get("header") or {}, "header")
    return Status(endpoint=endpoint, version=str(document.get("version", "")),
                  member_id=int_field(header, "member_id"), leader=int_field(document, "leader"),
                  revision=int_field(header, "revision"), raft_term=int_field(document, "raftTerm"),
                  raft_index=int_field(document, "raftIndex"), db_size=int_field(document, "dbSize"))


@dataclass(frozen=True, slots=True)
class WatchMessage:
    """WatchMessage: one ``{"result": ...}`` line of a watch stream, decoded.

    A message with neither ``created``, ``canceled`` nor events is a progress notification:
    every change up to ``revision`` has been sent.
    """

    revision: int
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""

    @property
    def is_progress(self) -> bool:
        """is_progress: a progress notification (no events, neither created nor canceled)."""
        return not (self.events or self.created or self.canceled)

    def raise_if_canceled(self) -> None:
        """raise_if_canceled: WatchCompacted or WatchCanceled when etcd canceled the watch."""
        if not self.canceled:
            return
        if self.compact_revision:
            raise WatchCompacted(self.compact_revision)
        raise WatchCanceled(self.cancel_reason or "no reason given")


def _event(document: dict) -> Event:
    document = json_object(document, "watch event")
    kind = document.get("type", "PUT")
    if kind not in ("PUT", "DELETE"):
        raise EtcdProtocolError(f"etcd sent a watch event of an unknown type: {kind!r}")
    previous = document.get("prev_kv")
    return Event(type=kind, kv=parse_key_value(document.get("kv") or {}),
                 prev_kv=parse_key_value(previous) if previous else None)


def parse_watch_message(document: dict) -> WatchMessage:
    """parse_watch_message: one decoded line of a watch stream; an error line raises.

    An ``{"error": ...}`` line (the stream failed) raises `EtcdUnavailable` when etcd said it
    cannot serve, `WatchCanceled` otherwise.
    """
    document = json_object(document, "watch message")
    if "result" not in document:
        if "error" in document:
            error = parse_error(200, document)
            if error.code in UNAVAILABLE_CODES:
                raise EtcdUnavailable(f"the watch stream failed: {error.message}", (error.message,))
            raise WatchCanceled(error.message)
        raise EtcdProtocolError(f"etcd sent a watch line with neither result nor error: {sorted(document)}")
    result = json_object(document["result"], "watch result")
    events = result.get("events") or []
    if not isinstance(events, list):
        raise EtcdProtocolError("etcd's watch 'events' is not a list")
    return WatchMessage(revision=header_revision(result), events=tuple(_event(item) for item in events),
                        created=result.get("created") is True, canceled=result.get("canceled") is True,
                        compact_revision=int_field(result, "compact_revision"),
                        cancel_reason=str(result.get("cancel_reason") or ""))


def parse_error(status: int, document: Any, endpoint: str = "") -> EtcdRequestError:
    """parse_error: the exception for an error answer from the gateway.

    Takes the unary shape ``{"error": text, "code": N, "message": text}``, a stream's error line
    ``{"error": {"grpc_code" or "code": N, "message": text, ...}}``, and ``{"code", "message"}``
    without ``error``; the class follows the code and etcd's message.
    """
    code, message = CODE_UNKNOWN, ""
    if isinstance(document, dict):
        inner = document.get("error")
        if isinstance(inner, dict):
            raw_code = inner.get("grpc_code", inner.get("code"))
            message = str(inner.get("message") or "")
        else:
            raw_code = document.get("code")
            message = str(document.get("message") or inner or "")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        elif isinstance(raw_code, str) and raw_code.isdigit():
            code = int(raw_code)
    if not message:
        message = f"HTTP {status} without an etcd error message: {str(document)[:200]!r}"
    kind: type[EtcdRequestError] = EtcdRequestError
    if code == CODE_NOT_FOUND and "lease not found" in message:
        kind = LeaseNotFound
    elif code == CODE_OUT_OF_RANGE and "compacted" in message:
        kind = RevisionCompacted
    elif code in (CODE_UNAUTHENTICATED, CODE_PERMISSION_DENIED) or "authentication failed" in message \
            or "user name is empty" in message:
        kind = EtcdAuthError
    return kind(code, message, status, endpoint)


def token_rejected(message: str, code: int = 0) -> bool:
    """token_rejected: etcd no longer takes the token we sent (or sent none, auth being new).

    "invalid auth token": expired, or dropped when authentication was turned off and on;
    "revision of auth store is old": users or roles changed since it was issued (a JWT token);
    "user name is empty": no token sent to an etcd that enabled authentication since.
    """
    return code == CODE_UNAUTHENTICATED or any(
        text in message for text in ("invalid auth token", "revision of auth store is old",
                                     "user name is empty"))


# ---------------------------------------------------------------- txn building (pure)

_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


@dataclass(frozen=True, slots=True)
class Compare:
    """Compare: one condition of a txn: ``target`` of ``key`` compared (``result``) with ``operand``.

    Built by `compare_mod_revision`, `compare_version`, `compare_create_revision` and
    `compare_value`. A key that does not exist has revisions and version 0.
    """

    key: str
    target: str      # "MOD", "VERSION", "CREATE", "VALUE"
    result: str      # "EQUAL", "NOT_EQUAL", "LESS", "GREATER"
    operand: int | bytes

    def to_json(self) -> dict:
        """to_json: the ``etcdserverpb.Compare`` the gateway takes."""
        field = {"MOD": "mod_revision", "VERSION": "version", "CREATE": "create_revision",
                 "VALUE": "value"}[self.target]
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": encode_key(self.key), "target": self.target, "result": self.result, field: operand}


def _compare(key: str, target: str, op: str, operand: int | bytes) -> Compare:
    if op not in _RESULTS:
        raise ValueError(f"a compare takes one of {', '.join(_RESULTS)}, not {op!r}")
    if not key_bytes(key):
        raise ValueError("a compare needs a key")
    if target == "VALUE":
        if isinstance(operand, int):
            raise TypeError("a value compare takes bytes, not int")
        operand = _value_bytes(operand)
    elif isinstance(operand, bool) or not isinstance(operand, int) or operand < 0:
        raise ValueError(f"a {target.lower()} compare takes a revision or version >= 0, not {operand!r}")
    return Compare(key, target, _RESULTS[op], operand)


def compare_mod_revision(key: str, op: str, revision: int) -> Compare:
    """compare_mod_revision: the revision of ``key``'s last change ``op`` ("==", "!=", "<", ">") revision."""
    return _compare(key, "MOD", op, revision)


def compare_create_revision(key: str, op: str, revision: int) -> Compare:
    """compare_create_revision: ``key``'s creation revision; ``("==", 0)`` holds when it does not exist."""
    return _compare(key, "CREATE", op, revision)


def compare_version(key: str, op: str, version: int) -> Compare:
    """compare_version: the number of puts since ``key`` was created; 0 when it does not exist."""
    return _compare(key, "VERSION", op, version)


def compare_value(key: str, op: str, value: bytes) -> Compare:
    """compare_value: ``key``'s value compared with ``value`` (bytes)."""
    return _compare(key, "VALUE", op, value)


@dataclass(frozen=True, slots=True)
class TxnOp:
    """TxnOp: one op of a txn branch; built by `put_op`, `get_op`, `delete_op` and `delete_range_op`."""

    kind: str        # "put", "get", "delete"
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False
    range_end: str = ""   # a delete of [key, range_end) in byte order (`delete_range_op`); "" for none

    def to_json(self) -> dict:
        """to_json: the ``etcdserverpb.RequestOp`` the gateway takes."""
        if self.kind == "put":
            put: dict[str, Any] = {"key": encode_key(self.key), "value": _b64(self.value)}
            if self.lease:
                put["lease"] = str(self.lease)
            return {"request_put": put}
        if self.range_end:
            request = {"key": encode_key(self.key), "range_end": encode_key(self.range_end)}
        else:
            request = range_request(self.key, self.prefix)
        return {"request_range": request} if self.kind == "get" else {"request_delete_range": request}


def put_op(key: str, value: bytes, lease: int | None = None) -> TxnOp:
    """put_op: put ``value`` (bytes) at ``key``, attached to ``lease`` when given."""
    if not key_bytes(key):
        raise ValueError("an etcd key must not be empty")
    return TxnOp("put", key, _value_bytes(value), int(lease or 0))


def get_op(key: str, *, prefix: bool = False) -> TxnOp:
    """get_op: read ``key`` (every key under it with ``prefix``)."""
    range_request(key, prefix)
    return TxnOp("get", key, prefix=prefix)


def delete_op(key: str, *, prefix: bool = False) -> TxnOp:
    """delete_op: delete ``key`` (every key under it with ``prefix``)."""
    range_request(key, prefix)
    return TxnOp("delete", key, prefix=prefix)


def delete_range_op(key: str, range_end: str) -> TxnOp:
    """delete_range_op: delete every key from ``key`` (included) to ``range_end`` (excluded), in byte order.

    The state store trims its oldest history keys with it (zero-padded numbers sort as numbers).
    ``range_end`` must sort after ``key``.
    """
    if not key_bytes(key):
        raise ValueError("an etcd key must not be empty")
    if key_bytes(range_end) <= key_bytes(key):
        raise ValueError(f"a range's end must sort after its start ({key!r}), not {range_end!r}")
    return TxnOp("delete", key, range_end=range_end)
