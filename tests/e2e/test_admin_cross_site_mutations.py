"""What a web page in the operator's browser can make the admin API do (issue 9.3): nothing.

A hidden form on any page can POST to the admin listener with no preflight: it carries
``Origin`` (and ``Sec-Fetch-Site``) naming the page, and a ``text/plain`` or form body. A
page that rebinds its DNS name to 127.0.0.1 is same-origin for the browser but carries
its own name in ``Host``. Mutations refuse all of these, with or without a token; reads
and non-browser clients (no Origin) are unaffected. The pure decision is table-tested in
tests/admin/test_cross_site_refusal_decision.py; here it runs against real stacks on loopback.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.adminapi import Admin, assert_error

TOKEN = "t0ken"


# ------------------------------------------------------------------- on a real stack

CROSS_SITE = {"Origin": "http://evil.example", "Content-Type": "text/plain"}


@pytest.mark.parametrize("path", ["/v1/flip", "/v1/lock"])
async def test_a_cross_site_form_post_is_refused_without_auth(make_stack, session, path):
    running = await make_stack()          # make_stack: admin.auth none on loopback
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", path, data=b"{}", headers=CROSS_SITE)
    assert_error(status, payload, 403, "cross_origin")
    status, payload, _ = await api.call("POST", path, data=b"{}",
                                        headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"})
    assert_error(status, payload, 403, "cross_origin")
    assert running.proxy.router.route.generation == 1 and not running.controller.state.locked
    assert running.controller.state.history == []


async def test_a_cross_site_post_is_refused_even_with_the_token(make_stack, session):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    api = Admin(session, running.admin_port, token=TOKEN)
    status, payload, _ = await api.call("POST", "/v1/flip", body={},
                                        headers={"Origin": "http://evil.example"})
    assert_error(status, payload, 403, "cross_origin")
    assert running.proxy.router.route.generation == 1


async def test_a_rebound_host_name_is_refused(make_stack, session):
    running = await make_stack()
    port = running.admin_port
    api = Admin(session, port)
    status, payload, _ = await api.call("POST", "/v1/lock", body={}, headers={
        "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert_error(status, payload, 403, "forbidden_host")
    assert not running.controller.state.locked


async def test_loopback_aliases_and_a_same_origin_page_may_mutate(make_stack, session):
    running = await make_stack()
    port = running.admin_port
    api = Admin(session, port)
    for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"},
                    {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}):
        status, payload, _ = await api.call("POST", "/v1/lock", body={"reason": str(headers)}, headers=headers)
        assert status == 200, (headers, payload)
    assert running.controller.state.locked


async def test_reads_are_not_refused_for_their_origin(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.get("/v1/status", headers=CROSS_SITE)
    assert status == 200, payload


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/jsonp", "application/octet-stream",
])
async def test_a_mutation_body_that_is_not_json_by_type_is_a_415(make_stack, session, content_type):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", "/v1/lock", data=b'{"reason": "x"}',
                                        headers={"Content-Type": content_type})
    assert_error(status, payload, 415, "unsupported_media_type")
    assert "application/json" in payload["error"]
    assert not running.controller.state.locked


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON"])
async def test_a_json_body_by_type_is_accepted(make_stack, session, content_type):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", "/v1/lock", data=b'{"reason": "x"}',
                                        headers={"Content-Type": content_type})
    assert status == 200, payload


async def test_a_mutation_body_without_a_content_type_is_a_415(make_stack):
    running = await make_stack()
    port = running.admin_port
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\n{}" % port)
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415"), raw[:300]
    assert json.loads(body)["code"] == "unsupported_media_type"
    assert not running.controller.state.locked


async def test_an_empty_mutation_body_needs_no_content_type(make_stack, session):
    running = await make_stack()
    api = Admin(session, running.admin_port)
    status, payload, _ = await api.call("POST", "/v1/lock", data=b"", headers={"Content-Type": "text/plain"})
    assert status == 200, payload


async def test_a_wildcard_listener_takes_any_host_but_checks_origin(make_stack, session):
    running = await make_stack(admin={"listen": "0.0.0.0:0", "token": TOKEN})
    port = running.admin_port
    api = Admin(session, port, token=TOKEN)
    status, payload, _ = await api.call("POST", "/v1/lock", body={}, headers={"Host": f"cutover.internal:{port}"})
    assert status == 200, payload
    status, payload, _ = await api.call("POST", "/v1/unlock", body={}, headers={
        "Host": f"cutover.internal:{port}", "Origin": "http://evil.example"})
    assert_error(status, payload, 403, "cross_origin")
    assert running.controller.state.locked
