"""EtcdClient: etcd's v3 API through its JSON gateway, over aiohttp (SPEC §9.2).

The fleet's state store, replica loop and ack barrier (admin/fleet/) are its only callers:
nothing else in cutover knows etcd exists. etcd serves the gateway on its client URL (etcd 3.4
and 3.5 under ``/v3/``); every call is one HTTP POST of a JSON document, its answer decoded by
admin/fleet/gateway.py into frozen values (re-exported here: callers import only this module).
Values are bytes in and bytes out; keys are str.

Streaming calls answer newline-delimited ``{"result": {...}}`` objects, and the gateway sends
nothing back until the request body is complete, so a stream is one-way: one POST per lease
keepalive, one POST per watch, and a watch cannot ask for progress on its own stream.

Endpoints: a call goes to the endpoint that last answered; one that cannot be reached is
skipped for the next. A call that reached an endpoint but got no answer (a timeout, a reset,
etcd's own "unavailable") moves on too if it only reads; a mutation does not, since it may have
been applied: it raises `EtcdOutcomeUnknown`, and the caller re-reads before it answers. When no
endpoint answers, `EtcdUnavailable` names each one tried and why. Every HTTP request is
bounded by ``request_timeout`` (connecting by ``connect_timeout``) and a call tries each
endpoint once, so it takes at most ``len(endpoints) * request_timeout`` (up to three times
that with authentication: a token, the request, a renewed token and the request again).

Authentication: with ``username`` and ``password``, ``/v3/auth/authenticate`` gives a token,
sent as the ``Authorization`` header; when etcd rejects the token (expired after
``--auth-token-ttl`` unused, or dropped when authentication was turned off and on again), the
client authenticates once more and repeats the call once.

A watch (`EtcdClient.watch`) asks for progress notifications, so that a healthy idle stream
still speaks; one silent for ``idle_timeout`` raises `WatchStalled`. etcd sends them every
``--experimental-watch-progress-notify-interval`` (10 minutes by default): with an
idle_timeout shorter than that a healthy idle watch counts as stalled, which costs its caller
a re-read and a new watch, nothing more.
"""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp
from yarl import URL

from admin.fleet.gateway import (
    CODE_UNAUTHENTICATED, CODE_UNKNOWN, UNAVAILABLE_CODES, Compare, DeleteResult, EtcdAuthError,
    EtcdError, EtcdOutcomeUnknown, EtcdProtocolError, EtcdRequestError, EtcdUnavailable, Event, KeyValue,
    LeaseInfo, LeaseNotFound, PutResult, RangeResult, RevisionCompacted, Status, TxnOp, TxnResult,
    WatchCanceled, WatchCompacted, WatchError, WatchMessage, WatchStalled, compare_create_revision,
    compare_mod_revision, compare_value, compare_version, decode_bytes_field, decode_key, delete_op,
    delete_range_op, encode_key, get_op, header_revision, int_field, json_object, key_bytes, parse_error,
    parse_kvs, parse_status,
    parse_txn, parse_watch_message, put_op, range_request, token_rejected,
)

__all__ = [
    "Compare", "DeleteResult", "EtcdAuthError", "EtcdClient", "EtcdError", "EtcdOutcomeUnknown",
    "EtcdProtocolError", "EtcdRequestError", "EtcdUnavailable", "Event", "KeyValue", "LeaseInfo",
    "LeaseNotFound", "PutResult", "RangeResult", "RevisionCompacted", "Status", "TxnOp", "TxnResult",
    "Watch", "WatchCanceled", "WatchCompacted", "WatchError", "WatchStalled",
    "compare_create_revision", "compare_mod_revision", "compare_value", "compare_version",
    "delete_op", "delete_range_op", "get_op", "put_op", "retry_delay",
]

DEFAULT_REQUEST_TIMEOUT = 5.0   # seconds per attempt at one endpoint
DEFAULT_CONNECT_TIMEOUT = 1.0   # seconds to connect, within the attempt
DEFAULT_IDLE_TIMEOUT = 30.0     # seconds a watch may stay silent before it counts as stalled
MAX_WATCH_MESSAGE = 64 * 1024 * 1024  # one watch response line; a longer one is refused
RETRY_FIRST = 0.05              # seconds before the first retry of what etcd did not answer
RETRY_MAX = 2.0                 # the longest wait between two retries

