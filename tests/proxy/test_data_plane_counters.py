"""The data plane's counters on fake transports (no sockets): requests per server, client
bytes per environment, upstream errors by kind, as Proxy.snapshot() shows them.

Bytes in are what the client sent for an environment's requests, bytes out what it was
sent in their answers: exactly what the transports saw.
"""

from __future__ import annotations

from proxy.route import Route
from tests.support.fakes import Rig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


async def test_a_proxied_request_counts_for_its_server_and_its_bytes_for_its_environment():
    rig = Rig()
    request = b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n"
    rig.send(request)
    assert rig.env().servers[0].requests == 0   # counted when it finishes
    rig.answer(OK)
    env = rig.env()
    assert env.servers[0].requests == 1 and env.responses[2] == 1
    assert env.bytes_in == len(request) and env.bytes_out == len(rig.client_t.data)
    assert rig.env("green").bytes_in == rig.env("green").bytes_out == 0
    assert set(rig.errors().values()) == {0}


async def test_a_body_in_many_reads_and_a_streamed_answer_are_counted_whole():
    rig = Rig()
    head = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\n"
    rig.send(head + b"x" * 10)
    rig.send(b"y" * 10)
    rig.send(b"z" * 10)
    rig.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    rig.answer(b"6\r\n world\r\n0\r\n\r\n")
    env = rig.env()
    assert env.bytes_in == len(head) + 30
    assert env.bytes_out == len(rig.client_t.data) and rig.client_t.data.endswith(b"0\r\n\r\n")


async def test_after_a_flip_the_bytes_of_each_request_count_for_the_environment_that_served_it():
    rig = Rig()
    rig.send(GET)
    rig.answer(OK)
    first = len(rig.client_t.data)
    rig.proxy.router.swap(Route(generation=2, live="green", previous="blue", environments=("blue", "green")))
    second_request = b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n"
    rig.send(second_request)
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ngreen", env="green")
    blue, green = rig.env("blue"), rig.env("green")
    assert (blue.bytes_in, blue.bytes_out) == (len(GET), first)
    assert (green.bytes_in, green.bytes_out) == (len(second_request), len(rig.client_t.data) - first)
    assert blue.servers[0].requests == green.servers[0].requests == 1


async def test_a_request_refused_before_routing_counts_for_no_environment():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
    assert rig.client_t.data.startswith(b"HTTP/1.1 400 ")
    snapshot = rig.proxy.snapshot()
    assert snapshot.unrouted[4] == 1
    for env in snapshot.router.environments:
        assert env.bytes_in == env.bytes_out == 0 and sum(env.responses) == 0


async def test_an_error_answer_of_an_environment_counts_for_it():
    rig = Rig()
    rig.send(GET)
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sent = len(rig.client_t.data)
    rig.proxy.router.environments["blue"].servers[0].set_healthy(False)
    rig.send(GET)   # no healthy server: 503 from cutover, for blue
    assert rig.client_t.data[sent:].startswith(b"HTTP/1.1 503 ")
    env = rig.env()
    assert env.responses[5] == 1 and env.bytes_out == len(rig.client_t.data) and env.bytes_in == 2 * len(GET)


async def test_no_answer_within_upstream_response_counts_a_timeout():
    rig = Rig()
    rig.send(GET)
    rig.client.queue[0].timed_out()   # what the ticker calls at timeouts.upstream_response
    assert rig.client_t.data.startswith(b"HTTP/1.1 504 ")
    assert rig.errors()["timeout"] == 1 and rig.env().servers[0].requests == 1


async def test_an_upstream_that_closes_before_or_while_answering_counts_a_reset():
    rig = Rig()
    up, _ = rig.ups["blue"]
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")   # not retried: not idempotent
    up.connection_lost(ConnectionResetError())
    assert rig.client_t.data.startswith(b"HTTP/1.1 502 ")
    assert rig.errors()["reset"] == 1

    rig = Rig()
    up, _ = rig.ups["blue"]
    rig.send(GET)
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)   # the body was cut short
    assert rig.client_t.closed and rig.errors()["reset"] == 1


async def test_an_answer_that_is_not_http_counts_as_invalid():
    rig = Rig()
    rig.send(GET)
    rig.answer(b"SMTP ready\r\n\r\n")
    assert rig.client_t.data.startswith(b"HTTP/1.1 502 ")
    assert rig.errors()["invalid"] == 1


async def test_a_head_over_the_limit_and_stray_bytes_are_upstream_errors_of_their_own():
    rig = Rig(limits={"max_response_header_bytes": 4096})
    rig.send(GET)
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 8192 + b"\r\n\r\n")
    assert rig.errors()["head_too_large"] == 1

    rig = Rig()
    rig.send(GET)
    rig.answer(OK + b"HTTP/1.1 200 OK\r\n")   # more than was asked for
    assert rig.errors()["stray_bytes"] == 1


async def test_a_request_body_that_never_comes_counts_a_client_body_timeout():
    rig = Rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    rig.client.queue[0].client_timed_out()   # what the ticker calls at timeouts.client_body
    assert rig.client_t.data.startswith(b"HTTP/1.1 408 ")
    assert rig.proxy.snapshot().client_body_timeouts == 1
    assert set(rig.errors().values()) == {0}   # the wait was the client's
