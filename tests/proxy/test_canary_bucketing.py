"""Canary bucketing without sockets: the sticky bucket (0..99) that decides which clients a
canary of weight N gets (Router.choose, router.canary_bucket).

A client is in the canary when its bucket is below N, so raising N only ever moves clients
from the live environment to the canary, never back.
"""

from __future__ import annotations

import re
import zlib

from proxy.downstream import ClientConnection
from proxy.exchange import Exchange
from proxy.headers import RequestHead
from proxy.route import Route
from proxy.router import canary_bucket
from proxy.server import Proxy
from tests.support.fakes import unstarted_proxy as make_proxy   # never started: no socket


def request(proxy: Proxy, block: bytes) -> Exchange:
    """request: an exchange whose forwarded header block is ``block`` (header lines ending in CRLF)."""
    return Exchange(ClientConnection(proxy), b"GET", b"/", RequestHead(block, b"h"), 1, True)


def canary(weight: int) -> Route:
    return Route(generation=2, live="blue", canary="green", canary_weight=weight, environments=("blue", "green"))


def cookie(bucket: int) -> bytes:
    return b"accept: */*\r\ncookie: theme=dark; cutover_canary=%d; lang=en\r\n" % bucket


def test_the_bucket_comes_from_the_cutover_canary_cookie():
    assert canary_bucket(cookie(37), None) == 37
    assert canary_bucket(b"Cookie: cutover_canary=5\r\n", None) == 5
    assert canary_bucket(b"cookie: a=1\r\ncookie: cutover_canary=99\r\n", None) == 99


def test_canary_bucket_from_cookie_or_header():
    assert canary_bucket(b"Host: a\r\nCookie: x=1; cutover_canary=42; y=2\r\n", None) == 42
    assert canary_bucket(b"Host: a\r\ncookie: cutover_canary=7\r\n", None) == 7
    assert canary_bucket(b"Host: a\r\nCookie: xcutover_canary=7\r\n", None) is None
    assert canary_bucket(b"Host: a\r\n", None) is None
    header = re.compile(rb"(?im)^x-user[ \t]*:[ \t]*([^\r\n]*)")
    first = canary_bucket(b"Host: a\r\nX-User: alice\r\n", header)
    assert first is not None and first == canary_bucket(b"X-User:  alice \r\nHost: a\r\n", header)


def test_no_cookie_or_one_that_is_no_bucket_gives_none():
    assert canary_bucket(b"accept: */*\r\n", None) is None
    assert canary_bucket(b"cookie: cutover_canary=100\r\n", None) is None      # 0..99 only
    assert canary_bucket(b"cookie: my_cutover_canary=4\r\n", None) is None     # another cookie's name
    assert canary_bucket(b"x-note: cutover_canary=4\r\n", None) is None        # not a Cookie field


def test_with_a_cookie_a_client_is_in_the_canary_exactly_while_its_bucket_is_below_the_weight():
    proxy = make_proxy()
    router = proxy.router
    for bucket in range(100):
        ex = request(proxy, cookie(bucket))
        for weight in (1, 10, 50, 99, 100):
            assert router.choose(canary(weight), ex) == ("green" if bucket < weight else "blue")
        assert ex.canary_bucket is None   # it has one already: no new cookie is sent


def test_raising_the_weight_only_moves_clients_into_the_canary():
    proxy = make_proxy(canary={"header": "X-User"})
    router = proxy.router
    clients = [request(proxy, b"x-user: user-%d\r\n" % i) for i in range(300)]
    previous: set[int] = set()
    for weight in range(0, 101, 5):
        route = canary(weight) if weight else Route(generation=2, live="blue", environments=("blue", "green"))
        now = {i for i, ex in enumerate(clients) if router.choose(route, ex) == "green"}
        assert previous <= now
        previous = now
    assert len(previous) == 300


def test_with_the_configured_header_the_bucket_is_a_hash_of_its_value():
    proxy = make_proxy(canary={"header": "X-User"})
    router = proxy.router
    bucket = zlib.crc32(b"alice") % 100
    ex = request(proxy, b"accept: */*\r\nX-User:  alice \r\n")
    assert router.choose(canary(bucket + 1), ex) == "green"
    assert router.choose(canary(bucket), ex) == "blue"
    # The header decides, not a cookie; a client without it gets a random bucket.
    ex = request(proxy, cookie(0))
    router.choose(canary(50), ex)
    assert ex.canary_bucket is not None


def test_a_client_without_a_bucket_gets_one_to_keep_in_a_cookie_and_goes_by_it():
    proxy = make_proxy()
    router = proxy.router
    for _ in range(50):
        ex = request(proxy, b"accept: */*\r\n")
        env = router.choose(canary(30), ex)
        assert ex.canary_bucket is not None and 0 <= ex.canary_bucket <= 99
        assert env == ("green" if ex.canary_bucket < 30 else "blue")


def test_without_a_canary_weight_every_request_goes_to_live_and_gets_no_bucket():
    proxy = make_proxy()
    ex = request(proxy, b"accept: */*\r\n")
    assert proxy.router.choose(Route(generation=1, live="blue", environments=("blue", "green")), ex) == "blue"
    assert ex.canary_bucket is None