# A watch canceled at creation for one of these reasons is an authentication problem.
_AUTH_REASONS = ("invalid auth token", "user name is empty", "permission denied", "authentication failed")


def retry_delay(failures: int) -> float:
    """retry_delay: how long to wait after ``failures`` failures in a row: RETRY_FIRST, doubled
    each time, at most RETRY_MAX (the store's writes and watches, the fleet's views)."""
    return min(RETRY_FIRST * 2 ** max(failures - 1, 0), RETRY_MAX)


# ---------------------------------------------------------------- the client


class _NotSent(Exception):
    """_NotSent: the request never reached the endpoint (refused, unreachable, connect timeout)."""


class _NoAnswer(Exception):
    """_NoAnswer: the request may have reached the endpoint, but no usable answer came."""


def _endpoint(text: str) -> str:
    url = URL(text) if isinstance(text, str) else None
    if url is None or url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/") \
            or url.query_string or url.fragment:
        raise ValueError(f"an etcd endpoint is http(s)://host:port, not {text!r}")
    return str(url.origin())


class EtcdClient:
    """EtcdClient: etcd's v3 API over its JSON gateway; one aiohttp session for every call.

    Built by the fleet's state store and replica loop; used as ``async with EtcdClient(...)``
    or closed with `close`. ``ssl`` is passed to aiohttp (an SSLContext for a private CA or
    client certificates). See the module docstring for endpoint failover, timeouts and auth.
    ``on_answer``, when set, is called after every call and every watch it opens with whether
    etcd answered (a refusal counts as an answer; no endpoint answering, or a mutation's lost
    answer, does not).
    """

    def __init__(self, endpoints: Iterable[str], *, username: str | None = None,
                 password: str | None = None, ssl: _ssl.SSLContext | bool | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.endpoints: tuple[str, ...] = tuple(_endpoint(item) for item in endpoints)
        if not self.endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        if (username is None) != (password is None) or username == "":
            raise ValueError("etcd authentication takes a username and a password, both or neither")
        if not request_timeout > 0 or not connect_timeout > 0:
            raise ValueError("etcd timeouts must be > 0 seconds")
        self.request_timeout = float(request_timeout)
        # Connecting ends well before the attempt does, so that a timeout while connecting is
        # never taken for one after sending (which makes a mutation's outcome unknown).
        self.connect_timeout = min(float(connect_timeout), self.request_timeout / 2)
        self._username = username
        self._password = password
        self._ssl = ssl
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Told after each call and each watch it opens whether etcd answered (True) or no endpoint
        # did (False); a refusal is an answer. The fleet's LocalCopy keeps status's "connected" by it.
        self.on_answer: Callable[[bool], None] | None = None
        self._answering = True              # whether the last call (or watch opened) was answered
        self._pausing: set[asyncio.Future[None]] = set()   # the `pause` calls under way

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """close: close the HTTP session (and with it any open watch); the client is done."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def endpoint(self) -> str:
        """endpoint: the endpoint the next call goes to first (the last one that answered)."""
        return self.endpoints[self._current]

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EtcdError("the etcd client is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _post(self, endpoint: str, path: str, body: dict, *, stream: bool = False) -> dict:
        """_post: one POST to one endpoint; the answer's JSON object, or an exception.

        _NotSent / _NoAnswer for a transport failure or etcd's "cannot serve"; EtcdRequestError
        for a refusal. A streaming call (lease keepalive) answers with its first result line.
        """
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=self.connect_timeout)
        try:
            async with self._http().post(endpoint + path, json=body, headers=self._headers(),
                                         timeout=timeout) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:
            # Refused, unreachable, TLS failed, or sock_connect passed (no sock_read is set,
            # so a ServerTimeoutError here is always the connect timeout): nothing was sent.
            raise _NotSent(_describe(exc)) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _NoAnswer(_describe(exc)) from None
        try:
            if stream and status == 200:
                lines = [line for line in raw.split(b"\n") if line.strip()]
                if not lines:
                    raise _NoAnswer(f"{path} answered an empty stream")
                document = json.loads(lines[0])
            else:
                document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if status in (502, 503, 504):
                raise _NoAnswer(f"HTTP {status} without a JSON body") from None
            raise EtcdProtocolError(f"{endpoint}{path} answered HTTP {status} with a body that is not "
                                    f"JSON: {raw[:120]!r}") from None
        if status != 200 or (stream and "result" not in document):
            error = parse_error(status, document, endpoint)
            if error.code in UNAVAILABLE_CODES or (status in (502, 503, 504) and error.code == CODE_UNKNOWN):
                raise _NoAnswer(f"etcd cannot serve: {error.message}")
            raise error
        if stream:
            document = document["result"]
        return json_object(document, f"answer to {path}")

    async def _authenticate(self, endpoint: str, stale: str | None) -> None:
        """_authenticate: a new token from ``endpoint``, unless another call replaced ``stale`` already."""
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            self._token = None
            try:
                document = await self._post(endpoint, "/v3/auth/authenticate",
                                            {"name": self._username, "password": self._password})
            except _NoAnswer as exc:
                raise _NotSent(f"authenticating: {exc}") from None
            except EtcdRequestError as exc:
                if "authentication is not enabled" not in exc.message:
                    raise
                self._token = ""   # etcd takes requests without a token; asked again if it refuses one
                return
            token = document.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdAuthError(CODE_UNAUTHENTICATED, "etcd answered authenticate without a token",
                                    200, endpoint)
            self._token = token

    async def _post_authenticated(self, endpoint: str, path: str, body: dict, *, stream: bool) -> dict:
        if self._username is not None and self._token is None:
            await self._authenticate(endpoint, None)
        token = self._token
        try:
            return await self._post(endpoint, path, body, stream=stream)
        except EtcdRequestError as exc:
            if self._username is None and isinstance(exc, EtcdAuthError):
                raise _without_credentials(exc) from None
            if self._username is None or not token_rejected(exc.message, exc.code):
                raise
        await self._authenticate(endpoint, token)
        return await self._post(endpoint, path, body, stream=stream)

    async def _call(self, path: str, body: dict, *, idempotent: bool,
                    stream: bool = False) -> tuple[dict, str]:
        """_call: POST ``body`` to ``path`` on the first endpoint that answers; (answer, endpoint)."""
        reasons: list[str] = []
        count = len(self.endpoints)
        start = self._current
        for step in range(count):
            index = (start + step) % count
            endpoint = self.endpoints[index]
            try:
                document = await self._post_authenticated(endpoint, path, body, stream=stream)
            except _NotSent as exc:
                reasons.append(f"{endpoint}: {exc}")
                continue
            except _NoAnswer as exc:
                if not idempotent:
                    self._current = (index + 1) % count
                    self._heard(False)
                    raise EtcdOutcomeUnknown(f"{path} reached {endpoint} but no answer came ({exc}); "
                                             "it may or may not have been applied", endpoint) from None
                reasons.append(f"{endpoint}: {exc}")
                continue
            except EtcdRequestError:
                self._heard(True)
                raise
            self._current = index
            self._heard(True)
            return document, endpoint
        self._heard(False)
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: " + "; ".join(reasons), reasons)

    def _heard(self, answered: bool) -> None:
        """_heard: tell ``on_answer`` whether etcd answered the call (or the watch) just made;
        the first answer after one that did not come ends every `pause` under way."""
        if answered and not self._answering:
            for waiter in self._pausing:
                if not waiter.done():
                    waiter.set_result(None)
        self._answering = answered
        if self.on_answer is not None:
            self.on_answer(answered)

    async def pause(self, seconds: float) -> None:
        """pause: wait ``seconds`` before trying again what etcd did not answer — or less: until a
        call of this client (the lease's renewal, another watch's re-read) is answered after one
        that was not. Whoever waits out an outage this way tries again as soon as etcd is back,
        not up to a backoff's 2 s later. A pause started while etcd answers lasts ``seconds``.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pausing.add(waiter)
        try:
            await asyncio.wait({waiter}, timeout=seconds)
        finally:
            self._pausing.discard(waiter)
            waiter.cancel()

    # --- keys

    async def get(self, key: str, *, revision: int | None = None) -> KeyValue | None:
        """get: ``key`` as of now (or as of ``revision``), None when it does not exist."""
        body = range_request(key, prefix=False)
        if revision:
            body["revision"] = str(revision)
        document, _ = await self._call("/v3/kv/range", body, idempotent=True)
        kvs = parse_kvs(document)
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: str, *, revision: int | None = None) -> tuple[list[KeyValue], int]:
        """get_prefix: every key starting with ``prefix``, in key order, and the store revision read at."""
        body = range_request(prefix, prefix=True)
        if revision:
            body["revision"] = str(revision)
        document, _ = await self._call("/v3/kv/range", body, idempotent=True)
        return list(parse_kvs(document)), header_revision(document)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """put: store ``value`` (bytes) at ``key``, attached to ``lease`` when given; the new revision."""
        body = put_op(key, value, lease).to_json()["request_put"]
        document, _ = await self._call("/v3/kv/put", body, idempotent=False)
        return header_revision(document)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """delete: delete ``key`` (every key under it with ``prefix``); how many keys went."""
        document, _ = await self._call("/v3/kv/deleterange", range_request(key, prefix), idempotent=False)
        return int_field(document, "deleted")

    async def txn(self, compare: Sequence[Compare], success: Sequence[TxnOp],
                  failure: Sequence[TxnOp] = ()) -> TxnResult:
        """txn: if every ``compare`` holds, run ``success``, else ``failure``; all in one revision."""
        body = {"compare": [item.to_json() for item in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure]}
        reads_only = all(op.kind == "get" for op in (*success, *failure))
        document, _ = await self._call("/v3/kv/txn", body, idempotent=reads_only)
        return parse_txn(document)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """compact: drop the history before ``revision``; RevisionCompacted if it already is."""
        body: dict[str, Any] = {"revision": str(int(revision))}
        if physical:
            body["physical"] = True
        await self._call("/v3/kv/compaction", body, idempotent=True)

    # --- leases

    async def grant(self, ttl: int) -> int:
        """grant: a new lease of ``ttl`` seconds (etcd may raise it to its minimum); its id.

        Retried on another endpoint after a timeout: a lease granted by the lost attempt has
        no keys and expires by itself.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError(f"a lease ttl is a whole number of seconds >= 1, not {ttl!r}")
        document, _ = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, idempotent=True)
        lease = int_field(document, "ID")
        if not lease:
            raise EtcdProtocolError(f"etcd granted a lease without an id: {document}")
        return lease

    async def keepalive_once(self, lease: int) -> int:
        """keepalive_once: renew ``lease`` once (one POST); the seconds it now has, 0 if it is gone.

        The gateway answers a lease that expired or was revoked with no ``TTL`` at all (0),
        not with an error.
        """
        document, _ = await self._call("/v3/lease/keepalive", {"ID": str(int(lease))},
                                       idempotent=True, stream=True)
        return int_field(document, "TTL")

    async def revoke(self, lease: int) -> bool:
        """revoke: end ``lease`` now and delete its keys; False when it was already gone."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(int(lease))}, idempotent=True)
        except LeaseNotFound:
            return False
        return True

    async def time_to_live(self, lease: int, *, keys: bool = False) -> LeaseInfo:
        """time_to_live: ``lease``'s remaining seconds (-1 when it is gone), and its keys if asked."""
        body: dict[str, Any] = {"ID": str(int(lease))}
        if keys:
            body["keys"] = True
        document, _ = await self._call("/v3/lease/timetolive", body, idempotent=True)
        keys_field = document.get("keys") or []
        names = tuple(decode_key(decode_bytes_field({"key": item}, "key")) for item in keys_field)
        return LeaseInfo(id=int_field(document, "ID"), ttl=int_field(document, "TTL"),
                         granted_ttl=int_field(document, "grantedTTL"), keys=names)

    # --- cluster

    async def status(self) -> Status:
        """status: the answering member's view: cluster revision, leader, its own id and version."""
        document, endpoint = await self._call("/v3/maintenance/status", {}, idempotent=True)
        return parse_status(document, endpoint)

    # --- watch

    def watch(self, key: str, start_revision: int, *, prefix: bool = True, range_end: str | None = None,
              idle_timeout: float = DEFAULT_IDLE_TIMEOUT, prev_kv: bool = False,
              on_progress: Callable[[int], None] | None = None) -> Watch:
        """watch: the changes to ``key`` (every key under it with ``prefix``) from ``start_revision``.

        With ``range_end``, the changes to every key from ``key`` (included) to ``range_end``
        (excluded) in byte order instead (``prefix`` is then ignored).
        Returns a `Watch`: ``async with client.watch(...) as events: async for event in events``
        (or ``await events.batch()`` for the events of one revision or more at a time).
        It raises WatchCompacted, WatchCanceled, WatchStalled or EtcdUnavailable when it ends;
        ``on_progress(revision)`` is called for each progress notification.
        """
        if isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision < 0:
            raise ValueError(f"a watch starts at a revision >= 0, not {start_revision!r}")
        if not idle_timeout > 0:
            raise ValueError("a watch's idle_timeout must be > 0 seconds")
        if range_end is not None:
            if key_bytes(range_end) <= key_bytes(key):
                raise ValueError(f"a watched range's end must sort after its start ({key!r}), not {range_end!r}")
            span = {"key": encode_key(key), "range_end": encode_key(range_end)}
        else:
            span = range_request(key, prefix)
        request: dict[str, Any] = {**span, "progress_notify": True}
        if start_revision:
            request["start_revision"] = str(start_revision)
        if prev_kv:
            request["prev_kv"] = True
        return Watch(self, {"create_request": request}, start_revision, float(idle_timeout), on_progress)


