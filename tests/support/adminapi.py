"""adminapi: admin-API client helpers for the end-to-end tests that drive a stack over HTTP.

Holds ``Admin``, a small aiohttp client for one stack's admin API (every call bounded
by a timeout; answers ``(status, json-or-text, headers)``), ``JsonAdmin``, the same client
speaking JSON only and answering ``(status, json)``, ``post`` (one unauthenticated JSON
POST to a stack), ``assert_error`` (the SPEC §8 error document) and ``scrape`` (the samples
of a /metrics exposition). The aiohttp sessions they speak on are the ``session`` and
``admin_session`` fixtures (plugin.py).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

UNSET = object()


class Admin:
    """Admin: a small client for one stack's admin API; answers (status, json-or-text, headers).

    ``token`` is sent as a bearer token on every call unless a call passes its own
    (``token=None`` sends none); every call is bounded by ``timeout`` seconds.
    """

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str | None = None,
                 timeout: float = 5) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, body=UNSET, data: bytes | str | None = None,
                      token=UNSET, headers: dict | None = None, json_only: bool = False):
        """request: one bounded call; ``json_only`` insists on an application/json answer."""
        hdrs = dict(headers or {})
        token = self.token if token is UNSET else token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        kwargs = {}
        if body is not UNSET:
            kwargs["json"] = body
        elif data is not None:
            kwargs["data"] = data
        async with asyncio.timeout(self.timeout):
            async with self.session.request(method, self.base + path, headers=hdrs, **kwargs) as resp:
                if json_only:
                    return resp.status, await resp.json(), resp.headers
                text = await resp.text()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                return resp.status, payload, resp.headers

    async def call(self, method: str, path: str, body=UNSET, data: bytes | str | None = None,
                   token=UNSET, headers: dict | None = None):
        """call: ``request`` answering (status, json-or-text, headers)."""
        return await self.request(method, path, body, data, token, headers)

    async def get(self, path: str, **kw):
        """get: a GET through ``request``."""
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body=UNSET, **kw):
        """post: a POST through ``request``; ``body`` (if given) goes as JSON."""
        return await self.request("POST", path, body=body, **kw)

    async def ok(self, path: str, body=UNSET, **kw) -> dict:
        """ok: a POST that must answer 200 with JSON; returns its JSON."""
        status, payload, _ = await self.request("POST", path, body=body, json_only=True, **kw)
        assert status == 200, (path, body, status, payload)
        return payload

    async def status(self) -> dict:
        """status: GET /v1/status, which must answer 200 with JSON."""
        status, payload, _ = await self.request("GET", "/v1/status", json_only=True)
        assert status == 200, payload
        return payload

    async def events(self) -> list[dict]:
        """events: the ``events`` of GET /v1/history, which must answer 200 with JSON."""
        status, payload, _ = await self.request("GET", "/v1/history", json_only=True)
        assert status == 200, payload
        return payload["events"]


class JsonAdmin(Admin):
    """JsonAdmin: an Admin whose ``call`` speaks JSON only and answers (status, json).

    ``call`` and ``ok`` send ``body`` as JSON (``ok`` sends ``{}`` when given none).
    """

    async def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """call: a JSON-only ``request`` with ``body`` as JSON; answers (status, json)."""
        status, payload, _ = await self.request(method, path, body=body, json_only=True)
        return status, payload

    async def ok(self, path: str, body: dict | None = None) -> dict:
        """ok: a POST of ``body`` (or ``{}``) that must answer 200 with JSON; returns its JSON."""
        return await super().ok(path, body or {})


def assert_error(status: int, payload, expected_status: int, code: str) -> None:
    """assert_error: ``expected_status`` with a SPEC §8 error document naming ``code``."""
    assert status == expected_status, payload
    assert isinstance(payload, dict), payload
    assert payload.get("code") == code, payload
    assert isinstance(payload.get("error"), str) and payload["error"], payload


async def post(session: aiohttp.ClientSession, running, path: str, body: dict | None = None) -> tuple[int, dict]:
    """post: POST ``body`` (or ``{}``) as JSON to ``path`` of ``running``'s admin API; answers (status, json).

    Bounded at 30 s, longer than any gate or wait the tests configure.
    """
    url = f"http://127.0.0.1:{running.admin_port}{path}"
    async with asyncio.timeout(30), session.post(url, json=body or {}) as resp:
        return resp.status, await resp.json()


def scrape(text: str) -> dict:
    """scrape: {(sample name, frozenset(labels)): value} of a Prometheus text exposition."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}
