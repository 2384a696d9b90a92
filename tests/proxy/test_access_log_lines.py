"""Access log lines without sockets (proxy/accesslog.py): the json fields and their types, the
combined format with the request id, and the outcome each way of ending gets (SPEC §12).

Exchanges are real ones driven through a Rig (fake transports), whose access log formats
each line as its exchange finishes (AccessLog.add); the formatters are pure over an Entry's
fields.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from proxy.accesslog import Clock, Entry, combined_field, combined_line, header_value, json_line, json_string, millis
from proxy.route import Route
from tests.support.fakes import Rig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FIELDS = ["time", "client", "method", "target", "protocol", "status", "bytes_in", "bytes_out", "duration_ms",
          "upstream_connect_ms", "upstream_response_ms", "env", "server", "generation", "outcome", "request_id"]


def logged_rig(**overrides) -> Rig:
    """logged_rig: a Rig whose proxy has an access log (never started: its records are only gathered)."""
    return Rig(**{"access_log": {"path": "-"}, **overrides})


def at_wall_clock(rig: Rig, wall: float) -> None:
    """at_wall_clock: the rig's access log takes monotonic now for ``wall`` (seconds since the
    epoch): a request sent next is logged at that second."""
    log = rig.proxy.access_log
    assert log is not None
    log.offset = wall - time.monotonic()


def gathered(rig: Rig) -> list[str]:
    """gathered: the lines the rig's access log gathered (it is never started: none is written)."""
    log = rig.proxy.access_log
    assert log is not None
    return [line.decode("latin-1") for line in log.gathered]


def lines(rig: Rig) -> list[dict]:
    """lines: the rig's gathered json lines, parsed."""
    return [json.loads(line) for line in gathered(rig)]