def _auth_refusal(reason: str) -> bool:
    return token_rejected(reason) or any(text in reason for text in _AUTH_REASONS)


def _without_credentials(error: EtcdRequestError) -> EtcdAuthError:
    return EtcdAuthError(error.code, f"{error.message} (etcd requires authentication: give a username "
                         "and password)", error.status, error.endpoint)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Watch:
    """Watch: one watch stream, an async iterator of `Event` in revision order.

    Made by `EtcdClient.watch`; the stream opens on ``async with`` or the first ``async for``
    step and closes when the iteration ends, on `aclose`, or when the client closes. It is
    never resumed: after any exception the caller re-reads and starts a new watch.
    ``revision`` is the store revision up to which every change has been delivered (the start
    revision - 1 at first; 0 for a watch "from now" until its first event or progress).
    """

    def __init__(self, client: EtcdClient, request: dict, start_revision: int, idle_timeout: float,
                 on_progress: Callable[[int], None] | None) -> None:
        self._client = client
        self._request = request
        self.idle_timeout = idle_timeout
        self._on_progress = on_progress
        self._response: aiohttp.ClientResponse | None = None
        self._buffer = bytearray()
        self._pending: deque[Event] = deque()
        self._done = False
        self.endpoint = ""
        self.revision = max(start_revision - 1, 0)

    async def __aenter__(self) -> Watch:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def aclose(self) -> None:
        """aclose: close the stream; the iteration ends."""
        self._done = True
        if self._response is not None:
            self._response.close()
            self._response = None

    async def batch(self) -> tuple[Event, ...]:
        """batch: the events not taken yet of the next message that has any (one revision or more), in order.

        etcd never splits one revision's events (those of one transaction) across messages, so
        a batch ends at a revision boundary: once it is taken, every change up to its last
        event's revision has been seen. (Events taken one by one with ``async for`` before
        leave the rest of their message for this.) Raises as iterating does; EtcdError once the
        watch is closed.
        """
        if self._done:
            raise EtcdError("the watch is closed")
        try:
            if self._response is None:
                await self._open()
            while not self._pending:
                self._take(await self._next_message())
            events = tuple(self._pending)
            self._pending.clear()
            return events
        except BaseException:
            await self.aclose()
            raise

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._response is None:
                await self._open()
            while not self._pending:
                self._take(await self._next_message())
            return self._pending.popleft()
        except BaseException:
            await self.aclose()
            raise

    def _take(self, message: WatchMessage) -> None:
        """_take: queue a message's events; raise if it canceled the watch; count its progress.

        Only events and progress notifications move ``revision``: etcd sends events in
        revision order, and progress only once the watch has caught up, whereas the header
        of ``created`` (and of a catch-up batch) carries the store's revision, not the
        watch's.
        """
        message.raise_if_canceled()
        self._pending.extend(message.events)
        if message.events:
            self.revision = max(self.revision, message.events[-1].revision)
        elif message.is_progress:
            self.revision = max(self.revision, message.revision)
            if self._on_progress is not None:
                self._on_progress(message.revision)

    async def _open(self) -> None:
        """_open: create the watch on the first endpoint that confirms it (``created``)."""
        if self._response is not None or self._done:
            return
        client = self._client
        reasons: list[str] = []
        count = len(client.endpoints)
        start = client._current
        for step in range(count):
            index = (start + step) % count
            endpoint = client.endpoints[index]
            try:
                await self._open_at(endpoint)
            except (_NotSent, _NoAnswer) as exc:
                reasons.append(f"{endpoint}: {exc}")
                continue
            except BaseException:
                await self.aclose()
                raise
            client._current = index
            client._heard(True)
            return
        await self.aclose()
        client._heard(False)
        raise EtcdUnavailable("no etcd endpoint accepted the watch: " + "; ".join(reasons), reasons)

    async def _open_at(self, endpoint: str) -> None:
        """_open_at: create the watch at ``endpoint``; a rejected token is renewed once.

        etcd refuses a watch's token not with an error but by canceling the watch it just
        created, the reason in ``cancel_reason``: "invalid auth token" for an unknown one, but
        "permission denied" for one issued before users or roles changed — so with
        credentials, any of those reasons earns one new token and one more try.
        """
        client = self._client
        if client._username is not None and client._token is None:
            await client._authenticate(endpoint, None)
        token = client._token
        created = await self._create(endpoint)
        if created.canceled and client._username is not None and _auth_refusal(created.cancel_reason):
            await self._drop()
            await client._authenticate(endpoint, token)
            created = await self._create(endpoint)
        if created.canceled and _auth_refusal(created.cancel_reason):
            await self._drop()
            error = EtcdAuthError(CODE_UNAUTHENTICATED, created.cancel_reason, 200, endpoint)
            raise _without_credentials(error) if client._username is None else error
        self.endpoint = endpoint
        self._take(created)

    async def _create(self, endpoint: str) -> WatchMessage:
        """_create: POST the create request and read the stream's first message (bounded)."""
        client = self._client
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.connect_timeout)
        self._buffer.clear()
        try:
            async with asyncio.timeout(client.request_timeout):
                try:
                    response = await client._http().post(endpoint + "/v3/watch", json=self._request,
                                                          headers=client._headers(), timeout=timeout)
                except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:
                    raise _NotSent(_describe(exc)) from None
                self._response = response
                if response.status != 200:
                    raw = await response.read()
                    await self._drop()
                    try:
                        document = json.loads(raw)
                    except ValueError:
                        document = None
                    error = parse_error(response.status, document, endpoint)
                    if error.code in UNAVAILABLE_CODES:
                        raise _NoAnswer(f"etcd cannot serve: {error.message}")
                    raise error
                message = await self._read_message()
        except TimeoutError:
            await self._drop()
            raise _NoAnswer("no answer to the watch request within "
                            f"{client.request_timeout:g}s") from None
        except (aiohttp.ClientError, EtcdUnavailable) as exc:
            await self._drop()
            raise _NoAnswer(_describe(exc)) from None
        if not message.created:
            await self._drop()
            raise EtcdProtocolError(f"the watch on {endpoint} did not start with a created message")
        return message

    async def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    async def _next_message(self) -> WatchMessage:
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await self._read_message()
        except TimeoutError:
            raise WatchStalled(self.endpoint, self.idle_timeout) from None
        except aiohttp.ClientError as exc:
            raise EtcdUnavailable(f"the watch stream from {self.endpoint} broke: {_describe(exc)}",
                                  (_describe(exc),)) from None

    async def _read_message(self) -> WatchMessage:
        """_read_message: the next newline-delimited JSON object of the stream, decoded."""
        response = self._response
        if response is None:
            raise EtcdError("the watch is closed")
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
            else:
                chunk = await response.content.readany()
                if chunk:
                    self._buffer += chunk
                    if len(self._buffer) > MAX_WATCH_MESSAGE:
                        raise EtcdProtocolError(f"a watch message from {self.endpoint} is over "
                                                f"{MAX_WATCH_MESSAGE} bytes")
                    continue
                if not self._buffer.strip():
                    raise EtcdUnavailable(f"the watch stream from {self.endpoint or 'etcd'} ended",
                                          ("the stream ended",))
                line = bytes(self._buffer)
                self._buffer.clear()
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise EtcdProtocolError(f"a watch line from {self.endpoint} is not JSON: "
                                        f"{line[:120]!r}") from None
            return parse_watch_message(document)
