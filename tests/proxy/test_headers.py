"""Table tests for the header rules (proxy/headers.py): no sockets."""

from __future__ import annotations

import pytest

from proxy import headers as rules
from proxy.headers import REQUEST_SPECIAL, RESPONSE_SPECIAL, HeaderError, connection_tokens, split, status_line


def lines(block: bytes) -> list[bytes]:
    return [line for line in block.split(b"\r\n") if line]


def names(block: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in lines(block)]


def req(headers, minor=1, ip=b"10.0.0.9", replace=False):
    return rules.rewrite_request(*split(headers, REQUEST_SPECIAL), minor, ip, replace)


def rewrite_response(headers):
    return rules.rewrite_response(*split(headers, RESPONSE_SPECIAL))


@pytest.mark.parametrize("values, expected", [
    ([b"close"], {b"close"}),
    ([b"Keep-Alive, X-Foo"], {b"keep-alive", b"x-foo"}),
    ([b" a ,, b ", b"C"], {b"a", b"b", b"c"}),
    ([b""], set()),
])
def test_connection_tokens(values, expected):
    assert connection_tokens(values) == expected


@pytest.mark.parametrize("hop", [
    b"Connection", b"Keep-Alive", b"Proxy-Connection", b"Trailer", b"Upgrade",
    b"Proxy-Authorization", b"Proxy-Authenticate",
])
def test_request_hop_by_hop_headers_are_dropped(hop):
    head = req([(b"Host", b"a"), (hop, b"x"), (b"Accept", b"*/*")])
    assert hop.lower() not in names(head.block)
    assert b"accept" in names(head.block)


def test_request_headers_named_in_connection_are_dropped_wherever_they_stand():
    head = req([(b"X-Before", b"1"), (b"Host", b"a"), (b"Connection", b"x-before, X-After"),
                (b"X-After", b"2"), (b"X-Kept", b"3")])
    assert names(head.block).count(b"x-before") == 0
    assert b"x-after" not in names(head.block)
    assert b"X-Kept: 3" in lines(head.block)


@pytest.mark.parametrize("te, forwarded", [
    (b"trailers", True), (b"trailers, deflate", True), (b"gzip", False), (b"deflate;q=0.5", False),
])
def test_request_te_passes_only_trailers(te, forwarded):
    head = req([(b"Host", b"a"), (b"TE", te)])
    assert (b"te: trailers" in lines(head.block)) is forwarded
    assert names(head.block).count(b"te") == (1 if forwarded else 0)


def test_host_is_preserved_and_forwarded_host_set():
    head = req([(b"Host", b"Example.COM:8080")])
    assert b"Host: Example.COM:8080" in lines(head.block)
    assert b"x-forwarded-host: Example.COM:8080" in lines(head.block)
    assert b"x-forwarded-proto: http" in lines(head.block)
    assert head.host == b"Example.COM:8080"


@pytest.mark.parametrize("incoming, replace, expected", [
    ([], False, b"x-forwarded-for: 10.0.0.9"),
    ([b"1.2.3.4"], False, b"x-forwarded-for: 1.2.3.4, 10.0.0.9"),
    ([b"1.2.3.4", b"5.6.7.8"], False, b"x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.9"),
    ([b"1.2.3.4"], True, b"x-forwarded-for: 10.0.0.9"),
])
def test_x_forwarded_for_append_or_replace(incoming, replace, expected):
    headers = [(b"Host", b"a")] + [(b"X-Forwarded-For", v) for v in incoming]
    head = req(headers, replace=replace)
    assert expected in lines(head.block)
    assert names(head.block).count(b"x-forwarded-for") == 1


