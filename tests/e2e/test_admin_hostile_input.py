"""What a hostile or broken client can send the admin API: malformed HTTP, bad JSON, huge bodies.

Malformed requests never echo a header value nor log one, never log a traceback, and
answer a short JSON error; the log lines they cause are bounded however many arrive.
Bodies are bounded in size and depth, and JSON of any bad shape is a 400 naming the
problem (parse_json_object and LogLimit on their own are in tests/admin/). Real stacks on
loopback (the make_stack fixture), raw sockets for what no client library would send.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from admin.jsonbody import MAX_BODY_BYTES
from tests.support.adminapi import Admin
from tests.support.wait import eventually

TOKEN = "s3cr3t-admin-t0ken"
AUTH = {"listen": "127.0.0.1:0", "token": TOKEN}


async def raw_call(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict | bytes, bytes]:
    """raw_call: send ``data`` on a new connection; answers (status, JSON body or raw bytes, head)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body), head
    except ValueError:
        return status, body, head


def everything_logged(caplog) -> str:
    """everything_logged: every captured record as the log would show it, tracebacks included."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    return "\n".join(handler.format(record) for record in caplog.records)


# ------------------------------------------------------------ malformed HTTP (issue 9.2)


@pytest.mark.parametrize("stray", [b"\r", b"\x00", b"\x7f"], ids=["CR", "NUL", "DEL"])
async def test_a_token_with_a_stray_control_byte_is_a_short_json_400_that_leaks_nothing(
        make_stack, caplog, stray):
    caplog.set_level(logging.DEBUG)
    running = await make_stack(admin=AUTH)
    status, body, head = await raw_call(
        running.admin_port,
        b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
        + stray + b"\r\nConnection: close\r\n\r\n")
    assert status == 400, body
    assert isinstance(body, dict) and body["code"] == "bad_request", body
    assert b"json" in head.lower()
    assert TOKEN not in json.dumps(body) and "Bearer" not in body["error"]
    assert len(body["error"]) < 200
    logged = everything_logged(caplog)
    assert TOKEN not in logged
    assert "Traceback" not in logged and not any(r.exc_info for r in caplog.records)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1, logged
    assert "127.0.0.1" in lines[0].getMessage()


@pytest.mark.parametrize("request_bytes", [
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Secret: SECRETVALUE\x01\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Header SECRETVALUE: 1\r\n\r\n",
    b"G\x00T /SECRETVALUE HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /SECRETVALUE HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Long: SECRETVALUE" + b"a" * 10000 + b"\r\n\r\n",
    b"POST /v1/lock HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
    b"X-Secret: SECRETVALUE\r\n\r\n{}",
], ids=["control-byte", "bad-name", "bad-method", "bad-version", "line-too-long", "two-lengths"])
async def test_no_malformed_request_echoes_or_logs_what_it_carried(make_stack, caplog, request_bytes):
    caplog.set_level(logging.DEBUG)
    running = await make_stack(admin=AUTH)
    status, body, _ = await raw_call(running.admin_port, request_bytes)
    assert status == 400, body
    assert isinstance(body, dict) and body["code"] == "bad_request", body
    assert "SECRETVALUE" not in body["error"]
    logged = everything_logged(caplog)
    assert "SECRETVALUE" not in logged and "Traceback" not in logged, logged


async def test_a_flood_of_malformed_requests_logs_a_bounded_number_of_lines(make_stack, caplog):
    caplog.set_level(logging.DEBUG)
    running = await make_stack(admin=AUTH)
    for _ in range(50):
        status, _, _ = await raw_call(running.admin_port,
                                      b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-A: b\x00\r\n\r\n")
        assert status == 400
    lines = [r for r in caplog.records if r.name.startswith(("cutover", "aiohttp"))]
    assert 1 <= len(lines) <= 10, everything_logged(caplog)
    # the server is still fine for a well-formed request
    status, body, _ = await raw_call(running.admin_port,
                                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200, body


async def test_a_well_formed_request_after_malformed_ones_still_works(make_stack, session):
    running = await make_stack(admin=AUTH)
    await raw_call(running.admin_port, b"GET / HTTP/1.1\r\nHost: x\r\nX: \x7f\r\n\r\n")
    api = Admin(session, running.admin_port, token=TOKEN)
    assert (await api.status())["live"] == "blue"


# --------------------------------------------------------------------- bodies (issue 9.4)


async def test_deeply_nested_json_is_a_400_not_a_500(make_stack, caplog):
    caplog.set_level(logging.DEBUG)
    running = await make_stack()
    for body in (b"[" * 20000 + b"]" * 20000, b'{"reason": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                 b'{"a":' * 5000 + b"1" + b"}" * 5000):
        status, payload, _ = await raw_call(
            running.admin_port,
            b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (running.admin_port, len(body)) + body)
        assert status == 400, payload
        assert payload["code"] == "bad_request" and "deep" in payload["error"], payload
    assert "Traceback" not in everything_logged(caplog)
    assert running.controller.state.locked is False


async def test_an_oversized_body_is_a_json_413_naming_the_limit(make_stack):
    running = await make_stack()
    body = b'{"reason": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    status, payload, head = await raw_call(
        running.admin_port,
        b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (running.admin_port, len(body)) + body)
    assert status == 413, payload
    assert isinstance(payload, dict), payload
    assert payload["code"] == "payload_too_large" and str(MAX_BODY_BYTES) in payload["error"], payload
    assert running.controller.state.locked is False


async def test_an_oversized_chunked_body_is_a_json_413(make_stack):
    running = await make_stack()
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 2))
    status, payload, _ = await raw_call(
        running.admin_port,
        b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % running.admin_port + body + b"0\r\n\r\n")
    assert status == 413, payload
    assert payload["code"] == "payload_too_large", payload


async def test_a_compressed_body_is_a_415_and_never_decompressed(make_stack, caplog):
    caplog.set_level(logging.DEBUG)
    running = await make_stack(admin=AUTH)
    port = running.admin_port
    for token in ("wrong", TOKEN):      # refused for its token first, then for its coding
        status, payload, _ = await raw_call(
            port, b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n"
                  b"Connection: close\r\n\r\nabcd" % (port, token.encode()))
        assert status == (401 if token == "wrong" else 415), payload
    assert payload["code"] == "unsupported_media_type" and "Content-Encoding" in payload["error"]
    assert "Traceback" not in everything_logged(caplog) and not any(r.exc_info for r in caplog.records)
    assert running.controller.state.locked is False


async def split_send(port: int, parts: list[bytes], close_early: bool = False) -> bytes:
    """split_send: send ``parts`` one by one, each after the last was taken in; answers what came back."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)    # let the server take this part alone
            if close_early:
                return b""
            try:
                async with asyncio.timeout(1):
                    return await reader.read()
            except TimeoutError:
                return b"(still open)"
        finally:
            writer.close()


async def test_a_client_gone_mid_body_leaves_one_line_and_no_traceback(make_stack, caplog):
    caplog.set_level(logging.DEBUG)
    running = await make_stack()
    port = running.admin_port
    await split_send(port, [b"POST /v1/lock HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100\r\n\r\n{" % port], close_early=True)

    async def logged():
        return [r for r in caplog.records if "lock" in r.getMessage() and "refused" in r.getMessage()]
    await eventually(logged, timeout=3)
    assert "Traceback" not in everything_logged(caplog) and not any(r.exc_info for r in caplog.records)
    assert running.controller.state.locked is False