async def test_a_proxied_request_has_every_field_in_order_with_its_type():
    rig = logged_rig()
    at_wall_clock(rig, 1_700_000_000.0)
    rig.send(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n")
    rig.answer(OK)
    [line] = lines(rig)
    assert list(line) == FIELDS
    assert re.fullmatch(r"2023-11-14T22:13:20\.\d{3}Z", line["time"])
    assert (line["client"], line["method"], line["target"], line["protocol"]) == ("192.0.2.7", "GET", "/a?b=c",
                                                                                   "HTTP/1.1")
    assert line["status"] == 200 and line["outcome"] == "ok" and line["request_id"] == "abc-1"
    assert (line["env"], line["server"], line["generation"]) == ("blue", "127.0.0.1:1", 1)
    request = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n"
    assert line["bytes_in"] == len(request)
    assert line["bytes_out"] == len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: abc-1\r\n\r\nok")
    for name in ("duration_ms", "upstream_connect_ms", "upstream_response_ms"):
        assert isinstance(line[name], float) and line[name] >= 0, name
    assert line["upstream_connect_ms"] == 0.0     # a pooled connection


async def test_each_request_of_a_keep_alive_connection_counts_its_own_bytes():
    rig = logged_rig()
    first = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
    second = b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    rig.send(first)
    rig.answer(OK)
    rig.send(second)
    rig.answer(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    one, two = lines(rig)
    assert (one["bytes_in"], two["bytes_in"]) == (len(first), len(second))
    assert (one["status"], two["status"], two["method"]) == (200, 201, "POST")
    assert one["request_id"] != two["request_id"]


async def test_a_proxied_request_without_an_id_writes_null_for_it_and_its_upstream_times():
    rig = logged_rig(request_id={"generate": False})
    rig.send(b"GET /n HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    [line] = lines(rig)
    assert list(line) == FIELDS and line["request_id"] is None and line["target"] == "/n"
    assert isinstance(line["upstream_connect_ms"], float) and isinstance(line["upstream_response_ms"], float)


async def test_a_request_refused_before_routing_has_no_environment_server_or_upstream_times():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\n\r\n")          # no Host: 400
    [line] = lines(rig)
    assert line["status"] == 400 and line["outcome"] == "refused"
    assert line["env"] is None and line["server"] is None and line["generation"] is None
    assert line["upstream_connect_ms"] is None and line["upstream_response_ms"] is None
    assert re.fullmatch(r"[0-9a-f]{16}-1", line["request_id"])


@pytest.mark.parametrize("target, written", [
    (b'/q?x="a"', '/q?x="a"'),
    (b"/back\\slash", "/back\\slash"),
    (b"/caf\xc3\xa9", "/caf\u00c3\u00a9"),      # each byte one code point: nothing is lost
])
def test_json_strings_escape_quotes_backslashes_and_bytes_outside_ascii(target, written):
    text = json_string(target)
    assert text.isascii() and json.loads(text) == written


def test_combined_fields_escape_as_nginx_does():
    assert combined_field(b'say "hi"\\') == b'say \\x22hi\\x22\\x5C'
    assert combined_field(b"caf\xc3\xa9") == b"caf\\xC3\\xA9"
    assert combined_field(b"") == b"-"


def test_header_values_are_found_in_any_case_and_position():
    block = b"Host: h\r\nuser-agent: curl/8\r\nREFERER: http://a/\r\n"
    assert header_value(block, b"user-agent") == b"curl/8"
    assert header_value(block, b"referer") == b"http://a/"
    assert header_value(b"User-Agent: x\r\n", b"user-agent") == b"x"
    assert header_value(block, b"cookie") == b""
    assert header_value(b"X-User-Agent: no\r\n", b"user-agent") == b""


async def test_combined_line_is_apache_combined_then_the_request_id():
    rig = logged_rig(access_log={"path": "-", "format": "combined"})
    at_wall_clock(rig, 1_700_000_000.0)
    rig.send(b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.5\r\nReferer: http://r/\r\nX-Request-Id: r.1\r\n\r\n")
    rig.answer(OK)
    [line] = gathered(rig)
    size = len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r.1\r\n\r\nok")
    assert line == (f'192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /x HTTP/1.1" 200 {size} '
                    f'"http://r/" "curl/8.5" r.1\n')


async def test_a_request_without_referer_or_agent_writes_dashes():
    rig = logged_rig(request_id={"generate": False}, access_log={"path": "-", "format": "combined"})
    rig.send(b"GET / HTTP/1.0\r\n\r\n")
    rig.answer(OK)
    [line] = gathered(rig)
    size = len(rig.client_t.take())
    assert line.endswith('"GET / HTTP/1.0" 200 %d "-" "-" -\n' % size)


def test_the_clock_formats_iso_and_common_log_time_in_utc():
    clock = Clock()
    clock.at(0)
    assert (clock.second, clock.iso, clock.clf) == (0, b"1970-01-01T00:00:00", b"01/Jan/1970:00:00:00 +0000")
    clock.at(86400 * 31 + 3661)
    assert (clock.iso, clock.clf) == (b"1970-02-01T01:01:01", b"01/Feb/1970:01:01:01 +0000")


def test_milliseconds_have_three_decimals_rounded_to_the_microsecond():
    assert [millis(v) for v in (0.0, 0.0004, 0.0005, 1.5, 12.3456, 999.9996, -0.2)] == [
        b"0.000", b"0.000", b"0.001", b"1.500", b"12.346", b"1000.000", b"0.000"]


def test_a_json_line_times_its_request_to_the_millisecond_in_utc():
    record = (10.0, 10.25, b"192.0.2.7", b"GET", b"/", 1, 200, 10, 20, None, None, None, None, None, "refused",
              None, b"")
    line = json.loads(json_line(record, 86400 * 31 + 3661.9 - 10.0 + 0.0004, Clock()))
    assert line["time"] == "1970-02-01T01:01:01.900Z"
    assert (line["duration_ms"], line["upstream_connect_ms"], line["request_id"], line["env"]) == (250.0, None,
                                                                                                   None, None)


# ------------------------------------------------------------------ outcomes

def outcome(rig: Rig) -> str:
    [line] = lines(rig)
    return line["outcome"]


async def test_a_client_that_goes_away_is_client_gone():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.connection_lost(None)
    assert outcome(rig) == "client_gone"


async def test_an_upstream_that_closes_before_answering_is_upstream_reset():
    rig = logged_rig()
    rig.up.reused = False
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    rig.up.connection_lost(ConnectionResetError())
    assert outcome(rig) == "upstream_reset" and lines(rig)[0]["status"] == 502


async def test_a_response_cut_mid_body_is_upstream_reset_with_the_upstream_status():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.up.connection_lost(None)
    [line] = lines(rig)
    assert line["outcome"] == "upstream_reset" and line["status"] == 200


async def test_an_upstream_timeout_is_timeout():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.queue[0].timed_out()
    assert outcome(rig) == "timeout" and lines(rig)[0]["status"] == 504


async def test_a_client_body_timeout_is_timeout():
    rig = logged_rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
    rig.client.queue[0].client_timed_out()
    assert outcome(rig) == "timeout" and lines(rig)[0]["status"] == 408


async def test_a_request_cut_by_a_drain_is_drained():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.queue[0].force_close()
    assert outcome(rig) == "drained"


async def test_a_held_request_whose_client_leaves_is_held():
    rig = logged_rig()
    rig.proxy.router.hold()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.connection_lost(None)
    assert outcome(rig) == "held"


async def test_a_request_the_full_hold_queue_turns_away_is_refused():
    rig = logged_rig(hold={"max_queued": 0})
    rig.proxy.router.hold()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert outcome(rig) == "refused" and lines(rig)[0]["status"] == 503


async def test_no_healthy_server_is_refused_and_a_body_over_the_limit_too():
    rig = logged_rig(limits={"max_body_bytes": 4})
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n")
    assert outcome(rig) == "refused" and lines(rig)[0]["status"] == 413
    rig = logged_rig()
    rig.proxy.router.environments["blue"].servers[0].set_healthy(False)
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert outcome(rig) == "refused" and lines(rig)[0]["status"] == 503


async def test_the_generation_is_the_one_the_request_was_routed_by():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    rig.proxy.router.swap(Route(generation=2, live="green", previous="blue", environments=("blue", "green")))
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK, env="green")
    assert [(line["env"], line["generation"]) for line in lines(rig)] == [("blue", 1), ("green", 2)]


async def test_without_an_access_log_nothing_is_recorded():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert rig.proxy.access_log is None
    assert rig.client.queue == [] and rig.client_t.take().startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("format", ["json", "combined"])
async def test_a_finished_request_leaves_only_its_line_which_the_cycle_collector_never_tracks(format):
    """A batch's lines wait up to FLUSH_INTERVAL: exchanges (and later tuples) kept that long
    made the collector run more often and walk them; a line is formatted when its exchange
    finishes, and bytes are never tracked."""
    import gc
    rig = logged_rig(access_log={"path": "-", "format": format})

    async def request() -> None:
        rig.send(b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n")
        rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        rig.client_t.take()
        await asyncio.sleep(0)                 # what the exchange scheduled runs

    await request()                            # the first one opens what the next ones reuse
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(50):
        await request()
    log = rig.proxy.access_log
    assert log is not None and len(log.gathered) == 51
    assert all(type(line) is bytes and not gc.is_tracked(line) for line in log.gathered)
    gc.collect()
    assert len(gc.get_objects()) - before < 10         # nothing tracked stays behind per request


def test_a_combined_line_of_an_entry_escapes_its_fields_and_takes_the_clock_of_its_start():
    entry = Entry(started=10.2, ended=10.3, client=b"192.0.2.7", method=b"GET", url=b'/q?x="a"', http_minor=0,
                  status=404, bytes_in=1, bytes_out=99, connect_ms=None, response_ms=None, env=None, server=None,
                  generation=None, outcome="refused", request_id=None, block=b"User-Agent: a\\b\r\n")
    line = combined_line(entry, 1_700_000_000.0 - 10.0, Clock())
    assert line == '192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /q?x=\\x22a\\x22 HTTP/1.0" 404 99 "-" "a\\x5Cb" -\n'


async def test_a_line_that_cannot_be_formatted_is_counted_and_the_request_still_ends(caplog):
    rig = logged_rig()
    log = rig.proxy.access_log
    assert log is not None
    log.offset = 1e18                        # no calendar has that year: time.gmtime refuses it
    for _ in range(2):
        rig.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        rig.answer(OK)
    assert rig.client_t.take().count(b"HTTP/1.1 200 OK") == 2 and rig.client.queue == []
    assert rig.env().inflight == 0 and rig.env().responses[2] == 2 and log.gathered == [] and log.dropped == 2
    assert sum("formatting a line failed" in r.getMessage() for r in caplog.records) == 1   # logged once
    at_wall_clock(rig, 1_700_000_000.0)
    rig.send(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert [line["target"] for line in lines(rig)] == ["/b"]


def test_a_json_line_writes_a_negative_time_as_zero_and_only_none_as_null():
    record = (10.0, 10.25, b"192.0.2.7", b"GET", b"/", 1, 200, 10, 20, -0.2, 0.0, None, None, None, "ok", b"r", b"")
    line = json.loads(json_line(record, 0.0, Clock()))
    assert (line["upstream_connect_ms"], line["upstream_response_ms"]) == (0.0, 0.0)


@pytest.mark.parametrize("rid, connect, response", [(b"r-1", 0.5, 1.25), (None, None, None)])
@pytest.mark.parametrize("method, target", [
    (b"GET", b'/q?x="a"&b=\\\xc3\xa9'), (b'M"\\', b"/"), (b"GET", b"/\x01\x7f"), (b"GET", b"/plain")])
def test_every_line_shape_escapes_its_method_and_target_and_parses(rid, connect, response, method, target):
    record = (5.0, 5.0123456, b"192.0.2.7", method, target, 1, 201, 12345, 99999, connect, response, "blue",
              "127.0.0.1:8080", 7, "ok", rid, b"")
    line = json.loads(json_line(record, 1_700_000_000.0 - 5.0, Clock()))
    assert list(line) == FIELDS
    assert (line["method"], line["target"]) == (method.decode("latin-1"), target.decode("latin-1"))
    assert (line["status"], line["bytes_in"], line["bytes_out"], line["duration_ms"]) == (201, 12345, 99999, 12.346)
    assert (line["upstream_connect_ms"], line["upstream_response_ms"], line["request_id"]) == (
        connect, response, None if rid is None else rid.decode())
    assert line["time"] == "2023-11-14T22:13:20.000Z" and line["generation"] == 7