def test_client_supplied_forwarded_proto_and_host_are_replaced():
    head = req([(b"Host", b"real"), (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil")])
    assert b"x-forwarded-proto: http" in lines(head.block)
    assert b"x-forwarded-host: real" in lines(head.block)
    assert b"evil" not in head.block and b"https" not in head.block


@pytest.mark.parametrize("headers, minor, status, words", [
    ([], 1, 400, "missing Host"),
    ([(b"Host", b"a"), (b"Host", b"b")], 1, 400, "more than one Host"),
    ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")], 1, 400, "final coding"),
    ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")], 1, 501, "Transfer-Encoding"),
    ([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], 0, 400, "HTTP/1.0"),
    ([(b"Host", b"")], 1, 400, "empty Host"),              # RFC 9110 §4.2.1: no empty http host
    ([(b"Host", b"")], 0, 400, "empty Host"),
    ([(b"Connection", b"keep-alive"), (b"Host", b"")], 1, 400, "empty Host"),
])
def test_refused_request_heads(headers, minor, status, words):
    with pytest.raises(HeaderError) as info:
        req(headers, minor=minor)
    assert info.value.status == status
    assert words in str(info.value)


def test_connection_cannot_strip_host():
    head = req([(b"Host", b"app"), (b"Connection", b"close, host"), (b"X-A", b"1")])
    assert b"Host: app" in lines(head.block) and b"X-A: 1" in lines(head.block)


def test_http10_request_without_host_is_accepted():
    head = req([], minor=0)
    assert head.host is None
    assert b"x-forwarded-host" not in head.block


@pytest.mark.parametrize("headers, framing, chunked, length", [
    ([(b"Content-Length", b"12")], b"content-length: 12", False, 12),
    ([(b"Transfer-Encoding", b"Chunked")], b"transfer-encoding: chunked", True, None),
    ([], None, False, None),
])
def test_request_framing_is_rewritten_once(headers, framing, chunked, length):
    head = req([(b"Host", b"a")] + headers)
    assert head.chunked is chunked
    assert head.content_length == length
    framing_lines = [l for l in lines(head.block) if l.split(b":")[0].lower() in (b"content-length", b"transfer-encoding")]
    assert framing_lines == ([framing] if framing else [])


def test_upgrade_forwarded_only_with_connection_upgrade():
    head = req([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert head.upgrade == b"websocket"
    assert b"connection: upgrade" in lines(head.block) and b"upgrade: websocket" in lines(head.block)
    head = req([(b"Host", b"a"), (b"Upgrade", b"websocket")])
    assert head.upgrade is None
    assert b"upgrade" not in names(head.block)


def test_expect_is_forwarded():
    head = req([(b"Host", b"a"), (b"Expect", b"100-Continue")])
    assert b"Expect: 100-Continue" in lines(head.block)


@pytest.mark.parametrize("headers", [
    [(b"Host", b"example.com")],
    [(b"Host", b"example.com:8080"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")],
    [(b"Accept", b"*/*"), (b"Connection", b"keep-alive"), (b"Host", b"a.b")],
    [(b"Host", b"a"), (b"Connection", b"Close"), (b"Cookie", b"x=1")],
    [(b"Connection", b"KEEP-ALIVE"), (b"Host", b"[::1]:80")],
])
def test_common_request_heads_take_the_same_rules(headers):
    # X-Forwarded-Proto is always replaced, so adding one sends the head through
    # the general rules: the result must not change.
    fast = req(headers)
    general = req(headers + [(b"X-Forwarded-Proto", b"https")])
    assert fast.block == general.block
    assert (fast.host, fast.content_length, fast.chunked, fast.upgrade) == \
        (general.host, general.content_length, general.chunked, general.upgrade)


@pytest.mark.parametrize("headers", [
    [(b"Content-Length", b"19"), (b"Connection", b"keep-alive"), (b"Server", b"nginx")],
    [(b"Date", b"d"), (b"Content-Length", b"0")],
    [(b"Connection", b"close"), (b"Content-Type", b"text/plain")],
    [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Content-Length", b"007")],
])
def test_common_response_heads_take_the_same_rules(headers):
    # Keep-Alive is hop-by-hop and always dropped: adding one takes the general rules.
    fast = rewrite_response(headers)
    general = rewrite_response(headers + [(b"Keep-Alive", b"timeout=5")])
    assert (fast.block, fast.content_length, fast.chunked, fast.upgrade, fast.unknown_coding) == \
        (general.block, general.content_length, general.chunked, general.upgrade, general.unknown_coding)


def test_host_leads_and_other_headers_keep_their_case_and_order():
    head = req([(b"X-B", b"2"), (b"x-a", b"1"), (b"hOsT", b"a"), (b"X-B", b"3")])
    assert lines(head.block)[:4] == [b"Host: a", b"X-B: 2", b"x-a: 1", b"X-B: 3"]


def test_split_sorts_specials_from_pass_through():
    parts, special = split([(b"Host", b"a"), (b"X-A", b"1"), (b"Connection", b"close")], REQUEST_SPECIAL)
    assert parts == [b"X-A", b": ", b"1", b"\r\n"]
    assert special == [(b"host", b"a"), (b"connection", b"close")]


@pytest.mark.parametrize("hop", [
    b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Transfer-Encoding",
    b"Upgrade", b"Proxy-Authorization", b"Proxy-Authenticate",
])
def test_response_hop_by_hop_headers_are_dropped(hop):
    head = rewrite_response([(b"Content-Type", b"text/plain"), (hop, b"x"), (b"Server", b"s")])
    assert hop.lower() not in names(head.block)
    assert names(head.block) == [b"content-type", b"server"]


def test_response_headers_named_in_connection_are_dropped():
    head = rewrite_response([(b"Connection", b"X-Internal"), (b"X-Internal", b"secret"), (b"Date", b"d")])
    assert names(head.block) == [b"date"]


@pytest.mark.parametrize("headers, length, chunked, unknown", [
    ([(b"Content-Length", b"5")], 5, False, None),
    ([(b"Transfer-Encoding", b"Chunked")], None, True, None),
    ([(b"Transfer-Encoding", b"gzip, chunked")], None, False, b"gzip, chunked"),
    ([(b"Transfer-Encoding", b"gzip")], None, False, b"gzip"),
    ([], None, False, None),
])
def test_response_framing_is_reported_not_copied(headers, length, chunked, unknown):
    head = rewrite_response(headers)
    assert head.content_length == length and head.chunked is chunked
    assert head.unknown_coding == unknown
    assert head.block == b""


def test_response_upgrade_value_is_kept_for_the_101():
    head = rewrite_response([(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")])
    assert head.upgrade == b"websocket"


def test_status_lines_carry_standard_reasons():
    assert status_line(502) == b"HTTP/1.1 502 Bad Gateway\r\n"
    assert status_line(431) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert status_line(299) == b"HTTP/1.1 299 \r\n"      # the reason phrase may be empty
    assert status_line(999) == b"HTTP/1.1 999 \r\n"


@pytest.mark.parametrize("value", [b"a b", b"a\tb", b"exa\x01mple", b"a/b", b"a@b"])
def test_invalid_host_values_are_refused(value):
    with pytest.raises(HeaderError) as info:
        req([(b"Host", value)])
    assert info.value.status == 400 and "invalid Host" in str(info.value)


@pytest.mark.parametrize("value", [b"example.com", b"example.com:8080", b"[::1]:80", b"10.0.0.1", b"xn--bcher-kva.ch"])
def test_valid_host_values_pass(value):
    assert req([(b"Host", value)]).host == value


def test_te_trailers_is_named_in_connection_when_forwarded():
    head = req([(b"Host", b"a"), (b"TE", b"trailers")])
    assert b"te: trailers" in lines(head.block) and b"connection: te" in lines(head.block)


@pytest.mark.parametrize("target, expected", [
    (b"http://example.com/a?b=1", (b"example.com", b"/a?b=1")),
    (b"HTTP://Example.com:8080", (b"Example.com:8080", b"/")),
    (b"https://h?x=1", (b"h", b"/?x=1")),
    (b"http://user:pw@h/p", (b"h", b"/p")),
    (b"/plain", None),
    (b"ftp://h/x", None),
    (b"h:443", None),
])
def test_origin_form_of_absolute_targets(target, expected):
    from proxy.headers import origin_form
    assert origin_form(target) == expected


def test_header_names_are_sorted_by_spelling_with_a_bounded_memory():
    seen: dict[bytes, bytes] = {}
    assert rules.name_kind(b"CoNtEnT-LeNgTh", seen, RESPONSE_SPECIAL) == b"content-length"
    assert rules.name_kind(b"CoNtEnT-LeNgTh", seen, RESPONSE_SPECIAL) == b"content-length"
    assert rules.name_kind(b"Host", seen, RESPONSE_SPECIAL) == b""   # special only in requests
    assert seen == {b"CoNtEnT-LeNgTh": b"content-length", b"Host": b""}
    for i in range(rules._NAMES_LIMIT + 500):
        rules.name_kind(b"X-Name-%d" % i, seen, RESPONSE_SPECIAL)
    assert len(seen) == rules._NAMES_LIMIT
    assert rules.name_kind(b"TRANSFER-encoding", seen, RESPONSE_SPECIAL) == b"transfer-encoding"   # full: still right
    long_name = b"X-" + b"a" * 100
    assert rules.name_kind(long_name, {}, REQUEST_SPECIAL) == b""
    memory: dict[bytes, bytes] = {}
    rules.name_kind(long_name, memory, REQUEST_SPECIAL)
    assert memory == {}   # long, client-chosen names are not remembered


def test_split_with_another_set_leaves_the_protocols_memory_alone():
    before = dict(rules.RESPONSE_NAMES)
    parts, special = split([(b"X-Odd", b"1")], frozenset({b"x-odd"}))
    assert special == [(b"x-odd", b"1")] and parts == []
    assert rules.RESPONSE_NAMES == before and b"X-Odd" not in rules.REQUEST_NAMES


def test_common_spellings_are_known_from_the_start():
    # A peer that fills the memory with odd names cannot push these out.
    for lname in REQUEST_SPECIAL | RESPONSE_SPECIAL:
        for names, special in ((rules.REQUEST_NAMES, REQUEST_SPECIAL), (rules.RESPONSE_NAMES, RESPONSE_SPECIAL)):
            if lname in names:
                assert names[lname] == (lname if lname in special else b"")
    assert rules.REQUEST_NAMES[b"Host"] == b"host" and rules.RESPONSE_NAMES[b"Host"] == b""
    assert rules.RESPONSE_NAMES[b"Content-Length"] == b"content-length"
    assert rules.REQUEST_NAMES[b"User-Agent"] == b"" and rules.RESPONSE_NAMES[b"SET-COOKIE"] == b""
    for names in (rules.REQUEST_NAMES, rules.RESPONSE_NAMES):
        for spelling, kind in names.items():
            assert kind in (b"", spelling.lower())


@pytest.mark.parametrize("headers", [
    [(b"Host", b"shop.test")],                                            # the common head
    [(b"Host", b"shop.test"), (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Proto", b"http")],
])
@pytest.mark.parametrize("proto", [b"http", b"https"])
def test_forwarded_proto_is_the_listeners_scheme_never_the_clients(headers, proto):
    head = rules.rewrite_request(*split(headers, REQUEST_SPECIAL), 1, b"127.0.0.1", False, proto)
    lines = head.block.lower().split(b"\r\n")
    assert [line for line in lines if line.startswith(b"x-forwarded-proto:")] == [b"x-forwarded-proto: " + proto]
