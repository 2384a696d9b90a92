"""AdminClient: the admin API (SPEC §7) as one async method per endpoint.

Used by the ``cutover`` admin subcommands (admin/cli.py) and usable from
scripts. Every method answers the API's JSON document as a dict; anything
that is not a 2xx answer with a JSON body raises AdminError, so a caller has
one exception to handle:

- the API refused (4xx/5xx with ``{"error", "code"}``): status and code as sent;
- another HTTP answer (a proxy's HTML 502, say): status, code ``http_<status>``;
- no answer at all: status 0, code ``connection_failed`` or ``timeout``,
  and the message names the URL.

Retry safety (SPEC §7): every mutation method takes ``idempotency_key``, sent as the
``Idempotency-Key`` header; the API answers a repeat of a key it saw in the last 10 minutes
with the first answer and applies nothing again. A call whose connection was closed or reset
before any answer came is tried once more, within the same timeout: a mutation by this
client, with the same key, and only when it carries one (without, a retry could apply it
twice); a read (GET) by aiohttp itself, which retries idempotent methods once (RFC 9112
§9.3.1). A timeout, a refused connection or an answer cut short is never retried.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_URL = "http://127.0.0.1:9901"
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0  # at most this much of the total goes to connecting


class AdminError(Exception):
    """AdminError: a call that did not succeed.

    status is the HTTP status, or 0 when no answer came; code is the API's
    stable error code; body is the API's JSON error document when it sent one.
    """

    def __init__(self, status: int, code: str, message: str, body: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    @property
    def refused(self) -> bool:
        """refused: the switch said no (a gate, the lock or a generation conflict: 409, 412)."""
        return self.status in (409, 412)


def _body(**fields: Any) -> dict:
    """_body: the POST body with the fields that were given (None and False are left out)."""
    return {key: value for key, value in fields.items() if value is not None and value is not False}


class AdminClient:
    """AdminClient: one session against one admin API; use as ``async with AdminClient(url) as c``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, ca: str | None = None) -> None:
        if "://" not in url:
            url = "http://" + url
        if not url.startswith(("http://", "https://")):
            raise AdminError(0, "bad_url", f"not an http(s) admin URL: {url}")
        self.url = url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        # An https admin URL is verified against ca (a PEM file: --ca, CUTOVER_CA), else the system's store.
        self.ssl: ssl.SSLContext | bool = True
        if ca:
            try:
                self.ssl = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise AdminError(0, "bad_ca", f"--ca {ca}: {getattr(exc, 'strerror', None) or exc}") from None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "AdminClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """close: release the session's connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ endpoints

    async def status(self) -> dict:
        return await self._call("GET", "/v1/status")

    async def history(self) -> dict:
        return await self._call("GET", "/v1/history")

    async def flip(self, to: str | None = None, reason: str | None = None, force: bool = False,
                   if_generation: int | None = None, wait: bool = False,
                   idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/flip", _body(to=to, reason=reason, force=force,
                                                          if_generation=if_generation, wait=wait),
                                idempotency_key=idempotency_key)

    async def rollback(self, reason: str | None = None, force: bool = False,
                       if_generation: int | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/rollback", _body(reason=reason, force=force,
                                                              if_generation=if_generation),
                                idempotency_key=idempotency_key)

    async def hold(self, timeout: float | None = None, reason: str | None = None,
                   idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/hold", _body(timeout=timeout, reason=reason),
                                idempotency_key=idempotency_key)

    async def resume(self, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/resume", _body(reason=reason), idempotency_key=idempotency_key)

    async def lock(self, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/lock", _body(reason=reason), idempotency_key=idempotency_key)

    async def unlock(self, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/unlock", _body(reason=reason), idempotency_key=idempotency_key)

    async def reload(self, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/reload", _body(reason=reason), idempotency_key=idempotency_key)

    async def canary(self, weight: int, reason: str | None = None, force: bool = False,
                     idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/canary", {"weight": weight, **_body(reason=reason, force=force)},
                                idempotency_key=idempotency_key)

    async def promote(self, reason: str | None = None, force: bool = False, wait: bool = False,
                      idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/promote", _body(reason=reason, force=force, wait=wait),
                                idempotency_key=idempotency_key)

    async def abort(self, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        return await self._call("POST", "/v1/abort", _body(reason=reason), idempotency_key=idempotency_key)

    async def attest(self, from_version: str, to_version: str, by: str | None = None,
                     idempotency_key: str | None = None) -> dict:
        """attest: POST /v1/schema/attest, migrating from_version -> to_version is schema-compatible."""
        return await self._call("POST", "/v1/schema/attest",
                                {"from_version": from_version, "to_version": to_version, **_body(by=by)},
                                idempotency_key=idempotency_key)

    async def servers(self, env: str, servers: list, reason: str | None = None,
                      idempotency_key: str | None = None) -> dict:
        """servers: PUT /v1/environments/{env}/servers, a registration of ``servers`` (SPEC §12)."""
        return await self._call("PUT", f"/v1/environments/{quote(env, safe='')}/servers",
                                {"servers": servers, **_body(reason=reason)}, idempotency_key=idempotency_key)

    async def reset_servers(self, env: str, reason: str | None = None, idempotency_key: str | None = None) -> dict:
        """reset_servers: DELETE /v1/environments/{env}/servers: the config's list again."""
        return await self._call("DELETE", f"/v1/environments/{quote(env, safe='')}/servers", _body(reason=reason),
                                idempotency_key=idempotency_key)

    async def healthz(self) -> dict:
        return await self._call("GET", "/healthz")

    async def metrics(self) -> str:
        return await self._call("GET", "/metrics", text=True)

    # -------------------------------------------------------------- request

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout,
                                            sock_connect=min(self.timeout, CONNECT_TIMEOUT))
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            # trust_env stays off: HTTP_PROXY must not divert calls to a loopback admin.
            self._session = aiohttp.ClientSession(timeout=timeout, headers=headers,
                                                  connector=aiohttp.TCPConnector(ssl=self.ssl))
        return self._session

    async def _call(self, method: str, path: str, body: dict | None = None, text: bool = False,
                    idempotency_key: str | None = None) -> Any:
        """_call: one call, tried once more when no answer came (see the module docstring)."""
        retry = method != "GET" and idempotency_key is not None     # aiohttp retries a GET itself
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        deadline = time.monotonic() + self.timeout
        try:
            return await self._request(method, path, body, text, headers, self.timeout)
        except _NoAnswer as first:
            left = deadline - time.monotonic()
            if not retry or left <= 0:
                raise first.error from None
        try:
            return await self._request(method, path, body, text, headers, left)
        except _NoAnswer as second:
            error = second.error
            raise AdminError(error.status, error.code, error.message + " (tried twice)", error.body) from None

    async def _request(self, method: str, path: str, body: dict | None, text: bool,
                       headers: dict | None, timeout: float) -> Any:
        """_request: one request; the decoded answer, AdminError, or _NoAnswer when it may be retried."""
        url = self.url + path
        session = self._session_for_call()
        answered = False    # the answer's head came: from then on nothing is retried
        try:
            async with session.request(method, url, json=body, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(
                                           timeout, CONNECT_TIMEOUT))) as resp:
                answered = True
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise AdminError(0, "timeout", f"no answer from {url} within {self.timeout:g}s") from None
        except aiohttp.InvalidURL:
            raise AdminError(0, "bad_url", f"not a valid admin URL: {self.url}") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AdminError(0, "connection_failed", f"the admin API at {url} has a certificate this client does "
                             f"not trust ({exc.certificate_error}); give its CA with --ca FILE or CUTOVER_CA") from None
        except aiohttp.ClientSSLError as exc:
            raise AdminError(0, "connection_failed", f"TLS with the admin API at {url} failed: "
                             f"{getattr(exc.os_error, 'reason', None) or exc.os_error}") from None
        except aiohttp.ClientConnectorError as exc:
            # A positive errno reads better than "Connect call failed"; resolver errors are negative.
            why = os.strerror(exc.errno).lower() if (exc.errno or 0) > 0 else (exc.strerror or str(exc.os_error))
            raise AdminError(0, "connection_failed", f"cannot connect to the admin API at {url}: {why}") from None
        except aiohttp.ClientError as exc:
            error = AdminError(0, "connection_failed", f"admin API at {url} failed: {exc or type(exc).__name__}")
            if not answered and isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                # Closed or reset after the request went out, before any answer.
                raise _NoAnswer(error) from None
            raise error from None
        if 200 <= status < 300 and text:
            return raw.decode("utf-8", "replace")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if 200 <= status < 300:
            if not isinstance(doc, dict):
                raise AdminError(status, "bad_response", f"{url} answered {status} without a JSON object")
            return doc
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            raise AdminError(status, str(doc.get("code") or f"http_{status}"), doc["error"], doc)
        raise AdminError(status, f"http_{status}", f"{url} answered HTTP {status}")


class _NoAnswer(Exception):
    """_NoAnswer: the connection closed or reset before an answer came; ``error`` says so."""

    def __init__(self, error: AdminError) -> None:
        super().__init__(error.message)
        self.error = error
