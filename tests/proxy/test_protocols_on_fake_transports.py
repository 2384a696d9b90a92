"""The protocols on fake transports: ClientConnection, Exchange and UpstreamConnection.

Bytes go into data_received; assertions are on what was written to each side.
No network: the pool is primed with an UpstreamConnection on a fake transport (the Rig of
tests/support/fakes.py); the one test of a peek before reuse gives it a local socket pair.
"""

from __future__ import annotations

import asyncio

import pytest
from httptools import HttpRequestParser, HttpResponseParser

from proxy.upstream import UpstreamConnection
from tests.support.fakes import Rig, SocketTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def rid(rig: Rig, n: int = 1) -> bytes:
    """rid: the X-Request-Id line the proxy of ``rig`` adds to its n-th answer (an id it made up)."""
    return b"x-request-id: %s%x\r\n" % (rig.proxy.request_prefix, n)


async def test_request_is_rewritten_and_response_relayed():
    rig = Rig()
    rig.send(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.startswith(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\n")
    assert b"x-forwarded-for: 192.0.2.7\r\n" in sent and b"onnection" not in sent
    rig.answer(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok")
    assert rig.client_t.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n" + rid(rig) + b"\r\nok"
    assert rig.server.idle == [rig.up] and not rig.client_t.closed


async def test_head_and_body_of_a_small_response_leave_in_one_write():
    rig = Rig()
    writes = []
    rig.client_t.write = writes.append
    rig.client_t.writelines = lambda parts: writes.append(b"".join(parts))
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + rid(rig) + b"\r\nok"]


async def test_pipelined_requests_wait_their_turn():
    rig = Rig()
    rig.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert rig.up_t.take().startswith(b"GET /1 ")   # only the first went upstream
    assert len(rig.client.queue) == 2
    rig.answer(OK)
    assert rig.up_t.take().startswith(b"GET /2 ")   # the second goes on the reused connection
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    out = rig.client_t.take()
    assert out.index(b"ok") < out.index(b"two") and not rig.client.queue


async def test_response_to_head_ends_at_its_head_and_parser_is_fresh():
    rig = Rig()
    rig.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert rig.client_t.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + rid(rig) + b"\r\n"
    assert rig.server.idle == [rig.up]
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert rig.client_t.take().endswith(b"\r\n\r\nok")


async def test_interim_100_continue_is_relayed_before_the_final_response():
    rig = Rig()
    rig.send(b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert b"Expect: 100-continue" in rig.up_t.take()
    rig.answer(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert rig.client_t.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    rig.send(b"abc")
    assert rig.up_t.take() == b"abc"
    rig.answer(OK)
    assert rig.client_t.take().endswith(b"ok")


async def test_chunked_request_body_is_reframed_with_trailers():
    rig = Rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3;ext=1\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.endswith(b"transfer-encoding: chunked\r\n" + sent.split(b"transfer-encoding: chunked\r\n")[1])
    assert sent.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n")


async def test_close_delimited_response_is_chunked_for_http11_clients():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\n\r\nhello")
    rig.up.connection_lost(None)
    out = rig.client_t.take()
    assert out == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + rid(rig) + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    assert not rig.client_t.closed


async def test_upstream_closing_mid_body_aborts_the_client():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.up.connection_lost(None)
    assert rig.client_t.aborted


async def test_malformed_pipelined_request_is_answered_in_turn():
    rig = Rig()
    rig.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
    assert rig.client_t.take() == b""     # the 400 waits for the first answer
    rig.answer(OK)
    out = rig.client_t.take()
    assert out.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 Bad Request" in out
    assert b"malformed request" in out and rig.client_t.closed


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 2000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n", 413),
])
async def test_refused_heads_never_reach_upstream(request_bytes, status):
    rig = Rig(limits={"max_header_bytes": 1024, "max_body_bytes": 1000})
    rig.send(request_bytes)
    assert rig.up_t.take() == b""
    assert rig.client_t.take().startswith(b"HTTP/1.1 %d " % status)
    assert rig.client_t.closed


async def test_header_flood_without_end_is_cut_at_the_limit():
    rig = Rig(limits={"max_header_bytes": 1024})
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n")
    for _ in range(100):
        if rig.client_t.closed:
            break
        rig.send(b"X-Pad: " + b"p" * 50 + b"\r\n")
    assert rig.client_t.take().startswith(b"HTTP/1.1 431 ")


async def test_http10_client_gets_close_delimited_body_and_close():
    rig = Rig()
    rig.send(b"GET / HTTP/1.0\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    out = rig.client_t.take()
    assert out == b"HTTP/1.1 200 OK\r\n" + rid(rig) + b"connection: close\r\n\r\nabc"
    assert rig.client_t.closed


async def test_client_that_stops_reading_pauses_the_upstream():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.client.pause_writing()
    assert rig.up_t.reading is False
    rig.client.resume_writing()
    assert rig.up_t.reading is True


async def test_upstream_that_cannot_keep_up_pauses_the_client():
    rig = Rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    rig.up.pause_writing()
    assert rig.client_t.reading is False
    rig.up.resume_writing()
    assert rig.client_t.reading is True


async def test_absolute_form_target_is_forwarded_as_origin_form_with_its_authority_as_host():
    rig = Rig()
    rig.send(b"GET http://real.example:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: real.example:8080\r\n")
    assert b"other" not in sent and b"x-forwarded-host: real.example:8080\r\n" in sent


async def test_forbidden_request_trailer_fields_are_dropped():
    rig = Rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"1\r\na\r\n0\r\nHost: evil\r\nConnection: close\r\nX-Sum: 1\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.endswith(b"0\r\nX-Sum: 1\r\n\r\n") and b"evil" not in sent


async def test_writes_wait_for_the_end_of_the_event_loop_pass():
    # Proxy.flush_soon: what one pass of the loop gathers is written in one burst at its end.
    rig = Rig()
    rig.client.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert rig.up_t.take() == b""
    rig.proxy.flush_due()
    assert rig.up_t.take().startswith(b"GET /a HTTP/1.1\r\n")
    rig.up.data_received(OK)
    assert rig.client_t.take() == b""
    rig.proxy.flush_due()
    assert rig.client_t.take().endswith(b"\r\n\r\nok")
    assert rig.server.idle == [rig.up]


async def test_a_pooled_connection_with_unsent_bytes_is_not_reused():
    rig = Rig()
    rig.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.up.send(b"stray")   # as if a request body were still due when the response ended
    rig.up.data_received(OK)
    assert rig.server.idle == [] and rig.up_t.closed


# ------------------------------------------- heads arriving in many small reads

class CountingRequestParser(HttpRequestParser):
    """CountingRequestParser: the request parser, counting the pieces it is fed."""

    feeds = 0

    def feed_data(self, data):
        self.feeds += 1
        return super().feed_data(data)


class CountingResponseParser(HttpResponseParser):
    """CountingResponseParser: the response parser, counting the pieces it is fed."""

    feeds = 0

    def feed_data(self, data):
        self.feeds += 1
        return super().feed_data(data)


# httptools grows a header field that spans reads by concatenating the pieces, so a field in
# n pieces costs O(n * size): the protocols feed it few pieces, whatever the reads were.

async def test_a_request_header_value_in_many_small_reads_reaches_the_parser_in_few_pieces():
    rig = Rig()
    parser = rig.client.parser = CountingRequestParser(rig.client)
    value = b"v" * 60000
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
    for i in range(0, len(value), 100):
        rig.send(value[i:i + 100])
    rig.send(b"\r\n\r\n")
    assert b"\r\nX-Big: " + value + b"\r\n" in rig.up_t.take()
    assert parser.feeds <= 5


async def test_many_small_request_header_lines_in_many_reads_reach_the_parser_in_few_pieces():
    rig = Rig()
    parser = rig.client.parser = CountingRequestParser(rig.client)
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n")
    for i in range(4000):
        rig.send(b"X-%d: 1\r\n" % i)
    rig.send(b"\r\n")
    sent = rig.up_t.take()
    assert b"\r\nX-0: 1\r\n" in sent and b"\r\nX-3999: 1\r\n" in sent
    assert parser.feeds <= 5


async def test_a_request_url_in_many_small_reads_reaches_the_parser_in_few_pieces():
    rig = Rig()
    parser = rig.client.parser = CountingRequestParser(rig.client)
    path = b"/" + b"p" * 30000
    rig.send(b"GET ")
    for i in range(0, len(path), 50):
        rig.send(path[i:i + 50])
    rig.send(b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert rig.up_t.take().startswith(b"GET " + path + b" HTTP/1.1\r\n")
    assert parser.feeds <= 5


async def test_a_head_whose_end_is_split_across_reads_is_parsed_when_it_ends():
    for cut in (1, 2, 3):
        rig = Rig()
        head = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
        rig.send(head[:20])
        rig.send(head[20:-cut])
        assert rig.up_t.take() == b""
        rig.send(head[-cut:])
        assert rig.up_t.take().startswith(b"GET / HTTP/1.1\r\nHost: h\r\n")


async def test_a_response_header_value_in_many_small_reads_reaches_the_parser_in_few_pieces():
    rig = Rig()
    parser = rig.up.parser = CountingResponseParser(rig.up)
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    value = b"v" * 60000
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for i in range(0, len(value), 100):
        rig.answer(value[i:i + 100])
    rig.answer(b"\r\nContent-Length: 2\r\n\r\nok")
    out = rig.client_t.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\n") and out.endswith(b"\r\n\r\nok")
    assert parser.feeds <= 5
    assert rig.server.idle == [rig.up]


async def test_a_response_head_split_across_reads_is_relayed_when_it_ends():
    for cut in (1, 2, 3):
        rig = Rig()
        rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        rig.answer(OK[:20])
        rig.answer(OK[20:-2 - cut])
        assert rig.client_t.take() == b""
        rig.answer(OK[-2 - cut:])
        assert rig.client_t.take().endswith(b"\r\n\r\nok")


async def test_a_response_head_over_the_limit_is_502_and_counted():
    rig = Rig(limits={"max_response_header_bytes": 4096})
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(100):
        if rig.up_t.closed:
            break
        rig.answer(b"v" * 100)
    assert rig.up_t.closed and rig.server.heads_over_limit == 1
    out = rig.client_t.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"limits.max_response_header_bytes (4096)" in out


@pytest.mark.parametrize(("request_bytes", "answer"), [
    (b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    (b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
])
async def test_a_bodiless_answer_that_announces_a_body_is_relayed_but_not_pooled(request_bytes, answer):
    rig = Rig()
    rig.send(request_bytes)
    rig.answer(answer)
    assert rig.client_t.take().endswith(b"\r\n\r\n")
    assert rig.server.idle == [] and rig.up_t.closed and not rig.client_t.closed


@pytest.mark.parametrize("stray", [b"", b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstray!"])
async def test_an_idle_connection_of_a_server_seen_sending_strays_is_checked_before_reuse(stray):
    rig = Rig()
    rig.server.idle.clear()
    up_t = SocketTransport()
    up = UpstreamConnection(rig.proxy, rig.server)
    up.connection_made(up_t)
    rig.server.idle.append(up)
    rig.server.strays = 1      # it was caught before (see tests/e2e/test_pooled_connection_reuse_e2e.py)
    try:
        up_t.peer.sendall(stray)   # bytes the event loop has not delivered yet
        rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        if stray:
            assert up_t.closed and up_t.take() == b"" and rig.server.strays == 2
        else:
            assert not up_t.closed and up_t.take().startswith(b"GET / HTTP/1.1\r\n")
    finally:
        up_t.sock.close()
        up_t.peer.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()   # the fresh connection attempt to the unit rig's unused address
