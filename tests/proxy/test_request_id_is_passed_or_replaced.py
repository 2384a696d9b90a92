"""X-Request-Id without sockets (SPEC §12): a sane id from the client is passed through, any
other one (malformed, over-long, a second field) is replaced by a generated one; the id goes
upstream and back on the response, an upstream's own one is not relayed."""

from __future__ import annotations

import re

import pytest

from proxy import headers as rules
from proxy.headers import REQUEST_SPECIAL, sane_request_id, split
from proxy.requestid import new_prefix
from tests.support.fakes import Rig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GENERATED = re.compile(rb"[0-9a-f]{16}-[0-9a-f]+")


@pytest.mark.parametrize("value, sane", [
    (b"a", True),
    (b"A-z_0.9:x", True),
    (b"Az09._:-", True),
    (b"slash/no", False),
    (b"plus+no", False),
    (b"x" * 128, True),
    (b"x" * 129, False),
    (b"", False),
    (b"has space", False),
    (b"semi;colon", False),
    (b"caf\xc3\xa9", False),
    (b"tab\there", False),
    (b"550e8400-e29b-41d4-a716-446655440000", True),
])
def test_the_sanity_rule(value, sane):
    assert sane_request_id(value) is sane


def req(headers):
    return rules.rewrite_request(*split(headers, REQUEST_SPECIAL), 1, b"10.0.0.9", False)


@pytest.mark.parametrize("headers, kept", [
    ([(b"Host", b"a"), (b"X-Request-Id", b"abc")], b"abc"),                                   # fast path
    ([(b"Host", b"a"), (b"x-request-id", b"abc"), (b"Content-Length", b"0")], b"abc"),         # full rules
    ([(b"Host", b"a"), (b"X-Request-Id", b"bad id")], None),
    ([(b"Host", b"a"), (b"X-Request-Id", b"x" * 129)], None),
    ([(b"Host", b"a"), (b"X-Request-Id", b"")], None),
    ([(b"Host", b"a"), (b"X-Request-Id", b"one"), (b"X-Request-Id", b"two")], None),
    ([(b"Host", b"a"), (b"X-Request-Id", b"bad id"), (b"X-Request-Id", b"good")], None),
    ([(b"Host", b"a")], None),
])
def test_only_one_sane_id_is_kept_and_none_is_in_the_forwarded_block(headers, kept):
    head = req(headers)
    assert head.request_id == kept
    assert b"request-id" not in head.block.lower()


def test_prefixes_differ_per_draw_and_fit_the_sanity_rule():
    a, b = new_prefix(), new_prefix()
    assert a != b and sane_request_id(a + b"ff") and GENERATED.fullmatch(a + b"1")


def sent_id(rig: Rig) -> bytes:
    sent = rig.up_t.take()
    [rid] = re.findall(rb"\r\nx-request-id: ([^\r]*)\r\n", sent)
    return rid


def answered_id(data: bytes) -> list[bytes]:
    return re.findall(rb"\r\nx-request-id: ([^\r]*)\r\n", data.split(b"\r\n\r\n")[0] + b"\r\n")


async def test_a_sane_id_goes_upstream_and_back_unchanged():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: ci-42.a:b\r\n\r\n")
    assert sent_id(rig) == b"ci-42.a:b"
    rig.answer(OK)
    assert answered_id(rig.client_t.take()) == [b"ci-42.a:b"]


@pytest.mark.parametrize("field", [
    b"X-Request-Id: has space\r\n",
    b"X-Request-Id: " + b"x" * 129 + b"\r\n",
    b"X-Request-Id:\r\n",
    b"X-Request-Id: one\r\nX-Request-Id: two\r\n",
])
async def test_a_malformed_or_second_id_is_replaced_not_forwarded(field):
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n" + field + b"\r\n")
    rid = sent_id(rig)
    assert GENERATED.fullmatch(rid)
    rig.answer(OK)
    assert answered_id(rig.client_t.take()) == [rid]


async def test_generated_ids_are_unique_on_one_connection():
    rig = Rig()
    ids = []
    for _ in range(3):
        rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        ids.append(sent_id(rig))
        rig.answer(OK)
    assert len(set(ids)) == 3 and all(GENERATED.fullmatch(i) for i in ids)


async def test_an_upstreams_own_id_is_replaced_by_the_one_sent_upstream():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nContent-Length: 2\r\n\r\nok")
    assert answered_id(rig.client_t.take()) == [b"mine"]
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine2\r\n\r\n")   # the full response rules
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answered_id(rig.client_t.take()) == [b"mine2"]


async def test_cutovers_own_error_answers_carry_the_id():
    rig = Rig()
    rig.proxy.router.environments["blue"].servers[0].set_healthy(False)
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: e1\r\n\r\n")
    out = rig.client_t.take()
    assert out.startswith(b"HTTP/1.1 503 ") and answered_id(out) == [b"e1"]


async def test_a_request_refused_by_the_parser_gets_a_generated_id():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n")
    out = rig.client_t.take()
    assert out.startswith(b"HTTP/1.1 400 ") and GENERATED.fullmatch(answered_id(out)[0])


async def test_with_generate_off_a_sane_id_still_passes_and_none_is_made_up():
    rig = Rig(request_id={"generate": False})
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: keep\r\n\r\n")
    assert sent_id(rig) == b"keep"
    rig.answer(OK)
    assert answered_id(rig.client_t.take()) == [b"keep"]
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: not sane\r\n\r\n")
    assert b"request-id" not in rig.up_t.take().lower()
    rig.answer(OK)
    assert b"request-id" not in rig.client_t.take().lower()


async def test_an_http10_request_without_host_carries_the_id_too():
    rig = Rig()
    rig.send(b"GET / HTTP/1.0\r\nX-Request-Id: old\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.startswith(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:1\r\n") and b"\r\nx-request-id: old\r\n\r\n" in sent
