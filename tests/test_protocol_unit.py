"""Protocol unit tests: ClientConnection, Exchange and UpstreamConnection on fake transports.

Bytes go into data_received; assertions are on what was written to each side.
No sockets: the pool is primed with an UpstreamConnection on a fake transport.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.downstream import ClientConnection
from proxy.server import Proxy
from proxy.upstream import UpstreamConnection


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("192.0.2.7", 4000) if name == "peername" else default

    def write(self, data):
        assert not self.closed, "write after close"
        self.data += data

    def writelines(self, parts):
        for part in parts:
            self.write(part)

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True

    def pause_reading(self):
        self.reading = False

    def get_write_buffer_size(self):
        return 0

    def resume_reading(self):
        self.reading = True

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class Rig:
    """Rig: one client connection and one pooled upstream connection, both fake."""

    def __init__(self, **overrides) -> None:
        data = {
            "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "auth": "none"},
            "environments": {"blue": {"servers": ["127.0.0.1:1"]}, "green": {"servers": ["127.0.0.1:2"]}},
            "state_file": "/tmp/cutover-unit-state.json",
        }
        data.update(overrides)
        self.proxy = Proxy(parse_config(data, Path("/tmp"), {}))
        self.proxy._loop = asyncio.get_running_loop()
        self.server = self.proxy.router.environments["blue"].servers[0]
        self.up = UpstreamConnection(self.proxy, self.server)
        self.up_t = FakeTransport()
        self.up.connection_made(self.up_t)
        self.server.idle.append(self.up)
        self.client = ClientConnection(self.proxy)
        self.client_t = FakeTransport()
        self.client.connection_made(self.client_t)

    def send(self, data: bytes) -> None:
        self.client.data_received(data)
        self.proxy.flush_due()   # what the event loop does once a pass has handled its reads

    def answer(self, data: bytes) -> None:
        self.up.data_received(data)
        self.proxy.flush_due()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_request_is_rewritten_and_response_relayed():
    rig = Rig()
    rig.send(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    sent = rig.up_t.take()
    assert sent.startswith(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\n")
    assert b"x-forwarded-for: 192.0.2.7\r\n" in sent and b"onnection" not in sent
    rig.answer(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok")
    assert rig.client_t.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nok"
    assert rig.server.idle == [rig.up] and not rig.client_t.closed


async def test_head_and_body_of_a_small_response_leave_in_one_write():
    rig = Rig()
    writes = []
    rig.client_t.write = writes.append
    rig.client_t.writelines = lambda parts: writes.append(b"".join(parts))
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


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
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert rig.client_t.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
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
    assert out == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
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
    assert out == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"
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
